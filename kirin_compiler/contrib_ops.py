"""The onnxruntime contrib operators kirin_compiler accepts in a model it reads.

Real exports (onnxruntime-genai builds, graphs onnxruntime optimized at the EXTENDED level) carry
operators onnxruntime defines beside the ONNX standard: fused normalizations, rotary embeddings,
fused attention, fused activations and products. `CONTRIB_OPS` names the ones kirin_compiler
takes, each with the section of onnxruntime's documentation that defines it. They are accepted
on load (`kirin_compiler.verify`) and nowhere further: ``canonicalize`` decomposes every one of
them exactly into standard ONNX ops (``passes/_contrib.py``; the math, and the attributes and
input forms each decomposition takes, are in ``docs/contrib_ops.md``). Any other op of a custom
domain is still refused on load.

onnxruntime registers ``SimplifiedLayerNormalization`` (RMS normalization) in the default
domain, not in ``com.microsoft``; it is defined in onnxruntime's source, not in its
ContribOperators.md.
"""

from __future__ import annotations

import onnx_ir as ir

MICROSOFT_DOMAIN = "com.microsoft"

_CONTRIB_DOCS = "https://github.com/microsoft/onnxruntime/blob/main/docs/ContribOperators.md"
_CONTRIB_DEFS = (
    "https://github.com/microsoft/onnxruntime/blob/main/onnxruntime/core/graph/contrib_ops/"
    "contrib_defs.cc"
)


def _documented(op_type: str) -> str:
    return f"{_CONTRIB_DOCS}#{MICROSOFT_DOMAIN}.{op_type}"


# (domain, op_type) -> where onnxruntime defines the op. A new op is one line here and one
# decomposition in passes/_contrib.py (a test checks that the two tables agree).
CONTRIB_OPS: dict[tuple[str, str], str] = {
    ("", "SimplifiedLayerNormalization"): _CONTRIB_DEFS,
    (MICROSOFT_DOMAIN, "SkipSimplifiedLayerNormalization"): _documented("SkipSimplifiedLayerNormalization"),
    (MICROSOFT_DOMAIN, "SkipLayerNormalization"): _documented("SkipLayerNormalization"),
    (MICROSOFT_DOMAIN, "RotaryEmbedding"): _documented("RotaryEmbedding"),
    (MICROSOFT_DOMAIN, "GroupQueryAttention"): _documented("GroupQueryAttention"),
    (MICROSOFT_DOMAIN, "MultiHeadAttention"): _documented("MultiHeadAttention"),
    (MICROSOFT_DOMAIN, "FusedMatMul"): _documented("FusedMatMul"),
    (MICROSOFT_DOMAIN, "QuickGelu"): _documented("QuickGelu"),
    (MICROSOFT_DOMAIN, "BiasGelu"): _documented("BiasGelu"),
    (MICROSOFT_DOMAIN, "FastGelu"): _documented("FastGelu"),
    (MICROSOFT_DOMAIN, "MatMulNBits"): _documented("MatMulNBits"),
}


def key(node: ir.Node) -> tuple[str, str]:
    """``(domain, op_type)`` of ``node``, the default domain written ``""`` as in the table."""
    return ("" if node.domain == "ai.onnx" else node.domain, node.op_type)


def is_contrib(node: ir.Node) -> bool:
    return key(node) in CONTRIB_OPS


def holds_contrib_ops(model: ir.Model) -> bool:
    """Whether a node of ``model`` (its subgraphs included) is a contrib op of the table: the
    model must be canonicalized before a backend can run it."""
    return any(is_contrib(node) for node in ir.traversal.RecursiveGraphIterator(model.graph))
