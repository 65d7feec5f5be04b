"""kirinc verify: the spiking network equals the integer network on real decoders, and the
command reports it (and mismatches, when the silent phase is ablated)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY_LLAMA, TINY_LLAMA_IDS, token_ids

from kirin_compiler.cli import main

EXPORTS = [
    ("llama", "dynamo", 18), ("llama", "torchscript", 17), ("opt", "dynamo", 18), ("opt", "torchscript", 17)
]


def _run(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _compile(capsys, source, out, calib, *extra) -> None:
    status, _, err = _run(capsys, source, "-o", out, "--calib", calib, "--calib-length", "16",
                          "--no-calib-cache", *extra)
    assert status == 0, err


@pytest.mark.parametrize("family,exporter,opset", EXPORTS)
def test_verify_finds_no_mismatch_on_tiny_decoders(capsys, tmp_path, exported, family, exporter, opset):
    np.save(tmp_path / "calib.npy", token_ids((3, 16), seed=2))
    np.save(tmp_path / "check.npy", token_ids((2, 13), seed=7))
    out = tmp_path / "model.kirin"
    _compile(capsys, exported(family, exporter, opset), out, tmp_path / "calib.npy")
    status, text, _ = _run(capsys, "verify", out, "--input", tmp_path / "check.npy", "--windows", "2")
    assert status == 0, text
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "products", "spikes", "silent", "accumulates", "int", "MACs",
                                "integers", "mismatches", "steps", "8-bit", "steps"]
    for layer in ("0", "1"):
        row = next(line.split() for line in lines if line.split()[:1] == [layer])
        assert row[1] == ("9" if family == "llama" else "8")  # spiking products per layer
        assert row[7] == "0"  # mismatches
        assert int(row[2].replace(",", "")) > 0  # spikes
        assert row[8] == ("56" if family == "llama" else "64")  # OPT's fused neurons: 16 steps
    assert "outputs: 3,328 values compared bit for bit, 0 differ" in text  # 2 x 13 x 128
    assert "OK: the snn mode equals the qann mode (2 runs)" in text
    assert "(93.75% fewer)" in text


def test_verify_defaults_to_the_calibration_inputs(capsys, tmp_path):
    out = tmp_path / "model.kirin"
    _compile(capsys, TINY_LLAMA, out, TINY_LLAMA_IDS)
    status, text, err = _run(capsys, "verify", out)
    assert status == 0 and f"of {TINY_LLAMA_IDS}" in err
    assert "integers: 73,728 compared, 0 differ" in text


def test_ablating_the_silent_phase_breaks_exactness_and_verify_says_where(capsys, tmp_path, exported):
    np.save(tmp_path / "calib.npy", token_ids((3, 16), seed=2))
    out = tmp_path / "ablated.kirin"
    pipeline = ("canonicalize,quantize,outlier-detect,spike-matrix-hybridize,"
                "threshold-insert{silent=false},energy-annotate")
    _compile(capsys, exported("opt", "dynamo", 18), out, tmp_path / "calib.npy", "-p", pipeline)
    status, text, _ = _run(capsys, "verify", out)
    assert status == 1
    assert "MISMATCH" in text and "mismatched nodes: " in text
    assert ".fc1.neuron" in text.split("mismatched nodes: ")[1]  # the neurons that fired early
    total = next(line.split() for line in text.splitlines() if line.startswith("total"))
    assert int(total[7].replace(",", "")) > 0


def test_verify_bad_input(capsys, tmp_path):
    canonical = tmp_path / "canonical.kirin"
    assert _run(capsys, TINY_LLAMA, "-o", canonical, "-p", "canonicalize")[0] == 0
    status, _, err = _run(capsys, "verify", canonical, "--input", TINY_LLAMA_IDS)
    assert status == 2 and "no spiking products" in err and err.count("\n") == 1
    status, _, err = _run(capsys, "verify", canonical)
    assert status == 2 and "no spiking products" in err

    calib = tmp_path / "calib.npy"
    np.save(calib, np.load(TINY_LLAMA_IDS))
    compiled = tmp_path / "model.kirin"
    _compile(capsys, TINY_LLAMA, compiled, calib)
    np.save(calib, np.load(TINY_LLAMA_IDS)[:, ::-1])
    status, _, err = _run(capsys, "verify", compiled)
    assert status == 2 and "changed since" in err
    calib.unlink()
    status, _, err = _run(capsys, "verify", compiled)
    assert status == 2 and "is gone: give --input FILE" in err
    status, _, err = _run(capsys, "verify", compiled, "--input", TINY_LLAMA_IDS, "--windows", "0")
    assert status == 2 and "--windows 0: use at least 1" in err


def test_time_steps_are_in_the_kirin_metadata(capsys, tmp_path):
    out = tmp_path / "model.kirin"
    _compile(capsys, TINY_LLAMA, out, TINY_LLAMA_IDS)
    from kirin_compiler import load_model

    steps = json.loads(load_model(out).metadata_props["kirin.timesteps"])
    assert steps["per_layer"] == {"0": 56, "1": 56} and steps["baseline_8bit_total"] == 1792


@pytest.mark.parametrize("mode", ["qann", "snn"])
def test_run_in_qann_and_snn_modes_gives_the_same_logits(capsys, tmp_path, mode):
    out = tmp_path / "model.kirin"
    _compile(capsys, TINY_LLAMA, out, TINY_LLAMA_IDS)
    status, _, _ = _run(capsys, "run", out, "--input", TINY_LLAMA_IDS, "--mode", mode,
                        "--save", tmp_path / f"{mode}.npy")
    assert status == 0
    reference = tmp_path / "reference.npy"
    _run(capsys, "run", out, "--input", TINY_LLAMA_IDS, "--mode", "qann", "--save", reference)
    assert np.array_equal(np.load(tmp_path / f"{mode}.npy"), np.load(reference))


def test_snn_mode_needs_neurons(capsys, tmp_path):
    out = tmp_path / "hybrid.kirin"
    _compile(capsys, TINY_LLAMA, out, TINY_LLAMA_IDS, "-p",
             "canonicalize,quantize,outlier-detect,spike-matrix-hybridize")
    status, _, err = _run(capsys, "run", out, "--input", TINY_LLAMA_IDS, "--mode", "snn")
    assert status == 2 and "run threshold-insert" in err


def test_verify_of_a_model_compiled_from_python_needs_an_input(capsys, tmp_path):
    from kirin_compiler import Calibration, compile_model, load_model, save_kirin

    model = load_model(TINY_LLAMA)
    ids = np.load(TINY_LLAMA_IDS)
    compile_model(model, calibration=Calibration([{"input_ids": ids}], "the demo ids", progress=False))
    save_kirin(model, tmp_path / "api.kirin")
    status, _, err = _run(capsys, "verify", tmp_path / "api.kirin")
    assert status == 2 and err == (
        f"kirinc: error: '{tmp_path / 'api.kirin'}' records no calibration file kirinc can read "
        "back: give --input FILE\n"
    )
    assert _run(capsys, "verify", tmp_path / "api.kirin", "--input", TINY_LLAMA_IDS)[0] == 0


def test_verify_options_apply_to_the_recorded_calibration_file(capsys, tmp_path):
    calib = tmp_path / "calib.npy"
    np.save(calib, token_ids((3, 16), seed=2) % 256)
    out = tmp_path / "model.kirin"
    _compile(capsys, TINY_LLAMA, out, calib)
    status, text, err = _run(capsys, "verify", out, "--windows", "2")
    assert status == 0 and "on 2 window(s)" in err and "(2 runs)" in text


def test_compiling_with_the_default_pipeline_needs_calibration_before_any_work(capsys, tmp_path):
    status, out, err = _run(capsys, TINY_LLAMA, "-o", tmp_path / "model.kirin", "--print-ir-after-all")
    assert status == 2 and out == "" and not list(tmp_path.iterdir())
    assert err == (
        "kirinc: error: the pipeline's outlier-detect, energy-annotate run the model on calibration "
        "inputs: give --calib IDS.npy (token ids) or --calib TEXT --tokenizer DIR, or a pipeline "
        "without them (-p canonicalize)\n"
    )


def test_calibration_ids_the_model_cannot_read_are_one_error_line(capsys, tmp_path):
    np.save(tmp_path / "ids.npy", np.array([[1, 2, 100_000]]))  # past the 256-token vocabulary
    status, _, err = _run(capsys, TINY_LLAMA, "-o", tmp_path / "model.kirin", "--calib",
                          tmp_path / "ids.npy", "--no-calib-cache")
    assert status == 2 and err.count("\n") == 1
    assert "holds the token id 100000 (at [0, 2]), past the model's vocabulary of 256 tokens" in err
    assert not (tmp_path / "model.kirin").exists()
