"""Small models built in code from a seed, for the Kirin pass and arithmetic tests."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh
import onnx_ir as ir

from kirin_compiler import calibration, compile_model
from kirin_compiler.backends import torch_backend

HIDDEN, FFN = 8, 16


def mlp(seed: int = 0) -> ir.Model:
    """``y = fc2(relu(fc1(x) + b1))``: OPT's feed-forward block, on ``x: f32[batch, seq, 8]``."""
    rng = np.random.default_rng(seed)
    w1 = rng.normal(size=(HIDDEN, FFN)).astype(np.float32)
    b1 = rng.normal(size=FFN).astype(np.float32) * 0.1
    w2 = rng.normal(size=(FFN, HIDDEN)).astype(np.float32)
    graph = oh.make_graph(
        [
            oh.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            oh.make_node("Add", ["h", "b1"], ["hb"], name="bias"),
            oh.make_node("Relu", ["hb"], ["r"], name="relu"),
            oh.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
        ],
        "mlp",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", "sequence", HIDDEN])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", "sequence", HIDDEN])],
        [onh.from_array(w1, "w1"), onh.from_array(b1, "b1"), onh.from_array(w2, "w2")],
    )
    return ir.serde.deserialize_model(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)]))


def inputs(seed: int, shape: tuple[int, ...] = (2, 5, HIDDEN)) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).normal(size=shape).astype(np.float32)
    x[..., 3] *= 20.0  # one outlier channel, as real activations have
    return {"x": x}


def calibrated(model: ir.Model, feeds=None, cache=None) -> ir.Model:
    calibration.attach(
        model, calibration.Calibration(feeds or [inputs(10), inputs(11)], "test", cache, progress=False)
    )
    return model


def compiled(pipeline: str, model: ir.Model | None = None) -> ir.Model:
    model = calibrated(model or mlp())
    compile_model(model, pipeline)
    return model


def run(model: ir.Model, mode: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return torch_backend.run(torch_backend.lower(model, mode), model, feeds)


def node_lines(model: ir.Model) -> list[str]:
    """The IR dump's node lines (no header, no constants), for before/after tests."""
    from kirin_compiler.printer import format_model

    lines = format_model(model).splitlines()
    return [line.strip() for line in lines if line.startswith("  %") or line.startswith("  return")]
