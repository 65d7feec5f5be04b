"""``kirinc [compile] MODEL -o OUT.kirin``: run a pipeline of passes and write a ``.kirin`` file."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import textwrap
from typing import Sequence

from kirin_compiler import __version__, execution, files
from kirin_compiler.accounting import KEY_TIMESTEPS
from kirin_compiler.cli import _common
from kirin_compiler.compiler import DEFAULT_PIPELINE, compile_model
from kirin_compiler.errors import KirinError
from kirin_compiler.format import (
    KEY_FORMAT_VERSION,
    KEY_PIPELINE,
    check_not_weights_in_use,
    check_writable,
    load_model,
    save_kirin,
    source_provenance,
)
from kirin_compiler.instruments import DumpDir, PrintChanged, PrintIR, TimePasses
from kirin_compiler.pass_manager import format_option, node_count
from kirin_compiler.registry import PassRegistry, type_name


def _wrapped(pipeline: str) -> str:
    """A pipeline on lines of at most 80 columns, broken after its commas."""
    lines, line = [], ""
    for part in pipeline.split(","):
        if line and len(line) + len(part) + 1 > 76:
            lines.append(line + ",")
            line = part
        else:
            line = f"{line},{part}" if line else part
    return "\n  ".join([*lines, line])


_EPILOG = f"""\
commands:
  kirinc [compile] MODEL -o OUT.kirin   compile an ONNX (or .kirin) model (the default command)
  kirinc inspect FILE                   summarize an ONNX or .kirin file
  kirinc run MODEL --input FILE         run a model on the torch backend and print its outputs
  kirinc verify MODEL.kirin             prove that the spiking network equals the integer one
  kirinc eval MODEL --text FILE         measure perplexity: float, compiled, configurations
  kirinc generate MODEL --prompt TEXT   generate text greedily, in any mode

examples:
  kirinc model.onnx -o model.kirin --calib calib_ids.npy
  kirinc model.kirin --emit listing -o model.nl
  kirinc model.onnx -o model.kirin --calib wiki.txt --tokenizer tok/ --dump-dir dumps
  kirinc model.onnx -o model.onnx.canonical -p canonicalize
  kirinc model.onnx --load-pass my_passes.py:DropMulByOnePass -p "canonicalize,drop-mul-by-one"
  kirinc inspect model.kirin
  kirinc run model.kirin --input prompt.txt --tokenizer tok/ --mode snn
  kirinc verify model.kirin
  kirinc eval model.onnx --text wiki.txt --tokenizer tok/ -p default --calib calib.txt

The default pipeline:
  {_wrapped(DEFAULT_PIPELINE)}
Its outlier-detect and energy-annotate passes run the model on the --calib inputs. Exit status:
0 on success, 2 on bad input or options, 1 when a pass fails or verify finds a mismatch,
130 when interrupted.
"""


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    registry = PassRegistry.default()
    for spec in args.load_pass:
        registry.load(spec)
    if args.list_passes:
        print(_passes_table(registry), end="")
        return 0
    if args.input is None:
        raise KirinError("no input model given; usage: kirinc MODEL -o OUT.kirin (see --help)")
    listing = args.emit == "listing"
    if listing and args.output is None:
        raise KirinError("--emit listing needs -o OUT.nl: the listing and its weights file are written there")
    as_compiled = args.passes is None and listing and pathlib.Path(args.input).suffix == ".kirin"
    passes = [] if as_compiled else registry.parse_pipeline(DEFAULT_PIPELINE if args.passes is None else args.passes)
    names = [p.name for p in passes]
    for name in args.print_ir_after:
        registry[name]  # an unknown name fails here, with the list of known ones
        if name not in names:
            raise KirinError(
                f"--print-ir-after '{name}': the pipeline ({', '.join(names)}) does not run it"
            )
    outputs = [] if args.output is None else [pathlib.Path(args.output)]
    if listing:
        outputs.append(execution.backend("neuro").weights_path(args.output))
    for output in outputs:
        check_writable(output)
        if output.resolve() == pathlib.Path(args.input).resolve():
            raise KirinError(f"output '{output}' is the input file; choose another name")
    instruments = _instruments(args)
    model = load_model(args.input)
    if outputs:  # checked again when saving; here, before any work
        check_not_weights_in_use(model, outputs)
    calibrating = [p.name for p in passes if p.needs_calibration]
    if calibrating and args.calib is None:
        raise KirinError(
            f"the pipeline's {', '.join(calibrating)} run the model on calibration inputs: give "
            "--calib IDS.npy (token ids) or --calib TEXT --tokenizer DIR, or a pipeline without "
            "them (-p canonicalize)"
        )
    if args.calib is not None:
        _common.attach_calibration(args, model)
    for output in outputs:  # every input is read by now: none of them may be an output
        files.check_output(output)
    if passes:
        compile_model(model, passes, instruments=instruments, stop_after=args.stop_after)
    if args.output is None:
        print("kirinc: no -o given: nothing written", file=sys.stderr)
        return 0
    if listing:
        return _write_listing(model, args)
    # A .kirin input keeps the provenance of the model it was first compiled from.
    is_kirin = KEY_FORMAT_VERSION in model.metadata_props
    source = None if is_kirin else source_provenance(args.input)
    written = save_kirin(model, args.output, source)
    print(
        f"kirinc: wrote {args.output} ({node_count(model)} nodes, {_common.sizes(written)}; "
        f"pipeline {model.metadata_props[KEY_PIPELINE]})",
        file=sys.stderr,
    )
    if KEY_TIMESTEPS in model.metadata_props:
        steps = json.loads(model.metadata_props[KEY_TIMESTEPS])
        print(
            f"kirinc: {steps['total']} time steps ({steps['baseline_8bit_total']} with 8-bit "
            f"single spikes: {steps['reduction']:.2%} fewer)",
            file=sys.stderr,
        )
    return 0


def _write_listing(model, args: argparse.Namespace) -> int:
    """The model as an instruction listing and its weights file (the neuro backend)."""
    source = source_provenance(args.input)
    written = execution.backend("neuro").write(model, args.output, source["file"], source["sha256"])
    print(
        f"kirinc: wrote {written.listing} ({written.instructions:,} instructions; {written.steps}) and "
        f"{written.weights} ({_common.sizes([written.weights])})",
        file=sys.stderr,
    )
    return 0


def parser() -> argparse.ArgumentParser:
    parser = _common.ArgumentParser(
        prog="kirinc",
        description="Compile an LLM into an integer/spike hybrid spiking neural network.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", nargs="?", metavar="MODEL", help="ONNX or .kirin file to compile")
    parser.add_argument("-o", "--output", metavar="OUT", help="write the compiled .kirin file (or the listing) here")
    parser.add_argument(
        "--emit", choices=("kirin", "listing"), default="kirin",
        help="what -o writes: the .kirin model, or its instruction listing (docs/isa.md) and, beside "
        "it, its weights file OUT.nlw (default: %(default)s)",
    )
    parser.add_argument(
        "-p", "--passes", metavar="PIPELINE",
        help='passes to run, in order: "name,name{option=value,...}" (default: '
        f"{DEFAULT_PIPELINE}; none for a .kirin input with --emit listing)",
    )
    parser.add_argument(
        "--load-pass", action="append", default=[], metavar="MODULE:CLASS",
        help="register a custom pass from 'package.module:Class' or 'path/to/file.py:Class' "
        "(repeatable)",
    )
    _common.add_calibration_arguments(parser)
    parser.add_argument("--list-passes", action="store_true", help="list the known passes and exit")
    parser.add_argument("--print-ir-after-all", action="store_true", help="print the IR after every pass")
    parser.add_argument(
        "--print-ir-after", action="append", default=[], metavar="NAME",
        help="print the IR after each run of pass NAME (repeatable)",
    )
    parser.add_argument(
        "--print-changed", action="store_true",
        help="print a unified diff of the IR dump for every pass that changed it",
    )
    parser.add_argument(
        "--dump-dir", metavar="DIR",
        help="write numbered text and ONNX dumps (00_input, 01_<pass>, ...) and manifest.json",
    )
    parser.add_argument("--time-passes", action="store_true", help="print a table of time per pass")
    parser.add_argument("--stop-after", metavar="NAME", help="stop the pipeline after pass NAME")
    parser.add_argument("--version", action="version", version=f"kirinc {__version__}")
    return parser


def _instruments(args: argparse.Namespace) -> list:
    instruments: list = []
    if args.print_ir_after_all or args.print_ir_after:
        after = None if args.print_ir_after_all else args.print_ir_after
        instruments.append(PrintIR(sys.stdout, after))
    if args.print_changed:
        instruments.append(PrintChanged(sys.stdout))
    if args.dump_dir:
        instruments.append(DumpDir(args.dump_dir))
    if args.time_passes:
        instruments.append(TimePasses(sys.stdout))
    return instruments


def _passes_table(registry: PassRegistry) -> str:
    """Each pass: its name and prerequisites, its description, and its options with their
    types and defaults, wrapped at 80 columns."""
    lines = []
    for pass_class in registry:
        defaults = pass_class()
        options = [
            f"{name}: {type_name(kind)} = {format_option(getattr(defaults, name))}"
            for name, kind in pass_class.option_types().items()
        ]
        requires = ", ".join(pass_class.requires_passes) or "-"
        lines.append(f"{pass_class.name}  (requires: {requires})")
        lines += textwrap.wrap(pass_class.summary(), 80, initial_indent="  ", subsequent_indent="  ")
        line = "  options:"
        for index, option in enumerate(options or ["none"]):
            text = option + ("," if index < len(options) - 1 else "")
            if len(line) + 1 + len(text) > 80:
                lines.append(line)
                line = "   "
            line += " " + text
        lines.append(line)
    return "\n".join(lines) + "\n"