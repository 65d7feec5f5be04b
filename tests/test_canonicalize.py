"""canonicalize: numerics against onnxruntime on real exports, roles, and each rewrite rule."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest
from conftest import EXPORT_LENGTH, EXPORTS, token_ids

from kirin_compiler import compile_model, format_model, load_model
from kirin_compiler.backends import onnxruntime as ort_backend
from kirin_compiler.cli import main
from kirin_compiler.errors import KirinError

LLAMA_ROLES = {"q", "k", "v", "o", "gate", "up", "down", "attn-qk", "attn-pv"}
OPT_ROLES = {"q", "k", "v", "out", "fc1", "fc2", "attn-qk", "attn-pv"}


def roles_per_layer(model: ir.Model) -> dict[int | None, collections.Counter]:
    per_layer: dict[int | None, collections.Counter] = collections.defaultdict(collections.Counter)
    for node in model.graph:
        role = node.metadata_props.get("kirin.role")
        if role is not None:
            assert node.op_type == "MatMul", node
            layer = node.metadata_props.get("kirin.layer")
            per_layer[int(layer) if layer is not None else None][role] += 1
    return per_layer


@pytest.mark.parametrize("family,exporter,opset", EXPORTS)
def test_kirinc_output_computes_the_same_logits(exported, tmp_path, family, exporter, opset):
    source = exported(family, exporter, opset)
    assert main([str(source), "-o", str(tmp_path / "out.kirin"), "-p", "canonicalize"]) == 0
    model, compiled = load_model(source), load_model(tmp_path / "out.kirin")
    # The dynamo exporter translates at opset 18 and converts down to 17 where onnx's version
    # converter can (OPT); where it cannot (Llama), the export stays at 18.
    assert model.opset_imports[""] in ({opset, 18} if exporter == "dynamo" else {opset})
    for length in (EXPORT_LENGTH, 13):
        feed = {"input_ids": token_ids((1, length))}
        (expected,), (logits,) = ort_backend.run(model, feed), ort_backend.run(compiled, feed)
        assert logits.shape == expected.shape
        assert np.abs(logits - expected).max() <= 1e-5


@pytest.mark.parametrize("family,exporter,opset", EXPORTS)
def test_every_projection_and_attention_product_has_a_role(exported, family, exporter, opset):
    model = load_model(exported(family, exporter, opset))
    compile_model(model, "canonicalize")
    expected = LLAMA_ROLES if family == "llama" else OPT_ROLES
    per_layer = roles_per_layer(model)
    assert per_layer.pop(None) == {"lm_head": 1}
    assert sorted(per_layer) == [0, 1]
    for layer, counts in per_layer.items():
        assert counts == {role: 1 for role in expected}, (layer, counts)
    for node in model.graph:  # linears are MatMul(x, W[K, N]) with a constant W
        if node.metadata_props.get("kirin.role") not in (None, "attn-qk", "attn-pv"):
            assert node.inputs[1].const_value is not None and len(node.inputs[1].shape) == 2
    assert not any(n.op_type in ("Gemm", "Attention") for n in model.graph)


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_roles_from_structure_match_roles_from_names(exported, family):
    """An export whose names and scopes say nothing gets the same roles from its structure."""
    path = exported(family, "torchscript", 17)
    named = load_model(path)
    compile_model(named, "canonicalize")
    proto = onnx.load(path)
    for index, node in enumerate(proto.graph.node):
        node.name = f"anonymous_{index}"
        del node.metadata_props[:]
    anonymous = ir.serde.deserialize_model(proto)
    compile_model(anonymous, "canonicalize")
    strip = lambda per_layer: {k: dict(v) for k, v in per_layer.items()}  # noqa: E731
    assert strip(roles_per_layer(anonymous)) == strip(roles_per_layer(named))


def _model(nodes, inputs, outputs, initializers=(), opset=23) -> ir.Model:
    graph = oh.make_graph(nodes, "g", inputs, outputs, list(initializers))
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])
    proto = onnx.shape_inference.infer_shapes(proto)
    return ir.serde.deserialize_model(proto)


def _float_input(name, shape):
    return oh.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)


def test_gemm_becomes_matmul_plus_bias():
    rng = np.random.default_rng(0)
    weight = onnx.numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), "W")
    bias = onnx.numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b")
    model = _model(
        [oh.make_node("Gemm", ["x", "W", "b"], ["y"], name="fc", transB=1, alpha=1.0, beta=0.5)],
        [_float_input("x", [3, 4])], [_float_input("y", [3, 6])], [weight, bias],
    )
    feed = {"x": rng.standard_normal((3, 4)).astype(np.float32)}
    (expected,) = ort_backend.run(model, feed)
    compile_model(model, "canonicalize")
    text = format_model(model)
    assert [n.op_type for n in model.graph] == ["MatMul", "Add"]
    assert "const %lm_head.weight: f32[4, 6]" in text  # transposed to [K, N]
    np.testing.assert_allclose(ort_backend.run(model, feed)[0], expected, atol=1e-6)


def test_weight_transpose_is_folded():
    rng = np.random.default_rng(0)
    weight = onnx.numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), "W")
    model = _model(
        [
            oh.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
            oh.make_node("MatMul", ["x", "Wt"], ["y"]),
        ],
        [_float_input("x", [2, 3, 4])], [_float_input("y", [2, 3, 6])], [weight],
    )
    feed = {"x": rng.standard_normal((2, 3, 4)).astype(np.float32)}
    (expected,) = ort_backend.run(model, feed)
    compile_model(model, "canonicalize")
    assert [n.op_type for n in model.graph] == ["MatMul"]
    assert format_model(model).splitlines()[-2:] == [
        "  %y: f32[2, 3, 6] = MatMul(%x, %lm_head.weight)  # role=lm_head",
        "  return %y",
    ]
    np.testing.assert_allclose(ort_backend.run(model, feed)[0], expected, atol=1e-6)


def test_shape_arithmetic_on_static_dimensions_is_folded():
    weight = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    model = _model(
        [
            oh.make_node("MatMul", ["x", "W"], ["y"]),
            oh.make_node("Shape", ["x"], ["shape"]),
            oh.make_node("Constant", [], ["last"], value_ints=[2]),
            oh.make_node("Gather", ["shape", "last"], ["width"], axis=0),
            oh.make_node("Constant", [], ["minus_one"], value_ints=[-1]),
            oh.make_node("Concat", ["minus_one", "width"], ["new_shape"], axis=0),
            oh.make_node("Reshape", ["y", "new_shape"], ["z"]),
        ],
        [_float_input("x", [2, 3, 4])], [_float_input("z", [6, 4])], [weight],
    )
    compile_model(model, "canonicalize")
    assert [n.op_type for n in model.graph] == ["MatMul", "Reshape"]
    assert "Reshape(%v0, i64[2]{-1, 4})" in format_model(model)


ATTENTION_CASES = {
    "gqa-causal-4d": dict(q=[2, 4, 5, 8], kv=[2, 2, 5, 8], attrs=dict(is_causal=1)),
    "bool-mask": dict(q=[1, 2, 5, 8], kv=[1, 2, 5, 8], mask=("bool", [1, 1, 5, 5])),
    "float-mask-softcap": dict(
        q=[1, 2, 5, 8], kv=[1, 2, 5, 8], mask=("float", [5, 5]), attrs=dict(softcap=2.0, scale=0.3)
    ),
    "3d-gqa": dict(q=[2, 5, 32], kv=[2, 5, 16], attrs=dict(q_num_heads=4, kv_num_heads=2)),
}


@pytest.mark.parametrize("case", sorted(ATTENTION_CASES))
def test_fused_attention_is_decomposed_exactly(case):
    spec = ATTENTION_CASES[case]
    rng = np.random.default_rng(0)
    inputs = [_float_input("Q", spec["q"]), _float_input("K", spec["kv"]), _float_input("V", spec["kv"])]
    feed = {name: rng.standard_normal(v.type.tensor_type.shape.dim.__len__() and [
        d.dim_value for d in v.type.tensor_type.shape.dim]).astype(np.float32)
        for name, v in zip("QKV", inputs)}
    names = ["Q", "K", "V"]
    if "mask" in spec:
        kind, shape = spec["mask"]
        if kind == "bool":
            inputs.append(oh.make_tensor_value_info("M", onnx.TensorProto.BOOL, shape))
            feed["M"] = np.tril(np.ones(shape, dtype=bool))
        else:
            inputs.append(_float_input("M", shape))
            feed["M"] = np.where(np.tril(np.ones(shape)) > 0, 0.0, -np.inf).astype(np.float32)
        names.append("M")
    node = oh.make_node("Attention", names, ["Y"], name="attention", **spec.get("attrs", {}))
    model = _model([node], inputs, [_float_input("Y", None)])
    (expected,) = ort_backend.run(model, feed)
    compile_model(model, "canonicalize")
    ops = collections.Counter(n.op_type for n in model.graph)
    assert ops["Attention"] == 0 and ops["MatMul"] == 2 and ops["Softmax"] == 1
    assert [n.metadata_props.get("kirin.role") for n in model.graph if n.op_type == "MatMul"] == [
        "attn-qk", "attn-pv"
    ]
    (actual,) = ort_backend.run(model, feed)
    assert np.abs(actual - expected).max() <= 1e-5


def test_attention_with_a_cache_is_refused_with_the_node_name():
    inputs = [_float_input(n, [1, 2, 4, 8]) for n in ("Q", "K", "V", "PK", "PV")]
    node = oh.make_node("Attention", ["Q", "K", "V", "", "PK", "PV"], ["Y"], name="attn_with_cache")
    model = _model([node], inputs, [_float_input("Y", None)])
    with pytest.raises(KirinError, match=r"canonicalize: node 'attn_with_cache' \(Attention\)"):
        compile_model(model, "canonicalize")


def test_canonicalize_is_idempotent(exported):
    model = load_model(exported("llama", "dynamo", 20))
    assert compile_model(model, "canonicalize")[0].modified
    first = format_model(model)
    assert not compile_model(model, "canonicalize")[0].modified
    assert format_model(model) == first.replace(
        'meta kirin.pipeline = "canonicalize"', 'meta kirin.pipeline = "canonicalize,canonicalize"'
    )
