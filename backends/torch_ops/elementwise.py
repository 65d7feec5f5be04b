"""Elementwise operators: arithmetic, math functions, rounding, bitwise operators, comparisons,
logic, activations, variadic reductions (``Max``, ``Sum``...) and casts.

ONNX broadcasting is numpy's, which torch follows. ONNX requires both operands of a binary
operator to have one type, so torch's type promotion never applies, except where ONNX allows
mixed types (``Pow``'s exponent, ``Shrink``'s float attributes on integers): there the function
computes wide enough and casts back to the input's type. Where ONNX pins down what C or torch
leave otherwise (integer division, ``Mod``'s signs, out-of-range shifts, ``Round``'s ties, the
sign of NaN, float64 to float16 rounding), the function says how it follows ONNX.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from kirin_compiler import arithmetic
from kirin_compiler.backends.torch_ops._table import OpTable, torch_dtype

table = OpTable()


# Operators whose ONNX semantics are exactly a torch function's (the same inputs, no attributes):
# the table holds the torch function itself, and generated code calls it by its torch name.
for _name, _function in {
    "Add": torch.add,
    "Sub": torch.sub,
    "Mul": torch.mul,
    "Neg": torch.neg,
    "Abs": torch.abs,
    "Reciprocal": torch.reciprocal,
    "Sqrt": torch.sqrt,
    "Exp": torch.exp,
    "Log": torch.log,
    "Sin": torch.sin,
    "Cos": torch.cos,
    "Tan": torch.tan,
    "Asin": torch.asin,
    "Acos": torch.acos,
    "Atan": torch.atan,
    "Sinh": torch.sinh,
    "Cosh": torch.cosh,
    "Tanh": torch.tanh,
    "Asinh": torch.asinh,
    "Acosh": torch.acosh,
    "Atanh": torch.atanh,
    "Erf": torch.erf,
    "Ceil": torch.ceil,
    "Floor": torch.floor,
    "Round": torch.round,  # halves to even, as ONNX asks
    "BitwiseAnd": torch.bitwise_and,
    "BitwiseOr": torch.bitwise_or,
    "BitwiseXor": torch.bitwise_xor,
    "BitwiseNot": torch.bitwise_not,
    "Equal": torch.eq,
    "Less": torch.lt,
    "LessOrEqual": torch.le,
    "Greater": torch.gt,
    "GreaterOrEqual": torch.ge,
    "IsNaN": torch.isnan,
    "And": torch.logical_and,
    "Or": torch.logical_or,
    "Xor": torch.logical_xor,
    "Not": torch.logical_not,
    "Where": torch.where,
    "Sigmoid": torch.sigmoid,
    "Relu": torch.relu,
}.items():
    table.op(_name)(_function)


# Arithmetic ---------------------------------------------------------------------------------------


@table.op("Div")
def div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype.is_floating_point:
        return torch.div(a, b)
    return torch.div(a, b, rounding_mode="trunc")  # integer division truncates, as in C


@table.op("Mod")
def mod(a: torch.Tensor, b: torch.Tensor, *, fmod: int = 0) -> torch.Tensor:
    """fmod=0: a - floor(a / b) * b (sign of b); fmod=1: a - trunc(a / b) * b (sign of a)."""
    if fmod:
        return torch.fmod(a, b)
    result = torch.remainder(a, b)
    if not result.dtype.is_floating_point:
        return result
    # ONNX gives a zero remainder the sign of b (torch keeps a's sign when a is ±0)
    return torch.where(result == 0, torch.copysign(torch.zeros_like(result), b), result)


@table.op("Pow")
def pow_(base: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    if exponent.dtype.is_floating_point and not base.dtype.is_floating_point:
        # an integer base is raised in float64, which holds it exactly (float32 would round it)
        return torch.pow(base.double(), exponent.double()).to(base.dtype)
    if exponent.dim() == 0 and base.dtype == exponent.dtype:
        # A scalar exponent (x ** 2 in every RMSNorm) takes torch's fast paths (square, sqrt).
        return torch.pow(base, exponent.item())
    return _convert(torch.pow(base, exponent), base.dtype)  # the result has the base's type


@table.op("Sign")
def sign(x: torch.Tensor) -> torch.Tensor:
    if x.dtype.is_floating_point:
        return torch.where(torch.isnan(x), x, torch.sign(x))  # torch.sign maps NaN to 0
    return torch.sign(x)




# Bitwise operators --------------------------------------------------------------------------------


@table.op("BitShift")
def bit_shift(x: torch.Tensor, shift: torch.Tensor, *, direction: str) -> torch.Tensor:
    # ONNX defines a shift by a negative amount or by the bit width or more (undefined in C) as
    # the sign fill alone: -1 for a right shift of a negative x, 0 otherwise.
    bits = torch.iinfo(x.dtype).bits
    out_of_range = (shift < 0) | (shift >= bits)
    if direction == "RIGHT" and x.dtype.is_signed:
        return torch.bitwise_right_shift(x, shift.masked_fill(out_of_range, bits - 1))
    shifter = torch.bitwise_left_shift if direction == "LEFT" else torch.bitwise_right_shift
    return shifter(x, shift.masked_fill(out_of_range, 0)).masked_fill(out_of_range, 0)


# Comparisons and logic ----------------------------------------------------------------------------


@table.op("IsInf")
def isinf(x: torch.Tensor, *, detect_negative: int = 1, detect_positive: int = 1) -> torch.Tensor:
    return (torch.isposinf(x) & bool(detect_positive)) | (torch.isneginf(x) & bool(detect_negative))


@table.op("Clip")
def clip(
    x: torch.Tensor, low: torch.Tensor | None = None, high: torch.Tensor | None = None
) -> torch.Tensor:
    if low is None and high is None:
        return x  # torch.clamp refuses to clamp with neither bound
    # torch.clamp is min(max(x, low), high): all elements are `high` when low > high, as in ONNX
    return torch.clamp(x, low, high)


# Activations --------------------------------------------------------------------------------------


@table.op("HardSigmoid")
def hard_sigmoid(x: torch.Tensor, *, alpha: float = 0.2, beta: float = 0.5) -> torch.Tensor:
    """max(0, min(1, alpha * x + beta))"""
    return torch.clamp(alpha * x + beta, 0.0, 1.0)


@table.op("HardSwish")
def hard_swish(x: torch.Tensor) -> torch.Tensor:
    """x * max(0, min(1, x / 6 + 1 / 2))"""
    return F.hardswish(x)


@table.op("LeakyRelu")
def leaky_relu(x: torch.Tensor, *, alpha: float = 0.01) -> torch.Tensor:
    return F.leaky_relu(x, alpha)


@table.op("PRelu")
def prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    # slope broadcasts to x in any shape, which F.prelu (one slope per channel) does not allow
    return torch.where(x < 0, slope * x, x)


@table.op("ThresholdedRelu")
def thresholded_relu(x: torch.Tensor, *, alpha: float = 1.0) -> torch.Tensor:
    return torch.where(x > alpha, x, 0)


@table.op("Elu")
def elu(x: torch.Tensor, *, alpha: float = 1.0) -> torch.Tensor:
    """x if x >= 0 else alpha * (exp(x) - 1)"""
    return F.elu(x, alpha)


@table.op("Celu")
def celu(x: torch.Tensor, *, alpha: float = 1.0) -> torch.Tensor:
    """max(0, x) + min(0, alpha * (exp(x / alpha) - 1))"""
    return F.celu(x, alpha)


@table.op("Selu")
def selu(
    x: torch.Tensor,
    *,
    alpha: float = 1.67326319217681884765625,
    gamma: float = 1.05070102214813232421875,
) -> torch.Tensor:
    """gamma * (x if x > 0 else alpha * (exp(x) - 1))"""
    # torch.selu has the default alpha and gamma built in; the attributes may differ
    return gamma * torch.where(x > 0, x, alpha * torch.expm1(x))


@table.op("Gelu")
def gelu(x: torch.Tensor, *, approximate: str = "none") -> torch.Tensor:
    return F.gelu(x, approximate=approximate)


@table.op("Swish")
def swish(x: torch.Tensor, *, alpha: float = 1.0) -> torch.Tensor:
    return x * torch.sigmoid(alpha * x)


@table.op("SwiGLU")
def swiglu(a: torch.Tensor, b: torch.Tensor, *, alpha: float = 1.0) -> torch.Tensor:
    """a * sigmoid(alpha * a) * b"""
    return swish(a, alpha=alpha) * b


@table.op("Mish")
def mish(x: torch.Tensor) -> torch.Tensor:
    """x * tanh(log(1 + exp(x)))"""
    return F.mish(x)


@table.op("Softplus")
def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + exp(x))"""
    # F.softplus returns x itself above 20, off by up to 2e-9 (visible in float64)
    return torch.logaddexp(x, torch.zeros_like(x))


@table.op("Softsign")
def softsign(x: torch.Tensor) -> torch.Tensor:
    """x / (1 + |x|)"""
    return F.softsign(x)


@table.op("Shrink")
def shrink(x: torch.Tensor, *, bias: float = 0.0, lambd: float = 0.5) -> torch.Tensor:
    """x + bias if x < -lambd, x - bias if x > lambd, else 0"""
    # integers meet the float bias in float64, which holds int32 exactly; ONNX keeps x's type
    values = x if x.dtype.is_floating_point else x.double()
    shrunk = torch.where(values > lambd, values - bias, 0)
    return torch.where(values < -lambd, values + bias, shrunk).to(x.dtype)


# Variadic operators -------------------------------------------------------------------------------


@table.op("Max")
def max_(*inputs: torch.Tensor) -> torch.Tensor:
    return functools.reduce(torch.maximum, inputs)  # NaN wins, as in numpy


@table.op("Min")
def min_(*inputs: torch.Tensor) -> torch.Tensor:
    return functools.reduce(torch.minimum, inputs)


@table.op("Sum")
def sum_(*inputs: torch.Tensor) -> torch.Tensor:
    return functools.reduce(torch.add, inputs)


@table.op("Mean")
def mean(*inputs: torch.Tensor) -> torch.Tensor:
    return torch.div(sum_(*inputs), len(inputs))


# Casts --------------------------------------------------------------------------------------------
# torch converts as ONNX asks: floats to integers truncate toward zero, integers wrap to a
# narrower integer type, anything nonzero (NaN too) is true as a bool. A float out of an integer
# type's range (NaN and infinities included) is undefined in ONNX and whatever torch gives.
# ``saturate`` and ``round_mode`` only concern float8 and float4 targets, which are not claimed.


@table.op("Cast")
def cast(x: torch.Tensor, *, to: int, saturate: int = 1, round_mode: str = "up") -> torch.Tensor:
    del saturate, round_mode
    return _convert(x, torch_dtype(to))


@table.op("CastLike")
def cast_like(
    x: torch.Tensor, target: torch.Tensor, *, saturate: int = 1, round_mode: str = "up"
) -> torch.Tensor:
    del saturate, round_mode
    return _convert(x, target.dtype)


def _convert(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if x.dtype == torch.float64 and dtype == torch.float16:
        return _double_to_half(x)
    return x.to(dtype)


def _double_to_half(x: torch.Tensor) -> torch.Tensor:
    # torch converts float64 to float16 through float32, rounding twice, which is off by one ulp
    # near float16 ties. Rounding to float32 toward an odd last bit (round-to-odd) instead keeps
    # the information the second rounding needs, so the result is rounded once, to nearest even.
    single = x.to(torch.float32)
    inexact = single.double() != x
    even = (single.view(torch.int32) & 1) == 0
    toward_x = torch.where(single.double() > x, -torch.inf, torch.inf).to(torch.float32)
    return torch.where(inexact & even, torch.nextafter(single, toward_x), single).to(torch.float16)


@table.op("BitCast")
def bit_cast(x: torch.Tensor, *, to: int) -> torch.Tensor:
    return x.view(torch_dtype(to))  # ONNX requires the same bit width, so the shape is kept


@table.op("Identity")
def identity(x: torch.Tensor) -> torch.Tensor:
    return x



# Quantization -------------------------------------------------------------------------------------
# A QDQ model (onnxruntime's quantize_static, 4-bit hub files) carries its integers through these.
# 4-bit codes arrive widened to int8/uint8 (the backend widens INT4/UINT4 constants).


@table.op("DequantizeLinear")
def dequantize_linear(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None, *,
    axis: int = 1, block_size: int = 0, output_dtype: int = 0, precision: int = 0,
) -> torch.Tensor:
    """``y = (x - zero_point) * scale``, the scale per tensor, per ``axis`` or per block of
    ``block_size`` along it; integers subtracted in int32, as exactly as onnxruntime."""
    del precision
    y = arithmetic.dequantize(x, scale, zero_point, axis, block_size)
    return y if not output_dtype else y.to(torch_dtype(output_dtype))


@table.op("QuantizeLinear")
def quantize_linear(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None, *,
    axis: int = 1, block_size: int = 0, output_dtype: int = 0, saturate: int = 1, precision: int = 0,
) -> torch.Tensor:
    """``y = saturate(round(x / scale) + zero_point)``, ties to even, into the zero point's type
    (``output_dtype``, else uint8)."""
    del saturate, precision
    dtype = zero_point.dtype if zero_point is not None else torch_dtype(output_dtype) if output_dtype else torch.uint8
    if dtype.is_floating_point:
        raise NotImplementedError("QuantizeLinear to a float type (float8) is not supported by the torch backend")
    scale_ = arithmetic.quantization_parameter(scale, x.shape, axis, block_size).to(torch.float32)
    y = torch.round(x.to(torch.float32) / scale_)
    if zero_point is not None:
        y = y + arithmetic.quantization_parameter(zero_point, x.shape, axis, block_size).to(torch.float32)
    info = torch.iinfo(dtype)
    return torch.clamp(y, info.min, info.max).to(dtype)


@table.op("DynamicQuantizeLinear")
def dynamic_quantize_linear(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 codes of ``x`` over ``[min(0, min x), max(0, max x)]``, its scale and zero point
    (rounded half to even, as ONNX asks)."""
    low, high = torch.clamp(x.min(), max=0.0), torch.clamp(x.max(), min=0.0)
    scale = (high - low) / 255.0
    zero_point = torch.clamp(torch.round(-low / scale), 0, 255)
    y = torch.clamp(torch.round(x / scale) + zero_point, 0, 255)
    return y.to(torch.uint8), scale.to(torch.float32), zero_point.to(torch.uint8)
