"""Operators that move, select or describe data: shapes, reshapes, slicing, gathering."""

from __future__ import annotations

from typing import Sequence

import torch

from kirin_compiler.backends.torch_ops._table import OpTable, axis, ints

table = OpTable()

IntList = torch.Tensor | Sequence[int]


@table.op("Shape")
def shape(data: torch.Tensor, *, start: int = 0, end: int | None = None) -> torch.Tensor:
    return torch.tensor(data.shape[start:end], dtype=torch.int64)


@table.op("Reshape", static_inputs=(1,))
def reshape(data: torch.Tensor, shape: IntList, *, allowzero: int = 0) -> torch.Tensor:
    target = ints(shape)
    if not allowzero:  # 0 copies the input's dimension at that position
        target = [data.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return torch.reshape(data, target)


@table.op("Transpose")
def transpose(data: torch.Tensor, *, perm: Sequence[int] | None = None) -> torch.Tensor:
    order = list(perm) if perm is not None else list(range(data.dim()))[::-1]
    return data.permute(order)


@table.op("Unsqueeze", static_inputs=(1,))
def unsqueeze(data: torch.Tensor, axes: IntList) -> torch.Tensor:
    rank = data.dim() + len(ints(axes))
    result = data
    for position in sorted(axis(a, rank) for a in ints(axes)):
        result = result.unsqueeze(position)
    return result


@table.op("Squeeze", static_inputs=(1,))
def squeeze(data: torch.Tensor, axes: IntList | None = None) -> torch.Tensor:
    if axes is None:
        return data.squeeze()
    return data.squeeze(tuple(axis(a, data.dim()) for a in ints(axes)))


@table.op("Concat")
def concat(*inputs: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.cat(inputs, dim=axis)


@table.op("Slice", static_inputs=(1, 2, 3, 4))
def slice_(
    data: torch.Tensor,
    starts: IntList,
    ends: IntList,
    axes: IntList | None = None,
    steps: IntList | None = None,
) -> torch.Tensor:
    starts, ends = ints(starts), ints(ends)
    axes = ints(axes) if axes is not None else list(range(len(starts)))
    steps = ints(steps) if steps is not None else [1] * len(starts)
    index: list[slice] = [slice(None)] * data.dim()
    flips = []
    for start, end, dim, step in zip(starts, ends, axes, steps):
        dim = axis(dim, data.dim())
        size = data.shape[dim]
        if step > 0:
            start = _clamp(start + size if start < 0 else start, 0, size)
            end = _clamp(end + size if end < 0 else end, 0, size)
            index[dim] = slice(start, end, step)
        else:  # torch has no negative steps: take the range forwards, then flip
            start = _clamp(start + size if start < 0 else start, -1, size - 1)
            end = _clamp(end + size if end < 0 else end, -1, size - 1)
            count = max(0, (start - end - step - 1) // -step)
            first = start - (count - 1) * -step
            index[dim] = slice(first, first + (count - 1) * -step + 1, -step) if count else slice(0, 0)
            flips.append(dim)
    result = data[tuple(index)]
    return result.flip(flips) if flips else result


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


@table.op("Gather")
def gather(data: torch.Tensor, indices: torch.Tensor, *, axis: int = 0) -> torch.Tensor:
    dim = axis + data.dim() if axis < 0 else axis
    indices = torch.where(indices < 0, indices + data.shape[dim], indices)
    flat = torch.index_select(data, dim, indices.reshape(-1))
    return flat.reshape(data.shape[:dim] + indices.shape + data.shape[dim + 1 :])


@table.op("Expand", static_inputs=(1,))
def expand(data: torch.Tensor, shape: IntList) -> torch.Tensor:
    target = torch.broadcast_shapes(tuple(data.shape), tuple(ints(shape)))
    return data.expand(target)


@table.op("ConstantOfShape", static_inputs=(0,))
def constant_of_shape(shape: IntList, *, value: torch.Tensor | None = None) -> torch.Tensor:
    fill = value if value is not None else torch.zeros(1, dtype=torch.float32)
    return torch.full(ints(shape), fill.reshape(-1)[0].item(), dtype=fill.dtype)


@table.op("Range")
def range_(start: torch.Tensor, limit: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    return torch.arange(start.item(), limit.item(), delta.item(), dtype=start.dtype)


@table.op("Trilu")
def trilu(data: torch.Tensor, k: torch.Tensor | None = None, *, upper: int = 1) -> torch.Tensor:
    diagonal = int(k.item()) if k is not None else 0
    return torch.triu(data, diagonal) if upper else torch.tril(data, diagonal)


@table.op("GatherND")
def gather_nd(data: torch.Tensor, indices: torch.Tensor, *, batch_dims: int = 0) -> torch.Tensor:
    depth = indices.shape[-1]
    batch_shape = data.shape[:batch_dims]
    batches = int(torch.tensor(batch_shape).prod().item()) if batch_dims else 1
    flat_data = data.reshape((batches,) + data.shape[batch_dims:])
    flat_indices = indices.reshape(batches, -1, depth)
    sizes = torch.tensor(data.shape[batch_dims : batch_dims + depth], dtype=indices.dtype)
    flat_indices = torch.where(flat_indices < 0, flat_indices + sizes, flat_indices)
    batch_index = torch.arange(batches).reshape(batches, 1).expand(flat_indices.shape[:2])
    gathered = flat_data[(batch_index, *flat_indices.unbind(-1))]
    return gathered.reshape(indices.shape[:-1] + data.shape[batch_dims + depth :])
