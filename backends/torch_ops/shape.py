"""Operators that move, select, make or describe data: shapes and reshapes, slicing and
splitting, gathering and scattering, padding and tiling, triangles and diagonals, constants and
ranges, cumulative sums and products, and index searches (``ArgMax``, ``TopK``, ``NonZero``,
``Unique``).

Axes may be negative (counted from the end) and so may indices (``Gather``, ``GatherElements``,
``ScatterND``...), as in ONNX. Integer lists (shapes, axes, pads, repeats, ``k``) are static
inputs: a Python list when the model has them as constants, else a tensor.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from kirin_compiler.backends.torch_ops._table import OpTable, ints, torch_dtype
from kirin_compiler.backends.torch_ops._table import axis as _axis

table = OpTable()

IntList = torch.Tensor | Sequence[int]


# Shapes and reshapes ------------------------------------------------------------------------------


@table.op("Shape")
def shape(data: torch.Tensor, *, start: int = 0, end: int | None = None) -> torch.Tensor:
    # Python's slice clamps negative and out-of-range bounds exactly as ONNX does.
    return torch.tensor(data.shape[start:end], dtype=torch.int64)


@table.op("Size")
def size(data: torch.Tensor) -> torch.Tensor:
    return torch.tensor(data.numel(), dtype=torch.int64)


@table.op("Reshape", static_inputs=(1,))
def reshape(data: torch.Tensor, shape: IntList, *, allowzero: int = 0) -> torch.Tensor:
    target = ints(shape)
    if not allowzero:  # 0 copies the input's dimension at that position
        target = [data.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return torch.reshape(data, target)


@table.op("Flatten")
def flatten(data: torch.Tensor, *, axis: int = 1) -> torch.Tensor:
    """The input as a matrix: the dimensions before ``axis`` make the rows, the others the
    columns."""
    dim = _axis(axis, data.dim())
    return data.reshape(math.prod(data.shape[:dim]), math.prod(data.shape[dim:]))


@table.op("Transpose")
def transpose(data: torch.Tensor, *, perm: Sequence[int] | None = None) -> torch.Tensor:
    order = list(perm) if perm is not None else list(range(data.dim()))[::-1]
    return data.permute(order)


@table.op("Unsqueeze", static_inputs=(1,))
def unsqueeze(data: torch.Tensor, axes: IntList) -> torch.Tensor:
    axes = ints(axes)
    rank = data.dim() + len(axes)
    result = data
    for position in sorted(_axis(a, rank) for a in axes):
        result = result.unsqueeze(position)
    return result


@table.op("Squeeze", static_inputs=(1,))
def squeeze(data: torch.Tensor, axes: IntList | None = None) -> torch.Tensor:
    if axes is None:
        return data.squeeze()
    return data.squeeze(tuple(_axis(a, data.dim()) for a in ints(axes)))


@table.op("Expand", static_inputs=(1,))
def expand(data: torch.Tensor, shape: IntList) -> torch.Tensor:
    # Broadcasting goes both ways: a 1 in ``shape`` keeps the input's dimension.
    target = torch.broadcast_shapes(tuple(data.shape), tuple(ints(shape)))
    return data.expand(target)


@table.op("Tile", static_inputs=(1,))
def tile(data: torch.Tensor, repeats: IntList) -> torch.Tensor:
    return data.repeat(ints(repeats))


@table.op("DepthToSpace")
def depth_to_space(data: torch.Tensor, *, blocksize: int, mode: str = "DCR") -> torch.Tensor:
    b, c, h, w = data.shape
    depth = c // (blocksize * blocksize)
    if mode == "DCR":  # channels read as (row offset, column offset, depth)
        blocks = data.reshape(b, blocksize, blocksize, depth, h, w).permute(0, 3, 4, 1, 5, 2)
    else:  # CRD: (depth, row offset, column offset)
        blocks = data.reshape(b, depth, blocksize, blocksize, h, w).permute(0, 1, 4, 2, 5, 3)
    return blocks.reshape(b, depth, h * blocksize, w * blocksize)


@table.op("SpaceToDepth")
def space_to_depth(data: torch.Tensor, *, blocksize: int, mode: str = "DCR") -> torch.Tensor:
    b, c, h, w = data.shape
    blocks = data.reshape(b, c, h // blocksize, blocksize, w // blocksize, blocksize)
    order = (0, 3, 5, 1, 2, 4) if mode == "DCR" else (0, 1, 3, 5, 2, 4)
    depth = c * blocksize * blocksize
    return blocks.permute(order).reshape(b, depth, h // blocksize, w // blocksize)


# Joining, splitting, slicing ----------------------------------------------------------------------


@table.op("Concat")
def concat(*inputs: torch.Tensor, axis: int) -> torch.Tensor:
    return torch.cat(inputs, dim=axis)


@table.op("Split", static_inputs=(1,), multi_output=True)
def split(
    data: torch.Tensor,
    split: IntList | None = None,
    *,
    axis: int = 0,
    num_outputs: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """Parts of the given sizes, or ``num_outputs`` parts of ceil(n / num_outputs), the last
    one smaller when the dimension does not divide evenly. (The lowering passes the node's
    output count as ``num_outputs`` when the node does not set it: Split before opset 18.)"""
    if split is not None:
        sizes = ints(split)
    elif num_outputs is not None:
        length = data.shape[axis]
        part = -(-length // num_outputs)
        sizes = [part] * (num_outputs - 1) + [length - part * (num_outputs - 1)]
    else:
        raise ValueError("Split needs the 'split' input or the 'num_outputs' attribute")
    return torch.split(data, sizes, dim=axis)


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
        dim = _axis(dim, data.dim())
        size = data.shape[dim]
        start = start + size if start < 0 else start
        end = end + size if end < 0 else end
        if step > 0:
            index[dim] = slice(_clamp(start, 0, size), _clamp(end, 0, size), step)
            continue
        # torch has no negative steps: take the same elements forwards, then flip. ONNX clamps
        # start into [0, size - 1] and end into [-1, size - 1] (numpy would clamp start to -1).
        start, end, stride = _clamp(start, 0, size - 1), _clamp(end, -1, size - 1), -step
        count = max(0, (start - end + stride - 1) // stride) if size else 0
        first = start - (count - 1) * stride
        index[dim] = slice(first, start + 1, stride) if count else slice(0, 0)
        flips.append(dim)
    result = data[tuple(index)]
    return result.flip(flips) if flips else result


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


@table.op("Compress")
def compress(
    data: torch.Tensor, condition: torch.Tensor, *, axis: int | None = None
) -> torch.Tensor:
    """The slices along ``axis`` (of the flattened input without one) where ``condition`` is
    true; a shorter condition drops the slices past its end."""
    keep = torch.nonzero(condition.reshape(-1)).reshape(-1)
    if axis is None:
        return data.reshape(-1).index_select(0, keep)
    return data.index_select(axis, keep)


@table.op("ReverseSequence")
def reverse_sequence(
    data: torch.Tensor, sequence_lens: torch.Tensor, *, batch_axis: int = 1, time_axis: int = 0
) -> torch.Tensor:
    """Reverses the first ``sequence_lens[b]`` steps along ``time_axis`` of each batch entry."""
    time = torch.arange(data.shape[time_axis])
    lengths = sequence_lens.to(torch.int64).unsqueeze(1)
    source = torch.where(time < lengths, lengths - 1 - time, time)  # [batch, time]
    if batch_axis > time_axis:
        source = source.T
    view = [1] * data.dim()
    view[batch_axis], view[time_axis] = data.shape[batch_axis], data.shape[time_axis]
    return torch.gather(data, time_axis, source.reshape(view).expand(data.shape))


# Padding ------------------------------------------------------------------------------------------


@table.op("Pad", static_inputs=(1, 3))
def pad(
    data: torch.Tensor,
    pads: IntList,
    constant_value: torch.Tensor | None = None,
    axes: IntList | None = None,
    *,
    mode: str = "constant",
) -> torch.Tensor:
    """Pads (or, with negative pads, crops) each axis by ``pads[i]`` at its start and
    ``pads[i + len(axes)]`` at its end."""
    rank = data.dim()
    dims = [_axis(a, rank) for a in ints(axes)] if axes is not None else list(range(rank))
    widths = ints(pads)
    begins, ends = widths[: len(dims)], widths[len(dims) :]
    if mode == "constant":
        value = constant_value.item() if constant_value is not None else 0
        return F.pad(data, _torch_pads(rank, dims, begins, ends), value=value)
    # torch's reflect/replicate/circular modes take only floats of rank 3 to 5 and no wider
    # pads than the input: gather along each axis from the source positions instead. Negative
    # pads crop first, and the other side is padded from what remains (as onnxruntime does).
    result = data
    for dim, begin, end in zip(dims, begins, ends):
        if begin or end:
            crop = max(-begin, 0)
            kept = result.shape[dim] - crop - max(-end, 0)
            positions = torch.arange(-max(begin, 0), kept + max(end, 0))
            result = result.index_select(dim, _pad_sources(mode, positions, kept) + crop)
    return result


def _torch_pads(
    rank: int, dims: Sequence[int], begins: Sequence[int], ends: Sequence[int]
) -> list[int]:
    """ONNX's per-axis pads as ``F.pad``'s list, which starts from the last dimension."""
    widths = [0] * (2 * rank)
    for dim, begin, end in zip(dims, begins, ends):
        widths[2 * (rank - 1 - dim)], widths[2 * (rank - 1 - dim) + 1] = begin, end
    return widths


def _pad_sources(mode: str, positions: torch.Tensor, size: int) -> torch.Tensor:
    """For each output position along a padded axis (input coordinates), the input position it
    copies."""
    if mode == "edge" or (mode == "reflect" and size == 1):
        return positions.clamp(0, size - 1)
    if mode == "wrap":
        return positions % size
    if mode == "reflect":  # mirrored at both ends, without repeating the edge: period 2(n-1)
        period = 2 * (size - 1)
        folded = positions.abs() % period
        return torch.where(folded >= size, period - folded, folded)
    raise ValueError(f"Pad mode {mode!r} is not one of constant, reflect, edge, wrap")


@table.op("CenterCropPad", static_inputs=(1,))
def center_crop_pad(
    data: torch.Tensor, shape: IntList, *, axes: Sequence[int] | None = None
) -> torch.Tensor:
    """Crops or zero-pads each axis to the target size around its center; an odd difference
    leaves the extra element on the end side."""
    rank = data.dim()
    dims = [_axis(a, rank) for a in axes] if axes is not None else list(range(rank))
    begins, ends = [], []
    for dim, target in zip(dims, ints(shape)):
        difference = target - data.shape[dim]  # negative: crop, by F.pad's negative widths
        begin = difference // 2 if difference >= 0 else -(-difference // 2)
        begins.append(begin)
        ends.append(difference - begin)
    return F.pad(data, _torch_pads(rank, dims, begins, ends))


# Gathering and scattering -------------------------------------------------------------------------


def _wrap(indices: torch.Tensor, size: int | torch.Tensor) -> torch.Tensor:
    """Indices in [-size, size) as non-negative ones."""
    return torch.where(indices < 0, indices + size, indices)


@table.op("Gather")
def gather(data: torch.Tensor, indices: torch.Tensor, *, axis: int = 0) -> torch.Tensor:
    dim = _axis(axis, data.dim())
    flat = torch.index_select(data, dim, _wrap(indices, data.shape[dim]).reshape(-1))
    return flat.reshape(data.shape[:dim] + indices.shape + data.shape[dim + 1 :])


@table.op("GatherElements")
def gather_elements(data: torch.Tensor, indices: torch.Tensor, *, axis: int = 0) -> torch.Tensor:
    dim = _axis(axis, data.dim())
    return torch.gather(data, dim, _wrap(indices, data.shape[dim]).to(torch.int64))


@table.op("GatherND")
def gather_nd(data: torch.Tensor, indices: torch.Tensor, *, batch_dims: int = 0) -> torch.Tensor:
    depth = indices.shape[-1]
    batches = math.prod(data.shape[:batch_dims])
    flat_data = data.reshape((batches,) + data.shape[batch_dims:])
    flat_indices = indices.to(torch.int64).reshape(batches, -1, depth)
    sizes = torch.tensor(data.shape[batch_dims : batch_dims + depth], dtype=torch.int64)
    flat_indices = _wrap(flat_indices, sizes)
    batch_index = torch.arange(batches).reshape(batches, 1).expand(flat_indices.shape[:2])
    gathered = flat_data[(batch_index, *flat_indices.unbind(-1))]
    return gathered.reshape(indices.shape[:-1] + data.shape[batch_dims + depth :])


# ONNX's reductions as torch's ``scatter_reduce``/``index_reduce`` names.
_REDUCTIONS = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


@table.op("ScatterElements")
def scatter_elements(
    data: torch.Tensor,
    indices: torch.Tensor,
    updates: torch.Tensor,
    *,
    axis: int = 0,
    reduction: str = "none",
) -> torch.Tensor:
    dim = _axis(axis, data.dim())
    index = _wrap(indices, data.shape[dim]).to(torch.int64)
    if reduction == "none":
        return data.scatter(dim, index, updates)
    return data.scatter_reduce(dim, index, updates, _REDUCTIONS[reduction], include_self=True)


@table.op("ScatterND")
def scatter_nd(
    data: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor, *, reduction: str = "none"
) -> torch.Tensor:
    """Writes (or reduces) each ``updates[i...]`` into the slice ``data[indices[i...]]``."""
    depth = indices.shape[-1]
    sizes = data.shape[:depth]
    # The first ``depth`` dimensions as one, so each index tuple becomes one row number.
    strides = torch.tensor([math.prod(sizes[d + 1 :]) for d in range(depth)], dtype=torch.int64)
    rows = (_wrap(indices.to(torch.int64), torch.tensor(sizes)) * strides).sum(-1).reshape(-1)
    flat = data.reshape((math.prod(sizes),) + data.shape[depth:])
    source = updates.reshape((-1,) + data.shape[depth:])
    if reduction == "none":
        result = flat.index_copy(0, rows, source)
    elif reduction == "add":
        result = flat.index_add(0, rows, source)
    else:
        result = flat.index_reduce(0, rows, source, _REDUCTIONS[reduction], include_self=True)
    return result.reshape(data.shape)


@table.op("TensorScatter")
def tensor_scatter(
    past_cache: torch.Tensor,
    update: torch.Tensor,
    write_indices: torch.Tensor | None = None,
    *,
    axis: int = -2,
    mode: str = "linear",
) -> torch.Tensor:
    """The cache with ``update`` written along ``axis`` from ``write_indices[b]`` on for each
    batch entry b (modulo the cache length when ``mode`` is circular)."""
    dim = _axis(axis, past_cache.dim())
    batch, length = past_cache.shape[0], update.shape[dim]
    if write_indices is None:
        write_indices = torch.zeros(batch, dtype=torch.int64)
    starts = write_indices.to(torch.int64)
    positions = starts.unsqueeze(1) + torch.arange(length)  # [batch, length]
    if mode == "circular":
        positions = positions % past_cache.shape[dim]
    view = [1] * past_cache.dim()
    view[0], view[dim] = batch, length
    return past_cache.scatter(dim, positions.reshape(view).expand(update.shape), update)


@table.op("OneHot", static_inputs=(1,))
def one_hot(
    indices: torch.Tensor, depth: IntList, values: torch.Tensor, *, axis: int = -1
) -> torch.Tensor:
    """``values[1]`` where the new axis' position equals the index (negative ones counted from
    ``depth``), else ``values[0]``; indices outside [-depth, depth) give no ``values[1]``."""
    classes = ints(depth)[0]
    dim = _axis(axis, indices.dim() + 1)
    targets = _wrap(indices.to(torch.int64), classes).unsqueeze(dim)
    view = [1] * (indices.dim() + 1)
    view[dim] = classes
    return torch.where(targets == torch.arange(classes).reshape(view), values[1], values[0])


# Triangles, diagonals, constants, ranges ----------------------------------------------------------


@table.op("Trilu")
def trilu(data: torch.Tensor, k: torch.Tensor | None = None, *, upper: int = 1) -> torch.Tensor:
    diagonal = int(k.item()) if k is not None else 0
    return torch.triu(data, diagonal) if upper else torch.tril(data, diagonal)


@table.op("EyeLike")
def eye_like(data: torch.Tensor, *, dtype: int | None = None, k: int = 0) -> torch.Tensor:
    """Ones on the k-th diagonal of a matrix of the input's shape, zeros elsewhere."""
    rows, columns = data.shape
    diagonal = torch.arange(columns) - torch.arange(rows).unsqueeze(1) == k
    return diagonal.to(torch_dtype(dtype) if dtype is not None else data.dtype)


@table.op("Constant")
def constant(
    *,
    value: torch.Tensor | None = None,
    value_float: float | None = None,
    value_floats: Sequence[float] | None = None,
    value_int: int | None = None,
    value_ints: Sequence[int] | None = None,
) -> torch.Tensor:
    if value is not None:
        return value
    if value_float is not None or value_floats is not None:
        floats = value_float if value_floats is None else value_floats
        return torch.tensor(floats, dtype=torch.float32)
    if value_int is not None or value_ints is not None:
        integers = value_int if value_ints is None else value_ints
        return torch.tensor(integers, dtype=torch.int64)
    raise ValueError("Constant has none of value, value_float(s), value_int(s)")


@table.op("ConstantOfShape", static_inputs=(0,))
def constant_of_shape(shape: IntList, *, value: torch.Tensor | None = None) -> torch.Tensor:
    fill = value if value is not None else torch.zeros(1, dtype=torch.float32)
    return torch.full(ints(shape), fill.reshape(-1)[0].item(), dtype=fill.dtype)


@table.op("Range")
def range_(
    start: torch.Tensor, limit: torch.Tensor, delta: torch.Tensor, *, stash_type: int = 1
) -> torch.Tensor:
    """``start + i * delta`` for i < max(ceil((limit - start) / delta), 0)."""
    first, last, step = start.item(), limit.item(), delta.item()
    if not start.dtype.is_floating_point:
        count = max(0, -((first - last) // step))  # integer ceil, exact for any sign of step
        return torch.arange(first, first + count * step, step, dtype=start.dtype)
    count = max(0, math.ceil((last - first) / step))
    # float16 is computed in the stash type (opset 27's stash_type, float by default); float32
    # in float64, as the reference does, so that each element is rounded once.
    if start.dtype in (torch.float16, torch.bfloat16) and stash_type != 11:
        compute = torch.float32
    else:
        compute = torch.float64
    return (torch.arange(count, dtype=compute) * step + first).to(start.dtype)


# Cumulative sums and products ---------------------------------------------------------------------


@table.op("CumSum", static_inputs=(1,))
def cum_sum(
    x: torch.Tensor, axis: IntList, *, exclusive: int = 0, reverse: int = 0
) -> torch.Tensor:
    return _cumulative(torch.cumsum, 0, x, ints(axis)[0], exclusive, reverse)


@table.op("CumProd", static_inputs=(1,))
def cum_prod(
    x: torch.Tensor, axis: IntList, *, exclusive: int = 0, reverse: int = 0
) -> torch.Tensor:
    return _cumulative(torch.cumprod, 1, x, ints(axis)[0], exclusive, reverse)


def _cumulative(
    accumulate: Callable[..., torch.Tensor],
    identity: int,
    x: torch.Tensor,
    axis: int,
    exclusive: int,
    reverse: int,
) -> torch.Tensor:
    dim = _axis(axis, x.dim())
    if reverse:
        x = x.flip(dim)
    if exclusive and x.shape[dim]:  # shift by one, the identity first: each sum excludes itself
        head = torch.full_like(x.narrow(dim, 0, 1), identity)
        x = torch.cat([head, x.narrow(dim, 0, x.shape[dim] - 1)], dim)
    result = accumulate(x, dim, dtype=x.dtype)  # torch would widen small integers to int64
    return result.flip(dim) if reverse else result


# Index searches -----------------------------------------------------------------------------------


@table.op("ArgMax")
def arg_max(
    data: torch.Tensor, *, axis: int = 0, keepdims: int = 1, select_last_index: int = 0
) -> torch.Tensor:
    return _arg_extreme(torch.argmax, data, axis, keepdims, select_last_index)


@table.op("ArgMin")
def arg_min(
    data: torch.Tensor, *, axis: int = 0, keepdims: int = 1, select_last_index: int = 0
) -> torch.Tensor:
    return _arg_extreme(torch.argmin, data, axis, keepdims, select_last_index)


def _arg_extreme(
    search: Callable[..., torch.Tensor], data: torch.Tensor, axis: int, keepdims: int, last: int
) -> torch.Tensor:
    # torch returns the first of equal extremes; the last one is the first of the flipped input.
    if not last:
        return search(data, dim=axis, keepdim=bool(keepdims))
    return data.shape[axis] - 1 - search(data.flip(axis), dim=axis, keepdim=bool(keepdims))


@table.op("TopK", static_inputs=(1,), multi_output=True)
def top_k(
    data: torch.Tensor,
    k: IntList,
    *,
    axis: int = -1,
    largest: int = 1,
    sorted: int = 1,  # noqa: A002 - the attribute's name
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest (or smallest) values along ``axis``, sorted, and their int64 indices; of
    equal values the one with the lower index comes first."""
    # A stable sort rather than torch.topk, which orders (and picks among) ties arbitrarily.
    values, indices = torch.sort(data, dim=axis, descending=bool(largest), stable=True)
    count = ints(k)[0]
    return values.narrow(axis, 0, count), indices.narrow(axis, 0, count)


@table.op("NonZero")
def non_zero(data: torch.Tensor) -> torch.Tensor:
    """The indices of the non-zero elements, one row per dimension: [rank, count], int64."""
    return torch.nonzero(data).T


@table.op("Unique", multi_output=True)
def unique(
    data: torch.Tensor,
    *,
    axis: int | None = None,
    sorted: int = 1,  # noqa: A002 - the attribute's name
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The unique elements (or slices along ``axis``) in ascending order, or in the order of
    their first occurrence; the index of each one's first occurrence, the index in the result
    of each input element (or slice), and each one's count."""
    dim = _axis(axis, data.dim()) if axis is not None else None
    values, inverse, counts = torch.unique(
        data, sorted=True, return_inverse=True, return_counts=True, dim=dim
    )
    inverse = inverse.reshape(-1)
    first = torch.full_like(counts, inverse.numel()).scatter_reduce(
        0, inverse, torch.arange(inverse.numel()), "amin"
    )
    if not sorted:
        order = torch.argsort(first)
        values = values.index_select(dim if dim is not None else 0, order)
        first, counts, inverse = first[order], counts[order], torch.argsort(order)[inverse]
    return values, first, inverse, counts
