"""The op-table type shared by the families of operators, and helpers their functions share."""

from __future__ import annotations

import warnings

import dataclasses
import inspect
from typing import Callable, Sequence

import ml_dtypes
import numpy as np
import onnx
import torch


@dataclasses.dataclass(frozen=True)
class OnnxOp:
    """One ONNX operator: its torch function, which inputs are integer lists, and whether the
    function returns a tuple (an operator with optional extra outputs, like
    ``LayerNormalization``'s mean and inverse standard deviation)."""

    name: str
    fn: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]]
    static_inputs: tuple[int, ...] = ()
    multi_output: bool = False

    @property
    def attributes(self) -> frozenset[str]:
        """The attribute names the function accepts (its keyword-only parameters)."""
        try:
            parameters = inspect.signature(self.fn).parameters
        except ValueError:  # a torch builtin registered as it is: it takes no attributes
            return frozenset()
        return frozenset(
            name
            for name, parameter in parameters.items()
            if parameter.kind is inspect.Parameter.KEYWORD_ONLY
        )


class OpTable:
    """The operators of one family; ``@table.op("Add")`` registers a function."""

    def __init__(self) -> None:
        self.ops: dict[str, OnnxOp] = {}

    def op(
        self, *names: str, static_inputs: Sequence[int] = (), multi_output: bool = False
    ) -> Callable:
        def register(fn: Callable) -> Callable:
            for name in names:
                if name in self.ops:
                    raise ValueError(f"ONNX operator {name} is registered twice")
                self.ops[name] = OnnxOp(name, fn, tuple(static_inputs), multi_output)
            return fn

        return register

    @staticmethod
    def merge(*tables: OpTable) -> dict[str, OnnxOp]:
        merged: dict[str, OnnxOp] = {}
        for table in tables:
            for name, op in table.ops.items():
                if name in merged:
                    raise ValueError(f"ONNX operator {name} is registered twice")
                merged[name] = op
        return dict(sorted(merged.items()))


def ints(values: torch.Tensor | Sequence[int] | None) -> list[int] | None:
    """An integer list given as a constant list or as a runtime tensor."""
    if values is None:
        return None
    if isinstance(values, torch.Tensor):
        return [int(v) for v in values.reshape(-1).tolist()]
    return [int(v) for v in values]


def axis(value: int, rank: int) -> int:
    """A possibly negative ONNX axis as a non-negative one."""
    return value + rank if value < 0 else value


# The data types the table claims. torch lacks most kernels for uint16/32/64, and the float8
# and 4-bit types are left for when a model needs them.
_DTYPES = {
    onnx.TensorProto.FLOAT: torch.float32,
    onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16,
    onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT8: torch.int8,
    onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32,
    onnx.TensorProto.INT64: torch.int64,
    onnx.TensorProto.UINT8: torch.uint8,
    onnx.TensorProto.BOOL: torch.bool,
}


def torch_dtype(onnx_dtype: int) -> torch.dtype:
    """The torch dtype of an ONNX ``TensorProto`` data type (``Cast``'s ``to``)."""
    try:
        return _DTYPES[onnx_dtype]
    except KeyError:
        name = onnx.TensorProto.DataType.Name(onnx_dtype)
        raise NotImplementedError(f"data type {name} is not supported by the torch backend") from None


def supported_dtypes() -> frozenset[int]:
    return frozenset(_DTYPES)


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A numpy array (a constant, an attribute or an input) as a torch tensor, copied."""
    if array.dtype == ml_dtypes.bfloat16:  # numpy's bfloat16 is ml_dtypes', which torch cannot read
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(array, copy=True))


def as_array(tensor: torch.Tensor) -> np.ndarray:
    """A torch tensor (an output) as a numpy array; bfloat16 as ml_dtypes' bfloat16."""
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def shared_tensor(array: np.ndarray) -> torch.Tensor:
    """A torch tensor sharing the memory of ``array`` (a model constant, possibly a read-only
    memory map of external data). Only for tensors nothing writes to."""
    if array.dtype.kind not in "biuf" or not array.flags.c_contiguous and not array.flags.f_contiguous:
        return as_tensor(array)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not writable": we never write to it
        return torch.from_numpy(array)
