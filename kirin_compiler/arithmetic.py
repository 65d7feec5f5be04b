"""The Kirin arithmetic as torch functions: the one implementation both execution modes call.

Everything here follows ``docs/arithmetic.md``. Codes and integer accumulators are held in
float32 tensors; every sum of integers is exact while it stays below 2^24, and the products
switch to float64 when a product's bound could pass it. The float parts have one fixed order of
evaluation (`rescale`, then the division by the output step that gives a neuron's normalized
membrane) that the integer reference (``qann``) and the time-stepped network (``snn``) share,
so the two modes agree bit for bit once their integers do.

Two views of the same codes:

- ``qann``: `quantize` gives the code ``q = clamp(R(x / s), lo, hi)`` directly;
- ``snn``: `fire` runs a TTFS neuron step by step against the silence-threshold schedule and
  emits a spike train (one spike per neuron at most), and `integrate_spikes` turns input spike
  trains into accumulators with additions only.

`R` is round half away from zero, computed as ``floor(r) + (r - floor(r) >= 1/2)`` on ``|r|``:
the subtraction is exact in floating point, so ``R(r) >= j`` holds exactly when ``r >= j - 1/2``,
the comparison a neuron makes (``floor(r + 1/2)`` is not exact: it rounds ``0.5 - 2^-25`` up).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

EXACT_FLOAT32 = 2**24  # integers up to this magnitude are exact in float32


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
    magnitude = r.abs()
    whole = magnitude.floor()
    # in place: the fraction, then its comparison (1.0 or 0.0), added to the whole part
    return whole.add_(magnitude.sub_(whole).ge_(0.5)).copysign_(r)


def round_half_up(r: torch.Tensor) -> torch.Tensor:
    """``floor(r) + (r - floor(r) >= 1/2)``: `round_half_away` for ``r >= 0`` in fewer passes
    (for unsigned codes; a negative ``r`` gives a value ``<= 0``, which the clamp at 0 makes 0,
    as it does `round_half_away`'s)."""
    whole = r.floor()
    return whole.add_((r - whole).ge_(0.5))


def round_codes(r: torch.Tensor, lo: int) -> torch.Tensor:
    """``R(r)`` for codes whose lowest value is ``lo``: `round_half_up` for unsigned codes
    (``lo = 0``, equal once clamped at 0), `round_half_away` otherwise."""
    return round_half_up(r) if lo == 0 else round_half_away(r)


def quantize(x: torch.Tensor, scale: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """``clamp(R(x / scale), lo, hi)``: integer codes held in ``x``'s float type."""
    return round_half_away(x / scale).clamp_(lo, hi)


def guard(scale: torch.Tensor) -> torch.Tensor:
    """A scale with zeros replaced by one: an all-zero slice keeps all-zero codes."""
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def token_outliers(
    magnitude: torch.Tensor, axis: int, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` largest of the magnitudes ``|x|`` in every slice along ``axis``, zeros
    excepted, as a boolean mask; and the largest magnitude left out (size 1 along ``axis``).

    Ties at the ``count``-th value go to the lower indices, so the choice is a function of the
    values alone (``topk`` gives the threshold value, which is unique, not the positions)."""
    width = magnitude.shape[axis]
    count = min(count, width)
    if count <= 0:
        return torch.zeros(magnitude.shape, dtype=torch.bool), magnitude.amax(dim=axis, keepdim=True)
    top = magnitude.topk(min(count + 1, width), dim=axis).values  # sorted, largest first
    threshold = top.narrow(axis, count - 1, 1).clone()
    # a zero is never an outlier: the threshold is at least the smallest positive float
    threshold.clamp_(min=torch.nextafter(torch.zeros(()), torch.ones(())).item())
    chosen = magnitude >= threshold
    if bool((chosen.sum(dim=axis) <= count).all()):  # no tie at the threshold (the common case)
        if count == width:
            return chosen, torch.zeros_like(threshold)
        # the rest's largest is the next value (zero where fewer than count were positive)
        return chosen, top.narrow(axis, count, 1)
    above = magnitude > threshold
    tied = chosen.logical_and_(above.logical_not())
    room = count - above.sum(dim=axis, keepdim=True)
    mask = above | (tied & (tied.cumsum(dim=axis) <= room))
    return mask, magnitude.masked_fill(mask, 0.0).amax(dim=axis, keepdim=True)


# Integer products and rescaling ----------------------------------------------------------------


def integer_matmul(
    codes: torch.Tensor, weights: torch.Tensor, group: int = 0, bound: float | None = None
) -> torch.Tensor:
    """``codes @ weights`` of integer codes, exactly, as float32 (float64 where ``bound``, the
    largest product of two codes, times the depth could leave float32's exact integers).

    A linear product (a two-dimensional weight, no groups) runs as an int8 x int8 product with
    int32 accumulators (`torch._int_mm`): exact, and about four times faster than float32 on
    these CPUs. With ``group > 0`` the ``K`` input channels form blocks of ``group`` rows, each
    with its own accumulator: the result has a group axis before the last, ``[..., M, K/group,
    N]``. Attention products (batched operands) multiply in float.
    """
    depth = group or codes.shape[-1]
    wide = bound is not None and bound * depth >= EXACT_FLOAT32
    kind = torch.float64 if wide else torch.float32
    if not group and weights.dim() == 2:
        rows = to_int8(codes.reshape(-1, codes.shape[-1]))
        product = torch._int_mm(rows, to_int8(weights))  # int32 sums: exact
        return product.to(kind).reshape(*codes.shape[:-1], weights.shape[-1])
    return float_matmul(widen(codes, kind), weights, group)


def float_matmul(x: torch.Tensor, weights: torch.Tensor, group: int = 0) -> torch.Tensor:
    """``x @ weights`` in ``x``'s float type, weights widened to it (with ``group``, one
    product per block of ``group`` input rows: ``[..., M, K/group, N]``)."""
    weights = widen(weights, x.dtype)
    if group:
        blocks = x.shape[-1] // group
        grouped = x.unflatten(-1, (blocks, group))  # [..., M, G, g]
        return torch.einsum("...mgk,gkn->...mgn", grouped, weights.view(blocks, group, -1))
    return x @ weights


def rescale(
    spike_acc: torch.Tensor,
    spike_scale: torch.Tensor,
    weight_scale: torch.Tensor,
    int_acc: torch.Tensor | None = None,
    int_scale: torch.Tensor | None = None,
    group: int = 0,
    reuse: bool = False,
) -> torch.Tensor:
    """``Y = s_w * (s_N * V + s_O * U)``, or with groups ``s_N * sum_g s_w[g] V[g] + s_O * ...``.

    The one order of evaluation of the float part: both modes call this on their integers.
    Accumulators widened to float64 (`integer_matmul`) are rescaled in float64, and the result
    rounded to float32 once. With ``reuse``, the accumulators' memory holds the result (the
    same operations, in place: the caller no longer needs them)."""
    if group:
        spike = spike_scale * (weight_scale * spike_acc).sum(dim=-2)
        if int_acc is not None:
            spike = spike.add_(int_scale * (weight_scale * int_acc).sum(dim=-2))
    else:
        spike = spike_acc.mul_(spike_scale) if reuse else spike_acc * spike_scale
        if int_acc is not None:
            spike = spike.add_(int_acc.mul_(int_scale) if reuse else int_acc * int_scale)
        spike = spike.mul_(weight_scale)
    return spike.float()


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
    train: torch.Tensor,
    weights: torch.Tensor,
    group: int = 0,
    bound: float | None = None,
    record: bool = False,
    count: bool = True,
) -> Integration:
    """Output neurons integrating input spike trains, step by step, with additions only.

    For ``t = 1..T``: ``V[t] = V[t-1] + I[t-1]``, then ``I[t] = I[t-1] + sum of pol_k * W[k, n]
    over inputs k spiking at t`` (one accumulate per spike and fan-out). A spike at step ``t_k``
    is counted ``T - t_k = |q_k|`` times, so ``V[T] = sum_k q_k W[k, n]``: the spike path of the
    integer product. Membrane updates are counted only when ``count`` is set.
    """
    steps = train.shape[0]
    depth = group or train.shape[-1]
    wide = bound is not None and bound * depth >= EXACT_FLOAT32
    kind = torch.float64 if wide else torch.float32
    linear = not group and weights.dim() == 2
    # once for the whole window: int8 weights for linear products (int32 currents), else floats
    weights = to_int8(weights) if linear else widen(weights, kind)
    spikes = train.reshape(steps, -1).count_nonzero(dim=1).tolist()
    shape = product_shape(train.shape[1:], weights.shape, group)
    current = torch.zeros(shape, dtype=torch.int32 if linear else kind)
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
            if linear:
                arrived = torch._int_mm(train[t].reshape(-1, train.shape[-1]), weights)
                current.add_(arrived.view(shape))
            else:
                current.add_(integer_matmul(train[t], weights, group, bound))
    trajectory = torch.stack(trajectory).to(kind) if record else None
    return Integration(membrane.to(kind), trajectory, updates, sum(spikes))


def product_shape(codes: torch.Size, weights: torch.Size, group: int) -> tuple[int, ...]:
    if group:
        return (*codes[:-1], codes[-1] // group, weights[-1])
    batch = torch.broadcast_shapes(codes[:-2], weights[:-2])
    return (*batch, codes[-2], weights[-1])


# Weights -------------------------------------------------------------------------------------------


def quantize_weight(
    weight: np.ndarray, bits: int, group: int, clip_search: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric weight codes and scales of a ``[K, N]`` weight: per output channel
    (``group = 0``, scales ``[N]``) or per block of ``group`` input rows (scales
    ``[K/group, N]``). With ``clip_search``, each scale is the one among ``c * max|W| / top``,
    ``c`` in 1.0, 0.9, ..., 0.5, with the least squared error of the dequantized weights."""
    top = 2 ** (bits - 1) - 1
    w = torch.tensor(np.asarray(weight, dtype=np.float32))
    k, n = w.shape
    blocks = w.view(k // group, group, n) if group else w.view(1, k, n)
    peak = blocks.abs().amax(dim=1, keepdim=True)  # [G, 1, N]
    best_scale = guard(peak / top)
    if clip_search:
        best_error = torch.full_like(peak, float("inf"))
        for c in np.linspace(1.0, 0.5, 6):
            scale = guard(peak * float(c) / top)
            error = ((quantize(blocks, scale, -top, top) * scale - blocks) ** 2).sum(dim=1, keepdim=True)
            better = error < best_error
            best_error = torch.where(better, error, best_error)
            best_scale = torch.where(better, scale, best_scale)
    codes = quantize(blocks, best_scale, -top, top).view(k, n)
    scales = best_scale.squeeze(1)
    return codes.to(torch.int8).numpy(), (scales if group else scales.squeeze(0)).numpy()
