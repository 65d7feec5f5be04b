"""The work of a compiled network and of its baselines, node by node, priced with a preset.

`Workload.of(model)` reads what ``energy-annotate`` stored (``kirin.ops``, ``kirin.workload``)
and the widths the graph fixes: each product's fan-in, its operands' largest codes and synapses,
its accumulator's width. `NETWORKS` price that one workload as seven networks, each a list of
`Work` per node (``docs/energy.md`` gives every formula):

- ``kirin``: the compiled network, from its counts: synaptic accumulates, membrane updates and
  threshold comparisons of the spike path, 8-bit x 4-bit MACs of the integer path, rescales and
  the other ops' float work;
- ``fp16``: the float network, every product dense in fp16;
- ``w8a8``: the integer network with 8-bit weights and activations, dense;
- ``qann``: the same W4A4&8 network run as an integer network on an integer accelerator,
  every product dense (``qann-sparse``: one that skips the zero codes);
- ``ttfs8``: the same model as a single-spike 8-bit TTFS network without hybridization
  (windows of 128/256 steps, outliers sent as spikes too);
- ``rate8``: a rate-coded 8-bit network (``|q|`` spikes per value).

The two 8-bit spiking baselines are not run: their spikes and steps are derived from the
measured ones (lower bounds, so that the reductions against them are not overstated).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math

import numpy as np
import onnx_ir as ir
import torch

from kirin_compiler import arithmetic as ka
from kirin_compiler import roles
from kirin_compiler.energy.presets import Preset
from kirin_compiler.errors import KirinError
from kirin_compiler.kirin_ops import (
    ACT_QUANT,
    INT_MATMUL,
    RESCALE,
    SPIKE_MATMUL,
    TTFS_ENCODER,
    TTFS_NEURON,
    is_kirin,
)
from kirin_compiler.metadata import KEY_OPS, KEY_TIMESTEPS, KEY_WORKLOAD

CATEGORIES = {"linear": "linear projections", "attention": "attention products", "other": "non-spiking ops"}
_ATTENTION = (roles.ATTENTION_QK, roles.ATTENTION_PV)
_TOP8 = {True: 127, False: 255}  # the largest 8-bit code, signed or not
_WINDOW8 = {True: 128, False: 256}  # 8-bit single-spike windows


@dataclasses.dataclass(frozen=True)
class Work:
    """``count`` operations ``op`` of ``bits`` bits; with ``traffic`` (op ``memory``), ``count``
    items of ``bits`` bits moved through that memory."""

    what: str
    op: str
    bits: float
    count: int
    traffic: str | None = None
    by: int = 0  # a multiply's narrower operand, when the two differ

    def energy(self, preset: Preset) -> float:
        """picojoules."""
        if self.traffic is not None:
            word = preset.per_bit(self.traffic)
            return self.count * self.bits * word.energy / word.bits
        return self.count * preset.energy(self.op, math.ceil(self.bits), self.by)


@dataclasses.dataclass(frozen=True)
class Source:
    """A quantizer whose codes a product reads: a TTFS source (spikes) or an ``ActQuant``."""

    spiking: bool
    bits: int
    signed: bool
    gain_bits: int  # graded spikes carry gains of this many bits (0: none)
    top: int  # the largest magnitude of a code times its gain
    window: int  # TTFS steps (0 for an ActQuant)

    @property
    def code_bits(self) -> int:
        """Bits of a code times its gain, as a dense integer network stores it."""
        return _bits(self.top, self.signed)

    @property
    def event_bits(self) -> int:
        """Bits of a spike event: its presence (the step it arrives in is its value) and gain."""
        return 1 + self.gain_bits

    @property
    def window8(self) -> int:
        return _WINDOW8[self.signed]


@dataclasses.dataclass(frozen=True)
class Product:
    """A spiking product with its integer path and its output node, and the widths they need."""

    spike: str
    integer: str | None
    output: str
    source_name: str
    source: Source
    bias: bool  # a neuron output adds a bias
    fan_in: int
    right_top: int  # the largest synapse (or right-operand code)
    right_bits: float  # stored bits per right-operand element (codes, sub-scales, offsets)
    right_traffic: str  # "weights" for a linear product, "activations" for an attention one
    dense_macs: int
    inputs: int
    outputs: int
    group: int = 0  # rows per block of sub-scales and offsets (0: no blocks)
    code_top: int = 0  # the largest weight code (before the blocks' sub-scales)
    subscale_bits: int = 0
    offset_bits: int = 0

    def accumulator(self, left_top: int) -> int:
        """Bits of an accumulator summing ``fan_in`` products of codes up to ``left_top``."""
        return _bits(self.fan_in * left_top * self.right_top, True)

    @property
    def fan_out(self) -> float:
        return self.dense_macs / self.inputs if self.inputs else 0.0

    @property
    def right_operand_bits(self) -> int:
        return _bits(self.right_top, True)


@dataclasses.dataclass(frozen=True)
class Entry:
    """A node that did work: its counts, its op type category and its layer."""

    name: str
    kind: str  # source, quantizer, spike, integer, rescale, neuron, float-product, float-op
    category: str
    layer: str
    counts: dict[str, int]
    traffic: str = "activations"  # what a float product's right operand is (weights or activations)


@dataclasses.dataclass
class Workload:
    """What a compiled model did on the counted runs, with the widths its graph fixes."""

    entries: list[Entry]
    products: dict[str, Product]  # by the name of each of its nodes (spike, integer, output)
    sources: dict[str, Source]
    tokens: int
    runs: int
    mode: str
    timesteps: dict

    @classmethod
    def of(cls, model: ir.Model) -> Workload:
        workload = model.metadata_props.get(KEY_WORKLOAD)
        if workload is None or KEY_TIMESTEPS not in model.metadata_props:
            raise KirinError(
                "the model has no operation counts: compile it with the energy-annotate pass "
                "(the default pipeline ends with it)"
            )
        graph = model.graph
        counts = {n.name: json.loads(n.metadata_props[KEY_OPS]) for n in graph if KEY_OPS in n.metadata_props}
        sources = {n.name: _source(n) for n in graph if is_kirin(n, TTFS_ENCODER, TTFS_NEURON, ACT_QUANT)}
        products = {}
        for node in graph:
            if is_kirin(node, SPIKE_MATMUL) and node.name in counts:
                product = _product(node, sources, counts[node.name])
                for name in (product.spike, product.integer, product.output):
                    if name is not None:
                        products[name] = product
        entries = [
            Entry(node.name, _kind(node), _category(node), layer, counts[node.name], _traffic(node))
            for node, layer in zip(graph, _layers(graph))
            if node.name in counts
        ]
        work = json.loads(workload)
        return cls(entries, products, sources, work["tokens"], work["runs"], work["mode"],
                   json.loads(model.metadata_props[KEY_TIMESTEPS]))

    def __post_init__(self) -> None:
        self._counts = {e.name: e.counts for e in self.entries}

    def counts(self, node: str) -> dict[str, int]:
        """The counts of a node ({} for one that did no work)."""
        return self._counts.get(node, {})


# What each ai.kirin op is to the pricing (`Entry.kind`: the `Network` method that prices it).
_KINDS = {
    TTFS_ENCODER: "source", ACT_QUANT: "quantizer", SPIKE_MATMUL: "spike", INT_MATMUL: "integer",
    RESCALE: "rescale", TTFS_NEURON: "neuron",
}


def _kind(node: ir.Node) -> str:
    if is_kirin(node):
        return _KINDS[node.op_type]
    return "float-product" if node.op_type in ("MatMul", "Gemm") else "float-op"


def _traffic(node: ir.Node) -> str:
    right = node.inputs[1] if len(node.inputs) > 1 else None
    return "weights" if right is not None and right.const_value is not None else "activations"


def _category(node: ir.Node) -> str:
    """``attention`` or ``linear`` for a product, its quantizers, rescales and neurons (by the
    role of the products they feed); ``other`` for the rest."""
    role = roles.role(node)
    if role is None and is_kirin(node):
        consumers = (c for output in node.outputs for c in output.consumers())
        role = next((roles.role(c) for c in consumers if roles.role(c) is not None), None)
    if role is None:
        return "other"
    return "attention" if role in _ATTENTION else "linear"


def _layers(graph: ir.Graph) -> list[str]:
    """Each node's decoder layer: its own, or that of the next node that has one (a layer's
    norm comes before its products); ``head`` after the last layer's nodes."""
    labels, following = [], "head"
    for node in reversed(list(graph)):
        layer = roles.layer(node)
        if layer is not None:
            following = str(layer)
        labels.append(str(layer) if layer is not None else following)
    return labels[::-1]


def _source(node: ir.Node) -> Source:
    a = {name: attr.value for name, attr in node.attributes.items()}
    if is_kirin(node, TTFS_NEURON):
        return Source(True, a["bits"], False, 0, ka.code_range(a["bits"], False)[1], a["window"])
    spec = ka.ActivationSpec.of(a)
    gain_bits = spec.gain_bits if spec.gain_max > 1 else 0
    top = ka.code_range(spec.bits, spec.signed)[1] * spec.gain_max
    return Source(is_kirin(node, TTFS_ENCODER), spec.bits, spec.signed, gain_bits, top, a.get("window", 0))


def _product(node: ir.Node, sources: dict[str, Source], counts: dict[str, int]) -> Product:
    left, right = node.inputs[0], node.inputs[1]
    output = next((c for c in node.outputs[0].consumers() if is_kirin(c, RESCALE, TTFS_NEURON)), None)
    if output is None or left.producer() is None or left.producer().name not in sources:
        raise KirinError(
            f"node '{node.name}': a SpikeMatMul priced by kirinc report reads a quantizer's codes and "
            "feeds a Rescale or TTFSNeuron, as spike-matrix-hybridize and threshold-insert make it"
        )
    integer = output.inputs[3].producer() if len(output.inputs) > 3 and output.inputs[3] is not None else None
    blocks = {}
    if right.const_value is not None:  # a linear product: the synapses r * Wq + z
        weights = [v for v in node.inputs[1:] if v is not None]
        tensors = [_tensor(v) for v in node.inputs[1:4]] + [None] * (4 - len(node.inputs))
        group = node.attributes.get_int("group", 0)
        synapses = ka.synapses(*tensors, group)
        right_top = int(synapses.abs().max()) if synapses.numel() else 0
        stored = sum(v.const_value.dtype.bitwidth * v.const_value.size for v in weights)
        right_bits, traffic = stored / synapses.numel(), "weights"
        if any(t is not None for t in tensors[1:]):
            blocks = {
                "group": group or synapses.shape[0], "code_top": int(tensors[0].abs().max()),
                **{f"{kind}_bits": v.const_value.dtype.bitwidth
                   for kind, v in zip(("subscale", "offset"), node.inputs[2:4]) if v is not None},
            }
    else:  # an attention product: the other quantizer's codes
        other = sources[right.producer().name]
        right_top, right_bits, traffic = other.top, other.code_bits, "activations"
    dense, outputs = counts.get("dense_macs", 0), counts.get("outputs", 0)
    return Product(
        spike=node.name, integer=integer.name if integer is not None else None, output=output.name,
        source_name=left.producer().name, source=sources[left.producer().name],
        bias=is_kirin(output, TTFS_NEURON) and output.inputs[5] is not None, fan_in=math.ceil(dense / outputs) if outputs else 0,
        right_top=right_top, right_bits=right_bits, right_traffic=traffic,
        dense_macs=dense, inputs=counts.get("inputs", 0), outputs=outputs, **blocks,
    )


def _tensor(value: ir.Value | None) -> torch.Tensor | None:
    if value is None:
        return None
    return torch.from_numpy(value.const_value.numpy().astype(np.float32))


def _bits(magnitude: int, signed: bool) -> int:
    """Bits that hold the integers up to ``magnitude`` (with a sign bit if ``signed``)."""
    return max(1, int(magnitude).bit_length()) + int(signed)


# The networks -------------------------------------------------------------------------------------


class Network:
    """Prices a `Workload` as one network: `work` lists a node's operations and traffic.

    The base prices what every network shares with the compiled one: the non-spiking ops (one
    float multiply per counted float operation, at ``float_bits``) and the float products;
    subclasses price the quantizers, products, rescales and neurons their own way."""

    name = ""
    title = ""
    steps = False  # whether it runs in time steps (a spiking network)

    def __init__(self, workload: Workload, float_bits: int) -> None:
        self.w = workload
        self.f = float_bits

    def work(self, entry: Entry) -> list[Work]:
        handler = getattr(self, entry.kind.replace("-", "_"))
        return [w for w in handler(entry, entry.counts) if w.count]

    def float_op(self, e: Entry, c: dict) -> list[Work]:
        return [Work("float op", "float_mult", self.f, c.get("float_ops", 0))]

    def float_product(self, e: Entry, c: dict) -> list[Work]:
        macs = c.get("float_macs", 0)
        return [
            Work("float MAC: multiply", "float_mult", self.f, macs),
            Work("float MAC: add", "float_add", self.f, macs),
            Work(f"float product: {e.traffic} read", "memory", self.f, macs, e.traffic),
        ] + self.float_op(e, c)

    def quantize(self, c: dict) -> list[Work]:
        """A quantizer's float work: the division by its scale (and the scale's maximum)."""
        return [Work("quantize", "float_mult", self.f, c.get("float_ops", 0))]

    def synapses(self, p: Product, uses: int) -> list[Work]:
        """Forming a synapse ``r * Wq + z`` from its stored code, block sub-scale and offset, at
        each use (products with block sub-scales only)."""
        if not p.group:
            return []
        return [
            _multiply("synapse from code and sub-scale: multiply", 8, 4, uses),
            Work("synapse from code and sub-scale: add", "int_add", p.right_operand_bits, uses),
        ]

    def integer_path(self, p: Product, c: dict) -> list[Work]:
        """The compiled network's integer path, from the ``IntMatMul``'s counts ``c``."""
        acc, macs = p.accumulator(ka.OUTLIER_TOP), c.get("int_macs", 0)
        return [
            _multiply("integer MAC: multiply", 8, p.right_operand_bits, macs),
            Work("integer MAC: add", "int_add", acc, macs),
            *self.synapses(p, macs),
            Work(f"{p.right_traffic} read", "memory", p.right_bits, macs, p.right_traffic),
            Work("outlier codes received", "memory", 8, _per_fan_out(macs, p), "activations"),
            Work("accumulators written", "memory", acc, p.outputs, "activations"),
        ]

    def counted_rescale(self, e: Entry, c: dict) -> list[Work]:
        """A ``Rescale`` as counted: its float work, reading the accumulators of both paths."""
        p = self.product(e.name)
        return [
            Work("rescale", "float_mult", self.f, c.get("float_ops", 0)),
            Work("accumulators read", "memory", self.accumulators(p), p.outputs, "activations"),
            Work("results written", "memory", self.f, p.outputs, "activations"),
        ]

    def accumulators(self, p: Product) -> int:
        """Bits of an output's accumulators, the spike path's and the integer path's."""
        integer = p.accumulator(ka.OUTLIER_TOP) if p.integer is not None else 0
        return p.accumulator(p.source.top) + integer

    def rescale_outputs(self, p: Product, c: dict, per_output: int) -> list[Work]:
        return [
            Work("rescale", "float_mult", self.f, p.outputs * per_output),
            Work("results written", "memory", self.f, p.outputs, "activations"),
        ]

    def product(self, name: str) -> Product:
        return self.w.products[name]


class Kirin(Network):
    """The compiled network, from its counts."""

    name, title, steps = "kirin", "Kirin W4A4&8 SNN (this model)", True

    def source(self, e: Entry, c: dict) -> list[Work]:
        s = self.w.sources[e.name]
        return self.quantize(c) + self.fire(s, c)

    def fire(self, s: Source, c: dict) -> list[Work]:
        """TTFS neurons: a comparison per step until they fire, then one spike each."""
        return [
            Work("threshold comparison", "int_add", s.bits, c.get("comparisons", 0)),
            Work("membrane read for a comparison", "memory", s.bits, c.get("comparisons", 0), "membranes"),
            Work("spikes sent", "memory", s.event_bits, c.get("spikes", 0), "activations"),
            Work("outlier codes sent", "memory", 8, c.get("outliers", 0), "activations"),
        ]

    def quantizer(self, e: Entry, c: dict) -> list[Work]:
        s = self.w.sources[e.name]
        return self.quantize(c) + [Work("codes written", "memory", s.code_bits, c.get("values", 0), "activations")]

    def spike(self, e: Entry, c: dict) -> list[Work]:
        p = self.product(e.name)
        acc, events = p.accumulator(p.source.top), c.get("accumulates", 0)
        work = [Work("synaptic accumulate", "int_add", acc, events)]
        if p.source.gain_bits:
            work.append(_multiply("graded spike: gain x synapse", p.source.gain_bits, p.right_operand_bits, events))
        updates = c.get("membrane_updates", 0)
        return work + self.synapses(p, events) + [
            Work("membrane update", "int_add", acc, updates),
            Work(f"{p.right_traffic} read", "memory", p.right_bits, events, p.right_traffic),
            Work("spikes received", "memory", p.source.event_bits, _per_fan_out(events, p), "activations"),
            Work("membrane read and write", "memory", acc, 2 * updates, "membranes"),
            Work("accumulators written", "memory", acc, p.outputs, "activations"),
        ]

    def integer(self, e: Entry, c: dict) -> list[Work]:
        return self.integer_path(self.product(e.name), c)

    def rescale(self, e: Entry, c: dict) -> list[Work]:
        return self.counted_rescale(e, c)

    def neuron(self, e: Entry, c: dict) -> list[Work]:
        p = self.product(e.name)
        return [
            Work("rescale and bias", "float_mult", self.f, c.get("float_ops", 0)),
            Work("accumulators read", "memory", self.accumulators(p), p.outputs, "activations"),
        ] + self.fire(self.w.sources[e.name], c)


class _Dense(Network):
    """An integer network that computes every product densely: a multiply-accumulate per
    weight and input, codes written and read in full, no membranes. Blocks of sub-scales and
    offsets are applied as grouped integer kernels do: each block's partial sum of codes times
    weight codes is multiplied by its sub-scale once per output (and its offset by the block's
    sum of codes), not at every MAC."""

    def blocked(self, p: Product) -> bool:
        return p.group > 0

    def code_top(self, s: Source) -> int:
        return s.top

    def code_bits(self, s: Source) -> int:
        return _bits(self.code_top(s), s.signed)

    def right(self, p: Product) -> tuple[int, float]:
        """The right operand's largest value and stored bits per element."""
        return p.right_top, p.right_bits

    def source(self, e: Entry, c: dict) -> list[Work]:
        s = self.w.sources[e.name]
        return self.quantize(c) + [
            Work("codes written", "memory", self.code_bits(s), c.get("values", 0), "activations"),
            *self.outliers(c),
        ]

    quantizer = source

    def outliers(self, c: dict) -> list[Work]:
        return [Work("outlier codes written", "memory", 8, c.get("outliers", 0), "activations")]

    def spike(self, e: Entry, c: dict) -> list[Work]:
        p = self.product(e.name)
        top, stored = self.right(p)
        left = self.code_top(p.source)
        acc = _bits(p.fan_in * left * top, True)
        macs, inputs = self.macs(p, c)
        blocked = self.blocked(p)
        factor, rows = (p.code_top, p.group) if blocked else (top, p.fan_in)
        partial = _bits(rows * left * factor, True)
        return [
            _multiply("integer MAC: multiply", _bits(left, p.source.signed), _bits(factor, True), macs),
            Work("integer MAC: add", "int_add", partial, macs),
            *(self.block_scales(p, partial, acc, left, inputs) if blocked else []),
            Work(f"{p.right_traffic} read", "memory", stored, macs, p.right_traffic),
            Work("codes read", "memory", self.code_bits(p.source), inputs, "activations"),
            Work("accumulators written", "memory", acc, p.outputs, "activations"),
        ]

    def macs(self, p: Product, c: dict) -> tuple[int, int]:
        """The product's multiply-accumulates and the codes it reads."""
        return p.dense_macs, p.inputs

    def integer(self, e: Entry, c: dict) -> list[Work]:
        return []  # no integer path: its values are codes like the others (QANN: with the product)

    def block_scales(self, p: Product, partial: int, acc: int, left: int, inputs: int) -> list[Work]:
        """Per output and block: the partial sum times the block's sub-scale, added up; with
        offsets, each block's sum of codes (once per token) times the offset, added up."""
        per_block = p.outputs * -(-p.fan_in // p.group)
        work = [
            _multiply("block sub-scale: multiply", partial, p.subscale_bits, per_block if p.subscale_bits else 0),
            Work("block sub-scale: add", "int_add", acc, per_block if p.subscale_bits else 0),
        ]
        if p.offset_bits:
            sums = _bits(p.group * left, True)
            work += [
                Work("block sum of codes: add", "int_add", sums, inputs),
                _multiply("block offset: multiply", sums, p.offset_bits, per_block),
                Work("block offset: add", "int_add", acc, per_block),
            ]
        return work

    def rescale(self, e: Entry, c: dict) -> list[Work]:
        p = self.product(e.name)
        return self.rescale_outputs(p, c, 2)

    def neuron(self, e: Entry, c: dict) -> list[Work]:
        p = self.product(e.name)
        s = self.w.sources[e.name]
        return self.rescale_outputs(p, c, 2 + p.bias + 1) + [
            Work("codes written", "memory", self.code_bits(s), p.outputs, "activations"),
        ]


class FP16(_Dense):
    name, title = "fp16", "FP16 ANN"

    def __init__(self, workload: Workload, float_bits: int) -> None:
        super().__init__(workload, 16)

    def source(self, e: Entry, c: dict) -> list[Work]:
        return []  # nothing to quantize

    quantizer = source

    def spike(self, e: Entry, c: dict) -> list[Work]:
        p = self.product(e.name)
        return [
            Work("float MAC: multiply", "float_mult", 16, p.dense_macs),
            Work("float MAC: add", "float_add", 16, p.dense_macs),
            Work(f"{p.right_traffic} read", "memory", 16, p.dense_macs, p.right_traffic),
            Work("values read", "memory", 16, p.inputs, "activations"),
            Work("results written", "memory", 16, p.outputs, "activations"),
        ]

    def rescale(self, e: Entry, c: dict) -> list[Work]:
        return []

    def neuron(self, e: Entry, c: dict) -> list[Work]:
        p = self.product(e.name)
        return [Work("bias and ReLU", "float_mult", 16, p.outputs * (p.bias + 1))]


class W8A8(_Dense):
    name, title = "w8a8", "W8A8 integer ANN"

    def code_top(self, s: Source) -> int:
        return _TOP8[s.signed]

    def right(self, p: Product) -> tuple[int, float]:
        return 127, 8.0

    def blocked(self, p: Product) -> bool:
        return False  # a weight of 8 bits and a scale per output channel

    def outliers(self, c: dict) -> list[Work]:
        return []


class QANN(_Dense):
    """The same W4A4&8 network as an integer network: the spike path's codes (times their
    gains) multiplied densely; the integer path and the rescales as in the compiled one."""

    name, title = "qann", "same W4A4&8 as integer ANN"

    def spike(self, e: Entry, c: dict) -> list[Work]:
        p = self.product(e.name)
        integer = [] if p.integer is None else self.integer_path(p, self.w.counts(p.integer))
        return super().spike(e, c) + integer

    def rescale(self, e: Entry, c: dict) -> list[Work]:
        return self.counted_rescale(e, c)

    def neuron(self, e: Entry, c: dict) -> list[Work]:
        p = self.product(e.name)
        s = self.w.sources[e.name]
        return [
            Work("rescale and bias", "float_mult", self.f, c.get("float_ops", 0)),
            Work("accumulators read", "memory", self.accumulators(p), p.outputs, "activations"),
            Work("codes written", "memory", self.code_bits(s), p.outputs, "activations"),
            *self.outliers(c),
        ]


class SparseQANN(QANN):
    """The integer network on an accelerator that skips zero codes: a MAC per non-zero code
    and fan-out (the spike path's accumulates), codes read as the non-zero ones."""

    name, title = "qann-sparse", "same as integer ANN, zero codes skipped"

    def macs(self, p: Product, c: dict) -> tuple[int, int]:
        events = c.get("accumulates", 0)
        return events, _per_fan_out(events, p)


class _EightBitSpikes(Network):
    """The same model as an 8-bit spiking network without hybridization: outliers are spikes
    too, windows of 128 (signed) or 256 steps, binary spikes, membranes as in the compiled one
    with the steps scaled by the window; its spikes are derived from the measured codes."""

    steps = True

    def source_spikes(self, s: Source, c: dict) -> int:
        raise NotImplementedError

    def comparisons(self, s: Source, c: dict) -> int:
        raise NotImplementedError

    def source(self, e: Entry, c: dict) -> list[Work]:
        return self.quantize(c) + self.fire(self.w.sources[e.name], c)

    def fire(self, s: Source, c: dict) -> list[Work]:
        comparisons = self.comparisons(s, c)
        return [
            Work("threshold comparison", "int_add", 8, comparisons),
            Work("membrane read for a comparison", "memory", 8, comparisons, "membranes"),
            Work("spikes sent", "memory", 1, self.source_spikes(s, c), "activations"),
        ]

    def quantizer(self, e: Entry, c: dict) -> list[Work]:
        return self.quantize(c) + [Work("codes written", "memory", 8, c.get("values", 0), "activations")]

    def spike(self, e: Entry, c: dict) -> list[Work]:
        p = self.product(e.name)
        acc = _bits(p.fan_in * _TOP8[p.source.signed] * p.right_top, True)
        spikes_in = self.source_spikes(p.source, self.w.counts(p.source_name))
        events = round(spikes_in * p.fan_out)
        updates = c.get("membrane_updates", 0) * (p.source.window8 // p.source.window)
        return [
            Work("synaptic accumulate", "int_add", acc, events),
            *self.synapses(p, events),
            Work("membrane update", "int_add", acc, updates),
            Work(f"{p.right_traffic} read", "memory", p.right_bits, events, p.right_traffic),
            Work("spikes received", "memory", 1, spikes_in, "activations"),
            Work("membrane read and write", "memory", acc, 2 * updates, "membranes"),
            Work("accumulators written", "memory", acc, p.outputs, "activations"),
        ]

    def integer(self, e: Entry, c: dict) -> list[Work]:
        return []  # outliers are spikes

    def rescale(self, e: Entry, c: dict) -> list[Work]:
        return self.rescale_outputs(self.product(e.name), c, 2)

    def neuron(self, e: Entry, c: dict) -> list[Work]:
        p = self.product(e.name)
        return self.rescale_outputs(p, c, 2 + p.bias + 1) + self.fire(self.w.sources[e.name], c)


class TTFS8(_EightBitSpikes):
    """One spike per non-zero value: the measured spikes and outliers (a value that is zero at
    4 bits may not be at 8: a lower bound); comparisons scaled by the window."""

    name, title = "ttfs8", "single-spike TTFS SNN, 8-bit"

    def source_spikes(self, s: Source, c: dict) -> int:
        return c.get("spikes", 0) + c.get("outliers", 0)

    def comparisons(self, s: Source, c: dict) -> int:
        return c.get("comparisons", 0) * (s.window8 // s.window)


class Rate8(_EightBitSpikes):
    """``|q|`` spikes per 8-bit value ``q``: the measured magnitudes scaled to 8-bit codes;
    an integrate-and-fire neuron compares at every step of its window."""

    name, title = "rate8", "rate-coded SNN, 8-bit"

    def source_spikes(self, s: Source, c: dict) -> int:
        scaled = c.get("magnitude", 0) * _TOP8[s.signed] / s.top
        return round(scaled) + c.get("outlier_magnitude", 0)

    def comparisons(self, s: Source, c: dict) -> int:
        return c.get("neurons", 0) * s.window8


NETWORKS: tuple[type[Network], ...] = (Kirin, FP16, W8A8, QANN, SparseQANN, TTFS8, Rate8)


def _multiply(what: str, a: int, b: int, count: int) -> Work:
    """``count`` integer multiplies of ``a``- by ``b``-bit operands."""
    return Work(what, "int_mult", max(a, b), count, by=min(a, b))


def _per_fan_out(events: int, p: Product) -> int:
    """The inputs that caused ``events`` synaptic events of ``p`` (each reaches its fan-out)."""
    return events * p.inputs // p.dense_macs if p.dense_macs else 0
