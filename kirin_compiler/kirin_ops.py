"""The ``ai.kirin`` operator domain.

Every ``.kirin`` file imports this domain at `KIRIN_OPSET_VERSION`. `KIRIN_OPS` lists the
operators the domain defines; the IR verifier rejects any other ``ai.kirin`` op. The canonical
form produced by ``canonicalize`` uses standard ONNX ops only, so the set is empty until the
Kirin passes (quantize, spike-matrix-hybridize, threshold-insert) introduce their ops, each
documented with its math.
"""

from __future__ import annotations

KIRIN_DOMAIN = "ai.kirin"
KIRIN_OPSET_VERSION = 1
KIRIN_OPS: frozenset[str] = frozenset()
