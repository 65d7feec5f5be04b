"""The lowered torch executor against onnxruntime and eager PyTorch, on SmolLM2-135M 1x512.

Prints, in one run, the median time of a 1x512 forward of each engine and its ratio to the
eager Hugging Face model, with each engine's peak memory (each engine runs in its own process,
so the peaks do not mix). Two threads everywhere (these machines have two cores)::

    make bench-deps
    .venv/bin/python benchmarks/torch_backend_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

THREADS = 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed forwards per engine")
    args = parser.parse_args()

    import numpy as np
    import torch

    from _smollm2 import evaluation_windows, load_model_and_tokenizer
    from kirin_compiler import compile_model, export_causal_lm, save_kirin

    with tempfile.TemporaryDirectory(prefix="kirin-bench-") as folder:
        model, tokenizer = load_model_and_tokenizer()
        ids = np.asarray(evaluation_windows(tokenizer, 1), dtype=np.int64)
        print(f"exporting SmolLM2-135M (about a minute) to {folder} ...", flush=True)
        exported = export_causal_lm(model, torch.from_numpy(ids[:, :16]))
        compile_model(exported, "canonicalize")
        path = pathlib.Path(folder) / "smollm2.kirin"
        save_kirin(exported, path)
        del model, exported

        context = multiprocessing.get_context("spawn")
        results = {}
        for engine in ("eager", "onnxruntime", "kirin-torch"):
            with context.Pool(1) as pool:
                results[engine] = pool.apply(_measure, (engine, str(path), ids, args.repeats))
            seconds, peak = results[engine]
            print(f"  {engine:<12} {seconds:.3f} s  peak {peak / 1e9:.2f} GB", flush=True)

    eager = results["eager"][0]
    print()
    print(f"SmolLM2-135M, 1x512 forward, {THREADS} threads, median of {args.repeats}")
    print(f"{'engine':<14}{'seconds':>9}{'vs eager':>10}{'peak GB':>9}")
    for engine, (seconds, peak) in results.items():
        print(f"{engine:<14}{seconds:>9.3f}{seconds / eager:>9.2f}x{peak / 1e9:>9.2f}")
    return 0


def _measure(engine: str, path: str, ids, repeats: int) -> tuple[float, int]:
    """Median seconds of one forward, and the process's peak resident memory in bytes."""
    import torch

    from _smollm2 import peak_resident_bytes

    torch.set_num_threads(THREADS)
    forward = _engines()[engine](path, ids)
    forward()  # warm-up: first-call allocations and kernel selection
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        forward()
        times.append(time.perf_counter() - start)
    return statistics.median(times), peak_resident_bytes()


def _engines():
    def eager(path, ids):
        import torch

        from _smollm2 import load_model_and_tokenizer

        model, _ = load_model_and_tokenizer()
        tensor = torch.from_numpy(ids)

        def forward():
            with torch.inference_mode():
                model(input_ids=tensor, use_cache=False)

        return forward

    def onnxruntime(path, ids):
        from kirin_compiler import load_model
        from kirin_compiler.backends import onnxruntime as ort_backend

        session = ort_backend.session(load_model(path), threads=THREADS)
        return lambda: session.run(None, {"input_ids": ids})

    def kirin_torch(path, ids):
        from kirin_compiler import load_model
        from kirin_compiler.backends.torch_backend import lower, run

        model = load_model(path)
        module = lower(model)
        return lambda: run(module, model, {"input_ids": ids})

    return {"eager": eager, "onnxruntime": onnxruntime, "kirin-torch": kirin_torch}


if __name__ == "__main__":
    sys.exit(main())
