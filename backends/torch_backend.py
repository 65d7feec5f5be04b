"""The torch backend: the IR lowered to a readable ``torch.fx.GraphModule``.

`lower` walks the graph once and emits, for each node, a call of the node's function from the
op table (`kirin_compiler.backends.torch_ops`), so ``print(gm.code)`` reads like the IR dump::

    def forward(self, input_ids):
        ...
        layers_0_q_weight_t = self.layers_0_q_weight_t
        v39 = torch._C._nn.linear(v38, layers_0_q_weight_t);  layers_0_q_weight_t = None
        v41 = onnx_reshape(v39, v40, allowzero = 1);  v39 = None

Graph inputs become placeholders; initializers become buffers of the module (``self.<name>``),
except small integer constants feeding shape-like inputs, which are written into the code as
lists. Nothing about sequence length is fixed at lowering time: a model lowered once runs on any
batch and length.

The module also implements the ONNX backend interface (`TorchBackend`, `TorchBackendRep`), so the
ONNX conformance node tests run against it.
"""

from __future__ import annotations

import operator
import re
import unittest
from typing import Any, Mapping, Sequence

import numpy as np
import onnx
import onnx.backend.base
import onnx_ir as ir
import torch
import torch.fx

from kirin_compiler import arithmetic as ka
from kirin_compiler.backends import torch_fusion, torch_kirin
from kirin_compiler.backends.torch_ops import OPS
from kirin_compiler.backends.torch_ops._table import as_array, as_tensor, shared_tensor, supported_dtypes
from kirin_compiler.accounting import FLOAT_OP_COST, REDUCTIONS
from kirin_compiler.errors import KirinError, UnsupportedOpError
from kirin_compiler.execution import MODES, Mode, Probe
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

# Integer constants up to this many elements are written into the code where an op reads an
# integer list (shapes, axes); larger ones stay buffers.
_INLINE_MAX_ELEMENTS = 16


_FOUR_BIT = {ir.DataType.INT4: np.int8, ir.DataType.UINT4: np.uint8}


def lower(
    model: ir.Model,
    mode: Mode = "float",
    probe: Probe | None = None,
    outputs: Sequence[ir.Value] | None = None,
) -> torch.fx.GraphModule:
    """Lowers ``model`` to a GraphModule whose ``forward`` takes the graph inputs as tensors, in
    order, and returns a tuple of the graph outputs.

    ``ai.kirin`` ops become modules of `torch_kirin` running in ``mode`` (``float``, ``qann`` or
    ``snn``) and reporting to ``probe``; standard ops are the same in every mode. ``outputs``
    replaces the graph outputs (and nodes that neither reach them nor report to the probe are
    dropped: calibration stops at the last quantizer). A probe that counts float operations
    also gets the float work of every standard node (`kirin_compiler.accounting`) when it runs."""
    if mode not in MODES:
        raise KirinError(f"unknown mode '{mode}': use one of {', '.join(MODES)}")
    probe = probe or Probe()
    module = _Lowering(model, mode, probe).run(outputs)
    if probe.counts_float_ops:
        module.float_op_counter = _FloatOpCounter(module, {node.name: node for node in model.graph}, probe)
    return module


def run(
    module: torch.fx.GraphModule, model: ir.Model, feeds: Mapping[str, np.ndarray]
) -> list[np.ndarray]:
    """Runs a lowered model on numpy inputs given by name; returns numpy outputs."""
    names = [value.name for value in model.graph.inputs]
    missing = [name for name in names if name not in feeds]
    if missing:
        raise KeyError(f"missing inputs: {', '.join(missing)}")
    inputs = [as_tensor(np.asarray(feeds[name])) for name in names]
    counter = getattr(module, "float_op_counter", None)
    with torch.inference_mode():  # forward, not __call__: torch.fx prints a failing line to stderr
        outputs = module.forward(*inputs) if counter is None else counter.run(*inputs)
    return [as_array(output) for output in outputs]


def call(
    op_type: str, inputs: Sequence[torch.Tensor | None], attributes: Mapping[str, Any],
    outputs: int, constant: Sequence[bool] = (),
) -> list[torch.Tensor]:
    """One standard ONNX op of the op table, run on tensors: what `lower` makes of a node, for
    a caller that executes nodes one by one (the listing interpreter's host operations).
    ``attributes`` are plain values (tensors for tensor attributes); ``constant[i]`` says that
    input ``i`` is a model constant, which `lower` treats as such (a small integer list written
    into the code, a 2-D float weight of ``MatMul`` multiplied as ``linear``)."""
    constant = list(constant) + [False] * (len(inputs) - len(constant))
    if op_type == "MatMul" and constant[1] and _linear_weight(inputs[0], inputs[1]):
        return [torch.nn.functional.linear(inputs[0], inputs[1].t())]
    op = OPS.get(op_type)
    if op is None:
        raise UnsupportedOpError("", op_type, "has no torch lowering (supported ops: docs/backends.md)")
    args = [
        _static_list(value) if constant[i] and i in op.static_inputs else value
        for i, value in enumerate(inputs)
    ]
    while args and args[-1] is None:
        args.pop()
    kwargs = dict(sorted(attributes.items()))
    if "num_outputs" in op.attributes and "num_outputs" not in kwargs:
        kwargs["num_outputs"] = outputs
    result = op.fn(*args, **kwargs)
    return list(result) if outputs > 1 or op.multi_output else [result]


def _static_list(value: torch.Tensor | None) -> Any:
    """A constant integer input as `lower` writes it into the code: a list, when it is small."""
    if value is None or value.dtype.is_floating_point or value.dtype == torch.bool:
        return value
    return [int(v) for v in value.reshape(-1).tolist()] if value.numel() <= _INLINE_MAX_ELEMENTS else value


def _linear_weight(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``MatMul(x, weight)`` with a constant ``weight`` is lowered as ``linear`` (see
    `_is_linear`, on the IR)."""
    return weight.dim() == 2 and weight.dtype.is_floating_point and x.dtype == weight.dtype


class _Lowering:
    def __init__(self, model: ir.Model, mode: Mode, probe: Probe) -> None:
        self.model = model
        self.mode = mode
        self.probe = probe
        self.root = torch.nn.Module()
        self.graph = torch.fx.Graph()
        self.env: dict[ir.Value, torch.fx.Node] = {}
        self.transposed: dict[ir.Value, torch.fx.Node] = {}
        self.synapses: dict[ir.Value, torch.fx.Node] = {}
        self.results: set[ir.Value] = set()

    def run(self, outputs: Sequence[ir.Value] | None = None) -> torch.fx.GraphModule:
        self.results = set(outputs or self.model.graph.outputs)
        for value in self.model.graph.inputs:
            self.env[value] = self.graph.placeholder(_identifier(value.name))
        attention = torch_fusion.find_attention(self.model.graph)
        fused = {node for match in attention.values() for node in match.nodes}
        for node in self.model.graph:
            if node in attention:
                self._lower_attention(node, attention[node])
            elif node not in fused:
                self._lower_node(node)
        results = tuple(self._operand(v, static=False) for v in outputs or self.model.graph.outputs)
        self.graph.output(results)
        self.graph.lint()
        module = torch.fx.GraphModule(self.root, self.graph, class_name="LoweredModel")
        if outputs is not None and module.graph.eliminate_dead_code():
            module.recompile()
        module.eval()
        return module

    def _lower_node(self, node: ir.Node) -> None:
        if is_kirin(node):
            self._lower_kirin(node)
            return
        if _is_linear(node):
            self._lower_linear(node)
            return
        op = OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if op is None:
            name = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
            raise UnsupportedOpError(
                node.name, name, "has no torch lowering (supported ops: docs/backends.md)"
            )
        unknown = sorted(set(node.attributes) - op.attributes)
        if unknown:
            raise UnsupportedOpError(
                node.name, node.op_type,
                f"attribute {', '.join(repr(a) for a in unknown)} is not supported by the torch "
                "backend",
            )
        args = [self._operand(v, static=i in op.static_inputs) for i, v in enumerate(node.inputs)]
        while args and args[-1] is None:
            args.pop()
        kwargs = {name: self._attribute(node, attr) for name, attr in sorted(node.attributes.items())}
        if "num_outputs" in op.attributes and "num_outputs" not in kwargs:
            # Split before opset 18 makes as many parts as the node has outputs.
            kwargs["num_outputs"] = len(node.outputs)
        outputs = list(node.outputs)
        single = len(outputs) == 1 and not op.multi_output
        result = self.graph.create_node(
            "call_function", op.fn, tuple(args), kwargs,
            name=_identifier(outputs[0].name) if single else None,
        )
        result.meta["ir_node"] = node.name
        if single:
            self.env[outputs[0]] = result
            return
        for index, value in enumerate(outputs):
            if value.name and (value.uses() or value.is_graph_output()):
                self.env[value] = self.graph.create_node(
                    "call_function", operator.getitem, (result, index), name=_identifier(value.name)
                )

    def _lower_linear(self, node: ir.Node) -> None:
        """``MatMul(x, W)`` with a constant ``W[K, N]`` as ``linear(x, W^T)``: the weight is kept
        as ``[N, K]``, the layout whose GEMM is fastest on CPU (and torch's own ``nn.Linear``)."""
        x, weight = node.inputs
        if weight in self.transposed:
            weight_node = self.transposed[weight]
        else:
            # a transposed view: BLAS reads the [K, N] array as [N, K] without a copy
            weight_node = self._buffer(f"{weight.name}_t", weight.const_value.numpy(), transpose=True)
            self.transposed[weight] = weight_node
        output = node.outputs[0]
        self.env[output] = self.graph.create_node(
            "call_function", torch.nn.functional.linear, (self._operand(x, static=False), weight_node),
            name=_identifier(output.name),
        )
        self.env[output].meta["ir_node"] = node.name

    def _lower_kirin(self, node: ir.Node) -> None:
        """An ``ai.kirin`` op as a call of its module (``self.<node name>``)."""
        attributes = {name: self._attribute(node, attr) for name, attr in sorted(node.attributes.items())}
        module = torch_kirin.MODULES[node.op_type](node.name, attributes, self.mode, self.probe)
        if self.mode == "snn":
            self._check_spiking(node, module)
        if self.mode != "float" and attributes.get("scale") == "static" and (
            len(node.inputs) < 2 or node.inputs[1] is None
        ):
            raise KirinError(
                f"node '{node.name}': its static scale is not calibrated yet; run outlier-detect"
            )
        if node.op_type == SPIKE_MATMUL:
            module.window = _source_window(node)
        if node.op_type == RESCALE:
            accumulators = [v for i, v in enumerate(node.inputs) if i in (0, 3) and v is not None]
            module.reuse = all(len(v.uses()) == 1 and not v.is_graph_output() for v in accumulators)
        if node.op_type in (ACT_QUANT, TTFS_ENCODER) and len(node.outputs) > 2:
            codes = node.outputs[2]  # the outlier codes: sparse when only products read them
            module.sparse = codes not in self.results and all(
                is_kirin(use.node, *_OUTLIER_INPUTS) and use.idx == _OUTLIER_INPUTS[use.node.op_type]
                for use in codes.uses()
            )
        name = _identifier(node.name)
        while hasattr(self.root, name):
            name += "_"
        self.root.add_module(name, module)
        weight, *blocks = _WEIGHT_INPUTS.get(node.op_type, (None,))
        constant = weight is not None and node.inputs[weight].const_value is not None
        args = []
        for index, value in enumerate(node.inputs):
            if constant and index == weight:  # the synapses, made once, for (Wq, r, z)
                args.append(self._synapses(node, weight, blocks))
            else:
                args.append(None if constant and index in blocks else self._kirin_operand(value))
        module.constant = constant
        while args and args[-1] is None:
            args.pop()
        result = self.graph.call_module(name, tuple(args))
        result.meta["ir_node"] = node.name
        if len(node.outputs) == 1:
            self.env[node.outputs[0]] = result
            return
        for index, value in enumerate(node.outputs):
            self.env[value] = self.graph.create_node(
                "call_function", operator.getitem, (result, index), name=_identifier(value.name)
            )

    def _kirin_operand(self, value: ir.Value | None) -> Any:
        """Integer codes stay integers in the module (INT4 codes as the model's own bytes,
        ``uint8``); the Kirin ops widen them to float where they compute
        (`arithmetic.widen`)."""
        if value is None or value in self.env or value.const_value is None:
            return self._operand(value, static=False)
        array = value.const_value.numpy()
        if value.const_value.dtype == ir.DataType.INT4:  # shared bytes, widened where used
            array = array.view(np.uint8)
        elif value.const_value.dtype == ir.DataType.UINT8:  # as int16: uint8 stands for INT4 bytes
            array = array.astype(np.int16)
        return self._buffer(value.name, array, cache_for=value)

    def _synapses(self, node: ir.Node, weight: int, blocks: list[int]) -> torch.fx.Node:
        """The synapses ``r * Wq + z`` of a product's constant weight, made once for all the
        products reading it (float32: every synapse is an integer below 2^24)."""
        value = node.inputs[weight]
        if value not in self.synapses:
            parts = [node.inputs[i] if i < len(node.inputs) else None for i in blocks]
            codes, block_scale, block_offset = (
                None if v is None else torch.from_numpy(_integers(v)) for v in [value, *parts]
            )
            group = node.attributes["group"].value if "group" in node.attributes else 0
            synapses = ka.synapses(codes, block_scale, block_offset, group)
            self.synapses[value] = self._buffer(f"{value.name}_synapses", synapses.numpy())
        return self.synapses[value]

    @staticmethod
    def _check_spiking(node: ir.Node, module: torch.nn.Module) -> None:
        if node.op_type != SPIKE_MATMUL:
            return
        source = node.inputs[0].producer()
        if source is None or not is_kirin(source, *SPIKING_SOURCES):
            raise KirinError(
                f"node '{node.name}': the snn mode needs TTFS neurons to send its spikes; "
                "run threshold-insert"
            )
        module.trajectory = any(
            is_kirin(consumer, TTFS_NEURON) and not consumer.attributes["silent"].value
            for consumer in node.outputs[0].consumers()
        )

    def _lower_attention(self, node: ir.Node, match: torch_fusion.AttentionMatch) -> None:
        operands = [match.query, match.key_transposed, match.value]
        if match.mask is not None:
            operands.append(match.mask)
        output = node.outputs[0]
        self.env[output] = self.graph.create_node(
            "call_function",
            torch_fusion.fused_attention,
            tuple(self._operand(v, static=False) for v in operands),
            {"scale": match.scale, "zero_nan_rows": match.zero_nan_rows},
            name=_identifier(output.name),
        )

    def _operand(self, value: ir.Value | None, static: bool) -> Any:
        if value is None or (not value.name and value.producer() is None):
            return None
        if value in self.env:
            return self.env[value]
        tensor = value.const_value
        if tensor is None:
            raise UnsupportedOpError(value.name, "value", "is used before it is defined")
        array = tensor.numpy()
        if tensor.dtype in _FOUR_BIT:  # torch has no 4-bit type: the codes as bytes (QDQ weights)
            array = array.astype(_FOUR_BIT[tensor.dtype])
        if static and array.dtype.kind in "iu" and array.size <= _INLINE_MAX_ELEMENTS:
            return [int(v) for v in array.reshape(-1)]
        return self._buffer(value.name, array, cache_for=value)

    def _buffer(
        self, name: str, array: np.ndarray, cache_for: ir.Value | None = None, transpose: bool = False
    ) -> torch.fx.Node:
        """A buffer of the module holding ``array``, sharing its memory (the model's constants
        are read, never written), so that no weight is held twice."""
        attribute = _identifier(name)
        while hasattr(self.root, attribute):
            attribute += "_"
        tensor = shared_tensor(array)
        self.root.register_buffer(attribute, tensor.t() if transpose else tensor)
        node = self.graph.get_attr(attribute)
        if cache_for is not None:
            self.env[cache_for] = node
        return node

    def _attribute(self, node: ir.Node, attr: ir.Attr) -> Any:
        kind = attr.type
        if kind in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
            raise UnsupportedOpError(
                node.name, node.op_type, "subgraphs (control flow) are not supported by the torch backend"
            )
        if kind == ir.AttributeType.TENSOR:
            return self._buffer(f"{node.name}_{attr.name}", attr.value.numpy())
        if kind == ir.AttributeType.TENSORS:
            return [self._buffer(f"{node.name}_{attr.name}", t.numpy()) for t in attr.value]
        if kind == ir.AttributeType.STRING:
            value = attr.value
            return value.decode() if isinstance(value, bytes) else value
        if kind in (ir.AttributeType.INTS, ir.AttributeType.FLOATS, ir.AttributeType.STRINGS):
            return list(attr.value)
        if kind in (ir.AttributeType.INT, ir.AttributeType.FLOAT):
            return attr.value
        raise UnsupportedOpError(
            node.name, node.op_type, f"attribute '{attr.name}' of type {kind.name} is not supported"
        )


# The products' constant weight input, then its block sub-scales and offsets (`_synapses`).
_WEIGHT_INPUTS = {QMATMUL: (2, 6, 7), SPIKE_MATMUL: (1, 2, 3), INT_MATMUL: (1, 2, 3)}
_OUTLIER_INPUTS = {QMATMUL: 4, INT_MATMUL: 0}  # where a product reads outlier codes


def _integers(value: ir.Value) -> np.ndarray:
    """An integer initializer's array (INT4 codes as int8), widened to int32."""
    return value.const_value.numpy().astype(np.int32)


def _source_window(product: ir.Node) -> int:
    """The TTFS window of the codes a ``SpikeMatMul`` reads (0 when no quantizer makes them)."""
    source = product.inputs[0].producer()
    if source is None or "bits" not in source.attributes:
        return 0
    if "window" in source.attributes:
        return source.attributes["window"].value
    return ka.window(source.attributes["bits"].value, bool(source.attributes["signed"].value))


class _FloatOpCounter(torch.fx.Interpreter):
    """Runs a lowered model and charges the float work of every standard node to the probe
    (``FLOAT_OP_COST`` per output element, a reduction per input element, a float product per
    multiply-accumulate)."""

    def __init__(self, module: torch.fx.GraphModule, nodes: dict[str, ir.Node], probe: Probe):
        super().__init__(module)
        self.nodes = nodes
        self.probe = probe

    def run_node(self, n: torch.fx.Node):
        result = super().run_node(n)
        node = self.nodes.get(n.meta.get("ir_node"))
        if node is not None and isinstance(result, torch.Tensor) and not is_kirin(node):
            self._charge(node, n, result)  # the Kirin modules report their own work
        return result

    def _charge(self, node: ir.Node, n: torch.fx.Node, result: torch.Tensor) -> None:
        op = node.op_type
        if op == "MatMul":
            self.probe.count(node.name, float_macs=result.numel() * self._last_dim(n.args[0]))
        elif op in REDUCTIONS:
            self.probe.count(node.name, float_ops=self._numel(n.args[0]))
        elif op in FLOAT_OP_COST:
            self.probe.count(node.name, float_ops=FLOAT_OP_COST[op] * result.numel())

    def _last_dim(self, arg) -> int:
        value = self.env.get(arg) if isinstance(arg, torch.fx.Node) else None
        return int(value.shape[-1]) if isinstance(value, torch.Tensor) else 0

    def _numel(self, arg) -> int:
        value = self.env.get(arg) if isinstance(arg, torch.fx.Node) else None
        return int(value.numel()) if isinstance(value, torch.Tensor) else 0


def _is_linear(node: ir.Node) -> bool:
    if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx"):
        return False
    x, weight = node.inputs
    return (
        weight is not None
        and weight.const_value is not None
        and not weight.is_graph_input()
        and len(weight.const_value.shape) == 2
        and x is not None
        and x.dtype == weight.const_value.dtype
        and weight.const_value.dtype.is_floating_point()
    )


def _identifier(name: str) -> str:
    """A Python identifier for an ONNX name (fx makes it unique)."""
    text = re.sub(r"\W", "_", name)
    return text if text and not text[0].isdigit() else f"v_{text}"


# The ONNX backend interface ------------------------------------------------------------------------


class TorchBackendRep(onnx.backend.base.BackendRep):
    """A model prepared for the torch backend."""

    def __init__(self, model: ir.Model) -> None:
        self.model = model
        self.module = lower(model)

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        if isinstance(inputs, Mapping):
            feeds = dict(inputs)
        else:
            names = [v.name for v in self.model.graph.inputs]
            feeds = dict(zip(names, inputs if isinstance(inputs, Sequence) else [inputs]))
        return tuple(run(self.module, self.model, feeds))


class TorchBackend(onnx.backend.base.Backend):
    """The torch backend behind ``onnx.backend.base.Backend`` (CPU only)."""

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> TorchBackendRep:
        super().prepare(model, device, **kwargs)
        _skip_unclaimed(model)
        return TorchBackendRep(ir.serde.deserialize_model(model))

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


def _skip_unclaimed(model: onnx.ModelProto) -> None:
    """Skips (with the reason) a conformance case outside what the op table claims."""
    claimed = supported_dtypes()
    graph = model.graph
    for info in list(graph.input) + list(graph.output):
        element = info.type.tensor_type.elem_type
        if not info.type.HasField("tensor_type"):
            raise unittest.SkipTest(f"'{info.name}' is not a tensor (sequences are not claimed)")
        if element not in claimed:
            name = onnx.TensorProto.DataType.Name(element)
            raise unittest.SkipTest(f"data type {name} of '{info.name}' is not claimed")
    for node in graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise unittest.SkipTest(f"op {node.domain}::{node.op_type} is outside the ONNX domain")
