"""Which transformer part each matrix product is: its role and its layer.

``canonicalize`` stores the result on every linear projection and attention product as node
metadata (persisted in ``.kirin`` files), which later passes and the dump read:

- ``kirin.role``: ``q``, ``k``, ``v``, ``o`` (Llama) or ``out`` (OPT), ``gate``, ``up``,
  ``down``, ``fc1``, ``fc2``, ``lm_head``, ...; ``attn-qk`` and ``attn-pv`` for the products
  ``Q·K^T`` and ``P·V``;
- ``kirin.layer``: the decoder layer index;
- ``kirin.scope``: the module path the exporter recorded (``model.layers.0.self_attn.q_proj``;
  a wrapper module adds its own prefix).

Attention products are recognised by structure (rule 1). Linear roles come from the exporter's
name scopes where present (the leaf module name, ``_proj`` removed) and from structure
otherwise:

1. a product of two computed values whose result reaches a ``Softmax`` is ``attn-qk``; one whose
   left operand comes from a ``Softmax`` is ``attn-pv``;
2. a linear whose result reaches the left operand of ``attn-qk`` is ``q``, the right one ``k``,
   the right operand of ``attn-pv`` ``v``; one reading the output of ``attn-pv`` is ``o``;
3. a linear fed by two linears that feed only it is ``down``; of those two, the one whose path
   passes an activation is ``gate``, the other ``up``; a linear fed by one linear that feeds only
   it is ``fc2``, and that one ``fc1`` (OPT-style models call their output projection ``out``);
4. a linear whose result is a graph output is ``lm_head``; any other is ``linear``.

Layers come from the scope (``layers.N``) or, failing that, from structure: attention products
are numbered in order; q, k, v and o take the layer of their attention product; other linears
that of the last attention product before them; ``lm_head`` has none.
"""

from __future__ import annotations

import collections
import re
from typing import Iterable

import onnx_ir as ir

from kirin_compiler.metadata import KEY_LAYER, KEY_ROLE, KEY_SCOPE

ROLE, LAYER, SCOPE = KEY_ROLE, KEY_LAYER, KEY_SCOPE

ATTENTION_QK = "attn-qk"
ATTENTION_PV = "attn-pv"

# Ops that carry a value along without mixing it with another product's result: a walk from
# one product to the next passes through these only.
_PASS_THROUGH = frozenset(
    "Add Sub Mul Div Neg Where Cast Reshape Transpose Expand Unsqueeze Squeeze Slice Concat "
    "Split Gather Identity IsNaN Tanh Sigmoid Relu Gelu Silu Erf Tile Dropout Flatten "
    "QuantizeLinear DequantizeLinear".split()  # a QDQ model's fake quantization passes values through
)
_ACTIVATIONS = frozenset("Sigmoid Relu Gelu Silu Erf Tanh HardSigmoid HardSwish Softplus".split())
_LAYER_IN_SCOPE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")


def role(node: ir.Node) -> str | None:
    return node.metadata_props.get(ROLE)


def layer(node: ir.Node) -> int | None:
    value = node.metadata_props.get(LAYER)
    return int(value) if value is not None else None


def is_linear(node: ir.Node) -> bool:
    """``MatMul(x, W)`` with a constant two-dimensional ``W``, or one that dequantizes constant
    4-bit codes (`dequantized`): a linear projection."""
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
        return False
    weight = node.inputs[1]
    if weight is None:
        return False
    source = dequantized(weight)
    if source is None:
        return weight.const_value is not None and len(weight.shape or ()) == 2
    return len(source.inputs[0].const_value.shape) == 2


def dequantized(value: ir.Value) -> ir.Node | None:
    """The ``DequantizeLinear`` of constant codes, scales and zero points that makes ``value``
    (a weight canonicalize kept as its 4-bit codes), if that is what makes it."""
    producer = value.producer()
    if producer is None or producer.op_type != "DequantizeLinear" or producer.domain not in ("", "ai.onnx"):
        return None
    constant = all(v is None or v.const_value is not None for v in producer.inputs)
    return producer if constant and producer.inputs[0] is not None else None


def is_product(node: ir.Node) -> bool:
    """``MatMul`` of two computed values (an attention product candidate)."""
    return (
        node.op_type == "MatMul"
        and node.domain in ("", "ai.onnx")
        and all(v is not None and v.const_value is None for v in node.inputs)
    )


def assign_roles(graph: ir.Graph, scopes: dict[ir.Node, str]) -> None:
    """Annotates every linear and attention product of ``graph`` (see the module docstring)."""
    nodes = list(graph)
    products = {n: _product_role(n) for n in nodes if is_product(n)}
    products = {n: r for n, r in products.items() if r is not None}
    linears = [n for n in nodes if is_linear(n)]
    structural, partner = _structural_linear_roles(linears, products)
    product_layer: dict[ir.Node, int] = {}
    attention_count = -1
    current_layer: int | None = None  # the layer of the last attention product seen
    for node in nodes:
        scope = scopes.get(node, "")
        if node in products:
            if products[node] == ATTENTION_QK:
                attention_count += 1
            current_layer = _layer_from_scope(scope, attention_count)
            product_layer[node] = current_layer
            _annotate(node, products[node], current_layer, scope)
    current_layer = None
    named: list[tuple[ir.Node, str, int | None, str]] = []
    for node in nodes:
        if node in product_layer:
            current_layer = product_layer[node]
        if node not in structural:
            continue
        scope = scopes.get(node, "")
        role_name = _role_from_scope(scope) or structural[node]
        fallback = product_layer.get(partner.get(node), current_layer)
        if structural[node] == "lm_head":
            fallback = None
        named.append((node, role_name, _layer_from_scope(scope, fallback), scope))
    for node, role_name, layer_index, scope in _unique(named):
        _annotate(node, role_name, layer_index, scope)


def _unique(named: list[tuple[ir.Node, str, int | None, str]]) -> list[tuple[ir.Node, str, int | None, str]]:
    """The roles made unique within each layer, by construction: products of one layer that
    would share a role (GPT-2's ``attn.c_proj`` and ``mlp.c_proj`` both end in ``c_proj``) take
    the module path below the layer instead (``attn-c``, ``mlp-c``), and any that still share
    one are numbered in graph order. The weight names (``layers.<i>.<role>.weight``) follow."""
    def count(items):
        return collections.Counter((layer_index, role_name) for _, role_name, layer_index, _ in items)

    shared = count(named)
    named = [
        (node, _path_role(scope) or role_name, layer_index, scope)
        if shared[(layer_index, role_name)] > 1 else (node, role_name, layer_index, scope)
        for node, role_name, layer_index, scope in named
    ]
    shared, seen = count(named), collections.Counter()
    result = []
    for node, role_name, layer_index, scope in named:
        if shared[(layer_index, role_name)] > 1:
            seen[(layer_index, role_name)] += 1
            role_name = f"{role_name}-{seen[(layer_index, role_name)]}"
        result.append((node, role_name, layer_index, scope))
    return result


def _path_role(scope: str) -> str | None:
    """``attn-c`` for ``transformer.h.0.attn.c_proj``: the module path below the layer."""
    match = _LAYER_IN_SCOPE.search(scope)
    below = scope[match.end():] if match else scope
    parts = [part.removesuffix("_proj") for part in below.split(".") if part and not part.isdigit()]
    return "-".join(parts) or None


def _annotate(node: ir.Node, role_name: str, layer_index: int | None, scope: str) -> None:
    node.metadata_props[ROLE] = role_name
    if layer_index is not None and layer_index >= 0:
        node.metadata_props[LAYER] = str(layer_index)
    if scope:
        node.metadata_props[SCOPE] = scope


def _role_from_scope(scope: str) -> str | None:
    leaf = scope.rsplit(".", 1)[-1]
    if not leaf or leaf.isdigit():
        return None
    return leaf.removesuffix("_proj")


def _layer_from_scope(scope: str, fallback: int | None) -> int | None:
    match = _LAYER_IN_SCOPE.search(scope)
    return int(match.group(1)) if match else fallback


def _product_role(node: ir.Node) -> str | None:
    if any(n.op_type == "Softmax" for n in _walk_back(node.inputs[0])):
        return ATTENTION_PV
    if any(n.op_type == "Softmax" for n in _walk_forward(node.outputs[0])):
        return ATTENTION_QK
    return None


def _walk_forward(value: ir.Value) -> Iterable[ir.Node]:
    """Consumers reachable from ``value`` through pass-through ops (the stops included)."""
    seen: set[ir.Node] = set()
    stack = [value]
    while stack:
        for consumer in stack.pop().consumers():
            if consumer in seen:
                continue
            seen.add(consumer)
            yield consumer
            if consumer.op_type in _PASS_THROUGH:
                stack.extend(consumer.outputs)


def _walk_back(value: ir.Value | None) -> Iterable[ir.Node]:
    """Producers reachable backwards from ``value`` through pass-through ops."""
    seen: set[ir.Node] = set()
    stack = [value]
    while stack:
        current = stack.pop()
        producer = current.producer() if current is not None else None
        if producer is None or producer in seen:
            continue
        seen.add(producer)
        yield producer
        if producer.op_type in _PASS_THROUGH:
            stack.extend(v for v in producer.inputs if v is not None and v.const_value is None)


def _structural_linear_roles(
    linears: list[ir.Node], products: dict[ir.Node, str]
) -> tuple[dict[ir.Node, str], dict[ir.Node, ir.Node]]:
    """Roles by structure, and for q/k/v/o the attention product each belongs to."""
    linear_set = set(linears)
    # Neighbouring matrix products in walk order (dicts, not sets: sets of nodes iterate in
    # memory-address order, which would make the result differ from run to run).
    feeds = {linear: _matmuls(_walk_forward(linear.outputs[0])) for linear in linears}
    fed_by = {linear: _matmuls(_walk_back(linear.inputs[0])) for linear in linears}
    roles: dict[ir.Node, str] = {}
    partner: dict[ir.Node, ir.Node] = {}
    mlp_is_gated = False
    for linear in linears:
        sources = fed_by[linear]
        exclusive = [s for s in sources if s in linear_set and list(feeds[s]) == [linear]]
        if len(sources) == 2 and len(exclusive) == 2:
            roles[linear] = "down"
            mlp_is_gated = True
            first, second = exclusive
            gate_first = _passes_activation(first, linear)
            roles[first], roles[second] = ("gate", "up") if gate_first else ("up", "gate")
        elif len(sources) == 1 and len(exclusive) == 1:
            roles[linear] = "fc2"
            roles[exclusive[0]] = "fc1"
    for linear in linears:
        if linear in roles:
            continue
        targets = {products.get(n): n for n in feeds[linear] if n in products}
        sources = [n for n in fed_by[linear] if products.get(n) == ATTENTION_PV]
        if ATTENTION_QK in targets:
            roles[linear] = "q" if _feeds_input(linear, targets[ATTENTION_QK], 0) else "k"
            partner[linear] = targets[ATTENTION_QK]
        elif ATTENTION_PV in targets and _feeds_input(linear, targets[ATTENTION_PV], 1):
            roles[linear] = "v"
            partner[linear] = targets[ATTENTION_PV]
        elif sources:
            roles[linear] = "out" if "fc1" in roles.values() and not mlp_is_gated else "o"
            partner[linear] = sources[0]
        elif _reaches_graph_output(linear):
            roles[linear] = "lm_head"
        else:
            roles[linear] = "linear"
    return roles, partner


def _matmuls(nodes: Iterable[ir.Node]) -> dict[ir.Node, None]:
    return dict.fromkeys(n for n in nodes if n.op_type == "MatMul")


def _feeds_input(linear: ir.Node, product: ir.Node, index: int) -> bool:
    """Whether ``linear``'s result reaches operand ``index`` of ``product``."""
    return linear in set(_walk_back(product.inputs[index]))


def _reaches_graph_output(linear: ir.Node) -> bool:
    return linear.outputs[0].is_graph_output() or any(
        v.is_graph_output()
        for n in _walk_forward(linear.outputs[0])
        if n.op_type in _PASS_THROUGH
        for v in n.outputs
    )


def _passes_activation(source: ir.Node, target: ir.Node) -> bool:
    on_path = set(_walk_back(target.inputs[0]))
    return any(
        n.op_type in _ACTIVATIONS and n in on_path for n in _walk_forward(source.outputs[0])
    )
