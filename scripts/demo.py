"""The README's demo: compile the trained tiny Llama, prove its spiking network exact, and
score it against the float model. ``make demo`` runs it; ``--update-readme`` also writes its
output into README.md, where ``tests/test_readme.py`` checks it (seconds masked).

Every command is printed as typed, then its output, as a shell session would show it::

    .venv/bin/python scripts/demo.py [--out build] [--update-readme]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import pathlib
import shlex
import sys

from kirin_compiler.cli import main as kirinc

REPO = pathlib.Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BEGIN, END = "<!-- demo output -->\n```console\n", "```\n<!-- end demo output -->"


def commands(out: str) -> list[list[str]]:
    """The demo, as ``kirinc`` argument lists (paths relative to the repository root)."""
    text = ["--text", "models/wiki_eval.txt", "--tokenizer", "models/wiki_tokenizer"]
    return [
        ["models/wiki_llama.onnx", "-o", f"{out}/wiki_llama.kirin", "--calib", "models/wiki_calib.txt",
         "--tokenizer", "models/wiki_tokenizer", "--no-calib-cache", "--time-passes"],
        ["verify", f"{out}/wiki_llama.kirin", "--input", "models/wiki_eval.txt",
         "--tokenizer", "models/wiki_tokenizer", "--windows", "2"],
        ["eval", "models/wiki_llama.onnx", f"{out}/wiki_llama.kirin", *text, "--mode", "qann",
         "--mode", "snn"],
    ]


def run(out: str, show: bool = False) -> str:
    """Runs the demo from the repository root; its transcript (stdout and stderr in the order
    they are written, as a terminal shows them). ``show`` prints each command's part as soon
    as the command is done."""
    pathlib.Path(REPO / out).mkdir(parents=True, exist_ok=True)
    transcript = []
    with contextlib.chdir(REPO):
        for argv in commands(out):
            output = io.StringIO()
            with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
                status = kirinc(argv)
            transcript.append(f"$ .venv/bin/kirinc {shlex.join(argv)}\n{output.getvalue()}")
            if show:
                print(transcript[-1], end="", flush=True)
            if status != 0:
                raise SystemExit(f"kirinc {shlex.join(argv)} exited with status {status}")
    return "".join(transcript)


def update_readme(transcript: str) -> None:
    text = README.read_text()
    start, stop = text.index(BEGIN) + len(BEGIN), text.index(END)
    README.write_text(text[:start] + transcript + text[stop:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="build", help="folder for the compiled model (default build)")
    parser.add_argument("--update-readme", action="store_true", help="write the output into README.md")
    args = parser.parse_args()
    transcript = run(args.out, show=True)
    if args.update_readme:
        update_readme(transcript)
    return 0


if __name__ == "__main__":
    sys.exit(main())
