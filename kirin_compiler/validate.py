"""What a loaded model may contain of kirin_compiler's own: ``ai.kirin`` nodes, their constants,
and the ``kirin.*`` metadata. `validate_kirin` runs once, on load (`format.load_model`), so
every command (``inspect``, ``run``, ``verify``, ``eval``, a recompile) refuses a damaged or
tampered ``.kirin`` file with the same one line, before any work.

It checks, against the signatures of `kirin_ops.SIGNATURES` and the arithmetic:

1. the ``ai.kirin`` opset is imported wherever its ops are used (its version is checked by
   `format`);
2. every op's input and output counts, and its attributes: known names, types and values
   (code widths, windows, gains that keep codes within 8 bits, outlier counts, clips);
3. the constants the ops read: weight codes are INT4 or INT8 integers within the range the
   recorded ``quantize`` pass makes, block sub-scales UINT8 and offsets INT16 of the blocks'
   shape, scales finite (static activation scales also positive), masks boolean;
4. the metadata: JSON where JSON is written (``kirin.source``, ``kirin.calibration``,
   ``kirin.timesteps``, ``kirin.workload``, a node's ``kirin.ops``), with the fields kirinc reads
   of it, a node's ``kirin.layer`` a layer number, and a ``kirin.pipeline`` record that agrees with the graph: every op's pass
   is recorded, in order, and each recorded pass left what it always leaves.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import onnx_ir as ir

from kirin_compiler.errors import KirinError
from kirin_compiler.kirin_ops import (
    ACT_QUANT,
    INTRODUCED_BY,
    KIRIN_DOMAIN,
    QMATMUL,
    SIGNATURES,
    SPIKE_MATMUL,
    TTFS_ENCODER,
    TTFS_NEURON,
    Signature,
    is_kirin,
)
from kirin_compiler.metadata import (
    JSON_KEYS, KEY_CALIBRATION, KEY_LAYER, KEY_OPS, KEY_PIPELINE, KEY_TIMESTEPS, KEY_WORKLOAD,
)
from kirin_compiler.registry import parse_option, split_pipeline

_FIX = "the file is damaged or was not written by kirin_compiler: compile the model again from its ONNX file"


class _Damaged(KirinError):
    """A finding of the validator; `validate_kirin` adds the advice."""


def validate_kirin(model: ir.Model) -> None:
    """Refuses, with one line, ``ai.kirin`` contents or ``kirin.*`` metadata kirin_compiler
    would not write (see the module docstring)."""
    try:
        _validate(model)
    except _Damaged as error:
        raise KirinError(f"{error}; {_FIX}") from None


def _validate(model: ir.Model) -> None:
    nodes = list(ir.traversal.RecursiveGraphIterator(model.graph))
    kirin_nodes = [node for node in nodes if node.domain == KIRIN_DOMAIN]
    if kirin_nodes and KIRIN_DOMAIN not in model.opset_imports:
        node = kirin_nodes[0]
        raise _Damaged(f"node '{node.name}' ({node.op_type}) is an {KIRIN_DOMAIN} op, but the model "
                       f"does not import the {KIRIN_DOMAIN} opset")
    _check_metadata(model, nodes)
    quantize = _recorded_quantize(model)
    for node in kirin_nodes:
        where = f"node '{node.name}' ({node.op_type})"
        try:
            _check_signature(node, SIGNATURES[node.op_type])
            _check_node(node, quantize)
        except _Damaged as error:
            raise _Damaged(f"{where}: {error}") from None
    _check_record(model, nodes, kirin_nodes)


# -- nodes -------------------------------------------------------------------------------------


def _check_signature(node: ir.Node, signature: Signature) -> None:
    inputs = len(node.inputs)
    if not signature.inputs[0] <= inputs <= signature.inputs[1]:
        raise _Damaged(f"has {_many(inputs, 'input')}; it takes {_span(signature.inputs)}")
    if len(node.outputs) not in signature.outputs:
        counts = " or ".join(map(str, signature.outputs))
        raise _Damaged(f"has {_many(len(node.outputs), 'output')}; it makes {counts}")
    for index in signature.required:
        if index < inputs and node.inputs[index] is None:
            raise _Damaged(f"input {index} is required but absent")
    for name, attr in node.attributes.items():
        spec = signature.attributes.get(name)
        if spec is None:
            known = ", ".join(sorted(signature.attributes)) or "none"
            raise _Damaged(f"has an attribute '{name}' the op does not define (its attributes: {known})")
        value = _plain(attr)
        if not isinstance(value, spec.kind) or isinstance(value, bool):
            raise _Damaged(f"attribute {name} is {_show(value)}; it is {_KINDS[spec.kind]}")
        if not spec.allows(value):
            raise _Damaged(f"attribute {name}={_show(value)} is not {spec.describe()}")
    missing = [name for name, spec in signature.attributes.items()
               if spec.required and name not in node.attributes]
    if missing:
        raise _Damaged(f"lacks the attribute{'s' if len(missing) > 1 else ''} {', '.join(missing)}")


def _check_node(node: ir.Node, quantize: dict[str, Any]) -> None:
    a = {name: _plain(attr) for name, attr in node.attributes.items()}
    if node.op_type in (ACT_QUANT, TTFS_ENCODER):
        _check_quantizer(node, a)
    elif node.op_type == TTFS_NEURON:
        _check_neuron(node, a)
    else:
        _check_product(node, a, quantize)


def _check_quantizer(node: ir.Node, a: dict) -> None:
    bits, signed, outliers = a["bits"], a["signed"], a.get("outliers", "none")
    group, gain_bits = a.get("group", 0), a.get("gain_bits", 0)
    if group and gain_bits:
        if not signed:
            raise _Damaged("has block gains on unsigned codes; gains come with signed codes only")
        if (2 ** (bits - 1) - 1) * (2**gain_bits - 1) > 127:
            raise _Damaged(f"codes of {bits} bits times gains of {gain_bits} bits pass the 8-bit codes' 127")
    if node.op_type == TTFS_ENCODER:
        _check_window(a, 2 ** (bits - 1) if signed else 2**bits)
    channels = _last_dim(node.inputs[0])
    if group and channels is not None and channels % group:
        raise _Damaged(f"group={group} does not divide its {channels} channels")
    if outliers == "token":
        count = a.get("outlier_count")
        if count is None:
            raise _Damaged('has outliers="token" without an outlier_count')
        if channels is not None and count > channels:
            raise _Damaged(f"outlier_count={count} is more than its {channels} channels")
    if a["scale"] == "static":
        _check_constant(node, 1, "a static scale", float_scale=True, positive=True)
    if outliers == "static" and _input(node, 2) is None:
        raise _Damaged('has outliers="static" without its outlier mask (input 2)')
    _check_constant(node, 2, "an outlier mask", dtype=ir.DataType.BOOL)
    _check_constant(node, 3, "a static outlier scale", float_scale=True, positive=True)
    _check_outputs(node, 4 if outliers != "none" else 2)


def _check_neuron(node: ir.Node, a: dict) -> None:
    _check_window(a, 2 ** a["bits"])
    if a.get("outliers", "none") == "static" and (_input(node, 7) is None or _input(node, 8) is None):
        raise _Damaged('has outliers="static" without its outlier mask and scale (inputs 7 and 8)')
    _check_constant(node, 2, "a weight scale", float_scale=True)
    _check_constant(node, 5, "a bias", float_scale=True)
    _check_constant(node, 6, "a static scale", float_scale=True, positive=True)
    _check_constant(node, 7, "an outlier mask", dtype=ir.DataType.BOOL)
    _check_constant(node, 8, "a static outlier scale", float_scale=True, positive=True)
    _check_outputs(node, 4 if a.get("outliers", "none") == "static" else 2)


def _check_product(node: ir.Node, a: dict, quantize: dict[str, Any]) -> None:
    if node.op_type == "Rescale":
        if (_input(node, 3) is None) != (_input(node, 4) is None):
            raise _Damaged("has one of its outlier inputs (3 and 4) without the other")
        _check_constant(node, 2, "a weight scale", float_scale=True)
        return
    w = 2 if node.op_type == QMATMUL else 1  # the weight codes; the sub-scales and offsets follow
    r, z = (6, 7) if node.op_type == QMATMUL else (2, 3)
    if node.op_type == QMATMUL:
        _check_constant(node, 3, "a weight scale", float_scale=True)
    codes = _const(node, w)
    if codes is None:
        return  # an attention product's right operand: codes made at run time
    if codes.dtype not in (ir.DataType.INT4, ir.DataType.INT8) or len(codes.shape) != 2:
        raise _Damaged(f"input {w} '{node.inputs[w].name}' holds {_type(codes)}; weight codes are "
                       "INT4 or INT8 [K, N]")
    lo, hi = quantize["range"]
    values = codes.numpy().astype(np.int8)  # INT4 comes as ml_dtypes.int4
    if values.size and not lo <= int(values.min()) <= int(values.max()) <= hi:
        bad = int(values.min()) if values.min() < lo else int(values.max())
        raise _Damaged(f"input {w} '{node.inputs[w].name}' holds the weight code {bad}; "
                       f"{quantize['spec']} makes codes {lo} to {hi}")
    depth, width = codes.shape
    group = a.get("group", 0)
    if group and depth % group:
        raise _Damaged(f"group={group} does not divide the weight's {depth} rows")
    blocks = depth // group if group else 1
    for index, what, dtype, shapes in (
        (r, "block sub-scales", ir.DataType.UINT8, [(blocks, width)] if group else []),
        (z, "block offsets", ir.DataType.INT16, [(blocks, width)]),
    ):
        if _input(node, index) is None:
            continue
        tensor = _const(node, index)
        if tensor is None or tensor.dtype != dtype or tuple(tensor.shape) not in shapes:
            expected = " or ".join(f"{dtype.name}{list(s)}" for s in shapes) or "absent (group=0)"
            raise _Damaged(f"input {index} ({what}) holds {_type(tensor)}; it must be {expected}")


def _check_window(a: dict, window: int) -> None:
    if a["window"] != window:
        raise _Damaged(f"window={a['window']}, but its {a['bits']}-bit codes take a window of {window} steps")


def _check_outputs(node: ir.Node, count: int) -> None:
    if len(node.outputs) != count:
        raise _Damaged(f"has {_many(len(node.outputs), 'output')}; with its outliers it has {count}")


def _check_constant(node: ir.Node, index: int, what: str, *, float_scale: bool = False,
                    positive: bool = False, dtype: ir.DataType | None = None) -> None:
    """Input ``index``, when it is a constant, is ``what``: of ``dtype``, or finite floats
    (``positive``: above 0)."""
    tensor = _const(node, index)
    if tensor is None:
        return
    name = f"input {index} ('{node.inputs[index].name}', {what})"
    if dtype is not None and tensor.dtype != dtype:
        raise _Damaged(f"{name} holds {_type(tensor)}; it must be {dtype.name}")
    if float_scale:
        if not tensor.dtype.is_floating_point():
            raise _Damaged(f"{name} holds {_type(tensor)}; it must be floating point")
        values = tensor.numpy().astype(np.float64)
        if not np.isfinite(values).all() or (positive and not (values > 0).all()):
            rule = "finite and above 0" if positive else "finite"
            raise _Damaged(f"{name} holds {_first_bad(values, positive)}; it must be {rule}")


# -- metadata and the pipeline record -----------------------------------------------------------


def _check_metadata(model: ir.Model, nodes: list[ir.Node]) -> None:
    for key in JSON_KEYS:
        if key in model.metadata_props:
            value = _json_object(model.metadata_props[key], f"the metadata {key}")
            _check_fields(value, f"the metadata {key}", _FIELDS.get(key, {}))
            source = value.get("source") if key == KEY_CALIBRATION else None
            if isinstance(source, str) and source.startswith("{"):  # as kirinc --calib records it
                _check_fields(_json_object(source, f"the metadata {key}'s source"),
                              f"the metadata {key}'s source", _CALIBRATION_SOURCE)
    for node in nodes:
        if KEY_OPS in node.metadata_props:
            counts = _json_object(node.metadata_props[KEY_OPS], f"node '{node.name}''s {KEY_OPS}")
            bad = [k for k, v in counts.items() if not _count(v)]
            if bad:
                raise _Damaged(f"node '{node.name}''s {KEY_OPS} has {bad[0]}={_show(counts[bad[0]])}; "
                               "counts are numbers of at least 0")
        layer = node.metadata_props.get(KEY_LAYER)
        if layer is not None and not layer.isdigit():
            raise _Damaged(f"node '{node.name}' has {KEY_LAYER}={layer!r}; it is a layer number")


def _check_fields(value: dict, what: str, fields: dict[str, tuple[Any, str]]) -> None:
    """Each field of ``fields`` that ``value`` must hold passes its check."""
    for name, (check, kind) in fields.items():
        if name not in value:
            raise _Damaged(f"{what} lacks its field '{name}'")
        if not check(value[name]):
            raise _Damaged(f"{what} has {name}={_show(value[name])}; it is {kind}")


def _integer(least: int):
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= least,
            f"an integer of at least {least}")


_STEPS = (lambda v: isinstance(v, dict) and all(_integer(0)[0](n) for n in v.values()), "steps by layer")
_TEXT = (lambda v: isinstance(v, str), "a string")
_FIELDS = {  # what kirinc reads of the JSON metadata (energy-annotate and outlier-detect write it)
    KEY_TIMESTEPS: {
        "total": _integer(0), "baseline_8bit_total": _integer(0), "per_layer": _STEPS,
        "baseline_8bit_per_layer": _STEPS,
        "reduction": (lambda v: _number(v) and v <= 1, "a share (at most 1)"),
    },
    KEY_WORKLOAD: {"mode": (lambda v: v in ("float", "qann", "snn"), "a mode"), "runs": _integer(1),
                   "tokens": _integer(0)},
    KEY_CALIBRATION: {"source": _TEXT, "runs": _integer(0), "tokens": _integer(0),
                      "sha256": (lambda v: isinstance(v, str) and len(v) == 64, "a SHA-256 in hex")},
}
_CALIBRATION_SOURCE = {"file": _TEXT, "length": _integer(1), "windows": _integer(1)}


def _recorded_quantize(model: ir.Model) -> dict[str, Any]:
    """The weight code range the recorded ``quantize`` makes (that of its storage type, INT8,
    without a record)."""
    record = [(name, options) for name, options in _record(model) if name == "quantize"]
    if not record:
        return {"range": (-128, 127), "spec": "INT8"}
    options = record[-1][1]
    bits = parse_option("quantize", "bits", options.get("bits", "4"), int)
    asymmetric = parse_option("quantize", "asymmetric", options.get("asymmetric", "true"), bool)
    if not 2 <= bits <= 8:
        raise _Damaged(f"the metadata {KEY_PIPELINE} records quantize{{bits={bits}}}; quantize "
                       "makes 2 to 8 bits")
    top = 2 ** (bits - 1) - 1
    spec = f"quantize{{bits={bits},asymmetric={str(asymmetric).lower()}}}"
    return {"range": (-top - asymmetric, top), "spec": spec}


def _record(model: ir.Model) -> list[tuple[str, dict[str, str]]]:
    text = model.metadata_props.get(KEY_PIPELINE, "")
    try:
        return split_pipeline(text)
    except KirinError as error:
        raise _Damaged(f"the metadata {KEY_PIPELINE} is not a pipeline ({error})") from None


def _check_record(model: ir.Model, nodes: list[ir.Node], kirin_nodes: list[ir.Node]) -> None:
    """Every op's pass is recorded, before the passes that build on it; every recorded pass
    left what it always leaves."""
    names = [name for name, _ in _record(model)]
    needed: dict[str, str] = {}  # a pass the contents need: what needs it
    for node in kirin_nodes:
        needed.setdefault(INTRODUCED_BY[node.op_type], f"node '{node.name}' ({node.op_type}) is made by")
        if node.op_type in (ACT_QUANT, TTFS_ENCODER) and "outliers" in node.attributes:
            needed.setdefault("outlier-detect", f"node '{node.name}' ({node.op_type}) is calibrated by")
    for node in nodes:
        if KEY_OPS in node.metadata_props:
            needed.setdefault("energy-annotate", f"node '{node.name}''s {KEY_OPS} is written by")
    if KEY_TIMESTEPS in model.metadata_props:
        needed.setdefault("energy-annotate", f"the metadata {KEY_TIMESTEPS} is written by")
    for name, what in sorted(needed.items()):
        if name not in names:
            raise _Damaged(f"{what} {name}, which the metadata {KEY_PIPELINE} "
                           f"('{','.join(names) or 'empty'}') does not record")
    for name in RUN_ONCE:
        if names.count(name) > 1:
            raise _Damaged(f"the metadata {KEY_PIPELINE} records {name} {names.count(name)} times; "
                           "it runs once")
    order = [name for name in _CHAIN if name in needed]
    first = [names.index(name) for name in order]
    if first != sorted(first):
        raise _Damaged(f"the metadata {KEY_PIPELINE} records {', '.join(order)} out of order "
                       f"('{','.join(names)}')")
    left = {
        "spike-matrix-hybridize": [n for n in nodes if is_kirin(n, QMATMUL)],
        "threshold-insert": [n for n in nodes if is_kirin(n, ACT_QUANT) and _spikes_feed(n)],
        "outlier-detect": [n for n in nodes
                           if is_kirin(n, ACT_QUANT, TTFS_ENCODER) and "outliers" not in n.attributes],
    }
    for name, unconverted in left.items():
        if name in names and unconverted:
            node = unconverted[0]
            raise _Damaged(f"the metadata {KEY_PIPELINE} records {name}, but node '{node.name}' "
                           f"({node.op_type}) is as it was before it")
    if "energy-annotate" in names and KEY_TIMESTEPS not in model.metadata_props:
        raise _Damaged(f"the metadata {KEY_PIPELINE} records energy-annotate, but {KEY_TIMESTEPS} is absent")


# the Kirin passes in the order their work builds on each other
_CHAIN = ("quantize", "outlier-detect", "spike-matrix-hybridize", "threshold-insert", "energy-annotate")
RUN_ONCE = _CHAIN[:-1]  # the passes with Pass.runs_once (a test checks they agree)


def _spikes_feed(node: ir.Node) -> bool:
    """Whether a quantizer's codes are the spikes of a spiking product (input 0)."""
    return any(is_kirin(user, SPIKE_MATMUL) and index == 0 for user, index in node.outputs[0].uses())


# -- helpers ------------------------------------------------------------------------------------


def _plain(attr: ir.Attr) -> Any:
    value = attr.value
    return value.decode() if isinstance(value, bytes) else value


def _input(node: ir.Node, index: int) -> ir.Value | None:
    return node.inputs[index] if index < len(node.inputs) else None


def _const(node: ir.Node, index: int) -> ir.TensorProtocol | None:
    value = _input(node, index)
    return None if value is None else value.const_value


def _last_dim(value: ir.Value | None) -> int | None:
    if value is None or value.shape is None or not len(value.shape):
        return None
    dim = value.shape[-1]
    return dim if isinstance(dim, int) else None


def _json_object(text: str, what: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise _Damaged(f"{what} is not JSON ({error.msg} at character {error.pos + 1})") from None
    if not isinstance(value, dict):
        raise _Damaged(f"{what} is {_show(value)}; it is a JSON object")
    return value


def _count(value: Any) -> bool:
    return _number(value) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _first_bad(values: np.ndarray, positive: bool) -> str:
    bad = ~np.isfinite(values) | ((values <= 0) if positive else False)
    return f"the value {values.flat[int(np.argmax(bad))]}"


def _type(tensor: ir.TensorProtocol | None) -> str:
    return "nothing constant" if tensor is None else f"{tensor.dtype.name}{list(tensor.shape)}"


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_KINDS = {int: "an integer", float: "a float", str: "a string"}


def _many(count: int, thing: str) -> str:
    return f"{count} {thing}{'' if count == 1 else 's'}"


def _span(bounds: tuple[int, int]) -> str:
    low, high = bounds
    return str(low) if low == high else f"{low} to {high}"
