"""Bad input, as a table: each case sets up files in a fresh folder and runs one kirinc command.

Every case must end the same way: exit status 2, one line on stderr (``kirinc: error: ...``, no
traceback), no output file left behind, and every file the case gave kirinc unchanged (and still
what it was: a FIFO stays a FIFO).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import resource
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
WIKI = REPO / "models" / "wiki_llama.onnx"  # the model of the tokenizer (read in place, never written)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    argv: Callable[[pathlib.Path], list]  # the command, given the case's folder (inputs ready)
    message: str  # a part of the error line
    setup: Callable[[pathlib.Path], None] = lambda folder: None
    file_limit: int | None = None  # bytes any file may grow to (RLIMIT_FSIZE): a full disk


@pytest.fixture(scope="module")
def compiled(tmp_path_factory) -> pathlib.Path:
    """The tiny model compiled with the default pipeline, once for the module."""
    out = tmp_path_factory.mktemp("compiled") / "model.kirin"
    assert main([str(TINY_LLAMA), "-o", str(out), "--calib", str(TINY_LLAMA_IDS), "--no-calib-cache"]) == 0
    return out


def _inputs(folder: pathlib.Path, compiled: pathlib.Path) -> None:
    """What every case starts with: the tiny model and its compiled ``model.kirin``, its ids,
    a text and a tokenizer, copied."""
    shutil.copy(TINY_LLAMA, folder / "model.onnx")
    shutil.copy(compiled, folder / "model.kirin")
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


def _null_device(path: pathlib.Path) -> None:
    """A device node like /dev/null, of the case's own: a build that replaces it (as root, -o
    /dev/null would replace the system's) harms only the case's folder."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("making a device node needs root (CI runs as root)")


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
    Case("-o onto the calibration text", lambda f: [WIKI, "-p", "canonicalize", "--calib", f / "text.txt",
                                                    "--tokenizer", f / "tok", "-o", f / "text.txt"], "the text"),
    Case("-o onto the tokenizer", lambda f: [WIKI, "-p", "canonicalize", "--calib", f / "text.txt",
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
    Case("-o onto a character device", lambda f: [f / M, "-p", "canonicalize", "-o", f / "null"], "not a regular file",
         lambda f: _null_device(f / "null")),
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
         "token id -1", _ids([[5, -1]])),
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


# -- .kirin contents: refused on load by the validator, by every command with the same line ------


def _node(model: onnx.ModelProto, op: str, index: int = 0) -> onnx.NodeProto:
    return [n for n in model.graph.node if n.op_type == op][index]


def _attr(op: str, name: str, value, index: int = 0) -> Callable[[onnx.ModelProto], None]:
    """Sets (``None``: removes) attribute ``name`` of the ``index``-th ``op`` node."""
    def edit(model: onnx.ModelProto) -> None:
        node = _node(model, op, index)
        for attr in [a for a in node.attribute if a.name == name]:
            node.attribute.remove(attr)
        if value is not None:
            node.attribute.append(onnx.helper.make_attribute(name, value))
    return edit


def _initializer(name: str, change: Callable[[np.ndarray], np.ndarray]) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        tensor = next(t for t in model.graph.initializer if t.name == name)
        tensor.CopyFrom(onh.from_array(np.asarray(change(onh.to_array(tensor))), name))
    return edit


def _inputs_of(op: str, keep: slice | list, index: int = 0) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        node = _node(model, op, index)
        names = list(node.input)
        kept = names[keep] if isinstance(keep, slice) else keep
        del node.input[:]
        node.input.extend(kept)
    return edit


def _opset(domain: str, version: int | None) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        for opset in [o for o in model.opset_import if o.domain == domain]:
            model.opset_import.remove(opset)
        if version is not None:
            model.opset_import.append(onnx.helper.make_opsetid(domain, version))
    return edit


def _node_metadata(op: str, key: str, value: str) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        node = _node(model, op)
        for entry in [e for e in node.metadata_props if e.key == key]:
            node.metadata_props.remove(entry)
        node.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    return edit


def _json_metadata(key: str, **fields) -> Callable[[onnx.ModelProto], None]:
    """Sets (``None``: removes) fields of the JSON object of metadata ``key``."""
    def edit(model: onnx.ModelProto) -> None:
        entry = next(e for e in model.metadata_props if e.key == key)
        value = {**json.loads(entry.value), **fields}
        entry.value = json.dumps({k: v for k, v in value.items() if v is not None})
    return edit


def _pipeline(change: Callable[[str], str]) -> Callable[[onnx.ModelProto], None]:
    def edit(model: onnx.ModelProto) -> None:
        entry = next(e for e in model.metadata_props if e.key == "kirin.pipeline")
        entry.value = change(entry.value)
    return edit


def _hybridize_first(pipeline: str) -> str:
    return "spike-matrix-hybridize," + pipeline.replace(",spike-matrix-hybridize", "")


def _unconvert_encoder(model: onnx.ModelProto) -> None:
    """The first TTFSEncoder back to the ActQuant it was before threshold-insert."""
    node = _node(model, "TTFSEncoder")
    node.op_type = "ActQuant"
    node.attribute.remove(next(a for a in node.attribute if a.name == "window"))


def _redeclare_output(model: onnx.ModelProto) -> None:
    _node(model, "Rescale", 1).output[0] = _node(model, "Rescale", 0).output[0]


def _retype(name: str, data_type: int) -> Callable[[onnx.ModelProto], None]:
    return lambda model: setattr(next(t for t in model.graph.initializer if t.name == name), "data_type", data_type)


def _rename_op(op: str, new: str) -> Callable[[onnx.ModelProto], None]:
    return lambda model: setattr(_node(model, op), "op_type", new)


def _kirin(edit: Callable[[onnx.ModelProto], None]) -> Callable[[pathlib.Path], None]:
    """A setup that writes ``model.kirin``, changed by ``edit``, as ``bad.kirin``."""
    def setup(folder: pathlib.Path) -> None:
        model = onnx.load(folder / "model.kirin")
        edit(model)
        onnx.save(model, folder / "bad.kirin")
    return setup


ENC, SPIKE, RESCALE = "TTFSEncoder", "SpikeMatMul", "Rescale"
WQ, WR, WZ, WS = "layers.0.q.wq", "layers.0.q.wr", "layers.0.q.wz", "layers.0.q.ws"
PV_SCALE = "layers.0.attn-pv.in1.scale"
KIRIN_EDITS = [  # (name, edit, a part of the error line)
    ("no ai.kirin import", _opset("ai.kirin", None), "does not import the ai.kirin opset"),
    ("ai.kirin version 3", _opset("ai.kirin", 3), "opset version 3"),
    ("ai.kirin version 1", _opset("ai.kirin", 1), "opset version 1"),
    ("an op ai.kirin does not define", _rename_op(SPIKE, "SpikeConv"), "is not an ai.kirin op"),
    ("bits=40", _attr(ENC, "bits", 40), "attribute bits=40 is not at least 2 and at most 8"),
    ("bits as a string", _attr(ENC, "bits", "four"), "attribute bits is 'four'; it is an integer"),
    ("bits as a float", _attr(ENC, "bits", 4.0), "attribute bits is 4.0"),
    ("no bits", _attr(ENC, "bits", None), "lacks the attribute bits"),
    ("no window", _attr(ENC, "window", None), "lacks the attribute window"),
    ("window=0", _attr(ENC, "window", 0), "attribute window=0"),
    ("window=-5", _attr(ENC, "window", -5), "attribute window=-5"),
    ("window=10^9", _attr(ENC, "window", 10**9), "attribute window=1000000000"),
    ("a window that is not the codes'", _attr(ENC, "window", 3), "take a window of 8 steps"),
    ("axis=5", _attr(ENC, "axis", 5), "attribute axis=5 is not one of -1, -2"),
    ("signed=2", _attr(ENC, "signed", 2), "attribute signed=2"),
    ("scale='foo'", _attr(ENC, "scale", "foo"), "attribute scale='foo'"),
    ("outliers='bogus'", _attr(ENC, "outliers", "bogus"), "attribute outliers='bogus'"),
    ("outlier_count=0", _attr(ENC, "outlier_count", 0), "attribute outlier_count=0"),
    ("more outliers than channels", _attr(ENC, "outlier_count", 10**6), "is more than its 64 channels"),
    ("token outliers without a count", _attr(ENC, "outlier_count", None), "without an outlier_count"),
    ("clip=-1", _attr(ENC, "clip", -1.0), "attribute clip=-1.0 is not above 0 and at most 1"),
    ("clip=NaN", _attr(ENC, "clip", float("nan")), "attribute clip=nan"),
    ("clip=2", _attr(ENC, "clip", 2.0), "attribute clip=2.0"),
    ("a gain group that does not divide", _attr(ENC, "group", 7), "group=7 does not divide its 64 channels"),
    ("gain_bits=20", _attr(ENC, "gain_bits", 20), "attribute gain_bits=20"),
    ("gains on unsigned codes", _attr(ENC, "signed", 0), "gains come with signed codes only"),
    ("an attribute the op does not have", _attr(ENC, "colour", 3), "has an attribute 'colour'"),
    ("an ActQuant of 1 bit", _attr("ActQuant", "bits", 1), "attribute bits=1"),
    ("an ActQuant of 9 bits", _attr("ActQuant", "bits", 9), "attribute bits=9"),
    ("a SpikeMatMul with one input", _inputs_of(SPIKE, slice(0, 1)), "has 1 input; it takes 2 to 4"),
    ("a SpikeMatMul with 9 inputs", _inputs_of(SPIKE, [WQ] * 9), "has 9 inputs; it takes 2 to 4"),
    ("a SpikeMatMul without its weight", _inputs_of(SPIKE, ["layers.0.q.in0.q", ""]), "input 1 is required"),
    ("group=-1", _attr(SPIKE, "group", -1), "attribute group=-1"),
    ("group='x'", _attr(SPIKE, "group", "x"), "attribute group is 'x'"),
    ("a weight group that does not divide", _attr(SPIKE, "group", 5), "group=5 does not divide the weight's 64 rows"),
    ("a Rescale with 2 inputs", _inputs_of(RESCALE, slice(0, 2)), "has 2 inputs; it takes 3 to 5"),
    ("a Rescale with U and no outlier scale", _inputs_of(RESCALE, slice(0, 4)), "one of its outlier inputs"),
    ("INT32 weight codes", _initializer(WQ, lambda a: a.astype(np.int32)), "holds INT32[64, 64]"),
    ("INT8 weight codes of 100", _initializer(WQ, lambda a: np.full(a.shape, 100, np.int8)), "the weight code 100"),
    ("a weight code of -9", _initializer(WQ, lambda a: np.full(a.shape, -9, np.int8)), "the weight code -9"),
    ("float weight codes", _initializer(WQ, lambda a: a.astype(np.float32)), "holds FLOAT[64, 64]"),
    ("3-D weight codes", _initializer(WQ, lambda a: a.astype(np.int8).reshape(1, 64, 64)), "INT4 or INT8 [K, N]"),
    ("float block sub-scales", _initializer(WR, lambda a: a.astype(np.float32)), "holds FLOAT[2, 64]"),
    ("block sub-scales of the wrong shape", _initializer(WR, lambda a: a[:1]), "it must be UINT8[2, 64]"),
    ("INT32 block offsets", _initializer(WZ, lambda a: a.astype(np.int32)), "it must be INT16[2, 64]"),
    ("a NaN weight scale", _initializer(WS, lambda a: np.full_like(a, np.nan)), "holds the value nan"),
    ("an infinite weight scale", _initializer(WS, lambda a: np.full_like(a, np.inf)), "holds the value inf"),
    ("integer weight scales", _initializer(WS, lambda a: a.astype(np.int32)), "must be floating point"),
    ("a NaN static scale", _initializer(PV_SCALE, lambda a: np.full_like(a, np.nan)), "must be finite and above 0"),
    ("a negative static scale", _initializer(PV_SCALE, lambda a: -a), "holds the value -"),
    ("a zero static scale", _initializer(PV_SCALE, np.zeros_like), "holds the value 0.0"),
    ("a pipeline record that does not parse", _set_metadata("kirin.pipeline", "canon{{{"), "is not a pipeline"),
    ("no pipeline record", _set_metadata("kirin.pipeline", ""), "('empty') does not record"),
    ("a record that skips passes", _set_metadata("kirin.pipeline", "canonicalize,frobnicate"),
     "does not record"),
    ("a record without energy-annotate", _pipeline(lambda p: p.rsplit(",energy-annotate", 1)[0]),
     "is written by energy-annotate, which"),
    ("a record with passes out of order", _pipeline(_hybridize_first),
     "out of order"),
    ("a record of a pass that did not run", _unconvert_encoder, "records threshold-insert, but node"),
    ("a record of quantize run twice", _pipeline(lambda p: p + ",quantize"), "records quantize 2 times"),
    ("a record with a bad option", _pipeline(lambda p: p.replace("quantize{bits=4", "quantize{bits=four")),
     "option 'bits' of pass 'quantize' expects int"),
    ("a record of 2-bit weights", _pipeline(lambda p: p.replace("quantize{bits=4", "quantize{bits=2")),
     "makes codes -2 to 1"),
    ("kirin.timesteps not JSON", _set_metadata("kirin.timesteps", "{oops"), "kirin.timesteps is not JSON"),
    ("kirin.timesteps a list", _set_metadata("kirin.timesteps", "[1, 2]"), "it is a JSON object"),
    ("kirin.timesteps without a total", _set_metadata("kirin.timesteps", '{"total": "x"}'), "total='x'"),
    ("a time-step share that is text", _json_metadata("kirin.timesteps", reduction="x"), "reduction='x'"),
    ("time steps by layer that are text", _json_metadata("kirin.timesteps", per_layer="x"), "per_layer='x'"),
    ("a workload of text tokens", _json_metadata("kirin.workload", tokens="x"), "tokens='x'"),
    ("a workload in a mode that does not exist", _json_metadata("kirin.workload", mode="fast"), "mode='fast'"),
    ("a calibration record without its sha256", _json_metadata("kirin.calibration", sha256=None),
     "lacks its field 'sha256'"),
    ("a calibration source that is a number", _json_metadata("kirin.calibration", source=5), "source=5"),
    ("a calibration file that is a number", _json_metadata("kirin.calibration", source='{"file": 3}'), "file=3"),
    ("a calibration window of -4 tokens", _json_metadata(
        "kirin.calibration", source='{"file": "ids.npy", "length": -4, "windows": 1}'), "length=-4"),
    ("kirin.workload not JSON", _set_metadata("kirin.workload", "nope"), "kirin.workload is not JSON"),
    ("kirin.calibration not JSON", _set_metadata("kirin.calibration", "nope"), "kirin.calibration is not JSON"),
    ("kirin.source not JSON", _set_metadata("kirin.source", "nope"), "kirin.source is not JSON"),
    ("kirin.ops not JSON", _node_metadata(SPIKE, "kirin.ops", "{x"), "kirin.ops is not JSON"),
    ("negative kirin.ops", _node_metadata(SPIKE, "kirin.ops", '{"spikes": -5}'), "spikes=-5"),
    ("NaN in kirin.ops", _node_metadata(SPIKE, "kirin.ops", '{"spikes": NaN}'), "spikes=nan"),
    ("kirin.layer not a number", _node_metadata(SPIKE, "kirin.layer", "x"), "kirin.layer='x'"),
    ("a format version from the future", _set_metadata("kirin.format_version", "2"), "format version 2"),
    ("a format version that is no number", _set_metadata("kirin.format_version", "abc"), "is not a version number"),
    ("an output declared twice", _redeclare_output, "is redeclared"),
    ("a data type that does not exist", _retype(WS, 99), "99 is not a valid DataType"),
]
KIRIN_COMMANDS = {  # the commands that load a .kirin, each with the file
    "run": lambda f: ["run", f / "bad.kirin", "--input", f / "ids.npy"],
    "verify": lambda f: ["verify", f / "bad.kirin", "--input", f / "ids.npy"],
}
CASES += [
    Case(f"{command}: {name}", lambda f, c=command: KIRIN_COMMANDS[c](f), message, _kirin(edit))
    for name, edit, message in KIRIN_EDITS for command in KIRIN_COMMANDS
]
CASES += [  # other commands on .kirin files
    Case("inspect: a truncated .kirin", lambda f: ["inspect", f / "bad.kirin"], "is not a readable ONNX model",
         lambda f: (f / "bad.kirin").write_bytes((f / "model.kirin").read_bytes()[:5000])),
    Case("recompile: a damaged kirin.timesteps", lambda f: [f / "bad.kirin", "-p", "energy-annotate", "-o", f / "o.kirin",
                                                            "--calib", f / "ids.npy", "--no-calib-cache"],
         "kirin.timesteps is not JSON", _kirin(_set_metadata("kirin.timesteps", "{oops"))),
    Case("recompile: weight codes out of range", lambda f: [f / "bad.kirin", "-p", "canonicalize", "-o", f / "o.kirin"],
         "the weight code 100", _kirin(_initializer(WQ, lambda a: np.full(a.shape, 100, np.int8)))),
    Case("eval: a tampered record", lambda f: ["eval", f / "bad.kirin", "--text", f / "ids.npy", "--length", "8"],
         "out of order", _kirin(_pipeline(_hybridize_first))),
]


# -- ONNX files and their external data -------------------------------------------------------------


def _tiny_graph(folder: pathlib.Path, name: str, nodes, initializers=(), opset: int = 18) -> None:
    """A model ``y = f(x)``, x and y float [1, 4], saved as ``name``."""
    graph = onnx.helper.make_graph(
        nodes, "g", [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])], list(initializers),
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)], ir_version=9)
    onnx.save(model, folder / name)


def _external(name: str, location: str, folder: pathlib.Path, size: int | None = None) -> onnx.TensorProto:
    """A [4, 4] float tensor whose data lies in ``location`` (written beside the folder's parent
    when it points there, ``size`` bytes of it)."""
    array = np.ones((4, 4), np.float32)
    data = folder / location
    if not data.parent.exists():
        data.parent.mkdir(parents=True)
    data.write_bytes(array.tobytes()[: size if size is not None else array.nbytes])
    tensor = onh.from_array(array, name)
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(array.nbytes))):
        tensor.external_data.append(onnx.StringStringEntryProto(key=key, value=value))
    return tensor


def _constant_outside(folder: pathlib.Path) -> None:
    (folder / "m").mkdir()
    value = _external("c", "../outside.bin", folder / "m")
    _tiny_graph(folder / "m", "model.onnx", [onnx.helper.make_node("Constant", [], ["c"], value=value, name="const"),
                                             onnx.helper.make_node("MatMul", ["x", "c"], ["y"], name="mm")])


def _if_branch_outside(folder: pathlib.Path) -> None:
    (folder / "m").mkdir()
    weight = _external("w", "../outside.bin", folder / "m")

    def branch(name):
        return onnx.helper.make_graph([onnx.helper.make_node("MatMul", ["x", "w"], [f"{name}_y"], name=f"{name}_mm")],
                                      name, [], [onnx.helper.make_tensor_value_info(f"{name}_y", 1, [1, 4])], [weight])
    condition = onh.from_array(np.array(True), "cond")
    _tiny_graph(folder / "m", "model.onnx", [onnx.helper.make_node("If", ["cond"], ["y"], name="if",
                                                                   then_branch=branch("then"), else_branch=branch("else"))],
                [condition])


def _input_besides_the_ids(folder: pathlib.Path) -> None:
    """A decoder that also takes an input kirinc has no natural value for."""
    table = onh.from_array(np.ones((256, 4), np.float32), "embedding")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Gather", ["embedding", "input_ids"], ["x"], name="embed"),
         onnx.helper.make_node("Mul", ["x", "temperature"], ["y"], name="scale")], "g",
        [onnx.helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["batch", "sequence"]),
         onnx.helper.make_tensor_value_info("temperature", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", "sequence", 4])], [table],
    )
    onnx.save(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 18)], ir_version=9),
              folder / B)


def _weights_beside(location: str, size: int | None = None) -> Callable[[pathlib.Path], None]:
    def setup(folder: pathlib.Path) -> None:
        _tiny_graph(folder, "ext.onnx", [onnx.helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                    [_external("w", location, folder, size)])
        if size == -1:
            (folder / location).unlink()
    return setup


def _ops(*nodes, opset: int = 18) -> Callable[[pathlib.Path], None]:
    return lambda folder: _tiny_graph(folder, B, list(nodes), opset=opset)


CASES += [
    # ONNX files, their weights and their external data
    Case("a Constant's data outside the model's folder", lambda f: [f / "m" / "model.onnx", "-p", "canonicalize",
                                                                     "-o", f / "m" / "o.kirin"],
         "attribute 'value' of node 'const'", _constant_outside),
    Case("an If branch's weights outside the model's folder", lambda f: [f / "m" / "model.onnx", "-p", "canonicalize",
                                                                          "-o", f / "m" / "o.kirin"],
         "initializer 'w'", _if_branch_outside),
    Case("external data that is missing", lambda f: ["inspect", f / "ext.onnx"], "is missing",
         _weights_beside("w.bin", size=-1)),
    Case("external data that is too short", lambda f: ["run", f / "ext.onnx", "--input", f / "ids.npy"], "too short",
         _weights_beside("w.bin", size=10)),
    Case("external data in a folder above", lambda f: [f / "ext.onnx", "-p", "canonicalize", "-o", f / "o.kirin"],
         "outside the model's folder", _weights_beside("../w.bin")),
    Case("a model that is text", lambda f: ["inspect", f / "text.txt"], "is not a readable ONNX model"),
    Case("a model that is token ids", lambda f: [f / "ids.npy", "-p", "canonicalize", "-o", f / "o.kirin"],
         "is not a readable ONNX model"),
    Case("an empty model file", lambda f: ["inspect", f / B], "is not an ONNX model",
         lambda f: (f / B).write_bytes(b"")),
    Case("a truncated ONNX file", lambda f: [f / B, "-p", "canonicalize"], "is not a readable ONNX model",
         lambda f: (f / B).write_bytes(TINY_LLAMA.read_bytes()[:3000])),
    Case("a model that does not exist", lambda f: [f / "missing.onnx", "-p", "canonicalize"], "does not exist"),
    Case("a model that is a folder", lambda f: ["run", f / "tok", "--input", f / "ids.npy"], "is not a file"),
    Case("ONNX opset 11", lambda f: ["inspect", f / B], "opset 11",
         _ops(onnx.helper.make_node("Relu", ["x"], ["y"], name="r"), opset=11)),
    Case("an op that ONNX does not define", lambda f: ["inspect", f / B], "is not an ONNX operator",
         _ops(onnx.helper.make_node("Frobnicate", ["x"], ["y"], name="f"))),
    Case("a custom-domain op", lambda f: ["inspect", f / B], "custom-domain op",
         _ops(onnx.helper.make_node("Gelu", ["x"], ["y"], name="g", domain="com.example"))),
    Case("an ONNX node output declared twice", lambda f: ["inspect", f / B], "is redeclared",
         _ops(onnx.helper.make_node("Relu", ["x"], ["y"], name="a"), onnx.helper.make_node("Neg", ["x"], ["y"], name="b"))),
    Case("an ONNX input used before it is made", lambda f: ["inspect", f / B], "is a malformed ONNX model",
         _ops(onnx.helper.make_node("Add", ["x", "t"], ["y"], name="a"), onnx.helper.make_node("Neg", ["x"], ["t"], name="b"))),
    Case("an ONNX weight of an unknown data type", lambda f: ["inspect", f / B], "is not a valid DataType",
         _edited(lambda m: setattr(m.graph.initializer[0], "data_type", 77))),
    Case("an input kirinc cannot give a value", lambda f: ["run", f / B, "--input", f / "ids.npy"],
         "the model's input 'temperature' (FLOAT[1]) is none of these", _input_besides_the_ids),
    Case("a NaN in a product weight", lambda f: [f / B, "-p", "canonicalize", "-o", f / "o.kirin"],
         "holds NaN or infinite values", _edited(lambda m: _set_weight(m, "MatMul", np.nan))),
    Case("a 1-D product weight", lambda f: [f / B, "-p", "canonicalize,quantize"], "has the shape [4096]",
         _edited(lambda m: _change_weight(m, lambda a: a.reshape(-1)))),
    Case("a product weight of another width", lambda f: [f / B, "-p", "canonicalize,quantize"],
         "has the shape [65, 64], for an input of shape [batch, sequence, 64]",
         _edited(lambda m: _change_weight(m, lambda a: np.ones((65, 64), a.dtype)))),
    Case("an empty product weight", lambda f: [f / B, "-p", "canonicalize,quantize"], "has the shape [0, 64]",
         _edited(lambda m: _change_weight(m, lambda a: a[:0]))),
    # token ids and text
    Case("float token ids", lambda f: ["run", f / M, "--input", f / "bad.npy"], "token ids are integers",
         _ids([1.5, 2.0])),
    Case("3-D token ids", lambda f: ["run", f / M, "--input", f / "bad.npy"], "token ids are integers",
         _ids([[[1, 2]]])),
    Case("no token ids", lambda f: ["run", f / M, "--input", f / "bad.npy"], "token ids are integers",
         lambda f: np.save(f / "bad.npy", np.zeros((0,), np.int64))),
    Case("a pickled .npy", lambda f: ["run", f / M, "--input", f / "bad.npy"], "is not a readable .npy file",
         lambda f: np.save(f / "bad.npy", np.array([{"ids": 1}], dtype=object), allow_pickle=True)),
    Case("a token id past the vocabulary", lambda f: ["run", f / M, "--input", f / "bad.npy"],
         "the token id 999999 (at [0, 1]), past the model's vocabulary of 256 tokens", _ids([1, 999999])),
    Case("--calib ids past the vocabulary", lambda f: [f / M, "--calib", f / "bad.npy", "-o", f / "o.kirin",
                                                       "--no-calib-cache"], "the token id 1000000", _ids([[3, 10**6]])),
    Case("verify with a token id past the vocabulary", lambda f: ["verify", f / "model.kirin", "--input", f / "bad.npy"],
         "past the model's vocabulary", _ids([256])),
    Case("a model whose embedding is not a table", lambda f: [f / B, "-o", f / "o.kirin", "--calib", f / "ids.npy",
                                                              "--no-calib-cache"], "the model does not run",
         _edited(lambda m: m.graph.initializer[0].CopyFrom(onh.from_array(
             onh.to_array(m.graph.initializer[0]).reshape(-1), m.graph.initializer[0].name)))),
    Case("inputs by name where token ids are read", lambda f: ["verify", f / "model.kirin", "--input", f / "in.npz"],
         "only kirinc run takes every input by name", lambda f: np.savez(f / "in.npz", input_ids=np.arange(4))),
    Case("an .npz of one array for run", lambda f: ["run", f / M, "--input", f / "one.npz"], "lacks input_ids",
         lambda f: np.savez(f / "one.npz", np.arange(4))),
    Case("a text with no tokens", lambda f: ["run", f / M, "--input", f / "empty.txt", "--tokenizer", f / "tok"],
         "tokenizes to no tokens", lambda f: (f / "empty.txt").write_text("")),
    Case("a text without --tokenizer", lambda f: ["run", f / M, "--input", f / "text.txt"], "give --tokenizer DIR"),
    Case("--input that does not exist", lambda f: ["run", f / M, "--input", f / "nope.npy"], "does not exist"),
    Case("--tokenizer without tokenizer.json", lambda f: ["run", f / M, "--input", f / "text.txt", "--tokenizer", f],
         "has no tokenizer.json"),
    Case("a tokenizer.json that is an empty file", lambda f: ["run", f / M, "--input", f / "text.txt", "--tokenizer",
                                                              f / "tok"], "is not a readable tokenizer",
         lambda f: (f / "tok" / "tokenizer.json").write_text("")),
    Case("eval --length 1", lambda f: ["eval", f / M, "--text", f / "ids.npy", "--length", "1"], "--length 1"),
    Case("--calib-length 0", lambda f: [f / M, "--calib", f / "ids.npy", "--calib-length", "0", "-o", f / "o.kirin"],
         "--calib-length 0: use at least 1"),
    # outputs
    Case("-o in a folder that does not exist", lambda f: [f / M, "-p", "canonicalize", "-o", f / "no" / "o.kirin"],
         "does not exist"),
    Case("-o onto a folder", lambda f: [f / M, "-p", "canonicalize", "-o", f / "tok"], "is a directory"),
    Case("-o onto the input", lambda f: [f / M, "-p", "canonicalize", "-o", f / M], "is the input file"),
    Case("-o onto the input's external data", lambda f: [f / "ext.onnx", "-p", "canonicalize", "-o", f / "w.bin"],
         "the input's weights", _weights_beside("w.bin")),
    Case("run --save onto the model", lambda f: ["run", f / M, "--input", f / "ids.npy", "--save", f / M],
         "use a .npy or .npz file name"),
    Case("run --save onto the model's .npz twin", lambda f: ["run", f / "m.npz", "--input", f / "ids.npy", "--save",
                                                             f / "m.npz"], "the input model",
         lambda f: shutil.copy(f / M, f / "m.npz")),
    Case("eval --json onto the model", lambda f: ["eval", f / M, "--text", f / "ids.npy", "--length", "8",
                                                  "--json", f / M], "would replace the input model"),
    Case("--dump-dir onto a file", lambda f: [f / M, "-p", "canonicalize", "--dump-dir", f / "ids.npy"],
         "is a file, not a folder"),
    # pipelines and plugins
    Case("an unknown pass", lambda f: [f / M, "-p", "canonicalize,frobnicate"], "unknown pass 'frobnicate'"),
    Case("an empty pipeline", lambda f: [f / M, "-p", ""], "the pipeline is empty"),
    Case("an option of the wrong type", lambda f: [f / M, "-p", "canonicalize,quantize{bits=four}"], "expects int"),
    Case("an option the pass does not have", lambda f: [f / M, "-p", "canonicalize,quantize{colour=red}"], "colour"),
    Case("an option given twice", lambda f: [f / M, "-p", "quantize{bits=4,bits=8}"], "is given twice"),
    Case("quantize{bits=9}", lambda f: [f / M, "-p", "canonicalize,quantize{bits=9}"], "use 2 to 8 bits"),
    Case("a pass before its prerequisite", lambda f: [f / M, "-p", "quantize"], "requires 'canonicalize'"),
    Case("--stop-after a pass the pipeline lacks", lambda f: [f / M, "-p", "canonicalize", "--stop-after", "quantize"],
         "no pass of the pipeline"),
    Case("--print-ir-after a pass the pipeline lacks", lambda f: [f / M, "-p", "canonicalize", "--print-ir-after",
                                                                  "quantize"], "does not run it"),
    Case("the default pipeline without --calib", lambda f: [f / M, "-o", f / "o.kirin"], "give --calib"),
    Case("--load-pass of a file that does not exist", lambda f: [f / M, "--load-pass", f"{f / 'nope.py'}:X"],
         "does not exist"),
    Case("--load-pass of a class the file lacks", lambda f: [f / M, "--load-pass", f"{f / 'plugin.py'}:Missing"],
         "Missing"),
    Case("--load-pass of a file with a syntax error", lambda f: [f / M, "--load-pass", f"{f / 'broken.py'}:X"],
         "broken.py", lambda f: (f / "broken.py").write_text("def (:\n")),
    Case("--load-pass of a class that is not a pass", lambda f: [f / M, "--load-pass", f"{f / 'np.py'}:NotAPass"],
         "NotAPass", lambda f: (f / "np.py").write_text("class NotAPass:\n    pass\n")),
    Case("--load-pass without a class", lambda f: [f / M, "--load-pass", str(f / "plugin.py")], "plugin.py"),
    Case("a conversion pass run again on a .kirin", lambda f: [f / "model.kirin", "-p", "quantize", "-o", f / "o.kirin"],
         "pass 'quantize' runs once (this model's kirin.pipeline records it)"),
    Case("a conversion pass twice in a pipeline", lambda f: [f / M, "-p", "canonicalize,quantize,quantize"],
         "the pipeline runs it twice"),
    Case("--calib-cache onto a file", lambda f: [f / M, "--calib", f / "ids.npy", "--calib-cache", f / "ids.npy",
                                                 "-o", f / "o.kirin"], "--calib-cache"),
    # arguments: one line, not argparse's usage
    Case("an unknown flag", lambda f: [f / M, "--bogus"], "unrecognized arguments: --bogus; see kirinc --help"),
    Case("a mode that does not exist", lambda f: ["run", f / M, "--input", f / "ids.npy", "--mode", "spiky"],
         "invalid choice: 'spiky'"),
    Case("a count that is not a number", lambda f: [f / M, "--calib-length", "many"], "invalid int value: 'many'"),
    Case("inspect without a file", lambda f: ["inspect"], "the following arguments are required: FILE"),
    Case("run without --input", lambda f: ["run", f / M], "the following arguments are required: --input"),
    Case("--calib naming a FIFO", lambda f: [f / M, "--calib", f / "pipe", "-o", f / "o.kirin"],
         "is not a regular file", _fifo("pipe")),
    # full disks: every file may grow to a few bytes only
    Case("a full disk on -o", lambda f: [f / M, "-p", "canonicalize", "-o", f / "o.kirin"], "cannot write",
         file_limit=4096),
    Case("a full disk on run --save", lambda f: ["run", f / M, "--input", f / "ids.npy", "--save", f / "o.npy"],
         "cannot write", file_limit=4096),
    Case("a full disk on eval --json", lambda f: ["eval", f / M, "--text", f / "ids.npy", "--length", "8",
                                                  "--windows", "2", "--json", f / "o.json"], "cannot write",
         file_limit=64),
]


def _change_weight(model: onnx.ModelProto, change: Callable[[np.ndarray], np.ndarray]) -> None:
    """Replaces the constant right operand of the first ``MatMul`` by ``change`` of it."""
    name = next(n.input[1] for n in model.graph.node if n.op_type == "MatMul" and
                any(t.name == n.input[1] for t in model.graph.initializer))
    _initializer(name, change)(model)


def _set_weight(model: onnx.ModelProto, op: str, value: float) -> None:
    _change_weight(model, lambda a: np.where(np.arange(a.size).reshape(a.shape) == 0, value, a).astype(a.dtype))


def _state(folder: pathlib.Path) -> dict[str, tuple]:
    """Every entry under ``folder``: its kind, and a regular file's sha256."""
    state = {}
    for path in sorted(folder.rglob("*")):
        mode = path.lstat().st_mode
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(mode) else None
        state[str(path.relative_to(folder))] = (stat.S_IFMT(mode), digest)
    return state


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_bad_input_is_one_error_line_and_loses_nothing(case, tmp_path, capsys, compiled):
    _inputs(tmp_path, compiled)
    case.setup(tmp_path)
    capsys.readouterr()
    before = _state(tmp_path)
    with _file_limit(case.file_limit):
        status = main([str(a) for a in case.argv(tmp_path)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("kirinc: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert case.message in err, err
    assert _state(tmp_path) == before  # nothing lost, changed or left behind


@contextlib.contextmanager
def _file_limit(size: int | None):
    """Files of this process may grow to ``size`` bytes, as on a full disk: a write past it
    fails with EFBIG (Python ignores SIGXFSZ)."""
    if size is None:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_ctrl_c_is_one_line_and_leaves_no_output(tmp_path, capsys, monkeypatch, compiled):
    from kirin_compiler.cli import compile as compile_command

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(compile_command, "compile_model", interrupted)
    _inputs(tmp_path, compiled)
    before = _state(tmp_path)
    status = main([str(tmp_path / M), "-p", "canonicalize", "-o", str(tmp_path / "out.kirin")])
    assert status == 130 and capsys.readouterr().err == "kirinc: interrupted\n"
    assert _state(tmp_path) == before


def test_the_recorded_calibration_is_what_ran(tmp_path, capsys, compiled):
    """16 ids asked to make 8 windows of 512 make one window of 16: that is what is recorded,
    and verify finds those windows again from the record."""
    import onnx_ir as ir

    _inputs(tmp_path, compiled)
    out = tmp_path / "model.kirin"
    assert main([str(tmp_path / M), "-o", str(out), "--calib", str(tmp_path / "ids.npy"), "--no-calib-cache",
                 "--calib-length", "512", "--calib-windows", "8"]) == 0
    record = json.loads(ir.load(out).metadata_props["kirin.calibration"])
    assert json.loads(record["source"])["length"] == 16 and json.loads(record["source"])["windows"] == 1
    assert record["runs"] == 1 and record["tokens"] == 16
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0


def test_a_plugin_loaded_by_an_earlier_run_is_still_protected(tmp_path, capsys, compiled):
    _inputs(tmp_path, compiled)
    load = ["--load-pass", f"{tmp_path / 'plugin.py'}:Nothing", "-p", "nothing"]
    assert main([str(tmp_path / M), *load]) == 0  # the module is imported once per process
    before = _state(tmp_path)
    capsys.readouterr()
    assert main([str(tmp_path / M), *load, "-o", str(tmp_path / "plugin.py")]) == 2
    assert "the pass plugin" in capsys.readouterr().err
    assert _state(tmp_path) == before


@pytest.mark.parametrize("name,edit,message", KIRIN_EDITS, ids=[e[0] for e in KIRIN_EDITS])
def test_every_command_refuses_a_bad_kirin_with_the_same_line(name, edit, message, tmp_path, capsys, compiled):
    _inputs(tmp_path, compiled)
    _kirin(edit)(tmp_path)
    lines = set()
    for argv in (["inspect", tmp_path / "bad.kirin"], *(c(tmp_path) for c in KIRIN_COMMANDS.values())):
        capsys.readouterr()
        assert main([str(a) for a in argv]) == 2
        lines.add(capsys.readouterr().err)
    assert len(lines) == 1 and message in lines.pop()


def test_a_full_disk_while_dumping_leaves_a_dump_its_manifest_describes(tmp_path, capsys, compiled):
    """A dump folder keeps what a failing run wrote (that is what it is for), and says what."""
    _inputs(tmp_path, compiled)
    before = _state(tmp_path)
    with _file_limit(16384):
        status = main([str(tmp_path / M), "-p", "canonicalize", "--dump-dir", str(tmp_path / "d")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1 and "cannot write" in err, err
    assert {k: v for k, v in _state(tmp_path).items() if not k.startswith("d")} == before
    manifest = tmp_path / "d" / "manifest.json"
    listed = [*json.loads(manifest.read_text())["sha256"], manifest.name] if manifest.exists() else []
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == sorted(listed)
    capsys.readouterr()
    assert main([str(tmp_path / M), "-p", "canonicalize", "--dump-dir", str(tmp_path / "d")]) == 0  # reusable


def _scaled_entry(path: pathlib.Path) -> None:
    """Scaled statistics, the checksum kept: what a silent change to the cache looks like."""
    with np.load(path) as data:
        arrays = {name: data[name] * (2 if name.endswith("|amax") else 1) for name in data.files}
    np.savez(path, **arrays)


@pytest.mark.parametrize("damage", [
    _scaled_entry,
    lambda path: path.write_bytes(path.read_bytes()[:1000]),  # truncated
    lambda path: np.save(path.with_suffix(""), np.array([{"amax": 1}], dtype=object), allow_pickle=True)
    or path.with_suffix(".npy").rename(path),  # pickled: never unpickled
    lambda path: np.savez(path, **{"layers.0.q.in0|amax": np.ones(3)}),  # another model's shapes
], ids=["scaled", "truncated", "pickled", "wrong shapes"])
def test_a_damaged_calibration_cache_entry_is_rebuilt(damage, tmp_path, capsys):
    cache = tmp_path / "cache"
    compile_ = [str(TINY_LLAMA), "--calib", str(TINY_LLAMA_IDS), "--calib-cache", str(cache), "-o"]
    assert main([*compile_, str(tmp_path / "first.kirin")]) == 0
    (entry,) = cache.glob("*.npz")
    written = entry.read_bytes()
    damage(entry)
    assert main([*compile_, str(tmp_path / "again.kirin")]) == 0
    assert (tmp_path / "again.kirin").read_bytes() == (tmp_path / "first.kirin").read_bytes()
    assert entry.read_bytes() == written  # rebuilt


def test_the_validator_knows_which_passes_run_once():
    from kirin_compiler.passes import BUILTIN_PASSES
    from kirin_compiler.validate import RUN_ONCE

    assert sorted(RUN_ONCE) == sorted(p.name for p in BUILTIN_PASSES if p.runs_once)
