"""The listing of SmolLM2-135M's first decoder layer, checked bit for bit against the snn mode.

SmolLM2 (its real weights) cut to its first decoder layer, with its embedding and head; exported
by the dynamo exporter, compiled with the default pipeline on the protocol's 8 calibration
windows of 512 tokens, emitted as a listing (``kirinc --emit listing``) and checked by ``kirinc
verify --listing`` on the first evaluation window (128 tokens)::

    make bench-deps
    .venv/bin/python benchmarks/listing_smollm2.py [--workdir DIR] [--layers N] [--length L]

Prints each command, its output and its time, then the listing's size.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import pathlib
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _load import machine_load  # noqa: E402
from _smollm2 import calibration_windows, evaluation_windows, load_model_and_tokenizer  # noqa: E402

from kirin_compiler.cli import main as kirinc  # noqa: E402


def export(folder: pathlib.Path, layers: int) -> pathlib.Path:
    """SmolLM2 with only its first ``layers`` decoder layers, exported once per folder, and the
    protocol's calibration and evaluation token ids beside it."""
    import numpy as np
    import torch

    from kirin_compiler import save_model
    from kirin_compiler.frontend import export_causal_lm

    path = folder / f"smollm2_{layers}layer.onnx"
    if path.is_file():
        return path
    model, tokenizer = load_model_and_tokenizer()
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    save_model(export_causal_lm(model, torch.ones((1, 8), dtype=torch.int64)), path)
    np.save(folder / "calib_ids.npy", np.asarray(calibration_windows(tokenizer), dtype=np.int64))
    np.save(folder / "eval_ids.npy", np.asarray(evaluation_windows(tokenizer, 1), dtype=np.int64))
    return path


def step(*argv: str) -> None:
    print(f"$ kirinc {' '.join(argv)}", flush=True)
    output = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        status = kirinc(list(argv))
    print(output.getvalue(), end="")
    print(f"({time.perf_counter() - start:.1f} s, exit {status})\n", flush=True)
    if status != 0:
        raise SystemExit(status)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=pathlib.Path)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--length", type=int, default=128)
    args = parser.parse_args()
    folder = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="kirin-listing-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(machine_load())
    onnx_path = export(folder, args.layers)
    kirin, listing = folder / onnx_path.with_suffix(".kirin").name, folder / onnx_path.with_suffix(".nl").name
    step(str(onnx_path), "-o", str(kirin), "--calib", str(folder / "calib_ids.npy"), "--no-calib-cache")
    step(str(kirin), "--emit", "listing", "-o", str(listing))
    step("verify", str(kirin), "--listing", str(listing), "--input", str(folder / "eval_ids.npy"),
         "--length", str(args.length), "--windows", "1")
    lines = listing.read_text().splitlines()
    weights = listing.with_suffix(".nlw")
    print(f"listing: {len(lines):,} lines, {os.path.getsize(listing) / 1e3:.1f} kB; weights file "
          f"{os.path.getsize(weights) / 1e6:.2f} MB")
    print(machine_load())


if __name__ == "__main__":
    main()
