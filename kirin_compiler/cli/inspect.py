"""``kirinc inspect FILE``: what an ONNX or ``.kirin`` file holds."""

from __future__ import annotations

import argparse
import collections
import json
import pathlib
from typing import Sequence

import onnx_ir as ir

from kirin_compiler import roles
from kirin_compiler.cli import _common
from kirin_compiler.format import external_data_files, load_model
from kirin_compiler.instruments import format_table
from kirin_compiler.printer import format_value_type


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    model = load_model(args.file)
    path = pathlib.Path(args.file)
    print(f"file            {path} ({_common.sizes([path, *external_data_files(model)])})")
    print(f"producer        {model.producer_name or '?'} {model.producer_version or ''}".rstrip())
    opsets = ", ".join(f"{d or 'ai.onnx'}={v}" for d, v in sorted(model.opset_imports.items()))
    print(f"opsets          {opsets}")
    for key, value in sorted(model.metadata_props.items()):
        if key.startswith("kirin.") and value.startswith("{"):
            value = ", ".join(f"{k}={v}" for k, v in json.loads(value).items())
        print(f"{key.removeprefix('kirin.'):<15} {value}")
    for kind, values in (("input", model.graph.inputs), ("output", model.graph.outputs)):
        for value in values:
            print(f"{kind:<15} {value.name}: {format_value_type(value)}")
    print()
    print(_parameters_table(model), end="")
    print()
    print(_ops_table(model), end="")
    return 0


def parser() -> argparse.ArgumentParser:
    parser = _common.ArgumentParser(
        prog="kirinc inspect",
        description="Summarize an ONNX or .kirin file: metadata, pipeline, ops, parameters.",
    )
    parser.add_argument("file", metavar="FILE", help="ONNX or .kirin file")
    return parser


def _parameters_table(model: ir.Model) -> str:
    by_dtype: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None:
            continue
        entry = by_dtype[str(tensor.dtype).removeprefix("DataType.").lower()]
        entry[0] += 1
        entry[1] += tensor.size
        entry[2] += tensor.nbytes
    rows = [("dtype", "tensors", "parameters", "MB")]
    for dtype, (count, size, nbytes) in sorted(by_dtype.items()):
        rows.append((dtype, str(count), f"{size:,}", f"{nbytes / 1e6:.2f}"))
    total = [sum(entry[i] for entry in by_dtype.values()) for i in range(3)]
    rows.append(("total", str(total[0]), f"{total[1]:,}", f"{total[2] / 1e6:.2f}"))
    return format_table(rows)


def _ops_table(model: ir.Model) -> str:
    counts: collections.Counter[str] = collections.Counter()
    role_counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for node in ir.traversal.RecursiveGraphIterator(model.graph):
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        counts[op] += 1
        if roles.role(node) is not None:
            role_counts[op][roles.role(node)] += 1
    rows = [("op", "count", "roles")]
    for op, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        described = ", ".join(f"{r} x{n}" for r, n in sorted(role_counts[op].items()))
        rows.append((op, str(count), described or "-"))
    return format_table(rows)
