"""The schedule of a listing: a networkx view of the IR, never a second IR.

The core runs in phases separated by step barriers. A phase opens TTFS windows (encoders and
output neurons fire) and integrates them (spike accumulates); its barrier waits until the
longest of its windows has closed, ``T`` steps later. An accumulator ``V`` is complete only
after the barrier of its window, so what reads it (a rescale, an output neuron) runs in the
next phase; host operations and integer products take no time steps. Windows of one phase
overlap: they run during the same steps.

- ``phase[n]``: the number of barriers before node ``n`` can run, the longest chain of
  spiking products before it;
- ``order``: the nodes by phase, then in the graph's order (a topological order: a node's
  inputs are made in its phase or an earlier one), with each integer product right after the
  spiking product of the same layer;
- ``durations[k]``: the steps of phase ``k``'s barrier (its longest window);
- ``last_use[v]``: the last node in ``order`` that reads value ``v`` (its buffer is freed
  after it).
"""

from __future__ import annotations

import dataclasses

import networkx as nx
import onnx_ir as ir

from kirin_compiler.kirin_ops import INT_MATMUL, SPIKE_MATMUL, is_kirin


@dataclasses.dataclass
class Schedule:
    order: list[ir.Node]
    phase: dict[ir.Node, int]
    durations: list[int]
    last_use: dict[ir.Value, ir.Node]
    partner: dict[ir.Node, ir.Node]  # a spiking product -> the integer product of its layer

    @property
    def steps(self) -> int:
        """The time steps of the whole program: every barrier's, one after another."""
        return sum(self.durations)


def dataflow(graph: ir.Graph) -> nx.DiGraph:
    """The nodes of ``graph`` and, for every value one node makes and another reads, an edge."""
    flow = nx.DiGraph()
    flow.add_nodes_from(graph)
    for node in graph:
        for value in node.inputs:
            if value is not None and value.producer() is not None:
                flow.add_edge(value.producer(), node)
    return flow


def schedule(graph: ir.Graph, windows: dict[ir.Node, int], fused: dict[ir.Node, ir.Node] | None = None) -> Schedule:
    """The schedule of ``graph``; ``windows`` gives each spiking product's window ``T``;
    ``fused`` maps the nodes that run as part of another (an attention run as one operation)
    to that node, which reads what they read."""
    fused = fused or {}
    flow = dataflow(graph)
    index = {node: i for i, node in enumerate(graph)}
    phase: dict[ir.Node, int] = {}
    for node in nx.topological_sort(flow):
        phase[node] = max(
            (phase[p] + (1 if is_kirin(p, SPIKE_MATMUL) else 0) for p in flow.predecessors(node)),
            default=0,
        )
    partner = _partners(graph)
    first = {integer: spiking for spiking, integer in partner.items()}

    def key(node: ir.Node) -> tuple[int, int, int]:
        leader = first.get(node, node)
        return phase[node], index[leader], int(leader is not node)

    order = list(nx.lexicographical_topological_sort(flow, key=key))
    durations = [0] * (max((phase[n] for n in windows), default=-1) + 1)
    for node, steps in windows.items():
        durations[phase[node]] = max(durations[phase[node]], steps)
    last_use = {value: fused.get(node, node) for node in order for value in node.inputs if value is not None}
    return Schedule(order, phase, durations, last_use, partner)


def _partners(graph: ir.Graph) -> dict[ir.Node, ir.Node]:
    """Each spiking product and the integer product whose accumulator the same node reads."""
    partner = {}
    for node in graph:
        if not is_kirin(node, SPIKE_MATMUL):
            continue
        for consumer in node.outputs[0].consumers():
            for value in consumer.inputs:
                producer = value.producer() if value is not None else None
                if producer is not None and is_kirin(producer, INT_MATMUL):
                    partner[node] = producer
    return partner
