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
        "llama-tied": lambda: hf.LlamaForCausalLM(hf.LlamaConfig(**decoder, tie_word_embeddings=True)),
        "qwen3": lambda: hf.Qwen3ForCausalLM(hf.Qwen3Config(**decoder, head_dim=8)),
        "gemma2": lambda: hf.Gemma2ForCausalLM(hf.Gemma2Config(**decoder, head_dim=8)),
        "gemma3": lambda: hf.Gemma3ForCausalLM(hf.Gemma3TextConfig(**decoder, head_dim=8)),
        "falcon": lambda: hf.FalconForCausalLM(hf.FalconConfig(
            vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            new_decoder_architecture=False, multi_query=True, alibi=False,
        )),
        "gpt-neox": lambda: hf.GPTNeoXForCausalLM(hf.GPTNeoXConfig(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=64,
        )),
        "stablelm": lambda: hf.StableLmForCausalLM(hf.StableLmConfig(**decoder)),
        "bloom": lambda: hf.BloomForCausalLM(hf.BloomConfig(vocab_size=VOCAB, hidden_size=32, n_layer=2, n_head=4)),
    }
    return models[family]().eval()


CACHE = "past_key_values"  # in ``inputs``: a KV cache, one past key and value per layer


def export_file(
    family: str, exporter: str, opset: int, folder: pathlib.Path, inputs: tuple[str, ...] = ("input_ids",)
) -> pathlib.Path:
    """Exports a tiny ``family`` model with ``exporter`` ("dynamo" or "torchscript"), taking
    ``inputs``: the token ids, and optionally ``attention_mask`` and ``position_ids``, or
    ``attention_mask`` and `CACHE` (a KV cache in, ``present.*`` out, as
    `kirin_compiler.frontend.WithCache` exports it)."""
    import torch

    from kirin_compiler.frontend import LogitsOnly, WithCache

    extra = "".join(f"+{name.split('_')[0]}" for name in inputs[1:])
    path = folder / f"{family}_{exporter}_{opset}{extra}.onnx"
    model = tiny_hf_model(family)
    ids = torch.from_numpy(token_ids((1, EXPORT_LENGTH)))
    if CACHE in inputs:
        module = WithCache(model).eval()
        args, names, outputs = WithCache.example(model, ids)
        axes = [{0: "batch", 1: "sequence"}, {0: "batch", 1: "total"}, *({0: "batch", 2: "past"} for _ in args[2])]
    else:
        module = (LogitsOnly(model) if inputs == ("input_ids",) else _Logits(model)).eval()
        examples = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                    "position_ids": torch.arange(EXPORT_LENGTH)[None]}
        args, names, outputs = tuple(examples[name] for name in inputs), list(inputs), ["logits"]
        axes = [{0: "batch", 1: "sequence"} for _ in inputs]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dims = {name: torch.export.Dim(name, max=64) for name in ("batch", "sequence")}
            dims.update(past=torch.export.Dim("past"), total=torch.export.Dim("total"))
            shapes = [{axis: dims[dim] for axis, dim in shape.items()} for shape in axes]
            if CACHE in inputs:
                shapes = [*shapes[:2], tuple(shapes[2:])]
            torch.onnx.export(
                module, args, path, dynamo=True, opset_version=opset,
                input_names=names, output_names=outputs, dynamic_shapes=tuple(shapes),
            )
        else:
            dynamic = dict(zip(names, axes))
            dynamic.update({name: {0: "batch", 2: "total"} for name in outputs[1:]})
            torch.onnx.export(
                module, args, path, dynamo=False, opset_version=opset,
                input_names=names, output_names=outputs, dynamic_axes=dynamic,
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


WIKI_LLAMA = REPO / "models" / "wiki_llama.onnx"
WIKI_TOKENIZER = REPO / "models" / "wiki_tokenizer"


def wiki_llama_module():
    """The trained tiny Llama (``models/wiki_llama.onnx``) as the Hugging Face module it was
    exported from, rebuilt from the file: its norms by their exported names, its projections by
    the roles ``canonicalize`` gives them (``layers.0.q.weight`` is ``q_proj``, transposed), its
    embedding the table the token ids index. For exports the repository does not ship (a KV cache)."""
    import sys

    import torch

    from kirin_compiler import feeds, load_model
    from kirin_compiler.passes import CanonicalizePass

    sys.path.insert(0, str(REPO / "scripts"))
    import train_tiny

    model = load_model(WIKI_LLAMA)
    state = {name.removeprefix("model."): value.const_value.numpy()
             for name, value in model.graph.initializers.items() if "norm" in name}
    ids = model.graph.inputs[0]
    embedding = next(user.inputs[0] for user, _ in feeds._carried(ids) if user.op_type == "Gather")
    state["model.embed_tokens.weight"] = embedding.const_value.numpy()
    CanonicalizePass()(model)
    projections = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj",
                   "o": "self_attn.o_proj", "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
    for name, value in model.graph.initializers.items():
        parts = name.split(".")
        if len(parts) == 4 and parts[0] == "layers" and parts[2] in projections:
            state[f"model.layers.{parts[1]}.{projections[parts[2]]}.weight"] = value.const_value.numpy().T
    module = train_tiny.CONFIGS["llama"]().eval()
    missing, unexpected = module.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()}, strict=False)
    assert missing == ["lm_head.weight"] and not unexpected, (missing, unexpected)  # lm_head: tied
    return module
