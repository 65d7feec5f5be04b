"""Elementwise operators: arithmetic, comparisons, logic, activations and casts.

ONNX broadcasting is numpy's, which torch follows; ONNX requires both operands of a binary
operator to have one type, so torch's type promotion never applies.
"""

from __future__ import annotations

import torch

from kirin_compiler.backends.torch_ops._table import OpTable, torch_dtype

table = OpTable()


@table.op("Add")
def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.add(a, b)


@table.op("Sub")
def sub(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.sub(a, b)


@table.op("Mul")
def mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.mul(a, b)


@table.op("Div")
def div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if a.dtype.is_floating_point:
        return torch.div(a, b)
    return torch.div(a, b, rounding_mode="trunc")  # integer division truncates, as in C


@table.op("Pow")
def pow_(base: torch.Tensor, exponent: torch.Tensor) -> torch.Tensor:
    return torch.pow(base, exponent).to(base.dtype)  # the result has the base's type


@table.op("Neg")
def neg(x: torch.Tensor) -> torch.Tensor:
    return torch.neg(x)


@table.op("Sqrt")
def sqrt(x: torch.Tensor) -> torch.Tensor:
    return torch.sqrt(x)


@table.op("Reciprocal")
def reciprocal(x: torch.Tensor) -> torch.Tensor:
    return torch.reciprocal(x)


@table.op("Exp")
def exp(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(x)


@table.op("Log")
def log(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x)


@table.op("Sin")
def sin(x: torch.Tensor) -> torch.Tensor:
    return torch.sin(x)


@table.op("Cos")
def cos(x: torch.Tensor) -> torch.Tensor:
    return torch.cos(x)


@table.op("Tanh")
def tanh(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(x)


@table.op("Erf")
def erf(x: torch.Tensor) -> torch.Tensor:
    return torch.erf(x)


@table.op("Sigmoid")
def sigmoid(x: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(x)


@table.op("Relu")
def relu(x: torch.Tensor) -> torch.Tensor:
    return torch.relu(x)


@table.op("Gelu")
def gelu(x: torch.Tensor, *, approximate: str = "none") -> torch.Tensor:
    return torch.nn.functional.gelu(x, approximate=approximate)


@table.op("IsNaN")
def isnan(x: torch.Tensor) -> torch.Tensor:
    return torch.isnan(x)


@table.op("Equal")
def equal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.eq(a, b)


@table.op("Less")
def less(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.lt(a, b)


@table.op("LessOrEqual")
def less_or_equal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.le(a, b)


@table.op("Greater")
def greater(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.gt(a, b)


@table.op("GreaterOrEqual")
def greater_or_equal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.ge(a, b)


@table.op("And")
def and_(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.logical_and(a, b)


@table.op("Or")
def or_(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.logical_or(a, b)


@table.op("Not")
def not_(x: torch.Tensor) -> torch.Tensor:
    return torch.logical_not(x)


@table.op("Where")
def where(condition: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.where(condition, x, y)


@table.op("Max")
def max_(*inputs: torch.Tensor) -> torch.Tensor:
    result = inputs[0]
    for other in inputs[1:]:
        result = torch.maximum(result, other)
    return result


@table.op("Min")
def min_(*inputs: torch.Tensor) -> torch.Tensor:
    result = inputs[0]
    for other in inputs[1:]:
        result = torch.minimum(result, other)
    return result


@table.op("Cast")
def cast(x: torch.Tensor, *, to: int, saturate: int = 1) -> torch.Tensor:
    del saturate  # only float8 targets saturate; they are not claimed
    return x.to(torch_dtype(to))


@table.op("CastLike")
def cast_like(x: torch.Tensor, target: torch.Tensor, *, saturate: int = 1) -> torch.Tensor:
    del saturate
    return x.to(target.dtype)


@table.op("Identity")
def identity(x: torch.Tensor) -> torch.Tensor:
    return x
