"""Perplexity: the protocol's arithmetic, `kirinc eval` in-process, and its bad inputs."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import onnx
import onnxruntime
import pytest
from conftest import TINY_LLAMA, TINY_LLAMA_IDS

from kirin_compiler import calibration, compile_model, evaluation, load_model
from kirin_compiler.backends import torch_backend
from kirin_compiler.cli import main


def test_the_nll_is_the_log_softmax_of_the_next_token_summed():
    logits = np.log(np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]], np.float32))
    nll, count = evaluation.negative_log_likelihood(logits, np.array([2, 1, 0]))
    assert count == 2  # positions 1..L-1 are predicted from the ones before
    assert nll == pytest.approx(-math.log(0.25) - math.log(0.1), rel=1e-6)


def _reference_nll(path, windows) -> tuple[float, int]:
    """The float model's NLL by onnxruntime, straight from the protocol."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    total, count = 0.0, 0
    for window in windows:
        logits = session.run(None, {"input_ids": window})[0][0].astype(np.float64)
        shifted = logits[:-1] - logits[:-1].max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        total -= log_probs[np.arange(len(window[0]) - 1), window[0, 1:]].sum()
        count += len(window[0]) - 1
    return total, count


def test_evaluate_scores_every_mode_and_compares_snn_with_qann():
    ids = np.random.default_rng(3).integers(0, 256, (1, 48))
    windows = calibration.windows(ids, 16, 3)
    model = load_model(TINY_LLAMA)
    reference, count = _reference_nll(TINY_LLAMA, windows)
    (score,) = evaluation.evaluate(model, windows, ["float"], torch_backend)
    assert (score.windows, score.tokens) == (3, count) == (3, 45)
    assert score.nll == pytest.approx(reference, rel=1e-5)
    calibration.attach(model, calibration.Calibration([{"input_ids": np.load(TINY_LLAMA_IDS)}], "t", progress=False))
    compile_model(model)
    qann, snn, w4a16 = evaluation.evaluate(model, windows, ["qann", "snn", "float"], torch_backend)
    assert qann.nll == snn.nll and snn.differing == 0 and qann.differing is None
    assert qann.perplexity != w4a16.perplexity


def _eval(capsys, *argv):
    status = main(["eval", *map(str, argv)])
    out, err = capsys.readouterr()
    return status, out, err


def test_kirinc_eval_compiles_configurations_in_memory_and_writes_json(capsys, tmp_path):
    out = tmp_path / "results.json"
    status, table, _ = _eval(
        capsys, TINY_LLAMA, "--text", TINY_LLAMA_IDS, "--length", 8, "--windows", 2,
        "--calib", TINY_LLAMA_IDS, "--calib-length", 8, "--no-calib-cache",
        "-p", "default", "-p", "w8a8=canonicalize,quantize{bits=8,act_bits=8,act_group=0},outlier-detect{mode=none},"
        "spike-matrix-hybridize,threshold-insert",
        "--mode", "qann", "--mode", "snn", "--json", out,
    )
    assert status == 0
    lines = table.splitlines()
    assert lines[0].endswith("windows of 8 tokens, each scored on its own")
    assert lines[1].split() == ["model", "mode", "windows", "tokens", "perplexity", "x", "float", "=", "qann"]
    rows = [line.split() for line in lines[3:]]
    assert [(r[0], r[1] if r[0] != "tiny_llama.onnx" else r[2]) for r in rows] == [
        ("tiny_llama.onnx", "float"), ("default", "qann"), ("default", "snn"), ("w8a8", "qann"), ("w8a8", "snn"),
    ]
    assert rows[2][-1] == "bitwise" and rows[4][-1] == "bitwise"
    document = json.loads(out.read_text())
    results = document["results"]
    assert [r["mode"] for r in results] == ["float", "qann", "snn", "qann", "snn"]
    assert results[0]["pipeline"] is None and results[0]["ratio_to_float"] == 1.0
    assert results[1]["pipeline"].startswith("canonicalize,quantize,outlier-detect")
    assert results[2]["logits_differing_from_qann"] == 0
    for entry in results:
        assert entry["windows"] == 2 and entry["tokens"] == 14
        assert entry["perplexity"] == pytest.approx(math.exp(entry["nll"] / 14))
        assert f"{entry['perplexity']:.3f}" in table


def test_kirinc_eval_scores_kirin_files_as_compiled_beside_their_onnx_model(capsys, tmp_path):
    compiled = tmp_path / "t.kirin"
    assert main([str(TINY_LLAMA), "-o", str(compiled), "--calib", str(TINY_LLAMA_IDS), "--no-calib-cache"]) == 0
    capsys.readouterr()
    status, table, _ = _eval(capsys, compiled, "--text", TINY_LLAMA_IDS, "--length", 16, "--mode", "float",
                             "--mode", "qann")
    assert status == 0
    rows = [line.split() for line in table.splitlines()[3:]]
    assert [r[:2] for r in rows] == [["t.kirin", "float"], ["t.kirin", "qann"]]
    assert all(r[5] == "-" for r in rows)  # no float reference to divide by
    status, table, _ = _eval(capsys, TINY_LLAMA, compiled, "--text", TINY_LLAMA_IDS, "--length", 16)
    rows = [line.split() for line in table.splitlines()[3:]]
    assert [r[0] for r in rows] == ["tiny_llama.onnx", "t.kirin"] and rows[1][1] == "qann"
    assert float(rows[1][5]) == pytest.approx(float(rows[1][4]) / float(rows[0][5]), abs=2e-3)  # x float


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--windows", "0"], "--windows 0: use at least 1"),
        (["-p", "default"], "pipeline 'default' calibrates: give --calib"),
        (["-p", "canonicalize,no-such-pass"], "unknown pass 'no-such-pass'"),
        (["--json", "{model}"], "which this run reads; choose another output name"),
        (["--json", "{weights}"], "would replace the input's weights"),
        (["--length", "1"], "--length 1: use at least 2"),
        (["--text", "{one_token}"], "has no token to score: a window needs at least 2 tokens"),
        (["--text", "{past_vocabulary}", "--windows", "1"], "failed on the ids of"),
        (["-p", "default", "--calib", "{missing}"], "does not exist"),
    ],
)
def test_kirinc_eval_bad_input_is_one_line(capsys, tmp_path, argv, message):
    model = tmp_path / "m.onnx"
    onnx.save(onnx.load(TINY_LLAMA), model, save_as_external_data=True, location="m.weights", size_threshold=0)
    np.save(tmp_path / "one.npy", np.array([[5]]))
    np.save(tmp_path / "past.npy", np.array([[5, 6, 100_000]]))
    files = {"model": model, "weights": tmp_path / "m.weights", "one_token": tmp_path / "one.npy",
             "past_vocabulary": tmp_path / "past.npy", "missing": tmp_path / "missing.npy"}
    before = {path: path.read_bytes() for path in tmp_path.iterdir()}
    argv = [a.format(**files) if a.startswith("{") else a for a in argv]
    status, _, err = _eval(capsys, model, "--text", TINY_LLAMA_IDS, "--length", 8, *argv)
    assert status == 2 and len(err.strip().splitlines()) == 1 and message in err
    assert {path: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_kirinc_eval_refuses_to_compile_a_kirin_file_again(capsys, tmp_path):
    compiled = tmp_path / "t.kirin"
    assert main([str(TINY_LLAMA), "-o", str(compiled), "-p", "canonicalize"]) == 0
    capsys.readouterr()
    status, _, err = _eval(capsys, compiled, "--text", TINY_LLAMA_IDS, "-p", "canonicalize")
    assert status == 2 and "is already compiled" in err


def test_every_row_is_divided_by_the_float_score_of_its_own_onnx_model(capsys):
    opt = TINY_LLAMA.with_name("wiki_opt.onnx")
    status, table, _ = _eval(capsys, TINY_LLAMA, opt, "--text", TINY_LLAMA_IDS, "--length", 8, "--windows", 2,
                             "--calib", TINY_LLAMA_IDS, "--calib-length", 8, "--no-calib-cache", "-p", "default")
    assert status == 0
    rows = {line.rsplit("  ", 1)[0].split("  ")[0].strip(): line.split() for line in table.splitlines()[3:]}
    float_ppl = {name: float(rows[f"{name} (float)"][-3]) for name in ("tiny_llama.onnx", "wiki_opt.onnx")}
    for name in float_ppl:
        row = rows[f"{name}: default"]
        assert float(row[-2]) == pytest.approx(float(row[-3]) / float_ppl[name], abs=2e-3)
