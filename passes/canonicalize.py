"""``canonicalize``: bring every export to one form the Kirin passes can rely on.

Rewrite rules, applied in this order:

1. Model-local functions are inlined and ``Constant`` nodes become initializers.
2. Constant subgraphs are folded (shape arithmetic on static dimensions included), and
   ``Identity`` nodes and unused nodes are removed.
3. ``Gemm(A, B, C)`` with a constant ``B`` becomes ``MatMul(A, W) + bias`` with
   ``W = alpha * B`` (transposed when ``transB=1``) and ``bias = beta * C``.
4. ``MatMul(x, Transpose(W))`` with a constant ``W`` becomes ``MatMul(x, W^T)``, the transposed
   weight stored as a new initializer: every linear layer is ``MatMul(x, W[K, N])``.
5. A fused ``Attention`` (opset 23) is decomposed into ``MatMul(Q, K^T)``, scale, mask,
   softcap, ``Softmax`` and ``MatMul(P, V)``, with grouped-query heads repeated, so that both
   attention products are visible.
6. Every linear and attention product gets its role and layer (`kirin_compiler.roles`).
7. Exporter metadata (scopes, stack traces, local paths) is dropped; nodes are sorted
   topologically and named ``<Op>_<i>``, values ``v<i>``, weights after their role
   (``layers.0.q.weight``), other initializers ``c<i>``; graph inputs and outputs keep their
   names.

Every rule is a deterministic function of the graph (no hashing of object ids, no timing), and
rule 7 renames everything the earlier rules created, so the same file gives the same canonical
model byte for byte.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import onnxscript.optimizer

from kirin_compiler import rewrite, roles
from kirin_compiler.errors import UnsupportedOpError
from kirin_compiler.pass_manager import Pass

_SCOPE_KEY = "namespace"  # the dynamo exporter's module path of each node


@dataclasses.dataclass(frozen=True)
class CanonicalizePass(Pass):
    """Canonical form: linear layers as MatMul(x, W[K, N]), attention products visible,
    roles annotated, deterministic names."""

    name = "canonicalize"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for step in (
            common_passes.InlinePass(),
            common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        ):
            modified |= step(model).modified
        modified |= onnxscript.optimizer.fold_constants(model).modified
        for step in (common_passes.IdentityEliminationPass(), common_passes.RemoveUnusedNodesPass()):
            modified |= step(model).modified
        scopes = {node: _scope(node) for node in model.graph}
        graph = model.graph
        decomposed = False
        for node in list(graph):
            if node.op_type == "Gemm":
                modified |= _split_gemm(graph, node, scopes)
            elif node.op_type == "Attention":
                decomposed |= _decompose_attention(graph, node, scopes)
        if decomposed:  # the new nodes need types and shapes, as the exporter's have
            common_passes.ShapeInferencePass()(model)
        modified |= decomposed
        for node in list(graph):
            if node.op_type == "MatMul":
                modified |= _fold_weight_transpose(graph, node)
        modified |= common_passes.RemoveUnusedNodesPass()(model).modified
        graph.sort()
        before = _annotations(graph)
        _strip_exporter_metadata(model)
        roles.assign_roles(graph, scopes)
        modified |= _rename(model)
        modified |= before != _annotations(graph)
        return ir.passes.PassResult(model, modified)


def _scope(node: ir.Node) -> str:
    """The module path the exporter recorded for ``node``, as ``model.layers.0.mlp.up_proj``."""
    namespace = node.metadata_props.get(_SCOPE_KEY)
    if namespace:  # "...: Module/m.model.layers.0.mlp.up_proj: Linear/linear: aten.linear"
        entries = [entry.split(":")[0].strip() for entry in namespace.split("/")]
        return entries[-2] if len(entries) >= 2 else ""
    if node.name.startswith("/"):  # the TorchScript exporter: "/m/model/layers.0/mlp/up_proj/MatMul"
        return ".".join(part for part in node.name.split("/")[1:-1])
    return ""


def _annotations(graph: ir.Graph) -> list[dict[str, str]]:
    return [dict(node.metadata_props) for node in graph]


def _strip_exporter_metadata(model: ir.Model) -> None:
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        for key in [k for k in node.metadata_props if not k.startswith("kirin.")]:
            del node.metadata_props[key]
        node.doc_string = None
        for value in node.outputs:
            value.metadata_props.clear()
            value.doc_string = None
    for value in model.graph.initializers.values():
        value.metadata_props.clear()
    model.graph.metadata_props.clear()
    model.graph.doc_string = None
    model.doc_string = None


def _replace(graph: ir.Graph, old: ir.Node, tape: ir.tape.Tape, outputs: list[ir.Value]) -> None:
    rewrite.replace(graph, [old], tape.nodes, list(old.outputs), outputs)


# Rule 3 -----------------------------------------------------------------------------------------


def _split_gemm(graph: ir.Graph, node: ir.Node, scopes: dict[ir.Node, str]) -> bool:
    a, b = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    if b is None or b.const_value is None:
        return False  # not a linear layer: leave it for the backends
    alpha = node.attributes.get_float("alpha", 1.0)
    beta = node.attributes.get_float("beta", 1.0)
    weight = b.const_value.numpy()
    if node.attributes.get_int("transB", 0):
        weight = weight.T
    if alpha != 1.0:
        weight = weight * np.asarray(alpha, dtype=weight.dtype)
    tape = ir.tape.Tape(graph)
    x = a
    if node.attributes.get_int("transA", 0):
        x = tape.op("Transpose", [a], {"perm": [1, 0]})
    w = rewrite.constant(graph, np.ascontiguousarray(weight), f"{node.name}.weight")
    y = tape.op("MatMul", [x, w])
    if c is not None:
        bias = c
        if beta != 1.0:
            if c.const_value is None:
                bias = tape.op("Mul", [c, rewrite.constant(graph, np.asarray(beta, np.float32), "beta")])
            else:
                bias = rewrite.constant(graph, c.const_value.numpy() * beta, f"{node.name}.bias")
        y = tape.op("Add", [y, bias])
    for new_node in tape.nodes:
        scopes[new_node] = scopes.get(node, "")
    _replace(graph, node, tape, [y])
    return True


# Rule 4 -----------------------------------------------------------------------------------------


def _fold_weight_transpose(graph: ir.Graph, node: ir.Node) -> bool:
    transposed = node.inputs[1]
    transpose = transposed.producer() if transposed is not None else None
    if transpose is None or transpose.op_type != "Transpose":
        return False
    source = transpose.inputs[0]
    if source is None or source.const_value is None or len(source.shape or ()) != 2:
        return False
    perm = transpose.attributes.get_ints("perm", [1, 0])
    if list(perm) != [1, 0]:
        return False
    # A transposed view, not a copy: a tied embedding and its lm_head share memory (the file
    # still stores both, contiguous).
    weight = source.const_value.numpy().T
    node.replace_input_with(1, rewrite.constant(graph, weight, f"{source.name}.T"))
    return True


# Rule 5 -----------------------------------------------------------------------------------------


def _decompose_attention(graph: ir.Graph, node: ir.Node, scopes: dict[ir.Node, str]) -> bool:
    inputs = list(node.inputs) + [None] * (7 - len(node.inputs))
    q, k, v, mask, past_key, past_value, nonpad = inputs[:7]
    op = "Attention"
    if past_key is not None or past_value is not None or nonpad is not None:
        raise UnsupportedOpError(
            node.name, op, "has a key/value cache input; export without the cache (use_cache=False)"
        )
    if any(output.uses() for output in node.outputs[1:]):
        raise UnsupportedOpError(
            node.name, op, "its present_key/present_value/qk outputs are used; only Y is supported"
        )
    rank = len(q.shape) if q.shape is not None else None
    if rank not in (3, 4):
        raise UnsupportedOpError(node.name, op, "needs Q of known rank 3 or 4")

    tape = ir.tape.Tape(graph)
    q_heads = node.attributes.get_int("q_num_heads")
    kv_heads = node.attributes.get_int("kv_num_heads")
    if rank == 4:
        q_heads, kv_heads = _static_dim(q, 1), _static_dim(k, 1)
    sizes = [_head_size(x, heads, rank) for x, heads in ((q, q_heads), (k, kv_heads), (v, kv_heads))]
    if q_heads is None or kv_heads is None or None in sizes or q_heads % kv_heads:
        raise UnsupportedOpError(
            node.name, op, "needs static head counts (query heads a multiple of key/value heads) "
            "and static head sizes"
        )
    head_size, key_size, value_size = sizes
    if rank == 3:
        q, k, v = (
            _split_heads(graph, tape, x, h)
            for x, h in ((q, q_heads), (k, kv_heads), (v, kv_heads))
        )
    if q_heads != kv_heads:
        k = _repeat_heads(graph, tape, k, q_heads // kv_heads, q_heads, key_size)
        v = _repeat_heads(graph, tape, v, q_heads // kv_heads, q_heads, value_size)
    scale = node.attributes.get_float("scale", 1.0 / math.sqrt(head_size))

    key_t = tape.op("Transpose", [k], {"perm": [0, 1, 3, 2]})
    scores = tape.op("MatMul", [q, key_t])
    scores = tape.op("Mul", [scores, rewrite.constant(graph, np.asarray(scale, np.float32), "scale")])
    softcap = node.attributes.get_float("softcap", 0.0)
    if softcap > 0:
        cap = rewrite.constant(graph, np.asarray(softcap, np.float32), "softcap")
        scores = tape.op("Mul", [tape.op("Tanh", [tape.op("Div", [scores, cap])]), cap])
    minus_inf = rewrite.constant(graph, np.asarray(-np.inf, np.float32), "minus_inf")
    if node.attributes.get_int("is_causal", 0):
        allowed = tape.op(
            "Trilu",
            [tape.op("ConstantOfShape", [tape.op("Shape", [scores], {"start": -2})],
                     {"value": ir.tensor(np.array([True]))})],
            {"upper": 0},
        )
        scores = tape.op("Where", [allowed, scores, minus_inf])
    if mask is not None:
        if mask.dtype == ir.DataType.BOOL:
            scores = tape.op("Where", [mask, scores, minus_inf])
        else:
            scores = tape.op("Add", [scores, mask])
    probs = tape.op("Softmax", [scores], {"axis": -1})
    # A fully masked row is all -inf: Softmax gives NaN there, the Attention spec gives 0.
    zero = rewrite.constant(graph, np.asarray(0.0, np.float32), "zero")
    probs = tape.op("Where", [tape.op("IsNaN", [probs]), zero, probs])
    y = tape.op("MatMul", [probs, v])
    if rank == 3:
        y = tape.op("Reshape", [tape.op("Transpose", [y], {"perm": [0, 2, 1, 3]}),
                                rewrite.constant(graph, np.array([0, 0, -1], np.int64), "shape")])
    for new_node in tape.nodes:
        scopes[new_node] = scopes.get(node, "")
    _replace(graph, node, tape, [y] + [ir.Value(name=rewrite.unique(graph, "unused")) for _ in node.outputs[1:]])
    return True


def _static_dim(value: ir.Value, axis: int) -> int | None:
    if value.shape is None:
        return None
    dim = value.shape[axis]
    return dim if isinstance(dim, int) else None


def _head_size(value: ir.Value, heads: int | None, rank: int) -> int | None:
    size = _static_dim(value, -1)
    if rank == 4 or size is None or not heads:
        return size
    return size // heads if size % heads == 0 else None


def _split_heads(graph: ir.Graph, tape: ir.tape.Tape, x: ir.Value, heads: int) -> ir.Value:
    """[B, S, H*D] -> [B, H, S, D]."""
    shape = rewrite.constant(graph, np.array([0, 0, heads, -1], np.int64), "shape")
    return tape.op("Transpose", [tape.op("Reshape", [x, shape])], {"perm": [0, 2, 1, 3]})


def _repeat_heads(
    graph: ir.Graph, tape: ir.tape.Tape, x: ir.Value, repeats: int, heads: int, head_size: int
) -> ir.Value:
    """[B, Hkv, S, D] -> [B, Hkv * repeats, S, D], each key/value head repeated in place."""
    axis = rewrite.constant(graph, np.array([2], np.int64), "axes")
    expand = rewrite.constant(graph, np.array([1, 1, repeats, 1, 1], np.int64), "repeats")
    shape = rewrite.constant(graph, np.array([0, heads, -1, head_size], np.int64), "shape")
    return tape.op("Reshape", [tape.op("Expand", [tape.op("Unsqueeze", [x, axis]), expand]), shape])


# Rule 7 -----------------------------------------------------------------------------------------


def _rename(model: ir.Model) -> bool:
    graph = model.graph
    protected = {v.name for v in graph.inputs} | {v.name for v in graph.outputs}
    renames: list[tuple[ir.Value | ir.Node, str]] = []
    constant_index = 0
    for value in _initializers_in_use_order(graph):
        if value.name in protected:
            continue
        new_name = _weight_name(value)
        if new_name is None:
            new_name = f"c{constant_index}"
            constant_index += 1
        renames.append((value, new_name))
    value_index = 0
    for node_index, node in enumerate(graph):
        renames.append((node, f"{node.op_type}_{node_index}"))
        for value in node.outputs:
            if value.name not in protected:
                renames.append((value, f"v{value_index}"))
                value_index += 1
    return _apply_renames(graph, renames)


def _initializers_in_use_order(graph: ir.Graph) -> list[ir.Value]:
    ordered: dict[ir.Value, None] = {}
    for node in graph:
        for value in node.inputs:
            if value is not None and value.is_initializer():
                ordered.setdefault(value)
    for value in graph.initializers.values():  # unused ones (kept for the user) go last, by name
        ordered.setdefault(value)
    return list(ordered)


def _weight_name(value: ir.Value) -> str | None:
    for consumer, index in value.uses():
        role = roles.role(consumer)
        if role is None or index != 1 or consumer.op_type != "MatMul":
            continue
        layer = roles.layer(consumer)
        return f"layers.{layer}.{role}.weight" if layer is not None else f"{role}.weight"
    return None


def _apply_renames(graph: ir.Graph, renames: list[tuple[ir.Value | ir.Node, str]]) -> bool:
    if all(item.name == name for item, name in renames):
        return False
    # Two steps, so that a new name never collides with an old one still in use.
    for index, (item, _) in enumerate(renames):
        item.name = f"__kirin_rename_{index}"
    for item, name in renames:
        item.name = name
    return True
