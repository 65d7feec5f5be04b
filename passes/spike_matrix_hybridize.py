"""``spike-matrix-hybridize``: split every quantized product into its spike and integer paths.

Rewrite rule, for every ``QMatMul(qN, s_N, Wq, s_w, [qO, s_O], [r], [z])``
(``docs/arithmetic.md``, section 3):

1. ``V = SpikeMatMul(qN, Wq, [r], [z])``: the spike matrix's product, accumulated from 4-bit
   TTFS spikes on the synapses ``r * Wq + z``;
2. ``U = IntMatMul(qO, Wq, [r], [z])``: the outliers' product, 8-bit integer
   multiply-accumulates (only when the quantizer has outliers);
3. ``Y = Rescale(V, s_N, s_w, [U, s_O])``: ``((s_N * V) + (s_O * U)) * s_w``, the only float part.

The three nodes keep the product's role and layer; ``Y`` keeps the product's output value, so
the rest of the graph is untouched.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from kirin_compiler import rewrite
from kirin_compiler.kirin_ops import INT_MATMUL, QMATMUL, RESCALE, SPIKE_MATMUL, is_kirin
from kirin_compiler.pass_manager import Pass


@dataclasses.dataclass(frozen=True)
class SpikeMatrixHybridizePass(Pass):
    """Every quantized product split into a spike part (4-bit TTFS) and an integer part (8-bit
    outliers), then rescaled."""

    name = "spike-matrix-hybridize"
    requires_passes = ("quantize",)
    runs_once = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        products = [n for n in model.graph if is_kirin(n, QMATMUL)]
        for node in products:
            _split(model.graph, node)
        return ir.passes.PassResult(model, bool(products))


def _split(graph: ir.Graph, node: ir.Node) -> None:
    inputs = list(node.inputs) + [None] * (8 - len(node.inputs))
    codes, scale, weights, weight_scale, outlier_codes, outlier_scale, block_scale, block_offset = inputs
    integer = {"group": node.attributes["group"].value}
    meta = dict(node.metadata_props)
    name = node.name
    synapses = [weights, block_scale, block_offset]
    spike = rewrite.kirin_node(SPIKE_MATMUL, [codes, *synapses], integer, f"{name}.spike", [f"{name}.V"], meta)
    new = [spike]
    rescale_inputs = [spike.outputs[0], scale, weight_scale]
    if outlier_codes is not None:
        int_path = rewrite.kirin_node(
            INT_MATMUL, [outlier_codes, *synapses], integer, f"{name}.int", [f"{name}.U"], meta
        )
        new.append(int_path)
        rescale_inputs += [int_path.outputs[0], outlier_scale]
    for value in (n.outputs[0] for n in new):
        value.type = ir.TensorType(ir.DataType.INT32)
    rescale = rewrite.kirin_node(RESCALE, rescale_inputs, {}, node.name, [node.name], meta)
    new.append(rescale)
    rewrite.replace(graph, [node], new, list(node.outputs), list(rescale.outputs))
