"""``kirinc verify MODEL.kirin``: prove by execution that the spiking network computes the
integer network's results bit for bit."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Sequence

import onnx_ir as ir

from kirin_compiler import calibration, equivalence, execution, feeds
from kirin_compiler.cli import _common
from kirin_compiler.errors import KirinError
from kirin_compiler.format import load_model


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    model = load_model(args.model)
    equivalence.require_spiking(model)
    candidate = None
    if args.listing is not None:
        candidate = execution.backend("neuro").ListingFile(args.listing)
        candidate.check_source(model, args.model)
    names = feeds.decoder_inputs(model, "kirinc verify")  # inputs it can feed, before any work
    recorded = None
    if args.input is None:  # the calibration inputs, as compiled, unless the user says otherwise
        recorded = _recorded_calibration(model, args.model)
        args.input, args.tokenizer = recorded["file"], args.tokenizer or recorded.get("tokenizer")
        args.length = recorded["length"] if args.length is None else args.length
        args.windows = recorded["windows"] if args.windows is None else args.windows
    args.length = 512 if args.length is None else args.length
    args.windows = 1 if args.windows is None else args.windows
    _common.require_at_least(args, 1, "length", "windows")
    ids = _common.token_ids(pathlib.Path(args.input), _common.load_tokenizer(args.tokenizer))
    _common.check_vocabulary(model, names, ids, args.input)
    if recorded is not None:  # the file must still hold the windows the model was compiled with
        compiled = calibration.windows(ids, recorded["length"], recorded["windows"])
        if calibration.Calibration([names.feed(model, w) for w in compiled], "").digest() != recorded["sha256"]:
            raise KirinError(
                f"the calibration file '{args.input}' changed since '{args.model}' was compiled: "
                "give --input FILE"
            )
    steps = _decode_steps(args, names)
    windows = calibration.windows(ids, args.length, args.windows)
    what = args.model if candidate is None else f"the listing {args.listing} against {args.model}'s snn mode"
    print(f"kirinc: verifying {what} on {len(windows)} window(s) of {args.input}"
          + (f", the last {steps} tokens of each as decode steps" if steps else ""), file=sys.stderr)
    with _common.failing_on(args.model, args.input, ids):
        report = equivalence.check(
            model, windows, names, steps, progress=sys.stderr.isatty(), candidate=candidate,
            reference="qann" if candidate is None else "snn",
        )
    print(report.table())
    print(report.summary(), end="")
    return 0 if report.ok else 1


def parser() -> argparse.ArgumentParser:
    parser = _common.ArgumentParser(
        prog="kirinc verify",
        description="Run a compiled model in the qann mode (integer reference) and the snn mode\n"
        "(time-stepped spikes), compare every integer accumulator, code and output bit for\n"
        "bit, and print a per-layer table. With --listing, run the model's instruction listing\n"
        "on its interpreter against the snn mode instead. Exits with status 1 on any mismatch.",
        epilog="examples:\n  kirinc verify model.kirin                  (its calibration inputs)\n"
        "  kirinc verify model.kirin --input ids.npy\n"
        "  kirinc verify model.kirin --input wiki.txt --tokenizer tok/ --windows 2\n"
        "  kirinc verify model.kirin --listing model.nl",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help=".kirin file")
    parser.add_argument(
        "--input", metavar="FILE",
        help="token ids (.npy) or text (with --tokenizer); default: the calibration inputs the "
        "model was compiled with, if their file is still there and unchanged",
    )
    parser.add_argument("--tokenizer", metavar="DIR", help="folder with a tokenizer.json, for text")
    parser.add_argument(
        "--listing", metavar="FILE",
        help="an instruction listing of the model (kirinc MODEL --emit listing -o FILE), with its "
        "weights file beside it: check it against the snn mode",
    )
    parser.add_argument("--length", type=int, metavar="N",
                        help="tokens per window (default: the calibration's, or 512 with --input)")
    parser.add_argument("--windows", type=int, metavar="N",
                        help="number of windows to run, the first ones (default: the "
                        "calibration's, or 1 with --input)")
    parser.add_argument("--decode-steps", type=int, metavar="N",
                        help="for a model with a KV cache: run the last N tokens of each window one "
                        f"at a time on the cache (default: {DECODE_STEPS}, or fewer in a short window)")
    return parser


DECODE_STEPS = 4


def _decode_steps(args: argparse.Namespace, names: feeds.DecoderInputs) -> int:
    if args.decode_steps is None:
        return min(DECODE_STEPS, args.length - 1) if names.cache else 0
    if args.decode_steps and not names.cache:
        raise KirinError(f"--decode-steps {args.decode_steps}: '{args.model}' has no KV cache to step on")
    if not 0 <= args.decode_steps < args.length:
        raise KirinError(f"--decode-steps {args.decode_steps}: give 0 to {args.length - 1} (fewer "
                         f"than the {args.length} tokens of a window)")
    return args.decode_steps


def _recorded_calibration(model: ir.Model, path: str) -> dict:
    """The calibration inputs the model at ``path`` records (as ``kirinc --calib`` writes them):
    ``file``, ``tokenizer``, ``length``, ``windows`` and ``sha256``. A relative file name is
    looked up in the current folder, then beside the model."""
    recorded = model.metadata_props.get(calibration.KEY_CALIBRATION)
    try:
        provenance = json.loads(recorded or "")
        source = json.loads(provenance["source"])
        source = {**source, "sha256": provenance["sha256"]}
        source["file"], source["length"], source["windows"]  # noqa: B018 (present, or KeyError)
    except (ValueError, KeyError, TypeError):
        raise KirinError(
            f"'{path}' records no calibration file kirinc can read back: give --input FILE"
        ) from None
    for candidate in (pathlib.Path(source["file"]), pathlib.Path(path).parent / source["file"]):
        if candidate.is_file():
            return {**source, "file": str(candidate)}
    raise KirinError(
        f"the calibration file '{source['file']}' that '{path}' was compiled with is gone: "
        "give --input FILE"
    )
