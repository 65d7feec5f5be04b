"""The ``ai.kirin`` ops as torch modules, one class per op, in three modes.

- ``float``: activation quantizers are identities (codes are the float values, scales 1), so a
  compiled model runs with its 4-bit weights and float activations (W4A16). Calibration runs here.
- ``qann``: the integer reference of ``docs/arithmetic.md`` (codes, integer products, rescale).
- ``snn``: spikes. ``TTFSEncoder`` and ``TTFSNeuron`` run their neurons step by step against the
  silence-threshold schedule and emit spike trains ``[T, ...]``; ``SpikeMatMul`` integrates the
  trains with additions, step by step. Integer (outlier) products stay integer products.

Every module reports to a `Probe`: what it computed (integer accumulators and codes, by node
name) and what it did (spikes, accumulates, membrane updates, threshold comparisons, MACs).
`kirinc verify`, calibration and energy accounting are probes.
"""

from __future__ import annotations

from typing import Literal

import torch

from kirin_compiler import arithmetic as ka
from kirin_compiler.errors import KirinError
from kirin_compiler.kirin_ops import (
    ACT_QUANT,
    INT_MATMUL,
    QMATMUL,
    RESCALE,
    SPIKE_MATMUL,
    TTFS_ENCODER,
    TTFS_NEURON,
)

Mode = Literal["float", "qann", "snn"]
MODES: tuple[Mode, ...] = ("float", "qann", "snn")


class Probe:
    """Receives what the Kirin modules compute and do while a model runs; ignores it all.

    A subclass sets ``records_integers`` and ``counts_operations`` to receive those reports:
    the modules skip the work of making reports nobody reads."""

    records_integers = False
    counts_operations = False

    def observe(self, node: str, x: torch.Tensor, axis: int) -> None:
        """An activation quantizer's float input (``float`` mode only)."""

    def integers(self, node: str, kind: str, values: torch.Tensor) -> None:
        """An integer result: ``accumulator`` (V or U), ``codes`` or ``outlier-codes``."""

    def count(self, node: str, **counts: int) -> None:
        """Operation counts of one run of a node (added up by the probe)."""


class KirinModule(torch.nn.Module):
    """Base of the op modules: the node's name, attributes and mode, and the shared probe."""

    _is_impure = True  # they report to the probe: dead-code elimination keeps them

    def __init__(self, name: str, attributes: dict, mode: Mode, probe: Probe) -> None:
        super().__init__()
        self.node = name
        self.attributes = attributes
        self.mode = mode
        self.probe = probe

    def extra_repr(self) -> str:
        return f"{self.node!r}, mode={self.mode}"

    @property
    def counting(self) -> bool:
        """Whether to report operation counts: the probe wants them, and the network runs
        (``qann`` derives them from its codes, ``snn`` measures them step by step)."""
        return self.mode != "float" and self.probe.counts_operations


class ActQuant(KirinModule):
    """``ActQuant(X, [spike_scale], [outlier_mask], [outlier_scale])``: 4-bit codes of the spike
    matrix and 8-bit codes of the outliers, with their scales (``docs/kirin_ops.md``)."""

    def forward(self, x, spike_scale=None, outlier_mask=None, outlier_scale=None):
        a = self.attributes
        axis, outliers = a["axis"], a.get("outliers", "none")
        if self.mode == "float":
            self.probe.observe(self.node, x, axis)
            one = torch.ones((), dtype=x.dtype)
            return (x, one) if outliers == "none" else (x, one, torch.zeros_like(x), one)
        if a.get("scale", "token") == "static" and spike_scale is None:
            raise KirinError(
                f"node '{self.node}': its static scale is not calibrated yet; run outlier-detect"
            )
        lo, hi = ka.code_range(a["bits"], bool(a["signed"]))
        if self.counting:  # the division, and the scale's maximum unless it is static
            self.probe.count(self.node, float_ops=(1 if spike_scale is not None else 2) * x.numel())
        # unsigned codes: only positive values count (negative ones get code 0), no |x| needed
        magnitude = x if lo == 0 else x.abs()
        mask, rest = self._outlier_mask(magnitude, outlier_mask)
        if mask is None:
            if spike_scale is None:
                spike_scale = ka.guard(magnitude.amax(dim=axis, keepdim=True).clamp_(min=0) / hi)
            return self.spike_codes(x / spike_scale, lo=lo, hi=hi), spike_scale
        if spike_scale is None:  # the largest value left to the spikes
            if rest is None:
                rest = magnitude.masked_fill(mask, 0.0).amax(dim=axis, keepdim=True)
            spike_scale = ka.guard(rest.clamp(min=0) / hi)
        if outlier_scale is None:  # a token's largest |x| is always one of its outliers
            largest = magnitude if outliers == "token" else magnitude.masked_fill(~mask, 0.0)
            outlier_scale = ka.guard(largest.amax(dim=axis, keepdim=True).clamp_(min=0) / 127)
        # one division and one rounding: each value by the scale of its path
        ratio = x / torch.where(mask, outlier_scale, spike_scale)
        rounded = ka.round_codes(ratio, lo)
        codes = self.spike_codes(ratio, rounded, mask, lo, hi)
        outlier_codes = rounded.masked_fill_(~mask, 0.0).clamp_(0 if lo == 0 else -127, 127)
        self.probe.integers(self.node, "outlier-codes", outlier_codes)
        return codes, spike_scale, outlier_codes, outlier_scale

    def spike_codes(self, ratio, rounded=None, mask=None, lo=0, hi=0):
        """The spike matrix's codes from ``ratio = x / s`` (``rounded``: ``R(ratio)``, when
        already computed; ``mask``: the outliers, whose spike codes are zero)."""
        if rounded is None:
            rounded = ka.round_codes(ratio, lo)
        codes = rounded.masked_fill(mask, 0.0) if mask is not None else rounded
        codes = codes.clamp_(lo, hi)
        self.probe.integers(self.node, "codes", codes)
        return codes

    def _outlier_mask(self, magnitude, static_mask):
        """The outliers' mask, and the largest magnitude left out when it comes for free."""
        a = self.attributes
        outliers = a.get("outliers", "none")
        if outliers == "token":
            return ka.token_outliers(magnitude, a["axis"], a["outlier_count"])
        if outliers == "static":
            return static_mask.expand(magnitude.shape), None
        return None, None


class TTFSEncoder(ActQuant):
    """``TTFSEncoder``: an ``ActQuant`` whose spike codes are fired by TTFS neurons.

    In the snn mode each neuron's normalized membrane is ``x / s`` (its input is complete when
    its window opens) and `arithmetic.fire` runs the threshold schedule over ``window`` steps:
    output 0 is the spike train, from which `spike_codes` recovers exactly the qann codes."""

    def spike_codes(self, ratio, rounded=None, mask=None, lo=0, hi=0):
        if self.mode != "snn":
            codes = super().spike_codes(ratio, rounded, mask, lo, hi)
            if self.counting:
                _report_codes(self.probe, self.node, codes, self.attributes["window"])
            return codes
        if mask is not None:
            ratio = ratio.masked_fill(mask, 0.0)
        steps, count = self.attributes["window"], self.probe.counts_operations
        train, comparisons = ka.fire(ratio, steps, lo, count=count)
        _report_spikes(self.probe, self.node, train, comparisons)
        return train


class QMatMul(KirinModule):
    """``QMatMul(codes, scale, weight_codes, weight_scale, [outlier_codes, outlier_scale])``:
    the quantized product of section 3, before it is split into spike and integer paths."""

    def forward(self, codes, scale, weights, weight_scale, outlier_codes=None, outlier_scale=None):
        if self.mode == "snn":
            raise KirinError(
                f"node '{self.node}': the snn mode needs spiking products; run "
                "spike-matrix-hybridize and threshold-insert"
            )
        group, bound = self.attributes.get("group", 0), self.attributes.get("bound")
        if self.mode == "float":
            return ka.rescale(ka.float_matmul(codes, weights, group), scale, weight_scale, group=group, reuse=True)
        spike_acc = ka.integer_matmul(codes, weights, group, bound)
        int_acc = None
        if outlier_codes is not None:
            int_acc = ka.integer_matmul(outlier_codes, weights, group, bound)
        return ka.rescale(spike_acc, scale, weight_scale, int_acc, outlier_scale, group, reuse=True)


class SpikeMatMul(KirinModule):
    """``SpikeMatMul(spikes, weight_codes) -> V``: the spike path's accumulators.

    qann: ``V = qN @ Wq``. snn: `arithmetic.integrate_spikes` over the input spike train. With
    ``trajectory`` set (its consumer is a neuron without a silent phase) the snn mode returns
    the membrane at every step, ``[T, ...]``, instead of the final one."""

    trajectory = False

    def forward(self, spikes, weights):
        group, bound = self.attributes.get("group", 0), self.attributes.get("bound")
        if self.mode == "float":
            return ka.float_matmul(spikes, weights, group)
        if self.mode == "qann":
            acc = ka.integer_matmul(spikes, weights, group, bound)
            self.probe.integers(self.node, "accumulator", acc)
            if self.counting:  # from the codes: each non-zero code is one spike
                fan_out = weights.shape[-1]
                self.probe.count(
                    self.node, accumulates=int(torch.count_nonzero(spikes)) * fan_out,
                    membrane_updates=_membrane_update_bound(spikes, group) * fan_out,
                )
            return acc
        result = ka.integrate_spikes(
            spikes, weights, group, bound, self.trajectory, self.probe.counts_operations
        )
        self.probe.integers(self.node, "accumulator", result.membrane)
        self.probe.count(
            self.node, accumulates=result.spikes * weights.shape[-1], membrane_updates=result.updates,
        )
        return result.trajectory if self.trajectory else result.membrane


class IntMatMul(KirinModule):
    """``IntMatMul(outlier_codes, weight_codes) -> U``: the integer path, multiply-accumulates."""

    def forward(self, codes, weights):
        group = self.attributes.get("group", 0)
        if self.mode == "float":  # float activations carry no outliers: U = 0
            return torch.zeros(ka.product_shape(codes.shape, weights.shape, group))
        acc = ka.integer_matmul(codes, weights, group, self.attributes.get("bound"))
        self.probe.integers(self.node, "accumulator", acc)
        if self.counting:
            self.probe.count(self.node, int_macs=int(codes.count_nonzero()) * weights.shape[-1])
        return acc


class Rescale(KirinModule):
    """``Rescale(V, scale, weight_scale, [U, outlier_scale]) -> Y``: the float part. ``reuse``
    (set by the lowering when this node is the accumulators' only reader) computes ``Y`` in
    their memory."""

    reuse = False

    def forward(self, spike_acc, scale, weight_scale, int_acc=None, outlier_scale=None):
        group = self.attributes.get("group", 0)
        if self.counting:
            self.probe.count(self.node, float_ops=spike_acc.numel() * (2 if int_acc is None else 4))
        y = ka.rescale(spike_acc, scale, weight_scale, int_acc, outlier_scale, group, reuse=self.reuse)
        return y


class TTFSNeuron(KirinModule):
    """``TTFSNeuron(V, scale, weight_scale, [U, outlier_scale], [bias], out_scale, [out_mask],
    [out_outlier_scale])``: the output neurons of a spiking product that fire the next
    product's spikes themselves (``y = relu(rescale(V, U) + bias)`` encoded with the static
    ``out_scale``); outputs as ``ActQuant``. Without the silent phase (``silent=0``) the neurons
    compare their membrane while it still integrates, the ablation of ``docs/arithmetic.md``."""

    def forward(self, spike_acc, scale, weight_scale, int_acc, outlier_scale, bias,
                out_scale, out_mask=None, out_outlier_scale=None):
        a = self.attributes
        group = a.get("group", 0)
        trajectory = self.mode == "snn" and not a["silent"]
        final = spike_acc[-1] if trajectory else spike_acc
        y = self._value(final, scale, weight_scale, int_acc, outlier_scale, bias, group)
        mask = None if out_mask is None else out_mask.expand(y.shape)
        if self.mode == "float":
            y = torch.relu(y)
            one = torch.ones((), dtype=y.dtype)
            return (y, one) if mask is None else (y, one, torch.zeros_like(y), one)
        lo, hi = ka.code_range(a["bits"], False)
        if self.counting:
            ops_per_output = (2 if int_acc is None else 4) + (bias is not None) + 1  # + the division
            self.probe.count(self.node, float_ops=y.numel() * ops_per_output)
        spikes = y if mask is None else y.masked_fill(mask, 0.0)
        if self.mode == "qann":
            codes = ka.quantize(spikes, out_scale, lo, hi)
            if self.counting:
                _report_codes(self.probe, self.node, codes, a["window"])
        else:
            if trajectory:
                values = self._value(spike_acc, scale, weight_scale, int_acc, outlier_scale, bias, group)
                membrane = (values if mask is None else values.masked_fill(mask, 0.0)) / out_scale
            else:
                membrane = spikes / out_scale
            codes, comparisons = ka.fire(
                membrane, a["window"], lo, silent=not trajectory, count=self.probe.counts_operations
            )
            _report_spikes(self.probe, self.node, codes, comparisons)
        if self.mode == "qann":
            self.probe.integers(self.node, "codes", codes)
        if mask is None:
            return codes, out_scale
        outlier_codes = ka.quantize(torch.where(mask, y, 0.0), out_outlier_scale, 0, 127)
        self.probe.integers(self.node, "outlier-codes", outlier_codes)
        return codes, out_scale, outlier_codes, out_outlier_scale

    @staticmethod
    def _value(spike_acc, scale, weight_scale, int_acc, outlier_scale, bias, group):
        y = ka.rescale(spike_acc, scale, weight_scale, int_acc, outlier_scale, group)
        return y if bias is None else y + bias


def _report_spikes(probe: Probe, node: str, train: torch.Tensor, comparisons: int) -> None:
    """What a layer of TTFS neurons did in one window; its codes, decoded from the spike
    train for comparison with the qann mode (decoding is not part of the network)."""
    if probe.records_integers:
        probe.integers(node, "codes", ka.spike_codes(train))
    if probe.counts_operations:
        neurons = train[0].numel()
        probe.count(node, spikes=int(torch.count_nonzero(train)), comparisons=comparisons, neurons=neurons)


def _report_codes(probe: Probe, node: str, codes: torch.Tensor, steps: int) -> None:
    """The work of a layer of TTFS neurons, from the codes they send (qann mode): one spike per
    non-zero code; a neuron compares until it fires, ``T - |q|`` times, a silent one ``T - 1``."""
    magnitude = codes.abs()
    comparisons = int((steps - magnitude).masked_fill_(magnitude == 0, steps - 1).sum())
    probe.count(node, spikes=int(torch.count_nonzero(codes)), comparisons=comparisons, neurons=codes.numel())


def _membrane_update_bound(codes: torch.Tensor, group: int) -> int:
    """Membrane updates per output neuron, summed over tokens, from the codes: a neuron's
    membrane changes from the step after its token's first input spike (``max |q|`` steps
    before the window's end) to the end. An upper bound of what the snn mode measures: a
    current that is exactly zero (zero weights, cancelling spikes) changes nothing there."""
    magnitude = codes.abs()
    if group:
        magnitude = magnitude.unflatten(-1, (-1, group))
    return int(magnitude.amax(dim=-1).sum())


MODULES: dict[str, type[KirinModule]] = {
    ACT_QUANT: ActQuant,
    TTFS_ENCODER: TTFSEncoder,
    QMATMUL: QMatMul,
    SPIKE_MATMUL: SpikeMatMul,
    INT_MATMUL: IntMatMul,
    RESCALE: Rescale,
    TTFS_NEURON: TTFSNeuron,
}
