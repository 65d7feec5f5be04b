"""Fusions the torch backend applies while lowering, so that exported graphs run at the speed of
the hand-written model.

One fusion so far: an attention product decomposed into ONNX ops (by an exporter, or by
``canonicalize`` from a fused ``Attention``) runs as one ``scaled_dot_product_attention`` call.
The matched subgraph, from the two products to the softmax between them::

    qk = MatMul(Mul(q, a), Mul(k_t, b))          # either Mul optional; a, b scalar constants
    s  = Mul(qk, c) | Div(qk, c) | qk             # optional scaling
    s  = Add(s, mask) | Where(mask, s, -inf) | s  # optional mask, additive or boolean
    p  = Softmax(s, axis=-1)
    p  = Where(IsNaN(p), 0, p) | p                # optional: fully masked rows give 0
    y  = MatMul(p, v)

becomes ``y = fused_attention(q, k_t, v, mask, scale=a*b*c)``. Every intermediate value must be
used only inside the pattern; anything else is left to the op table.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir
import torch
import torch.fx.graph


@dataclasses.dataclass
class AttentionMatch:
    """A decomposed attention: what feeds the fused call, and the nodes it replaces."""

    query: ir.Value
    key_transposed: ir.Value
    value: ir.Value
    mask: ir.Value | None
    scale: float
    zero_nan_rows: bool
    nodes: list[ir.Node]


def fused_attention(
    query: torch.Tensor,
    key_transposed: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    scale: float,
    zero_nan_rows: bool,
) -> torch.Tensor:
    """``softmax(query @ key_transposed * scale + mask) @ value``; with ``zero_nan_rows``, a
    row whose softmax is NaN (every key masked) gives 0, as the ONNX graph's guard does."""
    output = torch.nn.functional.scaled_dot_product_attention(
        query, key_transposed.transpose(-2, -1), value, attn_mask=mask, scale=scale
    )
    if zero_nan_rows:
        output = torch.nan_to_num(output, nan=0.0, posinf=math.inf, neginf=-math.inf)
    return output


# Generated code calls it by this short name (see torch_ops/__init__.py).
torch.fx.graph._register_custom_builtin(
    "fused_attention", f"from {__name__} import fused_attention", fused_attention
)


def find_attention(graph: ir.Graph) -> dict[ir.Node, AttentionMatch]:
    """Matches, keyed by the final ``MatMul(p, v)`` node."""
    matches = {}
    for node in graph:
        if node.op_type == "Softmax" and node.domain in ("", "ai.onnx"):
            match = _match(node)
            if match is not None:
                matches[match.nodes[-1]] = match
    return matches


def _match(softmax: ir.Node) -> AttentionMatch | None:
    if softmax.attributes.get_int("axis", -1) not in (-1, _rank(softmax.inputs[0]) - 1):
        return None
    nodes = [softmax]
    probabilities = softmax.outputs[0]
    zero_nan_rows = False
    guard = _nan_guard(probabilities)
    if guard is not None:
        nodes.extend(guard)
        probabilities = guard[-1].outputs[0]
        zero_nan_rows = True
    product = _only_consumer(probabilities)
    if product is None or product.op_type != "MatMul" or product.inputs[0] is not probabilities:
        return None

    scores, mask = softmax.inputs[0], None
    producer = _single_use_producer(scores)
    if producer is not None and producer.op_type == "Add":
        scores, mask = _split_add(producer)
        nodes.append(producer)
    elif producer is not None and producer.op_type == "Where" and _constant(producer.inputs[2]) == -math.inf:
        mask, scores = producer.inputs[0], producer.inputs[1]
        nodes.append(producer)
    if mask is not None and (scores is None or mask.dtype not in (ir.DataType.FLOAT, ir.DataType.BOOL)):
        return None

    scale = 1.0
    producer = _single_use_producer(scores)
    if producer is not None and producer.op_type in ("Mul", "Div"):
        factor = _constant(producer.inputs[1])
        if factor is not None:
            scale = factor if producer.op_type == "Mul" else 1.0 / factor
            scores = producer.inputs[0]
            nodes.append(producer)
    qk = _single_use_producer(scores)
    if qk is None or qk.op_type != "MatMul":
        return None
    nodes.append(qk)
    query, query_scale = _strip_scalar_mul(qk.inputs[0], nodes)
    key_transposed, key_scale = _strip_scalar_mul(qk.inputs[1], nodes)
    scale *= query_scale * key_scale
    if any(_rank(v) != 4 for v in (query, key_transposed, product.inputs[1])):
        return None
    nodes.reverse()
    return AttentionMatch(
        query, key_transposed, product.inputs[1], mask, scale, zero_nan_rows, nodes + [product]
    )


def _strip_scalar_mul(value: ir.Value, nodes: list[ir.Node]) -> tuple[ir.Value, float]:
    """``(x, c)`` for ``value = Mul(x, c)`` with a scalar constant ``c`` (the ``Mul`` joins
    ``nodes``), else ``(value, 1.0)``."""
    producer = _single_use_producer(value)
    factor = _constant(producer.inputs[1]) if producer is not None and producer.op_type == "Mul" else None
    if factor is None:
        return value, 1.0
    nodes.append(producer)
    return producer.inputs[0], factor


def _nan_guard(probabilities: ir.Value) -> list[ir.Node] | None:
    """``Where(IsNaN(p), 0, p)`` on ``p``: [IsNaN, Where], or None."""
    consumers = probabilities.consumers()
    isnan = next((n for n in consumers if n.op_type == "IsNaN"), None)
    if (
        isnan is None
        or len(consumers) != 2
        or probabilities.is_graph_output()
        or isnan.outputs[0].is_graph_output()
        or len(isnan.outputs[0].uses()) != 1
    ):
        return None
    where = _only_consumer(isnan.outputs[0])
    if (
        where is None
        or where not in consumers
        or where.op_type != "Where"
        or list(where.inputs) != [isnan.outputs[0], where.inputs[1], probabilities]
        or _constant(where.inputs[1]) != 0.0
    ):
        return None
    return [isnan, where]


def _split_add(add: ir.Node) -> tuple[ir.Value | None, ir.Value | None]:
    """(scores, mask) of ``Add``: the scores are the operand made by a product chain."""
    left, right = add.inputs
    for scores, mask in ((left, right), (right, left)):
        producer = _single_use_producer(scores)
        if producer is not None and producer.op_type in ("MatMul", "Mul", "Div"):
            return scores, mask
    return None, None


def _single_use_producer(value: ir.Value | None) -> ir.Node | None:
    if value is None or len(value.uses()) != 1 or value.is_graph_output():
        return None
    return value.producer()


def _only_consumer(value: ir.Value) -> ir.Node | None:
    consumers = value.consumers()
    if len(consumers) != 1 or value.is_graph_output():
        return None
    return consumers[0]


def _constant(value: ir.Value | None) -> float | None:
    """The value of a scalar floating-point constant, else None."""
    if value is None or value.const_value is None or value.const_value.size != 1:
        return None
    array = value.const_value.numpy()
    return float(array.reshape(-1)[0]) if np.issubdtype(array.dtype, np.floating) else None


def _rank(value: ir.Value | None) -> int:
    return len(value.shape) if value is not None and value.shape is not None else -1
