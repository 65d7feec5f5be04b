"""canonicalize, rule 2: onnxruntime contrib ops decomposed exactly into standard ops.

Every case is a one-node graph built here from a fixed seed. onnxruntime runs it as the
reference (CPU, graph optimizations off); after ``canonicalize`` onnxruntime and the torch
backend run the standard graph, and all three must agree to float32 rounding.
"""

from __future__ import annotations

import collections
import pathlib
import re

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import onnxruntime
import pytest

from kirin_compiler import compile_model, contrib_ops, load_model
from kirin_compiler.backends import torch_backend
from kirin_compiler.cli import main
from kirin_compiler.errors import KirinError
from kirin_compiler.passes import _contrib

MS = contrib_ops.MICROSOFT_DOMAIN
DOC = pathlib.Path(__file__).parents[2] / "docs" / "contrib_ops.md"
TOLERANCE = 1e-5
_ELEMENT = {np.dtype(np.float32): onnx.TensorProto.FLOAT, np.dtype(np.int32): onnx.TensorProto.INT32,
            np.dtype(np.int64): onnx.TensorProto.INT64}


def _session(proto: onnx.ModelProto) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(proto.SerializeToString(), options,
                                        providers=["CPUExecutionProvider"])


def _model(op, inputs, outputs, attrs, constants=(), domain=MS, opset=17, dims=None):
    """A one-node model: ``inputs`` (name -> array, None for an absent input) in order,
    those named in ``constants`` as initializers; ``dims`` renames dimensions (a symbol for
    a dynamic one)."""
    names = [name if array is not None else "" for name, array in inputs.items()]
    while names and not names[-1]:
        names.pop()
    node = oh.make_node(op, names, outputs, name="contrib", domain=domain, **attrs)
    graph_inputs, initializers = [], []
    for name, array in inputs.items():
        if array is None:
            continue
        if name in constants:
            initializers.append(onnx.numpy_helper.from_array(array, name))
        else:
            shape = [(dims or {}).get((name, axis), size) for axis, size in enumerate(array.shape)]
            graph_inputs.append(oh.make_tensor_value_info(name, _ELEMENT[array.dtype], shape))
    graph_outputs = [oh.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None)
                     for name in outputs if name]
    graph = oh.make_graph([node], "g", graph_inputs, graph_outputs, initializers)
    imports = [oh.make_opsetid("", opset), oh.make_opsetid(MS, 1)]
    return oh.make_model(graph, opset_imports=imports, ir_version=9)


def _feeds(inputs, constants=()):
    return {n: a for n, a in inputs.items() if a is not None and n not in constants}


def _canonical(proto: onnx.ModelProto) -> ir.Model:
    model = ir.serde.deserialize_model(proto)
    compile_model(model, "canonicalize")
    return model


def check(op, inputs, outputs, attrs=None, constants=(), domain=MS, opset=17, dims=None):
    """onnxruntime on the contrib op, onnxruntime and the torch backend on its decomposition."""
    proto = _model(op, inputs, outputs, attrs or {}, constants, domain, opset, dims)
    feeds = _feeds(inputs, constants)
    expected = _session(proto).run(None, feeds)
    model = _canonical(proto)
    assert not any(contrib_ops.is_contrib(node) for node in model.graph)
    assert MS not in model.opset_imports
    standard = _session(ir.serde.serialize_model(model)).run(None, feeds)
    lowered = torch_backend.run(torch_backend.lower(model, "float"), model, feeds)
    for name, reference, by_ort, by_torch in zip([o for o in outputs if o], expected, standard, lowered):
        assert by_ort.shape == reference.shape and by_torch.shape == reference.shape, name
        assert np.abs(by_ort - reference).max(initial=0) <= TOLERANCE, name
        assert np.abs(by_torch - reference).max(initial=0) <= TOLERANCE, name
    return model


def refused(op, inputs, outputs, attrs, match, constants=(), domain=MS):
    model = ir.serde.deserialize_model(_model(op, inputs, outputs, attrs, constants, domain))
    shown = re.escape(f"{domain}::{op}" if domain else op)
    with pytest.raises(KirinError, match=rf"canonicalize: node 'contrib' \({shown}\): {match}") as error:
        compile_model(model, "canonicalize")
    assert "\n" not in str(error.value)


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


# Normalizations --------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("case", ["default", "epsilon", "axis-1", "axis-minus-2"])
def test_simplified_layer_normalization(case, opset):
    rng = np.random.default_rng(0)
    x = rand(rng, 2, 3, 8, scale=2.0)
    attrs, scale = {}, rand(rng, 8)
    if case == "epsilon":
        attrs = {"epsilon": 1e-2}
    elif case == "axis-1":
        attrs, scale = {"axis": 1}, rand(rng, 3, 8)
    elif case == "axis-minus-2":
        attrs, scale = {"axis": -2, "epsilon": 1e-3}, rand(rng, 3, 8)
    check("SimplifiedLayerNormalization", {"x": x, "scale": scale}, ["y", "inv_std_var"], attrs,
          constants={"scale"}, domain="", opset=opset)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("skip_shape", [(2, 3, 8), (3, 8)])
def test_skip_simplified_layer_normalization(bias, skip_shape):
    rng = np.random.default_rng(1)
    inputs = {"x": rand(rng, 2, 3, 8), "skip": rand(rng, *skip_shape), "gamma": rand(rng, 8),
              "bias": rand(rng, 8) if bias else None}
    check("SkipSimplifiedLayerNormalization", inputs, ["y", "", "inv_std_var", "sum"],
          {"epsilon": 1e-5}, constants={"gamma", "bias"})
    check("SkipSimplifiedLayerNormalization", inputs, ["y"])  # epsilon's default, 1e-12


@pytest.mark.parametrize("beta,bias", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("skip_shape", [(2, 3, 8), (1, 3, 8)])
def test_skip_layer_normalization(beta, bias, skip_shape):
    rng = np.random.default_rng(2)
    inputs = {"x": rand(rng, 2, 3, 8), "skip": rand(rng, *skip_shape), "gamma": rand(rng, 8),
              "beta": rand(rng, 8) if beta else None, "bias": rand(rng, 8) if bias else None}
    check("SkipLayerNormalization", inputs, ["y", "mean", "inv_std_var", "sum"], {"epsilon": 1e-5})
    check("SkipLayerNormalization", inputs, ["y", "", "", "sum"], constants={"gamma", "beta", "bias"})


def test_skip_simplified_layer_normalization_refuses_its_mean_output():
    rng = np.random.default_rng(1)
    inputs = {"x": rand(rng, 2, 3, 8), "skip": rand(rng, 2, 3, 8), "gamma": rand(rng, 8)}
    refused("SkipSimplifiedLayerNormalization", inputs, ["y", "mean"], {},
            r"its output 1 \('mean'\) is used")


# Rotary embeddings -----------------------------------------------------------------------------

ROTARY_CASES = [  # (layout, interleaved, position ids, rotary_embedding_dim)
    (layout, interleaved, positions, partial)
    for layout in ("3d", "4d") for interleaved in (0, 1) for positions in ("2d", "1d")
    for partial in (False, True)
]


@pytest.mark.parametrize("layout,interleaved,positions,partial", ROTARY_CASES)
def test_rotary_embedding(layout, interleaved, positions, partial):
    rng = np.random.default_rng(3)
    batch, sequence, heads, head_size, rotary = 2, 5, 2, 8, 4 if partial else 8
    x = rand(rng, batch, sequence, heads * head_size)
    if layout == "4d":
        x = np.ascontiguousarray(x.reshape(batch, sequence, heads, head_size).transpose(0, 2, 1, 3))
    ids = (rng.integers(0, 16, (batch, sequence)) if positions == "2d" else np.array([3])).astype(np.int64)
    angles = rng.uniform(0, 6, (16, rotary // 2)).astype(np.float32)
    inputs = {"x": x, "position_ids": ids, "cos": np.cos(angles), "sin": np.sin(angles)}
    attrs = {"interleaved": interleaved}
    if partial:
        attrs.update(rotary_embedding_dim=rotary, num_heads=heads)
    elif layout == "3d" and interleaved:
        attrs["num_heads"] = heads  # and without: the head size is twice the cache's width
    check("RotaryEmbedding", inputs, ["y"], attrs, constants={"cos", "sin"})


def test_rotary_embedding_with_dynamic_batch_and_sequence():
    rng = np.random.default_rng(4)
    angles = rng.uniform(0, 6, (16, 4)).astype(np.float32)
    inputs = {"x": rand(rng, 2, 5, 16), "position_ids": rng.integers(0, 16, (2, 5)).astype(np.int64),
              "cos": np.cos(angles), "sin": np.sin(angles)}
    dims = {("x", 0): "batch", ("x", 1): "sequence", ("position_ids", 0): "batch",
            ("position_ids", 1): "sequence"}
    check("RotaryEmbedding", inputs, ["y"], {}, constants={"cos", "sin"}, dims=dims)


@pytest.mark.parametrize("attrs,match", [
    ({"is_packed_batching": 1}, "is_packed_batching=1"),
    ({"scale": 0.5}, "scale != 1"),
])
def test_rotary_embedding_refusals(attrs, match):
    rng = np.random.default_rng(4)
    inputs = {"x": rand(rng, 2, 5, 16), "position_ids": np.zeros((2, 5), np.int64),
              "cos": rand(rng, 16, 4), "sin": rand(rng, 16, 4)}
    refused("RotaryEmbedding", inputs, ["y"], attrs, match)


# GroupQueryAttention ---------------------------------------------------------------------------

GQA_CASES = {
    "prompt": dict(batch=2, sequence=5, past=None),
    "prompt-empty-past": dict(batch=2, sequence=5, past=0),
    "prompt-mha-heads": dict(batch=1, sequence=4, past=None, kv_heads=4),
    "prompt-one-kv-head": dict(batch=1, sequence=4, past=None, kv_heads=1),
    "chunk-with-past": dict(batch=1, sequence=3, past=4),
    "decode-batch": dict(batch=2, sequence=1, past=6),
    "packed": dict(batch=1, sequence=3, past=4, packed=True),
    "rotary": dict(batch=1, sequence=3, past=4, attrs=dict(do_rotary=1)),
    "rotary-interleaved": dict(batch=1, sequence=3, past=4, attrs=dict(do_rotary=1, rotary_interleaved=1)),
    "rotary-packed-prompt": dict(batch=2, sequence=5, past=0, packed=True, attrs=dict(do_rotary=1)),
    "rotary-decode": dict(batch=2, sequence=1, past=6, attrs=dict(do_rotary=1, rotary_interleaved=1)),
    "rotary-partial": dict(batch=1, sequence=3, past=4, head_size=32, rotary=16, attrs=dict(do_rotary=1)),
    "rotary-position-ids": dict(batch=1, sequence=3, past=4, position_ids=True, attrs=dict(do_rotary=1)),
    "rotary-position-ids-prompt": dict(batch=1, sequence=4, past=0, position_ids=True, attrs=dict(do_rotary=1)),
    "softcap-scale": dict(batch=1, sequence=3, past=4, attrs=dict(softcap=1.5, scale=0.2)),
    "local-window": dict(batch=1, sequence=4, past=4, attrs=dict(local_window_size=3)),
    "local-window-prompt": dict(batch=1, sequence=6, past=None, attrs=dict(local_window_size=2)),
    "attention-bias": dict(batch=1, sequence=3, past=4, bias=True, attrs=dict(softcap=2.0)),
    "not-causal": dict(batch=1, sequence=3, past=4, attrs=dict(causal=0)),
}


def _gqa_inputs(rng, batch, sequence, past, heads=4, kv_heads=2, head_size=16, packed=False,
                rotary=None, position_ids=False, bias=False, attrs=None):
    kv = kv_heads * head_size
    query = rand(rng, batch, sequence, heads * head_size)
    key, value = rand(rng, batch, sequence, kv), rand(rng, batch, sequence, kv)
    if packed:
        query, key, value = np.concatenate([query, key, value], axis=-1), None, None
    past_length = past or 0
    total = past_length + sequence
    angles = rng.uniform(0, 6, (32, (rotary or head_size) // 2)).astype(np.float32)
    inputs = {
        "query": query, "key": key, "value": value,
        "past_key": rand(rng, batch, kv_heads, past, head_size) if past is not None else None,
        "past_value": rand(rng, batch, kv_heads, past, head_size) if past is not None else None,
        "seqlens_k": np.full(batch, total - 1, np.int32),
        "total_sequence_length": np.array(total, np.int32),
        "cos_cache": np.cos(angles) if (attrs or {}).get("do_rotary") else None,
        "sin_cache": np.sin(angles) if (attrs or {}).get("do_rotary") else None,
        "position_ids": (past_length + np.arange(sequence))[None].repeat(batch, 0) * 2 + 1
        if position_ids else None,
        "attention_bias": rand(rng, batch, 1, sequence, total) if bias else None,
    }
    if inputs["position_ids"] is not None:
        inputs["position_ids"] = inputs["position_ids"].astype(np.int64)
    return inputs, {"num_heads": heads, "kv_num_heads": kv_heads, **(attrs or {})}


@pytest.mark.parametrize("case", sorted(GQA_CASES))
def test_group_query_attention(case):
    spec = dict(GQA_CASES[case])
    inputs, attrs = _gqa_inputs(np.random.default_rng(5), **spec)
    outputs = ["output", "present_key", "present_value"]
    model = check("GroupQueryAttention", inputs, outputs, attrs, constants={"cos_cache", "sin_cache"})
    _assert_two_visible_products(model)


def test_group_query_attention_with_dynamic_shapes():
    rng = np.random.default_rng(6)
    inputs, attrs = _gqa_inputs(rng, batch=1, sequence=3, past=4, attrs=dict(do_rotary=1))
    dims = {(name, 0): "batch" for name in ("query", "key", "value", "past_key", "past_value", "seqlens_k")}
    dims.update({(name, 1): "sequence" for name in ("query", "key", "value")})
    dims.update({(name, 2): "past" for name in ("past_key", "past_value")})
    model = check("GroupQueryAttention", inputs, ["output", "present_key", "present_value"], attrs,
                  constants={"cos_cache", "sin_cache"}, dims=dims)
    _assert_two_visible_products(model)


def _assert_two_visible_products(model: ir.Model) -> None:
    ops = collections.Counter(node.op_type for node in model.graph)
    assert ops["MatMul"] == 2 and ops["Softmax"] == 1
    assert [n.metadata_props.get("kirin.role") for n in model.graph if n.op_type == "MatMul"] == [
        "attn-qk", "attn-pv"
    ]


@pytest.mark.parametrize("change,match", [
    (dict(attrs=dict(smooth_softmax=1)), "smooth_softmax=1 is not supported"),
    (dict(attrs=dict(local_window_size=0)), "local_window_size=0 is not supported"),
    (dict(attrs=dict(qk_output=1)), "qk_output"),
    (dict(attrs=dict(k_quant_type="PER_TENSOR")), "a quantized key/value cache"),
    (dict(head_sink=True), "the head_sink input"),
    (dict(attrs=dict(num_heads=3)), "num_heads=3 must be a positive multiple of kv_num_heads=2"),
])
def test_group_query_attention_refusals(change, match):
    inputs, attrs = _gqa_inputs(np.random.default_rng(7), batch=1, sequence=3, past=4)
    attrs.update(change.get("attrs", {}))
    if change.get("head_sink"):
        inputs.update(cos_cache=None, sin_cache=None, position_ids=None, attention_bias=None,
                      head_sink=np.zeros(4, np.float32))
    refused("GroupQueryAttention", inputs, ["output"], attrs, match)


# MultiHeadAttention ----------------------------------------------------------------------------

MHA_CASES = {
    "self": dict(),
    "cross": dict(keys=6),
    "bias": dict(bias=True),
    "scale-value-width": dict(value_size=4, attrs=dict(scale=0.3)),
    "past": dict(past=4),
    "past-bias-unidirectional": dict(past=4, bias=True, attrs=dict(unidirectional=1)),
    "unidirectional": dict(attrs=dict(unidirectional=1)),
    "padding-lengths": dict(past=2, mask="lengths"),
    "padding-2d": dict(keys=6, mask="2d", attrs=dict(mask_filter_value=-3.0)),
    "padding-2d-unidirectional": dict(past=3, mask="2d", attrs=dict(unidirectional=1)),
    "padding-3d": dict(keys=6, mask="3d"),
    "attention-bias": dict(keys=6, attention_bias=(2, 2)),
    "attention-bias-broadcast": dict(past=2, attention_bias=(1, 1), mask="2d"),
    "heads-as-given": dict(keys=6, heads_layout=True, bias=True),
    "heads-as-given-unidirectional": dict(heads_layout=True, attrs=dict(unidirectional=1)),
}


def _mha_inputs(rng, keys=None, past=None, bias=False, value_size=8, mask=None, attention_bias=None,
                heads_layout=False, attrs=None, batch=2, sequence=4, heads=2, head_size=8):
    keys = keys or sequence
    hidden = heads * head_size
    query, key = rand(rng, batch, sequence, hidden), rand(rng, batch, keys, hidden)
    value = rand(rng, batch, keys, heads * value_size)
    total = keys + (past or 0)
    padding = None
    if mask == "lengths":
        padding = np.array([total - 2, total], np.int32)
    elif mask == "2d":
        kept = rng.random((batch, total)) > 0.3
        padding = (kept * rng.integers(1, 3, (batch, total))).astype(np.int32)  # any positive value keeps
        padding[:, 0] = 1
    elif mask == "3d":
        padding = (rng.random((batch, sequence, total)) > 0.3).astype(np.int32)
    if heads_layout:
        key = np.ascontiguousarray(key.reshape(batch, keys, heads, head_size).transpose(0, 2, 1, 3))
        value = np.ascontiguousarray(value.reshape(batch, keys, heads, value_size).transpose(0, 2, 1, 3))
    inputs = {
        "query": query, "key": key, "value": value,
        "bias": rand(rng, 2 * hidden + heads * value_size) if bias else None,
        "key_padding_mask": padding,
        "attention_bias": rand(rng, attention_bias[0] if attention_bias[0] == 1 else batch,
                               attention_bias[1] if attention_bias[1] == 1 else heads, sequence, total)
        if attention_bias else None,
        "past_key": rand(rng, batch, heads, past, head_size) if past else None,
        "past_value": rand(rng, batch, heads, past, value_size) if past else None,
    }
    return inputs, {"num_heads": heads, **(attrs or {})}


@pytest.mark.parametrize("case", sorted(MHA_CASES))
def test_multi_head_attention(case):
    spec = MHA_CASES[case]
    inputs, attrs = _mha_inputs(np.random.default_rng(8), **spec)
    dims = None  # self-attention: query and key of one (symbolic) length, as exports write them
    if "keys" not in spec:
        dims = {("query", 1): "sequence", ("key", 2 if spec.get("heads_layout") else 1): "sequence"}
    outputs = ["output", "present_key", "present_value"] if spec.get("past") else ["output"]
    model = check("MultiHeadAttention", inputs, outputs, attrs, dims=dims)
    _assert_two_visible_products(model)


@pytest.mark.parametrize("change,match", [
    (dict(keys=6, attrs=dict(unidirectional=1)), "unidirectional=1 is supported for self-attention only"),
    (dict(mask="lengths", batch=1), "a key_padding_mask of rank 1"),
])
def test_multi_head_attention_refusals(change, match):
    inputs, attrs = _mha_inputs(np.random.default_rng(9), **change)
    if change.get("mask") == "lengths":
        inputs["key_padding_mask"] = np.array([2, 1, 0, 0, 0], np.int32)  # the 3*batch+2 form
    refused("MultiHeadAttention", inputs, ["output"], attrs, match)


def test_multi_head_attention_refuses_packed_qkv():
    rng = np.random.default_rng(10)
    refused("MultiHeadAttention", {"query": rand(rng, 2, 4, 2, 3, 8)}, ["output"], {"num_heads": 2},
            "packed QKV is not supported")


# Products and activations ----------------------------------------------------------------------

FUSED_MATMUL_CASES = {
    "plain": ((2, 3, 5), (5, 6), {}),
    "transA": ((2, 5, 3), (5, 6), dict(transA=1)),
    "transB-alpha": ((2, 3, 5), (2, 6, 5), dict(transB=1, alpha=0.125)),
    "both": ((2, 1, 5, 4), (3, 6, 5), dict(transA=1, transB=1)),
    "transBatchA": ((4, 2, 3, 5), (2, 3, 5, 6), dict(transBatchA=1)),
    "transBatchA-transA": ((5, 2, 4), (2, 5, 6), dict(transBatchA=1, transA=1)),
    "transBatchB-transB": ((2, 4, 5), (6, 2, 5), dict(transBatchB=1, transB=1)),
    "vector": ((5,), (5, 6), dict(transA=1)),
}


@pytest.mark.parametrize("case", sorted(FUSED_MATMUL_CASES))
def test_fused_matmul(case):
    a_shape, b_shape, attrs = FUSED_MATMUL_CASES[case]
    rng = np.random.default_rng(11)
    check("FusedMatMul", {"A": rand(rng, *a_shape), "B": rand(rng, *b_shape)}, ["Y"], attrs)


def test_fused_matmul_with_a_weight_becomes_a_linear_layer():
    rng = np.random.default_rng(12)
    model = check("FusedMatMul", {"A": rand(rng, 2, 3, 5), "W": rand(rng, 6, 5)}, ["Y"],
                  dict(transB=1), constants={"W"})
    assert [node.op_type for node in model.graph] == ["MatMul"]  # the transposed weight folded


@pytest.mark.parametrize("alpha", [None, 1.0, -0.5])
def test_quick_gelu(alpha):
    rng = np.random.default_rng(13)
    check("QuickGelu", {"X": rand(rng, 2, 3, 8, scale=3.0)}, ["Y"], {} if alpha is None else {"alpha": alpha})


def test_bias_gelu():
    rng = np.random.default_rng(14)
    check("BiasGelu", {"A": rand(rng, 2, 3, 8, scale=3.0), "B": rand(rng, 8)}, ["C"], constants={"B"})


@pytest.mark.parametrize("bias", [False, True])
def test_fast_gelu(bias):
    rng = np.random.default_rng(15)
    inputs = {"X": rand(rng, 2, 3, 8, scale=3.0), "bias": rand(rng, 8) if bias else None}
    check("FastGelu", inputs, ["Y"])


# The tables, the document and the command line -------------------------------------------------


def test_the_accepted_ops_and_the_decompositions_agree():
    assert set(_contrib.DECOMPOSITIONS) == set(contrib_ops.CONTRIB_OPS)
    for (domain, op), reference in contrib_ops.CONTRIB_OPS.items():
        assert reference.startswith("https://github.com/microsoft/onnxruntime/blob/main/")
        if domain == MS:
            assert reference.endswith(f"ContribOperators.md#com.microsoft.{op}")
    registered = onnxruntime.capi.onnxruntime_pybind11_state.get_all_operator_schema()
    schemas = {(schema.domain, schema.name) for schema in registered}
    assert set(contrib_ops.CONTRIB_OPS) <= schemas  # each is an op onnxruntime defines there


def test_the_document_names_every_op_and_its_reference():
    text = DOC.read_text()
    sections = re.findall(r"^## (\S+)$", text, flags=re.M)
    assert sorted(sections) == sorted(op for _, op in contrib_ops.CONTRIB_OPS)
    for reference in contrib_ops.CONTRIB_OPS.values():
        assert reference in text


def test_another_custom_domain_op_is_still_refused_on_load(tmp_path):
    proto = _model("Attention", {"x": np.zeros((1, 2, 4), np.float32)}, ["y"], {"num_heads": 1})
    onnx.save(proto, tmp_path / "model.onnx")
    with pytest.raises(KirinError, match=r"\(com.microsoft::Attention\): is a custom-domain op"):
        load_model(tmp_path / "model.onnx")


def test_kirinc_run_canonicalizes_a_model_with_contrib_ops(tmp_path, capsys):
    rng = np.random.default_rng(16)
    inputs, attrs = _gqa_inputs(rng, batch=1, sequence=3, past=2, attrs=dict(do_rotary=1))
    proto = _model("GroupQueryAttention", inputs, ["output", "present_key", "present_value"], attrs,
                   constants={"cos_cache", "sin_cache"})
    onnx.save(proto, tmp_path / "model.onnx")
    feeds = _feeds(inputs, {"cos_cache", "sin_cache"})
    np.savez(tmp_path / "inputs.npz", **feeds)
    assert main(["run", str(tmp_path / "model.onnx"), "--input", str(tmp_path / "inputs.npz"),
                 "--mode", "float", "--save", str(tmp_path / "out.npz")]) == 0
    expected = _session(proto).run(None, feeds)
    with np.load(tmp_path / "out.npz") as saved:
        for name, reference in zip(["output", "present_key", "present_value"], expected):
            assert np.abs(saved[name] - reference).max() <= TOLERANCE
