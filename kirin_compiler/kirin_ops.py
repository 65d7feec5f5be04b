"""The ``ai.kirin`` operator domain.

Every ``.kirin`` file imports this domain at `KIRIN_OPSET_VERSION`. `KIRIN_OPS` lists the
operators the domain defines; each is documented, with its math, in ``docs/kirin_ops.md``. The
canonical form produced by ``canonicalize`` uses standard ONNX ops only, so the set is empty
until the Kirin passes (quantize, spike-matrix-hybridize, threshold-insert) introduce their ops.
"""

from __future__ import annotations

KIRIN_DOMAIN = "ai.kirin"
KIRIN_OPSET_VERSION = 1
KIRIN_OPS: frozenset[str] = frozenset()
