"""``kirinc eval MODEL --text FILE``: perplexity on real text, configurations side by side.

Every model given is scored on the same windows: a ``.kirin`` file as compiled, in the
``--mode`` modes; an ONNX file as it is (mode ``float``: the reference of every row made from
it) and, for every ``-p PIPELINE``, compiled in memory with that pipeline and scored in the
``--mode`` modes. A ``.kirin`` row's reference is the ONNX file given whose SHA-256 the file
records as its source. One command sets the float model, the default pipeline and any
other configuration side by side (``docs/cli.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import re
import sys
from typing import Sequence

import onnx_ir as ir

from kirin_compiler import calibration, evaluation, execution, feeds, files
from kirin_compiler.execution import MODES
from kirin_compiler.cli import _common
from kirin_compiler.compiler import DEFAULT_PIPELINE, compile_model
from kirin_compiler.errors import KirinError
from kirin_compiler.format import (
    KEY_FORMAT_VERSION,
    KEY_PIPELINE,
    KEY_SOURCE,
    atomic_path,
    check_not_weights_in_use,
    check_writable,
    load_model,
    source_provenance,
)
from kirin_compiler.instruments import format_table
from kirin_compiler.registry import PassRegistry

_EPILOG = """\
examples:
  kirinc eval model.onnx model.kirin --text wiki.txt --tokenizer tok/ --mode qann --mode snn
  kirinc eval model.onnx --text wiki.txt --tokenizer tok/ -p default --calib calib.txt
  kirinc eval model.onnx --text wiki.txt --tokenizer tok/ --calib calib.txt \\
      -p default -p "linear only=canonicalize,quantize{attention=false},outlier-detect,\\
spike-matrix-hybridize,threshold-insert" --mode qann --mode snn --json results.json

A pipeline may be named: -p "NAME=PIPELINE"; "default" stands for the default pipeline.
Rows of the snn mode beside the qann mode say whether their logits are bitwise the same.
"""


@dataclasses.dataclass(frozen=True)
class Configuration:
    label: str
    pipeline: str | None  # None: the model as it is
    source: str | None = None  # the SHA-256 of the ONNX file it comes from, if known


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    _common.require_at_least(args, 1, "windows")
    _common.require_at_least(args, 2, "length")  # a window scores its tokens after the first
    registry = PassRegistry.default()
    for spec in args.load_pass:
        registry.load(spec)
    configurations = [_configuration(text, registry) for text in args.passes]
    paths = [pathlib.Path(m) for m in args.model]
    models = {path: _check_model(path) for path in paths}
    compiled = {path: KEY_FORMAT_VERSION in model.metadata_props for path, model in models.items()}
    if configurations and all(compiled.values()):
        raise KirinError(f"'{args.model[0]}' is already compiled: -p compiles ONNX models; give "
                         "the ONNX file, or leave -p out to score the .kirin file as it is")
    for configuration in configurations:
        calibrating = any(p.needs_calibration for p in registry.parse_pipeline(configuration.pipeline))
        if calibrating and args.calib is None:
            raise KirinError(
                f"pipeline '{configuration.label}' calibrates: give --calib IDS.npy (token ids) or "
                "--calib TEXT --tokenizer DIR"
            )
    if args.json:  # checked before any work against what the run will read
        for path, what in [*((m, "the model") for m in args.model), (args.text, "the text"),
                           (args.calib, "the calibration input")]:
            if path:
                files.read(path, what)
        check_writable(args.json)
        for model in models.values():
            check_not_weights_in_use(model, [pathlib.Path(args.json)])
    sources = [path for path in paths if not compiled[path]]
    calibrated = {}  # read once a source, before any work, for all its configurations
    if configurations and args.calib is not None:
        calibrated = {path: _common.calibration_of(args, models[path]) for path in sources}
    del models
    ids = _common.token_ids(pathlib.Path(args.text), _common.load_tokenizer(args.tokenizer))
    windows = calibration.windows(ids, args.length, args.windows)
    if all(w.shape[1] < 2 for w in windows):
        raise KirinError(f"'{args.text}' has no token to score: a window needs at least 2 tokens")
    if len(windows) < args.windows:
        print(f"kirinc: '{args.text}' has {len(windows)} window(s) of up to {args.length} tokens, "
              f"not {args.windows}", file=sys.stderr)
    modes = args.mode or ["qann"]
    progress = sys.stderr.isatty()
    scores: list[tuple[Configuration, evaluation.Score]] = []

    def score(model, configuration: Configuration, modes: Sequence[str], path: pathlib.Path) -> None:
        with _common.failing_on(str(path), args.text, ids):
            result = evaluation.evaluate(model, windows, modes, execution.backend(), configuration.label, progress)
        scores.extend((configuration, s) for s in result)

    for path in paths:
        model = _common.load_runnable(path)
        if compiled[path]:
            own = Configuration(path.name, model.metadata_props.get(KEY_PIPELINE), _recorded_source(model))
            score(model, own, modes, path)
        else:
            own = Configuration(f"{path.name} (float)", None, source_provenance(path)["sha256"])
            score(model, own, ["float"], path)
        del model
        for configuration in configurations if not compiled[path] else ():
            label = f"{path.name}: {configuration.label}" if len(sources) > 1 else configuration.label
            configuration = dataclasses.replace(configuration, label=label, source=own.source)
            model = load_model(path)
            if path in calibrated:
                calibration.attach(model, calibrated[path])
            compile_model(model, registry.parse_pipeline(configuration.pipeline))
            score(model, configuration, modes, path)
            del model
    # each row against the float score of the ONNX file it was compiled from
    references = {c.source: s for c, s in scores if c.pipeline is None and s.mode == "float" and c.source}
    rows = [(c, s, references.get(c.source)) for c, s in scores]
    print(_table(rows, args), end="")
    if args.json:
        _write_json(pathlib.Path(args.json), rows, args)
        print(f"kirinc: wrote {args.json}", file=sys.stderr)
    return 0


def _recorded_source(model) -> str | None:
    """The SHA-256 of the ONNX file a ``.kirin`` model was compiled from, as it records it."""
    try:
        return json.loads(model.metadata_props.get(KEY_SOURCE, "")).get("sha256")
    except (ValueError, AttributeError):
        return None


def _check_model(path: pathlib.Path) -> ir.Model:
    """The model at ``path``, which must take token ids."""
    model = load_model(path)
    feeds.decoder_inputs(model, "kirinc eval")
    return model


def parser() -> argparse.ArgumentParser:
    parser = _common.ArgumentParser(
        prog="kirinc eval",
        description="Perplexity of a model on a text: windows scored each on its own, the\n"
        "float model beside compiled configurations.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", nargs="+", metavar="MODEL",
                        help="ONNX or .kirin files, scored side by side; every compiled row is "
                        "divided by the float score of the ONNX file it comes from")
    parser.add_argument(
        "--text", required=True, metavar="FILE",
        help="the evaluation text (tokenized with --tokenizer), or its token ids as .npy",
    )
    parser.add_argument(
        "-p", "--passes", action="append", default=[], metavar="[NAME=]PIPELINE",
        help="compile the ONNX model with this pipeline, in memory, and score it (repeatable; "
        "'default' is the default pipeline)",
    )
    parser.add_argument(
        "--mode", action="append", choices=MODES, metavar="MODE",
        help="execution mode of the compiled models: float, qann or snn (repeatable; default: qann)",
    )
    parser.add_argument("--windows", type=int, default=16, metavar="N",
                        help="windows to score, the first ones (default: %(default)s)")
    parser.add_argument("--length", type=int, default=512, metavar="N",
                        help="tokens per window (default: %(default)s)")
    _common.add_calibration_arguments(parser)
    parser.add_argument(
        "--load-pass", action="append", default=[], metavar="MODULE:CLASS",
        help="register a custom pass, as for compiling (repeatable)",
    )
    parser.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    return parser


def _configuration(text: str, registry: PassRegistry) -> Configuration:
    """``NAME=PIPELINE``, ``PIPELINE`` or ``default``; the pipeline is checked here, before
    any work."""
    match = re.fullmatch(r"([^=,{}]+)=(.+)", text.strip(), flags=re.S)
    label, pipeline = (match.group(1).strip(), match.group(2)) if match else (None, text.strip())
    if pipeline == "default":
        label, pipeline = label or "default", DEFAULT_PIPELINE
    registry.parse_pipeline(pipeline)
    return Configuration(label or pipeline, pipeline)


def _table(rows, args) -> str:
    table = [("model", "mode", "windows", "tokens", "perplexity", "x float", "= qann")]
    for configuration, score, reference in rows:
        ratio = f"{score.perplexity / reference.perplexity:.3f}" if reference else "-"
        same = "-" if score.differing is None else (
            "bitwise" if score.differing == 0 else f"{score.differing:,} differ"
        )
        table.append((configuration.label, score.mode, str(score.windows), f"{score.tokens:,}",
                      f"{score.perplexity:.3f}", ratio, same))
    head = f"{args.text}: windows of {args.length} tokens, each scored on its own\n"
    return head + format_table(table)


def _write_json(path, rows, args) -> None:
    results = []
    for configuration, score, reference in rows:
        entry = {
            "model": configuration.label,
            "pipeline": configuration.pipeline,
            "mode": score.mode,
            "windows": score.windows,
            "tokens": score.tokens,
            "nll": score.nll,
            "perplexity": score.perplexity,
        }
        if reference is not None:
            entry["ratio_to_float"] = score.perplexity / reference.perplexity
        if score.differing is not None:
            entry["logits_differing_from_qann"] = score.differing
        results.append(entry)
    document = {
        "models": args.model, "text": args.text, "tokenizer": args.tokenizer, "length": args.length,
        "results": results,
    }
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(document, indent=2) + "\n")
