"""Readable, deterministic text dump of an ``onnx_ir.Model``.

The format borrows from JAX's jaxpr printer: one node per line, a type on
every binder, attributes sorted by name, small constants inlined as literals
and large ones summarised by a content hash::

    # kirin-ir 1
    opset ai.onnx=18, ai.kirin=1
    graph main(%x: f32[batch, 8]) -> (%y: f32[batch, 4])
      const %w: f32[8, 4]  # sha256:1a2b3c4d
      %y: f32[batch, 4] = MatMul(%x, %w)  # layer=0
      return %y

The same model always produces byte-identical ASCII text, so dumps can be
diffed between compiler runs. The dump is output-only: nothing parses it.
The full grammar is in docs/ir_format.md.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

__all__ = ["format_dtype", "format_model", "format_node", "format_scalar", "format_value_type"]

_HEADER = "# kirin-ir 1"
_INLINE_MAX_ELEMENTS = 8
_KIRIN_PREFIX = "kirin."
_DEFAULT_DOMAINS = ("", "ai.onnx")
# onnx_ir's own short names spell these "b8" and "s", which read poorly.
_DTYPE_NAMES = {ir.DataType.BOOL: "bool", ir.DataType.STRING: "str"}
# numpy's scalar str() is the shortest round-trip text at the value's own
# precision; ml_dtypes' str() is not (it rounds to 6 digits), so only these
# dtypes use it and everything else goes through a python float.
_NUMPY_FLOATS = {ir.DataType.FLOAT: np.float32, ir.DataType.FLOAT16: np.float16}
_COMPLEX = (ir.DataType.COMPLEX64, ir.DataType.COMPLEX128)
_ELEMENT_KIND = {
    ir.AttributeType.INTS: ir.AttributeType.INT,
    ir.AttributeType.FLOATS: ir.AttributeType.FLOAT,
    ir.AttributeType.STRINGS: ir.AttributeType.STRING,
    ir.AttributeType.TENSORS: ir.AttributeType.TENSOR,
    ir.AttributeType.GRAPHS: ir.AttributeType.GRAPH,
    ir.AttributeType.SPARSE_TENSORS: ir.AttributeType.SPARSE_TENSOR,
    ir.AttributeType.TYPE_PROTOS: ir.AttributeType.TYPE_PROTO,
}
# Torch exports produce names like "onnx::MatMul_12" and "/layers.0/Add";
# keeping those bare keeps dumps readable, anything else gets JSON-quoted.
_BARE = re.compile(r"[A-Za-z0-9_.:/@+\-]+")


def format_model(model: ir.Model, *, show_meta: bool = False) -> str:
    """Return the whole dump of ``model``, ending with a newline."""
    opsets = ", ".join(
        f"{domain or 'ai.onnx'}={version}"
        for domain, version in sorted(model.opset_imports.items())
    )
    lines = [_HEADER, f"opset {opsets}".rstrip()]
    for key, value in sorted(model.metadata_props.items()):
        lines.append(f"meta {_word(key)} = {json.dumps(value)}")
    lines.append(_graph_text(model.graph, 0, show_meta))
    for func in sorted(model.functions.values(), key=lambda f: f.identifier()):
        lines.append("")
        lines.append(_function_text(func, show_meta))
    return _ascii("\n".join(lines) + "\n")


def format_node(node: ir.Node, *, indent: int = 0, show_meta: bool = False) -> str:
    """Return one node as it appears in a dump (several lines if it has subgraphs)."""
    pad = " " * indent
    outputs = ", ".join(_binder(v) for v in node.outputs)
    args = ", ".join(_arg(v) for v in node.inputs)
    attrs = ", ".join(
        _attr_text(attr, indent, show_meta)
        for _, attr in sorted(node.attributes.items())
    )
    text = pad + (f"{outputs} = " if outputs else "") + f"{_op_text(node)}({args})"
    if attrs:
        text += f" {{{attrs}}}"
    notes = _annotations(node, show_meta)
    return _ascii(text + (f"  # {notes}" if notes else ""))


def format_value_type(value: ir.Value) -> str:
    """Return the type of ``value`` as the dump prints it, e.g. ``f32[batch, 8]``."""
    type_, shape, tensor = value.type, value.shape, value.const_value
    # onnx_ir does not derive an initializer's type from its tensor; do it here.
    if tensor is not None:
        type_ = ir.TensorType(tensor.dtype) if type_ is None else type_
        shape = tensor.shape if shape is None else shape
    return _type_text(type_, shape)


def format_dtype(dtype: ir.DataType) -> str:
    """Return a data type as the dump prints it, e.g. ``f32``, ``i4``, ``bool``."""
    return _dtype_text(dtype)


def format_scalar(item: Any, dtype: ir.DataType) -> str:
    """Return one element of a constant as the dump prints it (the shortest text that reads
    back as the same value)."""
    return _scalar_text(item, dtype)


def _graph_text(graph: ir.Graph, indent: int, show_meta: bool) -> str:
    name = _word(graph.name) if graph.name else "_"
    header = f"graph {name}{_signature(graph.inputs, graph.outputs)}"
    return _body_text(header, graph, graph, indent, show_meta)


def _function_text(func: ir.Function, show_meta: bool) -> str:
    ident = _op_text_parts(func.domain, func.name, func.overload)
    attrs = ", ".join(_attr_text(a, 0, show_meta) for _, a in sorted(func.attributes.items()))
    header = f"func {ident}{_signature(func.inputs, func.outputs)}"
    if attrs:
        header += f" {{{attrs}}}"
    return _body_text(header, func, func.graph, 0, show_meta)


def _body_text(
    header: str,
    nodes: Iterable[ir.Node],
    graph: ir.Graph,
    indent: int,
    show_meta: bool,
) -> str:
    pad = " " * indent
    inner = indent + 2
    lines = [pad + header]
    for _, init in sorted(graph.initializers.items(), key=lambda item: _natural_key(item[0])):
        if _inline_literal(init) is None:
            lines.append(f"{' ' * inner}const {_binder(init)}  # {_const_note(init)}")
    lines.extend(format_node(node, indent=inner, show_meta=show_meta) for node in nodes)
    results = ", ".join(_ref(v) for v in graph.outputs)
    lines.append(f"{' ' * inner}return {results}".rstrip())
    return "\n".join(lines)


def _natural_key(name: str) -> list[tuple[int, int | str]]:
    """Orders ``c2`` before ``c10`` and ``layers.2`` before ``layers.10``."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name)]


def _signature(inputs: Sequence[ir.Value], outputs: Sequence[ir.Value]) -> str:
    params = ", ".join(_binder(v) for v in inputs)
    results = ", ".join(_binder(v) for v in outputs)
    return f"({params}) -> ({results})"


def _op_text(node: ir.Node) -> str:
    return _op_text_parts(node.domain, node.op_type, node.overload)


def _op_text_parts(domain: str, name: str, overload: str) -> str:
    text = name if domain in _DEFAULT_DOMAINS else f"{domain}::{name}"
    return f"{text}:{overload}" if overload else text


def _ref(value: ir.Value) -> str:
    # Names are assigned when a value joins a graph; a detached value may lack one.
    return "%" + _word(value.name) if value.name else "%?"


def _binder(value: ir.Value) -> str:
    return f"{_ref(value)}: {format_value_type(value)}"


def _arg(value: ir.Value | None) -> str:
    if value is None:
        return "_"
    literal = _inline_literal(value)
    return literal if literal is not None else _ref(value)


def _inline_literal(value: ir.Value) -> str | None:
    """The literal for a small initializer, or None if it must stay a name."""
    tensor = value.const_value
    # Graph inputs/outputs must keep their names or the signature would dangle.
    if (
        tensor is None
        or not value.is_initializer()
        or value.is_graph_input()
        or value.is_graph_output()
        or tensor.size > _INLINE_MAX_ELEMENTS
    ):
        return None
    return _tensor_literal(tensor)


def _const_note(value: ir.Value) -> str:
    if value.const_value is None:
        return "(no data)"
    return f"sha256:{_digest(value.const_value)}"


def _digest(tensor: ir.TensorProtocol) -> str:
    if tensor.dtype == ir.DataType.STRING:
        # String tensors refuse tobytes(); length-prefixing keeps ["ab"] != ["a", "b"].
        parts = (_as_bytes(s) for s in tensor.numpy().ravel())
        data = b"".join(len(p).to_bytes(8, "little") + p for p in parts)
    else:
        data = tensor.tobytes()
    return hashlib.sha256(data).hexdigest()[:8]


def _as_bytes(item: Any) -> bytes:
    return item if isinstance(item, bytes) else str(item).encode("utf-8")


def _tensor_literal(tensor: ir.TensorProtocol) -> str:
    items = ", ".join(_scalar_text(x, tensor.dtype) for x in tensor.numpy().ravel())
    prefix = _tensor_type(tensor) if tensor.shape.rank() else _dtype_text(tensor.dtype)
    return f"{prefix}{{{items}}}"


def _tensor_summary(tensor: ir.TensorProtocol) -> str:
    if tensor.size <= _INLINE_MAX_ELEMENTS:
        return _tensor_literal(tensor)
    return f"<tensor {_tensor_type(tensor)} sha256:{_digest(tensor)}>"


def _scalar_text(item: Any, dtype: ir.DataType) -> str:
    if dtype == ir.DataType.BOOL:
        return "true" if item else "false"
    if dtype == ir.DataType.STRING:
        text = item.decode("utf-8", "backslashreplace") if isinstance(item, bytes) else str(item)
        return json.dumps(text)
    if dtype in _COMPLEX:
        return repr(complex(item))
    if dtype in _NUMPY_FLOATS:
        return str(_NUMPY_FLOATS[dtype](item))
    if dtype.is_floating_point():
        return repr(float(item))
    return str(int(item))


def _tensor_type(tensor: ir.TensorProtocol) -> str:
    return _dtype_text(tensor.dtype) + _shape_text(tensor.shape)


def _dtype_text(dtype: ir.DataType) -> str:
    if dtype in _DTYPE_NAMES:
        return _DTYPE_NAMES[dtype]
    try:
        return dtype.short_name()
    except TypeError:
        return dtype.name.lower()


def _shape_text(shape: ir.Shape | None) -> str:
    if shape is None:
        return "[*]"
    dims = (str(d) if isinstance(d, int) else (d.value or "?") for d in shape.dims)
    return f"[{', '.join(dims)}]"


def _type_text(type_: ir.TypeProtocol | None, shape: ir.Shape | None) -> str:
    if type_ is None:
        return "?" if shape is None else "?" + _shape_text(shape)
    # onnx_ir keeps a sequence's/optional's element shape on the value itself.
    if isinstance(type_, ir.SequenceType):
        return f"seq<{_type_text(type_.elem_type, shape)}>"
    if isinstance(type_, ir.OptionalType):
        return f"opt<{_type_text(type_.elem_type, shape)}>"
    if isinstance(type_, ir.SparseTensorType):
        return f"sparse<{_dtype_text(type_.dtype)}{_shape_text(shape)}>"
    return _dtype_text(type_.dtype) + _shape_text(shape)


def _attr_text(attr: ir.Attr, indent: int, show_meta: bool) -> str:
    if attr.is_ref():
        return f"{attr.name}=@{attr.ref_attr_name}"
    if attr.type == ir.AttributeType.UNDEFINED or attr.value is None:
        return attr.name  # a function parameter without a default
    return f"{attr.name}={_attr_value(attr.type, attr.value, indent, show_meta)}"


def _attr_value(kind: ir.AttributeType, value: Any, indent: int, show_meta: bool) -> str:
    kinds = ir.AttributeType
    if kind in _ELEMENT_KIND:
        items = (_attr_value(_ELEMENT_KIND[kind], v, indent, show_meta) for v in value)
        return f"[{', '.join(items)}]"
    if kind == kinds.INT:
        return str(int(value))
    if kind == kinds.FLOAT:
        return str(np.float32(value))  # ONNX stores float attributes as float32
    if kind == kinds.STRING:
        return json.dumps(value.decode("utf-8", "backslashreplace")
                          if isinstance(value, bytes) else value)
    if kind == kinds.TENSOR:
        return _tensor_summary(value)
    if kind == kinds.GRAPH:
        body = _graph_text(value, indent + 2, show_meta)
        return f"{{\n{body}\n{' ' * indent}}}"
    if kind == kinds.TYPE_PROTO:
        return f"type({_type_text(value.type, value.shape)})"
    return f"<{kind.name.lower()}>"


def _annotations(node: ir.Node, show_meta: bool) -> str:
    notes = [
        f"{_word(key[len(_KIRIN_PREFIX):])}={_word(value)}"
        for key, value in sorted(node.metadata_props.items())
        if key.startswith(_KIRIN_PREFIX)
    ]
    if show_meta:
        entries = sorted(((k, v) for k, v in node.meta.items() if isinstance(k, str)),
                         key=lambda kv: kv[0])
        notes += [f"meta.{_word(k)}={_word(_meta_value(v))}" for k, v in entries]
    return " ".join(notes)


def _meta_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    # object's default str embeds a memory address, which would break determinism.
    if type(value).__str__ is object.__str__ and type(value).__repr__ is object.__repr__:
        return f"<{type(value).__name__}>"
    return str(value)


def _ascii(text: str) -> str:
    # Catches what _word does not quote, e.g. exotic op types, domains or dims.
    return text.encode("ascii", "backslashreplace").decode("ascii")


def _word(text: str) -> str:
    """``text`` bare when that is unambiguous, otherwise JSON-quoted."""
    return text if _BARE.fullmatch(text) else json.dumps(text)
