"""The inputs of a decoder export, and the values kirinc gives them when a user gives token ids.

An export takes its token ids and often more: an attention mask (every plain
``torch.onnx.export`` given the mask, optimum's exports), position ids, a KV cache (one past
key and value per layer, whose updated form the model returns as ``present`` outputs) and, in a
merged decoder, the flag that picks its with-cache branch. `decoder_inputs` finds which input is
which, from the graph where it can (the token ids are the indices of the largest embedding
table; a cache input is concatenated with the new keys or values, and the output of that
``Concat`` is its present output; the branch flag is an ``If``'s condition) and from the names
and types of the others. `DecoderInputs.feed` gives each its natural value for a run on token
ids: the ids, a mask of ones, position ids ``past .. past + sequence - 1``, the cache of the run
before (a zero-length one for the first run) and the flag set where there is a cache. An input
that is none of these is one clear error that names it.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping

import numpy as np
import onnx_ir as ir

from kirin_compiler.errors import KirinError

_INTEGER = frozenset({ir.DataType.INT64, ir.DataType.INT32})
_FLOAT = frozenset({ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16})
_MASK_TYPES = _INTEGER | _FLOAT | {ir.DataType.BOOL}
_CARRY = frozenset({"Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
_CACHE_CARRY = _CARRY | {"Slice"}  # a sliding-window cache keeps its last tokens
# where the onnxruntime attention ops read their cache: (op, past input) -> present output
_ATTENTION_CACHES = {("GroupQueryAttention", 3): 1, ("GroupQueryAttention", 4): 2,
                     ("MultiHeadAttention", 6): 1, ("MultiHeadAttention", 7): 2}


@dataclasses.dataclass(frozen=True)
class Cache:
    """One cached tensor: the input ``past`` that takes it, the output ``present`` that returns
    it with the new tokens appended, and the ``axis`` of its tokens."""

    past: str
    present: str
    axis: int
    head_size: int | None = None  # the last axis's size, where the graph says it and the input does not


@dataclasses.dataclass(frozen=True)
class DecoderInputs:
    """The names of a decoder's inputs: its token ids, and its mask, position ids, KV cache and
    cache-branch flag if it takes them."""

    ids: str
    mask: str | None = None
    positions: str | None = None
    cache: tuple[Cache, ...] = ()
    cache_branch: str | None = None

    def feed(
        self, model: ir.Model, ids: np.ndarray, cache: Mapping[str, np.ndarray] | None = None
    ) -> dict[str, np.ndarray]:
        """Every input of ``model`` for a run on token ids ``[batch, sequence]``: the first run,
        or, given the ``cache`` of the run before (`next_cache`), a decode step after it."""
        values = {value.name: value for value in model.graph.inputs}
        past = 0
        result = {self.ids: ids.astype(_numpy(values[self.ids]))}
        for entry in self.cache:
            given = None if cache is None else cache[entry.past]
            result[entry.past] = _empty_cache(values[entry.past], entry, ids.shape[0]) if given is None else given
            past = result[entry.past].shape[entry.axis]
        if self.mask is not None:
            result[self.mask] = np.ones((ids.shape[0], past + ids.shape[1]), dtype=_numpy(values[self.mask]))
        if self.positions is not None:
            positions = np.broadcast_to(np.arange(past, past + ids.shape[-1]), ids.shape)
            result[self.positions] = positions.astype(_numpy(values[self.positions]))
        if self.cache_branch is not None:
            flag = values[self.cache_branch]
            result[self.cache_branch] = np.full([1] * len(flag.shape or [1]), cache is not None)
        return result

    def next_cache(self, model: ir.Model, outputs: list[np.ndarray]) -> dict[str, np.ndarray]:
        """The cache for the next step, from the outputs of a run (in the graph's order)."""
        by_name = dict(zip((value.name for value in model.graph.outputs), outputs))
        return {entry.past: by_name[entry.present] for entry in self.cache}

    def described(self) -> dict[str, str]:
        """What kirinc feeds each input, in words, by name."""
        words = {self.ids: "token ids", self.mask: "attention mask of ones", self.positions: "position ids",
                 self.cache_branch: "cache branch flag"}
        words.update({entry.past: "KV cache" for entry in self.cache})
        return {name: what for name, what in words.items() if name is not None}

    def vocabulary(self, model: ir.Model) -> int | None:
        """The rows of the smallest table the token ids index (None: they index none)."""
        tokens = next(value for value in model.graph.inputs if value.name == self.ids)
        return min(_tables_indexed_by(tokens), default=None)


def decoder_inputs(model: ir.Model, what: str = "kirinc") -> DecoderInputs:
    """Which of ``model``'s inputs are the token ids, the attention mask, the position ids, the
    KV cache and the cache-branch flag; ``what`` (the command or option that feeds them) names
    the caller in an error."""
    inputs = list(model.graph.inputs)
    ids = _token_ids(inputs)
    if ids is None:
        names = ", ".join(f"{v.name} ({_type(v)})" for v in inputs)
        raise KirinError(f"{what} feeds token ids, but no input of the model looks them up in an "
                         f"embedding table (its inputs: {names})")
    found: dict = {"ids": ids.name}
    cache = []
    for value in inputs:
        if value is ids:
            continue
        entry = _cache(model, value)
        if entry is not None:
            cache.append(entry)
            continue
        kind = _kind(value)
        if kind is None or kind in found:
            reason = "a second " + kind.replace("_", " ") if kind in found else "none of these"
            raise KirinError(
                f"{what} gives a decoder its token ids, an attention mask of ones, position ids, a "
                f"KV cache and a cache-branch flag; the model's input '{value.name}' ({_type(value)}) "
                f"is {reason}: export the model with those inputs only"
            )
        found[kind] = value.name
    return DecoderInputs(**found, cache=tuple(cache))


def feed(model: ir.Model, ids: np.ndarray, what: str = "kirinc") -> dict[str, np.ndarray]:
    """Every input of ``model`` for a run on token ids ``[batch, sequence]`` (`DecoderInputs.feed`;
    a loop over many runs finds the inputs once, with `decoder_inputs`)."""
    return decoder_inputs(model, what).feed(model, ids)


def named(model: ir.Model, arrays: dict[str, np.ndarray], source: str) -> dict[str, np.ndarray]:
    """Inputs a user gave by name (an ``.npz`` file): exactly the model's inputs, each of its
    input's element kind and rank."""
    expected = {value.name: value for value in model.graph.inputs}
    missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
    if missing or extra:
        wrong = f"lacks {', '.join(missing)}" if missing else f"holds {', '.join(extra)}, which the model does not take"
        raise KirinError(f"'{source}' {wrong}; give exactly the model's inputs by name "
                         f"({', '.join(expected)})")
    result = {}
    for name, value in expected.items():
        array, dtype = arrays[name], _numpy(value)
        rank = len(value.shape) if value.shape is not None else array.ndim
        if array.dtype.kind != np.dtype(dtype).kind or array.ndim != rank:
            raise KirinError(f"'{source}' gives {name} as {array.dtype}{list(array.shape)}; the model "
                             f"takes {_type(value)}")
        result[name] = array.astype(dtype, copy=False)
    return result


def _token_ids(inputs: list[ir.Value]) -> ir.Value | None:
    """The integer input that indexes the largest constant table (the token embedding)."""
    best, rows = None, -1
    for value in inputs:
        if value.dtype not in _INTEGER:
            continue
        for table in _tables_indexed_by(value):
            if table > rows or (table == rows and value.name == "input_ids"):
                best, rows = value, table
    if best is None and len(inputs) == 1 and inputs[0].dtype in _INTEGER:
        return inputs[0]  # ids that reach no Gather directly (a model of the tests, say)
    return best


def _carried(value: ir.Value, through: frozenset[str] = _CARRY) -> list[tuple[ir.Node, int]]:
    """The uses of ``value`` and of what ops that only cast or reshape it (the ops ``through``)
    make of it."""
    uses, frontier = [], [value]
    while frontier:
        for user, index in frontier.pop().uses():
            if user.op_type in through and index == 0:
                frontier.extend(user.outputs)
            else:
                uses.append((user, index))
    return uses


def _tables_indexed_by(value: ir.Value) -> list[int]:
    """The row counts of the constant tables ``value`` indexes, directly or through ops that
    only cast or reshape it."""
    rows = []
    for user, index in _carried(value):
        if user.op_type == "Gather" and index == 1:
            table = user.inputs[0].const_value
            if table is not None and len(table.shape) == 2:
                rows.append(table.shape[0])
    return rows


def _cache(model: ir.Model, value: ir.Value) -> Cache | None:
    """``value`` as a cache input: a float tensor the model concatenates with the new tokens'
    keys or values (or an onnxruntime attention op reads as its past), whose result it returns."""
    if value.dtype not in _FLOAT or value.shape is None or len(value.shape) < 3:
        return None
    outputs = {output: output.name for output in model.graph.outputs}
    branches = _branch_outputs(model.graph)
    for user, index in _carried(value, _CACHE_CARRY):
        if user.op_type == "Concat":
            present, axis = user.outputs[0], user.attributes.get_int("axis", 0) % len(value.shape)
        elif (user.op_type, index) in _ATTENTION_CACHES and len(user.outputs) > _ATTENTION_CACHES[user.op_type, index]:
            present, axis = user.outputs[_ATTENTION_CACHES[user.op_type, index]], 2
        else:
            continue
        returned = _returned(present, outputs, branches)
        if returned is not None:
            return Cache(value.name, outputs[returned], axis, _head_size(user))
    return None


def _head_size(attention: ir.Node) -> int | None:
    """The head size of an onnxruntime attention op: its query's width over its heads (and,
    for a packed QKV, the key and value heads too)."""
    if attention.op_type not in {op for op, _ in _ATTENTION_CACHES}:
        return None
    query = attention.inputs[0]
    width = query.shape[-1] if query.shape is not None and len(query.shape) == 3 else None
    heads = attention.attributes.get_int("num_heads", 0)
    if not isinstance(width, int) or not heads:
        return None
    packed = len(attention.inputs) < 2 or attention.inputs[1] is None
    kv_heads = attention.attributes.get_int("kv_num_heads", heads)
    return width // (heads + 2 * kv_heads) if packed else width // heads


def _returned(
    value: ir.Value, outputs: Mapping[ir.Value, str], branches: Mapping[ir.Value, ir.Value]
) -> ir.Value | None:
    """The graph output that ``value`` becomes through concatenations (a cache that starts as an
    empty tensor), slices (a sliding window), ops that only cast or reshape it and the outputs of
    ``If`` branches (a merged decoder), if any."""
    frontier, seen = [value], set()
    while frontier:
        current = frontier.pop(0)
        if current in outputs:
            return current
        seen.add(current)
        if current in branches:
            frontier.append(branches[current])
        frontier.extend(out for user, index in current.uses() if index == 0 and user.op_type in _CACHE_CARRY | {"Concat"}
                        for out in user.outputs if out not in seen)
    return None


def _branch_outputs(graph: ir.Graph) -> dict[ir.Value, ir.Value]:
    """Each output of a subgraph (an ``If`` branch) -> the output of its node it becomes."""
    result = {}
    for node in ir.traversal.RecursiveGraphIterator(graph):
        for attribute in node.attributes.values():
            if attribute.type == ir.AttributeType.GRAPH:
                result.update(zip(attribute.as_graph().outputs, node.outputs))
    return result


def _empty_cache(value: ir.Value, entry: Cache, batch: int) -> np.ndarray:
    """A zero-length cache: no tokens along its axis, the batch of the ids on axis 0, and the
    input's static size (or the attention op's head size, last) on every other axis."""
    shape = []
    for i, dim in enumerate(value.shape):
        if i == 0 or i == entry.axis:
            shape.append(batch if i == 0 else 0)
        elif isinstance(dim, int):
            shape.append(dim)
        elif i == len(value.shape) - 1 and entry.head_size is not None:
            shape.append(entry.head_size)
        else:
            raise KirinError(f"the KV cache input '{value.name}' ({_type(value)}) has no static size on "
                             f"axis {i}, so kirinc cannot make its empty first value: export it with "
                             "static head counts and sizes, or give every input by name (.npz)")
    return np.zeros(shape, dtype=_numpy(value))


def _kind(value: ir.Value) -> str | None:
    rank = len(value.shape) if value.shape is not None else None
    name = value.name.lower()
    if value.dtype == ir.DataType.BOOL and rank in (0, 1, None) and (_is_condition(value) or "cache_branch" in name):
        return "cache_branch"
    if rank not in (2, None):
        return None
    if re.search(r"mask", name) and value.dtype in _MASK_TYPES:
        return "mask"
    if re.search(r"position", name) and value.dtype in _INTEGER:
        return "positions"
    return None


def _is_condition(value: ir.Value) -> bool:
    return any(user.op_type == "If" and index == 0 for user, index in _carried(value))


def _numpy(value: ir.Value) -> np.dtype:
    return value.dtype.numpy()


def _type(value: ir.Value) -> str:
    dims = ", ".join(map(str, value.shape)) if value.shape is not None else "?"
    return f"{value.dtype.name if value.dtype is not None else '?'}[{dims}]"
