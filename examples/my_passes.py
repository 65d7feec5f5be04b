# examples/my_passes.py
"""An example kirin_compiler pass: multiplying by one is a no-op, so drop it."""

import dataclasses

import numpy as np
import onnx_ir as ir

from kirin_compiler import Pass


@dataclasses.dataclass(frozen=True)
class DropMulByOnePass(Pass):
    """Removes Mul nodes whose constant operand is all ones (within a tolerance).

    Rewrite rules:

    1. ``Mul(x, c)`` or ``Mul(c, x)`` with a constant ``c`` whose every element is within
       ``tolerance`` of 1 becomes ``x``, provided ``c`` does not broadcast ``x`` to a larger
       shape (``c``'s shape is all ones, or equals the trailing dimensions of ``x``).
    2. A ``Mul`` whose result is a graph output is kept, so that output names never change.
    """

    name = "drop-mul-by-one"
    requires_passes = ("canonicalize",)
    tolerance: float = 0.0

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in list(model.graph):
            if node.op_type != "Mul":
                continue  # rule 1: only products
            if node.outputs[0].is_graph_output():
                continue  # rule 2: keep the output's name
            kept = self._operand_kept(*node.inputs)
            if kept is None:
                continue  # no all-ones constant, or it broadcasts
            node.outputs[0].replace_all_uses_with(kept)
            model.graph.remove(node, safe=True)
            modified = True
        return ir.passes.PassResult(model, modified)

    def _operand_kept(self, a: ir.Value, b: ir.Value) -> ir.Value | None:
        for constant, other in ((a, b), (b, a)):
            if constant.const_value is None or other.shape is None:
                continue
            values = constant.const_value.numpy()
            if not np.all(np.abs(values - 1) <= self.tolerance):
                continue
            trailing = tuple(other.shape)[len(other.shape) - values.ndim :]
            if values.ndim <= len(other.shape) and (
                all(d == 1 for d in values.shape) or trailing == values.shape
            ):
                return other
        return None
