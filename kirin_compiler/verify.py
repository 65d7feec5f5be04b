"""Structural verification of the IR, run on load and after every pass.

Checks, for the main graph and every subgraph:

1. every node input is a graph input, an initializer, an outer-scope value or the output of an
   earlier node (the graph is in topological order);
2. value names are unique and non-empty;
3. every graph output is defined;
4. every node names an operator that exists: a schema of the ONNX standard at the model's opset,
   an ``ai.kirin`` op, an onnxruntime contrib op that ``canonicalize`` decomposes
   (`kirin_compiler.contrib_ops`), or a model-local function.

An output left out (an optional output written as the empty name, as ONNX allows) defines
nothing.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir

from kirin_compiler.contrib_ops import is_contrib
from kirin_compiler.errors import UnsupportedOpError
from kirin_compiler.kirin_ops import KIRIN_DOMAIN, KIRIN_OPS

_STANDARD_DOMAINS = ("", "ai.onnx")


class VerificationError(Exception):
    """The IR is malformed: a bug in whatever produced it (the input file or a pass)."""


def verify_model(model: ir.Model) -> None:
    functions = {f.identifier() for f in model.functions.values()}
    _verify_graph(model.graph, model, functions, outer=set())


def _verify_graph(
    graph: ir.Graph, model: ir.Model, functions: set, outer: set[ir.Value]
) -> None:
    defined = set(outer)
    names: set[str] = set()

    def define(value: ir.Value, where: str) -> None:
        if not value.name:
            raise VerificationError(f"{where} defines a value without a name")
        if value.name in names:
            raise VerificationError(f"{where} defines '{value.name}' a second time")
        names.add(value.name)
        defined.add(value)

    for value in graph.inputs:
        define(value, f"graph '{graph.name}' input")
    for value in graph.initializers.values():
        if value not in defined:
            define(value, f"initializer of graph '{graph.name}'")
    for node in graph:
        _check_operator(node, model, functions)
        for index, value in enumerate(node.inputs):
            if value is not None and value not in defined:
                raise VerificationError(
                    f"node '{node.name}' ({node.op_type}) input {index} '{value.name}' is used "
                    "before it is defined"
                )
        for attr in node.attributes.values():
            if attr.type == ir.AttributeType.GRAPH:
                _verify_graph(attr.as_graph(), model, functions, defined)
            elif attr.type == ir.AttributeType.GRAPHS:
                for subgraph in attr.as_graphs():
                    _verify_graph(subgraph, model, functions, defined)
        for value in node.outputs:
            if value.name == "" and not value.uses() and not value.is_graph_output():
                continue  # an optional output left out (SkipLayerNormalization's mean, say)
            define(value, f"node '{node.name}' ({node.op_type})")
    for value in graph.outputs:
        if value not in defined:
            raise VerificationError(f"graph output '{value.name}' is not defined by any node")


def _check_operator(node: ir.Node, model: ir.Model, functions: set) -> None:
    if node.op_identifier() in functions or is_contrib(node):
        return
    if node.domain == KIRIN_DOMAIN:
        if node.op_type not in KIRIN_OPS:
            raise UnsupportedOpError(node.name, node.op_type, f"is not an {KIRIN_DOMAIN} op")
        return
    if node.domain not in _STANDARD_DOMAINS:
        raise UnsupportedOpError(
            node.name,
            f"{node.domain}::{node.op_type}",
            "is a custom-domain op kirin_compiler cannot handle; export the model with "
            "standard ONNX ops only",
        )
    opset = model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))
    if not onnx.defs.has(node.op_type, opset, ""):
        raise UnsupportedOpError(
            node.name, node.op_type, f"is not an ONNX operator at opset {opset}"
        )
