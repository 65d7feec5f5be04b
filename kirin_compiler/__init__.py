"""kirin_compiler: compile LLMs into integer/spike hybrid spiking neural networks.

The Python API in one place:

- `load_model` reads ONNX and ``.kirin`` files; `export_torch` and `export_causal_lm` turn a
  torch module (Hugging Face Llama, OPT, ...) into the IR;
- `PassRegistry` knows the passes, `PassManager` runs them;
- `compile_model` runs a pipeline (the default one calibrates on the inputs of a
  `Calibration`); `save_kirin` writes a ``.kirin`` file, `save_model` a plain ONNX file;
- `format_model` prints the IR as text.
"""

from __future__ import annotations

__version__ = "0.1.0"

from kirin_compiler.compiler import DEFAULT_PIPELINE, compile_model
from kirin_compiler.errors import KirinError
from kirin_compiler.format import load_model, save_kirin, save_model
from kirin_compiler.pass_manager import Pass, PassManager, PassRecord
from kirin_compiler.printer import format_model
from kirin_compiler.registry import PassRegistry


def __getattr__(name: str):
    # The torch frontends import torch (seconds): only when asked for.
    if name in ("export_causal_lm", "export_torch"):
        from kirin_compiler import frontend

        return getattr(frontend, name)
    if name == "Calibration":
        from kirin_compiler.calibration import Calibration

        return Calibration
    raise AttributeError(f"module 'kirin_compiler' has no attribute '{name}'")


__all__ = [
    "Calibration",
    "DEFAULT_PIPELINE",
    "KirinError",
    "Pass",
    "PassManager",
    "PassRecord",
    "PassRegistry",
    "compile_model",
    "export_causal_lm",
    "export_torch",
    "format_model",
    "load_model",
    "save_kirin",
    "save_model",
]
