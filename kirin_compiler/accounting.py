"""Time steps and operation counts: what a compiled network does, counted from its execution.

Time steps. Every TTFS source (``TTFSEncoder``, ``TTFSNeuron``) opens a window of ``T`` steps
(8 for signed 4-bit codes, 16 for unsigned ones); windows that depend on each other follow one
another, parallel ones overlap. `timesteps` takes the longest chain of windows through the
graph, in total and per decoder layer, beside the same chain with 8-bit single-spike windows
(``T = 128`` signed, ``256`` unsigned): the baseline the Kirin method shortens by 93.75%.

Operation counts (`count_operations`): the network runs and every node's work is recorded. The
snn mode measures it step by step; the qann mode (``energy-annotate``'s default, four times
faster on SmolLM2) derives it from the codes, which are the spikes (``kirinc verify`` proves it):
the two give the same counts, except ``membrane_updates`` (below):

- TTFS sources: ``spikes`` fired, ``neurons`` in the window, threshold ``comparisons`` (a
  neuron compares until it fires, ``T - |q|`` times; a silent one ``T - 1`` times), and
  ``magnitude``, the sum of the codes' magnitudes times their gains;
- quantizers: ``values`` coded and, with outliers, ``outliers`` (non-zero 8-bit codes) and
  ``outlier_magnitude``;
- ``SpikeMatMul``: synaptic ``accumulates`` (spikes x fan-out) and ``membrane_updates``: one
  per neuron and step whose current is not zero, as the snn mode measures; the qann mode counts
  every step from the one after the token's first spike, an upper bound (a current can be
  exactly zero: zero weights, cancelling spikes); and the product's size: ``inputs``,
  ``outputs`` and ``dense_macs`` (outputs x fan-in);
- ``IntMatMul``: ``int_macs``, 8-bit x 4-bit multiply-accumulates (outlier values x fan-out);
- ``Rescale`` and ``TTFSNeuron``: ``float_ops`` of the rescale (two multiplies per output; a
  multiply and an add more with outliers; for a neuron, a bias add and the division by the
  output step);
- other nodes: ``float_ops`` (``FLOAT_OP_COST`` per output element; data movement is free) and,
  for float matrix products, ``float_macs``.

`kirin_compiler.energy` prices the counts (``kirinc report``).
"""

from __future__ import annotations

import dataclasses
import json
from collections import defaultdict
from typing import Iterable, Mapping

import numpy as np
import onnx_ir as ir

from kirin_compiler import execution, roles
from kirin_compiler.execution import Probe
from kirin_compiler.kirin_ops import SPIKING_SOURCES, is_kirin
from kirin_compiler.metadata import KEY_OPS, KEY_TIMESTEPS


# Float operations per output element of the non-spiking ops (reductions are charged per input
# element, see `_FloatOpCounter`); ops absent here move data and cost nothing.
FLOAT_OP_COST = {
    **dict.fromkeys("Add Sub Mul Div Neg Abs Pow Sqrt Reciprocal Max Min Where Relu".split(), 1),
    **dict.fromkeys("Exp Log Cos Sin Erf".split(), 1),
    "Sigmoid": 3,  # exp, add, divide
    "Tanh": 4,
    "Softmax": 4,  # max, subtract and exp, sum, divide
}
REDUCTIONS = frozenset({"ReduceMean", "ReduceSum", "ReduceMax"})


@dataclasses.dataclass(frozen=True)
class TimeSteps:
    """The longest chain of TTFS windows, in total and per decoder layer, and the same chain
    with 8-bit single-spike windows."""

    per_layer: dict[str, int]
    total: int
    baseline_per_layer: dict[str, int]
    baseline_total: int

    @property
    def reduction(self) -> float:
        """The fraction of time steps saved against 8-bit single-spike coding."""
        return 1.0 - self.total / self.baseline_total if self.baseline_total else 0.0

    def to_json(self) -> str:
        return json.dumps(
            {
                "per_layer": self.per_layer,
                "total": self.total,
                "baseline_8bit_per_layer": self.baseline_per_layer,
                "baseline_8bit_total": self.baseline_total,
                "reduction": round(self.reduction, 6),
            },
            sort_keys=True,
        )


def timesteps(graph: ir.Graph) -> TimeSteps:
    kirin, baseline = _longest_chains(graph, eight_bit=False), _longest_chains(graph, eight_bit=True)
    return TimeSteps(kirin[0], kirin[1], baseline[0], baseline[1])


def _longest_chains(graph: ir.Graph, eight_bit: bool) -> tuple[dict[str, int], int]:
    arrival: dict[ir.Node, int] = {}
    layer_end: dict[int, int] = defaultdict(int)
    for node in graph:
        start = max(
            (arrival[v.producer()] for v in node.inputs if v is not None and v.producer() in arrival),
            default=0,
        )
        arrival[node] = start + _window(node, eight_bit)
        layer = roles.layer(node)
        if layer is not None and is_kirin(node, *SPIKING_SOURCES):
            layer_end[layer] = max(layer_end[layer], arrival[node])
    per_layer, previous = {}, 0
    for layer in sorted(layer_end):
        per_layer[str(layer)] = layer_end[layer] - previous
        previous = layer_end[layer]
    return per_layer, max(arrival.values(), default=0)


def _window(node: ir.Node, eight_bit: bool) -> int:
    if not is_kirin(node, *SPIKING_SOURCES):
        return 0
    steps = node.attributes["window"].value
    if not eight_bit:
        return steps
    signed = steps == 2 ** (node.attributes["bits"].value - 1)
    return 128 if signed else 256


# Operation counts ----------------------------------------------------------------------------------


class CountingProbe(Probe):
    """Adds up the operation counts the Kirin modules report, per node."""

    counts_operations = True

    def __init__(self) -> None:
        self.counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))

    def count(self, node: str, **counts: int) -> None:
        for key, value in counts.items():
            self.counts[node][key] += value


def count_operations(
    model: ir.Model, feeds: Iterable[Mapping[str, np.ndarray]], mode: str = "qann"
) -> dict[str, dict[str, int]]:
    """Runs ``model`` in ``mode`` (``qann`` or ``snn``) on every feed, on the default backend,
    and returns each node's operation counts (the backend charges the float work of the
    standard nodes as ``FLOAT_OP_COST`` says)."""
    backend = execution.backend()
    probe = CountingProbe()
    probe.counts_float_ops = True
    program = backend.lower(model, mode, probe)
    for feed in feeds:
        backend.run(program, model, feed)
    return {node: dict(sorted(c.items())) for node, c in sorted(probe.counts.items()) if any(c.values())}
