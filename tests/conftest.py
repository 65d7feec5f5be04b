"""Shared fixtures: tiny Hugging Face models built from a seed and exported both ways.

Nothing is downloaded: the models are random-init Llama and OPT configurations, exported once
per test session by the dynamo exporter (``torch.onnx.export(dynamo=True)``) and by the
TorchScript exporter (``dynamo=False``), at several opsets.
"""

from __future__ import annotations

import pathlib
import warnings

import numpy as np
import pytest

VOCAB = 128
EXPORT_LENGTH = 8


FAMILIES = ("llama", "opt", "gpt2", "qwen2", "mistral", "phi3", "gemma")


def tiny_hf_model(family: str):
    """A randomly initialised two-layer model of a Hugging Face family, from a fixed seed."""
    import torch
    import transformers as hf

    torch.manual_seed(0)
    decoder = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
    )
    models = {
        "llama": lambda: hf.LlamaForCausalLM(hf.LlamaConfig(**decoder)),
        "opt": lambda: hf.OPTForCausalLM(hf.OPTConfig(
            vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=64, word_embed_proj_dim=32,
        )),
        "gpt2": lambda: hf.GPT2LMHeadModel(hf.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
        )),
        "qwen2": lambda: hf.Qwen2ForCausalLM(hf.Qwen2Config(**decoder)),
        "mistral": lambda: hf.MistralForCausalLM(hf.MistralConfig(**decoder, sliding_window=None)),
        "phi3": lambda: hf.Phi3ForCausalLM(hf.Phi3Config(**decoder, pad_token_id=0)),
        "gemma": lambda: hf.GemmaForCausalLM(hf.GemmaConfig(**decoder, head_dim=8)),
    }
    return models[family]().eval()


def export_file(
    family: str, exporter: str, opset: int, folder: pathlib.Path, inputs: tuple[str, ...] = ("input_ids",)
) -> pathlib.Path:
    """Exports a tiny ``family`` model with ``exporter`` ("dynamo" or "torchscript"), taking
    ``inputs``: the token ids, and optionally ``attention_mask`` and ``position_ids``."""
    import torch

    from kirin_compiler.frontend import LogitsOnly

    extra = "".join(f"+{name.split('_')[0]}" for name in inputs[1:])
    path = folder / f"{family}_{exporter}_{opset}{extra}.onnx"
    model = tiny_hf_model(family)
    module = (LogitsOnly(model) if inputs == ("input_ids",) else _Logits(model)).eval()
    ids = torch.from_numpy(token_ids((1, EXPORT_LENGTH)))
    examples = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "position_ids": torch.arange(EXPORT_LENGTH)[None]}
    args = tuple(examples[name] for name in inputs)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            batch, sequence = torch.export.Dim("batch", max=8), torch.export.Dim("sequence", max=64)
            torch.onnx.export(
                module, args, path, dynamo=True, opset_version=opset,
                input_names=list(inputs), output_names=["logits"],
                dynamic_shapes=tuple({0: batch, 1: sequence} for _ in inputs),
            )
        else:
            torch.onnx.export(
                module, args, path, dynamo=False, opset_version=opset,
                input_names=list(inputs), output_names=["logits"],
                dynamic_axes={name: {0: "batch", 1: "sequence"} for name in inputs},
            )
    return path


def _Logits(model):
    """``(input_ids, attention_mask[, position_ids]) -> logits``: a plain export given the mask."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids=None):
            extra = {} if position_ids is None else {"position_ids": position_ids}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **extra).logits

    return Logits()


def token_ids(shape: tuple[int, int], seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, shape).astype(np.int64)


EXPORTS = [
    (family, exporter, opset)
    for family in ("llama", "opt")
    for exporter in ("dynamo", "torchscript")
    for opset in (17, 20, 23)
]


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory) -> pathlib.Path:
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="session")
def exported(export_dir):
    """``exported(family, exporter, opset)`` -> path of the export, made once per session."""
    cache: dict[tuple[str, str, int], pathlib.Path] = {}

    def get(family: str, exporter: str, opset: int) -> pathlib.Path:
        key = (family, exporter, opset)
        if key not in cache:
            cache[key] = export_file(family, exporter, opset, export_dir)
        return cache[key]

    return get


REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_LLAMA = REPO / "models" / "tiny_llama.onnx"
TINY_LLAMA_IDS = REPO / "models" / "tiny_llama_ids.npy"
