"""``canonicalize``: bring every export to one form the Kirin passes can rely on.

Rewrite rules, applied in this order:

1. Model-local functions are inlined and ``Constant`` nodes become initializers. A merged
   decoder's ``If`` on a graph input (optimum's ``use_cache_branch``), one of whose branches
   reads graph inputs the other does not (the KV cache), takes that branch: on an empty cache
   it computes what the other does, and rule 3 inlines it. The flag stays an input, unused.
2. Every onnxruntime contrib op of `kirin_compiler.contrib_ops` (RMS and skip normalizations,
   rotary embeddings, GroupQueryAttention, MultiHeadAttention, FusedMatMul, fused GELUs) is
   decomposed exactly into standard ops (``passes/_contrib.py``, ``docs/contrib_ops.md``),
   attention into the two visible products of rule 7; shapes are inferred again, and the
   ``com.microsoft`` opset import goes once no node uses it.
3. Constant subgraphs are folded (shape arithmetic on static dimensions included), and
   ``Identity`` nodes and unused nodes are removed.
4. A ``DequantizeLinear`` of constant codes (a QDQ model's weights) becomes its float constant,
   computed as onnxruntime does, except where it makes a linear layer's weight ``[K, N]`` from
   4-bit codes: there it stays, so that ``quantize`` takes the codes as they are. A
   ``MatMulInteger`` of constant codes (onnxruntime's ``quantize_dynamic``) becomes a float
   ``MatMul(a - a_zero_point, W)`` with ``W = codes - zero_point``, and the ``Cast`` to float
   that read its integers reads the product.
5. ``Gemm(A, B, C)`` with a constant ``B`` becomes ``MatMul(A, W) + bias`` with
   ``W = alpha * B`` (transposed when ``transB=1``) and ``bias = beta * C``.
6. ``MatMul(x, Transpose(W))`` with a constant ``W`` becomes ``MatMul(x, W^T)``, the transposed
   weight stored as a new initializer: every linear layer is ``MatMul(x, W[K, N])``.
7. A fused ``Attention`` (opset 23) is decomposed into ``MatMul(Q, K^T)``, scale, mask,
   softcap, ``Softmax`` and ``MatMul(P, V)``, with grouped-query heads repeated, so that both
   attention products are visible.
8. Every linear and attention product gets its role and layer (`kirin_compiler.roles`).
9. Exporter metadata (scopes, stack traces, local paths) is dropped; nodes are sorted
   topologically and named ``<Op>_<i>``, values ``v<i>``, weights after their role
   (``layers.0.q.weight``), other initializers ``c<i>``; graph inputs and outputs keep their
   names.

Every rule is a deterministic function of the graph (no hashing of object ids, no timing), and
rule 9 renames everything the earlier rules created, so the same file gives the same canonical
model byte for byte.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
import onnxscript.optimizer

from kirin_compiler import arithmetic, contrib_ops, rewrite, roles
from kirin_compiler.errors import UnsupportedOpError
from kirin_compiler.pass_manager import Pass
from kirin_compiler.passes import _contrib

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
        modified |= _take_cache_branches(model.graph)
        modified |= _decompose_contrib_ops(model)
        modified |= onnxscript.optimizer.fold_constants(model).modified
        for step in (common_passes.IdentityEliminationPass(), common_passes.RemoveUnusedNodesPass()):
            modified |= step(model).modified
        modified |= _fold_dequantized_weights(model.graph)
        modified |= _float_integer_products(model.graph)
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


def _take_cache_branches(graph: ir.Graph) -> bool:
    modified = False
    inputs = frozenset(graph.inputs)
    for node in list(graph):
        if node.op_type != "If" or node.inputs[0] not in inputs:
            continue
        then, other = (_inputs_read(node.attributes[name].as_graph(), inputs) if name in node.attributes else set()
                       for name in ("then_branch", "else_branch"))
        if then == other or not (then > other or other > then):
            continue  # not a choice between a cache and none
        condition = rewrite.constant(graph, np.array([then > other]), "cache_branch")
        node.replace_input_with(0, condition)
        modified = True
    return modified


def _inputs_read(branch: ir.Graph, inputs: frozenset[ir.Value]) -> set[ir.Value]:
    return {value for node in ir.traversal.RecursiveGraphIterator(branch) for value in node.inputs if value in inputs}


# Rule 2 -----------------------------------------------------------------------------------------


def _decompose_contrib_ops(model: ir.Model) -> bool:
    graph = model.graph
    names = rewrite.Names(graph)  # read once: a large export has hundreds of contrib nodes
    contrib = [node for node in graph if contrib_ops.is_contrib(node)]
    for node in contrib:
        _contrib.decompose(graph, node, names)
    if not contrib:
        return False
    common_passes.ShapeInferencePass()(model)  # the new nodes need types and shapes
    if not any(n.domain == contrib_ops.MICROSOFT_DOMAIN for n in ir.traversal.RecursiveGraphIterator(graph)):
        model.opset_imports.pop(contrib_ops.MICROSOFT_DOMAIN, None)
    return True


# Rule 4 -----------------------------------------------------------------------------------------

_FOUR_BIT = (ir.DataType.INT4, ir.DataType.UINT4)


def _fold_dequantized_weights(graph: ir.Graph) -> bool:
    modified = False
    for node in list(graph):
        if node.op_type != "DequantizeLinear" or roles.dequantized(node.outputs[0]) is not node:
            continue
        if _keeps_codes(node):
            continue  # quantize takes these codes onto its grid as they are
        codes, scale, zero = (None if v is None else v.const_value.numpy() for v in [*node.inputs, None][:3])
        weight = arithmetic.dequantize_constants(codes, scale, zero, node.attributes.get_int("axis", 1),
                                                 node.attributes.get_int("block_size", 0))
        folded = rewrite.constant(graph, weight, f"{node.name}.dequantized")
        rewrite.replace(graph, [node], [], list(node.outputs), [folded])
        modified = True
    return modified


def _float_integer_products(graph: ir.Graph) -> bool:
    modified = False
    for node in list(graph):
        if node.op_type != "MatMulInteger":
            continue
        a, b, a_zero, b_zero = [*node.inputs, None, None][:4]
        if b.const_value is None or len(b.shape or ()) != 2:
            continue
        if (b_zero is not None and b_zero.const_value is None) or not _scalar(a_zero):
            continue  # per-row zero points of a: not a linear layer's input
        codes = b.const_value.numpy().astype(np.int32)
        zero = 0 if b_zero is None else b_zero.const_value.numpy().astype(np.int32)
        weight = rewrite.constant(graph, (codes - zero).astype(np.float32), f"{node.name}.weight")
        tape = ir.tape.Tape(graph)
        x = tape.op("Cast", [a], {"to": ir.DataType.FLOAT})
        if a_zero is not None:
            x = tape.op("Sub", [x, tape.op("Cast", [a_zero], {"to": ir.DataType.FLOAT})])
        product = tape.op("MatMul", [x, weight])
        for new in tape.nodes:
            new.name = f"{node.name}_{new.op_type}"
            new.metadata_props.update(node.metadata_props)
        product.producer().name = node.name  # the exporter's path: the layer's scope
        casts = [user for user, _ in node.outputs[0].uses() if user.op_type == "Cast"
                 and user.attributes.get_int("to") == ir.DataType.FLOAT]
        integers = tape.op("Cast", [tape.op("Round", [product])], {"to": ir.DataType.INT32})
        rewrite.replace(graph, [node], tape.nodes, list(node.outputs), [integers])
        for cast in casts:  # the float product itself, not its integers made float again
            rewrite.replace(graph, [cast], [], list(cast.outputs), [product])
        modified = True
    return modified


def _scalar(value: ir.Value | None) -> bool:
    """None, a scalar, or DynamicQuantizeLinear's zero point (a scalar, typed or not)."""
    if value is None or (value.shape is not None and len(value.shape) == 0):
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "DynamicQuantizeLinear"


def _keeps_codes(node: ir.Node) -> bool:
    """4-bit codes ``[K, N]`` read only as the weight of ``MatMul`` products."""
    codes = node.inputs[0]
    users = node.outputs[0].uses()
    return (codes.const_value.dtype in _FOUR_BIT and len(codes.shape or ()) == 2 and bool(users)
            and all(user.op_type == "MatMul" and index == 1 for user, index in users))


# Rule 5 -----------------------------------------------------------------------------------------


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


# Rule 6 -----------------------------------------------------------------------------------------


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


# Rule 7 -----------------------------------------------------------------------------------------


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
        q_heads, kv_heads = _contrib.static_dim(q, 1), _contrib.static_dim(k, 1)
    sizes = [_head_size(x, heads, rank) for x, heads in ((q, q_heads), (k, kv_heads), (v, kv_heads))]
    if q_heads is None or kv_heads is None or None in sizes or q_heads % kv_heads:
        raise UnsupportedOpError(
            node.name, op, "needs static head counts (query heads a multiple of key/value heads) "
            "and static head sizes"
        )
    head_size, key_size, value_size = sizes
    if rank == 3:
        q, k, v = (
            _contrib.split_heads(graph, tape, x, h)
            for x, h in ((q, q_heads), (k, kv_heads), (v, kv_heads))
        )
    if q_heads != kv_heads:
        k = _contrib.repeat_heads(graph, tape, k, q_heads // kv_heads, q_heads, key_size)
        v = _contrib.repeat_heads(graph, tape, v, q_heads // kv_heads, q_heads, value_size)
    scale = node.attributes.get_float("scale", 1.0 / math.sqrt(head_size))
    masks = []
    if node.attributes.get_int("is_causal", 0):  # aligned to the top left: key j <= query i
        first = rewrite.constant(graph, np.asarray(0, np.int64), "zero")
        queries, keys = (
            tape.op("Squeeze", [tape.op("Shape", [x], {"start": -2, "end": -1})]) for x in (q, k)
        )
        masks.append(("allow", _contrib.causal_mask(graph, tape, first, queries, keys)))
    if mask is not None:
        masks.append(("allow" if mask.dtype == ir.DataType.BOOL else "add", mask))
    # A fully masked row is all -inf: Softmax gives NaN there, the Attention spec gives 0.
    y = _contrib.attend(graph, tape, q, k, v, scale, node.attributes.get_float("softcap", 0.0),
                        masks, zero_nan_rows=True)
    if rank == 3:
        y = _contrib.merge_heads(graph, tape, y)
    for new_node in tape.nodes:
        scopes[new_node] = scopes.get(node, "")
    _replace(graph, node, tape, [y] + [ir.Value(name=rewrite.unique(graph, "unused")) for _ in node.outputs[1:]])
    return True


def _head_size(value: ir.Value, heads: int | None, rank: int) -> int | None:
    size = _contrib.static_dim(value, -1)
    if rank == 4 or size is None or not heads:
        return size
    return size // heads if size % heads == 0 else None


# Rule 9 -----------------------------------------------------------------------------------------


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
            if value.name in protected:
                continue
            weight = _weight_name(value) if node.op_type == "DequantizeLinear" else None
            if weight is None:  # else a weight kept as its 4-bit codes is named as a weight
                weight, value_index = f"v{value_index}", value_index + 1
            renames.append((value, weight))
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
