"""kirinc, in process: every flag, the dump folder, determinism, and every kind of bad input."""

from __future__ import annotations

import json
import pathlib
import shutil

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import pytest
from conftest import TINY_LLAMA, TINY_LLAMA_IDS

from kirin_compiler import load_model
from kirin_compiler.cli import main

OPTION_PASS = '''
import dataclasses
from typing import Literal
import onnx_ir as ir
from kirin_compiler import Pass

@dataclasses.dataclass(frozen=True)
class CrashPass(Pass):
    """Fails like a buggy pass."""
    name = "crash"

    def call(self, model):
        raise RuntimeError("bug")


@dataclasses.dataclass(frozen=True)
class ScalePass(Pass):
    """Does nothing, with options of every kind."""
    name = "scale"
    factor: float = 1.0
    steps: int = 3
    enabled: bool = True
    mode: Literal["fast", "exact"] = "exact"

    def call(self, model):
        return ir.passes.PassResult(model, False)
'''


# Calibration for the default (Kirin) pipeline: the shipped ids, no cache outside the test.
CALIB = ("--calib", TINY_LLAMA_IDS, "--no-calib-cache")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def model_path(tmp_path) -> pathlib.Path:
    path = tmp_path / "tiny_llama.onnx"
    shutil.copy(TINY_LLAMA, path)
    return path


@pytest.fixture
def option_pass(tmp_path) -> str:
    (tmp_path / "option_pass.py").write_text(OPTION_PASS)
    return f"{tmp_path / 'option_pass.py'}:ScalePass"


# Flags ------------------------------------------------------------------------------------------


def test_compile_writes_a_kirin_file(capsys, model_path, tmp_path):
    out = tmp_path / "out.kirin"
    status, _, err = run(capsys, model_path, "-o", out, *CALIB)
    assert status == 0 and out.is_file()
    assert "wrote" in err and "112 time steps (1792 with 8-bit single spikes: 93.75% fewer)" in err
    model = load_model(out)
    assert model.opset_imports["ai.kirin"] == 2  # the opset of docs/kirin_ops.md
    pipeline = model.metadata_props["kirin.pipeline"]
    assert pipeline.startswith("canonicalize,quantize{bits=4,") and pipeline.endswith("energy-annotate{runs=1,mode=qann}")
    assert json.loads(model.metadata_props["kirin.timesteps"])["reduction"] == 0.9375
    assert json.loads(model.metadata_props["kirin.calibration"])["tokens"] == 16
    assert model.metadata_props["kirin.format_version"] == "1"
    source = json.loads(model.metadata_props["kirin.source"])
    assert source["file"] == "tiny_llama.onnx" and len(source["sha256"]) == 64


def test_module_entry_point_runs_the_cli():
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "kirin_compiler", "--list-passes"], capture_output=True, text=True
    )
    assert result.returncode == 0 and "canonicalize" in result.stdout


def test_list_passes_shows_options_and_loaded_passes(capsys, option_pass):
    status, out, _ = run(capsys, "--load-pass", option_pass, "--list-passes")
    assert status == 0
    assert "canonicalize" in out
    assert "scale" in out and "factor: float = 1.0" in out and "steps: int = 3" in out
    assert "enabled: bool = true" in out and "mode: fast|exact = exact" in out


def test_print_ir_after_all(capsys, model_path):
    status, out, _ = run(capsys, model_path, "--print-ir-after-all", *CALIB)
    assert status == 0
    assert "// ----- IR after 01 canonicalize ----- //" in out
    assert "role=attn-qk" in out
    assert "// ----- IR after 06 energy-annotate ----- //" in out
    assert "ai.kirin::TTFSEncoder" in out and "ai.kirin::SpikeMatMul" in out


def test_print_ir_after_named_pass_only(capsys, model_path, option_pass):
    status, out, _ = run(
        capsys, model_path, "--load-pass", option_pass, "-p", "canonicalize,scale",
        "--print-ir-after", "scale",
    )
    assert status == 0
    assert "IR after 02 scale (unchanged)" in out
    assert "IR after 01" not in out


def test_print_changed_shows_a_real_diff(capsys, model_path, option_pass):
    status, out, _ = run(
        capsys, model_path, "--load-pass", option_pass, "-p", "canonicalize,scale", "--print-changed"
    )
    assert status == 0
    assert "--- 00_input\n+++ 01_canonicalize\n" in out
    assert any(line.startswith("-  %") for line in out.splitlines())
    assert any(line.startswith("+  %v0: ") for line in out.splitlines())
    assert "02_scale left the IR unchanged" in out


def test_dump_dir_writes_numbered_files_and_a_manifest(capsys, model_path, tmp_path, option_pass):
    dumps = tmp_path / "dumps"
    status, _, _ = run(
        capsys, model_path, "--load-pass", option_pass, "-p", "canonicalize,scale{factor=2}",
        "--dump-dir", dumps,
    )
    assert status == 0
    assert sorted(p.name for p in dumps.iterdir()) == [
        "00_input.onnx", "00_input.txt", "01_canonicalize.onnx", "01_canonicalize.txt",
        "02_scale.onnx", "02_scale.txt", "manifest.json",
    ]
    manifest = json.loads((dumps / "manifest.json").read_text())
    first, second = manifest["passes"]
    assert first["name"] == "canonicalize" and first["modified"] is True
    assert first["nodes_before"] == manifest["input"]["nodes"]
    assert first["nodes_after"] == second["nodes_before"] == second["nodes_after"]
    assert second["options"] == {"factor": 2.0, "steps": 3, "enabled": True, "mode": "exact"}
    assert second["spec"] == "scale{factor=2.0,steps=3,enabled=true,mode=exact}"
    assert all(p["seconds"] >= 0 for p in manifest["passes"])
    assert load_model(dumps / "01_canonicalize.onnx").graph.num_nodes() == first["nodes_after"]
    assert (dumps / "01_canonicalize.txt").read_text().startswith("# kirin-ir 1\n")


def test_dump_dir_is_reused_but_never_clobbers_foreign_files(capsys, model_path, tmp_path):
    dumps = tmp_path / "dumps"
    assert run(capsys, model_path, "-p", "canonicalize", "--dump-dir", dumps)[0] == 0
    (dumps / "notes.txt").write_text("mine")
    assert run(capsys, model_path, "-p", "canonicalize", "--dump-dir", dumps)[0] == 0  # replaced
    assert (dumps / "notes.txt").read_text() == "mine"
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.csv").write_text("1,2")
    status, _, err = run(capsys, model_path, "-p", "canonicalize", "--dump-dir", foreign)
    assert status == 2 and "not empty" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["data.csv"]


def test_a_failed_run_leaves_a_dump_folder_that_can_be_reused(capsys, model_path, tmp_path, tmp_path_factory):
    plugin = tmp_path / "option_pass.py"
    plugin.write_text(OPTION_PASS)
    dumps = tmp_path / "dumps"
    status, _, err = run(
        capsys, model_path, "--load-pass", f"{plugin}:CrashPass", "-p", "canonicalize,crash",
        "--dump-dir", dumps,
    )
    assert status == 1
    assert err == "kirinc: error: pass 'crash' failed (after: canonicalize): RuntimeError: bug\n"
    manifest = json.loads((dumps / "manifest.json").read_text())
    assert [p["name"] for p in manifest["passes"]] == ["canonicalize"]
    assert run(capsys, model_path, "-p", "canonicalize", "--dump-dir", dumps)[0] == 0


def test_loading_the_same_pass_file_twice_is_harmless(capsys, model_path, option_pass):
    status, _, err = run(
        capsys, model_path, "--load-pass", option_pass, "--load-pass", option_pass, "-p", "scale"
    )
    assert status == 0, err


def test_recompiling_a_kirin_file_keeps_its_provenance_and_history(capsys, model_path, tmp_path, option_pass):
    first, second = tmp_path / "first.kirin", tmp_path / "second.kirin"
    assert run(capsys, model_path, "-p", "canonicalize", "-o", first)[0] == 0
    assert run(capsys, first, "--load-pass", option_pass, "-p", "scale", "-o", second)[0] == 0
    compiled = load_model(second)
    assert compiled.metadata_props["kirin.source"] == load_model(first).metadata_props["kirin.source"]
    assert compiled.metadata_props["kirin.pipeline"] == (
        "canonicalize,scale{factor=1.0,steps=3,enabled=true,mode=exact}"
    )


def test_time_passes_prints_a_table(capsys, model_path, option_pass):
    status, out, _ = run(
        capsys, model_path, "--load-pass", option_pass, "-p", "canonicalize,scale", "--time-passes"
    )
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == "// ----- pass timing ----- //"
    assert lines[1].split() == ["#", "pass", "seconds", "share", "nodes", "modified"]
    assert lines[3].split()[:2] == ["01", "canonicalize"] and lines[3].split()[-1] == "yes"
    assert lines[4].split()[:2] == ["02", "scale"] and lines[4].split()[-1] == "no"


def test_stop_after(capsys, model_path, tmp_path, option_pass):
    out = tmp_path / "out.kirin"
    status, _, _ = run(
        capsys, model_path, "--load-pass", option_pass, "-p", "canonicalize,scale",
        "--stop-after", "canonicalize", "-o", out,
    )
    assert status == 0
    assert load_model(out).metadata_props["kirin.pipeline"] == "canonicalize"
    status, _, err = run(capsys, model_path, "-p", "canonicalize", "--stop-after", "quantize")
    assert status == 2 and "stop after 'quantize': no pass of the pipeline has that name" in err


def test_inspect_summarizes_a_kirin_file(capsys, model_path, tmp_path):
    out = tmp_path / "out.kirin"
    assert run(capsys, model_path, "-p", "canonicalize", "-o", out)[0] == 0
    status, text, _ = run(capsys, "inspect", out)
    assert status == 0
    assert "pipeline        canonicalize" in text
    assert "format_version  1" in text
    assert "input           input_ids: i64[batch, sequence]" in text
    assert "MatMul" in text and "attn-qk x2" in text and "q x2" in text
    total = next(line for line in text.splitlines() if line.startswith("total"))
    assert total.split()[2] == "106,593"  # every parameter of the tiny Llama, counted


def test_help_lists_commands_and_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--list-passes", "--print-ir-after-all", "--print-ir-after", "--print-changed",
                 "--dump-dir", "--time-passes", "--stop-after", "--load-pass", "kirinc inspect"):
        assert flag in text


# Determinism ------------------------------------------------------------------------------------


def test_same_input_gives_byte_identical_kirin_files_and_dumps(capsys, model_path, tmp_path):
    outputs = []
    for run_index in range(2):
        folder = tmp_path / f"run{run_index}"
        folder.mkdir()
        status, printed, _ = run(
            capsys, model_path, "-o", folder / "out.kirin", "--dump-dir", folder / "dumps",
            "--print-ir-after-all", *CALIB,
        )
        assert status == 0
        outputs.append((folder, printed))
    (first, printed_first), (second, printed_second) = outputs
    assert printed_first == printed_second
    assert (first / "out.kirin").read_bytes() == (second / "out.kirin").read_bytes()
    dumps = sorted(p.name for p in (first / "dumps").iterdir() if p.name != "manifest.json")
    assert len(dumps) == 14  # the input and six passes, as text and ONNX
    for name in dumps:
        assert (first / "dumps" / name).read_bytes() == (second / "dumps" / name).read_bytes()
    strip_times = lambda path: [  # noqa: E731
        {k: v for k, v in p.items() if k != "seconds"}
        for p in json.loads(path.read_text())["passes"]
    ]
    assert strip_times(first / "dumps" / "manifest.json") == strip_times(
        second / "dumps" / "manifest.json"
    )


# Bad input: one line, status 2, no output file ----------------------------------------------------


def _external_model(folder: pathlib.Path, location: str = "weights.bin") -> pathlib.Path:
    weight = onh.from_array(np.ones((4, 4), np.float32), "W")
    graph = oh.make_graph(
        [oh.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], [weight],
    )
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])
    path = folder / "external.onnx"
    onnx.save(model, path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    if location != "weights.bin":
        proto = onnx.load(path, load_external_data=False)
        for entry in proto.graph.initializer[0].external_data:
            if entry.key == "location":
                entry.value = location
        onnx.save(proto, path)
    return path


def _custom_op_model(folder: pathlib.Path) -> pathlib.Path:
    graph = oh.make_graph(
        [oh.make_node("FancyGelu", ["x"], ["y"], domain="com.example", name="mlp/act")], "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
    )
    model = oh.make_model(
        graph, opset_imports=[oh.make_opsetid("", 18), oh.make_opsetid("com.example", 1)]
    )
    path = folder / "custom.onnx"
    onnx.save(model, path)
    return path


def _cached_attention_model(folder: pathlib.Path) -> pathlib.Path:
    inputs = [
        oh.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [1, 2, 4, 8])
        for n in ("Q", "K", "V", "PK", "PV")
    ]
    graph = oh.make_graph(
        [oh.make_node("Attention", ["Q", "K", "V", "", "PK", "PV"], ["Y"], name="layers.0.attn")],
        "g", inputs, [oh.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)],
    )
    path = folder / "cached.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 23)]), path)
    return path


def _bad_inputs(folder: pathlib.Path, model_path: pathlib.Path, option_pass: str):
    """(name, argv, expected words in the message) for every kind of bad input."""
    (folder / "text.onnx").write_text("this is not an ONNX model\n")
    (folder / "truncated.onnx").write_bytes(model_path.read_bytes()[: model_path.stat().st_size // 2])
    missing_data = _external_model(folder / "missing_data")
    (folder / "missing_data" / "weights.bin").unlink()
    outside = _external_model(folder / "outside", location="../../etc/passwd")
    return [
        ("missing file", [folder / "nope.onnx"], ["does not exist"]),
        ("not onnx", [folder / "text.onnx"], ["not a readable ONNX model"]),
        ("truncated", [folder / "truncated.onnx"], ["not a readable ONNX model", "truncated"]),
        ("missing external data", [missing_data], ["weights.bin", "missing"]),
        ("external data outside", [outside], ["outside the model's folder"]),
        ("custom op", [_custom_op_model(folder)], ["node 'mlp/act'", "com.example::FancyGelu"]),
        ("unsupported attention", [_cached_attention_model(folder), "-p", "canonicalize"],
         ["node 'layers.0.attn' (Attention)", "cache"]),
        ("no calibration inputs", [model_path], ["outlier-detect, energy-annotate", "give --calib"]),
        ("unknown pass", [model_path, "-p", "canonicalize,quantise"],
         ["unknown pass 'quantise'", "known passes: canonicalize"]),
        ("unknown option", [model_path, "--load-pass", option_pass, "-p", "scale{facter=2}"],
         ["no option 'facter'", "factor: float"]),
        ("bad option value", [model_path, "--load-pass", option_pass, "-p", "scale{steps=many}"],
         ["option 'steps' of pass 'scale' expects int, not 'many'"]),
        ("bad bool", [model_path, "--load-pass", option_pass, "-p", "scale{enabled=maybe}"],
         ["expects bool"]),
        ("bad choice", [model_path, "--load-pass", option_pass, "-p", "scale{mode=slow}"],
         ["must be one of fast, exact"]),
        ("unparsable pipeline", [model_path, "-p", "canonicalize{"], ["cannot parse pipeline"]),
        ("missing pass file", [model_path, "--load-pass", "nowhere.py:Foo"], ["does not exist"]),
        ("output is input", [model_path, "-o", model_path], ["is the input file"]),
        ("option given twice", [model_path, "--load-pass", option_pass, "-p", "scale{steps=1,steps=2}"],
         ["option 'steps' of pass 'scale' is given twice"]),
        ("empty pipeline", [model_path, "-p", " "], ["the pipeline is empty"]),
        ("print after a pass not run", [model_path, "--print-ir-after", "canonicalize", "-p",
                                        "scale", "--load-pass", option_pass],
         ["--print-ir-after 'canonicalize': the pipeline (scale) does not run it"]),
    ]


def test_every_bad_input_gets_one_line_status_2_and_no_output(capsys, tmp_path, model_path, option_pass):
    for sub in ("missing_data", "outside"):
        (tmp_path / sub).mkdir()
    original = model_path.read_bytes()
    for name, argv, words in _bad_inputs(tmp_path, model_path, option_pass):
        out_folder = tmp_path / f"out_{name.replace(' ', '_')}"
        out_folder.mkdir()
        output = ["-o", out_folder / "out.kirin"] if "-o" not in argv else []
        status, _, err = run(capsys, *argv, *output)
        assert status == 2, name
        assert err.count("\n") == 1 and err.startswith("kirinc: error: "), (name, err)
        for word in words:
            assert word in err, (name, err)
        assert list(out_folder.iterdir()) == [], name  # no output, not even a temporary
    assert model_path.read_bytes() == original  # the input is never touched


@pytest.mark.parametrize("case", ["missing folder", "directory"])
def test_unwritable_output_path(capsys, model_path, tmp_path, case):
    output = tmp_path / "no" / "such" / "dir" / "out.kirin" if case == "missing folder" else tmp_path
    status, _, err = run(capsys, model_path, "-o", output)
    assert status == 2 and err.startswith("kirinc: error: ") and err.count("\n") == 1
    assert "does not exist" in err or "is a directory" in err
    assert not (tmp_path / "no").exists()


def test_a_failing_output_write_leaves_no_partial_file(capsys, model_path, tmp_path, monkeypatch):
    import onnx_ir

    def crash(*args, **kwargs):
        pathlib.Path(args[1]).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(onnx_ir, "save", crash)
    status, _, err = run(capsys, model_path, "-p", "canonicalize", "-o", tmp_path / "out.kirin")
    assert status == 2 and err == f"kirinc: error: cannot write '{tmp_path / 'out.kirin'}': disk full\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny_llama.onnx"]


def test_separate_processes_give_byte_identical_output(tmp_path, exported):
    """Across processes (different hash seeds, memory layouts), on an export whose roles come
    from structure alone."""
    import subprocess
    import sys

    proto = onnx.load(exported("opt", "torchscript", 17))
    for index, node in enumerate(proto.graph.node):
        node.name = f"n{index}"
    onnx.save(proto, tmp_path / "anonymous.onnx")
    np.save(tmp_path / "ids.npy", np.arange(64).reshape(2, 32) % 128)
    outputs = []
    for seed in ("1", "2"):
        out = tmp_path / f"out{seed}.kirin"
        subprocess.run(
            [sys.executable, "-m", "kirin_compiler", str(tmp_path / "anonymous.onnx"), "-o", str(out),
             "--dump-dir", str(tmp_path / f"dumps{seed}"), "--calib", str(tmp_path / "ids.npy"),
             "--calib-length", "16", "--no-calib-cache"],
            check=True, capture_output=True, env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
        )
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    first, second = ((tmp_path / f"dumps{s}" / "01_canonicalize.txt").read_text() for s in "12")
    assert first == second and "role=fc1" in first and "role=out" in first


# kirinc run ---------------------------------------------------------------------------------------


def test_run_prints_outputs_and_saves_them(capsys, model_path, tmp_path):
    ids = np.arange(12, dtype=np.int64)
    np.save(tmp_path / "ids.npy", ids)
    status, out, _ = run(capsys, "run", model_path, "--input", tmp_path / "ids.npy",
                         "--save", tmp_path / "logits.npy")
    assert status == 0
    assert "input       input_ids: [1, 12] token ids" in out
    assert "output      logits: float32[1, 12, 256]" in out
    saved = np.load(tmp_path / "logits.npy")
    from kirin_compiler.backends import onnxruntime as ort_backend

    expected = ort_backend.run(load_model(model_path), {"input_ids": ids[None]})[0]
    assert np.abs(saved - expected).max() <= 1e-5
    assert f"next token  {expected[0, -1].argmax()} " in out


def test_run_tokenizes_text(capsys, model_path, tmp_path):
    import tokenizers

    vocabulary = {f"w{i}": i for i in range(256)} | {"[UNK]": 255}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocabulary, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    (tmp_path / "tok").mkdir()
    tokenizer.save(str(tmp_path / "tok" / "tokenizer.json"))
    (tmp_path / "prompt.txt").write_text("w1 w2 w3 w200")
    status, out, _ = run(capsys, "run", model_path, "--input", tmp_path / "prompt.txt",
                         "--tokenizer", tmp_path / "tok", "--save", tmp_path / "all.npz")
    assert status == 0 and "input_ids: [1, 4] token ids" in out
    assert np.load(tmp_path / "all.npz")["logits"].shape == (1, 4, 256)


def test_run_reports_a_failing_input_in_one_line(capsys, model_path, tmp_path):
    np.save(tmp_path / "ids.npy", np.array([1, 2, 100_000]))  # past the 256-token vocabulary
    status, _, err = run(capsys, "run", model_path, "--input", tmp_path / "ids.npy")
    assert status == 2 and err.count("\n") == 1
    assert "holds the token id 100000 (at [0, 2]), past the model's vocabulary of 256 tokens" in err


@pytest.mark.parametrize("case", ["text without tokenizer", "float ids", "missing input", "bad save name"])
def test_run_bad_input(capsys, model_path, tmp_path, case):
    (tmp_path / "prompt.txt").write_text("hello")
    np.save(tmp_path / "floats.npy", np.ones(3))
    np.save(tmp_path / "ids.npy", np.arange(3))
    argv = {
        "text without tokenizer": ["--input", tmp_path / "prompt.txt"],
        "float ids": ["--input", tmp_path / "floats.npy"],
        "missing input": ["--input", tmp_path / "nope.npy"],
        "bad save name": ["--input", tmp_path / "ids.npy", "--save", tmp_path / "x.csv"],
    }[case]
    words = {"text without tokenizer": "give --tokenizer", "float ids": "token ids are integers",
             "missing input": "does not exist", "bad save name": "use a .npy or .npz"}[case]
    status, _, err = run(capsys, "run", model_path, *argv)
    assert status == 2 and err.startswith("kirinc: error: ") and err.count("\n") == 1
    assert words in err
    assert not (tmp_path / "x.csv").exists()


def test_the_input_weights_file_is_never_an_output(capsys, tmp_path):
    source = _external_model(tmp_path)
    weights = tmp_path / "weights.bin"
    original = weights.read_bytes()
    status, _, err = run(capsys, source, "-o", weights)
    assert status == 2 and "the input's weights" in err
    assert weights.read_bytes() == original
