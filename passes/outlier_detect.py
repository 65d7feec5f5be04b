"""``outlier-detect``: calibrate, then choose each product's 8-bit outliers within a budget.

Runs the model on the calibration inputs (`kirin_compiler.calibration`: float activations,
quantized weights; statistics cached on disk) and rewrites every ``ActQuant``:

1. A left operand with per-token scales (every linear input, ``Q`` and ``P`` of attention)
   gets ``k = floor(fraction * K)`` outliers out of its ``K`` channels, at least one
   (`arithmetic.outlier_count`):
   - ``mode=token``: chosen per token at run time, the token's ``k`` largest ``|x|``
     (``outliers="token"``, ``outlier_count=k``);
   - ``mode=static``: the ``k`` channels of largest calibration mean ``x^2``, the same for every
     token (``outliers="static"``, a boolean mask input); ``P``, whose channels are key
     positions, keeps per-token outliers.
   ``P`` has its own budget, ``attention_fraction`` of its keys (a query's probability mass
   sits on few keys); ``k`` is fixed here: for ``P`` a fraction of the calibration length.
   Outlier codes are 8-bit with a per-token scale; the quantizer gains two outputs (codes and
   scale), which its products take as two more inputs.
2. A quantizer with a static scale gets it from calibration: ``s = max|x| / top``. For a
   post-ReLU input the ``k`` channels of largest mean ``x^2`` (any mode but ``none``) become
   static outliers whose scale, ``max|x| / 127``, is static too; the spike scale is taken over
   the other channels only. ``V`` of ``P · V`` gets one scale per head and channel.
3. ``mode=none`` adds no outliers (a W4A4 model); static scales are still calibrated.
4. With ``clip_search``, every quantizer of the linear inputs and ``Q`` with a run-time scale
   gets the ``clip`` of `ACT_CLIPS` whose codes (outliers, gains and all) have the least
   squared error on the calibration inputs (every fourth token), each channel weighted by the
   energy of its row of the products' dequantized weights, ``sum_n (s_w r Wq + s_w z)^2``: how
   far an error in that channel moves the outputs. ``P`` keeps ``clip=1``.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
import onnx_ir as ir
import torch

from kirin_compiler import arithmetic, calibration, rewrite, roles
from kirin_compiler.calibration import ChannelStats
from kirin_compiler.kirin_ops import ACT_QUANT, QMATMUL, is_kirin
from kirin_compiler.errors import KirinError
from kirin_compiler.pass_manager import Pass

ACT_CLIPS = (1.0, 0.95, 0.9, 0.85, 0.8, 0.7)  # clipping ratios of the run-time spike scales


@dataclasses.dataclass(frozen=True)
class OutlierDetectPass(Pass):
    """Calibration, then 8-bit outliers per product (chosen per token or as static channels)
    within a budget, the clipping of run-time scales, and the static scales."""

    name = "outlier-detect"
    requires_passes = ("quantize",)
    runs_once = True
    needs_calibration = True

    mode: Literal["token", "static", "none"] = "token"
    fraction: float = 0.03
    attention_fraction: float = 0.01
    clip_search: bool = True

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for option in ("fraction", "attention_fraction"):
            if not 0.0 <= getattr(self, option) < 1.0:
                raise KirinError(f"option {option}={getattr(self, option)}: use a fraction in [0, 1)")
        quantizers = [n for n in model.graph if is_kirin(n, ACT_QUANT) and "outliers" not in n.attributes]
        if not quantizers:
            return ir.passes.PassResult(model, False)
        searches = {n.name: self._search(n) for n in quantizers if self._searched(n)}
        stats = calibration.statistics(model, searches)
        provenance = calibration.attached(model).provenance()
        model.metadata_props[calibration.KEY_CALIBRATION] = provenance
        names = rewrite.Names(model.graph)
        for node in quantizers:
            self._rewrite(model.graph, node, stats[node.name], names)
        return ir.passes.PassResult(model, True)

    def _searched(self, quantizer: ir.Node) -> bool:
        """Whether the quantizer's clip is searched: a run-time scale over the last axis, not
        the probabilities ``P``, and outliers chosen per token or none."""
        a = quantizer.attributes
        return (
            self.clip_search and self.mode != "static" and a["scale"].value == "token"
            and a["axis"].value == -1 and not _reads_probabilities(quantizer)
        )

    def _search(self, quantizer: ir.Node) -> calibration.Search:
        # the quantizer as it will code, clip aside: outliers are what this pass gives it
        attributes = {name: attribute.value for name, attribute in quantizer.attributes.items()}
        spec = arithmetic.ActivationSpec.of(attributes)._replace(
            outliers="token" if self.mode == "token" and self.fraction else "none", count=0, clip=1.0
        )
        return calibration.Search(spec, self.fraction, ACT_CLIPS, _importance(quantizer))

    def _rewrite(self, graph: ir.Graph, node: ir.Node, stats: ChannelStats, names: rewrite.Names) -> None:
        attributes = node.attributes
        static = attributes["scale"].value == "static"
        channels = stats.amax.shape[-1]
        probabilities = _reads_probabilities(node)
        fraction = self.attention_fraction if probabilities else self.fraction
        count = arithmetic.outlier_count(fraction, channels) if self.mode != "none" else 0
        axis = attributes["axis"].value
        node.attributes["outliers"] = ir.AttrString("outliers", "none")
        if stats.errors is not None:
            clip = ACT_CLIPS[int(np.argmin(stats.errors))]  # the first (largest) on a tie
            # as the file holds it (a float attribute is float32): the model in memory then
            # computes what its file does
            node.attributes["clip"] = ir.AttrFloat32("clip", float(np.float32(clip)))
        if static:
            self._static_scales(graph, node, stats, count if axis == -1 else 0, names)
        elif axis == -1 and count:
            # P's channels are key positions: static choices would not fit another length
            if self.mode == "token" or probabilities:
                node.attributes["outliers"] = ir.AttrString("outliers", "token")
                node.attributes["outlier_count"] = ir.AttrInt64("outlier_count", count)
                _add_outlier_outputs(node, names)
            else:
                mask = _top_channels(stats, count)
                node.attributes["outliers"] = ir.AttrString("outliers", "static")
                _set_inputs(node, {2: rewrite.constant(graph, mask, f"{node.name}.mask", names)})
                _add_outlier_outputs(node, names)

    @staticmethod
    def _static_scales(
        graph: ir.Graph, node: ir.Node, stats: ChannelStats, count: int, names: rewrite.Names
    ) -> None:
        bits, signed = node.attributes["bits"].value, bool(node.attributes["signed"].value)
        top = arithmetic.code_range(bits, signed)[1]
        if node.attributes["axis"].value == -2:  # V: per head and channel
            scale = stats.amax / top
            _set_inputs(node, {1: rewrite.constant(graph, _guarded(scale), f"{node.name}.scale", names)})
            return
        amax = stats.amax.reshape(-1, stats.amax.shape[-1]).max(axis=0)
        if not count:
            scale = _guarded(amax.max() / top)
            _set_inputs(node, {1: rewrite.constant(graph, scale, f"{node.name}.scale", names)})
            return
        mask = _top_channels(stats, count)
        node.attributes["outliers"] = ir.AttrString("outliers", "static")
        spike_scale = _guarded(amax[~mask].max(initial=0.0) / top)
        outlier_scale = _guarded(amax[mask].max() / arithmetic.OUTLIER_TOP)
        _set_inputs(node, {
            1: rewrite.constant(graph, spike_scale, f"{node.name}.scale", names),
            2: rewrite.constant(graph, mask, f"{node.name}.mask", names),
            3: rewrite.constant(graph, outlier_scale, f"{node.name}.oscale", names),
        })
        _add_outlier_outputs(node, names)


def _importance(quantizer: ir.Node) -> np.ndarray | None:
    """Per input channel, ``sum_n W[k, n]^2`` of the dequantized weights of the linear products
    reading the quantizer's codes (None when no linear product does: attention)."""
    energy = None
    for use in quantizer.outputs[0].uses():
        product = use.node
        if not is_kirin(product, QMATMUL) or use.idx != 0 or product.inputs[2].const_value is None:
            continue
        inputs = list(product.inputs) + [None] * (8 - len(product.inputs))
        codes, scale, block_scale, block_offset = (
            None if v is None else torch.from_numpy(_integers(v)) for v in (inputs[2], inputs[3], inputs[6], inputs[7])
        )
        group = product.attributes["group"].value
        weights = arithmetic.synapses(codes, block_scale, block_offset, group, torch.float64) * scale.double()
        row_energy = weights.square().sum(dim=1).numpy()
        energy = row_energy if energy is None else energy + row_energy
    return None if energy is None else energy.astype(np.float32)


def _integers(value: ir.Value) -> np.ndarray:
    """An initializer's array, INT4 codes as int8."""
    array = value.const_value.numpy()
    return array.astype(np.int8) if value.const_value.dtype == ir.DataType.INT4 else array


def _reads_probabilities(quantizer: ir.Node) -> bool:
    """Whether the quantizer's codes are the probabilities ``P`` of an ``attn-pv`` product."""
    return any(
        roles.role(use.node) == roles.ATTENTION_PV and use.idx == 0 for use in quantizer.outputs[0].uses()
    )


def _top_channels(stats: ChannelStats, count: int) -> np.ndarray:
    """The ``count`` channels of largest mean ``x^2`` (averaged over heads); ties to the lower
    index."""
    energy = stats.mean_square.reshape(-1, stats.mean_square.shape[-1]).mean(axis=0)
    order = np.argsort(-energy, kind="stable")[:count]
    mask = np.zeros(energy.shape, dtype=np.bool_)
    mask[order] = True
    return mask


def _guarded(scale: np.ndarray) -> np.ndarray:
    scale = np.asarray(scale, dtype=np.float32)
    return np.where(scale == 0, np.float32(1.0), scale).astype(np.float32)


def _set_inputs(node: ir.Node, inputs: dict[int, ir.Value]) -> None:
    node.resize_inputs(max(len(node.inputs), max(inputs) + 1))
    for index, value in inputs.items():
        node.replace_input_with(index, value)


def _add_outlier_outputs(node: ir.Node, names: rewrite.Names) -> None:
    """The quantizer's outlier codes and scale, passed on to every product reading it."""
    node.resize_outputs(4)
    codes, scale = node.outputs[2], node.outputs[3]
    codes.name = names.fresh(f"{node.name}.qo")
    scale.name = names.fresh(f"{node.name}.so")
    codes.type, codes.shape = node.outputs[0].type, node.outputs[0].shape
    scale.type = ir.TensorType(ir.DataType.FLOAT)
    for consumer in [u.node for u in node.outputs[0].uses()]:
        if is_kirin(consumer, QMATMUL) and consumer.inputs[0] is node.outputs[0]:
            _set_inputs(consumer, {4: codes, 5: scale})
