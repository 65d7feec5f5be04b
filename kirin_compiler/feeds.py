"""The inputs of a decoder export, and the values kirinc gives them when a user gives token ids.

An export takes its token ids and often more: an attention mask (every plain
``torch.onnx.export`` given the mask, optimum's exports), position ids. `decoder_inputs` finds
which input is which, from the graph where it can (the token ids are the indices of the
largest embedding table) and from the names and types of the others; `feed` gives each its
natural value for a run on token ids alone: the ids, a mask of ones, position ids ``0 ..
sequence - 1``. An input that is none of these is one clear error that names it.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import onnx_ir as ir

from kirin_compiler.errors import KirinError

_INTEGER = frozenset({ir.DataType.INT64, ir.DataType.INT32})
_MASK_TYPES = _INTEGER | {ir.DataType.BOOL, ir.DataType.FLOAT, ir.DataType.FLOAT16}
_CARRY = frozenset({"Cast", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})


@dataclasses.dataclass(frozen=True)
class DecoderInputs:
    """The names of a decoder's inputs: its token ids, and its mask and position ids if it
    takes them."""

    ids: str
    mask: str | None = None
    positions: str | None = None

    def feed(self, model: ir.Model, ids: np.ndarray) -> dict[str, np.ndarray]:
        """Every input of ``model`` for a run on token ids ``[batch, sequence]``."""
        values = {value.name: value for value in model.graph.inputs}
        result = {self.ids: ids.astype(_numpy(values[self.ids]))}
        if self.mask is not None:
            result[self.mask] = np.ones(ids.shape, dtype=_numpy(values[self.mask]))
        if self.positions is not None:
            positions = np.broadcast_to(np.arange(ids.shape[-1]), ids.shape)
            result[self.positions] = positions.astype(_numpy(values[self.positions]))
        return result

    def vocabulary(self, model: ir.Model) -> int | None:
        """The rows of the smallest table the token ids index (None: they index none)."""
        tokens = next(value for value in model.graph.inputs if value.name == self.ids)
        return min(_tables_indexed_by(tokens), default=None)


def decoder_inputs(model: ir.Model, what: str = "kirinc") -> DecoderInputs:
    """Which of ``model``'s inputs are the token ids, the attention mask and the position ids;
    ``what`` (the command or option that feeds them) names the caller in an error."""
    inputs = list(model.graph.inputs)
    ids = _token_ids(inputs)
    if ids is None:
        names = ", ".join(f"{v.name} ({_type(v)})" for v in inputs)
        raise KirinError(f"{what} feeds token ids, but no input of the model looks them up in an "
                         f"embedding table (its inputs: {names})")
    found = {"ids": ids.name}
    for value in inputs:
        if value is ids:
            continue
        kind = _kind(value)
        if kind is None or kind in found:
            reason = "a second " + kind.replace("_", " ") if kind in found else "none of these"
            raise KirinError(
                f"{what} gives a decoder its token ids, an attention mask of ones and position ids "
                f"0..n-1; the model's input '{value.name}' ({_type(value)}) is {reason}: export the "
                "model with those inputs only"
            )
        found[kind] = value.name
    return DecoderInputs(**found)


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


def _tables_indexed_by(value: ir.Value) -> list[int]:
    """The row counts of the constant tables ``value`` indexes, directly or through ops that
    only cast or reshape it."""
    rows = []
    frontier = [value]
    while frontier:
        current = frontier.pop()
        for user, index in current.uses():
            if user.op_type in _CARRY and index == 0:
                frontier.extend(user.outputs)
            elif user.op_type == "Gather" and index == 1:
                table = user.inputs[0].const_value
                if table is not None and len(table.shape) == 2:
                    rows.append(table.shape[0])
    return rows


def _kind(value: ir.Value) -> str | None:
    rank = len(value.shape) if value.shape is not None else None
    if rank not in (2, None):
        return None
    name = value.name.lower()
    if re.search(r"mask", name) and value.dtype in _MASK_TYPES:
        return "mask"
    if re.search(r"position", name) and value.dtype in _INTEGER:
        return "positions"
    return None


def _numpy(value: ir.Value) -> np.dtype:
    return value.dtype.numpy()


def _type(value: ir.Value) -> str:
    dims = ", ".join(map(str, value.shape)) if value.shape is not None else "?"
    return f"{value.dtype.name if value.dtype is not None else '?'}[{dims}]"
