"""``kirinc generate MODEL --prompt TEXT --tokenizer DIR``: greedy generation on the torch backend.

Each new token is the argmax of the logits at the last position. A model with a KV cache runs the
prompt once and then one token a step on the cache it returns; a model without one runs the whole
sequence again for every token (the model's own inputs, a mask, position ids and the cache
included, come from `feeds`). Tokens are printed as they come; the speed goes to stderr at the end.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Sequence

import numpy as np

from kirin_compiler import execution, feeds
from kirin_compiler.cli import _common
from kirin_compiler.errors import KirinError


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    _common.require_at_least(args, 1, "max_new_tokens")
    tokenizer = _common.load_tokenizer(args.tokenizer)
    model = _common.load_runnable(args.model)
    names = feeds.decoder_inputs(model, "kirinc generate")
    prompt = tokenizer.encode(args.prompt, add_special_tokens=False).ids
    if not prompt:
        raise KirinError(f"--prompt {args.prompt!r} tokenizes to no tokens; give some text")
    ids = np.asarray([prompt], dtype=np.int64)
    _common.check_vocabulary(model, names, ids, "--prompt")
    backend = execution.backend()
    module = backend.lower(model, args.mode)
    shown = tokenizer.decode(prompt)
    print(shown, end="", flush=True)
    start = time.perf_counter()
    new: list[int] = []
    step, cache = ids, None  # the tokens of the next run, and the cache it runs on
    with _common.failing_on(args.model, "--prompt", ids):
        for _ in range(args.max_new_tokens):
            outputs = backend.run(module, model, names.feed(model, step, cache))
            token = int(outputs[0][0, -1].argmax())
            new.append(token)
            ids = np.concatenate([ids, [[token]]], axis=1)
            if names.cache:
                step, cache = ids[:, -1:], names.next_cache(model, outputs)
            else:
                step = ids
            text = tokenizer.decode(prompt + new)  # whole: a token may end a multi-byte character
            print(text[len(shown):], end="", flush=True)
            shown = text
    seconds = time.perf_counter() - start
    how = "one token a step on the KV cache" if names.cache else "the whole sequence run for each token"
    print()
    print(f"kirinc: {len(new)} tokens in {seconds:.2f} s ({len(new) / seconds:.1f} tokens/s, "
          f"{args.mode} mode, {how}); ids {new}", file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    parser = _common.model_command(
        "kirinc generate", "Generate text greedily from a prompt, on the torch backend, in any mode.",
        ["kirinc generate model.kirin --prompt 'The river' --tokenizer tok/ --mode snn",
         "kirinc generate model.onnx --prompt 'The river' --tokenizer tok/ --max-new-tokens 40"],
    )
    parser.add_argument("--prompt", required=True, metavar="TEXT", help="the text to continue")
    parser.add_argument("--tokenizer", required=True, metavar="DIR", help="folder with a tokenizer.json")
    parser.add_argument("--max-new-tokens", type=int, default=20, metavar="N",
                        help="tokens to generate (default: %(default)s)")
    _common.add_mode_argument(parser)
    return parser

