"""``kirinc report MODEL.kirin``: the energy of a compiled network and of its baselines."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Sequence

from kirin_compiler.cli import _common
from kirin_compiler.energy import chart, presets, report
from kirin_compiler.errors import KirinError
from kirin_compiler.format import atomic_path, check_writable, load_model


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    preset = presets.load(args.preset)
    for path in args.chart:
        if pathlib.Path(path).suffix not in chart.FORMATS:
            raise KirinError(f"--chart {path}: give a file ending in {' or '.join(chart.FORMATS)}")
    for path in [*args.chart, *([args.json] if args.json else [])]:
        check_writable(path)
    model = load_model(args.model)
    document = report.build(model, preset, args.float_bits)
    print(report.tables(document))
    if args.json:
        with atomic_path(pathlib.Path(args.json)) as temporary:
            temporary.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n")
        print(f"kirinc: wrote {args.json}", file=sys.stderr)
    for path in map(pathlib.Path, args.chart):
        with atomic_path(path) as temporary:
            chart.draw(document, temporary, path.suffix[1:])
        print(f"kirinc: wrote {path}", file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    parser = _common.model_command(
        "kirinc report",
        "Price what a compiled network did (the counts of energy-annotate) with an energy\n"
        "preset, beside the same workload run as an FP16 network, a W8A8 integer network,\n"
        "the same W4A4&8 network as an integer network (dense, and skipping zero codes),\n"
        "an 8-bit single-spike TTFS network and an 8-bit rate-coded one: per op type, per\n"
        "layer and in total, compute only and with the memory term; time steps; NeuroBench's\n"
        "metrics.",
        [
            "kirinc report model.kirin",
            "kirinc report model.kirin --preset snn-convention --json energy.json --chart energy.png --chart energy.svg",
            "kirinc report model.kirin --preset my_45nm.toml",
        ],
        model_help=".kirin file compiled with energy-annotate (the default pipeline ends with it)",
    )
    parser.add_argument(
        "--preset", default=presets.DEFAULT, metavar="NAME|FILE",
        help=f"energy constants: {', '.join(presets.names())} (default: {presets.DEFAULT}), or a TOML file "
        "of your own (docs/energy.md has the format)",
    )
    parser.add_argument(
        "--float-bits", type=int, choices=(16, 32), default=16,
        help="width of the float work (rescales, non-spiking ops) in every network (default: 16)",
    )
    parser.add_argument("--json", metavar="OUT", help="also write everything as JSON")
    parser.add_argument(
        "--chart", metavar="OUT", action="append", default=[],
        help="also draw the comparison and the breakdown, as .png or .svg (repeatable)",
    )
    return parser
