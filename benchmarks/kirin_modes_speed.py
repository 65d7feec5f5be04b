"""The compiled SmolLM2-135M in the torch backend's three modes, on one 1x512 window.

Prints, in one run, the median time of a forward in the ``float`` mode (4-bit weights, float
activations), the ``qann`` mode (the integer reference) and the ``snn`` mode (every time step
simulated), each mode in its own process, with the ratios the project holds itself to: qann at
most 2x float, snn at most 10x qann. The modes take turns, one forward each per round, so that
a machine whose speed drifts slows them alike; the machine's load is printed every round::

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
MODES = ("float", "qann", "snn")
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
        workers = {}  # one process per mode, the model lowered and warmed up once, in turn
        try:
            for mode in MODES:
                workers[mode] = context.Pool(1, _prepare, (str(compiled), str(evaluation), mode))
                workers[mode].apply(int)  # returns once the worker is ready
            times = {mode: [] for mode in MODES}
            for round_ in range(1, args.repeats + 1):
                for mode, worker in workers.items():
                    times[mode].append(worker.apply(_forward))
                figures = "  ".join(f"{mode} {times[mode][-1]:.3f} s" for mode in MODES)
                print(f"  round {round_}: {figures}  ({machine_load()})", flush=True)
        finally:
            for worker in workers.values():
                worker.terminate()
        seconds = {mode: statistics.median(times[mode]) for mode in MODES}

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


_state: dict = {}


def _prepare(compiled: str, evaluation: str, mode: str) -> None:
    import numpy as np
    import torch

    from kirin_compiler import load_model
    from kirin_compiler.backends import torch_backend

    torch.set_num_threads(THREADS)
    model = load_model(compiled)
    module = torch_backend.lower(model, mode)
    feeds = {"input_ids": np.load(evaluation)[:1]}
    _state.update(run=lambda: torch_backend.run(module, model, feeds))
    _state["run"]()  # warm-up


def _forward() -> float:
    start = time.perf_counter()
    _state["run"]()
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
