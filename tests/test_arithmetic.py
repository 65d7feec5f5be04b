"""Property tests of the Kirin arithmetic (hypothesis): spike times are the quantized values,
spiking products are the integer products, and every mode agrees bit for bit."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from kirin_compiler import arithmetic as ka
from kirin_compiler.backends.torch_kirin import ActQuant, SpikeMatMul, TTFSEncoder, TTFSNeuron
from kirin_compiler.execution import Probe

SETTINGS = settings(max_examples=60, deadline=None)

# Values with exact ties (k + 1/2), zeros, saturating magnitudes and ordinary floats.
halves = st.integers(-40, 40).map(lambda k: k + 0.5)
values = st.one_of(halves, st.just(0.0), st.floats(-1e4, 1e4, width=32), st.sampled_from([1e6, -1e6]))


def _tensor(draw_values: list[float]) -> torch.Tensor:
    return torch.tensor(draw_values, dtype=torch.float32)


@SETTINGS
@given(st.lists(values, min_size=1, max_size=64))
def test_round_half_away_from_zero(xs):
    r = ka.round_half_away(_tensor(xs))
    for x, got in zip(np.float32(xs).astype(np.float64), r.tolist()):
        assert got == np.sign(x) * np.floor(abs(x) + 0.5)  # exact in float64 for float32 inputs


def test_round_is_exact_just_below_one_half():
    below = np.nextafter(np.float32(0.5), np.float32(0))
    assert ka.round_half_away(torch.tensor([below, -below, 0.5, -0.5, 2.5])).tolist() == [0, 0, 1, -1, 3]


@SETTINGS
@given(st.lists(values, min_size=1, max_size=64), st.sampled_from([(4, True), (4, False), (3, True), (2, False)]))
def test_a_neurons_spike_time_is_its_quantized_value(xs, code):
    bits, signed = code
    lo, hi = ka.code_range(bits, signed)
    steps = ka.window(bits, signed)
    r = _tensor(xs)
    train, comparisons = ka.fire(r, steps, lo)
    assert train.abs().sum(dim=0).max() <= 1  # one spike per neuron at most
    assert torch.equal(ka.spike_codes(train), ka.quantize(r, torch.tensor(1.0), lo, hi))
    silent = ka.quantize(r, torch.tensor(1.0), lo, hi) == 0
    assert int(train.count_nonzero()) == int((~silent).sum())  # silence: no spike
    assert comparisons <= r.numel() * (steps - 1)


@SETTINGS
@given(
    st.integers(1, 4), st.integers(1, 3), st.integers(1, 7), st.sampled_from([0, 4]),
    st.sampled_from([(4, True), (4, False)]), st.booleans(), st.integers(0, 2**31 - 1),
)
def test_integrating_spike_trains_gives_the_integer_product(m, blocks, n, group, code, graded, seed):
    bits, signed = code
    lo, hi = ka.code_range(bits, signed)
    k = blocks * (group or 3)
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(lo, hi + 1, (m, k), generator=g).float()
    codes[0] = 0  # an all-zero token
    gains = torch.randint(1, 16, (m, k), generator=g).float() if graded else torch.ones(m, k)
    weights = torch.randint(-8, 8, (k, n), generator=g)
    block_scale = torch.randint(0, 256, (k // (group or k), n), generator=g)
    block_offset = torch.randint(-2**15 + 1, 2**15, (k // (group or k), n), generator=g)
    synapses = ka.synapses(weights, block_scale, block_offset, group)
    train = ka.encode(codes, ka.window(bits, signed)) * gains.to(torch.int8)  # graded spikes
    acc, trajectory, _, _ = ka.integrate_spikes(train, synapses, record=True)
    expected = (codes * gains).double() @ synapses.double()
    assert torch.equal(acc.double(), expected)
    assert torch.equal(acc, ka.integer_matmul(codes * gains, synapses))
    assert torch.equal(trajectory[-1], acc)
    assert not acc[0].any()


def test_integer_products_widen_past_float32s_exact_range():
    codes = torch.full((1, 2048), 127.0)
    weights = torch.full((2048, 1), 127.0)
    weights[0] = 128.0  # the sum, 127 * (127 * 2047 + 128) = 33,032,319, is odd: not a float32
    assert ka.exact_chunks(codes, ka.WeightNorms(weights)) == 2  # cut in two halves, added in int32
    total = ka.integer_matmul(codes, weights)
    assert total.dtype == torch.int32 and total.item() == 33_032_319
    # past 2^31 the parts are added in float64: 2^18 products of 127 x 128, cut in 256 parts
    codes, weights = torch.full((1, 2**18), 127.0), torch.full((2**18, 1), 128.0)
    total = ka.integer_matmul(codes, weights)
    assert total.dtype == torch.float64 and total.item() == 127 * 128 * 2**18
    # Cauchy-Schwarz: 1000 products of 127 x 127 stay below 2^24; 1040 are cut in two, 2080 in
    # four; 31 channels that cannot be cut take float64
    for depth, weight, parts in ((1000, 127, 1), (1040, 127, 2), (2080, 127, 4), (31, 2**17, None)):
        codes, weights = torch.full((3, depth), 127.0), torch.full((depth, 2), float(weight))
        assert ka.exact_chunks(codes, ka.WeightNorms(weights)) == parts


def _attributes(outliers: str, signed: bool, count: int = 2, group: int = 0, clip: float = 1.0) -> dict:
    gains = {"group": group, "gain_bits": 4} if group else {}
    return {"axis": -1, "bits": 4, "signed": int(signed), "scale": "token", "outliers": outliers,
            "outlier_count": count, "window": ka.window(4, signed), "clip": clip, **gains}


@SETTINGS
@given(
    arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 5), st.sampled_from([4, 8, 12])), elements=values),
    st.sampled_from(["none", "token", "static"]), st.booleans(), st.sampled_from([0, 4]),
    st.sampled_from([1.0, 0.8]),
)
def test_encoders_send_exactly_the_codes_of_the_integer_reference(x, outliers, signed, group, clip):
    if not signed:
        x = np.abs(x)
    x = torch.from_numpy(x)
    mask = torch.zeros(x.shape[-1], dtype=torch.bool)
    mask[0] = True
    inputs = (x, None, mask) if outliers == "static" else (x,)
    attributes = _attributes(outliers, signed, group=group, clip=clip)
    reference = ActQuant("q", attributes, "qann", Probe())(*inputs)
    spiking = TTFSEncoder("q", attributes, "snn", Probe())(*inputs)
    assert torch.equal(ka.spike_codes(spiking[0]), reference[0])
    for expected, actual in zip(reference[1:], spiking[1:]):
        assert torch.equal(expected, actual)  # scales and outlier codes
    if outliers != "none":
        codes, outlier_codes = reference[0], reference[2]
        assert not ((codes != 0) & (outlier_codes != 0)).any()


def test_a_token_of_outliers_only_sends_no_spikes():
    x = torch.tensor([[[300.0, -200.0]]])
    codes, scale, outlier_codes, outlier_scale = ActQuant("q", _attributes("token", True, 2), "qann", Probe())(x)
    assert not codes.any() and outlier_codes.tolist() == [[[127.0, -85.0]]]
    train = TTFSEncoder("q", _attributes("token", True, 2), "snn", Probe())(x)[0]
    assert not train.any()


def test_saturated_codes_fire_at_the_first_step():
    train, _ = ka.fire(torch.tensor([100.0, -100.0, 6.5, 6.49]), 8, -7)
    assert train[0].tolist() == [1, -1, 1, 0] and ka.spike_codes(train).tolist() == [7, -7, 7, 6]


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 8), st.integers(1, 6), st.integers(0, 2**31 - 1), st.booleans())
def test_fused_neurons_fire_the_next_products_codes(m, k, n, seed, with_bias):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-7, 8, (m, k), generator=g).float()
    weights = torch.randint(-7, 8, (k, n), generator=g).float()
    scale = torch.rand((m, 1), generator=g) + 0.1
    weight_scale = torch.rand(n, generator=g) + 0.1
    bias = torch.randn(n, generator=g) if with_bias else None
    out_scale = torch.tensor(0.05 + float(torch.rand(1, generator=g)))
    attributes = {"axis": -1, "group": 0, "bits": 4, "window": 16, "silent": 1, "outliers": "none"}
    spike = SpikeMatMul("s", {"group": 0}, "qann", Probe())(codes, weights)
    reference = TTFSNeuron("n", attributes, "qann", Probe())(spike, scale, weight_scale, None, None, bias, out_scale)
    train = ka.encode(codes, 8)
    membrane = SpikeMatMul("s", {"group": 0}, "snn", Probe())(train, weights)
    spiking = TTFSNeuron("n", attributes, "snn", Probe())(membrane, scale, weight_scale, None, None, bias, out_scale)
    assert torch.equal(ka.spike_codes(spiking[0]), reference[0])
    assert reference[0].min() >= 0  # negative membranes never fire: ReLU for free


def test_without_the_silent_phase_a_rising_membrane_fires_too_early():
    # Four inputs with codes 7, 5, 3, 1 (spikes at steps 1, 3, 5, 7) and unit weights: the
    # membrane rises 0, 1, 2, 4, 6, 9, 12, 16; the output step is one membrane unit.
    train = ka.encode(torch.tensor([[7.0, 5.0, 3.0, 1.0]]), 8)
    weights = torch.ones((4, 1))
    trajectory = ka.integrate_spikes(train, weights, record=True).trajectory
    assert trajectory[:, 0, 0].tolist() == [0, 1, 2, 4, 6, 9, 12, 16]
    silent, _ = ka.fire(trajectory[-1], 16, 0)
    eager, _ = ka.fire(trajectory, 16, 0, silent=False)
    assert ka.spike_codes(silent).item() == 15  # R(16) saturates at 15: fires at step 1
    assert ka.spike_codes(eager).item() == 9  # fired at step 7 on the partial sum 12 >= 8.5


@SETTINGS
@given(st.integers(2, 64), st.sampled_from([0, 4]), st.booleans(), st.integers(0, 2**31 - 1))
def test_weight_codes_scales_and_block_integers(n, group, asymmetric, seed):
    w = np.random.default_rng(seed).normal(size=(8, n)).astype(np.float32)
    w[:, 0] = 0  # a dead output channel keeps a usable scale and silent synapses
    w[4:, -1] = 0.5  # a block of one value: its value is the offset
    codes = ka.quantize_weight(w, 4, group, clip_search=True, asymmetric=asymmetric)
    assert codes.codes.min() >= (-8 if asymmetric else -7) and codes.codes.max() <= 7
    assert np.all(codes.scale > 0) and codes.scale.shape == (n,)
    assert not codes.codes[:, 0].any()
    assert (codes.block_scale is not None) == bool(group) and (codes.block_offset is not None) == asymmetric
    parts = [None if a is None else torch.from_numpy(a.astype(np.int32)) for a in codes]
    synapses = ka.synapses(parts[0], parts[2], parts[3], group, torch.float64).numpy()
    assert not synapses[:, 0].any()
    top = np.abs(w).max(axis=0)
    assert (np.abs(synapses * codes.scale - w) <= top / 7 + 1e-6).all()  # within a step of the column


def _mask(outliers: ka.Outliers, shape) -> torch.Tensor:
    """The chosen outliers as a boolean mask of the activation's ``shape``."""
    return torch.zeros(shape, dtype=torch.bool).scatter_(outliers.axis, outliers.index, outliers.chosen)


@SETTINGS
@given(arrays(np.float32, st.tuples(st.integers(1, 4), st.integers(1, 16)),
              elements=st.sampled_from([0.0, 1.0, -1.0, 2.5, -2.5, 7.0])), st.integers(0, 16))
def test_token_outliers_are_the_largest_non_zero_values_with_ties_to_the_lower_index(x, count):
    outliers = ka.token_outliers(torch.from_numpy(np.abs(x)), -1, count)
    mask = _mask(outliers, x.shape)
    assert outliers.index.shape[-1] == min(count, x.shape[-1])  # one entry per place, distinct
    assert all(len(set(row)) == len(row) for row in outliers.index.tolist())
    assert not torch.from_numpy(np.abs(x)).gather(-1, outliers.index)[~outliers.chosen].any()  # zeros
    for row, chosen, left, top in zip(np.abs(x), mask.numpy(), outliers.rest.numpy(), outliers.largest.numpy()):
        expected = np.argsort(-row, kind="stable")[: min(count, len(row))]
        expected = [i for i in expected if row[i] > 0]
        assert sorted(np.flatnonzero(chosen)) == sorted(expected)
        assert left[0] == np.where(chosen, 0, row).max(initial=0)  # the largest left out
        assert top[0] == row.max()


@SETTINGS
@given(st.integers(1, 6), st.integers(1, 40), st.integers(1, 9), st.integers(0, 2**31 - 1), st.booleans())
def test_integer_products_are_exact_in_float32_float64_and_over_used_channels(m, k, n, seed, nibbles):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-127, 128, (2, m, k), generator=g).float()
    codes[..., ::2] = 0  # sparse outlier codes: the integer path multiplies the used channels only
    weights = torch.randint(-7, 8, (k, n), generator=g, dtype=torch.int8)
    stored = weights.numpy().astype(ml_dtypes.int4) if nibbles else None
    operand = torch.from_numpy(stored.view(np.uint8)) if nibbles else weights  # INT4 bytes
    expected = codes.double() @ weights.double()
    assert torch.equal(ka.integer_matmul(codes, operand).double(), expected)
    assert torch.equal(ka.integer_matmul(codes, operand, sparse=True).double(), expected)
    wide = ka.synapses(operand, None, torch.full((1, n), 2**15 - 1, dtype=torch.int16))  # float64
    expected = codes.double() @ wide.double()
    assert torch.equal(ka.integer_matmul(codes, wide).double(), expected)
    assert torch.equal(ka.integer_matmul(codes, wide, sparse=True).double(), expected)


@SETTINGS
@given(
    arrays(np.float32, st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 24)),
           elements=st.one_of(values, st.sampled_from([3.0, -3.0]))),
    st.integers(0, 6), st.booleans(), st.sampled_from(["token", "static"]),
)
def test_outlier_codes_as_entries_are_the_masked_codes(x, count, signed, outliers):
    """The outliers' entries stand for what a mask gives: ``R(x / s_O)`` at the chosen values
    (ties to the lower index, zeros never chosen), 0 elsewhere; the spike codes are 0 there."""
    x = torch.from_numpy(x)
    static = torch.arange(x.shape[-1]) % 3 == 1 if outliers == "static" else None
    spec = ka.ActivationSpec(bits=4, signed=signed, outliers=outliers, count=count)
    split = ka.split_activation(x, spec, static_mask=static)
    codes, outlier_codes = ka.activation_codes(split, spec)
    lo, hi = ka.code_range(4, signed)
    mask = _mask(split.outliers, x.shape)
    if outliers == "static":
        assert torch.equal(mask, static.expand(x.shape))
    else:
        assert torch.equal(mask, _mask(ka.token_outliers(x if lo == 0 else x.abs(), -1, count), x.shape))
    expected = torch.where(mask, ka.round_codes(x / split.outlier_scale, lo), 0.0).clamp(-127 if lo else 0, 127)
    assert torch.equal(outlier_codes.dense(), expected)
    assert torch.equal(codes, ka.round_codes(x / split.spike_scale, lo).clamp(lo, hi).masked_fill(mask, 0.0))
    assert int(outlier_codes.count_nonzero()) == int(expected.count_nonzero())


def _entries(codes: torch.Tensor, count: int) -> ka.SparseCodes:
    """The ``count`` entries per row of a dense code tensor with at most that many non-zeros."""
    index = codes.abs().add(torch.rand(codes.shape) / 2).topk(count, dim=-1).indices  # non-zeros first
    return ka.SparseCodes(index, codes.gather(-1, index), -1, codes.shape)


@SETTINGS
@given(st.integers(1, 6), st.integers(16, 40), st.integers(1, 9), st.integers(0, 4), st.integers(0, 2**31 - 1),
       st.sampled_from(["linear", "attention", "broadcast"]), st.booleans())
def test_products_of_outlier_entries_are_the_dense_products(m, k, n, count, seed, kind, wide):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(-127, 128, (2, 3, m, k), generator=g).float()
    keep = torch.rand((2, 3, m, k), generator=g).argsort(dim=-1) < count  # at most count per row
    codes = codes * keep
    top = 2**17 if wide else 127  # wide: past float32's exact sums, so float64
    shape = {"linear": (k, n), "attention": (2, 3, k, n), "broadcast": (1, 3, k, n)}[kind]
    weights = torch.randint(-top, top + 1, shape, generator=g).float()
    expected = codes.double() @ weights.double()
    entries = _entries(codes, count)
    assert torch.equal(entries.dense(), codes)
    assert torch.equal(ka.integer_matmul(entries, weights).double(), expected)


@SETTINGS
@given(
    arrays(np.float32, st.tuples(st.integers(1, 4), st.sampled_from([8, 16, 32])), elements=values),
    st.sampled_from([1.0, 0.9]), st.sampled_from(["none", "token"]),
)
def test_block_gains_are_the_smallest_that_hold_each_block(x, clip, outliers):
    spec = ka.ActivationSpec(bits=4, signed=True, outliers=outliers, count=2, group=4, gain_bits=4, clip=clip)
    x = torch.from_numpy(x)
    split = ka.split_activation(x, spec)
    codes, outlier_codes = ka.activation_codes(split, spec)
    block_gains = split.gains.squeeze(-1)  # [..., blocks]
    assert codes.abs().max() <= 7 and block_gains.min() >= 1 and block_gains.max() <= 15
    gains = block_gains.repeat_interleave(4, dim=-1)
    assert torch.equal(ka.with_gains(torch.ones_like(x), split.gains), gains)
    mask = None if split.outliers is None else _mask(split.outliers, x.shape)
    rest = x.abs() if mask is None else x.abs().masked_fill(mask, 0)
    blocks = rest.unflatten(-1, (-1, 4)).amax(-1) * clip
    step = split.spike_scale * ka.code_range(4, True)[1]
    assert (blocks <= block_gains * step * (1 + 1e-5)).all()  # the gain holds the block
    smaller = (block_gains - 1) * step
    assert ((block_gains == 1) | (blocks > smaller * (1 - 1e-5))).all()  # and is the smallest that does
    value = ka.dequantize_activation(split, spec)
    inside = (x.abs() <= (blocks * (1 - 1e-6)).repeat_interleave(4, -1)) | (mask if mask is not None else False)
    half_step = (gains * split.spike_scale / 2) * (1 + 1e-5) + 1e-30
    outlier_step = 0 if split.outlier_scale is None else split.outlier_scale / 2 * (1 + 1e-5)
    assert ((x - value).abs() <= torch.maximum(half_step, torch.as_tensor(outlier_step)))[inside].all()


@SETTINGS
@given(st.lists(values, min_size=1, max_size=64))
def test_unsigned_rounding_agrees_with_round_half_away_after_the_clamp(xs):
    r = _tensor(xs)
    assert torch.equal(ka.round_half_up(r).clamp(0, 15), ka.round_half_away(r).clamp(0, 15))
