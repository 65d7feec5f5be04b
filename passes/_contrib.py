"""Exact decompositions of the onnxruntime contrib ops (`kirin_compiler.contrib_ops`) into
standard ONNX ops: canonicalize's rule 2.

`DECOMPOSITIONS` holds one function per op of `kirin_compiler.contrib_ops.CONTRIB_OPS`. Each
records standard ops on the tape of a `_Builder` and returns the values that replace the node's
outputs, by output index; an output in use that it does not return is refused. An attribute
value or input form a decomposition would not reproduce exactly is refused with
`UnsupportedOpError`: one line naming the node, the reason and what to do. What each op computes,
and which attributes and input forms it takes, is written down in ``docs/contrib_ops.md``.

The attention helpers (`split_heads`, `repeat_heads`, `causal_mask`, `attend`) also serve
canonicalize's decomposition of the standard ``Attention`` op, so that every attention, fused by
whichever tool, leaves the same two visible products ``MatMul(Q, K^T)`` and ``MatMul(P, V)``.
"""

from __future__ import annotations

import math
from typing import Callable, NoReturn, Sequence

import ml_dtypes
import numpy as np
import onnx_ir as ir

from kirin_compiler import arithmetic, contrib_ops, rewrite
from kirin_compiler.contrib_ops import MICROSOFT_DOMAIN
from kirin_compiler.errors import UnsupportedOpError

_END = np.iinfo(np.int64).max  # a Slice end past any dimension


class _Builder:
    """The replacement of one contrib node: standard ops recorded on a tape, with the node's
    inputs and attributes at hand and its refusals worded alike."""

    def __init__(self, graph: ir.Graph, node: ir.Node, names: rewrite.Names) -> None:
        self.graph, self.node, self.names = graph, node, names
        self.tape = ir.tape.Tape(graph)
        self.opset = graph.opset_imports.get("", graph.opset_imports.get("ai.onnx", 1))

    def op(self, op_type: str, *inputs: ir.Value | None, **attributes) -> ir.Value:
        return self.tape.op(op_type, _trimmed(inputs), attributes or None)

    def ops(self, op_type: str, inputs: Sequence[ir.Value | None], count: int, **attributes):
        return self.tape.op_multi_out(op_type, _trimmed(inputs), attributes or None, num_outputs=count)

    def ints(self, values: Sequence[int], name: str = "ints") -> ir.Value:
        return rewrite.constant(self.graph, np.array(values, np.int64), name, self.names)

    def scalar(self, value: float, like: ir.Value, name: str) -> ir.Value:
        return scalar(self.graph, self.tape, value, like, name, self.names)

    def constant(self, array: np.ndarray, name: str) -> ir.Value:
        return rewrite.constant(self.graph, array, f"{self.node.name}.{name}", self.names)

    def int_scalar(self, value: int, name: str = "int") -> ir.Value:
        return rewrite.constant(self.graph, np.asarray(value, np.int64), name, self.names)

    def refuse(self, why: str) -> NoReturn:
        op = "::".join(filter(None, contrib_ops.key(self.node)))
        raise UnsupportedOpError(self.node.name, op, why)

    def input(self, index: int) -> ir.Value | None:
        return self.node.inputs[index] if index < len(self.node.inputs) else None

    def int_attr(self, name: str, default: int) -> int:
        return self.node.attributes.get_int(name, default)

    def float_attr(self, name: str, default: float) -> float:
        return self.node.attributes.get_float(name, default)

    def used(self, index: int) -> bool:
        if index >= len(self.node.outputs):
            return False
        value = self.node.outputs[index]
        return bool(value.uses()) or value.is_graph_output()

    def rank(self, value: ir.Value, what: str) -> int:
        if value.shape is None:
            self.refuse(f"the rank of its {what} is unknown; give the model value_info "
                        "(onnx.shape_inference or onnxruntime's optimized export writes it)")
        return len(value.shape)

    def require_dim(self, value: ir.Value, axis: int, what: str) -> int:
        dim = static_dim(value, axis)
        if dim is None:
            self.refuse(f"needs a static dimension {axis} of its {what}; export with static "
                        "hidden and head sizes")
        return dim

    def length(self, value: ir.Value, axis: int) -> ir.Value:
        """Dimension ``axis`` of ``value`` at run time, as an int64 scalar."""
        end = {"end": axis + 1} if axis != -1 else {}
        return self.op("Squeeze", self.op("Shape", value, start=axis, **end))

    def reduce_mean(self, x: ir.Value, axes: Sequence[int]) -> ir.Value:
        if self.opset >= 18:  # the axes became an input at opset 18
            return self.op("ReduceMean", x, self.ints(axes, "axes"), keepdims=1)
        return self.op("ReduceMean", x, axes=list(axes), keepdims=1)


def decompose(graph: ir.Graph, node: ir.Node, names: rewrite.Names) -> None:
    """Replaces the contrib op ``node`` by standard ops that compute the same outputs."""
    build = _Builder(graph, node, names)
    outputs = DECOMPOSITIONS[contrib_ops.key(node)](build)
    for index, value in enumerate(node.outputs):
        if build.used(index) and outputs.get(index) is None:
            build.refuse(f"its output {index} ('{value.name}') is used, and the decomposition "
                         "does not compute it; see docs/contrib_ops.md")
    kept = [index for index in sorted(outputs) if build.used(index)]
    new_values = []
    for index in kept:
        value = outputs[index]
        if value.producer() not in build.tape.nodes:  # an input passed through keeps its name
            value = build.op("Identity", value)
        new_values.append(value)
    for index, new_node in enumerate(build.tape.nodes):
        # The old name's path stays the new nodes' scope (canonicalize reads roles from it).
        new_node.name = f"{node.name}_{new_node.op_type}_{index}"
        new_node.metadata_props.update(node.metadata_props)
    rewrite.replace(graph, [node], build.tape.nodes, [node.outputs[i] for i in kept], new_values)


def _trimmed(inputs: Sequence[ir.Value | None]) -> list[ir.Value | None]:
    inputs = list(inputs)
    while inputs and inputs[-1] is None:
        inputs.pop()
    return inputs


def static_dim(value: ir.Value | None, axis: int) -> int | None:
    if value is None or value.shape is None or not -len(value.shape) <= axis < len(value.shape):
        return None
    dim = value.shape[axis]
    return dim if isinstance(dim, int) else None


def _same_dim(a: ir.Value, axis_a: int, b: ir.Value, axis_b: int) -> bool:
    """Whether two dimensions are provably equal: the same number or the same symbol."""
    if a.shape is None or b.shape is None:
        return False
    first, second = a.shape[axis_a], b.shape[axis_b]
    if isinstance(first, int) or isinstance(second, int):
        return first == second
    return first.value is not None and first.value == second.value


def scalar(
    graph: ir.Graph, tape: ir.tape.Tape, value: float, like: ir.Value, name: str,
    names: rewrite.Names | None = None,
) -> ir.Value:
    """A float scalar of ``like``'s element type (cast to it at run time where unknown)."""
    if like.dtype is not None and like.dtype.is_floating_point():
        return rewrite.constant(graph, np.asarray(value, like.dtype.numpy()), name, names)
    constant = rewrite.constant(graph, np.asarray(value, np.float32), name, names)
    return tape.op("CastLike", [constant, like])


# Attention, shared with canonicalize's rule for the standard Attention op ----------------------


def split_heads(
    graph: ir.Graph, tape: ir.tape.Tape, x: ir.Value, heads: int, names: rewrite.Names | None = None
) -> ir.Value:
    """[B, S, H*D] -> [B, H, S, D]."""
    shape = rewrite.constant(graph, np.array([0, 0, heads, -1], np.int64), "shape", names)
    return tape.op("Transpose", [tape.op("Reshape", [x, shape])], {"perm": [0, 2, 1, 3]})


def merge_heads(
    graph: ir.Graph, tape: ir.tape.Tape, x: ir.Value, names: rewrite.Names | None = None
) -> ir.Value:
    """[B, H, S, D] -> [B, S, H*D]."""
    shape = rewrite.constant(graph, np.array([0, 0, -1], np.int64), "shape", names)
    return tape.op("Reshape", [tape.op("Transpose", [x], {"perm": [0, 2, 1, 3]}), shape])


def repeat_heads(
    graph: ir.Graph, tape: ir.tape.Tape, x: ir.Value, repeats: int, heads: int, head_size: int,
    names: rewrite.Names | None = None,
) -> ir.Value:
    """[B, Hkv, S, D] -> [B, Hkv * repeats, S, D], each key/value head repeated in place."""
    axis = rewrite.constant(graph, np.array([2], np.int64), "axes", names)
    expand = rewrite.constant(graph, np.array([1, 1, repeats, 1, 1], np.int64), "repeats", names)
    shape = rewrite.constant(graph, np.array([0, heads, -1, head_size], np.int64), "shape", names)
    return tape.op("Reshape", [tape.op("Expand", [tape.op("Unsqueeze", [x, axis]), expand]), shape])


def causal_mask(
    graph: ir.Graph, tape: ir.tape.Tape, first: ir.Value, queries: ir.Value,
    keys: ir.Value | None = None, window: int = 0, names: rewrite.Names | None = None,
) -> ir.Value:
    """Boolean ``[S, T]``: query ``i`` (at position ``first + i``) may see key ``j`` when
    ``j <= first + i`` and, with a window ``W > 0``, ``j > first + i - W``. All three are int64
    scalars: the first query's position, the query count ``S``, the key count ``T`` (by default
    ``first + S``: the past keys and one per query)."""
    zero = rewrite.constant(graph, np.asarray(0, np.int64), "zero", names)
    one = rewrite.constant(graph, np.asarray(1, np.int64), "one", names)
    last_axis = rewrite.constant(graph, np.array([1], np.int64), "axes", names)
    end = tape.op("Add", [first, queries])
    query_positions = tape.op("Unsqueeze", [tape.op("Range", [first, end, one]), last_axis])
    key_positions = tape.op("Range", [zero, keys if keys is not None else end, one])
    allowed = tape.op("LessOrEqual", [key_positions, query_positions])
    if window > 0:
        width = rewrite.constant(graph, np.asarray(window, np.int64), "window", names)
        recent = tape.op("Greater", [key_positions, tape.op("Sub", [query_positions, width])])
        allowed = tape.op("And", [allowed, recent])
    return allowed


def attend(
    graph: ir.Graph, tape: ir.tape.Tape, q: ir.Value, k: ir.Value, v: ir.Value, scale: float,
    softcap: float = 0.0, masks: Sequence[tuple[str, ir.Value]] = (), zero_nan_rows: bool = False,
    names: rewrite.Names | None = None,
) -> ir.Value:
    """``softmax(masks(softcap(scale * Q·K^T))) · V`` for Q ``[B, H, S, D]`` and K, V
    ``[B, H, T, *]`` with their heads already repeated: the two products stay visible.

    ``masks`` apply in order: ``("add", bias)`` adds ``bias``, ``("allow", boolean)`` keeps the
    scores where it is true and puts ``-inf`` elsewhere. With ``zero_nan_rows``, a row with every
    key masked gives 0 (``Softmax`` gives NaN there)."""
    key_t = tape.op("Transpose", [k], {"perm": [0, 1, 3, 2]})
    scores = tape.op("MatMul", [q, key_t])
    scores = tape.op("Mul", [scores, scalar(graph, tape, scale, q, "scale", names)])
    if softcap > 0:
        cap = scalar(graph, tape, softcap, q, "softcap", names)
        scores = tape.op("Mul", [tape.op("Tanh", [tape.op("Div", [scores, cap])]), cap])
    for kind, mask in masks:
        if kind == "add":
            scores = tape.op("Add", [scores, mask])
        else:
            minus_inf = scalar(graph, tape, -np.inf, q, "minus_inf", names)
            scores = tape.op("Where", [mask, scores, minus_inf])
    probs = tape.op("Softmax", [scores], {"axis": -1})
    if zero_nan_rows:
        zero = scalar(graph, tape, 0.0, q, "zero", names)
        probs = tape.op("Where", [tape.op("IsNaN", [probs]), zero, probs])
    return tape.op("MatMul", [probs, v])


def _attend(b: _Builder, q, k, v, scale: float, softcap: float = 0.0, masks=()) -> ir.Value:
    return attend(b.graph, b.tape, q, k, v, scale, softcap, masks, names=b.names)


# Normalizations --------------------------------------------------------------------------------


def _rms_inverse(b: _Builder, x: ir.Value, axes: Sequence[int], epsilon: float) -> ir.Value:
    """``1 / sqrt(mean(x^2) + epsilon)`` over ``axes``, kept as dimensions of size 1."""
    mean_square = b.reduce_mean(b.op("Mul", x, x), axes)
    return b.op("Reciprocal", b.op("Sqrt", b.op("Add", mean_square, b.scalar(epsilon, x, "epsilon"))))


def _skip_sum(b: _Builder, bias_index: int) -> ir.Value:
    """``input + skip (+ bias)``: skip broadcasts from ``[S, N]`` or ``[1, S, N]``."""
    total = b.op("Add", b.input(0), b.input(1))
    bias = b.input(bias_index)
    return b.op("Add", total, bias) if bias is not None else total


def _simplified_layer_norm(b: _Builder) -> dict[int, ir.Value]:
    x, scale = b.input(0), b.input(1)
    axis = b.int_attr("axis", -1)
    axes = list(range(axis, 0)) if axis < 0 else list(range(axis, b.rank(x, "input X")))
    inverse = _rms_inverse(b, x, axes, b.float_attr("epsilon", 1e-5))
    return {0: b.op("Mul", b.op("Mul", x, inverse), scale), 1: inverse}


def _skip_simplified_layer_norm(b: _Builder) -> dict[int, ir.Value]:
    total = _skip_sum(b, bias_index=3)
    inverse = _rms_inverse(b, total, [-1], b.float_attr("epsilon", 1e-12))
    # Output 1 (mean) is not defined for an RMS normalization: left out, refused if used.
    return {0: b.op("Mul", b.op("Mul", total, inverse), b.input(2)), 2: inverse, 3: total}


def _skip_layer_norm(b: _Builder) -> dict[int, ir.Value]:
    total = _skip_sum(b, bias_index=4)
    count = 3 if b.used(1) or b.used(2) else 1
    normalized = b.ops("LayerNormalization", [total, b.input(2), b.input(3)], count,
                       axis=-1, epsilon=b.float_attr("epsilon", 1e-12))
    return {**dict(enumerate(normalized)), 3: total}


# Rotary embeddings -----------------------------------------------------------------------------


def _rotate(
    b: _Builder, x: ir.Value, cos: ir.Value, sin: ir.Value, half: int, interleaved: bool,
    head_size: int | None,
) -> ir.Value:
    """The rotary embedding of ``x`` (rank 4, ``head_size`` last, None if unknown) by angles
    whose ``cos`` and ``sin`` broadcast against ``x[..., :half]``: the first ``2 * half``
    channels rotate in pairs, ``(x[i], x[i + half])`` or, ``interleaved``, ``(x[2i], x[2i + 1])``;
    the rest pass unchanged."""
    axis = b.ints([-1], "axes")

    def channels(start: int, end: int, step: int = 1) -> ir.Value:
        bounds = b.ints([start], "starts"), b.ints([end], "ends")
        return b.op("Slice", x, *bounds, axis, b.ints([step], "steps"))

    if interleaved:
        first, second = channels(0, 2 * half, 2), channels(1, 2 * half, 2)
    else:
        first, second = channels(0, half), channels(half, 2 * half)
    rotated_first = b.op("Sub", b.op("Mul", first, cos), b.op("Mul", second, sin))
    rotated_second = b.op("Add", b.op("Mul", second, cos), b.op("Mul", first, sin))
    if interleaved:  # back to pairs side by side: [..., half, 2] -> [..., 2 * half]
        pairs = b.op("Concat", b.op("Unsqueeze", rotated_first, axis),
                     b.op("Unsqueeze", rotated_second, axis), axis=-1)
        parts = [b.op("Reshape", pairs, b.ints([0, 0, 0, 2 * half], "shape"))]
    else:
        parts = [rotated_first, rotated_second]
    if head_size is None or head_size > 2 * half:  # a partial rotary embedding
        parts.append(channels(2 * half, _END))
    return b.op("Concat", *parts, axis=-1)


def _rotary_embedding(b: _Builder) -> dict[int, ir.Value]:
    x, position_ids, cos_cache, sin_cache = (b.input(i) for i in range(4))
    if b.int_attr("is_packed_batching", 0):
        b.refuse("is_packed_batching=1 (ragged batches) is not supported; give padded inputs")
    if b.float_attr("scale", 1.0) != 1.0:
        b.refuse("scale != 1 is not applied by onnxruntime's CPU kernel, so its meaning is not "
                 "settled; export with scale=1")
    rank = b.rank(x, "input")
    if rank not in (3, 4):
        b.refuse(f"needs an input of rank 3 or 4, not {rank}")
    half = b.require_dim(cos_cache, 1, "cos_cache")
    heads = b.int_attr("num_heads", 0)
    rotary_dim = b.int_attr("rotary_embedding_dim", 0)
    if rotary_dim and rotary_dim != 2 * half:
        b.refuse(f"rotary_embedding_dim={rotary_dim} is not twice cos_cache's last dimension {half}")
    if rank == 3 and rotary_dim and not heads:
        b.refuse("rotary_embedding_dim needs num_heads for an input of rank 3; set num_heads")
    x4, head_size = x, static_dim(x, -1)  # [B, N, S, D] as given; [B, S, N, D] from rank 3
    if rank == 3:
        x4 = b.op("Reshape", x, b.ints([0, 0, heads, -1] if heads else [0, 0, -1, 2 * half], "shape"))
        if not heads:
            head_size = 2 * half
        elif head_size is not None:
            head_size //= heads
    position_rank = b.rank(position_ids, "position_ids")
    if position_rank == 1:  # the first position; the others follow it
        start, sequence = b.int_scalar(0, "zero"), b.length(x, 1 if rank == 3 else 2)
        positions = b.op("Add", position_ids, b.op("Range", start, sequence, b.int_scalar(1, "one")))
    else:
        positions = position_ids
    cos, sin = (b.op("Gather", cache, positions, axis=0) for cache in (cos_cache, sin_cache))
    if rank == 3 or position_rank == 2:  # angles [B, S, D/2] or [S, D/2] against heads [.., N, ..]
        axis = b.ints([-2] if rank == 3 else [1], "axes")
        cos, sin = b.op("Unsqueeze", cos, axis), b.op("Unsqueeze", sin, axis)
    y = _rotate(b, x4, cos, sin, half, bool(b.int_attr("interleaved", 0)), head_size)
    if rank == 3:
        y = b.op("Reshape", y, b.ints([0, 0, -1], "shape"))
    return {0: y}


# Attention -------------------------------------------------------------------------------------

_GQA_REFUSED_INPUTS = {
    11: "the head_sink input (attention sinks) is not supported; export without sinks",
    12: "a quantized key/value cache (k_scale) is not supported; export with a float cache",
    13: "a quantized key/value cache (v_scale) is not supported; export with a float cache",
    14: "q_norm_weight (a fused per-head RMS norm) is not supported; export the norm as its own node",
    15: "k_norm_weight (a fused per-head RMS norm) is not supported; export the norm as its own node",
    16: "query_seqlens (right-padded chunks) is not supported; run unpadded chunks",
}


def _group_query_attention(b: _Builder) -> dict[int, ir.Value]:
    query, key, value, past_key, past_value = (b.input(i) for i in range(5))
    cos_cache, sin_cache, position_ids, attention_bias = (b.input(i) for i in range(7, 11))
    for index, why in _GQA_REFUSED_INPUTS.items():
        if b.input(index) is not None:
            b.refuse(why)
    _check_gqa_attributes(b)
    if (key is None) != (value is None) or (past_key is None) != (past_value is None):
        b.refuse("needs key and value together (or neither: packed QKV), and past_key and "
                 "past_value together")
    heads, kv_heads = b.int_attr("num_heads", 0), b.int_attr("kv_num_heads", 0)
    if heads <= 0 or kv_heads <= 0 or heads % kv_heads:
        b.refuse(f"num_heads={heads} must be a positive multiple of kv_num_heads={kv_heads}")
    packed = key is None
    hidden = static_dim(query, -1)
    width = heads + 2 * kv_heads if packed else heads
    if hidden is None or hidden % width:
        b.refuse("needs a static hidden size of query, a multiple of the head count; export with "
                 "static hidden sizes")
    head_size = hidden // width
    if packed:  # [B, S, (H + 2 Hkv) * D] -> heads [B, H + 2 Hkv, S, D], cut into Q, K, V
        heads_all = split_heads(b.graph, b.tape, query, width, b.names)
        axis = b.ints([1], "axes")
        bounds = [0, heads, heads + kv_heads, width]
        q, k, v = (b.op("Slice", heads_all, b.ints([lo], "starts"), b.ints([hi], "ends"), axis)
                   for lo, hi in zip(bounds, bounds[1:]))
    else:
        q = split_heads(b.graph, b.tape, query, heads, b.names)
        k, v = (split_heads(b.graph, b.tape, x, kv_heads, b.names) for x in (key, value))
    # The cache is past + new, so the new tokens sit at positions P .. P + S - 1 (P: the past's
    # length). onnxruntime takes the same positions when seqlens_k = total_sequence_length - 1 in
    # every row; seqlens_k and total_sequence_length are not read.
    past = b.length(past_key, 2) if past_key is not None else b.int_scalar(0, "zero")
    sequence = b.length(query, 1)
    if b.int_attr("do_rotary", 0):
        if cos_cache is None or sin_cache is None:
            b.refuse("do_rotary=1 needs cos_cache and sin_cache")
        half = b.require_dim(cos_cache, 1, "cos_cache")
        cos, sin = _gqa_angles(b, cos_cache, sin_cache, position_ids, past, sequence)
        interleaved = bool(b.int_attr("rotary_interleaved", 0))
        q, k = (_rotate(b, x, cos, sin, half, interleaved, head_size) for x in (q, k))
    for cache in (past_key, past_value):  # a cache input of the graph learns its head size
        if cache is not None and cache.is_graph_input() and cache.shape is not None and len(cache.shape) == 4:
            cache.shape = ir.Shape([*cache.shape[:3], head_size])
    present_key = b.op("Concat", past_key, k, axis=2) if past_key is not None else k
    present_value = b.op("Concat", past_value, v, axis=2) if past_value is not None else v
    keys, values = present_key, present_value
    if heads != kv_heads:
        keys, values = (repeat_heads(b.graph, b.tape, x, heads // kv_heads, heads, head_size, b.names)
                        for x in (present_key, present_value))
    masks = [("add", attention_bias)] if attention_bias is not None else []
    if b.int_attr("causal", 1):
        window = max(b.int_attr("local_window_size", -1), 0)
        masks.append(("allow", causal_mask(b.graph, b.tape, past, sequence, window=window, names=b.names)))
    scale = b.float_attr("scale", 0.0) or 1.0 / math.sqrt(head_size)
    y = _attend(b, q, keys, values, scale, b.float_attr("softcap", 0.0), masks)
    return {0: merge_heads(b.graph, b.tape, y, b.names), 1: present_key, 2: present_value}


def _check_gqa_attributes(b: _Builder) -> None:
    attributes = b.node.attributes
    if b.int_attr("smooth_softmax", -1) == 1:
        b.refuse("smooth_softmax=1 is not supported; export without it")
    if b.int_attr("qk_output", 0):
        b.refuse("qk_output (the output_qk output) is not supported; export with qk_output=0")
    if b.int_attr("sliding_window_cache", 0):
        b.refuse("a window-sized cache (sliding_window_cache=1) is not supported; export with a "
                 "full-length cache")
    quantized = [a for a in ("k_quant_type", "v_quant_type") if attributes.get_string(a, "NONE") != "NONE"]
    if quantized or "kv_cache_bit_width" in attributes:
        b.refuse("a quantized key/value cache is not supported; export with a float cache")
    causal, window = b.int_attr("causal", 1), b.int_attr("local_window_size", -1)
    if causal not in (0, 1):
        b.refuse(f"causal={causal} must be 0 or 1")
    if window == 0 or (window > 0 and not causal):
        b.refuse(f"local_window_size={window} is not supported with causal={causal}; use -1 (no "
                 "window) or a positive window with causal=1")


def _gqa_angles(b: _Builder, cos_cache, sin_cache, position_ids, past, sequence):
    """cos and sin at the new tokens' positions, shaped to broadcast against ``[B, H, S, D]``."""
    one = b.int_scalar(1, "one")
    offsets = b.op("Range", b.int_scalar(0, "zero"), sequence, one)
    if position_ids is None:
        positions = b.op("Add", offsets, past)  # [S]
    else:  # onnxruntime reads only the first id of each row on the first prompt (no past)
        first = b.op("Slice", position_ids, b.ints([0], "starts"), b.ints([1], "ends"), b.ints([1], "axes"))
        positions = b.op("Where", b.op("Equal", past, b.int_scalar(0, "zero")),
                         b.op("Add", first, offsets), position_ids)  # [B, S]
    cos, sin = (b.op("Gather", cache, positions, axis=0) for cache in (cos_cache, sin_cache))
    if position_ids is not None:
        axis = b.ints([1], "axes")
        cos, sin = b.op("Unsqueeze", cos, axis), b.op("Unsqueeze", sin, axis)
    return cos, sin


def _multi_head_attention(b: _Builder) -> dict[int, ir.Value]:
    query, key, value, bias, padding, attention_bias, past_key, past_value = (b.input(i) for i in range(8))
    if b.input(8) is not None or b.input(9) is not None:
        b.refuse("past_sequence_length and cache_indirection (a shared cache buffer, beam search) "
                 "are not supported; export with a growing cache")
    heads = b.int_attr("num_heads", 0)
    if heads <= 0:
        b.refuse("needs num_heads > 0")
    if b.rank(query, "query") != 3 or key is None:
        b.refuse("packed QKV is not supported (nor by onnxruntime's CPU kernel); give query, key "
                 "and value")
    key_rank = b.rank(key, "key")
    if key_rank == 5 or value is None:
        b.refuse("packed KV is not supported (nor by onnxruntime's CPU kernel); give key and value")
    if key_rank not in (3, 4) or b.rank(value, "value") != key_rank:
        b.refuse("needs key and value of rank 3 ([B, L, N*D]) or both of rank 4 ([B, N, L, D])")
    if (past_key is None) != (past_value is None) or (past_key is not None and key_rank == 4):
        b.refuse("needs past_key and past_value together, with key and value of rank 3")
    hidden = static_dim(query, -1)
    scale = b.float_attr("scale", 0.0)
    if not scale:
        if hidden is None or hidden % heads:
            b.refuse("needs a static hidden size of query (for the default scale); export with "
                     "static hidden sizes")
        scale = 1.0 / math.sqrt(hidden // heads)
    q, k, v = query, key, value
    if bias is not None:  # [Q | K | V] biases; onnxruntime adds only Q's to keys given as heads
        q, k, v = _add_projection_bias(b, query, key, value, bias, key_rank)
    q = split_heads(b.graph, b.tape, q, heads, b.names)
    if key_rank == 3:
        k, v = (split_heads(b.graph, b.tape, x, heads, b.names) for x in (k, v))
    if past_key is not None:
        k, v = b.op("Concat", past_key, k, axis=2), b.op("Concat", past_value, v, axis=2)
    total = b.length(k, 2)
    masks = []
    filler = b.float_attr("mask_filter_value", -10000.0)
    if padding is not None:
        masks.append(("add", _padding_bias(b, padding, query, total, filler)))
    if attention_bias is not None:
        masks.append(("add", attention_bias))
    if b.int_attr("unidirectional", 0):
        if not _same_dim(query, 1, key, 1 if key_rank == 3 else 2):
            b.refuse("unidirectional=1 is supported for self-attention only (query and key of one "
                     "sequence length): onnxruntime masks cross-attention otherwise")
        past = b.length(past_key, 2) if past_key is not None else b.int_scalar(0, "zero")
        masks.append(("allow", causal_mask(b.graph, b.tape, past, b.length(query, 1), total, names=b.names)))
    y = _attend(b, q, k, v, scale, masks=masks)
    return {0: merge_heads(b.graph, b.tape, y, b.names), 1: k, 2: v}


def _add_projection_bias(b: _Builder, query, key, value, bias, key_rank: int):
    q_size = b.require_dim(query, -1, "query")
    axis = b.ints([0], "axes")

    def part(start: int, end: int) -> ir.Value:
        return b.op("Slice", bias, b.ints([start], "starts"), b.ints([end], "ends"), axis)

    query = b.op("Add", query, part(0, q_size))
    if key_rank == 3:
        k_size = b.require_dim(key, -1, "key")
        key = b.op("Add", key, part(q_size, q_size + k_size))
        value = b.op("Add", value, part(q_size + k_size, _END))
    return query, key, value


def _padding_bias(b: _Builder, mask: ir.Value, query: ir.Value, total: ir.Value, filler: float) -> ir.Value:
    """The additive mask of a key padding mask: 0 where a key is kept, ``filler`` where not
    (``mask_filter_value``: onnxruntime adds it, it does not exclude the key), shaped to
    broadcast against the scores ``[B, N, S, T]``."""
    rank = b.rank(mask, "key_padding_mask")
    if rank == 1:  # the keys' lengths, one per batch row
        if not _same_dim(mask, 0, query, 0):
            b.refuse("a key_padding_mask of rank 1 must be the key lengths [batch] (the 3*batch+2 "
                     "form is not supported); give a mask [batch, total_sequence_length]")
        positions = b.op("Range", b.int_scalar(0, "zero"), total, b.int_scalar(1, "one"))
        lengths = b.op("Unsqueeze", b.op("Cast", mask, to=ir.DataType.INT64), b.ints([1], "axes"))
        kept, axes = b.op("Less", positions, lengths), [1, 2]
    elif rank in (2, 3):  # [B, T] or [B, S, T], 1 (any positive value) for a key kept
        kept = b.op("Greater", mask, rewrite.constant(b.graph, np.asarray(0, np.int32), "zero", b.names))
        axes = [1, 2] if rank == 2 else [1]
    else:
        b.refuse(f"a key_padding_mask of rank {rank} is not supported; give [batch, total_sequence_length]")
    additive = b.op("Where", kept, b.scalar(0.0, query, "zero"), b.scalar(filler, query, "mask_filter_value"))
    return b.op("Unsqueeze", additive, b.ints(axes, "axes"))


# Products and activations ----------------------------------------------------------------------


def _fused_matmul(b: _Builder) -> dict[int, ir.Value]:
    a, w = b.input(0), b.input(1)
    operands = []
    for x, name in ((a, "A"), (w, "B")):
        batch, last = b.int_attr(f"transBatch{name}", 0), b.int_attr(f"trans{name}", 0)
        if not batch and not last:
            operands.append(x)
            continue
        rank = b.rank(x, name)
        if batch and (rank < 3 or b.rank(a, "A") != b.rank(w, "B")):
            b.refuse("transBatchA/transBatchB need A and B of one rank, at least 3 (as "
                     "onnxruntime does)")
        perm = list(range(rank))
        if batch:  # the first dimension moves in front of the last: [d0, batch..., n] -> [batch..., d0, n]
            perm = perm[1:-1] + [0, perm[-1]]
        if last and rank >= 2:  # a vector is not transposed
            perm[-2], perm[-1] = perm[-1], perm[-2]
        operands.append(b.op("Transpose", x, perm=perm) if perm != list(range(rank)) else x)
    y = b.op("MatMul", *operands)
    alpha = b.float_attr("alpha", 1.0)
    return {0: b.op("Mul", y, b.scalar(alpha, a, "alpha")) if alpha != 1.0 else y}


def _quick_gelu(b: _Builder) -> dict[int, ir.Value]:
    x, alpha = b.input(0), b.float_attr("alpha", 1.702)
    scaled = b.op("Mul", x, b.scalar(alpha, x, "alpha")) if alpha != 1.0 else x
    return {0: b.op("Mul", x, b.op("Sigmoid", scaled))}


def _bias_gelu(b: _Builder) -> dict[int, ir.Value]:
    x = b.op("Add", b.input(0), b.input(1))
    erf = b.op("Erf", b.op("Mul", x, b.scalar(1.0 / math.sqrt(2.0), x, "sqrt_half")))
    return {0: _half_x_times_one_plus(b, x, erf)}


def _fast_gelu(b: _Builder) -> dict[int, ir.Value]:
    x = b.input(0) if b.input(1) is None else b.op("Add", b.input(0), b.input(1))
    # tanh(sqrt(2/pi) * (x + 0.044715 x^3)), written as onnxruntime does: x * (a + b x^2)
    a = b.scalar(math.sqrt(2.0 / math.pi), x, "gelu_a")
    c = b.scalar(0.044715 * math.sqrt(2.0 / math.pi), x, "gelu_b")
    inner = b.op("Mul", x, b.op("Add", a, b.op("Mul", c, b.op("Mul", x, x))))
    return {0: _half_x_times_one_plus(b, x, b.op("Tanh", inner))}


def _half_x_times_one_plus(b: _Builder, x: ir.Value, t: ir.Value) -> ir.Value:
    """``0.5 * x * (1 + t)``, the shape of both GELUs."""
    one_plus = b.op("Add", t, b.scalar(1.0, x, "one"))
    return b.op("Mul", b.op("Mul", x, b.scalar(0.5, x, "half")), one_plus)


def _matmul_nbits(b: _Builder) -> dict[int, ir.Value]:
    """``A · W (+ bias)``, ``W[K, N]`` the 4-bit codes of ``B`` (``[N, blocks, bytes]``, two codes
    a byte, the low half first) dequantized per block of ``block_size`` rows. At opset 21 and up
    ``W`` stays a ``DequantizeLinear`` of UINT4 codes (rule 4 of canonicalize keeps it, and
    ``quantize`` takes the codes); below, where that op has no blocks, it is the float weight."""
    a, packed, scales, zero_points = (b.input(i) for i in range(4))
    if b.int_attr("bits", 4) != 4:
        b.refuse(f"bits={b.int_attr('bits', 4)}: only 4-bit weights are taken")
    if b.input(4) is not None:
        b.refuse("its g_idx input (an act-order permutation) is not supported")
    if any(v is not None and v.const_value is None for v in (packed, scales, zero_points)):
        b.refuse("its weights, scales and zero points must be constants")
    k, n, block = (b.int_attr(name, 0) for name in ("K", "N", "block_size"))
    blocks = -(-k // block)
    codes = _nibbles(packed.const_value.numpy()).reshape(n, -1)[:, :k].T  # [K, N]
    scale = scales.const_value.numpy().reshape(n, blocks).T  # [blocks, N]
    if zero_points is None:
        zero = np.full((blocks, n), 8, np.uint8)
    elif zero_points.const_value.dtype == ir.DataType.UINT8:
        zero = _nibbles(zero_points.const_value.numpy()).reshape(n, -1)[:, :blocks].T
    else:
        b.refuse("float zero points are not supported; quantize with integer zero points")
    if b.opset >= 21:
        weight = b.op("DequantizeLinear", b.constant(codes.astype(ml_dtypes.uint4), "codes"),
                      b.constant(scale, "scales"), b.constant(zero.astype(ml_dtypes.uint4), "zero_points"),
                      axis=0, block_size=block)
    else:
        weight = b.constant(arithmetic.dequantize_constants(codes, scale, zero, axis=0, block_size=block), "weight")
    y = b.op("MatMul", a, weight)
    bias = b.input(5)
    return {0: y if bias is None else b.op("Add", y, bias)}


def _nibbles(packed: np.ndarray) -> np.ndarray:
    """The 4-bit values of bytes, the low half of each byte first."""
    return np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)


DECOMPOSITIONS: dict[tuple[str, str], Callable[[_Builder], dict[int, ir.Value]]] = {
    ("", "SimplifiedLayerNormalization"): _simplified_layer_norm,
    (MICROSOFT_DOMAIN, "SkipSimplifiedLayerNormalization"): _skip_simplified_layer_norm,
    (MICROSOFT_DOMAIN, "SkipLayerNormalization"): _skip_layer_norm,
    (MICROSOFT_DOMAIN, "RotaryEmbedding"): _rotary_embedding,
    (MICROSOFT_DOMAIN, "GroupQueryAttention"): _group_query_attention,
    (MICROSOFT_DOMAIN, "MultiHeadAttention"): _multi_head_attention,
    (MICROSOFT_DOMAIN, "FusedMatMul"): _fused_matmul,
    (MICROSOFT_DOMAIN, "QuickGelu"): _quick_gelu,
    (MICROSOFT_DOMAIN, "BiasGelu"): _bias_gelu,
    (MICROSOFT_DOMAIN, "FastGelu"): _fast_gelu,
    (MICROSOFT_DOMAIN, "MatMulNBits"): _matmul_nbits,
}
