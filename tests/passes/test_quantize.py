"""quantize: textual before/after, the weight codes, and the quantizers on a real decoder."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from kirin_models import compiled, mlp, node_lines, run

from kirin_compiler import arithmetic as ka
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
    "%v0: ? = ai.kirin::QMatMul(%fc1.in0.q, %fc1.in0.s, %fc1.wq, %fc1.ws, _, _, _, %fc1.wz) {group=0}  # role=fc1",
    "%v1: ? = Add(%v0, %c0)",
    "%v2: ? = Relu(%v1)",
    '%fc2.in0.q: i8[*], %fc2.in0.s: f32[*] = ai.kirin::ActQuant(%v2) {axis=-1, bits=4, scale="static", signed=0}',
    "%y: f32[batch, sequence, 8] = ai.kirin::QMatMul(%fc2.in0.q, %fc2.in0.s, %fc2.wq, %fc2.ws, _, _, _, %fc2.wz) {group=0}  # role=fc2",
    "return %y",
]


def _without_inline_constants(lines):
    # The printer writes small constants inline; name them for a stable comparison.
    named = {"f32[8]{": "%fc2.ws", "i16[1, 8]{": "%fc2.wz"}
    for prefix, name in named.items():
        lines = [re.sub(re.escape(prefix) + r"[^}]*}", name, line) for line in lines]
    return lines


def dequantized(model, stem: str) -> np.ndarray:
    """``s_w * (r * Wq + z)`` of a quantized weight, from the model's initializers."""
    inits = model.graph.initializers

    def part(suffix):
        value = inits.get(f"{stem}.{suffix}")
        return None if value is None else torch.from_numpy(value.const_value.numpy().astype(np.int32))

    codes = part("wq")
    r = part("wr")
    group = 0 if r is None else codes.shape[0] // r.shape[0]
    synapses = ka.synapses(codes, r, part("wz"), group, torch.float64).numpy()
    return synapses * inits[f"{stem}.ws"].const_value.numpy()


def test_before_and_after():
    assert node_lines(compiled("canonicalize")) == BEFORE
    assert _without_inline_constants(node_lines(compiled("canonicalize,quantize"))) == AFTER


@pytest.mark.parametrize("group", [0, 4])
@pytest.mark.parametrize("asymmetric", ["false", "true"])
def test_weights_are_4_bit_codes_with_channel_scales_and_block_subscales(group, asymmetric):
    float_weight = mlp().graph.initializers["w1"].const_value.numpy()
    model = compiled(f"canonicalize,quantize{{group={group},asymmetric={asymmetric}}}")
    inits = model.graph.initializers
    codes = inits["fc1.wq"].const_value
    assert codes.dtype.name == "INT4"
    codes = codes.numpy().astype(np.int8)
    assert codes.min() >= (-8 if asymmetric == "true" else -7) and codes.max() <= 7
    assert inits["fc1.ws"].const_value.shape == (16,)  # one float scale per output channel
    if group:
        assert inits["fc1.wr"].const_value.dtype.name == "UINT8"
        assert inits["fc1.wr"].const_value.shape == (2, 16)  # an integer sub-scale per block
    else:
        assert "fc1.wr" not in inits
    assert ("fc1.wz" in inits) == (asymmetric == "true")  # integer offsets (int16)
    error = np.abs(dequantized(model, "fc1") - float_weight).max()
    assert error <= np.abs(float_weight).max() / 7  # at most a step, clipping included
    assert run(compiled(f"canonicalize,quantize{{group={group}}},outlier-detect"), "qann",
               {"x": np.ones((1, 3, 8), np.float32)})[0].shape == (1, 3, 8)


def test_a_weight_on_a_4_bit_grid_is_put_back_on_it():
    # Q4_1: blocks of 32 rows, w = d * u + m with u in 0..15 and d, m in float16
    rng = np.random.default_rng(0)
    d = rng.uniform(0.01, 0.1, (3, 1, 24)).astype(np.float16).astype(np.float32)
    m = rng.uniform(-0.8, -0.2, (3, 1, 24)).astype(np.float16).astype(np.float32)
    u = rng.integers(0, 16, (3, 32, 24))
    u[:, 0], u[:, 1] = 0, 15  # Q4_1 puts a block's extremes at codes 0 and 15
    weight = (d * u + m).reshape(96, 24)
    codes = ka.quantize_weight(weight, 4, 32, clip_search=True, asymmetric=True)
    assert np.array_equal(codes.codes.reshape(3, 32, 24), u - 8)  # the same codes
    step = codes.scale  # the sub-scales and offsets are integers in units of it
    synapses = ka.synapses(*(torch.from_numpy(a.astype(np.int32)) for a in codes[:1] + codes[2:]), 32, torch.float64)
    error = np.abs(synapses.numpy() * codes.scale - weight)
    assert (error <= 4.5 * step).all()  # |Wq| * |dr| + |dz| <= 8 * 1/2 + 1/2 steps of s
    assert step.max() <= d.max() / 255 * 1.0001  # 8-bit sub-scales: s is 1/255 of the largest d


def test_clipping_search_never_increases_the_weight_error():
    float_weight = mlp().graph.initializers["w1"].const_value.numpy()
    errors = {}
    for clip in ("false", "true"):
        model = compiled(f"canonicalize,quantize{{clip_search={clip},asymmetric=false}}")
        errors[clip] = np.square(dequantized(model, "fc1") - float_weight).sum(axis=0)
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


def test_blocks_and_gains_on_a_decoder():
    model = load_model(TINY_LLAMA)  # hidden 64: two blocks of 32 per input
    compile_model(model, "canonicalize,quantize")
    q = next(n for n in model.graph if n.name == "layers.0.q.in0")
    assert q.attributes["group"].value == 32 and q.attributes["gain_bits"].value == 4
    product = next(n for n in model.graph if n.name == "layers.0.q")
    assert product.attributes["group"].value == 32 and len(product.inputs) == 8
    assert [v.name for v in product.inputs[6:]] == ["layers.0.q.wr", "layers.0.q.wz"]
    pv = next(n for n in model.graph if n.name == "layers.0.attn-pv")
    assert "group" not in next(n for n in model.graph if n.outputs[0] is pv.inputs[0]).attributes


def test_attention_products_stay_float_on_request():
    model = load_model(TINY_LLAMA)
    compile_model(model, "canonicalize,quantize{attention=false}")
    roles = sorted(n.metadata_props["kirin.role"] for n in model.graph if n.op_type == "MatMul")
    assert roles == ["attn-pv", "attn-pv", "attn-qk", "attn-qk", "lm_head"]
    assert len([n for n in model.graph if n.op_type == "QMatMul"]) == 2 * 7


def test_lm_head_on_request():
    model = load_model(TINY_LLAMA)
    compile_model(model, "canonicalize,quantize{lm_head=true}")
    assert not [n for n in model.graph if n.op_type == "MatMul"]


@pytest.mark.parametrize("option", ["bits=9", "act_bits=1", "kv_bits=12", "subscale_bits=1"])
def test_bad_bit_widths_are_refused(option):
    with pytest.raises(KirinError, match="use 2 to 8 bits"):
        compiled(f"canonicalize,quantize{{{option}}}")


@pytest.mark.parametrize("options, refused", [
    ("act_bits=5", True),  # 15 * 15 = 225
    ("act_bits=5,gain_bits=3", False),  # 15 * 7 = 105
    ("act_bits=8,act_group=0", False),  # no gains
])
def test_codes_times_gains_must_fit_eight_bits(options, refused):
    if refused:
        with pytest.raises(KirinError, match="codes times gains reach 225, past the 8-bit codes' 127"):
            compiled(f"canonicalize,quantize{{{options}}}")
    else:
        compiled(f"canonicalize,quantize{{{options}}}")
