"""The compiled SmolLM2-135M in the torch backend's three modes, on one 1x512 window.

Prints, in one run, the median time of a forward in the ``float`` mode (4-bit weights, float
activations), the ``qann`` mode (the integer reference) and the ``snn`` mode (every time step
simulated), each in its own process, with the ratios the project holds itself to: qann at most
2x float, snn at most 10x qann; the machine's load is printed before each mode::

    make bench-deps
    .venv/bin/python benchmarks/kirin_modes_speed.py [--workdir DIR] [--repeats 3]
"""

from __future__ import annotations

import argparse
import multiprocessing
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _load import machine_load  # noqa: E402

THREADS = 2
BOUNDS = {"qann": ("float", 2.0), "snn": ("qann", 10.0)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=pathlib.Path, help="keep the export and .kirin here")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per mode")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kirin-bench-") as temporary:
        folder = args.workdir or pathlib.Path(temporary)
        from _smollm2 import prepare

        model, calib, evaluation = prepare(folder)
        compiled = folder / "smollm2.kirin"
        if not compiled.is_file():
            subprocess.run([sys.executable, "-m", "kirin_compiler", str(model), "-o", str(compiled),
                            "--calib", str(calib), "--no-calib-cache"], check=True)
        context = multiprocessing.get_context("spawn")
        seconds = {}
        for mode in ("float", "qann", "snn"):
            print(f"  {mode:<6} starting at {machine_load()}", flush=True)
            with context.Pool(1) as pool:
                seconds[mode] = pool.apply(_measure, (str(compiled), str(evaluation), mode, args.repeats))
            print(f"  {mode:<6} {seconds[mode]:.3f} s", flush=True)

    print()
    print(f"SmolLM2-135M compiled (default pipeline), 1x512 forward, {THREADS} threads, "
          f"median of {args.repeats}, {machine_load()} at the end")
    print(f"{'mode':<8}{'seconds':>9}{'ratio':>16}{'bound':>8}")
    for mode, value in seconds.items():
        if mode in BOUNDS:
            reference, bound = BOUNDS[mode]
            ratio = value / seconds[reference]
            verdict = "ok" if ratio <= bound else "OVER"
            print(f"{mode:<8}{value:>9.3f}{ratio:>9.2f}x {reference:<6}{bound:>6.0f}x  {verdict}")
        else:
            print(f"{mode:<8}{value:>9.3f}")
    return 0


def _measure(compiled: str, evaluation: str, mode: str, repeats: int) -> float:
    import numpy as np
    import torch

    from kirin_compiler import load_model
    from kirin_compiler.backends import torch_backend

    torch.set_num_threads(THREADS)
    model = load_model(compiled)
    module = torch_backend.lower(model, mode)
    feeds = {"input_ids": np.load(evaluation)[:1]}
    torch_backend.run(module, model, feeds)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch_backend.run(module, model, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


if __name__ == "__main__":
    sys.exit(main())
