"""Torch frontends: a torch module becomes the IR through ``torch.onnx.export(dynamo=True)``.

``torch.export`` captures the module (``torch.fx.symbolic_trace`` does not work on
transformers 5 models) and the dynamo ONNX exporter translates the captured graph; the result is
already an `onnx_ir.Model`, so nothing is written to disk.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import onnx_ir as ir
import torch

from kirin_compiler.errors import KirinError
from kirin_compiler.format import KEY_SOURCE, SUPPORTED_OPSETS
from kirin_compiler.verify import verify_model


def export_torch(
    module: Any,
    args: tuple = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    opset: int = 18,
    input_names: list[str] | None = None,
    output_names: list[str] | None = None,
    dynamic_shapes: Any = None,
) -> ir.Model:
    """Exports ``module(*args, **kwargs)`` to the IR with the dynamo ONNX exporter."""
    if opset not in SUPPORTED_OPSETS:
        raise KirinError(
            f"opset {opset} is not supported; choose {SUPPORTED_OPSETS.start}-{SUPPORTED_OPSETS.stop - 1}"
        )
    program = torch.onnx.export(
        module,
        args,
        kwargs=dict(kwargs or {}),
        dynamo=True,
        opset_version=opset,
        input_names=input_names,
        output_names=output_names,
        dynamic_shapes=dynamic_shapes,
        verbose=False,
    )
    model = program.model
    verify_model(model)
    _record_source(model, type(module).__qualname__, opset)
    return model


def _record_source(model: ir.Model, module_name: str, opset: int) -> None:
    """Provenance for the ``.kirin`` file: what was exported, and how."""
    source = {"exporter": "torch.onnx.export(dynamo=True)", "module": module_name, "opset": opset}
    model.metadata_props[KEY_SOURCE] = json.dumps(source, sort_keys=True)


def export_causal_lm(model: Any, example_input_ids: Any, *, opset: int = 18) -> ir.Model:
    """Exports a Hugging Face causal LM (Llama, OPT, ...) as ``input_ids -> logits``, with
    dynamic batch and sequence length and without a key/value cache."""
    wrapper = LogitsOnly(model).eval()
    batch, sequence = torch.export.Dim("batch", max=64), torch.export.Dim("sequence", max=4096)
    with torch.no_grad():
        exported = export_torch(
            wrapper,
            (example_input_ids,),
            opset=opset,
            input_names=["input_ids"],
            output_names=["logits"],
            dynamic_shapes=({0: batch, 1: sequence},),
        )
    _record_source(exported, type(model).__qualname__, opset)
    return exported


class LogitsOnly(torch.nn.Module):
    """``input_ids -> logits`` of a causal LM, with an all-ones attention mask and no cache."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = torch.ones_like(input_ids)
        return self.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
