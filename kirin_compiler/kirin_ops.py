"""The ``ai.kirin`` operator domain.

Every ``.kirin`` file imports this domain at `KIRIN_OPSET_VERSION`. `KIRIN_OPS` lists the
operators the domain defines; the IR verifier rejects any other ``ai.kirin`` op. Each op's
inputs, attributes and math are in ``docs/kirin_ops.md``; the passes that introduce them:

- ``quantize``: ``ActQuant`` (activation codes and scales) and ``QMatMul`` (a quantized product);
- ``spike-matrix-hybridize``: ``SpikeMatMul`` (spike path), ``IntMatMul`` (integer path) and
  ``Rescale`` in place of each ``QMatMul``;
- ``threshold-insert``: ``TTFSEncoder`` in place of each ``ActQuant`` whose codes are sent as
  spikes, and ``TTFSNeuron`` for an output neuron that fires the next product's spikes itself.
"""

from __future__ import annotations

KIRIN_DOMAIN = "ai.kirin"
KIRIN_OPSET_VERSION = 2  # 2: block sub-scales and offsets, activation gains, clip

ACT_QUANT = "ActQuant"
QMATMUL = "QMatMul"
SPIKE_MATMUL = "SpikeMatMul"
INT_MATMUL = "IntMatMul"
RESCALE = "Rescale"
TTFS_ENCODER = "TTFSEncoder"
TTFS_NEURON = "TTFSNeuron"

KIRIN_OPS: frozenset[str] = frozenset(
    {ACT_QUANT, QMATMUL, SPIKE_MATMUL, INT_MATMUL, RESCALE, TTFS_ENCODER, TTFS_NEURON}
)

# The ops that emit TTFS spikes (output 0 is a spike train in the snn mode).
SPIKING_SOURCES = frozenset({TTFS_ENCODER, TTFS_NEURON})


def is_kirin(node, *op_types: str) -> bool:
    """Whether ``node`` is an ``ai.kirin`` op (one of ``op_types``, if given)."""
    return node.domain == KIRIN_DOMAIN and (not op_types or node.op_type in op_types)
