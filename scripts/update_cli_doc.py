"""Rewrites the ``--help`` blocks of docs/cli.md from the code (``tests/test_docs.py`` checks
them): ``.venv/bin/python scripts/update_cli_doc.py``."""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import re

from kirin_compiler.cli import main

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "cli.md"
COMMANDS = (["--help"], ["inspect", "--help"], ["run", "--help"], ["verify", "--help"])


def help_text(argv: list[str]) -> str:
    os.environ["COLUMNS"] = "80"
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.suppress(SystemExit):
        main(argv)
    return output.getvalue()


def update(text: str) -> str:
    for argv in COMMANDS:
        prompt = f"$ .venv/bin/kirinc {' '.join(argv)}\n"
        pattern = re.compile(re.escape(prompt) + r".*?```", flags=re.S)
        if not pattern.search(text):
            raise SystemExit(f"docs/cli.md has no block starting with {prompt!r}")
        text = pattern.sub(lambda _: prompt + help_text(argv) + "```", text, count=1)
    return text


if __name__ == "__main__":
    DOC.write_text(update(DOC.read_text()))
