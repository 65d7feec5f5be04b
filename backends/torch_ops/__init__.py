"""ONNX operators written as torch functions: the op table of the torch backend.

Each ONNX operator is one function with the ONNX semantics exactly (broadcasting, negative axes,
``Reshape``'s 0 and -1, ``Slice`` steps, integer division, casts): a torch function itself where
its semantics are exactly the operator's (``Add`` is ``torch.add``), else a small function whose
positional parameters are the operator's inputs (``None`` for a missing optional one) and whose
keyword-only parameters are the operator's attributes, with the ONNX defaults. A function
returns a tensor, or a tuple of tensors for an operator with several outputs.

`OnnxOp.static_inputs` names the inputs that are integer lists in practice (shapes, axes,
starts and ends, repeats): when such an input is a constant, the lowering writes it into the
generated code as a Python list (``reshape(v3, [0, 0, 4, 16])``), and the function accepts a
list or a tensor there.

The table is assembled from one module per family of operators; `OPS` maps an operator name to
its `OnnxOp`. To add an operator, write its function in the module of its family, register it
with ``@table.op("Name", static_inputs=(...))``, and run the conformance tests
(``tests/test_onnx_conformance.py``), which pick it up by name.
"""

from __future__ import annotations

import torch.fx.graph

from kirin_compiler.backends.torch_ops._table import OnnxOp, OpTable
from kirin_compiler.backends.torch_ops import elementwise, nn, shape

OPS: dict[str, OnnxOp] = OpTable.merge(elementwise.table, shape.table, nn.table)

# Generated code names each function ``onnx_<name>`` instead of its full module path
# (``v3 = onnx_reshape(v2, [0, 0, 4, 16])``): fx's table of names it may use as globals.
for _op in OPS.values():
    if _op.fn.__module__ is None or _op.fn.__module__.startswith("torch"):
        continue  # torch's own functions print as torch.<name>
    _name = f"onnx_{_op.fn.__name__.rstrip('_')}"
    torch.fx.graph._register_custom_builtin(
        _name, f"from {_op.fn.__module__} import {_op.fn.__name__} as {_name}", _op.fn
    )

__all__ = ["OPS", "OnnxOp"]
