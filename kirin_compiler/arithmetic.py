"""The Kirin arithmetic as torch functions: the one implementation both execution modes call.

Everything here follows ``docs/arithmetic.md``. Codes and integer accumulators are held in
float tensors (the sum of a product's parts in int32); every sum of integers is exact while its
partial sums stay below 2^24 in float32 (or 2^53 in float64), and `integer_matmul` cuts a
product into float32 parts that provably do, or takes float64. The float parts have one fixed
order of evaluation (`rescale`, then the division by the output step that gives a neuron's
normalized membrane) that the integer reference (``qann``) and the time-stepped network
(``snn``) share, so the two modes agree bit for bit once their integers do.

Two views of the same codes:

- ``qann``: `quantize` gives the code ``q = clamp(R(x / s), lo, hi)`` directly;
- ``snn``: `fire` runs a TTFS neuron step by step against the silence-threshold schedule and
  emits a spike train (one spike per neuron at most), and `integrate_spikes` turns input spike
  trains into accumulators with additions only.

`R` is round half away from zero, computed as ``floor((floor(2|r|) + 1) / 2)`` with the sign of
``r``: doubling, flooring, adding one and halving are exact in floating point below ``2^23`` (past
it, where ``+ 1`` may round, every code saturates anyway), so ``R(r) >= j`` holds exactly when
``r >= j - 1/2``, the comparison a neuron makes (``floor(r + 1/2)`` is not exact: it rounds
``0.5 - 2^-25`` up).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import numpy as np
import torch

EXACT_FLOAT32 = 2**24  # integers up to this magnitude are exact in float32
EXACT_INT32 = 2**31 - 1  # and below this one in int32
OUTLIER_TOP = 127  # 8-bit outlier codes, [-127, 127] ([0, 127] unsigned)


def window(bits: int, signed: bool) -> int:
    """The TTFS window ``T`` of a code: ``2^(bits-1)`` steps for signed codes, ``2^bits`` for
    unsigned ones. A code's magnitude is at most ``T - 1``."""
    return 2 ** (bits - 1) if signed else 2**bits


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    """The codes of ``bits`` bits: symmetric ``[-(2^(b-1)-1), 2^(b-1)-1]`` or ``[0, 2^b-1]``."""
    top = window(bits, signed) - 1
    return (-top if signed else 0), top


def to_int8(codes: torch.Tensor) -> torch.Tensor:
    """Integer codes of at most 8 bits as ``int8`` (``uint8``: 4-bit codes as stored, see
    `widen`)."""
    if codes.dtype == torch.uint8:  # shifting the nibble up and back extends its sign
        return codes.view(torch.int8).bitwise_left_shift(4).bitwise_right_shift(4)
    return codes.to(torch.int8)


def widen(codes: torch.Tensor, kind: torch.dtype = torch.float32) -> torch.Tensor:
    """Integer codes as floats of ``kind``. ``uint8`` holds 4-bit weight codes as an INT4 tensor
    stores them, one per byte in the low nibble (two's complement), shared with the model."""
    if codes.dtype == torch.uint8:
        codes = to_int8(codes)
    return codes.to(kind)


def round_half_away(r: torch.Tensor) -> torch.Tensor:
    """``R(r) = sign(r) * floor(|r| + 1/2)``, evaluated exactly (see the module docstring)."""
    return round_half_up(r.abs(), in_place=True).copysign_(r)


def round_half_up(r: torch.Tensor, in_place: bool = False) -> torch.Tensor:
    """``floor(r + 1/2)`` as ``floor((floor(2r) + 1) / 2)``, every step exact: `round_half_away`
    for ``r >= 0`` (for unsigned codes; a negative ``r`` gives a value ``<= 0``, which the clamp
    at 0 makes 0, as it does `round_half_away`'s). ``in_place``: in ``r``'s memory."""
    doubled = r.mul_(2.0) if in_place else r * 2.0
    return doubled.floor_().add_(1.0).mul_(0.5).floor_()


def round_codes(r: torch.Tensor, lo: int, in_place: bool = False) -> torch.Tensor:
    """``R(r)`` for codes whose lowest value is ``lo``: `round_half_up` for unsigned codes
    (``lo = 0``, equal once clamped at 0), `round_half_away` otherwise. ``in_place``: the
    codes may take ``r``'s memory (the caller no longer needs ``r``)."""
    return round_half_up(r, in_place) if lo == 0 else round_half_away(r)


def quantize(x: torch.Tensor, scale: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """``clamp(R(x / scale), lo, hi)``: integer codes held in ``x``'s float type."""
    return round_half_away(x / scale).clamp_(lo, hi)


def guard(scale: torch.Tensor) -> torch.Tensor:
    """A scale with zeros replaced by one: an all-zero slice keeps all-zero codes."""
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def outlier_count(fraction: float, channels: int) -> int:
    """The outliers of a slice of ``channels`` values under a budget of ``fraction``:
    ``floor(fraction * channels)``, within the budget, but at least one for a non-zero
    fraction (so a slice of fewer than ``1 / fraction`` values still gets one)."""
    return max(1, math.floor(fraction * channels)) if fraction > 0 else 0


class Outliers(NamedTuple):
    """The outliers of every slice along ``axis``: ``count`` distinct positions per slice
    (``index``, int64, ``count`` long along ``axis``), of which those with ``chosen`` set hold an
    outlier. The others (a slice with fewer non-zero values than ``count``) point at values of
    magnitude 0, whose codes are 0 on both paths."""

    index: torch.Tensor
    chosen: torch.Tensor  # bool, the shape of index
    rest: torch.Tensor | None  # the largest magnitude left out (size 1 along the axis)
    largest: torch.Tensor | None  # the largest magnitude (size 1 along the axis)
    axis: int


def token_outliers(magnitude: torch.Tensor, axis: int, count: int) -> Outliers:
    """The ``count`` largest of the magnitudes ``|x|`` in every slice along ``axis``, zeros
    excepted; the largest magnitude left out and the largest one.

    Ties at the ``count``-th value go to the lower indices, so the choice is a function of the
    values alone (``topk`` gives the threshold value, which is unique, not the positions)."""
    width = magnitude.shape[axis]
    count = max(0, min(count, width))
    if count == 0:
        largest = magnitude.amax(dim=axis, keepdim=True)
        index = torch.zeros(_sized(magnitude.shape, axis, 0), dtype=torch.int64)
        return Outliers(index, index.bool(), largest, largest, axis)
    top = magnitude.topk(min(count + 1, width), dim=axis)  # sorted, largest first
    values, index = top.values.narrow(axis, 0, count), top.indices.narrow(axis, 0, count)
    largest = values.narrow(axis, 0, 1)
    threshold = values.narrow(axis, count - 1, 1).clone()
    # a zero is never an outlier: the threshold is at least the smallest positive float
    threshold.clamp_(min=torch.nextafter(torch.zeros(()), torch.ones(())).item())
    chosen = values >= threshold
    if count == width:
        return Outliers(index, chosen, torch.zeros_like(threshold), largest, axis)
    following = top.values.narrow(axis, count, 1)  # the largest value left out, unless it ties
    if bool((following < threshold).all()):  # no tie across the threshold (the common case)
        return Outliers(index, chosen, following, largest, axis)
    above = magnitude > threshold
    tied = (magnitude >= threshold).logical_and_(above.logical_not())
    room = count - above.sum(dim=axis, keepdim=True)
    mask = above | (tied & (tied.cumsum(dim=axis) <= room))
    rest = magnitude.masked_fill(mask, 0.0).amax(dim=axis, keepdim=True)
    # the chosen positions first, then values of magnitude 0: a slice holds enough of them
    key = torch.where(mask, 1.0, torch.where(magnitude <= 0, 0.0, -1.0))
    index = key.topk(count, dim=axis).indices
    return Outliers(index, mask.gather(axis, index), rest, largest, axis)


def static_outliers(mask: torch.Tensor, shape: Sequence[int]) -> Outliers:
    """The outliers of a static mask ``[K]`` over the last axis of an activation of ``shape``:
    the same channels in every slice (their scales come from the mask itself)."""
    channels = mask.reshape(-1).nonzero().squeeze(1)
    index = channels.expand(*shape[:-1], len(channels))
    return Outliers(index, torch.ones((), dtype=torch.bool).expand(index.shape), None, None, -1)


def _sized(shape: Sequence[int], axis: int, size: int) -> list[int]:
    """``shape`` with ``size`` at ``axis``."""
    shape = list(shape)
    shape[axis] = size
    return shape


class SparseCodes(NamedTuple):
    """Integer codes of which each slice along ``axis`` holds a few non-zero values (the
    8-bit outlier codes), as ``count`` entries per slice: distinct positions ``index`` and
    their ``values`` (0 for an entry without an outlier). The products read them as such
    (`integer_matmul`); ``dense()`` is the tensor of ``shape`` they stand for."""

    index: torch.Tensor
    values: torch.Tensor
    axis: int
    shape: torch.Size

    def dense(self) -> torch.Tensor:
        return torch.zeros(self.shape, dtype=self.values.dtype).scatter_(self.axis, self.index, self.values)

    def count_nonzero(self) -> torch.Tensor:
        return self.values.count_nonzero()


# Activations ------------------------------------------------------------------------------------


class ActivationSpec(NamedTuple):
    """How an activation quantizer codes its input (the attributes of ``ActQuant``)."""

    bits: int
    signed: bool
    axis: int = -1
    outliers: str = "none"  # "none", "token" (the count largest per slice) or "static" (a mask)
    count: int = 0
    group: int = 0  # channels per block with its own gain (0: none)
    gain_bits: int = 0  # gains 1 .. 2^gain_bits - 1
    clip: float = 1.0

    @classmethod
    def of(cls, attributes: Mapping[str, Any]) -> ActivationSpec:
        """The spec an ``ActQuant``'s attributes (name to plain value) describe."""
        a = attributes
        return cls(
            bits=a["bits"], signed=bool(a["signed"]), axis=a["axis"],
            outliers=a.get("outliers", "none"), count=a.get("outlier_count", 0),
            group=a.get("group", 0), gain_bits=a.get("gain_bits", 0), clip=a.get("clip", 1.0),
        )

    @property
    def gain_max(self) -> int:
        return 2**self.gain_bits - 1 if self.group and self.gain_bits else 1


class Split(NamedTuple):
    """An activation split into its two paths, before rounding.

    ``ratio`` is what the neurons compare and the codes round: ``x / (gain * s_N)`` on the
    spike path (at the outliers' places too; their spike codes are 0); ``outlier_ratio`` is
    ``x / s_O`` at the ``outliers``' positions (shaped as their ``index``). ``gains``
    (``[..., blocks, 1]``, integers ``1..A``, or None) multiply the spike codes into the codes
    the products read (`with_gains`)."""

    ratio: torch.Tensor
    outliers: Outliers | None
    outlier_ratio: torch.Tensor | None
    gains: torch.Tensor | None
    spike_scale: torch.Tensor
    outlier_scale: torch.Tensor | None

    def spike_ratio(self) -> torch.Tensor:
        """``ratio`` with 0 at the outliers: what the spike path's neurons fire."""
        o = self.outliers
        return self.ratio if o is None else self.ratio.scatter(o.axis, o.index, 0.0)


def split_activation(
    x: torch.Tensor,
    spec: ActivationSpec,
    spike_scale: torch.Tensor | None = None,
    static_mask: torch.Tensor | None = None,
    outlier_scale: torch.Tensor | None = None,
    chosen: Outliers | None = None,
) -> Split:
    """The math of ``ActQuant`` up to the rounding (``docs/arithmetic.md``, section 2).

    Outliers: the ``count`` largest ``|x|`` of each slice along ``axis`` (``outliers="token"``),
    or the channels of ``static_mask``; their scale is ``max |x| / 127`` of the slice (or the
    given static one). The rest is the spike matrix, whose scale is ``s_N = clip * max|rest| /
    hi`` per slice unless a static ``spike_scale`` is given. With gains (``group`` and
    ``gain_bits``), ``s_N`` is divided by ``A = 2^gain_bits - 1`` and every block of ``group``
    channels gets the smallest gain ``a`` in ``1..A`` with ``clip * max_block |rest| <= a * hi *
    s_N``: its values are coded on the step ``a * s_N``, as fine as the block needs.
    ``chosen``: the token outliers of ``x`` (`choose_outliers`), when the caller has them."""
    lo, hi = code_range(spec.bits, spec.signed)
    axis = spec.axis
    magnitude = _magnitude(x, lo)
    outliers = rest_max = largest = mask = None
    if spec.outliers == "token":
        outliers = chosen or token_outliers(magnitude, axis, spec.count)
        rest_max, largest = outliers.rest, outliers.largest
    elif spec.outliers == "static":
        mask = static_mask.expand(magnitude.shape)
        outliers = static_outliers(static_mask, magnitude.shape)
    gains = None
    if spike_scale is None:
        rest = None if rest_max is not None and spec.gain_max == 1 else _rest(magnitude, outliers, mask)
        if spec.gain_max > 1:
            blocks = rest.unflatten(-1, (-1, spec.group)).amax(dim=-1).clamp_(min=0)  # [..., G]
            spike_scale = guard(blocks.amax(dim=-1, keepdim=True) * (spec.clip / (hi * spec.gain_max)))
            gains = (blocks * spec.clip).div_(spike_scale * hi).ceil_().clamp_(1, spec.gain_max)
            gains = gains.unsqueeze(-1)  # [..., G, 1]: per block, over the block's channels
        else:
            if rest_max is None:
                rest_max = rest.amax(dim=axis, keepdim=True)
            spike_scale = guard(rest_max.clamp(min=0) * (spec.clip / hi))
    if gains is None:
        ratio = x / spike_scale
    else:  # the blocks' view: [..., G, g]
        ratio = (x.unflatten(-1, (-1, spec.group)) / (gains * spike_scale.unsqueeze(-1))).flatten(-2)
    if outliers is None:
        return Split(ratio, None, None, gains, spike_scale, None)
    if outlier_scale is None:  # a token's largest |x| is an outlier
        if largest is None:
            largest = magnitude.masked_fill(~mask, 0.0).amax(dim=axis, keepdim=True)
        outlier_scale = guard(largest.clamp(min=0) / OUTLIER_TOP)
    outlier_ratio = _at(x, outliers) / _at(outlier_scale.expand(x.shape), outliers)
    return Split(ratio, outliers, outlier_ratio, gains, spike_scale, outlier_scale)


def _at(values: torch.Tensor, outliers: Outliers) -> torch.Tensor:
    """``values`` (of the activation's shape) at the outliers' positions."""
    return values.gather(outliers.axis, outliers.index)


def _rest(magnitude: torch.Tensor, outliers: Outliers | None, mask: torch.Tensor | None) -> torch.Tensor:
    """The magnitudes of the spike path: 0 at the outliers."""
    if mask is not None:
        return magnitude.masked_fill(mask, 0.0)
    return magnitude if outliers is None else magnitude.scatter(outliers.axis, outliers.index, 0.0)


def choose_outliers(x: torch.Tensor, spec: ActivationSpec) -> Outliers:
    """The token outliers `split_activation` chooses for ``x`` under ``spec`` (they do not
    depend on its clip)."""
    return token_outliers(_magnitude(x, code_range(spec.bits, spec.signed)[0]), spec.axis, spec.count)


def _magnitude(x: torch.Tensor, lo: int) -> torch.Tensor:
    """What outliers and scales measure: ``|x|``; for unsigned codes (``lo = 0``) ``x`` itself,
    as only positive values count (negative ones get code 0)."""
    return x if lo == 0 else x.abs()


def with_gains(codes: torch.Tensor, gains: torch.Tensor | None) -> torch.Tensor:
    """``codes`` (or a spike train ``[T, ..., K]``) times their blocks' gains, in place."""
    if gains is None:
        return codes
    return codes.unflatten(-1, (gains.shape[-2], -1)).mul_(gains).flatten(-2)


def activation_codes(
    split: Split, spec: ActivationSpec, reuse: bool = False
) -> tuple[torch.Tensor, SparseCodes | None]:
    """The spike codes ``q`` (0 at outliers; before their gains) and the 8-bit outlier codes of
    a `Split` (the ``qann`` view; the ``snn`` view fires ``ratio`` instead). With ``reuse`` the
    spike codes take the split's ``ratio``'s memory (the caller no longer needs it)."""
    lo, hi = code_range(spec.bits, spec.signed)
    codes = round_codes(split.ratio, lo, in_place=reuse).clamp_(lo, hi)
    o = split.outliers
    if o is None:
        return codes, None
    values = round_codes(split.outlier_ratio, lo).clamp_(-OUTLIER_TOP if lo else 0, OUTLIER_TOP)
    values.masked_fill_(o.chosen.logical_not(), 0.0)
    return codes.scatter_(o.axis, o.index, 0.0), SparseCodes(o.index, values, o.axis, codes.shape)


def dequantize_activation(split: Split, spec: ActivationSpec) -> torch.Tensor:
    """The value the codes of a `Split` stand for: ``gain * q * s_N + qO * s_O``."""
    codes, outlier_codes = activation_codes(split, spec)
    value = with_gains(codes, split.gains).mul_(split.spike_scale)
    if outlier_codes is None:
        return value
    scale = _at(split.outlier_scale.expand(value.shape), split.outliers)
    o = split.outliers
    return value.scatter_(o.axis, o.index, outlier_codes.values * scale)  # the spike values there are 0


# Integer products and rescaling ----------------------------------------------------------------


class WeightNorms:
    """The norms of a product's right operand ``[..., K, N]`` that the exactness bounds read,
    each computed once (a constant weight keeps its object from call to call)."""

    def __init__(self, weights: torch.Tensor) -> None:
        self.weights = weights
        self._energy: dict[int, torch.Tensor] = {}
        self._largest: float | None = None

    def column_energy(self, parts: int) -> torch.Tensor:
        """The largest squared column norm in each of ``parts`` equal parts of ``K``: ``[parts]``."""
        if parts not in self._energy:
            depth, columns = self.weights.shape[-2], self.weights.shape[-1]
            squares = widen(self.weights).square().reshape(-1, parts, depth // parts, columns)
            self._energy[parts] = squares.sum(dim=2).amax(dim=(0, 2))
        return self._energy[parts]

    def largest(self) -> float:
        """The largest magnitude."""
        if self._largest is None:
            self._largest = float(widen(self.weights).abs().amax()) if self.weights.numel() else 0.0
        return self._largest


def exact_chunks(codes: torch.Tensor, norms: WeightNorms) -> int | None:
    """How many equal parts the sum over ``k`` of ``codes @ weights`` must be cut into for
    float32 to hold every partial sum of each part exactly; None when float64 is needed.

    A partial sum of ``c[m, k] * w[k, n]`` over any subset of a part is at most
    ``||c[m, part]||_2 * ||w[part, n]||_2`` in magnitude (Cauchy-Schwarz): each part's largest
    row norm times its largest column norm (from the weights' `WeightNorms`) must stay below
    2^24 (with a margin for the float32 norms). Parts are tried in powers of two, down to 16
    channels each."""
    depth = codes.shape[-1]
    if codes.numel() == 0 or norms.weights.numel() == 0:
        return 1
    rows = codes.reshape(-1, depth)
    parts = 1
    while depth % parts == 0 and depth // parts >= 16:
        row_norm = torch.linalg.vector_norm(rows.view(len(rows), parts, -1), dim=-1).amax(dim=0)
        if _fits_float32(row_norm, norms.column_energy(parts)):
            return parts
        parts *= 2
    return None


def _fits_float32(row_norm: torch.Tensor, column_energy: torch.Tensor) -> bool:
    """Whether every partial sum a row of norm ``row_norm`` makes with a column of squared
    norm ``column_energy`` stays exact in float32 (Cauchy-Schwarz, with a margin for the
    float32 norms)."""
    return float((row_norm.square() * column_energy).max()) * 1.002 < float(EXACT_FLOAT32) ** 2


def _entries_fit_float32(values: torch.Tensor, norms: WeightNorms) -> bool:
    """Whether the products of rows of a few entries ``values [rows, count]`` with the weights
    keep every partial sum exact in float32: a row's sum of magnitudes times the largest weight,
    or its norm times the largest column norm, below 2^24."""
    if float(values.abs().sum(dim=-1).amax()) * norms.largest() < EXACT_FLOAT32:
        return True
    return _fits_float32(torch.linalg.vector_norm(values, dim=-1).amax(), norms.column_energy(1))


def synapses(
    codes: torch.Tensor,
    block_scale: torch.Tensor | None = None,
    block_offset: torch.Tensor | None = None,
    group: int = 0,
    kind: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The integer synaptic weights ``w = r * Wq + z`` of a weight's codes ``Wq[K, N]`` with
    integer sub-scales ``r`` and offsets ``z`` per block of ``group`` input rows (``[K/group, N]``;
    one block of ``K`` rows when ``group`` is 0), as floats of ``kind``. Without them ``w = Wq``."""
    weights = widen(codes, kind)
    if block_scale is None and block_offset is None:
        return weights
    rows, columns = weights.shape
    blocks = weights.view(-1, group or rows, columns)  # [G, g, N]
    if block_scale is not None:
        blocks = blocks * widen(block_scale, kind).unsqueeze(1)
    if block_offset is not None:
        blocks = blocks + widen(block_offset, kind).unsqueeze(1)
    return blocks.view(rows, columns)


def integer_matmul(
    codes: torch.Tensor | SparseCodes,
    weights: torch.Tensor,
    sparse: bool = False,
    norms: WeightNorms | None = None,
) -> torch.Tensor:
    """``codes @ weights`` of integers, exactly (float products of integers are exact while
    every partial sum is, in any order): float32 products of the parts `exact_chunks` finds,
    added in int32 (in float64 past 128 parts, whose sum could pass 2^31), or one float64
    product.

    ``weights`` is a linear product's synapses (`synapses`) or an attention product's right
    operand; ``norms`` its `WeightNorms`, when the caller keeps them. Outlier codes (a few per
    row: `SparseCodes`, or a tensor with ``sparse`` set) multiply only their non-zero entries:
    a linear product as a sparse product (CSR), an attention product by gathering the rows of
    its operand that the entries select. The same integers, for less work."""
    norms = WeightNorms(weights) if norms is None else norms
    if isinstance(codes, SparseCodes):
        if codes.axis in (-1, len(codes.shape) - 1):
            return _entries_matmul(codes, weights, norms)
        codes = codes.dense()
    depth = codes.shape[-1]
    parts = exact_chunks(codes, norms)
    if parts is None:
        return widen(codes, torch.float64) @ widen(weights, torch.float64)
    codes, weights = widen(codes), widen(weights)
    if parts == 1 and sparse and weights.dim() == 2:  # a sparse product, rows of few codes
        with warnings.catch_warnings():  # "sparse CSR support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            rows = codes.reshape(-1, depth).to_sparse_csr()
            return torch.sparse.mm(rows, weights).view(*codes.shape[:-1], weights.shape[-1])
    if parts == 1:
        return codes @ weights
    # every part's sum is an integer below 2^24, so up to 128 parts add up below 2^31: int32
    # holds their sum exactly; more parts are added in float64
    kind = torch.int32 if parts * (EXACT_FLOAT32 - 1) <= EXACT_INT32 else torch.float64
    size = depth // parts
    total = (codes[..., :size] @ weights[..., :size, :]).to(kind)
    for start in range(size, depth, size):
        total.add_((codes[..., start : start + size] @ weights[..., start : start + size, :]).to(kind))
    return total


def _entries_matmul(codes: SparseCodes, weights: torch.Tensor, norms: WeightNorms) -> torch.Tensor:
    """`SparseCodes` (entries over the last axis) times ``weights [..., K, N]``, in float32
    when `_entries_fit_float32`, else float64."""
    count, columns = codes.index.shape[-1], weights.shape[-1]
    if count == 0 or codes.values.numel() == 0:
        return torch.zeros(product_shape(codes.shape, weights.shape))
    exact = _entries_fit_float32(codes.values.reshape(-1, count), norms)
    kind = torch.float32 if exact else torch.float64
    weights = widen(weights, kind)
    if weights.dim() == 2:  # a CSR matrix of the entries, its rows' columns sorted
        index, order = codes.index.reshape(-1, count).sort(dim=-1)
        values = codes.values.reshape(-1, count).gather(-1, order).to(kind)
        rows = torch.arange(len(values) + 1) * count
        with warnings.catch_warnings():  # "sparse CSR support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            shape = (len(values), len(weights))
            matrix = torch.sparse_csr_tensor(rows, index.reshape(-1), values.reshape(-1), shape)
            return torch.sparse.mm(matrix, weights).view(*codes.shape[:-1], columns)
    # an attention product: per entry, the selected rows of the operand times the entries' values
    depth, tokens = weights.shape[-2], codes.shape[-2]
    batch = torch.broadcast_shapes(codes.shape[:-2], weights.shape[:-2])
    weights = weights.expand(*batch, depth, columns).reshape(-1, columns)  # [B * K, N]
    index = codes.index.expand(*batch, tokens, count).reshape(-1, tokens, count)
    rows = index.add(depth * torch.arange(len(index)).view(-1, 1, 1)).reshape(-1, count)
    values = codes.values.to(kind).expand(*batch, tokens, count).reshape(-1, count)
    total = weights.index_select(0, rows[:, 0]).mul_(values[:, :1])
    for entry in range(1, count):
        total.add_(weights.index_select(0, rows[:, entry]).mul_(values[:, entry : entry + 1]))
    return total.view(*batch, tokens, columns)


def float_matmul(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``x @ weights`` in ``x``'s float type, weights widened to it (the ``float`` mode)."""
    return x @ widen(weights, x.dtype)


def rescale(
    spike_acc: torch.Tensor,
    spike_scale: torch.Tensor,
    weight_scale: torch.Tensor,
    int_acc: torch.Tensor | None = None,
    int_scale: torch.Tensor | None = None,
    reuse: bool = False,
) -> torch.Tensor:
    """``Y = ((s_N * V) + (s_O * U)) * s_w`` in float32, evaluated in this order.

    The one order of evaluation of the float part: both modes call this on their integers, so
    their outputs agree bit for bit once the integers do (an accumulator held in float64 or
    int32 is first rounded to float32, a function of its integer alone). With ``reuse``, the
    accumulators' memory holds the result (the same operations, in place: the caller no longer
    needs them)."""
    spike = _scaled(spike_acc, spike_scale, reuse)
    if int_acc is not None:
        spike = spike.add_(_scaled(int_acc, int_scale, reuse))
    return spike.mul_(weight_scale)


def _scaled(acc: torch.Tensor, scale: torch.Tensor, reuse: bool) -> torch.Tensor:
    """``acc * scale`` in float32; in ``acc``'s memory with ``reuse`` when it is float32."""
    if acc.dtype != torch.float32:
        return acc.float().mul_(scale)  # a new tensor anyway
    return acc.mul_(scale) if reuse else acc * scale


# The spiking view ---------------------------------------------------------------------------------


def fire(
    membrane: torch.Tensor, steps: int, lo: int, silent: bool = True, count: bool = True
) -> tuple[torch.Tensor, int]:
    """A layer of TTFS neurons over one window of ``steps`` steps; returns their spike train
    ``[steps, ...]`` (values -1, 0, +1) and the number of threshold comparisons made.

    ``membrane`` is the normalized membrane ``u / Delta``: one tensor (the value once the silent
    integration phase has ended) or, with ``silent=False``, the trajectory ``[steps, ...]`` a
    neuron sees while its inputs still arrive. At step ``t`` a neuron that has not fired yet
    compares ``|u|`` with ``theta(t) = steps - t - 1/2`` and fires on ``|u| >= theta(t)`` with the
    polarity of ``u``; with ``lo = 0`` (unsigned codes) it compares ``u`` itself, so a negative
    membrane never fires and keeps comparing (a ReLU for free).
    Step ``steps`` has no threshold: a code's magnitude is at most ``steps - 1``. Comparisons
    are counted only when ``count`` is set.
    """
    shape = membrane.shape if silent else membrane.shape[1:]
    train = torch.zeros((steps, *shape), dtype=torch.int8)
    waiting = torch.ones(shape, dtype=torch.bool)  # has not fired yet
    comparisons = 0
    for t in range(1, steps):
        if t == 1 or not silent:  # a silent neuron's membrane no longer changes
            u = membrane if silent else membrane[min(t, len(membrane)) - 1]
            if lo == 0:  # unsigned codes: only a positive membrane reaches a threshold
                magnitude, polarity = u, torch.ones(u.shape, dtype=torch.int8)
            else:
                magnitude, polarity = u.abs(), torch.sign(u).to(torch.int8)
        if count:
            comparisons += int(torch.count_nonzero(waiting))
        crossing = (magnitude >= steps - t - 0.5).logical_and_(waiting)
        train[t - 1] = polarity * crossing
        waiting.logical_and_(crossing.logical_not_())
    return train, comparisons


def spike_codes(train: torch.Tensor) -> torch.Tensor:
    """The codes a spike train carries: a spike of polarity ``p`` at step ``t`` of a window of
    ``T`` steps is ``p * (T - t)``; no spike is 0."""
    steps = train.shape[0]
    codes = torch.zeros(train.shape[1:], dtype=torch.float32)
    for t in range(1, steps):
        codes.add_(train[t - 1], alpha=steps - t)
    return codes


def encode(codes: torch.Tensor, steps: int) -> torch.Tensor:
    """The spike train of integer codes: polarity ``sign(q)`` at step ``T - |q|`` (the inverse of
    `spike_codes`; used by tests, never by the snn mode, whose spikes come from `fire`)."""
    train = torch.zeros((steps, *codes.shape), dtype=torch.int8)
    for t in range(1, steps):
        train[t - 1] = torch.where(codes.abs() == steps - t, torch.sign(codes), 0).to(torch.int8)
    return train


class Integration(NamedTuple):
    membrane: torch.Tensor  # V[T]
    trajectory: torch.Tensor | None  # V[1..T], when recorded
    updates: int  # membrane updates: neurons times steps with a non-zero current
    spikes: int  # input spikes received


def integrate_spikes(
    train: torch.Tensor, weights: torch.Tensor, record: bool = False, count: bool = True
) -> Integration:
    """Output neurons integrating input spike trains, step by step, with additions only.

    For ``t = 1..T``: ``V[t] = V[t-1] + I[t-1]``, then ``I[t] = I[t-1] + sum of p_k * W[k, n]
    over inputs k spiking at t`` (one accumulate per spike and fan-out; ``p_k`` is the spike's
    polarity, times its block's gain for graded spikes). A spike at step ``t_k`` is counted
    ``T - t_k = |q_k|`` times, so ``V[T] = sum_k p_k |q_k| W[k, n]``: the spike path of the
    integer product. ``weights`` are the product's synapses (`synapses`) or an attention
    product's right operand. Every current and membrane is a partial sum of the integer product,
    bounded as `exact_chunks` bounds its parts: float32 when one part is exact for the codes the
    train carries, float64 otherwise. Membrane updates are counted only when ``count`` is set.
    """
    steps = train.shape[0]
    kind = torch.float32 if exact_chunks(spike_codes(train), WeightNorms(weights)) == 1 else torch.float64
    weights = widen(weights, kind)  # once for the whole window
    spikes = train.reshape(steps, -1).count_nonzero(dim=1).tolist()
    shape = product_shape(train.shape[1:], weights.shape)
    current = torch.zeros(shape, dtype=kind)
    membrane = torch.zeros_like(current)
    trajectory = []
    updates = 0
    for t in range(steps):
        if t:
            membrane = membrane + current if record else membrane.add_(current)
            if count:
                updates += int(torch.count_nonzero(current))
        if record:
            trajectory.append(membrane)
        if spikes[t]:  # a step without spikes costs no accumulate
            current.add_(train[t].to(kind) @ weights)
    trajectory = torch.stack(trajectory) if record else None
    return Integration(membrane, trajectory, updates, sum(spikes))


def product_shape(codes: torch.Size, weights: torch.Size) -> tuple[int, ...]:
    batch = torch.broadcast_shapes(codes[:-2], weights[:-2])
    return (*batch, codes[-2], weights[-1])


# Weights -------------------------------------------------------------------------------------------

# The clipping search's candidates: fine near 1 (asymmetric groups rarely clip far), coarser below.
CLIP_CANDIDATES = (1.0, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5)


class WeightCodes(NamedTuple):
    """A ``[K, N]`` weight as ``W ~ scale * (block_scale * codes + block_offset)``: 4-bit codes,
    one float scale per output channel, and per block of input rows and channel an integer
    sub-scale ``r`` and an integer offset ``z`` (`synapses` makes ``r * codes + z``)."""

    codes: np.ndarray  # int8 [K, N]
    scale: np.ndarray  # float32 [N]
    block_scale: np.ndarray | None  # uint8 [K/group, N]; None: r = 1
    block_offset: np.ndarray | None  # int16 [K/group, N] (one block when group is 0); None: z = 0


OFFSET_MAX = 2**15 - 1  # block offsets are int16


def weight_code_range(bits: int, asymmetric: bool) -> tuple[int, int]:
    """Weight codes: symmetric ``[-(2^(b-1)-1), 2^(b-1)-1]``, or all ``2^b`` values of a
    two's-complement ``b``-bit integer, ``[-2^(b-1), 2^(b-1)-1]``, with an offset."""
    lo, hi = code_range(bits, signed=True)
    return (lo - 1 if asymmetric else lo), hi


def quantize_weight(
    weight: np.ndarray,
    bits: int,
    group: int,
    clip_search: bool,
    asymmetric: bool = False,
    subscale_bits: int = 8,
) -> WeightCodes:
    """The codes of a ``[K, N]`` weight, per output channel (``group = 0``) or per block of
    ``group`` input rows, in two steps.

    1. A float grid per block, ``w ~ d * q + o`` with ``q`` in `weight_code_range`. Symmetric:
       ``d = c * max|W| / top``, ``o = 0``. Asymmetric: the range ``[min W, max W]`` shrunk by
       ``c`` about its middle and cut into ``2^b - 1`` steps, ``o`` the value of code 0. With ``clip_search`` each block takes
       the ``c`` of `CLIP_CANDIDATES` with the least squared error (the largest on a tie),
       else ``c = 1``. A weight already on such a grid (a Q4_1 model: blocks of 32,
       ``w = d * u + m``) has its extremes at the grid's ends and is found again at ``c = 1``.
    2. Integers. One scale per channel, ``s = max_b d / (2^subscale_bits - 1)`` (and at least
       ``max_b |o| / OFFSET_MAX``), an integer sub-scale ``r = R(d / s)`` and offset
       ``z = R(o / s)`` per block, and the codes again on the final grid,
       ``q = clamp(R((W / s - z) / r), lo, hi)``: ``W ~ s * (r * q + z)``. A single block
       (``group = 0``) keeps ``s = d`` and ``r = 1``: symmetric per-channel weights are plain
       4-bit synapses, asymmetric ones get an integer zero point.
    """
    lo, hi = weight_code_range(bits, asymmetric)
    w = torch.tensor(np.asarray(weight, dtype=np.float32))
    k, n = w.shape
    blocks = w.view(k // group, group, n) if group else w.view(1, k, n)
    if asymmetric:
        top, bottom = blocks.amax(dim=1, keepdim=True), blocks.amin(dim=1, keepdim=True)
    else:
        top, bottom = blocks.abs().amax(dim=1, keepdim=True), None
    best = None
    for c in CLIP_CANDIDATES if clip_search else (1.0,):
        if bottom is None:
            candidate = _weight_grid(blocks, top * c, None, lo, hi)
        elif c == 1.0:  # the block's own range, exactly
            candidate = _weight_grid(blocks, top, bottom, lo, hi)
        else:  # the range shrinks about its middle: a block away from zero keeps its place
            middle, half = (top + bottom) / 2, (top - bottom) / 2
            candidate = _weight_grid(blocks, middle + half * c, middle - half * c, lo, hi)
        if best is None:
            best = candidate
            continue
        better = candidate.error < best.error
        best = _Grid(*(torch.where(better, new, old) for new, old in zip(candidate, best)))
    step, offset = best.step, best.offset  # [G, 1, N]
    scale, block_scale, block_offset = _integer_grid(step, offset if asymmetric else None, group, subscale_bits)
    target = blocks / scale - (0.0 if block_offset is None else block_offset)
    if block_scale is None:
        codes = quantize(target, torch.ones(()), lo, hi)
    else:  # a block of step 0 (one value) keeps codes 0: its value is the offset
        codes = quantize(target, guard(block_scale), lo, hi).masked_fill_(block_scale == 0, 0.0)
    return _weight_codes(codes.reshape(k, n), scale, block_scale, block_offset)


def quantization_parameter(parameter: torch.Tensor, shape: Sequence[int], axis: int, block_size: int) -> torch.Tensor:
    """A scale or zero point of ONNX ``QuantizeLinear``/``DequantizeLinear`` shaped to broadcast
    against a tensor of ``shape``: per tensor (a scalar) as it is, per ``axis`` along that axis,
    per block of ``block_size`` along it each value repeated over its block."""
    if parameter.dim() == 0 or len(shape) == 0:
        return parameter
    axis = axis % len(shape)
    if block_size:  # the parameter has the tensor's rank, ceil(size / block_size) along axis
        return parameter.repeat_interleave(block_size, dim=axis).narrow(axis, 0, shape[axis])
    view = [1] * len(shape)
    view[axis] = -1
    return parameter.reshape(view)


def dequantize(
    codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None, axis: int = 1,
    block_size: int = 0,
) -> torch.Tensor:
    """ONNX ``DequantizeLinear``: ``(codes - zero_point) * scale`` in the scale's type, the
    integers subtracted exactly in int32, as onnxruntime computes it (`quantization_parameter`)."""
    centred = codes.to(torch.int32)
    if zero_point is not None:
        centred = centred - quantization_parameter(zero_point.to(torch.int32), codes.shape, axis, block_size)
    return centred.to(scale.dtype) * quantization_parameter(scale, codes.shape, axis, block_size)


def dequantize_constants(
    codes: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int = 1, block_size: int = 0
) -> np.ndarray:
    """`dequantize` of a model's constants (4-bit codes of ml_dtypes included)."""
    zero = None if zero_point is None else torch.from_numpy(np.asarray(zero_point).astype(np.int32))
    codes_ = torch.from_numpy(np.asarray(codes).astype(np.int32))
    return dequantize(codes_, torch.from_numpy(np.array(scale)), zero, axis, block_size).numpy()


def adopt_weight_codes(
    codes: np.ndarray, step: np.ndarray, offset: np.ndarray, group: int, subscale_bits: int = 8
) -> WeightCodes:
    """A weight that comes as 4-bit codes, ``W = step * codes + offset`` per block of ``group``
    input rows (``codes`` int8 ``[K, N]`` in `weight_code_range` (4, asymmetric), ``step`` and
    ``offset`` ``[K/group, N]``; a 4-bit QDQ or MatMulNBits weight), on the integer grid of
    `quantize_weight`'s step 2 with its codes kept: only the float steps and offsets are rounded,
    to the integer sub-scales and offsets of one scale per channel."""
    k, n = codes.shape
    step_ = torch.from_numpy(np.asarray(step, dtype=np.float32)).reshape(-1, 1, n)
    offset_ = torch.from_numpy(np.asarray(offset, dtype=np.float32)).reshape(-1, 1, n)
    scale, block_scale, block_offset = _integer_grid(step_, offset_, group, subscale_bits)
    return _weight_codes(torch.from_numpy(codes.astype(np.int8)), scale, block_scale, block_offset)


def _integer_grid(step: torch.Tensor, offset: torch.Tensor | None, group: int, subscale_bits: int):
    """One scale per channel, ``s = max_b d / (2^subscale_bits - 1)`` (and at least ``max_b |o| /
    OFFSET_MAX``), an integer sub-scale ``r = R(d / s)`` and offset ``z = R(o / s)`` per block
    (``offset`` None: symmetric, no offsets; ``group`` 0: one block, ``s = d``, no sub-scales)."""
    if group:
        scale = step.amax(dim=0) / (2**subscale_bits - 1)
        if offset is not None:
            scale = torch.maximum(scale, offset.abs().amax(dim=0) / OFFSET_MAX)
        scale = guard(scale)
        block_scale = round_half_away(step / scale).clamp_(0, 2**subscale_bits - 1)
    else:
        scale, block_scale = guard(step[0]), None
    block_offset = None if offset is None else round_half_away(offset / scale).clamp_(-OFFSET_MAX, OFFSET_MAX)
    return scale, block_scale, block_offset


def _weight_codes(codes: torch.Tensor, scale, block_scale, block_offset) -> WeightCodes:
    n = codes.shape[1]
    return WeightCodes(
        codes.to(torch.int8).numpy(),
        scale.reshape(n).numpy(),
        None if block_scale is None else block_scale.squeeze(1).to(torch.uint8).numpy(),
        None if block_offset is None else block_offset.squeeze(1).to(torch.int16).numpy(),
    )


class _Grid(NamedTuple):
    error: torch.Tensor  # [G, 1, N]
    step: torch.Tensor  # [G, 1, N]; 0 for a block of one value
    offset: torch.Tensor  # [G, 1, N]; the value of code 0 (zeros when symmetric)


def _weight_grid(blocks, top, bottom, lo, hi) -> _Grid:
    """The float grid of ``blocks``: symmetric ``[-top, top]`` (``bottom`` None) or asymmetric
    ``[bottom, top]``, and the squared error of the codes on it."""
    if bottom is None:
        step = top / hi
        offset = torch.zeros_like(step)
        codes = quantize(blocks, guard(step), lo, hi)
    else:
        step = (top - bottom) / (hi - lo)
        offset = bottom - lo * step  # d * (u + lo) + offset = d * u + bottom
        codes = quantize(blocks - bottom, guard(step), 0, hi - lo) + lo
    error = ((codes * step + offset - blocks) ** 2).sum(dim=1, keepdim=True)
    return _Grid(error, step, offset)
