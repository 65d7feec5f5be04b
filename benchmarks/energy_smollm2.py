"""The SmolLM2 section of docs/energy.md: SmolLM2-135M compiled with the default pipeline on the
protocol's 8 calibration windows of 512 tokens, priced by ``kirinc report`` under both shipped
presets, its chart in docs/images/energy_smollm2.png::

    make bench-deps
    .venv/bin/python benchmarks/energy_smollm2.py [--workdir DIR]

The export and the token ids are made once in DIR (default: a temporary folder) and reused.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import pathlib
import re
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from _smollm2 import prepare  # noqa: E402

from kirin_compiler.cli import main as kirinc  # noqa: E402
from kirin_compiler.energy import presets, report  # noqa: E402
from kirin_compiler.format import load_model  # noqa: E402

DOC = REPO / "docs" / "energy.md"
CHART = REPO / "docs" / "images" / "energy_smollm2.png"


def run(*argv: str) -> str:
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        if kirinc(list(argv)) != 0:
            raise SystemExit(f"kirinc {' '.join(argv)} failed")
    return output.getvalue().rstrip("\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=pathlib.Path)
    args = parser.parse_args()
    workdir = args.workdir or pathlib.Path(tempfile.mkdtemp(prefix="kirin-energy-"))
    model_path, calib, _ = prepare(workdir)
    compiled = workdir / "smollm2.kirin"
    start = time.perf_counter()
    run(str(model_path), "-o", str(compiled), "--calib", str(calib), "--no-calib-cache")
    seconds = time.perf_counter() - start
    CHART.parent.mkdir(exist_ok=True)
    text = run("report", str(compiled), "--chart", str(CHART), "--json", str(workdir / "energy.json"))
    model = load_model(compiled)
    reports = [report.build(model, presets.load(name)) for name in presets.names()]
    section = "\n".join([
        f"Compiled in {seconds:.0f} s: `kirinc smollm2.onnx -o smollm2.kirin --calib calib_ids.npy` "
        "(the default pipeline, the protocol's 8 calibration windows of 512 tokens; energy-annotate "
        "counts the first window).",
        "",
        "```console",
        "$ kirinc report smollm2.kirin --chart docs/images/energy_smollm2.png",
        text,
        "```",
        "",
        "Kirin's total reduction under both presets:",
        "",
        "```text",
        report.comparison(reports),
        "```",
        "",
        "![SmolLM2's energy against its baselines, and where it goes](images/energy_smollm2.png)",
    ])
    begin, end = "<!-- results:energy-smollm2 -->", "<!-- end results:energy-smollm2 -->"
    doc = DOC.read_text()
    if begin not in doc:
        raise SystemExit(f"{DOC} has no section {begin}")
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), flags=re.S)
    DOC.write_text(pattern.sub(lambda _: f"{begin}\n{section}\n{end}", doc))
    print(section)


if __name__ == "__main__":
    main()
