"""docs/writing_passes.md: its example pass and command, run exactly as written."""

from __future__ import annotations

import re
import shlex
import shutil
import textwrap

import numpy as np
from conftest import REPO, TINY_LLAMA, token_ids

from kirin_compiler import load_model
from kirin_compiler.backends import onnxruntime as ort_backend
from kirin_compiler.cli import main

DOC = (REPO / "docs" / "writing_passes.md").read_text()


def _block(language: str, first_line: str) -> str:
    for _, body in re.findall(rf"^( *)```{language}\n(.*?)^\1```", DOC, flags=re.S | re.M):
        body = textwrap.dedent(body)
        if body.startswith(first_line):
            return body
    raise AssertionError(f"no ```{language} block starting with {first_line!r} in the doc")


def test_the_documented_pass_is_the_shipped_file():
    assert _block("python", "# examples/my_passes.py") == (REPO / "examples" / "my_passes.py").read_text()


def test_the_documented_example_runs_through_the_cli(tmp_path, monkeypatch, capsys):
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "my_passes.py").write_text(_block("python", "# examples/my_passes.py"))
    (tmp_path / "models").mkdir()
    shutil.copy(TINY_LLAMA, tmp_path / "models" / "tiny_llama.onnx")
    command = _block("console", "$ kirinc").strip().removeprefix("$ ")
    argv = shlex.split(command)
    assert argv[0] == "kirinc"
    monkeypatch.chdir(tmp_path)

    assert main(argv[1:]) == 0

    printed = capsys.readouterr().out
    assert "IR changed by 02_drop-mul-by-one" in printed
    removed = [line for line in printed.splitlines() if re.match(r"^-  %v\d+: .* = Mul\(", line)]
    assert len(removed) == 5  # the doc's claim: four RMSNorm weights and the final norm's
    compiled = load_model(tmp_path / "tiny.kirin")
    assert compiled.metadata_props["kirin.pipeline"] == "canonicalize,drop-mul-by-one{tolerance=0.0}"
    original = load_model(TINY_LLAMA)
    feed = {"input_ids": token_ids((2, 7))}
    np.testing.assert_allclose(
        ort_backend.run(compiled, feed)[0], ort_backend.run(original, feed)[0], atol=1e-5
    )


def test_the_documented_python_api_example_runs(tmp_path, monkeypatch):
    (tmp_path / "my_passes.py").write_text(_block("python", "# examples/my_passes.py"))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(REPO)
    code = _block("python", "from kirin_compiler import PassRegistry")
    namespace: dict = {}
    exec(compile(code, "writing_passes.md", "exec"), namespace)  # noqa: S102
    model = namespace["model"]
    assert model.metadata_props["kirin.pipeline"] == "canonicalize,drop-mul-by-one{tolerance=1e-06}"
    assert sum(node.op_type == "Mul" for node in model.graph) < sum(
        node.op_type == "Mul" for node in load_model(TINY_LLAMA).graph
    )
