"""The docs stay true: help texts shown in docs/cli.md and the op list in docs/backends.md."""

from __future__ import annotations

import re

import pytest
from conftest import REPO

from kirin_compiler.backends.torch_ops import OPS
from kirin_compiler.cli import main

CLI_DOC = (REPO / "docs" / "cli.md").read_text()


@pytest.mark.parametrize("argv", [["--help"], ["inspect", "--help"], ["run", "--help"], ["verify", "--help"]])
def test_cli_doc_shows_the_current_help(argv, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit):
        main(argv)
    shown = f"$ .venv/bin/kirinc {' '.join(argv)}\n{capsys.readouterr().out}```"
    assert shown in CLI_DOC


def test_backends_doc_lists_every_operator_of_the_table():
    doc = (REPO / "docs" / "backends.md").read_text()
    listed = set(re.findall(r"^\| (\w+) \| \d+ \| \d+ \| \d+ \|$", doc, flags=re.M))
    assert listed == set(OPS)
