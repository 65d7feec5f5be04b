"""The emitter: a compiled model lowered to an instruction listing and its weights file.

Every node of the IR becomes instructions (``docs/isa.md``): the Kirin ops the core's spiking
and integer instructions, the standard ops host operations. Constants are loaded from the
weights file by reference when an instruction first needs them (small integer lists and
scalars are written in the line), and every buffer is freed after its last reader
(`schedule`). Each instruction implementing a node carries the node's name as its label and,
as its comment, the node's operation counts and its energy per token under the energy
report's default preset.
"""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir

from kirin_compiler import printer
from kirin_compiler.backends.neuro import schedule as scheduling
from kirin_compiler.backends.neuro import weights as weight_file
from kirin_compiler.backends.neuro.listing import (
    Comment,
    Directive,
    Immediate,
    Instruction,
    Listing,
    Register,
    Tensor,
    Weight,
    Word,
)
from kirin_compiler.backends import torch_fusion
from kirin_compiler.backends.torch_ops import OPS
from kirin_compiler.energy import presets, report
from kirin_compiler.errors import KirinError, UnsupportedOpError
from kirin_compiler.kirin_ops import (
    ACT_QUANT,
    INT_MATMUL,
    QMATMUL,
    RESCALE,
    SPIKE_MATMUL,
    SPIKING_SOURCES,
    TTFS_ENCODER,
    TTFS_NEURON,
    is_kirin,
)
from kirin_compiler.metadata import KEY_WORKLOAD

# The instruction of each ai.kirin op (the products' are written by `_Emitter._layer`).
MNEMONICS = {TTFS_ENCODER: "enc", ACT_QUANT: "quant", RESCALE: "rescale", TTFS_NEURON: "fire"}
_INLINE_MAX_ELEMENTS = 8  # integer constants up to this size are written in the line


def emit(model: ir.Model, model_file: str, model_sha256: str, weights_name: str) -> tuple[Listing, bytes]:
    """The listing of ``model`` and the bytes of its weights file (called ``weights_name`` in
    the listing; ``model_file`` and ``model_sha256`` name the model it was emitted from)."""
    _check(model)
    return _Emitter(model).run(model_file, model_sha256, weights_name)


def _check(model: ir.Model) -> None:
    if not any(is_kirin(node, SPIKE_MATMUL) for node in model.graph):
        raise KirinError(
            "the model has no spiking products: a listing is a spiking network; compile it with "
            "the Kirin pipeline (quantize ... threshold-insert) first"
        )
    for node in model.graph:
        if any(a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) for a in node.attributes.values()):
            raise UnsupportedOpError(node.name, node.op_type, "has a subgraph: a listing has no control flow")
        if is_kirin(node, QMATMUL):
            raise KirinError(
                f"node '{node.name}': a listing needs spiking products; run spike-matrix-hybridize "
                "and threshold-insert (the default pipeline)"
            )
        if is_kirin(node, SPIKE_MATMUL):
            source = node.inputs[0].producer()
            if source is None or not is_kirin(source, *SPIKING_SOURCES):
                raise KirinError(f"node '{node.name}': its spikes need TTFS neurons; run threshold-insert")
        elif not is_kirin(node) and (node.domain not in ("", "ai.onnx") or node.op_type not in OPS):
            raise UnsupportedOpError(node.name, node.op_type, "is not a host operation of the listing (docs/backends.md lists them)")


class _Emitter:
    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self.graph = model.graph
        self.windows = {n: _window(n) for n in self.graph if is_kirin(n, SPIKE_MATMUL)}
        # float attentions run as one host operation, as the torch backend runs them
        self.attention = torch_fusion.find_attention(self.graph)
        self.fused = {n: last for last, match in self.attention.items() for n in match.nodes if n is not last}
        self.schedule = scheduling.schedule(self.graph, self.windows, self.fused)
        self.energy = _energies(model)
        self.lines: list = []
        self.tensors: list[Directive] = []
        self.writer = weight_file.Writer()
        self.loaded: dict[ir.Value, Register] = {}  # constants in a register now
        self.stored: dict[ir.Value, Weight] = {}  # constants in the weights file
        self.synapses: dict[ir.Value, Register] = {}

    def run(self, model_file: str, model_sha256: str, weights_name: str) -> tuple[Listing, bytes]:
        phase = 0
        self._barrier_comment(phase)
        partners = set(self.schedule.partner.values())  # written with their layer's spiking product
        for node in self.schedule.order:
            if self.schedule.phase[node] != phase:
                self._barrier(phase)
                phase = self.schedule.phase[node]
            if node in self.attention:
                self._attention(node, self.attention[node])
            elif node not in partners and node not in self.fused:
                self._node(node)
        data = self.writer.data()
        header = [
            Directive("model", {"file": model_file, "sha256": model_sha256}),
            Directive("weights", {"file": weights_name, "bytes": len(data), "sha256": weight_file.sha256(data)}),
            Directive("preset", {"name": presets.DEFAULT}, comment=self._workload()),
            *self.tensors,
            *(Directive("input", {"register": _register(v), "type": printer.format_value_type(v)}) for v in self.graph.inputs),
            *(Directive("output", {"register": _register(v)}) for v in self.graph.outputs),
            Comment(f"{self.schedule.steps} time steps in {len(self.schedule.durations)} barriers; instructions by phase"),
        ]
        return Listing(header + self.lines), data

    # the phases

    def _barrier(self, phase: int) -> None:
        steps = self.schedule.durations[phase] if phase < len(self.schedule.durations) else 0
        closing = sorted(
            {_source_name(n) for n, p in self.schedule.phase.items() if p == phase and n in self.windows}
        )
        done = sum(self.schedule.durations[: phase + 1])
        self.lines.append(Instruction(
            "barrier", operands=[steps],
            comment=f"step {done} of {self.schedule.steps}: the windows of {', '.join(closing)} close",
        ))
        self._barrier_comment(phase + 1)

    def _barrier_comment(self, phase: int) -> None:
        self.lines.append(Comment(f"phase {phase}"))

    # the nodes

    def _node(self, node: ir.Node) -> None:
        if is_kirin(node, SPIKE_MATMUL, INT_MATMUL):
            self._layer(node)
        elif is_kirin(node):
            self._emit(node, MNEMONICS[node.op_type], _kirin_attributes(node))
        else:
            self._emit(node, "host", self._host_attributes(node), op=node.op_type)

    def _layer(self, node: ir.Node) -> None:
        """A synaptic layer: its spiking product (``sacc``) and the integer product of its
        outliers (``imac``), on the synapses made once from the weight's codes (``syn``)."""
        integer = self.schedule.partner.get(node) if is_kirin(node, SPIKE_MATMUL) else node
        spiking = node if is_kirin(node, SPIKE_MATMUL) else None
        products = [p for p in (spiking, integer) if p is not None]
        mode = "hybrid" if spiking and integer else "spiking" if spiking else "integer"
        readers = node.outputs[0].consumers()
        name = readers[0].name if len(readers) == 1 else node.name
        self.lines.append(Instruction("layer", operands=[Word(name), Word(mode)]))
        for product in products:
            right = self._synapses(product)
            operands = [self._operand(product.inputs[0]), right]
            attributes = {}
            if product is spiking:
                attributes["window"] = self.windows[product]
                if _trajectory(product):
                    attributes["trace"] = 1
            self._instruction(product, "sacc" if product is spiking else "imac", operands, attributes)
        self.lines.append(Instruction("end"))
        self._free_after(*products)

    def _attention(self, node: ir.Node, match: torch_fusion.AttentionMatch) -> None:
        """A float attention as one host operation (``attn``): the nodes of the match, from the
        two products to the softmax between them, are not written."""
        reads = [match.query, match.key_transposed, match.value] + ([match.mask] if match.mask is not None else [])
        operands = [self._operand(v, inline=True) for v in reads]
        self._instruction(node, "attn", operands, {"scale": float(match.scale), "zero_nan_rows": int(match.zero_nan_rows)})
        self._free_after(node, reads=reads)

    def _synapses(self, product: ir.Node) -> Register:
        """The register of a product's right operand: for a constant weight its synapses
        (made once, from the codes and the block sub-scales and offsets)."""
        weight = product.inputs[1]
        if weight.const_value is None:
            return self._operand(weight)
        if weight not in self.synapses:
            parts = [product.inputs[i] if i < len(product.inputs) else None for i in (1, 2, 3)]
            operands = [None if v is None else self._operand(v) for v in parts]
            register = Register(f"{weight.name}.syn")
            group = product.attributes["group"].value if "group" in product.attributes else 0
            rows, columns = (int(d) for d in weight.const_value.shape.dims)
            self.lines.append(Instruction(
                "syn", [register], operands, {"group": group}, comment=f"{rows * columns:,} synapses, {rows} x {columns}",
            ))
            self.synapses[weight] = register
            # the codes, sub-scales and offsets are in the synapses now, unless another op reads them
            freed = [self.loaded.pop(v) for v in dict.fromkeys(parts) if v in self.loaded and _only_products_read(v)]
            if freed:
                self.lines.append(Instruction("free", operands=freed))
        return self.synapses[weight]

    def _emit(self, node: ir.Node, mnemonic: str, attributes: dict, op: str | None = None) -> None:
        operands = [self._operand(v, inline=op is not None) for v in node.inputs]
        self._instruction(node, mnemonic, operands, attributes, op)
        self._free_after(node)

    def _instruction(self, node: ir.Node, mnemonic: str, operands: list, attributes: dict, op: str | None = None) -> None:
        outputs = [_register(v) if v.name and (v.uses() or v.is_graph_output()) else None for v in node.outputs]
        self.lines.append(Instruction(
            mnemonic, outputs, operands, attributes, label=node.name, op=op, comment=self.energy.get(node.name, ""),
        ))

    def _free_after(self, *nodes: ir.Node, reads: list[ir.Value] | None = None) -> None:
        """Frees the buffers ``nodes`` read last (the graph outputs stay); ``reads``: what they
        read, when it is not their inputs."""
        dead = []
        pairs = ((n, v) for n in nodes for v in (n.inputs if reads is None else reads) if v is not None)
        for node, value in dict.fromkeys(pairs):
            if value.is_graph_output() or self.schedule.last_use.get(value) is not node:
                continue
            if value.const_value is not None and value.producer() is None:
                if value in self.loaded:
                    dead.append(self.loaded.pop(value))
                if value in self.synapses:
                    dead.append(self.synapses.pop(value))
            elif value.name and _register(value) not in dead:
                dead.append(_register(value))
        if dead:
            self.lines.append(Instruction("free", operands=dead))

    # operands

    def _operand(self, value: ir.Value | None, inline: bool = False):
        """A value as an operand: its register, loading a constant first (a host operation's
        small integer list or scalar, with ``inline``, is written in the line)."""
        if value is None or (not value.name and value.producer() is None):
            return None
        tensor = value.const_value
        if tensor is None or value.producer() is not None:
            return _register(value)
        if inline and _inline(tensor):
            return _immediate(tensor)
        if value not in self.loaded:
            register = _register(value)
            weight = self._stored(value.name, tensor, value)
            size = self.tensors[weight.index].fields["tensor"].size  # tensor N is the N-th .tensor line
            self.lines.append(Instruction("load", [register], [weight], comment=f"{size:,} bytes"))
            self.loaded[value] = register
        return self.loaded[value]

    def _stored(self, name: str, tensor: ir.TensorProtocol, key) -> Weight:
        if key not in self.stored:
            offset, size = self.writer.add(tensor)
            reference = Weight(len(self.stored))
            dims = tuple(int(d) for d in tensor.shape.dims)
            self.tensors.append(Directive("tensor", {"tensor": Tensor(
                reference.index, weight_file.dtype_name(tensor.dtype), dims, offset, size, name,
            )}))
            self.stored[key] = reference
        return self.stored[key]

    def _host_attributes(self, node: ir.Node) -> dict:
        attributes = {}
        for name, attr in sorted(node.attributes.items()):
            if attr.type == ir.AttributeType.TENSOR:
                attributes[name] = self._stored(f"{node.name}.{name}", attr.value, (node, name))
            elif attr.type == ir.AttributeType.TENSORS:
                attributes[name] = [self._stored(f"{node.name}.{name}.{i}", t, (node, name, i)) for i, t in enumerate(attr.value)]
            else:
                attributes[name] = _plain(node, attr)
        return attributes

    def _workload(self) -> str:
        workload = self.model.metadata_props.get(KEY_WORKLOAD)
        if workload is None:
            return "no operation counts: compile with energy-annotate for them"
        work = json.loads(workload)
        return f"counts of {work['runs']} run(s), {work['tokens']} tokens ({work['mode']} mode); energy per token"


def _energies(model: ir.Model) -> dict[str, str]:
    """Each node's comment: its counts and its energy per token (compute and memory)."""
    if KEY_WORKLOAD not in model.metadata_props:
        return {}
    document = report.build(model, presets.load(presets.DEFAULT))
    tokens = document["workload"]["tokens"] or 1
    comments = {}
    for node in document["nodes"]:
        counts = ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in node["counts"].items())
        energy = sum(node["energy_pj"].values()) / tokens
        comments[node["name"]] = f"{counts} | {energy:,.1f} pJ/token"
    return comments


def _only_products_read(value: ir.Value) -> bool:
    return all(is_kirin(use.node, SPIKE_MATMUL, INT_MATMUL) and use.idx >= 1 for use in value.uses())


def _register(value: ir.Value) -> Register:
    return Register(value.name)


def _inline(tensor: ir.TensorProtocol) -> bool:
    """Small integer constants (shapes, axes) and scalars are written in the line; every other
    constant (weights, scales, tables) is loaded from the weights file."""
    if tensor.dtype == ir.DataType.STRING or tensor.size > _INLINE_MAX_ELEMENTS:
        return False
    return tensor.size <= 1 or not tensor.dtype.is_floating_point()


def _immediate(tensor: ir.TensorProtocol) -> Immediate:
    shape = tuple(int(d) for d in tensor.shape.dims) if tensor.shape.rank() else None
    values = tuple(printer.format_scalar(x, tensor.dtype) for x in tensor.numpy().ravel())
    return Immediate(printer.format_dtype(tensor.dtype), shape, values)


def _plain(node: ir.Node, attr: ir.Attr):
    kind = attr.type
    if kind == ir.AttributeType.STRING:
        return attr.value.decode() if isinstance(attr.value, bytes) else attr.value
    if kind == ir.AttributeType.STRINGS:
        return [v.decode() if isinstance(v, bytes) else v for v in attr.value]
    if kind == ir.AttributeType.INT:
        return attr.value
    if kind == ir.AttributeType.FLOAT:  # float32, as a file holds it
        return float(np.float32(attr.value))
    if kind == ir.AttributeType.INTS:
        return list(attr.value)
    if kind == ir.AttributeType.FLOATS:
        return [float(np.float32(v)) for v in attr.value]
    raise UnsupportedOpError(node.name, node.op_type, f"attribute '{attr.name}' of type {kind.name} has no listing form")


def _kirin_attributes(node: ir.Node) -> dict:
    return {name: _plain(node, attr) for name, attr in sorted(node.attributes.items())}


def _window(product: ir.Node) -> int:
    return product.inputs[0].producer().attributes["window"].value


def _source_name(product: ir.Node) -> str:
    return product.inputs[0].producer().name


def _trajectory(product: ir.Node) -> bool:
    """Whether an output neuron reading the product compares while it integrates (the
    ablation without the silent phase): the product then gives its membrane at every step."""
    return any(
        is_kirin(consumer, TTFS_NEURON) and not consumer.attributes["silent"].value
        for consumer in product.outputs[0].consumers()
    )
