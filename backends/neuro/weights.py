"""The weights file of a listing: the model's constants, one after another, as raw bytes.

Each tensor starts at a multiple of `ALIGNMENT` bytes and is stored as ONNX stores its raw
data: little-endian elements, 4-bit codes two to a byte (the first in the low nibble). The
listing's ``.tensor`` lines say where each one lies (``at`` offset, ``size`` bytes) and what
it is (data type, shape, the model's name for it); nothing else is in the file.
"""

from __future__ import annotations

import hashlib

import ml_dtypes
import numpy as np
import onnx_ir as ir

from kirin_compiler import printer

ALIGNMENT = 64

_FOUR_BIT = {"i4": (ml_dtypes.int4, True), "u4": (ml_dtypes.uint4, False)}


def dtype_name(dtype: ir.DataType) -> str:
    """The listing's name of a data type (the IR dump's: ``f32``, ``i4``, ``bool``)."""
    return printer.format_dtype(dtype)


def data_type(name: str) -> ir.DataType | None:
    """The data type a listing names, or None for a name that is not one."""
    return _DATA_TYPES.get(name)


def _names() -> dict[str, ir.DataType]:
    names = {}
    for dtype in ir.DataType:
        try:
            names[dtype_name(dtype)] = dtype
        except (TypeError, ValueError):  # UNDEFINED has no short name
            continue
    return names


_DATA_TYPES = _names()


class Writer:
    """Collects tensors into the bytes of a weights file."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, tensor: ir.TensorProtocol) -> tuple[int, int]:
        """Appends ``tensor``; returns its offset and size in bytes."""
        padding = -self.size % ALIGNMENT
        if padding:
            self.parts.append(bytes(padding))
            self.size += padding
        data = tensor.tobytes()
        offset = self.size
        self.parts.append(data)
        self.size += len(data)
        return offset, len(data)

    def data(self) -> bytes:
        return b"".join(self.parts)


def sha256(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def read(data: bytes | memoryview, dtype: str, shape: tuple[int, ...], offset: int, size: int) -> np.ndarray:
    """The array stored at ``offset``: as ``tensor.numpy()`` gives it (4-bit codes as
    ml_dtypes' int4 or uint4)."""
    raw = np.frombuffer(data, dtype=np.uint8, count=size, offset=offset)
    count = int(np.prod(shape, dtype=np.int64))
    if dtype in _FOUR_BIT:
        kind, signed = _FOUR_BIT[dtype]
        nibbles = np.stack([raw & 0x0F, raw >> 4], axis=-1).reshape(-1)[:count]
        values = nibbles.astype(np.int8)
        if signed:
            values = np.where(values > 7, values - 16, values).astype(np.int8)
        return values.astype(kind).reshape(shape)
    return np.frombuffer(raw.tobytes(), dtype=data_type(dtype).numpy()).reshape(shape)


def expected_size(dtype: str, shape: tuple[int, ...]) -> int | None:
    """The bytes a tensor of ``dtype`` and ``shape`` takes (None for an unknown type)."""
    kind = data_type(dtype)
    if kind is None or kind == ir.DataType.STRING:
        return None
    count = int(np.prod(shape, dtype=np.int64))
    return (count * kind.bitwidth + 7) // 8
