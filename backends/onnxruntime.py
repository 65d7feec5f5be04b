"""Run a model with onnxruntime: the reference the other backends are checked against."""

from __future__ import annotations

import pathlib
import tempfile
from typing import Mapping

import numpy as np
import onnx_ir as ir
import onnxruntime


def session(model: ir.Model, threads: int = 1) -> onnxruntime.InferenceSession:
    """An inference session for ``model`` that does not spin idle threads (shared machines)."""
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    if not any(isinstance(v.const_value, ir.ExternalTensor) for v in model.graph.initializers.values()):
        proto = ir.serde.serialize_model(model)
        return onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=providers)
    # Weights that live in files beside the model go to a private copy onnxruntime can read.
    with tempfile.TemporaryDirectory(prefix="kirin-ort-") as folder:
        path = pathlib.Path(folder) / "model.onnx"
        ir.save(model, path, external_data="model.onnx.data")
        return onnxruntime.InferenceSession(str(path), options, providers=providers)


def run(model: ir.Model, feeds: Mapping[str, np.ndarray], threads: int = 1) -> list[np.ndarray]:
    """The model's outputs, in graph order, for one set of inputs."""
    return session(model, threads).run(None, dict(feeds))
