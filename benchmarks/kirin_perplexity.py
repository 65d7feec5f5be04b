"""Perplexity of SmolLM2-135M on the wiki text: float against the compiled model and baselines.

The protocol of ../shared/EVALUATION.md: the first ``--windows`` (16) 512-token windows of the
evaluation text, each scored on its own (positions 1..511, fp32 log-softmax, float64 sums),
perplexity = exp(total NLL / tokens). Calibration on the protocol's 8 calibration windows.
Rows: the float export (torch backend), the default Kirin pipeline in the qann mode (and the snn
mode with ``--snn``, which must give the same number), and two baselines compiled by the same
passes: W8A8 (8-bit weights and activations, no outliers) and W4A4 (no outliers)::

    make bench-deps
    .venv/bin/python benchmarks/kirin_perplexity.py [--workdir DIR] [--windows 16] [--snn]
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import tempfile

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

KIRIN = "canonicalize,quantize,outlier-detect,spike-matrix-hybridize,threshold-insert"
VARIANTS = {
    "Kirin W4A4&8 (default pipeline)": KIRIN,
    "W8A8, no outliers": "canonicalize,quantize{bits=8,act_bits=8},outlier-detect{mode=none}",
    "W4A4, no outliers": "canonicalize,quantize,outlier-detect{mode=none}",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=pathlib.Path, help="keep the export here")
    parser.add_argument("--windows", type=int, default=16, help="evaluation windows (default 16)")
    parser.add_argument("--snn", action="store_true", help="also score the snn mode (slow)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    from kirin_compiler import calibration, compile_model, load_model

    with tempfile.TemporaryDirectory(prefix="kirin-bench-") as temporary:
        folder = args.workdir or pathlib.Path(temporary)
        from _smollm2 import prepare

        model_path, calib, evaluation = prepare(folder)
        windows = np.load(evaluation)[: args.windows]
        feeds = [{"input_ids": row[None]} for row in np.load(calib)]
        rows = [("float (the ONNX export)", "float", _perplexity(load_model(model_path), "float", windows))]
        print(f"{rows[-1][0]:<36} {rows[-1][2]:.2f}", flush=True)
        for name, pipeline in VARIANTS.items():
            model = load_model(model_path)
            calibration.attach(model, calibration.Calibration(feeds, str(calib), progress=False))
            compile_model(model, pipeline)
            modes = ["qann", "snn"] if args.snn and pipeline == KIRIN else ["qann"]
            for mode in modes:
                rows.append((name, mode, _perplexity(model, mode, windows)))
                print(f"{name:<36} {mode:<5} {rows[-1][2]:.2f}", flush=True)

    print()
    print(f"SmolLM2-135M, wiki evaluation text, {len(windows)} windows of 512 tokens "
          f"({len(windows) * 511:,} scored tokens)")
    print(f"{'model':<36}{'mode':<7}{'perplexity':>11}")
    for name, mode, value in rows:
        print(f"{name:<36}{mode:<7}{value:>11.2f}")
    return 0


def _perplexity(model, mode: str, windows: np.ndarray) -> float:
    import torch

    from kirin_compiler.backends import torch_backend

    module = torch_backend.lower(model, mode)
    total, count = 0.0, 0
    for row in windows:
        logits = torch.from_numpy(torch_backend.run(module, model, {"input_ids": row[None]})[0])
        log_probs = torch.log_softmax(logits[0, :-1].float(), dim=-1)
        targets = torch.from_numpy(row[1:])
        total += -log_probs.gather(-1, targets[:, None]).double().sum().item()
        count += len(targets)
    return math.exp(total / count)


if __name__ == "__main__":
    sys.exit(main())
