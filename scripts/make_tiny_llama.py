"""Writes ``models/tiny_llama.onnx``: a seeded, randomly initialised Llama-architecture model.

It is the small model the README's demo compiles. It has real Llama structure (RMSNorm, RoPE,
grouped-query attention, SwiGLU MLP) but random weights: trained models come later. Run::

    .venv/bin/python scripts/make_tiny_llama.py
"""

from __future__ import annotations

import pathlib
import sys

import torch
import transformers

from kirin_compiler import export_causal_lm, save_model

SEED = 0
CONFIG = transformers.LlamaConfig(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


def main() -> int:
    output = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "models/tiny_llama.onnx")
    torch.manual_seed(SEED)
    model = transformers.LlamaForCausalLM(CONFIG).eval()
    example = torch.randint(0, CONFIG.vocab_size, (1, 16), generator=torch.Generator().manual_seed(SEED))
    save_model(export_causal_lm(model, example, opset=18), output)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
