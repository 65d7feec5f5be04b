"""The torch backend on real decoder exports: every family, both exporters, any length."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest
from conftest import FAMILIES, token_ids

from kirin_compiler import compile_model, load_model
from kirin_compiler.backends import onnxruntime as ort_backend
from kirin_compiler.backends.torch_backend import lower, run
from kirin_compiler.errors import UnsupportedOpError

VARIANTS = [("dynamo", 18), ("dynamo", 23), ("torchscript", 17)]


def shapes_for(exporter: str, opset: int) -> list[tuple[int, int]]:
    # At opset 23 the dynamo exporter emits RotaryEmbedding, which onnxruntime 1.32 runs only
    # when the batch of its cos/sin caches equals the input's: compare at batch 1 there.
    if (exporter, opset) == ("dynamo", 23):
        return [(1, 8), (1, 13)]
    return [(1, 8), (2, 13)]


@pytest.mark.parametrize("exporter,opset", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_family_matches_onnxruntime(exported, family, exporter, opset):
    model = load_model(exported(family, exporter, opset))
    module = lower(model)
    for shape in shapes_for(exporter, opset):
        feed = {"input_ids": token_ids(shape, seed=shape[1])}
        (expected,) = ort_backend.run(model, feed)
        (logits,) = run(module, model, feed)
        assert logits.shape == expected.shape
        assert np.abs(logits - expected).max() <= 1e-5, (family, shape)


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_canonical_models_run_exactly_like_their_input(exported, family):
    model = load_model(exported(family, "dynamo", 23))
    feed = {"input_ids": token_ids((1, 11))}
    (expected,) = ort_backend.run(model, feed)
    compile_model(model, "canonicalize")
    assert not any(node.op_type == "Attention" for node in model.graph)
    (logits,) = run(lower(model), model, feed)
    assert np.abs(logits - expected).max() <= 1e-5


def test_a_model_lowered_once_runs_on_any_length(exported):
    model = load_model(exported("llama", "torchscript", 17))
    module = lower(model)
    for shape in [(1, 1), (3, 5), (1, 40)]:
        feed = {"input_ids": token_ids(shape)}
        assert run(module, model, feed)[0].shape == (*shape, 128)


def test_generated_code_reads_like_the_ir(exported):
    model = load_model(exported("llama", "dynamo", 18))
    compile_model(model, "canonicalize")
    code = lower(model).code
    assert "linear(v" in code and "self.layers_0_q_weight_t" in code
    assert "fused_attention(" in code and "onnx_softmax(" not in code
    assert "onnx_reshape(" in code or "onnx_unsqueeze(" in code
    assert "kirin_compiler_backends" not in code  # short names, not module paths


def _attention_model(mask_kind: str, extra_use: bool = False) -> ir.Model:
    """Q·K^T, scale, mask, Softmax, NaN guard, P·V: the decomposition exporters write."""
    f = onnx.TensorProto.FLOAT
    nodes = [
        oh.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        oh.make_node("MatMul", ["q", "kt"], ["qk"]),
        oh.make_node("Mul", ["qk", "scale"], ["scaled"]),
        oh.make_node("Add", ["scaled", "mask"], ["masked"]) if mask_kind == "float"
        else oh.make_node("Where", ["mask", "scaled", "minus_inf"], ["masked"]),
        oh.make_node("Softmax", ["masked"], ["p"], axis=-1),
        oh.make_node("IsNaN", ["p"], ["nan"]),
        oh.make_node("Where", ["nan", "zero", "p"], ["pg"]),
        oh.make_node("MatMul", ["pg", "v"], ["y"]),
    ]
    outputs = [oh.make_tensor_value_info("y", f, None)]
    if extra_use:
        outputs.append(oh.make_tensor_value_info("p", f, None))
    mask_type = f if mask_kind == "float" else onnx.TensorProto.BOOL
    graph = oh.make_graph(
        nodes, "g",
        [oh.make_tensor_value_info(n, f, [1, 2, 4, 8]) for n in "qkv"]
        + [oh.make_tensor_value_info("mask", mask_type, [1, 1, 4, 4])],
        outputs,
        [onnx.numpy_helper.from_array(np.array(0.35, np.float32), "scale"),
         onnx.numpy_helper.from_array(np.array(-np.inf, np.float32), "minus_inf"),
         onnx.numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
    )
    proto = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])
    return ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(proto))


@pytest.mark.parametrize("mask_kind", ["float", "bool"])
def test_decomposed_attention_runs_fused_and_exact(mask_kind):
    model = _attention_model(mask_kind)
    module = lower(model)
    assert "fused_attention(" in module.code and "onnx_softmax" not in module.code
    rng = np.random.default_rng(0)
    feed = {n: rng.standard_normal((1, 2, 4, 8)).astype(np.float32) for n in "qkv"}
    allowed = np.tril(np.ones((4, 4), bool))
    allowed[2] = False  # a fully masked row: the graph's guard makes it 0
    feed["mask"] = (allowed if mask_kind == "bool" else np.where(allowed, 0, -np.inf))[None, None]
    feed["mask"] = feed["mask"].astype(np.float32 if mask_kind == "float" else bool)
    (expected,) = ort_backend.run(model, feed)
    (actual,) = run(module, model, feed)
    assert np.all(actual[0, :, 2] == 0)
    assert np.abs(actual - expected).max() <= 1e-6


def test_attention_is_not_fused_when_an_inner_value_is_used_elsewhere():
    assert "fused_attention(" not in lower(_attention_model("float", extra_use=True)).code


def _single_node_model(node: onnx.NodeProto, opset: int = 18) -> ir.Model:
    graph = oh.make_graph(
        [node], "g", [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
    )
    imports = [oh.make_opsetid("", opset), oh.make_opsetid("com.example", 1)]
    return ir.serde.deserialize_model(oh.make_model(graph, opset_imports=imports))


def test_an_op_outside_the_table_is_one_clear_error():
    model = _single_node_model(oh.make_node("Fancy", ["x"], ["y"], domain="com.example", name="mlp/fancy"))
    with pytest.raises(UnsupportedOpError, match=r"node 'mlp/fancy' \(com.example::Fancy\): has no torch lowering"):
        lower(model)


def test_an_unsupported_attribute_is_one_clear_error():
    node = oh.make_node("Softmax", ["x"], ["y"], name="sm", axis=1, flavour=2)
    with pytest.raises(UnsupportedOpError, match=r"node 'sm' \(Softmax\): attribute 'flavour' is not supported"):
        lower(_single_node_model(node))


def test_outlier_codes_go_to_the_products_as_entries_and_give_the_dense_results():
    """Only products read the quantizers' outlier codes, so they travel as their few entries
    per token (`SparseCodes`); forced dense, the same logits come out bit for bit. A quantizer
    whose outlier codes are asked for as an output keeps them dense."""
    from conftest import TINY_LLAMA, TINY_LLAMA_IDS

    from kirin_compiler import calibration
    from kirin_compiler.backends.torch_kirin import ActQuant

    model = load_model(TINY_LLAMA)
    ids = np.load(TINY_LLAMA_IDS)
    calibration.attach(model, calibration.Calibration([{"input_ids": ids}], "test", None, progress=False))
    compile_model(model)
    feeds = {"input_ids": ids}
    for mode in ("qann", "snn"):
        module = lower(model, mode)
        quantizers = [m for m in module.modules() if isinstance(m, ActQuant) and m.spec.outliers != "none"]
        assert quantizers and all(m.sparse for m in quantizers)
        sparse = run(module, model, feeds)
        for quantizer in quantizers:
            quantizer.sparse = False
        assert all(np.array_equal(a, b) for a, b in zip(sparse, run(module, model, feeds)))
    node = next(n for n in model.graph if n.op_type == "TTFSEncoder" and len(n.outputs) > 2)
    module = lower(model, "qann", outputs=[node.outputs[2]])
    assert not getattr(module, node.name.replace(".", "_").replace("-", "_")).sparse
