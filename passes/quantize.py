"""``quantize``: 4-bit weights and an activation quantizer in front of every product.

Rewrite rules (the math is in ``docs/arithmetic.md``, sections 1 and 2):

1. Every linear ``MatMul(x, W)`` with a role (``lm_head`` only with ``lm_head=true``) becomes
   ``QMatMul(codes, scale, Wq, s_w)``: ``Wq = clamp(R(W / s_w), -7, 7)`` stored as INT4, with
   one scale per output channel (``group=0``) or per block of ``group`` input rows, each scale
   chosen by a clipping search when ``clip_search`` is set. Weights whose rows do not split into
   whole groups keep per-channel scales.
2. Its input ``x`` gets an ``ActQuant`` with per-token scales (``axis=-1``), signed 4-bit codes,
   or unsigned ones when ``x`` comes out of a ``Relu``; such a post-ReLU input has a static
   scale (calibrated by ``outlier-detect``) when ``relu_static`` is set, so that the producing
   product's output neurons can fire its spikes (``threshold-insert``). Products reading the
   same value share its quantizer.
3. ``attn-qk``, ``Q · K^T``: ``Q`` gets per-token signed codes; ``K^T`` (the product's
   right operand) ``kv_bits`` codes with one scale per column, that is per key token.
4. ``attn-pv``, ``P · V``: ``P`` gets per-token unsigned codes (probabilities are not negative);
   ``V`` ``kv_bits`` codes with a static scale per head and channel (per-token scales would not
   factor out of the sum over tokens, and a per-channel maximum over the tokens would let a
   token see later ones), calibrated by ``outlier-detect``.

Each ``QMatMul`` carries ``bound``, the largest product of two codes (the 8-bit outliers
included), so that the backends can keep every integer sum exact.
"""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np
import onnx_ir as ir

from kirin_compiler import arithmetic, rewrite, roles
from kirin_compiler.kirin_ops import ACT_QUANT, QMATMUL
from kirin_compiler.errors import KirinError
from kirin_compiler.pass_manager import Pass

OUTLIER_TOP = 127  # 8-bit outlier codes, [-127, 127]


@dataclasses.dataclass(frozen=True)
class QuantizePass(Pass):
    """W4 weights (per output channel or group, clipping search) and activation quantizers at
    every linear input and both operands of the attention products."""

    name = "quantize"
    requires_passes = ("canonicalize",)

    bits: int = 4
    act_bits: int = 4
    kv_bits: int = 8
    group: int = 0
    clip_search: bool = True
    relu_static: bool = True
    lm_head: bool = False

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        for option, value in (("bits", self.bits), ("act_bits", self.act_bits), ("kv_bits", self.kv_bits)):
            if not 2 <= value <= 8:
                raise KirinError(f"option {option}={value}: use 2 to 8 bits")
        graph = model.graph
        names = rewrite.Names(graph)
        quantizers: dict[tuple, tuple[ir.Value, ir.Value]] = {}
        modified = False
        for node in list(graph):
            role = roles.role(node)
            if role is None or (role == "lm_head" and not self.lm_head):
                continue  # not a product the method quantizes
            if roles.is_linear(node):
                self._linear(graph, node, quantizers, names)
            elif role in (roles.ATTENTION_QK, roles.ATTENTION_PV):
                self._attention(graph, node, quantizers, names)
            else:
                continue
            modified = True
        if modified:
            rewrite.drop_unused_initializers(graph)
            rewrite.import_kirin_domain(model)
        return ir.passes.PassResult(model, modified)

    def _linear(self, graph: ir.Graph, node: ir.Node, quantizers: dict, names: rewrite.Names) -> None:
        x, weight = node.inputs
        array = weight.const_value.numpy()
        group = self.group if self.group and array.shape[0] % self.group == 0 else 0
        codes, scales = arithmetic.quantize_weight(array, self.bits, group, self.clip_search)
        del array
        if isinstance(weight.const_value, ir.ExternalTensor) and len(weight.uses()) == 1:
            weight.const_value.release()  # unmap the float weight: memory grows by one weight
        stem = weight.name.removesuffix(".weight")
        w_codes = rewrite.constant(graph, codes.astype(_int_type(self.bits)), f"{stem}.wq", names)
        w_scale = rewrite.constant(graph, scales.astype(np.float32), f"{stem}.ws", names)
        unsigned = _after_relu(x)
        static = unsigned and self.relu_static
        act = self._quantizer(graph, node, x, -1, self.act_bits, not unsigned, static, quantizers, names)
        top = 2 ** (self.bits - 1) - 1
        self._replace(graph, node, act, (w_codes, w_scale), group, max(OUTLIER_TOP, 2**self.act_bits) * top)

    def _attention(self, graph: ir.Graph, node: ir.Node, quantizers: dict, names: rewrite.Names) -> None:
        left, right = node.inputs
        is_pv = roles.role(node) == roles.ATTENTION_PV
        act = self._quantizer(graph, node, left, -1, self.act_bits, not is_pv, False, quantizers, names)
        kv = self._quantizer(graph, node, right, -2, self.kv_bits, True, is_pv, quantizers, names)
        kv_top = 2 ** (self.kv_bits - 1) - 1
        self._replace(graph, node, act, kv, 0, max(OUTLIER_TOP, 2**self.act_bits) * kv_top)

    def _quantizer(
        self, graph: ir.Graph, consumer: ir.Node, x: ir.Value, axis: int, bits: int,
        signed: bool, static: bool, quantizers: dict, names: rewrite.Names,
    ) -> tuple[ir.Value, ir.Value]:
        key = (x, axis, bits, signed, static)
        if key not in quantizers:
            name = names.fresh(f"{_product_name(consumer)}.in{0 if axis == -1 else 1}")
            scale_mode = "static" if static else "token"
            attributes = {"axis": axis, "bits": bits, "signed": int(signed), "scale": scale_mode}
            meta = {k: v for k, v in consumer.metadata_props.items() if k == roles.LAYER}
            outputs = [names.fresh(f"{name}.q"), names.fresh(f"{name}.s")]
            node = rewrite.kirin_node(ACT_QUANT, [x], attributes, name, outputs, meta)
            codes, scale = node.outputs
            codes.type, codes.shape = ir.TensorType(ir.DataType.INT8), x.shape
            scale.type = ir.TensorType(ir.DataType.FLOAT)
            graph.insert_before(consumer, [node])  # the first consumer: graph order is kept
            quantizers[key] = tuple(node.outputs)
        return quantizers[key]

    @staticmethod
    def _replace(graph, node, act, weights, group, bound) -> None:
        name = _product_name(node)
        attributes = {"group": group, "bound": bound}
        qmatmul = rewrite.kirin_node(
            QMATMUL, [*act, *weights], attributes, name, [name], dict(node.metadata_props)
        )
        rewrite.replace(graph, [node], [qmatmul], list(node.outputs), list(qmatmul.outputs))


def _product_name(node: ir.Node) -> str:
    layer = roles.layer(node)
    role = roles.role(node)
    return role if layer is None else f"layers.{layer}.{role}"


def _after_relu(x: ir.Value) -> bool:
    producer = x.producer()
    return producer is not None and producer.op_type == "Relu"


def _int_type(bits: int) -> type:
    return ml_dtypes.int4 if bits <= 4 else np.int8
