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


def export_causal_lm(model: Any, example_input_ids: Any, *, opset: int = 18, cache: bool = False) -> ir.Model:
    """Exports a Hugging Face causal LM (Llama, OPT, ...) with dynamic batch and sequence length:
    as ``input_ids -> logits``, or, with ``cache``, as ``(input_ids, attention_mask,
    past_key_values.N.key, past_key_values.N.value, ...) -> (logits, present.N.key,
    present.N.value, ...)``, a KV cache of ``[batch, kv_heads, past, head_dim]`` per layer (the
    names optimum gives them)."""
    wrapper = (WithCache(model) if cache else LogitsOnly(model)).eval()
    batch, sequence = torch.export.Dim("batch", max=64), torch.export.Dim("sequence", max=4096)
    args, names, outputs, shapes = (example_input_ids,), ["input_ids"], ["logits"], [{0: batch, 1: sequence}]
    if cache:
        args, names, outputs = WithCache.example(model, example_input_ids)
        past, total = torch.export.Dim("past"), torch.export.Dim("total")
        shapes += [{0: batch, 1: total}, tuple({0: batch, 2: past} for _ in args[2])]
    with torch.no_grad():
        exported = export_torch(
            wrapper, args, opset=opset, input_names=names, output_names=outputs, dynamic_shapes=tuple(shapes),
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


class WithCache(torch.nn.Module):
    """``(input_ids, attention_mask, past) -> (logits, *present)`` of a causal LM: ``past`` and
    ``present`` hold each layer's key and value, in layer order."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    @staticmethod
    def example(model: torch.nn.Module, input_ids: torch.Tensor, past: int = 2) -> tuple[tuple, list[str], list[str]]:
        """Example arguments for an export (a cache of ``past`` tokens; its shapes, whatever the
        family's head counts, from a run of ``model``), the input names and the output names."""
        with torch.no_grad():
            made = model(input_ids=input_ids, use_cache=True).past_key_values
        cache = tuple(torch.zeros_like(tensor[:, :, :past]) for layer in made.layers
                      for tensor in (layer.keys, layer.values))
        layers = [f"{i}.{kind}" for i in range(len(made.layers)) for kind in ("key", "value")]
        mask = torch.ones(input_ids.shape[0], input_ids.shape[1] + past, dtype=torch.int64)
        names = ["input_ids", "attention_mask", *(f"past_key_values.{layer}" for layer in layers)]
        return (input_ids, mask, cache), names, ["logits", *(f"present.{layer}" for layer in layers)]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, past: tuple[torch.Tensor, ...]):
        import transformers

        cache = transformers.DynamicCache(config=self.model.config)
        for layer in range(len(past) // 2):
            cache.update(past[2 * layer], past[2 * layer + 1], layer)
        output = self.model(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=True)
        present = [tensor for layer in output.past_key_values.layers for tensor in (layer.keys, layer.values)]
        return (output.logits, *present)
