"""``quantize``: 4-bit weights and an activation quantizer in front of every product.

Rewrite rules (the math is in ``docs/arithmetic.md``, sections 1 and 2):

1. Every linear ``MatMul(x, W)`` with a role (``lm_head`` only with ``lm_head=true``) becomes
   ``QMatMul(codes, scale, Wq, s_w, _, _, r, z)`` with ``W ~ s_w * (r * Wq + z)``: 4-bit codes
   ``Wq`` (INT4), one float scale per output channel, and per block of ``group`` input rows an
   integer sub-scale ``r`` (``subscale_bits``, UINT8) and, for ``asymmetric`` codes, an integer
   offset ``z`` (INT16), chosen after a clipping search when ``clip_search`` is set
   (`arithmetic.quantize_weight`). A weight whose rows do not split into whole blocks is
   quantized per output channel. A weight that comes as 4-bit codes (a ``DequantizeLinear``
   canonicalize kept) keeps its codes where every block has one step and offset
   (`arithmetic.adopt_weight_codes`), and is quantized again from its float values where not.
2. Its input ``x`` gets an ``ActQuant`` with per-token scales (``axis=-1``) and signed 4-bit
   codes; with ``act_group``, every block of that many channels has a gain of ``gain_bits``
   (``group`` and ``gain_bits`` attributes). An input that comes out of a ``Relu`` gets
   unsigned codes, without gains, and, with ``relu_static``, a static scale (calibrated by
   ``outlier-detect``), so that the producing product's output neurons can fire its spikes
   (``threshold-insert``). Products reading the same value share its quantizer.
3. ``attn-qk``, ``Q · K^T``: ``Q`` gets per-token signed codes; ``K^T`` (the product's right
   operand) ``kv_bits`` codes with one scale per column, that is per key token.
4. ``attn-pv``, ``P · V``: ``P`` gets per-token unsigned codes (probabilities are not
   negative); ``V`` ``kv_bits`` codes with a static scale per head and channel (per-token
   scales would not factor out of the sum over tokens, and a per-channel maximum over the
   tokens would let a token see later ones), calibrated by ``outlier-detect``.
   With ``attention=false`` both attention products stay float.
"""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np
import onnx_ir as ir
import torch

from kirin_compiler import arithmetic, rewrite, roles
from kirin_compiler.errors import KirinError
from kirin_compiler.kirin_ops import ACT_QUANT, QMATMUL
from kirin_compiler.pass_manager import Pass


@dataclasses.dataclass(frozen=True)
class QuantizePass(Pass):
    """W4 weights (asymmetric blocks with integer sub-scales, clipping search) and activation
    quantizers (per token, block gains) at every linear input and both operands of the
    attention products."""

    name = "quantize"
    requires_passes = ("canonicalize",)
    runs_once = True

    bits: int = 4
    group: int = 32
    asymmetric: bool = True
    subscale_bits: int = 8
    clip_search: bool = True
    act_bits: int = 4
    act_group: int = 32
    gain_bits: int = 4
    kv_bits: int = 8
    attention: bool = True
    relu_static: bool = True
    lm_head: bool = False

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self._check_options()
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
            elif role in (roles.ATTENTION_QK, roles.ATTENTION_PV) and self.attention:
                self._attention(graph, node, quantizers, names)
            else:
                continue
            modified = True
        if modified:
            rewrite.drop_unused_initializers(graph)
            rewrite.import_kirin_domain(model)
        return ir.passes.PassResult(model, modified)

    def _check_options(self) -> None:
        for option in ("bits", "act_bits", "kv_bits", "subscale_bits"):
            if not 2 <= getattr(self, option) <= 8:
                raise KirinError(f"option {option}={getattr(self, option)}: use 2 to 8 bits")
        if not 0 <= self.gain_bits <= 4:
            raise KirinError(f"option gain_bits={self.gain_bits}: use 0 (no gains) to 4 bits")
        for option in ("group", "act_group"):
            if getattr(self, option) < 0:
                raise KirinError(f"option {option}={getattr(self, option)}: use 0 or a block size")
        top = (2 ** (self.act_bits - 1) - 1) * (2**self.gain_bits - 1)  # a code times its gain
        if self.act_group and self.gain_bits and top > arithmetic.OUTLIER_TOP:
            raise KirinError(
                f"options act_bits={self.act_bits}, gain_bits={self.gain_bits}: codes times gains "
                f"reach {top}, past the 8-bit codes' {arithmetic.OUTLIER_TOP}; use fewer gain_bits, "
                "or act_group=0"
            )

    def _linear(self, graph: ir.Graph, node: ir.Node, quantizers: dict, names: rewrite.Names) -> None:
        x, weight = node.inputs
        source = roles.dequantized(weight)  # 4-bit codes canonicalize kept
        shape = list((source.inputs[0] if source else weight).const_value.shape)
        channels = x.shape[-1] if x.shape is not None and len(x.shape) else None
        if len(shape) != 2 or 0 in shape or (isinstance(channels, int) and channels != shape[0]):
            raise KirinError(
                f"node '{node.name}': weight '{weight.name}' has the shape {shape}, for an input of "
                f"shape [{', '.join(map(str, x.shape or []))}]; a linear product's weight is [K, N], "
                "K the input's channels"
            )
        depth = shape[0]
        group = _blocks(self.group, depth, "group", node)
        codes = self._adopted(source, group) if source is not None else None
        if codes is None:
            array = weight.const_value.numpy() if source is None else _dequantized(source)
            codes = arithmetic.quantize_weight(
                array, self.bits, group, self.clip_search, self.asymmetric, self.subscale_bits
            )
            del array
        if isinstance(weight.const_value, ir.ExternalTensor) and len(weight.uses()) == 1:
            weight.const_value.release()  # unmap the float weight: memory grows by one weight
        stem = weight.name.removesuffix(".weight")
        int_type = ml_dtypes.int4 if self.bits <= 4 else np.int8
        weights = [
            rewrite.constant(graph, codes.codes.astype(int_type), f"{stem}.wq", names),
            rewrite.constant(graph, codes.scale.astype(np.float32), f"{stem}.ws", names),
        ]
        blocks = [
            None if part is None else rewrite.constant(graph, part, f"{stem}.{suffix}", names)
            for part, suffix in ((codes.block_scale, "wr"), (codes.block_offset, "wz"))
        ]
        unsigned = _after_relu(x)
        static = unsigned and self.relu_static
        act_group = 0 if unsigned else _blocks(self.act_group, depth, "act_group", node)  # signed codes only
        act = self._quantizer(
            graph, node, x, -1, self.act_bits, not unsigned, static, quantizers, names, act_group
        )
        self._replace(graph, node, [*act, *weights, None, None, *blocks], group)
        if source is not None and not source.outputs[0].uses():
            graph.remove(source, safe=True)

    def _adopted(self, source: ir.Node, group: int) -> arithmetic.WeightCodes | None:
        """The 4-bit codes of a ``DequantizeLinear`` weight on the Kirin grid, unchanged, where
        the grid allows it: 4-bit asymmetric codes, and one step and offset in every block of
        ``group`` rows (a block of the source's that many blocks of ours fill). None: it does
        not, and the weight is quantized again from its float values."""
        if self.bits != 4 or not self.asymmetric:
            return None
        codes, scale, zero = (None if v is None else v.const_value for v in [*source.inputs, None][:3])
        k, n = codes.shape

        def per_weight(parameter) -> np.ndarray:  # the step or zero point of every weight, [K, N]
            values = torch.from_numpy(np.asarray(parameter.numpy()).astype(np.float32))
            return torch.broadcast_to(arithmetic.quantization_parameter(values, (k, n), *_layout(source)), (k, n)).numpy()

        step = per_weight(scale)
        zero_point = 0 if zero is None else per_weight(zero)
        unsigned = codes.dtype == ir.DataType.UINT4
        offset = step * ((8 if unsigned else 0) - zero_point)  # the value of our code 0
        rows = group or k
        step, offset = step.reshape(k // rows, rows, n), offset.reshape(k // rows, rows, n)
        if not ((step == step[:, :1]).all() and (offset == offset[:, :1]).all()):
            return None
        kirin_codes = codes.numpy().astype(np.int8) - (8 if unsigned else 0)
        return arithmetic.adopt_weight_codes(kirin_codes, step[:, 0], offset[:, 0], group, self.subscale_bits)

    def _attention(self, graph: ir.Graph, node: ir.Node, quantizers: dict, names: rewrite.Names) -> None:
        left, right = node.inputs
        is_pv = roles.role(node) == roles.ATTENTION_PV
        act = self._quantizer(graph, node, left, -1, self.act_bits, not is_pv, False, quantizers, names)
        kv = self._quantizer(graph, node, right, -2, self.kv_bits, True, is_pv, quantizers, names)
        self._replace(graph, node, [*act, *kv], 0)

    def _quantizer(
        self, graph: ir.Graph, consumer: ir.Node, x: ir.Value, axis: int, bits: int,
        signed: bool, static: bool, quantizers: dict, names: rewrite.Names, group: int = 0,
    ) -> tuple[ir.Value, ir.Value]:
        key = (x, axis, bits, signed, static, group)
        if key not in quantizers:
            name = names.fresh(f"{_product_name(consumer)}.in{0 if axis == -1 else 1}")
            scale_mode = "static" if static else "token"
            attributes = {"axis": axis, "bits": bits, "signed": int(signed), "scale": scale_mode}
            if group and self.gain_bits:
                attributes.update(group=group, gain_bits=self.gain_bits)
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
    def _replace(graph, node, inputs, group) -> None:
        name = _product_name(node)
        attributes = {"group": group}
        qmatmul = rewrite.kirin_node(QMATMUL, inputs, attributes, name, [name], dict(node.metadata_props))
        rewrite.replace(graph, [node], [qmatmul], list(node.outputs), list(qmatmul.outputs))


def _blocks(size: int, depth: int, option: str, node: ir.Node) -> int:
    """``size`` where ``depth`` channels split into two or more whole blocks of it; 0 (one
    block: per channel) where they do not exceed one. A depth that ``size`` does not divide
    is refused: its model would not be what the recorded option says."""
    if not size or depth <= size:
        return 0
    if depth % size:
        raise KirinError(
            f"option {option}={size} does not divide the {depth} input channels of '{node.name}'; "
            f"use a block size that divides every product's input channels, or {option}=0"
        )
    return size


def _layout(source: ir.Node) -> tuple[int, int]:
    return source.attributes.get_int("axis", 1), source.attributes.get_int("block_size", 0)


def _dequantized(source: ir.Node) -> np.ndarray:
    codes, scale, zero = (None if v is None else v.const_value.numpy() for v in [*source.inputs, None][:3])
    return arithmetic.dequantize_constants(codes, scale, zero, *_layout(source))


def _product_name(node: ir.Node) -> str:
    layer = roles.layer(node)
    role = roles.role(node)
    return role if layer is None else f"layers.{layer}.{role}"


def _after_relu(x: ir.Value) -> bool:
    producer = x.producer()
    return producer is not None and producer.op_type == "Relu"
