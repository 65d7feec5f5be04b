"""Rewrites the generated examples of docs/kirin_ops.md, docs/arithmetic.md, docs/backends.md,
docs/writing_passes.md, docs/ir_format.md and docs/energy.md (and that page's chart,
docs/images/energy_wiki_llama.png) from the current build (``tests/test_op_docs.py`` checks
them): ``.venv/bin/python scripts/update_op_docs.py``. (docs/cli.md has its own script,
``scripts/update_cli_doc.py``, and the README's demo output ``scripts/demo.py``.)

A generated block is what lies between ``<!-- generated: NAME -->`` and ``<!-- end generated -->``:
a fenced block that ``BLOCKS[NAME]`` makes; nothing else on the pages is touched. The models are
those of the tests: ``mlp()`` of tests/kirin_models.py (calibrated on its two test inputs),
models/tiny_llama.onnx (calibrated on models/tiny_llama_ids.npy), and, for the ablation of
arithmetic.md section 8, the tiny OPT model of tests/conftest.py (dynamo export, opset 18).
The IR dumps of ir_format.md are the printer's golden files (``tests/test_printer.py`` checks
those against the printer), and the diff of writing_passes.md comes from running that page's
own pass file and command. The energy report's examples are of the two trained models,
models/wiki_llama.onnx and models/wiki_opt.onnx, compiled as ``make demo`` compiles the first.
The instruction listing of docs/isa.md (and the whole of it, docs/examples/tiny_llama.nl) is
models/tiny_llama.onnx's, emitted by the commands that page shows.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import json
import pathlib
import re
import shlex
import shutil
import sys
import tempfile

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import conftest  # noqa: E402  (the tiny models of the tests, from a seed)
from kirin_models import compiled, node_lines  # noqa: E402

from kirin_compiler import calibration, compile_model, load_model  # noqa: E402
from kirin_compiler.cli import main  # noqa: E402
from kirin_compiler.energy import presets  # noqa: E402
from kirin_compiler.energy import report as energy  # noqa: E402
from kirin_compiler.instruments import format_table  # noqa: E402
from kirin_compiler.format import save_model  # noqa: E402
from kirin_compiler.kirin_ops import KIRIN_DOMAIN, KIRIN_OPSET_VERSION  # noqa: E402
from kirin_compiler.printer import format_model  # noqa: E402

DOCS = [REPO / "docs" / name for name in (
    "kirin_ops.md", "arithmetic.md", "backends.md", "writing_passes.md", "ir_format.md", "energy.md", "isa.md")]
LISTING = pathlib.Path("docs/examples/tiny_llama.nl")  # with the weights file beside it, not kept
ENERGY_CHART = pathlib.Path("docs/images/energy_wiki_llama.png")
QUANTIZE = "canonicalize,quantize"
OUTLIERS = QUANTIZE + ",outlier-detect"
NEURONS = OUTLIERS + ",spike-matrix-hybridize,threshold-insert"
DEFAULT = NEURONS + ",energy-annotate"  # energy-annotate adds only the ops= notes to the nodes
ABLATED = DEFAULT.replace("threshold-insert", "threshold-insert{silent=false}")
MARKER = re.compile(r"(<!-- generated: ([\w-]+) -->\n)(.*?)(<!-- end generated -->)", flags=re.S)


@functools.cache
def mlp(pipeline: str):
    return compiled(pipeline)


@functools.cache
def llama(pipeline: str):
    model = load_model(conftest.TINY_LLAMA)
    feeds = [{"input_ids": np.load(conftest.TINY_LLAMA_IDS)}]
    calibration.attach(model, calibration.Calibration(feeds, "tiny_llama_ids.npy", progress=False))
    compile_model(model, pipeline)
    return model


def nodes(model, *keys: str) -> str:
    """The node lines of ``model``'s dump that contain each key: exactly one line per key."""
    lines = node_lines(model)
    found = []
    for key in keys:
        matches = [line for line in lines if key in line]
        if len(matches) != 1:
            raise SystemExit(f"update_op_docs: {len(matches)} node lines contain {key!r}")
        found += matches
    return "\n".join(found)


def constants(model, *stems: str) -> str:
    lines = format_model(model).splitlines()
    return "\n".join(line.strip() for line in lines for s in stems if line.startswith(f"  const %{s}."))


def operation_counts() -> str:
    """Each node's ``kirin.ops`` of the MLP, with the arithmetic of arithmetic.md section 10."""
    model = mlp(DEFAULT)
    tokens = json.loads(model.metadata_props["kirin.workload"])["tokens"]
    ops = {n.name: json.loads(n.metadata_props["kirin.ops"])
           for n in model.graph if "kirin.ops" in n.metadata_props}
    rows = []
    for node in model.graph:
        if node.name not in ops:
            continue
        counts, note = ops[node.name], ""
        integer_path = len(node.inputs) > 3 and node.inputs[3] is not None
        if node.op_type in ("SpikeMatMul", "IntMatMul"):
            fan_out = node.inputs[1].shape[-1]
            if node.op_type == "SpikeMatMul":
                spikes = ops[node.inputs[0].producer().name]["spikes"]
                assert counts["accumulates"] == spikes * fan_out
                note = f"{counts['accumulates']} = {spikes} spikes x {fan_out}"
            else:
                assert counts["int_macs"] % fan_out == 0
                note = f"{counts['int_macs']} = {counts['int_macs'] // fan_out} outlier codes x {fan_out}"
        elif node.op_type == "Rescale":
            per = 4 if integer_path else 2
            outputs = tokens * node.inputs[2].shape[-1]
            assert counts["float_ops"] == outputs * per
            note = f"{counts['float_ops']} = {outputs} outputs x {per}"
        elif node.op_type == "TTFSNeuron":
            per = (4 if integer_path else 2) + (node.inputs[5] is not None) + 1
            assert counts["float_ops"] == counts["neurons"] * per
            note = f"{counts['float_ops']} = {counts['neurons']} outputs x {per}"
        elif node.op_type == "TTFSEncoder":
            assert counts["float_ops"] == counts["neurons"] * 2
            note = f"{counts['float_ops']} = {counts['neurons']} values x 2"
        rows.append((node.name, node.op_type, json.dumps(counts, sort_keys=True), note))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    table = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths + [0])).rstrip() for row in rows]
    return "\n".join([f"kirin.workload = {model.metadata_props['kirin.workload']}", *table])


def lowered_code(first: str, last: str) -> str:
    """The lines of the tiny Llama's generated code (default pipeline, snn mode) from the one
    that starts with ``first`` to the one that starts with ``last``."""
    from kirin_compiler.backends.torch_backend import lower

    lines = lower(llama(DEFAULT), "snn").code.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith(first))
    stop = next(i for i, line in enumerate(lines) if i > start and line.strip().startswith(last))
    return "\n".join(lines[start : stop + 1])


def spike_counter() -> str:
    """What the probe example of backends.md prints, run as the page shows it."""
    text = (REPO / "docs" / "backends.md").read_text()
    code = re.search(r"```python\n(import numpy as np\n.*?)```", text, flags=re.S).group(1)
    compiled = pathlib.Path(tempfile.mkdtemp(prefix="op-docs-")) / "tiny.kirin"
    atexit.register(shutil.rmtree, compiled.parent, ignore_errors=True)
    from kirin_compiler import save_kirin

    save_kirin(llama(DEFAULT), compiled)
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code.replace("/tmp/doc_demo/tiny.kirin", str(compiled)), "backends.md", "exec"), {})  # noqa: S102
    return output.getvalue().rstrip()


def opset_refusal() -> str:
    """``kirinc inspect`` of a file that imports the previous ``ai.kirin`` version."""
    model = compiled(QUANTIZE)
    model.opset_imports[KIRIN_DOMAIN] = KIRIN_OPSET_VERSION - 1
    errors = io.StringIO()
    with tempfile.TemporaryDirectory() as folder, contextlib.chdir(folder):
        save_model(model, "old.kirin")
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
            status = main(["inspect", "old.kirin"])
    assert status == 2, errors.getvalue()
    return "$ .venv/bin/kirinc inspect old.kirin\n" + errors.getvalue().rstrip("\n")


@functools.cache
def opt_folder() -> pathlib.Path:
    """The tiny OPT export and its calibration ids, in a temporary folder, as opt.onnx and calib.npy."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="kirin-op-docs-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        conftest.export_file("opt", "dynamo", 18, folder).rename(folder / "opt.onnx")
    np.save(folder / "calib.npy", conftest.token_ids((3, 16), seed=2))
    return folder


def kirinc(*argv: str, folder: pathlib.Path | None = None) -> str:
    """``kirinc argv`` in ``folder`` (the OPT folder by default): its standard output (the
    console lines shown)."""
    output = io.StringIO()
    with contextlib.chdir(folder or opt_folder()), contextlib.redirect_stdout(output), \
            contextlib.redirect_stderr(io.StringIO()):
        main(list(argv))
    return output.getvalue().rstrip("\n")


@functools.cache
def trained(name: str) -> pathlib.Path:
    """A temporary folder laid out as the repository (``models/``, ``build/``, ``docs/images/``)
    where models/NAME.onnx is compiled to build/NAME.kirin with the default pipeline on the
    protocol's calibration text, as ``make demo`` does."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="kirin-energy-docs-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    (folder / "models").symlink_to(REPO / "models")
    (folder / "build").mkdir()
    (folder / ENERGY_CHART.parent).mkdir(parents=True)
    assert kirinc(*compile_trained(name), folder=folder) == ""
    return folder


def compile_trained(name: str) -> list[str]:
    return [f"models/{name}.onnx", "-o", f"build/{name}.kirin", "--calib", "models/wiki_calib.txt",
            "--tokenizer", "models/wiki_tokenizer"]


def energy_report() -> str:
    """The console of compiling the trained Llama and of ``kirinc report`` on it (with the chart)."""
    folder = trained("wiki_llama")
    report_args = ["report", "build/wiki_llama.kirin", "--chart", str(ENERGY_CHART)]
    text = kirinc(*report_args, folder=folder)
    return "\n".join([f"$ .venv/bin/kirinc {' '.join(compile_trained('wiki_llama'))}",
                      f"$ .venv/bin/kirinc {' '.join(report_args)}", text])


def energy_comparison(name: str) -> str:
    """Kirin's total reductions on a trained model under each shipped preset."""
    model = load_model(trained(name) / "build" / f"{name}.kirin")
    return energy.comparison([energy.build(model, presets.load(p)) for p in presets.names()])


def energy_presets() -> str:
    rows = [["preset", "constant", "op", "bits", "energy", "unit", "source"]]
    for name in presets.names():
        for c in presets.load(name).constants:
            value = c.energy / presets.UNITS[c.unit]
            rows.append([name, c.name, c.op, str(c.bits), f"{value:g}", c.unit, c.source])
    return format_table(rows).rstrip("\n")


def preset_error() -> str:
    """What a preset with a wrong unit gets."""
    folder = trained("wiki_llama")
    text = (REPO / "kirin_compiler" / "energy" / "presets" / "horowitz-45nm.toml").read_text()
    (folder / "my_45nm.toml").write_text(text.replace('unit = "pJ"', 'unit = "mW"', 1))
    errors = io.StringIO()
    with contextlib.chdir(folder), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(errors):
        assert main(["report", "build/wiki_llama.kirin", "--preset", "my_45nm.toml"]) == 2
    return "$ .venv/bin/kirinc report build/wiki_llama.kirin --preset my_45nm.toml\n" + errors.getvalue().rstrip("\n")


def compile_and_verify(out: str, pipeline: str | None, last: int = 0) -> str:
    """The console of compiling the OPT model (``-p pipeline``, or the default pipeline) and
    verifying it: the verify table and summary, or only its ``last`` lines."""
    compile_args = ["opt.onnx", "-o", out, "--calib", "calib.npy", "--calib-length", "16", "--no-calib-cache"]
    assert kirinc(*compile_args, *(["-p", pipeline] if pipeline else [])) == ""  # all on stderr
    shown = "$ .venv/bin/kirinc " + " ".join(compile_args) + (f' \\\n    -p "{pipeline}"' if pipeline else "")
    verify = kirinc("verify", out).splitlines()
    shown += f"\n$ .venv/bin/kirinc verify {out}"
    return "\n".join([shown, *(["...", *verify[-last:]] if last else verify)])


def golden(name: str) -> str:
    return (REPO / "tests" / "golden" / name).read_text().rstrip("\n")


def documented_pass_diff() -> str:
    """The start of what ``--print-changed`` shows for the example pass of writing_passes.md:
    the diff's header and its first hunk up to the first added line, run as the page says."""
    text = (REPO / "docs" / "writing_passes.md").read_text()
    plugin = re.search(r"```python\n(# examples/my_passes.py\n.*?)```", text, flags=re.S).group(1)
    command = re.search(r"```console\n\$ kirinc (.*?)\n```", text).group(1)
    output = io.StringIO()
    with tempfile.TemporaryDirectory() as folder, contextlib.chdir(folder):
        pathlib.Path("examples").mkdir()
        pathlib.Path("examples/my_passes.py").write_text(plugin)
        pathlib.Path("models").mkdir()
        shutil.copy(conftest.TINY_LLAMA, "models/tiny_llama.onnx")
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(io.StringIO()):
            assert main(shlex.split(command)) == 0
        sys.modules.pop("my_passes", None)
    lines = output.getvalue().splitlines()
    start = lines.index("--- 01_canonicalize")
    end = next(i for i in range(start + 3, len(lines)) if lines[i].startswith("+"))
    return "\n".join(lines[start : end + 1])


@functools.cache
def listing_folder() -> pathlib.Path:
    """A folder laid out as the repository where models/tiny_llama.onnx is compiled and emitted
    as docs/examples/tiny_llama.nl, as docs/isa.md says."""
    folder = pathlib.Path(tempfile.mkdtemp(prefix="kirin-isa-docs-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    (folder / "models").symlink_to(REPO / "models")
    (folder / LISTING.parent).mkdir(parents=True)
    return folder


EMIT = ["models/tiny_llama.onnx", "--emit", "listing", "-o", str(LISTING), "--calib", "models/tiny_llama_ids.npy",
        "--no-calib-cache"]
COMPILE = ["models/tiny_llama.onnx", "-o", "tiny_llama.kirin", "--calib", "models/tiny_llama_ids.npy", "--no-calib-cache"]
VERIFY = ["verify", "tiny_llama.kirin", "--listing", str(LISTING), "--input", "models/tiny_llama_ids.npy"]


def console(*commands: list[str]) -> str:
    """Each command as typed and what it prints (standard output and error), in the listing
    folder."""
    lines = []
    for argv in commands:
        output = io.StringIO()
        with contextlib.chdir(listing_folder()), contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            main(list(argv))
        lines += [f"$ kirinc {' '.join(argv)}", output.getvalue().rstrip("\n")]
    return "\n".join(lines)


@functools.cache
def emitted_listing() -> str:
    """docs/examples/tiny_llama.nl as the emit command writes it."""
    console(EMIT)
    return (listing_folder() / LISTING).read_text()


def listing_header() -> str:
    """The listing's first lines, up to the second tensor, and its inputs and outputs."""
    lines = emitted_listing().splitlines()
    tensors = [i for i, line in enumerate(lines) if line.startswith(".tensor")]
    return "\n".join(lines[: tensors[1] + 1] + ["..."] + lines[tensors[-1] + 1 : tensors[-1] + 5])


def listing_layer() -> str:
    """Decoder layer 0 as the core runs it: its neuron, synapse and schedule instructions (the
    host operations, loads and frees left out), from its first encoder to the next layer's."""
    lines = emitted_listing().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("layers.0.q.in0: enc"))
    stop = next(i for i, line in enumerate(lines) if line.startswith("layers.1.q.in0: enc"))
    kept = [line for line in lines[start:stop] if not re.match(r"(\S+: )?(host|load|free)\b", line)]
    return "\n".join(kept)


def listing_error() -> str:
    """A malformed listing's one line: a load of a tensor the weights file does not have."""
    folder = listing_folder()
    emitted_listing()
    bad = folder / "docs/examples/bad.nl"
    bad.write_text(re.sub(r"= @3\b", "= @300", emitted_listing(), count=1))
    console(COMPILE)
    text = console(["verify", "tiny_llama.kirin", "--listing", "docs/examples/bad.nl"])
    assert "kirinc: error: " in text, text
    return text


BLOCKS = {
    # docs/kirin_ops.md
    "opset-refusal": ("console", opset_refusal),
    "mlp": ("text", lambda: "\n".join(node_lines(mlp(NEURONS)))),
    "mlp-constants": ("text", lambda: constants(mlp(NEURONS), "fc1", "fc2")),
    "actquant": ("text", lambda: nodes(llama(QUANTIZE), "%layers.0.q.in0.q:")),
    "actquant-calibrated": ("text", lambda: "\n".join([
        nodes(llama(OUTLIERS), "%layers.0.q.in0.q:"), nodes(mlp(OUTLIERS), "%fc2.in0.q:")])),
    "qmatmul": ("text", lambda: "\n".join([
        nodes(llama(OUTLIERS), "QMatMul(%layers.0.q.in0.q, %layers.0.q.in0.s, %layers.0.q.wq,"),
        nodes(mlp(QUANTIZE), "QMatMul(%fc1.in0.q,")])),
    "spikematmul": ("text", lambda: nodes(llama(NEURONS), "%layers.0.q.V:")),
    "intmatmul": ("text", lambda: nodes(llama(NEURONS), "%layers.0.q.U:")),
    "rescale": ("text", lambda: nodes(llama(NEURONS), "Rescale(%layers.0.q.V,")),
    "ttfsencoder": ("text", lambda: nodes(llama(NEURONS), "%layers.0.q.in0.q:")),
    "ttfsneuron": ("text", lambda: nodes(mlp(NEURONS), "TTFSNeuron(")),
    "attention": ("text", lambda: nodes(
        llama(NEURONS), "%layers.0.attn-qk.in0.q:", "%layers.0.attn-qk.in1.q:", "%layers.0.attn-qk.V:",
        "%layers.0.attn-pv.in0.q:", "%layers.0.attn-pv.in1.q:", "%layers.0.attn-pv.V:")),
    # docs/arithmetic.md
    "weights": ("text", lambda: "\n".join([
        constants(llama(QUANTIZE), "layers.0.down"), constants(mlp(QUANTIZE), "fc1")])),
    "ablation": ("console", lambda: compile_and_verify("ablated.kirin", ABLATED)),
    "silent-phase": ("console", lambda: compile_and_verify("model.kirin", None, last=1)),
    "timesteps": ("text", lambda: mlp(DEFAULT).metadata_props["kirin.timesteps"]),
    "operation-counts": ("text", operation_counts),
    "lowered-code": ("python", lambda: lowered_code("layers_0_q_in0 = ", "layers_0_q = ")),
    "spike-counter": ("text", spike_counter),
    # docs/writing_passes.md
    "drop-mul-by-one-diff": ("diff", documented_pass_diff),
    # docs/ir_format.md
    "ir-small": ("text", lambda: golden("printer_small.txt")),
    "ir-control-flow": ("text", lambda: golden("printer_control_flow.txt")),
    # docs/energy.md
    "energy-report": ("console", energy_report),
    "energy-wiki-llama": ("text", lambda: energy_comparison("wiki_llama")),
    "energy-wiki-opt": ("text", lambda: energy_comparison("wiki_opt")),
    "energy-presets": ("text", energy_presets),
    "energy-preset-error": ("console", preset_error),
    # docs/isa.md
    "listing-emit": ("console", lambda: console(EMIT)),
    "listing-header": ("text", listing_header),
    "listing-layer": ("text", listing_layer),
    "listing-verify": ("console", lambda: (emitted_listing(), console(COMPILE, VERIFY))[1]),
    "listing-error": ("console", listing_error),
}


def update(text: str) -> str:
    """``text`` with every generated block made anew."""

    def fill(match: re.Match) -> str:
        name = match.group(2)
        if name not in BLOCKS:
            raise SystemExit(f"update_op_docs: no generator for the block {name!r}")
        language, make = BLOCKS[name]
        return f"{match.group(1)}```{language}\n{make()}\n```\n{match.group(4)}"

    return MARKER.sub(fill, text)


def blocks(text: str) -> dict[str, str]:
    """The generated blocks of ``text``, by name."""
    found = {}
    for match in MARKER.finditer(text):
        if match.group(2) in found:
            raise SystemExit(f"update_op_docs: the block {match.group(2)!r} appears twice")
        found[match.group(2)] = match.group(3)
    return found


if __name__ == "__main__":
    for doc in DOCS:
        text = doc.read_text()
        new = update(text)
        changed = [name for name, body in blocks(new).items() if blocks(text)[name] != body]
        if changed:
            doc.write_text(new)
        print(f"{doc.relative_to(REPO)}: {', '.join(changed) or 'up to date'}")
    shutil.copyfile(trained("wiki_llama") / ENERGY_CHART, REPO / ENERGY_CHART)
    print(f"{ENERGY_CHART}: written")
    (REPO / LISTING).parent.mkdir(exist_ok=True)
    (REPO / LISTING).write_text(emitted_listing())
    print(f"{LISTING}: written")
