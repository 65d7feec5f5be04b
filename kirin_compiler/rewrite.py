"""Small helpers the passes share to rewrite the IR: constants, unique names, replacing nodes."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from kirin_compiler.kirin_ops import KIRIN_DOMAIN, KIRIN_OPSET_VERSION


class Names:
    """The value names of a graph, read once, to hand out fresh ones quickly in a pass that
    makes many (`unique` reads the whole graph each time)."""

    def __init__(self, graph: ir.Graph) -> None:
        self.taken = set(graph.initializers) | {v.name for n in graph for v in n.outputs}
        self.taken |= {v.name for v in graph.inputs}

    def fresh(self, base: str) -> str:
        candidate, suffix = base, 0
        while candidate in self.taken:
            suffix += 1
            candidate = f"{base}_{suffix}"
        self.taken.add(candidate)
        return candidate


def constant(graph: ir.Graph, array: np.ndarray, name: str, names: Names | None = None) -> ir.Value:
    """A new initializer holding ``array`` (int4 arrays of `ml_dtypes` are stored as INT4), in
    C order, as a file holds it: a transposed view kept as it is would make the backends that
    read it in place (the torch backend's products) compute in another order than on the
    same model loaded from its file, or from its listing's weights."""
    fresh = names.fresh(name) if names is not None else unique(graph, name)
    if not array.flags.c_contiguous:  # (np.ascontiguousarray would make a scalar a vector)
        array = np.ascontiguousarray(array)
    value = ir.Value(name=fresh, const_value=ir.tensor(array))
    value.shape = ir.Shape(array.shape)
    value.type = ir.TensorType(ir.DataType.from_numpy(array.dtype))
    graph.register_initializer(value)
    return value


def unique(graph: ir.Graph, base: str) -> str:
    """``base``, or ``base_<n>`` if a value of the graph already has that name."""
    return Names(graph).fresh(base)


def replace(
    graph: ir.Graph, old: Sequence[ir.Node], new: Sequence[ir.Node],
    old_values: Sequence[ir.Value], new_values: Sequence[ir.Value],
) -> None:
    """Puts ``new`` nodes after the last of ``old`` and removes ``old``; each of ``new_values``
    takes over the uses and the name of the matching old value."""
    ir.convenience.replace_nodes_and_values(
        graph, old[-1], list(old), list(new), list(old_values), list(new_values)
    )


def kirin_node(
    op_type: str, inputs: Sequence[ir.Value | None], attributes: Mapping[str, object],
    name: str, outputs: Sequence[str], metadata: Mapping[str, str] | None = None,
) -> ir.Node:
    """An ``ai.kirin`` node with named outputs (trailing absent inputs dropped)."""
    inputs = list(inputs)
    while inputs and inputs[-1] is None:
        inputs.pop()
    node = ir.node(
        op_type, inputs, dict(attributes), domain=KIRIN_DOMAIN, name=name,
        num_outputs=len(outputs), metadata_props=dict(metadata or {}),
    )
    for value, output in zip(node.outputs, outputs):
        value.name = output
    return node


def import_kirin_domain(model: ir.Model) -> None:
    """Declares the ``ai.kirin`` opset; INT4 weights need IR version 10."""
    model.opset_imports[KIRIN_DOMAIN] = KIRIN_OPSET_VERSION
    model.ir_version = max(model.ir_version or 0, 10)


def drop_unused_initializers(graph: ir.Graph) -> None:
    """Removes initializers no node reads (the float weights a pass replaced)."""
    for name, value in list(graph.initializers.items()):
        if not value.uses() and not value.is_graph_output():
            del graph.initializers[name]
