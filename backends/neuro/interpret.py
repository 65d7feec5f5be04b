"""The interpreter: a listing executed with its weights file, step by step where it spikes.

`Program` first checks the whole listing against its weights file and the instruction set
(``docs/isa.md``): every error is a `ListingError` with the line and column of the bad part.
`Program.run` then executes the instructions in order:

- ``enc`` and ``fire``: layers of TTFS neurons, over their window, with the silence-threshold
  schedule (`arithmetic.fire`); ``quant``: integer codes that are not sent as spikes;
- ``syn``: synapses from a weight's codes and sub-scales (`arithmetic.synapses`); ``sacc``:
  output neurons integrating spike trains step by step with additions
  (`arithmetic.integrate_spikes`); ``imac``: the outliers' integer multiply-accumulates;
  ``rescale``: the float part of a product;
- ``host``: a standard ONNX op, through the torch backend's op table (`torch_backend.call`);
- ``load``, ``free``, ``layer``/``end``, ``barrier``: memory and the schedule (checked, not
  computed).

Like the torch backend, it reports to a `Probe` the integers it computes (codes decoded from
the spike trains, outlier codes, accumulators), under the node names the labels give, and what
it did (spikes, threshold comparisons, accumulates, membrane updates, MACs).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

import ml_dtypes
import numpy as np
import torch

from kirin_compiler import arithmetic as ka
from kirin_compiler.backends import torch_backend, torch_fusion
from kirin_compiler.backends.neuro import weights as weight_file
from kirin_compiler.backends.neuro.listing import (
    Immediate,
    Instruction,
    Listing,
    ListingError,
    Position,
    Register,
    Weight,
    Word,
)
from kirin_compiler.backends.torch_ops import OPS
from kirin_compiler.backends.torch_ops._table import as_array, as_tensor
from kirin_compiler.execution import Probe, report_outliers, report_spikes
from kirin_compiler.kirin_ops import ACT_QUANT, SIGNATURES, TTFS_ENCODER, TTFS_NEURON, Attribute

# a layer's mode and the products it holds
LAYER_MODES = {"spiking": {"sacc"}, "hybrid": {"sacc", "imac"}, "integer": {"imac"}}


@dataclasses.dataclass(frozen=True)
class Spec:
    """An instruction's form: how many outputs and operands, which operands must be given,
    and its attributes (those of the ai.kirin op ``signature`` names, or its own)."""

    outputs: tuple[int, int]
    operands: tuple[int, int]
    required: tuple[int, ...] = ()
    signature: str | None = None
    own: dict[str, Attribute] = dataclasses.field(default_factory=dict)

    @property
    def attributes(self) -> dict[str, Attribute]:
        return SIGNATURES[self.signature].attributes if self.signature else self.own

    @property
    def operands_required(self) -> tuple[int, ...]:
        return SIGNATURES[self.signature].required if self.signature else self.required


_FLAG = Attribute(int, choices=(0, 1))
SPECS = {
    "load": Spec((1, 1), (1, 1), (0,)),
    "syn": Spec((1, 1), (1, 3), (0,), own={"group": Attribute(int, required=True, low=0, high=2**31 - 1)}),
    "enc": Spec((2, 4), (1, 4), signature=TTFS_ENCODER),
    "quant": Spec((2, 4), (1, 4), signature=ACT_QUANT),
    "sacc": Spec((1, 1), (2, 2), (0, 1), own={"window": Attribute(int, required=True, low=1, high=256), "trace": _FLAG}),
    "imac": Spec((1, 1), (2, 2), (0, 1)),
    "rescale": Spec((1, 1), (3, 5), (0, 1, 2)),
    "fire": Spec((2, 4), (7, 9), signature=TTFS_NEURON),
    "attn": Spec((1, 1), (3, 4), (0, 1, 2), own={"scale": Attribute(float, required=True), "zero_nan_rows": _FLAG}),
    "host": Spec((1, math.inf), (0, math.inf)),
    "layer": Spec((0, 0), (2, 2), (0, 1)),
    "end": Spec((0, 0), (0, 0)),
    "barrier": Spec((0, 0), (1, 1), (0,)),
    "free": Spec((0, 0), (1, math.inf)),
}
_WITH_OUTLIERS = ("token", "static")


class Program:
    """A listing and its weights, checked and ready to run, reporting to ``probe``."""

    def __init__(self, listing: Listing, data: bytes, path: str, probe: Probe | None = None) -> None:
        self.listing, self.data, self.path = listing, data, path
        self.probe = probe or Probe()
        self.tensors = listing.tensors
        self.inputs = [d.fields["register"].name for d in listing.directives("input")]
        self.outputs = [d.fields["register"].name for d in listing.directives("output")]
        _Checker(self).run()

    def run(self, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        missing = [name for name in self.inputs if name not in feeds]
        if missing:
            raise KeyError(f"missing inputs: {', '.join(missing)}")
        env: dict[str, torch.Tensor] = {name: as_tensor(np.asarray(feeds[name])) for name in self.inputs}
        constants: set[str] = set()
        with torch.inference_mode():
            for instruction in self.listing.instructions:
                self._execute(instruction, env, constants)
        return [as_array(env[name]) for name in self.outputs]

    def _execute(self, instruction: Instruction, env: dict, constants: set) -> None:
        mnemonic = instruction.mnemonic
        if mnemonic in ("layer", "end", "barrier"):
            return
        if mnemonic == "free":
            for register in instruction.operands:
                env.pop(register.name)
                constants.discard(register.name)
            return
        if mnemonic == "load":
            name = instruction.outputs[0].name
            env[name] = self.constant(instruction.operands[0])
            constants.add(name)
            return
        values = [self._value(o, env) for o in instruction.operands]
        if mnemonic == "host":
            flags = [isinstance(o, Immediate) or (isinstance(o, Register) and o.name in constants) for o in instruction.operands]
            attributes = {k: self._attribute(v) for k, v in instruction.attributes.items()}
            results = torch_backend.call(instruction.op, values, attributes, len(instruction.outputs), flags)
        else:
            results = _KIRIN[mnemonic](self.probe, instruction.label, values, instruction.attributes)
        for register, result in zip(instruction.outputs, results):
            if register is not None:
                env[register.name] = result

    def _value(self, operand, env: dict):
        if isinstance(operand, Register):
            return env[operand.name]
        if isinstance(operand, Immediate):
            return immediate(operand)
        return operand

    def _attribute(self, value):
        if isinstance(value, Weight):
            return self.constant(value)
        if isinstance(value, list) and value and isinstance(value[0], Weight):
            return [self.constant(v) for v in value]
        return value

    def constant(self, weight: Weight) -> torch.Tensor:
        t = self.tensors[weight.index]
        return _tensor(weight_file.read(self.data, t.dtype, t.shape, t.offset, t.size))


def immediate(value: Immediate) -> torch.Tensor:
    dtype = weight_file.data_type(value.dtype)
    kind = dtype.numpy()
    items = [
        (t == "true") if dtype.name == "BOOL" else int(t) if dtype.is_integer() else float(t)
        for t in value.values
    ]
    return _tensor(np.array(items, dtype=kind).reshape(value.shape or ()))


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A constant as a tensor; 4-bit codes as bytes (torch has no 4-bit type), as the torch
    backend gives them to its ops."""
    if array.dtype in (ml_dtypes.int4, ml_dtypes.uint4):
        array = array.astype(np.int8 if array.dtype == ml_dtypes.int4 else np.uint8)
    return as_tensor(array)


# The spiking and integer instructions --------------------------------------------------------


def _padded(values: list, count: int) -> list:
    return list(values) + [None] * (count - len(values))


def _split(values: list, attributes: dict):
    x, spike_scale, mask, outlier_scale = _padded(values, 4)
    spec = ka.ActivationSpec.of(attributes)
    split = ka.split_activation(x, spec, spike_scale, mask, outlier_scale)
    return spec, split, *ka.activation_codes(split, spec)


def _outlier_codes(probe: Probe, label: str, codes: ka.SparseCodes) -> torch.Tensor:
    dense = codes.dense()
    probe.integers(label, "outlier-codes", dense)
    if probe.counts_operations:
        report_outliers(probe, label, codes.values)
    return dense


def _with_outliers(probe: Probe, label: str, split: ka.Split, first: list, outliers) -> list:
    if outliers is None:
        return first
    return [*first, _outlier_codes(probe, label, outliers), split.outlier_scale]


def _enc(probe: Probe, label: str, values: list, attributes: dict) -> list:
    """TTFS encoders: each neuron's input is complete when its window opens; it fires once,
    when its membrane reaches the descending threshold (a graded spike times its block's gain)."""
    spec, split, _, outliers = _split(values, attributes)
    lo = ka.code_range(spec.bits, spec.signed)[0]
    train, comparisons = ka.fire(split.spike_ratio(), attributes["window"], lo, count=probe.counts_operations)
    if split.gains is not None:
        train = ka.with_gains(train, split.gains.to(torch.int8))
    report_spikes(probe, label, train, comparisons)
    return _with_outliers(probe, label, split, [train, split.spike_scale], outliers)


def _quant(probe: Probe, label: str, values: list, attributes: dict) -> list:
    """Integer codes kept as integers (an attention product's right operand)."""
    _, split, codes, outliers = _split(values, attributes)
    codes = ka.with_gains(codes, split.gains)
    probe.integers(label, "codes", codes)
    return _with_outliers(probe, label, split, [codes, split.spike_scale], outliers)


def _syn(probe: Probe, label: str, values: list, attributes: dict) -> list:
    codes, block_scale, block_offset = (None if v is None else v.to(torch.int32) for v in _padded(values, 3))
    return [ka.synapses(codes, block_scale, block_offset, attributes.get("group", 0))]


def _sacc(probe: Probe, label: str, values: list, attributes: dict) -> list:
    """Output neurons integrating the input spike trains over the window, with additions."""
    train, synapses = values
    trace = bool(attributes.get("trace", 0))
    result = ka.integrate_spikes(train, synapses, trace, probe.counts_operations)
    probe.integers(label, "accumulator", result.membrane)
    if probe.counts_operations:
        probe.count(
            label, accumulates=result.spikes * synapses.shape[-1], membrane_updates=result.updates,
            inputs=train[0].numel(), outputs=result.membrane.numel(),
            dense_macs=result.membrane.numel() * synapses.shape[-2],
        )
    return [result.trajectory if trace else result.membrane]


def _imac(probe: Probe, label: str, values: list, attributes: dict) -> list:
    """The outliers' 8-bit integer multiply-accumulates."""
    codes, synapses = values
    accumulator = ka.integer_matmul(codes, synapses, sparse=True)
    probe.integers(label, "accumulator", accumulator)
    if probe.counts_operations:
        probe.count(label, int_macs=int(codes.count_nonzero()) * synapses.shape[-1])
    return [accumulator]


def _rescale(probe: Probe, label: str, values: list, attributes: dict) -> list:
    return [ka.rescale(*_padded(values, 5))]


def _fire(probe: Probe, label: str, values: list, attributes: dict) -> list:
    """Output neurons that fire the next product's spikes: ``y = rescale(V, U) + bias`` (ReLU
    for free: unsigned codes), silent while they integrate, then the descending threshold on
    ``y / out_scale``; without the silent phase they compare at every step of the trajectory."""
    acc, scale, weight_scale, int_acc, int_scale, bias, out_scale, mask, out_outlier_scale = _padded(values, 9)
    trajectory = not attributes["silent"]

    def value(v):
        y = ka.rescale(v, scale, weight_scale, int_acc, int_scale)
        return y if bias is None else y + bias

    y = value(acc[-1] if trajectory else acc)
    mask = None if mask is None else mask.expand(y.shape)
    spikes = y if mask is None else y.masked_fill(mask, 0.0)
    if trajectory:
        values_ = value(acc)
        membrane = (values_ if mask is None else values_.masked_fill(mask, 0.0)) / out_scale
    else:
        membrane = spikes / out_scale
    lo = ka.code_range(attributes["bits"], False)[0]
    train, comparisons = ka.fire(membrane, attributes["window"], lo, silent=not trajectory, count=probe.counts_operations)
    report_spikes(probe, label, train, comparisons)
    if mask is None:
        return [train, out_scale]
    outliers = ka.quantize(torch.where(mask, y, 0.0), out_outlier_scale, 0, ka.OUTLIER_TOP)
    probe.integers(label, "outlier-codes", outliers)
    if probe.counts_operations:
        report_outliers(probe, label, outliers)
    return [train, out_scale, outliers, out_outlier_scale]


def _attn(probe: Probe, label: str, values: list, attributes: dict) -> list:
    """A float attention on the host, as one operation: ``softmax(q kT scale + mask) v``."""
    return [torch_fusion.fused_attention(*values, scale=attributes["scale"], zero_nan_rows=bool(attributes.get("zero_nan_rows", 0)))]


_KIRIN: dict[str, Callable] = {
    "attn": _attn, "enc": _enc, "quant": _quant, "syn": _syn, "sacc": _sacc, "imac": _imac, "rescale": _rescale, "fire": _fire,
}


# The checks -----------------------------------------------------------------------------------


class _Checker:
    """Checks a listing before it runs: its header, its weights file, and every instruction's
    form, references, registers and place in the schedule."""

    def __init__(self, program: Program) -> None:
        self.program = program
        self.path = program.path
        self.defined: set[str] = set()
        self.pending: dict[str, int] = {}  # accumulators whose window has not closed: their window
        self.layer: tuple[str, Position] | None = None
        self.layer_mode = ""
        self.products: set[str] = set()  # the layer's products so far

    def fail(self, where: Position, message: str):
        raise ListingError(self.path, where.line, where.column, message)

    def run(self) -> None:
        listing = self.program.listing
        weights = listing.directive("weights")
        if weights is None:
            raise ListingError(self.path, 1, 1, "the listing has no .weights line")
        self._weights(weights)
        for directive in listing.directives("tensor"):
            self._tensor(directive)
        self.defined.update(self.program.inputs)
        for instruction in listing.instructions:
            self._instruction(instruction)
        if self.layer is not None:
            self.fail(self.layer[1], f"layer '{self.layer[0]}' is not closed by 'end'")
        for directive in listing.directives("output"):
            if directive.fields["register"].name not in self.defined:
                self.fail(directive.where(), f"output %{directive.fields['register'].name} is never computed")

    def _weights(self, directive) -> None:
        data, fields = self.program.data, directive.fields
        where = directive.where()
        if len(data) != fields["bytes"]:
            self.fail(where, f"the weights file '{fields['file']}' has {len(data):,} bytes, the listing says "
                      f"{fields['bytes']:,}: emit the listing and its weights again")
        if weight_file.sha256(data) != fields["sha256"]:
            self.fail(where, f"the weights file '{fields['file']}' is not the one the listing was emitted with "
                      "(its SHA-256 differs): emit the listing and its weights again")

    def _tensor(self, directive) -> None:
        t = directive.fields["tensor"]
        expected = weight_file.expected_size(t.dtype, t.shape)
        if expected is None:
            self.fail(directive.where("type"), f"unknown data type '{t.dtype}'")
        if t.size != expected:
            self.fail(directive.where("size"), f"@{t.index} is {t.dtype}{list(t.shape)}: {expected} bytes, not {t.size}")
        if t.offset + t.size > len(self.program.data):
            self.fail(directive.where("offset"), f"@{t.index} ends at byte {t.offset + t.size:,}, past the end "
                      f"of the weights file ({len(self.program.data):,} bytes)")

    def _instruction(self, instruction: Instruction) -> None:
        mnemonic = instruction.mnemonic
        spec = SPECS.get(mnemonic)
        if spec is None:
            self.fail(instruction.where("mnemonic"), f"unknown instruction '{mnemonic}' (known: {', '.join(SPECS)})")
        self._counts(instruction, spec)
        for index, operand in enumerate(instruction.operands):
            self._operand(instruction, index, operand, spec)
        self._attributes(instruction, spec)
        getattr(self, f"_check_{mnemonic}", lambda i: None)(instruction)
        for index, register in enumerate(instruction.outputs):
            if register is not None:
                if mnemonic != "free" and register.name in self.defined:
                    self.fail(instruction.where(f"output{index}"), f"%{register.name} is defined a second time (free it first)")
                self.defined.add(register.name)
        if mnemonic == "sacc" and instruction.outputs[0] is not None:
            self.pending[instruction.outputs[0].name] = instruction.attributes.get("window", 0)

    def _counts(self, instruction: Instruction, spec: Spec) -> None:
        for part, (low, high), have in (("outputs", spec.outputs, len(instruction.outputs)),
                                        ("operands", spec.operands, len(instruction.operands))):
            if not low <= have <= high:
                wanted = str(low) if low == high else f"{low} to {high}" if high != math.inf else f"at least {low}"
                self.fail(instruction.where("mnemonic"), f"'{instruction.mnemonic}' takes {wanted} {part}, not {have}")
        if spec.signature is not None:
            attributes = instruction.attributes
            outliers = attributes.get("outliers", "none") in _WITH_OUTLIERS
            if len(instruction.outputs) != (4 if outliers else 2):
                self.fail(instruction.where("mnemonic"), f"'{instruction.mnemonic}' with outliers={attributes.get('outliers', 'none')!r} "
                          f"has {4 if outliers else 2} outputs, not {len(instruction.outputs)}")

    def _operand(self, instruction: Instruction, index: int, operand, spec: Spec) -> None:
        where = instruction.where(f"operand{index}")
        mnemonic = instruction.mnemonic
        if operand is None:
            if index in spec.operands_required:
                self.fail(where, f"operand {index + 1} of '{mnemonic}' must be given")
            return
        if mnemonic == "load":
            if not isinstance(operand, Weight):
                self.fail(where, "'load' takes a weight reference (@N)")
            if operand.index not in self.program.tensors:
                self.fail(where, f"@{operand.index} is not a tensor of the weights file (no .tensor line declares it)")
            return
        if mnemonic in ("layer",):
            if not isinstance(operand, Word):
                self.fail(where, f"'layer' takes a name and a mode, not {operand}")
            return
        if mnemonic == "barrier":
            if not isinstance(operand, int):
                self.fail(where, f"'barrier' takes a number of steps, not {operand}")
            return
        if isinstance(operand, (Word, Weight, int)):
            self.fail(where, f"operand {index + 1} of '{mnemonic}' must be a register or a constant, not {operand}")
        if isinstance(operand, Immediate):
            self._immediate(where, operand)
            return
        if operand.name not in self.defined:
            self.fail(where, f"%{operand.name} is read before it is defined (or after it is freed)")
        if operand.name in self.pending:
            self.fail(where, f"%{operand.name} is read before the barrier that closes its window")
        if mnemonic == "free":
            self.defined.discard(operand.name)

    def _immediate(self, where: Position, value: Immediate) -> None:
        dtype = weight_file.data_type(value.dtype)
        if dtype is None:
            self.fail(where, f"unknown data type '{value.dtype}'")
        count = int(np.prod(value.shape or (), dtype=np.int64))
        if count != len(value.values):
            self.fail(where, f"{value} has {len(value.values)} values for {count} elements")
        try:
            immediate(value)
        except (ValueError, OverflowError):
            self.fail(where, f"{value} is not a constant of type {value.dtype}")

    def _attributes(self, instruction: Instruction, spec: Spec) -> None:
        if instruction.mnemonic == "host":
            return
        allowed = spec.attributes
        for name, value in instruction.attributes.items():
            where = instruction.where(f"attribute:{name}")
            if name not in allowed:
                self.fail(where, f"'{instruction.mnemonic}' has no attribute '{name}'"
                          + (f" (it takes {', '.join(allowed)})" if allowed else ""))
            rule = allowed[name]
            kind_ok = isinstance(value, rule.kind) or (rule.kind is float and isinstance(value, int))
            if not kind_ok or isinstance(value, list) or not rule.allows(value):
                self.fail(where, f"{name} = {value!r} must be {rule.describe()}")
        for name, rule in allowed.items():
            if rule.required and name not in instruction.attributes:
                self.fail(instruction.where("mnemonic"), f"'{instruction.mnemonic}' needs the attribute '{name}'")

    def _check_host(self, instruction: Instruction) -> None:
        if instruction.op not in OPS:
            self.fail(instruction.where("op"), f"host operation '{instruction.op}' is not in the torch backend's op table")
        for name, value in instruction.attributes.items():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, Weight) and item.index not in self.program.tensors:
                    self.fail(instruction.where(f"attribute:{name}"), f"@{item.index} is not a tensor of the weights file")

    def _check_sacc(self, instruction: Instruction) -> None:
        self._in_layer(instruction)

    def _check_imac(self, instruction: Instruction) -> None:
        self._in_layer(instruction)

    def _in_layer(self, instruction: Instruction) -> None:
        if self.layer is None:
            self.fail(instruction.where("mnemonic"), f"'{instruction.mnemonic}' must be inside a layer (layer NAME, MODE ... end)")
        if instruction.mnemonic not in LAYER_MODES[self.layer_mode]:
            self.fail(instruction.where("mnemonic"), f"'{instruction.mnemonic}' in layer '{self.layer[0]}', whose mode "
                      f"is {self.layer_mode}")
        self.products.add(instruction.mnemonic)

    def _check_layer(self, instruction: Instruction) -> None:
        name, mode = instruction.operands
        if self.layer is not None:
            self.fail(instruction.where("mnemonic"), f"layer '{self.layer[0]}' is not closed by 'end' before this one")
        if mode.text not in LAYER_MODES:
            self.fail(instruction.where("operand1"), f"layer mode '{mode.text}' is not one of {', '.join(LAYER_MODES)}")
        self.layer, self.layer_mode, self.products = (name.text, instruction.where("mnemonic")), mode.text, set()

    def _check_end(self, instruction: Instruction) -> None:
        if self.layer is None:
            self.fail(instruction.where("mnemonic"), "'end' without a layer to close")
        missing = LAYER_MODES[self.layer_mode] - self.products
        if missing:
            self.fail(self.layer[1], f"layer '{self.layer[0]}' is {self.layer_mode} but has no {' or '.join(sorted(missing))}")
        self.layer = None

    def _check_barrier(self, instruction: Instruction) -> None:
        steps = instruction.operands[0]
        for register, window in self.pending.items():
            if window > steps:
                self.fail(instruction.where("operand0"), f"the barrier waits {steps} steps, but the window of "
                          f"%{register} takes {window}")
        self.pending = {}
