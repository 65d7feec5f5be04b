"""The ``ai.kirin`` ops as torch modules, one class per op, in three modes.

- ``float``: activation quantizers are identities (codes are the float values, scales 1), so a
  compiled model runs with its 4-bit weights and float activations (W4A16). Calibration runs here.
- ``qann``: the integer reference of ``docs/arithmetic.md`` (codes, integer products, rescale).
- ``snn``: spikes. ``TTFSEncoder`` and ``TTFSNeuron`` run their neurons step by step against the
  silence-threshold schedule and emit spike trains ``[T, ...]``; ``SpikeMatMul`` integrates the
  trains with additions, step by step. Integer (outlier) products stay integer products.

Every module reports to a `kirin_compiler.execution.Probe`: what it computed (integer
accumulators and codes, by node name) and what it did (spikes, accumulates, membrane updates,
threshold comparisons, MACs). `kirinc verify`, calibration and energy accounting are probes.
"""

from __future__ import annotations

import torch

from kirin_compiler import arithmetic as ka
from kirin_compiler.errors import KirinError
from kirin_compiler.execution import Mode, Probe, report_outliers, report_spikes
from kirin_compiler.kirin_ops import (
    ACT_QUANT,
    INT_MATMUL,
    QMATMUL,
    RESCALE,
    SPIKE_MATMUL,
    TTFS_ENCODER,
    TTFS_NEURON,
)

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
    """``ActQuant(X, [spike_scale], [outlier_mask], [outlier_scale])``: the codes of the spike
    matrix (times their block gains) and the 8-bit codes of the outliers, with their scales
    (``docs/kirin_ops.md``; the math is `arithmetic.split_activation`). With ``sparse`` the
    outlier codes go to the products as `arithmetic.SparseCodes`, a few entries per token."""

    sparse = False  # set by the lowering when only products read the outlier codes

    def __init__(self, name: str, attributes: dict, mode: Mode, probe: Probe) -> None:
        super().__init__(name, attributes, mode, probe)
        self.spec = ka.ActivationSpec.of(attributes)

    def forward(self, x, spike_scale=None, outlier_mask=None, outlier_scale=None):
        spec = self.spec
        if self.mode == "float":
            self.probe.observe(self.node, x, spec.axis)
            one = torch.ones((), dtype=x.dtype)
            return (x, one) if spec.outliers == "none" else (x, one, torch.zeros_like(x), one)
        if self.counting:  # the division, and the scale's maximum unless it is static
            self.probe.count(self.node, values=x.numel(), float_ops=(1 if spike_scale is not None else 2) * x.numel())
        split = ka.split_activation(x, spec, spike_scale, outlier_mask, outlier_scale)
        # the codes take the ratio's memory, except in the snn mode, whose neurons fire it
        codes, outlier_codes = ka.activation_codes(split, spec, reuse=self.mode == "qann")
        spikes = self.spikes(split, codes)
        if outlier_codes is None:
            return spikes, split.spike_scale
        if self.counting:
            report_outliers(self.probe, self.node, outlier_codes.values)
        if self.probe.records_integers or not self.sparse:
            dense = outlier_codes.dense()
            self.probe.integers(self.node, "outlier-codes", dense)
            outlier_codes = outlier_codes if self.sparse else dense
        return spikes, split.spike_scale, outlier_codes, split.outlier_scale

    def spikes(self, split: ka.Split, codes: torch.Tensor) -> torch.Tensor:
        """What the spiking products read: the spike ``codes`` times their block gains."""
        codes = ka.with_gains(codes, split.gains)
        self.probe.integers(self.node, "codes", codes)
        return codes


class TTFSEncoder(ActQuant):
    """``TTFSEncoder``: an ``ActQuant`` whose spike codes are fired by TTFS neurons.

    In the snn mode each neuron's normalized membrane is its ``ratio`` (``x / (gain * s_N)``:
    its input is complete when its window opens) and `arithmetic.fire` runs the threshold
    schedule over ``window`` steps. Output 0 is the spike train; a spike carries its block's
    gain (a graded spike) when the quantizer has gains, so that `arithmetic.spike_codes`
    recovers exactly the qann codes."""

    def spikes(self, split: ka.Split, codes: torch.Tensor) -> torch.Tensor:
        steps = self.attributes["window"]
        if self.mode != "snn":
            if self.counting:
                _report_codes(self.probe, self.node, codes, steps, split.gains)
            return super().spikes(split, codes)
        lo = ka.code_range(self.spec.bits, self.spec.signed)[0]
        train, comparisons = ka.fire(split.spike_ratio(), steps, lo, count=self.probe.counts_operations)
        if split.gains is not None:
            train = ka.with_gains(train, split.gains.to(torch.int8))
        report_spikes(self.probe, self.node, train, comparisons)
        return train


class _Product(KirinModule):
    """A product of codes with a weight: a linear one's synapses (`arithmetic.synapses`, from
    the weight codes and the optional block sub-scales and offsets) or an attention product's
    right operand. ``constant`` (set by the lowering for a linear product, whose synapses it
    makes once) keeps the weights' norms (`arithmetic.WeightNorms`) from call to call."""

    constant = False

    def __init__(self, name: str, attributes: dict, mode: Mode, probe: Probe) -> None:
        super().__init__(name, attributes, mode, probe)
        self._norms: ka.WeightNorms | None = None

    def synapses(self, weights, block_scale=None, block_offset=None) -> torch.Tensor:
        group = self.attributes.get("group", 0)
        return ka.synapses(weights, block_scale, block_offset, group)

    def product(self, codes, synapses, sparse=False) -> torch.Tensor:
        """The exact integer product (`arithmetic.integer_matmul`)."""
        if not self.constant:
            return ka.integer_matmul(codes, synapses, sparse)
        if self._norms is None:
            self._norms = ka.WeightNorms(synapses)
        return ka.integer_matmul(codes, synapses, sparse, self._norms)


class QMatMul(_Product):
    """``QMatMul(codes, scale, weight_codes, weight_scale, [outlier_codes, outlier_scale],
    [block_scale], [block_offset])``: the quantized product of section 3, before it is split
    into spike and integer paths."""

    def forward(self, codes, scale, weights, weight_scale, outlier_codes=None, outlier_scale=None,
                block_scale=None, block_offset=None):
        if self.mode == "snn":
            raise KirinError(
                f"node '{self.node}': the snn mode needs spiking products; run "
                "spike-matrix-hybridize and threshold-insert"
            )
        synapses = self.synapses(weights, block_scale, block_offset)
        if self.mode == "float":
            return ka.rescale(ka.float_matmul(codes, synapses), scale, weight_scale, reuse=True)
        spike_acc = self.product(codes, synapses)
        int_acc = None
        if outlier_codes is not None:
            int_acc = self.product(outlier_codes, synapses, sparse=True)
        return ka.rescale(spike_acc, scale, weight_scale, int_acc, outlier_scale, reuse=True)


class SpikeMatMul(_Product):
    """``SpikeMatMul(spikes, weight_codes, [block_scale], [block_offset]) -> V``: the spike
    path's accumulators.

    qann: ``V = q @ W``. snn: `arithmetic.integrate_spikes` over the input spike train. With
    ``trajectory`` set (its consumer is a neuron without a silent phase) the snn mode returns
    the membrane at every step, ``[T, ...]``, instead of the final one. ``window`` is the input
    window ``T`` (the qann mode's bound on membrane updates needs it)."""

    trajectory = False
    window = 0

    def forward(self, spikes, weights, block_scale=None, block_offset=None):
        synapses = self.synapses(weights, block_scale, block_offset)
        if self.mode == "float":
            return ka.float_matmul(spikes, synapses)
        fan_out = weights.shape[-1]
        if self.mode == "qann":
            acc = self.product(spikes, synapses)
            self.probe.integers(self.node, "accumulator", acc)
            if self.counting:  # from the codes: each non-zero code is one spike
                self.probe.count(
                    self.node, accumulates=int(torch.count_nonzero(spikes)) * fan_out,
                    membrane_updates=_membrane_update_bound(spikes, self.window) * fan_out,
                    **_dense_work(spikes.numel(), acc.numel(), weights.shape[-2]),
                )
            return acc
        result = ka.integrate_spikes(spikes, synapses, self.trajectory, self.probe.counts_operations)
        self.probe.integers(self.node, "accumulator", result.membrane)
        if self.probe.counts_operations:
            self.probe.count(
                self.node, accumulates=result.spikes * fan_out, membrane_updates=result.updates,
                **_dense_work(spikes[0].numel(), result.membrane.numel(), weights.shape[-2]),
            )
        return result.trajectory if self.trajectory else result.membrane


class IntMatMul(_Product):
    """``IntMatMul(outlier_codes, weight_codes, [block_scale], [block_offset]) -> U``: the
    integer path, multiply-accumulates (over the channels that carry outliers)."""

    def forward(self, codes, weights, block_scale=None, block_offset=None):
        if self.mode == "float":  # float activations carry no outliers: U = 0
            return torch.zeros(ka.product_shape(codes.shape, weights.shape))
        acc = self.product(codes, self.synapses(weights, block_scale, block_offset), sparse=True)
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
        if self.counting:
            self.probe.count(self.node, float_ops=spike_acc.numel() * (2 if int_acc is None else 4))
        return ka.rescale(spike_acc, scale, weight_scale, int_acc, outlier_scale, reuse=self.reuse)


class TTFSNeuron(KirinModule):
    """``TTFSNeuron(V, scale, weight_scale, [U, outlier_scale], [bias], out_scale, [out_mask],
    [out_outlier_scale])``: the output neurons of a spiking product that fire the next
    product's spikes themselves (``y = relu(rescale(V, U) + bias)`` encoded with the static
    ``out_scale``); outputs as ``ActQuant``. Without the silent phase (``silent=0``) the neurons
    compare their membrane while it still integrates, the ablation of ``docs/arithmetic.md``."""

    def forward(self, spike_acc, scale, weight_scale, int_acc, outlier_scale, bias,
                out_scale, out_mask=None, out_outlier_scale=None):
        a = self.attributes
        trajectory = self.mode == "snn" and not a["silent"]
        final = spike_acc[-1] if trajectory else spike_acc
        y = self._value(final, scale, weight_scale, int_acc, outlier_scale, bias)
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
                values = self._value(spike_acc, scale, weight_scale, int_acc, outlier_scale, bias)
                membrane = (values if mask is None else values.masked_fill(mask, 0.0)) / out_scale
            else:
                membrane = spikes / out_scale
            codes, comparisons = ka.fire(
                membrane, a["window"], lo, silent=not trajectory, count=self.probe.counts_operations
            )
            report_spikes(self.probe, self.node, codes, comparisons)
        if self.mode == "qann":
            self.probe.integers(self.node, "codes", codes)
        if mask is None:
            return codes, out_scale
        outlier_codes = ka.quantize(torch.where(mask, y, 0.0), out_outlier_scale, 0, ka.OUTLIER_TOP)
        self.probe.integers(self.node, "outlier-codes", outlier_codes)
        if self.counting:
            report_outliers(self.probe, self.node, outlier_codes)
        return codes, out_scale, outlier_codes, out_outlier_scale

    @staticmethod
    def _value(spike_acc, scale, weight_scale, int_acc, outlier_scale, bias):
        y = ka.rescale(spike_acc, scale, weight_scale, int_acc, outlier_scale)
        return y if bias is None else y + bias


def _report_codes(
    probe: Probe, node: str, codes: torch.Tensor, steps: int, gains: torch.Tensor | None = None
) -> None:
    """The work of a layer of TTFS neurons, from the codes they send (qann mode): one spike per
    non-zero code; a neuron compares until it fires, ``T - |q|`` times, a silent one ``T - 1``;
    the codes' magnitudes times their gains (as `execution.report_spikes`)."""
    magnitude = codes.abs()
    comparisons = int((steps - magnitude).masked_fill(magnitude == 0, steps - 1).sum())
    probe.count(
        node, spikes=int(torch.count_nonzero(codes)), comparisons=comparisons, neurons=codes.numel(),
        magnitude=int(ka.with_gains(magnitude, gains).sum()),
    )


def _dense_work(inputs: int, outputs: int, fan_in: int) -> dict[str, int]:
    """A product's size: its left operand's and its result's elements, and the multiply-
    accumulates of the same product computed densely (every result from all ``fan_in`` inputs)."""
    return {"inputs": inputs, "outputs": outputs, "dense_macs": outputs * fan_in}


def _membrane_update_bound(codes: torch.Tensor, window: int) -> int:
    """Membrane updates per output neuron, summed over tokens, from the codes: a neuron's
    membrane changes from the step after its token's first input spike (``max |q|`` steps
    before the window's end) to the end. An upper bound of what the snn mode measures: a
    current that is exactly zero (zero weights, cancelling spikes) changes nothing there.
    Codes times block gains can pass the window; a spike code is at most ``window - 1``."""
    magnitude = codes.abs().amax(dim=-1)
    if window:
        magnitude = magnitude.clamp_(max=window - 1)
    return int(magnitude.sum())


MODULES: dict[str, type[KirinModule]] = {
    ACT_QUANT: ActQuant,
    TTFS_ENCODER: TTFSEncoder,
    QMATMUL: QMatMul,
    SPIKE_MATMUL: SpikeMatMul,
    INT_MATMUL: IntMatMul,
    RESCALE: Rescale,
    TTFS_NEURON: TTFSNeuron,
}
