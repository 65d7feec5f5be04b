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

import dataclasses
import math

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

# The pass that introduces each op: a .kirin file with the op records the pass (`validate`).
INTRODUCED_BY = {
    ACT_QUANT: "quantize",
    QMATMUL: "quantize",
    SPIKE_MATMUL: "spike-matrix-hybridize",
    INT_MATMUL: "spike-matrix-hybridize",
    RESCALE: "spike-matrix-hybridize",
    TTFS_ENCODER: "threshold-insert",
    TTFS_NEURON: "threshold-insert",
}

# The ops that emit TTFS spikes (output 0 is a spike train in the snn mode).
SPIKING_SOURCES = frozenset({TTFS_ENCODER, TTFS_NEURON})


def is_kirin(node, *op_types: str) -> bool:
    """Whether ``node`` is an ``ai.kirin`` op (one of ``op_types``, if given)."""
    return node.domain == KIRIN_DOMAIN and (not op_types or node.op_type in op_types)


@dataclasses.dataclass(frozen=True)
class Attribute:
    """An attribute of an op: its type, whether a node must have it, and the values it takes
    (``choices``, or the range ``low`` to ``high``; ``above_low`` excludes ``low``)."""

    kind: type
    required: bool = False
    choices: tuple = ()
    low: float = -math.inf
    high: float = math.inf
    above_low: bool = False

    def allows(self, value) -> bool:
        if self.choices:
            return value in self.choices
        return (self.low < value if self.above_low else self.low <= value) and value <= self.high

    def describe(self) -> str:
        if self.choices:
            return "one of " + ", ".join(map(repr, self.choices))
        low = f"above {self.low:g}" if self.above_low else f"at least {self.low:g}"
        return low if self.high == math.inf else f"{low} and at most {self.high:g}"


@dataclasses.dataclass(frozen=True)
class Signature:
    """An op's inputs (how many, and which must be present), outputs and attributes, as
    ``docs/kirin_ops.md`` gives them."""

    inputs: tuple[int, int]
    required: tuple[int, ...]
    outputs: tuple[int, ...]
    attributes: dict[str, Attribute]


_GROUP = Attribute(int, low=0, high=2**31 - 1)
_QUANTIZER = {
    "axis": Attribute(int, required=True, choices=(-1, -2)),
    "bits": Attribute(int, required=True, low=2, high=8),
    "signed": Attribute(int, required=True, choices=(0, 1)),
    "scale": Attribute(str, required=True, choices=("token", "static")),
    "group": _GROUP,
    "gain_bits": Attribute(int, low=0, high=4),
    "clip": Attribute(float, low=0, high=1, above_low=True),
    "outliers": Attribute(str, choices=("none", "token", "static")),
    "outlier_count": Attribute(int, low=1, high=2**31 - 1),
}
SIGNATURES: dict[str, Signature] = {
    ACT_QUANT: Signature((1, 4), (0,), (2, 4), _QUANTIZER),
    TTFS_ENCODER: Signature(
        (1, 4), (0,), (2, 4), {**_QUANTIZER, "window": Attribute(int, required=True, low=1, high=256)}
    ),
    QMATMUL: Signature((4, 8), (0, 1, 2, 3), (1,), {"group": _GROUP}),
    SPIKE_MATMUL: Signature((2, 4), (0, 1), (1,), {"group": _GROUP}),
    INT_MATMUL: Signature((2, 4), (0, 1), (1,), {"group": _GROUP}),
    RESCALE: Signature((3, 5), (0, 1, 2), (1,), {}),
    TTFS_NEURON: Signature((7, 9), (0, 1, 2, 6), (2, 4), {
        "bits": Attribute(int, required=True, low=2, high=8),
        "window": Attribute(int, required=True, low=1, high=256),
        "silent": Attribute(int, required=True, choices=(0, 1)),
        "outliers": Attribute(str, choices=("none", "static")),
    }),
}
