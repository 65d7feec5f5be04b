"""Bad input, as a table: each case sets up files in a fresh folder and runs one kirinc command.

Every case must end the same way: exit status 2, one line on stderr (``kirinc: error: ...``, no
traceback), no output file left behind, and every file the case gave kirinc unchanged (and still
what it was: a FIFO stays a FIFO).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import stat
from typing import Callable

import numpy as np
import onnx
import onnx.numpy_helper as onh
import pytest
from conftest import REPO, TINY_LLAMA, TINY_LLAMA_IDS

from kirin_compiler.cli import main

TOKENIZER = REPO / "models" / "wiki_tokenizer"
TEXT = REPO / "models" / "wiki_calib.txt"


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    argv: Callable[[pathlib.Path], list]  # the command, given the case's folder (inputs ready)
    message: str  # a part of the error line
    setup: Callable[[pathlib.Path], None] = lambda folder: None


def _inputs(folder: pathlib.Path) -> None:
    """What every case starts with: the tiny model, its ids, a text and a tokenizer, copied."""
    shutil.copy(TINY_LLAMA, folder / "model.onnx")
    shutil.copy(TINY_LLAMA_IDS, folder / "ids.npy")
    shutil.copy(TEXT, folder / "text.txt")
    shutil.copytree(TOKENIZER, folder / "tok")
    (folder / "plugin.py").write_text(
        "import dataclasses\nfrom kirin_compiler import Pass\n\n"
        "@dataclasses.dataclass(frozen=True)\nclass Nothing(Pass):\n    name = 'nothing'\n\n"
        "    def call(self, model):\n        import onnx_ir as ir\n"
        "        return ir.passes.PassResult(model, False)\n"
    )


def _fifo(name: str) -> Callable[[pathlib.Path], None]:
    return lambda folder: os.mkfifo(folder / name)


def _link(name: str, target: str, hard: bool = False) -> Callable[[pathlib.Path], None]:
    def setup(folder: pathlib.Path) -> None:
        (os.link if hard else os.symlink)(folder / target, folder / name)
    return setup


def _earlier_dump(folder: pathlib.Path) -> None:
    assert main([str(folder / "model.onnx"), "-p", "canonicalize", "--dump-dir", str(folder / "d")]) == 0


def _hand_edited_manifest(folder: pathlib.Path) -> None:
    _earlier_dump(folder)
    (folder / "d" / "notes.txt").write_text("mine")
    manifest = json.loads((folder / "d" / "manifest.json").read_text())
    manifest["input"]["files"].append("notes.txt")
    (folder / "d" / "manifest.json").write_text(json.dumps(manifest))


def _edited_dump_file(folder: pathlib.Path) -> None:
    _earlier_dump(folder)
    (folder / "d" / "01_canonicalize.txt").write_text("my notes on the IR")


def _edited(edit: Callable[[onnx.ModelProto], None], name: str = "bad.onnx") -> Callable[[pathlib.Path], None]:
    """A setup that writes the tiny model, changed by ``edit``, as ``name``."""
    def setup(folder: pathlib.Path) -> None:
        model = onnx.load(TINY_LLAMA)
        edit(model)
        onnx.save(model, folder / name)
    return setup


def _compiled(folder: pathlib.Path) -> None:
    """``model.kirin``: the tiny model compiled with the default pipeline."""
    argv = [folder / "model.onnx", "-o", folder / "model.kirin", "--calib", folder / "ids.npy", "--no-calib-cache"]
    assert main([str(a) for a in argv]) == 0


def _ids(values) -> Callable[[pathlib.Path], None]:
    return lambda folder: np.save(folder / "bad.npy", np.asarray(values))


def _set_embedding(model: onnx.ModelProto, value: float) -> None:
    table = model.graph.initializer[0]
    array = onh.to_array(table).copy()
    array[3, 5] = value
    table.CopyFrom(onh.from_array(array, table.name))


def _set_input_dim(model: onnx.ModelProto, value: int) -> None:
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = value


def _set_metadata(key: str, value: str) -> Callable[[onnx.ModelProto], None]:
    return lambda model: onnx.helper.set_model_props(model, {key: value})


def _set(field: str, value) -> Callable[[onnx.ModelProto], None]:
    return lambda model: setattr(model, field, value)


M, B = "model.onnx", "bad.onnx"
CASES = [
    # an output onto a file the run reads
    Case("-o onto the calibration ids", lambda f: [f / M, "-p", "canonicalize", "--calib", f / "ids.npy",
                                                   "-o", f / "ids.npy"], "the token ids"),
    Case("-o onto the calibration text", lambda f: [f / M, "-p", "canonicalize", "--calib", f / "text.txt",
                                                    "--tokenizer", f / "tok", "-o", f / "text.txt"], "the text"),
    Case("-o onto the tokenizer", lambda f: [f / M, "-p", "canonicalize", "--calib", f / "text.txt",
                                             "--tokenizer", f / "tok", "-o", f / "tok" / "tokenizer.json"],
         "the tokenizer"),
    Case("-o onto a --load-pass file", lambda f: [f / M, "--load-pass", f"{f / 'plugin.py'}:Nothing",
                                                  "-p", "nothing", "-o", f / "plugin.py"], "the pass plugin"),
    Case("-o onto a symlink to the input", lambda f: [f / M, "-p", "canonicalize", "-o", f / "link.onnx"],
         "is the input file", _link("link.onnx", M)),
    Case("-o onto a hard link to the ids", lambda f: [f / M, "-p", "canonicalize", "--calib", f / "ids.npy",
                                                      "-o", f / "ids2.npy"], "the token ids",
         _link("ids2.npy", "ids.npy", hard=True)),
    Case("run --save onto its --input", lambda f: ["run", f / M, "--input", f / "ids.npy", "--save", f / "ids.npy"],
         "the token ids"),
    Case("eval --json onto its --text", lambda f: ["eval", f / M, "--text", f / "text.txt", "--tokenizer", f / "tok",
                                                   "--json", f / "text.txt", "--length", "8"],
         "would replace the text"),
    # outputs that are not regular files
    Case("-o onto a FIFO", lambda f: [f / M, "-p", "canonicalize", "-o", f / "pipe"], "not a regular file",
         _fifo("pipe")),
    Case("-o onto /dev/null", lambda f: [f / M, "-p", "canonicalize", "-o", "/dev/null"], "not a regular file"),
    Case("run --save onto a FIFO", lambda f: ["run", f / M, "--input", f / "ids.npy", "--save", f / "pipe.npy"],
         "not a regular file", _fifo("pipe.npy")),
    # a reused dump folder removes only what it can prove it wrote
    Case("--dump-dir holding the run's input", lambda f: [f / "d" / "00_input.onnx", "-p", "canonicalize",
                                                          "--dump-dir", f / "d"], "which this run reads",
         _earlier_dump),
    Case("--dump-dir whose manifest lists a user file", lambda f: [f / M, "-p", "canonicalize", "--dump-dir", f / "d"],
         "not the file the earlier dump wrote", _hand_edited_manifest),
    Case("--dump-dir with a dump file edited by hand", lambda f: [f / M, "-p", "canonicalize", "--dump-dir", f / "d"],
         "not the file the earlier dump wrote", _edited_dump_file),
    # token ids the model would read wrongly (ONNX Gather wraps negative indices)
    Case("run with a negative token id", lambda f: ["run", f / M, "--input", f / "bad.npy"], "token id -3",
         _ids([1, 2, -3])),
    Case("verify with a negative token id", lambda f: ["verify", f / "model.kirin", "--input", f / "bad.npy"],
         "token id -1", lambda f: (_compiled(f), _ids([[5, -1]])(f))),
    Case("--calib with a negative token id", lambda f: [f / M, "-p", "canonicalize", "--calib", f / "bad.npy",
                                                        "-o", f / "out.kirin"], "token id -7", _ids([-7, 4])),
    Case("uint64 token ids past int64", lambda f: ["run", f / M, "--input", f / "bad.npy"],
         "token id 18446744073709551615", lambda f: np.save(f / "bad.npy", np.array([3, 2**64 - 1], np.uint64))),
    # models that would compile to something wrong, refused when loaded
    Case("a NaN in the embedding", lambda f: [f / B, "-p", "canonicalize", "-o", f / "out.kirin"],
         "holds NaN or infinite values (the first at [3, 5])", _edited(lambda m: _set_embedding(m, np.nan))),
    Case("an infinity in the embedding", lambda f: ["run", f / B, "--input", f / "ids.npy"],
         "holds NaN or infinite values", _edited(lambda m: _set_embedding(m, np.inf))),
    Case("a model without outputs", lambda f: [f / B, "-p", "canonicalize", "-o", f / "out.kirin"],
         "has no graph outputs", _edited(lambda m: m.graph.ClearField("output"))),
    Case("an IR version from the future", lambda f: [f / B, "-p", "canonicalize", "-o", f / "out.kirin"],
         "ONNX IR version 99", _edited(_set("ir_version", 99))),
    Case("a negative dimension", lambda f: ["inspect", f / B], "the dimension -4",
         _edited(lambda m: _set_input_dim(m, -4))),
    Case("a dimension of 2^40", lambda f: ["inspect", f / B], "the dimension 1099511627776",
         _edited(lambda m: _set_input_dim(m, 2**40))),
    Case("a format version that is not a number", lambda f: ["inspect", f / B], "is not a version number",
         _edited(_set_metadata("kirin.format_version", "abc"))),
    # files that are not what they claim: one line, no traceback
    Case("a corrupt tokenizer.json", lambda f: ["run", f / M, "--input", f / "ids.npy", "--tokenizer", f / "tok"],
         "is not a readable tokenizer", lambda f: (f / "tok" / "tokenizer.json").write_text("{not json")),
    Case("a text that is not UTF-8", lambda f: ["run", f / M, "--input", f / "bad.txt", "--tokenizer", f / "tok"],
         "is not UTF-8 text (byte 0xff at offset 0)", lambda f: (f / "bad.txt").write_bytes(b"\xff\xfe ids")),
    Case("a 0-byte .npy", lambda f: ["run", f / M, "--input", f / "bad.npy"], "is not a readable .npy file",
         lambda f: (f / "bad.npy").write_bytes(b"")),
    Case("an .npz named .npy", lambda f: [f / M, "-p", "canonicalize", "--calib", f / "bad.npy", "-o", f / "o.kirin"],
         "is an .npz archive", lambda f: (np.savez(f / "bad.npz", ids=np.arange(4)), (f / "bad.npz").rename(f / "bad.npy"))),
    Case("a dump folder that cannot be made", lambda f: [f / M, "-p", "canonicalize", "--dump-dir", f / "ids.npy" / "d"],
         "cannot create --dump-dir"),
    Case("--calib naming a folder", lambda f: [f / M, "-p", "canonicalize", "--calib", f / "tok", "-o", f / "o.kirin"],
         "is a folder"),
    # plugins
    Case("a plugin calling sys.exit at import", lambda f: [f / M, "--load-pass", f"{f / 'exits.py'}:X", "-p", "canonicalize"],
         "called sys.exit(3)", lambda f: (f / "exits.py").write_text("import sys\nsys.exit(3)\n")),
    Case("a plugin pass with a required option", lambda f: [f / M, "--load-pass", f"{f / 'needs.py'}:Needs", "-p", "needs"],
         "options without a default (factor)", lambda f: (f / "needs.py").write_text(
             "import dataclasses\nfrom kirin_compiler import Pass\n\n@dataclasses.dataclass(frozen=True)\n"
             "class Needs(Pass):\n    name = 'needs'\n    factor: float\n")),
    # options the model cannot honour
    Case("quantize{group=48} on 64 channels", lambda f: [f / M, "-p", "canonicalize,quantize{group=48}",
                                                         "-o", f / "out.kirin"], "group=48 does not divide"),
]


def _state(folder: pathlib.Path) -> dict[str, tuple]:
    """Every entry under ``folder``: its kind, and a regular file's sha256."""
    state = {}
    for path in sorted(folder.rglob("*")):
        mode = path.lstat().st_mode
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(mode) else None
        state[str(path.relative_to(folder))] = (stat.S_IFMT(mode), digest)
    return state


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_error_line_and_loses_nothing(case, tmp_path, capsys):
    _inputs(tmp_path)
    case.setup(tmp_path)
    capsys.readouterr()
    before = _state(tmp_path)
    null = os.stat("/dev/null")
    status = main([str(a) for a in case.argv(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("kirinc: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert case.message in err, err
    assert _state(tmp_path) == before  # nothing lost, changed or left behind
    assert os.stat("/dev/null").st_rdev == null.st_rdev and stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_ctrl_c_is_one_line_and_leaves_no_output(tmp_path, capsys, monkeypatch):
    from kirin_compiler.cli import compile as compile_command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(compile_command, "compile_model", interrupted)
    _inputs(tmp_path)
    before = _state(tmp_path)
    status = main([str(tmp_path / M), "-p", "canonicalize", "-o", str(tmp_path / "out.kirin")])
    assert status == 130 and capsys.readouterr().err == "kirinc: interrupted\n"
    assert _state(tmp_path) == before


def test_the_recorded_calibration_is_what_ran(tmp_path, capsys):
    """16 ids asked to make 8 windows of 512 make one window of 16: that is what is recorded,
    and verify finds those windows again from the record."""
    import onnx_ir as ir

    _inputs(tmp_path)
    out = tmp_path / "model.kirin"
    assert main([str(tmp_path / M), "-o", str(out), "--calib", str(tmp_path / "ids.npy"), "--no-calib-cache",
                 "--calib-length", "512", "--calib-windows", "8"]) == 0
    record = json.loads(ir.load(out).metadata_props["kirin.calibration"])
    assert json.loads(record["source"])["length"] == 16 and json.loads(record["source"])["windows"] == 1
    assert record["runs"] == 1 and record["tokens"] == 16
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0


def test_a_plugin_loaded_by_an_earlier_run_is_still_protected(tmp_path, capsys):
    _inputs(tmp_path)
    load = ["--load-pass", f"{tmp_path / 'plugin.py'}:Nothing", "-p", "nothing"]
    assert main([str(tmp_path / M), *load]) == 0  # the module is imported once per process
    before = _state(tmp_path)
    capsys.readouterr()
    assert main([str(tmp_path / M), *load, "-o", str(tmp_path / "plugin.py")]) == 2
    assert "the pass plugin" in capsys.readouterr().err
    assert _state(tmp_path) == before
