"""``threshold-insert``: TTFS neurons with silence-threshold schedules wherever spikes are sent.

Rewrite rules (``docs/arithmetic.md``, sections 4 and 6), in this order:

1. Fused output neurons. A spiking product whose output reaches the next product only through
   an optional constant bias and a ``Relu``, where that product's quantizer has a static scale
   (OPT's ``fc1 -> ReLU -> fc2``)::

       Rescale(V, ...) [-> Add(bias)] -> Relu -> ActQuant{scale=static}

   becomes one ``TTFSNeuron``: the first product's output neurons integrate ``V`` (silent
   phase), then fire the second product's spikes themselves, with the threshold
   ``theta(t) = T - t - 1/2`` on the membrane normalized by the output step. A negative membrane
   never fires: the ReLU comes for free. Every intermediate value must have no other reader.
2. Encoders. Every other ``ActQuant`` whose codes a ``SpikeMatMul`` reads as spikes becomes a
   ``TTFSEncoder``: the same codes, fired by neurons over a window of ``T = 2^(bits-1)`` steps
   (signed) or ``2^bits`` (unsigned).

``silent=false`` removes the silent phase of the fused neurons (they compare their membrane
while it still integrates): an ablation that breaks exactness, for tests and the docs.
"""

from __future__ import annotations

import dataclasses

import onnx_ir as ir

from kirin_compiler import arithmetic, rewrite
from kirin_compiler.kirin_ops import (
    ACT_QUANT,
    RESCALE,
    SPIKE_MATMUL,
    TTFS_ENCODER,
    TTFS_NEURON,
    is_kirin,
)
from kirin_compiler.pass_manager import Pass


@dataclasses.dataclass(frozen=True)
class ThresholdInsertPass(Pass):
    """TTFS encoders, and fused output neurons where a spiking product feeds the next one
    directly, with silence-threshold schedules."""

    name = "threshold-insert"
    requires_passes = ("spike-matrix-hybridize",)
    runs_once = True

    silent: bool = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in [n for n in graph if is_kirin(n, RESCALE)]:
            modified |= self._fuse(graph, node)
        for node in [n for n in graph if is_kirin(n, ACT_QUANT)]:
            if any(is_kirin(u.node, SPIKE_MATMUL) and u.idx == 0 for u in node.outputs[0].uses()):
                _make_encoder(graph, node)
                modified = True
        return ir.passes.PassResult(model, modified)

    def _fuse(self, graph: ir.Graph, rescale: ir.Node) -> bool:
        chain = _relu_chain(rescale)
        if chain is None:
            return False  # not product -> [bias] -> ReLU -> static quantizer
        bias_add, relu, quantizer = chain
        spike_acc, scale, weight_scale, *outlier = list(rescale.inputs) + [None, None]
        bias = bias_add.inputs[1] if bias_add is not None else None
        out_inputs = list(quantizer.inputs[1:]) + [None] * (4 - len(quantizer.inputs))
        bits = quantizer.attributes["bits"].value
        attributes = {
            "bits": bits,
            "window": arithmetic.window(bits, signed=False),
            "silent": int(self.silent),
            "outliers": quantizer.attributes["outliers"].value,
        }
        inputs = [spike_acc, scale, weight_scale, outlier[0], outlier[1], bias, *out_inputs[:3]]
        outputs = [v.name for v in quantizer.outputs]
        neuron = rewrite.kirin_node(
            TTFS_NEURON, inputs, attributes, f"{rescale.name}.neuron", outputs, dict(rescale.metadata_props)
        )
        old = [n for n in (rescale, bias_add, relu, quantizer) if n is not None]
        rewrite.replace(graph, old, [neuron], list(quantizer.outputs), list(neuron.outputs))
        return True


def _relu_chain(rescale: ir.Node) -> tuple[ir.Node | None, ir.Node, ir.Node] | None:
    """``(bias Add or None, Relu, ActQuant)`` after ``rescale``, each the only reader."""
    spike_source = rescale.inputs[0].producer()
    if spike_source is None or len(rescale.inputs[0].uses()) != 1:
        return None
    node = _only_reader(rescale.outputs[0])
    bias_add = None
    if node is not None and node.op_type == "Add" and node.inputs[0] is rescale.outputs[0]:
        if node.inputs[1] is None or node.inputs[1].const_value is None:
            return None
        bias_add, node = node, _only_reader(node.outputs[0])
    if node is None or node.op_type != "Relu":
        return None
    quantizer = _only_reader(node.outputs[0])
    if quantizer is None or not is_kirin(quantizer, ACT_QUANT):
        return None
    a = quantizer.attributes
    if a["scale"].value != "static" or a["signed"].value or a["axis"].value != -1:
        return None
    if len(quantizer.inputs) < 2 or quantizer.inputs[1] is None:
        return None  # its scale is not calibrated
    return bias_add, node, quantizer


def _only_reader(value: ir.Value) -> ir.Node | None:
    uses = value.uses()
    if len(uses) != 1 or value.is_graph_output():
        return None
    return uses[0].node


def _make_encoder(graph: ir.Graph, node: ir.Node) -> None:
    attributes = {name: attr.value for name, attr in node.attributes.items()}
    attributes["window"] = arithmetic.window(attributes["bits"], bool(attributes["signed"]))
    encoder = rewrite.kirin_node(
        TTFS_ENCODER, list(node.inputs), attributes, node.name, [v.name for v in node.outputs],
        dict(node.metadata_props),
    )
    rewrite.replace(graph, [node], [encoder], list(node.outputs), list(encoder.outputs))
