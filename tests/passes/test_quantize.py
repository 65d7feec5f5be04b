"""quantize: textual before/after, the weight codes, and the quantizers on a real decoder."""

from __future__ import annotations

import numpy as np
import pytest
from kirin_models import compiled, mlp, node_lines, run

from kirin_compiler import compile_model, load_model
from kirin_compiler.errors import KirinError

from conftest import TINY_LLAMA

BEFORE = [
    "%v0: ? = MatMul(%x, %fc1.weight)  # role=fc1",
    "%v1: ? = Add(%v0, %c0)",
    "%v2: ? = Relu(%v1)",
    "%y: f32[batch, sequence, 8] = MatMul(%v2, %fc2.weight)  # role=fc2",
    "return %y",
]
AFTER = [
    '%fc1.in0.q: i8[batch, sequence, 8], %fc1.in0.s: f32[*] = ai.kirin::ActQuant(%x) {axis=-1, bits=4, scale="token", signed=1}',
    "%v0: ? = ai.kirin::QMatMul(%fc1.in0.q, %fc1.in0.s, %fc1.wq, %fc1.ws) {bound=889, group=0}  # role=fc1",
    "%v1: ? = Add(%v0, %c0)",
    "%v2: ? = Relu(%v1)",
    '%fc2.in0.q: i8[*], %fc2.in0.s: f32[*] = ai.kirin::ActQuant(%v2) {axis=-1, bits=4, scale="static", signed=0}',
    "%y: f32[batch, sequence, 8] = ai.kirin::QMatMul(%fc2.in0.q, %fc2.in0.s, %fc2.wq, %fc2.ws) {bound=889, group=0}  # role=fc2",
    "return %y",
]


def _without_inline_constants(lines):
    # The printer writes small constants inline; name them for a stable comparison.
    return [line.replace(line[line.find("f32[8]{"):line.find("}", line.find("f32[8]{")) + 1], "%fc2.ws")
            if "f32[8]{" in line else line for line in lines]


def test_before_and_after():
    assert node_lines(compiled("canonicalize")) == BEFORE
    assert _without_inline_constants(node_lines(compiled("canonicalize,quantize"))) == AFTER


@pytest.mark.parametrize("group", [0, 4])
def test_weights_are_4_bit_codes_with_channel_or_group_scales(group):
    source = mlp()
    float_weight = source.graph.initializers["w1"].const_value.numpy()
    model = compiled(f"canonicalize,quantize{{group={group}}}")
    codes = model.graph.initializers["fc1.wq"].const_value
    assert codes.dtype.name == "INT4"
    codes = codes.numpy().astype(np.int8)
    scales = model.graph.initializers["fc1.ws"].const_value.numpy()
    assert codes.min() >= -7 and codes.max() <= 7
    assert scales.shape == ((16,) if group == 0 else (2, 16))
    dequantized = codes * (scales if group == 0 else np.repeat(scales, group, axis=0))
    error = np.abs(dequantized - float_weight).max()
    assert error <= np.abs(float_weight).max() / 7  # at most a step, clipping included
    assert run(compiled(f"canonicalize,quantize{{group={group}}},outlier-detect"), "qann",
               {"x": np.ones((1, 3, 8), np.float32)})[0].shape == (1, 3, 8)


def test_clipping_search_never_increases_the_weight_error():
    float_weight = mlp().graph.initializers["w1"].const_value.numpy()
    errors = {}
    for clip in ("false", "true"):
        model = compiled(f"canonicalize,quantize{{clip_search={clip}}}")
        codes = model.graph.initializers["fc1.wq"].const_value.numpy().astype(np.float32)
        scales = model.graph.initializers["fc1.ws"].const_value.numpy()
        errors[clip] = np.square(codes * scales - float_weight).sum(axis=0)
    assert np.all(errors["true"] <= errors["false"] + 1e-6)
    assert errors["true"].sum() < errors["false"].sum()


def test_a_decoder_gets_a_quantizer_per_product_shared_by_its_readers():
    model = load_model(TINY_LLAMA)
    compile_model(model, "canonicalize,quantize")
    products = [n for n in model.graph if n.op_type == "QMatMul"]
    assert len(products) == 2 * 9  # q k v o gate up down, Q·K^T, P·V per layer; lm_head stays float
    assert [n.metadata_props["kirin.role"] for n in model.graph if n.op_type == "MatMul"] == ["lm_head"]
    quantizers = {n.outputs[0]: n for n in model.graph if n.op_type == "ActQuant"}
    readers = {}
    for product in products:
        readers.setdefault(quantizers[product.inputs[0]].name, []).append(product.metadata_props["kirin.role"])
    assert readers["layers.0.q.in0"] == ["q", "k", "v"] and readers["layers.0.gate.in0"] == ["gate", "up"]
    pv = next(n for n in products if n.name == "layers.0.attn-pv")
    left, right = (quantizers[pv.inputs[0]], quantizers[pv.inputs[2]])
    assert left.attributes["signed"].value == 0  # probabilities: unsigned codes
    assert right.attributes["axis"].value == -2 and right.attributes["scale"].value == "static"
    assert right.attributes["bits"].value == 8
    qk = next(n for n in products if n.name == "layers.0.attn-qk")
    assert quantizers[qk.inputs[2]].attributes["scale"].value == "token"  # per key token


def test_lm_head_on_request():
    model = load_model(TINY_LLAMA)
    compile_model(model, "canonicalize,quantize{lm_head=true}")
    assert not [n for n in model.graph if n.op_type == "MatMul"]


@pytest.mark.parametrize("option", ["bits=9", "act_bits=1", "kv_bits=12"])
def test_bad_bit_widths_are_refused(option):
    with pytest.raises(KirinError, match="use 2 to 8 bits"):
        compiled(f"canonicalize,quantize{{{option}}}")
