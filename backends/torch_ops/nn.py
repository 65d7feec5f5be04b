"""Products, reductions, normalizations and attention.

Reductions take their axes from the ``axes`` input (opset 18 on; ``ReduceSum`` from 13) or the
``axes`` attribute (the versions before), so opset-17 models lower too. Normalizations with a
``stash_type`` compute their first stage (the statistics) in it, and are one fused torch call
when the input already has that type. ``Attention`` is the ONNX pattern written out (matmul, softcap, bias,
softmax, matmul), not a fused kernel: the function cannot tell whether the graph reads its
``qk_matmul_output``, which a fused kernel never materializes.
"""

from __future__ import annotations

import functools
import math
import operator
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from kirin_compiler.backends.torch_ops._table import OpTable, ints, torch_dtype
from kirin_compiler.backends.torch_ops._table import axis as onnx_axis

table = OpTable()

IntList = torch.Tensor | Sequence[int]


# Products ---------------------------------------------------------------------------------------

# ONNX MatMul is numpy's matmul, which torch.matmul is: the table holds the torch function itself.
table.op("MatMul")(torch.matmul)


@table.op("Gemm")
def gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    c: torch.Tensor | None = None,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    transA: int = 0,
    transB: int = 0,
) -> torch.Tensor:
    """Y = alpha · A' · B' + beta · C, with A' = Aᵀ when transA (B' likewise)."""
    a = a.t() if transA else a
    b = b.t() if transB else b
    if c is None:
        y = torch.matmul(a, b)
        return y if alpha == 1.0 else (y * alpha).to(y.dtype)  # integers: the reference truncates
    return torch.addmm(c, a, b, beta=beta, alpha=alpha)  # C broadcasts to (M, N); beta 0 ignores it


@table.op("MatMulInteger")
def matmul_integer(
    a: torch.Tensor,
    b: torch.Tensor,
    a_zero_point: torch.Tensor | None = None,
    b_zero_point: torch.Tensor | None = None,
) -> torch.Tensor:
    """Y = (A − a_zero_point) · (B − b_zero_point), accumulated in int32."""
    a = a.to(torch.int32)
    b = b.to(torch.int32)
    if a_zero_point is not None:
        # A vector zero point of A holds one value per row (M), not per column.
        a = a - (a_zero_point.reshape(-1, 1) if a_zero_point.dim() == 1 else a_zero_point)
    if b_zero_point is not None:
        b = b - b_zero_point  # per column (N): broadcasts along the last axis as given
    return torch.matmul(a, b)  # torch multiplies integer matrices on the CPU only


@table.op("Einsum")
def einsum(*inputs: torch.Tensor, equation: str) -> torch.Tensor:
    return torch.einsum(equation, *inputs).to(inputs[0].dtype)  # torch sums integers in int64


# Softmax and friends ----------------------------------------------------------------------------


@table.op("Softmax")
def softmax(x: torch.Tensor, *, axis: int = -1) -> torch.Tensor:
    return torch.softmax(x, dim=axis)


@table.op("LogSoftmax")
def log_softmax(x: torch.Tensor, *, axis: int = -1) -> torch.Tensor:
    return torch.log_softmax(x, dim=axis)


@table.op("Hardmax")
def hardmax(x: torch.Tensor, *, axis: int = -1) -> torch.Tensor:
    """1 at the first maximum along ``axis``, 0 elsewhere."""
    if x.numel() == 0:
        return x  # argmax has nothing to reduce
    return torch.zeros_like(x).scatter_(axis, torch.argmax(x, dim=axis, keepdim=True), 1)


@table.op("Dropout", multi_output=True)
def dropout(
    data: torch.Tensor,
    ratio_input: torch.Tensor | None = None,
    training_mode: torch.Tensor | None = None,
    *,
    seed: int | None = None,
    ratio: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference: (X, all true). Training: (X · mask / (1 − ratio), mask), mask true with
    probability 1 − ratio."""
    del ratio  # Dropout-10's attribute: that version only runs inference
    drop = 0.0
    if training_mode is not None and bool(training_mode):
        drop = 0.5 if ratio_input is None else float(ratio_input)
    if drop == 0.0:
        # A broadcast view: an unused mask costs no memory.
        return data, torch.ones((), dtype=torch.bool, device=data.device).expand(data.shape)
    generator = None if seed is None else torch.Generator(data.device).manual_seed(seed)
    keep = torch.rand(data.shape, generator=generator, device=data.device) >= drop
    return data * keep * (1.0 / (1.0 - drop)), keep


# Reductions -------------------------------------------------------------------------------------


def _reduce_axes(
    data: torch.Tensor,
    axes_input: IntList | None,
    axes: Sequence[int] | None,
    noop_with_empty_axes: int,
) -> list[int] | None:
    """The axes to reduce, from the input or (before opset 18) the attribute; None means none at
    all (the noop case)."""
    listed = ints(axes_input) if axes_input is not None else list(axes or [])
    if not listed:
        return None if noop_with_empty_axes else list(range(data.dim()))
    return [onnx_axis(a, data.dim()) for a in listed]


def _filled(
    data: torch.Tensor, dims: list[int], keepdims: int, value: float | int | bool
) -> torch.Tensor:
    """The result of reducing ``dims`` of an empty tensor: ``value`` everywhere."""
    shape = [1 if i in dims else n for i, n in enumerate(data.shape) if keepdims or i not in dims]
    return torch.full(shape, value, dtype=data.dtype, device=data.device)


def _extreme(dtype: torch.dtype, lowest: bool) -> float | int | bool:
    """The identity of max (lowest) or of min: ∓inf, an integer type's bound, False or True."""
    if dtype == torch.bool:
        return not lowest
    if dtype.is_floating_point:
        return -math.inf if lowest else math.inf
    return torch.iinfo(dtype).min if lowest else torch.iinfo(dtype).max


def _reduction(name: str, on_noop: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> Callable:
    """Registers ``reduce(data, dims, keepdim)`` as the ONNX reduction ``name``, with the
    operator's signature: axes from the input or (before opset 18) the attribute, ``keepdims``,
    and ``noop_with_empty_axes``, where only the elementwise part (``on_noop``) applies."""

    def register(reduce: Callable) -> Callable:
        def reduction(
            data: torch.Tensor,
            axes_input: IntList | None = None,
            *,
            axes: Sequence[int] | None = None,
            keepdims: int = 1,
            noop_with_empty_axes: int = 0,
        ) -> torch.Tensor:
            dims = _reduce_axes(data, axes_input, axes, noop_with_empty_axes)
            return on_noop(data) if dims is None else reduce(data, dims, bool(keepdims))

        functools.update_wrapper(reduction, reduce)
        del reduction.__wrapped__  # the signature is the wrapper's (its attributes are read)
        return table.op(name, static_inputs=(1,))(reduction)

    return register


@_reduction("ReduceMax")
def reduce_max(data: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
    if data.numel() == 0:
        return _filled(data, dims, keepdim, _extreme(data.dtype, lowest=True))
    return torch.amax(data, dim=dims, keepdim=keepdim)


@_reduction("ReduceMin")
def reduce_min(data: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
    if data.numel() == 0:
        return _filled(data, dims, keepdim, _extreme(data.dtype, lowest=False))
    return torch.amin(data, dim=dims, keepdim=keepdim)


@_reduction("ReduceSum")
def reduce_sum(data: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
    return torch.sum(data, dim=dims, keepdim=keepdim, dtype=data.dtype)  # ints stay ints


@_reduction("ReduceMean")
def reduce_mean(data: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
    if data.dtype.is_floating_point:
        return torch.mean(data, dim=dims, keepdim=keepdim)
    # An integer mean is the sum divided by the count, truncated, as numpy casts it; the mean of
    # an empty set is undefined, and 0 here rather than a division by zero.
    total = torch.sum(data, dim=dims, keepdim=keepdim, dtype=data.dtype)
    count = math.prod(data.shape[d] for d in dims)
    return torch.div(total, max(count, 1), rounding_mode="trunc")


@_reduction("ReduceProd")
def reduce_prod(data: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
    # torch.prod reduces one axis at a time; from the last, so the others keep their index.
    for dim in sorted(dims, reverse=True):
        data = torch.prod(data, dim=dim, keepdim=keepdim, dtype=data.dtype)
    return data


@_reduction("ReduceL1", on_noop=torch.abs)
def reduce_l1(data: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
    """sum(|X|); the noop case still takes |X|."""
    return torch.sum(torch.abs(data), dim=dims, keepdim=keepdim, dtype=data.dtype)


@_reduction("ReduceL2", on_noop=torch.abs)
def reduce_l2(data: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
    """sqrt(sum(X²)); the noop case still takes sqrt(X²) = |X|."""
    if data.dtype.is_floating_point:
        return torch.linalg.vector_norm(data, 2, dim=dims, keepdim=keepdim)
    # Integers: the root in float64, truncated back, as the reference does.
    return torch.linalg.vector_norm(data.double(), 2, dim=dims, keepdim=keepdim).to(data.dtype)


@_reduction("ReduceSumSquare", on_noop=torch.square)
def reduce_sum_square(data: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
    """sum(X²); the noop case still takes X²."""
    return torch.sum(torch.square(data), dim=dims, keepdim=keepdim, dtype=data.dtype)


@_reduction("ReduceLogSum", on_noop=torch.log)
def reduce_log_sum(data: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
    """log(sum(X)); the noop case still takes log(X); an empty sum gives -inf."""
    return torch.log(torch.sum(data, dim=dims, keepdim=keepdim))


@_reduction("ReduceLogSumExp")
def reduce_log_sum_exp(data: torch.Tensor, dims: list[int], keepdim: bool) -> torch.Tensor:
    """log(sum(exp(X))); the noop case is log(exp(X)) = X; an empty sum gives -inf."""
    return torch.logsumexp(data, dim=dims, keepdim=keepdim)


# Normalizations ---------------------------------------------------------------------------------


@table.op("LayerNormalization", multi_output=True)
def layer_normalization(
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    axis: int = -1,
    epsilon: float = 1e-5,
    stash_type: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Y = (X − mean) / sqrt(var + epsilon) · Scale + B over the axes from ``axis`` on, with Mean
    and InvStdDev (shape ``X.shape[:axis] + [1, ...]``, type ``stash_type``)."""
    shape = x.shape[onnx_axis(axis, x.dim()):]
    stash = torch_dtype(stash_type)
    fused = scale.shape == shape and (bias is None or bias.shape == shape)
    if x.dtype == stash and fused:
        return torch.native_layer_norm(x, shape, scale, bias, epsilon)
    # The first stage in the stash type, the affine one in X's type, as the spec splits them.
    normalized, mean, inv_std = torch.native_layer_norm(x.to(stash), shape, None, None, epsilon)
    y = normalized.to(x.dtype) * scale
    return (y if bias is None else y + bias), mean, inv_std


@table.op("RMSNormalization")
def rms_normalization(
    x: torch.Tensor,
    scale: torch.Tensor,
    *,
    axis: int = -1,
    epsilon: float = 1e-5,
    stash_type: int = 1,
) -> torch.Tensor:
    """Y = X / sqrt(mean(X²) + epsilon) · Scale over the axes from ``axis`` on."""
    shape = x.shape[onnx_axis(axis, x.dim()):]
    stash = torch_dtype(stash_type)
    if x.dtype == stash and scale.shape == shape:
        return F.rms_norm(x, shape, scale, epsilon)
    return F.rms_norm(x.to(stash), shape, None, epsilon).to(x.dtype) * scale


@table.op("GroupNormalization")
def group_normalization(
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    *,
    num_groups: int,
    epsilon: float = 1e-5,
    stash_type: int = 1,
) -> torch.Tensor:
    """Y = (X − mean) / sqrt(var + epsilon) · scale + bias, statistics per sample and group of
    channels, scale and bias per channel."""
    stash = torch_dtype(stash_type)
    if x.dtype == stash:
        return F.group_norm(x, num_groups, scale, bias, epsilon)
    normalized = F.group_norm(x.to(stash), num_groups, None, None, epsilon).to(x.dtype)
    per_channel = (-1,) + (1,) * (x.dim() - 2)
    return normalized * scale.reshape(per_channel) + bias.reshape(per_channel)


@table.op("InstanceNormalization")
def instance_normalization(
    x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, *, epsilon: float = 1e-5
) -> torch.Tensor:
    """Y = (X − mean) / sqrt(var + epsilon) · scale + bias, statistics per sample and channel."""
    return F.instance_norm(x, weight=scale, bias=bias, eps=epsilon)


@table.op("MeanVarianceNormalization")
def mean_variance_normalization(
    x: torch.Tensor, *, axes: Sequence[int] = (0, 2, 3)
) -> torch.Tensor:
    """Y = (X − mean) / (sqrt(var) + 1e-9) over ``axes``."""
    var, mean = torch.var_mean(x, dim=list(axes), correction=0, keepdim=True)
    return (x - mean) / (torch.sqrt(var) + 1e-9)


# Attention --------------------------------------------------------------------------------------


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as an attention bias: 0 where allowed, -inf elsewhere."""
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return bias.masked_fill_(allowed.logical_not(), -math.inf)


def _attention_bias(
    attn_mask: torch.Tensor | None,
    q_len: int,
    kv_len: int,
    offset: int | torch.Tensor,
    nonpad_kv_seqlen: torch.Tensor | None,
    causal: bool,
    left_window_size: int,
    right_window_size: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor | None:
    """The bias added to the attention scores, broadcastable to (batch, heads, q_len, kv_len):
    the mask (a boolean one as 0/-inf, padded with -inf up to kv_len) plus -inf where the causal,
    window or padding rules exclude a key; None when there is none."""
    bias = None
    if attn_mask is not None:
        bias = _additive(attn_mask, dtype) if attn_mask.dtype == torch.bool else attn_mask.to(dtype)
        if bias.shape[-1] < kv_len:
            bias = F.pad(bias, (0, kv_len - bias.shape[-1]), value=-math.inf)
    rules = []
    if causal or left_window_size >= 0 or right_window_size >= 0:
        # How far key j lies behind query i, the queries coming after ``offset`` earlier keys.
        queries = torch.arange(q_len, device=device)[:, None] + offset
        behind = queries - torch.arange(kv_len, device=device)
        if causal:
            rules.append(behind >= 0)
        if left_window_size >= 0:
            rules.append(behind <= left_window_size)
        if right_window_size >= 0:
            rules.append(-behind <= right_window_size)
    if nonpad_kv_seqlen is not None:
        rules.append(torch.arange(kv_len, device=device) < nonpad_kv_seqlen.reshape(-1, 1, 1, 1))
    if rules:
        excluded = _additive(functools.reduce(operator.and_, rules), dtype)
        bias = excluded if bias is None else bias + excluded
    return bias


@table.op("Attention", multi_output=True)
def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    past_key: torch.Tensor | None = None,
    past_value: torch.Tensor | None = None,
    nonpad_kv_seqlen: torch.Tensor | None = None,
    *,
    is_causal: int = 0,
    kv_num_heads: int | None = None,
    q_num_heads: int | None = None,
    qk_matmul_output_mode: int = 0,
    scale: float | None = None,
    softcap: float = 0.0,
    softmax_precision: int | None = None,
    left_window_size: int = -1,
    right_window_size: int = -1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Y = softmax(softcap(Q·Kᵀ·scale) + bias) · V per head, K and V extended by the past ones;
    returns (Y, present_key, present_value, qk_matmul_output)."""
    three_d = q.dim() == 3
    if three_d:  # (batch, seq, heads · head_size) -> (batch, heads, seq, head_size)
        q = q.unflatten(-1, (q_num_heads, -1)).transpose(1, 2)
        k = k.unflatten(-1, (kv_num_heads, -1)).transpose(1, 2)
        v = v.unflatten(-1, (kv_num_heads, -1)).transpose(1, 2)
    if past_key is not None:
        k = torch.cat((past_key, k), dim=2)
        v = torch.cat((past_value, v), dim=2)
    batch, heads, q_len, head_size = q.shape
    kv_heads, kv_len = k.shape[1], k.shape[2]
    groups = heads // kv_heads
    if scale is None:
        scale = 1.0 / math.sqrt(head_size)
    # Query head h reads key/value head h // groups: folding each group's heads into the query
    # rows lets one batched matmul serve them all, without repeating K and V. Q alone takes the
    # whole scale (the spec splits it as sqrt(scale) on Q and on K): the scores are the same,
    # without a pass over the whole K cache.
    grouped = (q * scale).reshape(batch, kv_heads, groups * q_len, head_size)
    scores = torch.matmul(grouped, k.transpose(-1, -2)).view(batch, heads, q_len, kv_len)
    capped = softcap * torch.tanh(scores / softcap) if softcap > 0 else scores

    if past_key is not None:
        offset: int | torch.Tensor = past_key.shape[2]
    elif nonpad_kv_seqlen is not None:  # an external cache: per batch, the keys before the queries
        offset = (nonpad_kv_seqlen - q_len).reshape(-1, 1, 1, 1)
    else:
        offset = 0
    bias = _attention_bias(
        attn_mask, q_len, kv_len, offset, nonpad_kv_seqlen, bool(is_causal),
        left_window_size, right_window_size, q.dtype, q.device,
    )
    logits = capped if bias is None else capped + bias
    precision = torch_dtype(softmax_precision) if softmax_precision else None
    probs = torch.softmax(logits, dim=-1, dtype=precision).to(q.dtype)
    y = torch.matmul(probs.reshape(batch, kv_heads, groups * q_len, kv_len), v)
    y = y.view(batch, heads, q_len, -1)

    # A query left with no key to attend gives zeros, not softmax's NaN. That is decided on the
    # bias, since the logits may be NaN for other reasons, and applied to Y, much smaller than
    # the probabilities. Causal masking alone always leaves key 0.
    windowed = left_window_size >= 0 or right_window_size >= 0
    if bias is not None and (attn_mask is not None or nonpad_kv_seqlen is not None or windowed):
        unattended = torch.amax(bias, dim=-1, keepdim=True) == -math.inf
        y = y.masked_fill(unattended, 0.0)
        if qk_matmul_output_mode == 3:
            probs = probs.masked_fill(unattended, 0.0)
    if three_d:
        y = y.transpose(1, 2).reshape(batch, q_len, -1)
    # Mode 0 is the product before the softcap, as the spec and its function body say (the numpy
    # reference returns it softcapped).
    qk = (scores, capped, logits, probs)[qk_matmul_output_mode]
    return y, k, v, qk


@table.op("RotaryEmbedding")
def rotary_embedding(
    x: torch.Tensor,
    cos_cache: torch.Tensor,
    sin_cache: torch.Tensor,
    position_ids: torch.Tensor | None = None,
    *,
    interleaved: int = 0,
    num_heads: int = 0,
    rotary_embedding_dim: int = 0,
) -> torch.Tensor:
    """Rotates the pairs (x1, x2) of each head's first ``rotary_embedding_dim`` features (the two
    halves, or even and odd features when interleaved) by their position's angle:
    (x1·cos − x2·sin, x1·sin + x2·cos)."""
    if position_ids is not None:  # else the caches are already (batch, seq, dim / 2)
        cos_cache, sin_cache = cos_cache[position_ids], sin_cache[position_ids]
    if x.dim() == 3:  # (batch, seq, heads · head_size): the caches broadcast over heads
        heads = x.unflatten(-1, (num_heads, -1))
        cos, sin = cos_cache.unsqueeze(2), sin_cache.unsqueeze(2)
    else:  # (batch, heads, seq, head_size)
        heads = x
        cos, sin = cos_cache.unsqueeze(1), sin_cache.unsqueeze(1)
    dim = rotary_embedding_dim or heads.shape[-1]
    rotated, kept = heads[..., :dim], heads[..., dim:]
    if interleaved:
        x1, x2 = rotated[..., 0::2], rotated[..., 1::2]
    else:
        x1, x2 = rotated.chunk(2, dim=-1)
    real = cos * x1 - sin * x2
    imag = sin * x1 + cos * x2
    if interleaved:
        rotated = torch.stack((real, imag), dim=-1).flatten(-2)
    else:
        rotated = torch.cat((real, imag), dim=-1)
    if kept.shape[-1]:
        rotated = torch.cat((rotated, kept), dim=-1)
    return rotated.reshape(x.shape)
