"""Regenerates every ```console block of docs/cli.md from the current build
(``tests/test_docs.py`` checks them, all but those of its ``UNCHECKED``):
``.venv/bin/python scripts/update_cli_doc.py``.

How a block is made. Its ``$ `` lines are the commands; everything else in it is output, and is
thrown away and written anew. The blocks run in page order, from the repository root (so the
shipped ``models/tiny_llama.onnx`` and ``models/tiny_llama_ids.npy`` are what the page names),
in one scratch folder that stands for ``/tmp/doc_demo`` and is emptied first (``--scratch DIR``
picks another; the page always reads ``/tmp/doc_demo``; a non-empty folder this script did not
make is refused). Files one block makes are there for the blocks after it, as a reader who runs
the page top to bottom has them: ``tiny.kirin``, compiled in the calibration section (and again,
to the same bytes, by the compile examples further down), is the model that the run, verify and
inspect examples use.

- ``.venv/bin/kirinc ARGS`` runs in this process: ``kirin_compiler.cli.main(ARGS)``, which is
  what the console script calls, with stdout and stderr written to one buffer in the order they
  are written (as a terminal shows them; it is no terminal, so no progress bars), ``COLUMNS=80``
  (the help texts) and ``HOME`` an empty folder of its own (so the default calibration cache,
  ``~/.cache/kirin_compiler/calibration``, starts empty). A Python exception out of ``main`` is
  a kirinc bug: the script stops.
- Any other command (``ls``, ``head``, ``sed``, ``cp``, ``rm``, ``echo $?``) runs through bash;
  ``$?`` is the status of the command before it.
- In commands ``/tmp/doc_demo`` becomes the scratch folder; in outputs the scratch folder
  becomes ``/tmp/doc_demo`` again.
- ``SETUP``: what a block needs and does not show (a bad ``.npy``, the example pass file, the
  OPT export), run before the block, keyed by the block's first command.
- ``TRIMS``: the commands whose output the page shortens, and how (``Trim``); each run of
  dropped lines becomes one ``...`` line. Every other output is shown whole.

What differs from run to run is masked by ``mask`` (the check applies it to both the page and
a fresh generation; the page itself shows real numbers):

- in a pass timing table (the rows under ``// ----- pass timing ----- //``), the numbers of the
  ``seconds`` and ``share`` columns;
- in a dump manifest, the value of each ``"seconds":`` key;
- in ``kirinc generate``'s last line, the seconds and the tokens per second.

Everything else, sizes, hashes, node counts, spike counts, must come out the same.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from typing import Callable

import numpy as np

from kirin_compiler.cli import main

REPO = pathlib.Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "cli.md"
SHOWN_SCRATCH = "/tmp/doc_demo"
KIRINC = ".venv/bin/kirinc"
_MARKER = ".update_cli_doc"  # in a scratch folder this script made, and may empty again

_BLOCK = re.compile(r"^```console\n(.*?)^```$", flags=re.S | re.M)


# ----- trims ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Trim:
    """The output lines the page keeps: the first ``head``, the last ``tail``, and every line
    that matches one of the ``match`` regexes (each must match at least one line) with
    ``context`` lines before and after it. Nothing given: the output is one ``...`` line."""

    head: int = 0
    tail: int = 0
    match: tuple[str, ...] = ()
    context: int = 0

    def __call__(self, output: str, command: str) -> str:
        lines = output.splitlines()
        keep = set(range(min(self.head, len(lines))))
        keep |= set(range(max(len(lines) - self.tail, 0), len(lines)))
        for pattern in self.match:
            found = {i for i, line in enumerate(lines) if re.search(pattern, line)}
            if not found:
                raise SystemExit(f"trim of {command!r}: no output line matches {pattern!r}")
            keep |= {j for i in found for j in range(i - self.context, i + self.context + 1)}
        shown: list[str] = []
        for i, line in enumerate(lines):
            if i in keep:
                shown.append(line)
            elif not shown or shown[-1] != "...":
                shown.append("...")
        return "".join(f"{line}\n" for line in shown)


_DEFAULT_COMPILE = (
    f"{KIRINC} models/tiny_llama.onnx -o /tmp/doc_demo/tiny.kirin --calib models/tiny_llama_ids.npy"
)
ABLATION = (
    f"{KIRINC} /tmp/doc_demo/opt/opt_dynamo_18.onnx -o /tmp/doc_demo/opt/ablated.kirin "
    "--calib /tmp/doc_demo/opt/calib.npy --calib-length 16 --no-calib-cache -p "
    '"canonicalize,quantize,outlier-detect,spike-matrix-hybridize,threshold-insert{silent=false},'
    'energy-annotate"'
)
TRIMS: dict[str, Trim] = {
    # the compile that fills the cache: only the cache folder is the point
    f"{_DEFAULT_COMPILE} --calib-cache /tmp/doc_demo/cache": Trim(),
    # the ablated compile: its status lines are those of any compile
    ABLATION: Trim(),
    # the table with a loaded pass: only its row
    f"{KIRINC} --load-pass /tmp/doc_demo/plug/scale_pass.py:ScalePass --list-passes":
        Trim(match=(r"^scale ",)),
    # canonicalize's one large hunk: its start (two removed constants), the query projection
    # of layer 0 as the new IR has it (with the lines before and after it), the status line
    f"{KIRINC} models/tiny_llama.onnx -p canonicalize --print-changed":
        Trim(head=9, tail=1, context=1,
             match=(r"^\+  %\S+: .* = MatMul\(.* role=q scope=model\.model\.layers\.0\.",)),
    # the energy report: its first tables, and the files it wrote
    f"{KIRINC} report /tmp/doc_demo/wiki.kirin --preset snn-convention --json /tmp/doc_demo/energy.json "
    "--chart /tmp/doc_demo/energy.svg": Trim(head=31, tail=2),
}


# ----- setup ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Context:
    doc: str  # the page as it was before this run (the example pass is taken from it)
    scratch: pathlib.Path  # stands for /tmp/doc_demo
    opt_export: Callable[[pathlib.Path], pathlib.Path]

    def path(self, shown: str) -> pathlib.Path:
        """The scratch path of a path the page shows under /tmp/doc_demo."""
        return pathlib.Path(shown.replace(SHOWN_SCRATCH, str(self.scratch)))


def _kirinc_quietly(*argv: str) -> None:
    """Runs kirinc for a setup step; its output is not shown."""
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(out):
        status = main(list(argv))
    if status != 0:
        raise SystemExit(f"setup step 'kirinc {' '.join(argv)}' failed:\n{out.getvalue()}")


def _bad_ids(ctx: Context) -> None:
    # `kirinc run` on ids the model fails on: a token id past the 256-token vocabulary
    np.save(ctx.path("/tmp/doc_demo/bad.npy"), np.array([[1, 2, 100_000]], dtype=np.int64))


def _opt_ablation(ctx: Context) -> None:
    # the 2-layer OPT model of the tests (export_file("opt", "dynamo", 18, folder)) and 3 x 16
    # calibration ids (token_ids((3, 16), seed=2)), as the prose before the block says
    folder = ctx.path("/tmp/doc_demo/opt")
    folder.mkdir()
    exported = ctx.opt_export(folder)
    assert exported == folder / "opt_dynamo_18.onnx", exported
    np.save(folder / "calib.npy", _conftest().token_ids((3, 16), seed=2))


def _verify_refusals(ctx: Context) -> None:
    # canon.kirin: compiled with -p canonicalize (no spiking products); uncalibrated.kirin:
    # spiking products, but no outlier-detect, so no calibration inputs recorded; t2.kirin:
    # compiled with --calib /tmp/doc_demo/calib.npy, a copy of the shipped ids that is then
    # changed (each row reversed)
    _kirinc_quietly(
        "models/tiny_llama.onnx", "-p", "canonicalize", "-o", str(ctx.path("/tmp/doc_demo/canon.kirin")),
    )
    _kirinc_quietly(
        "models/tiny_llama.onnx", "-p", "canonicalize,quantize,spike-matrix-hybridize,threshold-insert",
        "-o", str(ctx.path("/tmp/doc_demo/uncalibrated.kirin")),
    )
    calib = ctx.path("/tmp/doc_demo/calib.npy")
    shutil.copy(REPO / "models" / "tiny_llama_ids.npy", calib)
    _kirinc_quietly(
        "models/tiny_llama.onnx", "-o", str(ctx.path("/tmp/doc_demo/t2.kirin")), "--calib", str(calib),
        "--no-calib-cache",
    )
    np.save(calib, np.load(calib)[:, ::-1].copy())


def _example_passes(ctx: Context) -> None:
    # the example passes: the ```python block the page shows just before, written as it is
    source = _python_block(ctx.doc, "import dataclasses\n")
    folder = ctx.path("/tmp/doc_demo/plug")
    folder.mkdir()
    (folder / "scale_pass.py").write_text(source)


def _notes_folder(ctx: Context) -> None:
    # a folder with content of its own, which --dump-dir refuses
    folder = ctx.path("/tmp/doc_demo/notes")
    folder.mkdir()
    (folder / "todo.txt").write_text("not a kirin dump\n")


SETUP: dict[str, Callable[[Context], None]] = {
    f"{KIRINC} run models/tiny_llama.onnx --input /tmp/doc_demo/bad.npy": _bad_ids,
    ABLATION: _opt_ablation,
    f"{KIRINC} verify /tmp/doc_demo/canon.kirin": _verify_refusals,
    f"{KIRINC} --load-pass /tmp/doc_demo/plug/scale_pass.py:ScalePass --list-passes": _example_passes,
    f"{KIRINC} models/tiny_llama.onnx --dump-dir /tmp/doc_demo/notes": _notes_folder,
}


def _conftest():
    """tests/conftest.py, for the OPT export the ablation uses (the tests' own model)."""
    sys.path.insert(0, str(REPO / "tests"))
    try:
        import conftest
    finally:
        sys.path.remove(str(REPO / "tests"))
    return conftest


def export_opt(folder: pathlib.Path) -> pathlib.Path:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return _conftest().export_file("opt", "dynamo", 18, folder)


# ----- running --------------------------------------------------------------------------------


def _python_block(doc: str, first_line: str) -> str:
    for body in re.findall(r"^```python\n(.*?)^```$", doc, flags=re.S | re.M):
        if body.startswith(first_line):
            return body
    raise SystemExit(f"docs/cli.md has no ```python block starting with {first_line!r}")


def console_blocks(doc: str) -> list[str]:
    """The bodies of the page's ```console blocks, in order."""
    return _BLOCK.findall(doc)


def commands(block: str) -> list[str]:
    return [line[2:] for line in block.splitlines() if line.startswith("$ ")]


class _Runner:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.status = 0

    def __call__(self, command: str) -> str:
        scratch = str(self.ctx.scratch)
        argv = shlex.split(command)
        if argv[0] == KIRINC:
            output = self._kirinc([arg.replace(SHOWN_SCRATCH, scratch) for arg in argv[1:]], command)
        else:
            output = self._shell(command.replace(SHOWN_SCRATCH, scratch))
        for form in {scratch, os.path.realpath(scratch)}:
            output = output.replace(form, SHOWN_SCRATCH)
        return output

    def _kirinc(self, argv: list[str], command: str) -> str:
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            try:
                self.status = main(argv)
            except SystemExit as exit_:  # argparse: --help, --version, usage errors
                self.status = exit_.code if isinstance(exit_.code, int) else 1
            except Exception as error:
                raise SystemExit(f"kirinc crashed on {command!r}: {error!r}\n{buffer.getvalue()}") from error
        return buffer.getvalue()

    def _shell(self, command: str) -> str:
        done = subprocess.run(
            ["bash", "-c", f"(exit {self.status}); {command}"], cwd=REPO,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False,
        )
        self.status = done.returncode
        return done.stdout


@contextlib.contextmanager
def _environment(home: pathlib.Path):
    saved = {key: os.environ.get(key) for key in ("COLUMNS", "HOME")}
    cwd = os.getcwd()
    os.environ.update(COLUMNS="80", HOME=str(home))
    os.chdir(REPO)
    try:
        yield
    finally:
        os.chdir(cwd)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _empty(scratch: pathlib.Path) -> None:
    if scratch.exists():
        if any(scratch.iterdir()) and not (scratch / _MARKER).exists():
            raise SystemExit(f"{scratch} is not empty and was not made by this script; remove it first")
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    (scratch / _MARKER).write_text("scratch folder of scripts/update_cli_doc.py; emptied on every run\n")


def generate(
    doc: str,
    scratch: pathlib.Path,
    opt_export: Callable[[pathlib.Path], pathlib.Path] = export_opt,
    skip: frozenset[str] = frozenset(),
) -> str:
    """``doc`` with the output of every ```console block made anew (``scratch`` is emptied),
    except the blocks whose first command is in ``skip``: they are left as they are, and
    neither they nor their setup run."""
    scratch = pathlib.Path(scratch).absolute()
    _empty(scratch)
    ctx = Context(doc, scratch, opt_export)
    run = _Runner(ctx)
    firsts = [cs[0] for cs in map(commands, console_blocks(doc)) if cs]
    every = [c for b in console_blocks(doc) for c in commands(b)]
    for key in SETUP:
        if key not in firsts:
            raise SystemExit(f"SETUP names a block that docs/cli.md does not start with: {key!r}")
    for key in skip:
        if key not in firsts:
            raise SystemExit(f"skip names a block that docs/cli.md does not start with: {key!r}")
    for key in TRIMS:
        if key not in every:
            raise SystemExit(f"TRIMS names a command docs/cli.md does not show: {key!r}")

    def block(match: re.Match) -> str:
        shown = commands(match.group(1))
        if not shown:
            raise SystemExit(f"a ```console block of docs/cli.md shows no $ command:\n{match.group(0)}")
        if shown[0] in skip:
            return match.group(0)
        if shown[0] in SETUP:
            SETUP[shown[0]](ctx)
        parts = []
        for command in shown:
            output = run(command)
            if command in TRIMS:
                output = TRIMS[command](output, command)
            if output and not output.endswith("\n"):
                output += "\n"
            parts.append(f"$ {command}\n{output}")
        return "```console\n" + "".join(parts) + "```"

    with tempfile.TemporaryDirectory(prefix="kirin_doc_home_") as home, _environment(pathlib.Path(home)):
        return _BLOCK.sub(block, doc)


# ----- masking --------------------------------------------------------------------------------

_TIMING_BANNER = "// ----- pass timing ----- //"
_TIMING_ROW = re.compile(r"^(\d{2,}  \S+|    total) +\d+\.\d{3} +\d+\.\d%")
_MANIFEST_SECONDS = re.compile(r'^(\s*"seconds": )[-+.\deE]+(,?)$')


def mask(text: str) -> str:
    """``text`` with the fields that vary from run to run replaced by ``<seconds>`` and
    ``<share>``: the seconds and share of each row of a pass timing table, and the value of a
    manifest's ``"seconds":`` keys."""
    lines, in_table = [], False
    for line in text.splitlines(keepends=True):
        if line.rstrip("\n") == _TIMING_BANNER:
            in_table = True
        elif in_table and _TIMING_ROW.match(line):
            line = _TIMING_ROW.sub(r"\1 <seconds> <share>", line)
        elif in_table and not re.match(r"^(#   pass |--  -)", line):
            in_table = False
        line = _GENERATION_SPEED.sub(r"\1<seconds> s (<speed> tokens/s", line)
        lines.append(_MANIFEST_SECONDS.sub(r"\1<seconds>\2", line))
    return "".join(lines)


_GENERATION_SPEED = re.compile(r"(tokens in )[\d.]+ s \([\d.]+ tokens/s")


if __name__ == "__main__":
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--scratch", default=SHOWN_SCRATCH, help="the folder that stands for /tmp/doc_demo")
    DOC.write_text(generate(DOC.read_text(), pathlib.Path(options.parse_args().scratch)))
