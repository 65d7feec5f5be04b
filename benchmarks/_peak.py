"""Runs a module like ``python -m`` and prints its process's peak memory on exit.

``python benchmarks/_peak.py kirin_compiler model.onnx -o model.kirin`` prints a last line
``peak-bytes <n>`` on stderr (VmHWM: a fresh address space, so only this program counts)."""

import atexit
import pathlib
import runpy
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

from _smollm2 import peak_resident_bytes  # noqa: E402

atexit.register(lambda: print(f"peak-bytes {peak_resident_bytes()}", file=sys.stderr))
module, sys.argv = sys.argv[1], sys.argv[1:]
runpy.run_module(module, run_name="__main__")
