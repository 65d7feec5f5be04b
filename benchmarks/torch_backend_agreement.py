"""SmolLM2-135M on the torch backend against onnxruntime, on the protocol's evaluation windows.

Exports SmolLM2 (a temporary folder), compiles it with the default pipeline, and prints for each
512-token window the largest absolute difference of the logits and whether the argmax agrees
at every position::

    make bench-deps
    .venv/bin/python benchmarks/torch_backend_agreement.py [--windows 2]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=2, help="512-token windows to compare")
    args = parser.parse_args()

    import numpy as np
    import torch

    from _smollm2 import evaluation_windows, load_model_and_tokenizer
    from kirin_compiler import compile_model, export_causal_lm, load_model, save_kirin
    from kirin_compiler.backends import onnxruntime as ort_backend
    from kirin_compiler.backends.torch_backend import lower, run

    torch.set_num_threads(2)
    model, tokenizer = load_model_and_tokenizer()
    windows = evaluation_windows(tokenizer, args.windows)
    with tempfile.TemporaryDirectory(prefix="kirin-agreement-") as folder:
        exported = export_causal_lm(model, torch.tensor([windows[0][:16]]))
        compile_model(exported, "canonicalize")
        save_kirin(exported, pathlib.Path(folder) / "smollm2.kirin")
        compiled = load_model(pathlib.Path(folder) / "smollm2.kirin")
        session = ort_backend.session(compiled, threads=2)
        module = lower(compiled)
        worst = 0.0
        print("window  max |torch - onnxruntime|  argmax agrees")
        for index, window in enumerate(windows):
            feed = {"input_ids": np.asarray([window], dtype=np.int64)}
            (expected,) = session.run(None, feed)
            (logits,) = run(module, compiled, feed)
            difference = float(np.abs(logits - expected).max())
            agrees = bool((logits.argmax(-1) == expected.argmax(-1)).all())
            worst = max(worst, difference)
            print(f"{index:>6}  {difference:>24.3g}  {'yes' if agrees else 'NO'}")
    return 0 if worst <= 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
