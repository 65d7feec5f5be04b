"""Products, reductions, normalizations and attention."""

from __future__ import annotations

from typing import Sequence

import torch

from kirin_compiler.backends.torch_ops._table import OpTable, axis, ints

table = OpTable()

IntList = torch.Tensor | Sequence[int]


@table.op("MatMul")
def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.matmul(a, b)


@table.op("Softmax")
def softmax(x: torch.Tensor, *, axis: int = -1) -> torch.Tensor:
    return torch.softmax(x, dim=axis)


def _reduce_axes(data: torch.Tensor, axes: IntList | None, noop_with_empty_axes: int) -> list[int] | None:
    """The axes to reduce; None means none at all (the noop case)."""
    listed = ints(axes) if axes is not None else []
    if not listed:
        return None if noop_with_empty_axes else list(range(data.dim()))
    return [axis(a, data.dim()) for a in listed]


@table.op("ReduceMean", static_inputs=(1,))
def reduce_mean(
    data: torch.Tensor, axes: IntList | None = None, *, keepdims: int = 1, noop_with_empty_axes: int = 0
) -> torch.Tensor:
    dims = _reduce_axes(data, axes, noop_with_empty_axes)
    return data if dims is None else torch.mean(data, dim=dims, keepdim=bool(keepdims))


@table.op("ReduceSum", static_inputs=(1,))
def reduce_sum(
    data: torch.Tensor, axes: IntList | None = None, *, keepdims: int = 1, noop_with_empty_axes: int = 0
) -> torch.Tensor:
    dims = _reduce_axes(data, axes, noop_with_empty_axes)
    return data if dims is None else torch.sum(data, dim=dims, keepdim=bool(keepdims))


@table.op("RMSNormalization")
def rms_normalization(
    x: torch.Tensor, scale: torch.Tensor, *, axis: int = -1, epsilon: float = 1e-5, stash_type: int = 1
) -> torch.Tensor:
    del stash_type  # computed in float32 (the claimed dtype)
    dims = list(range(axis % x.dim(), x.dim()))
    return x * torch.rsqrt(torch.mean(x * x, dim=dims, keepdim=True) + epsilon) * scale


@table.op("LayerNormalization")
def layer_normalization(
    x: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    axis: int = -1,
    epsilon: float = 1e-5,
    stash_type: int = 1,
) -> torch.Tensor:
    del stash_type
    start = axis % x.dim()
    return torch.nn.functional.layer_norm(x, x.shape[start:], scale, bias, epsilon)
