"""``kirinc run MODEL --input FILE``: run a model on the torch backend and print its outputs."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Sequence

import numpy as np
import onnx_ir as ir

from kirin_compiler import execution, feeds
from kirin_compiler.cli import _common
from kirin_compiler.errors import KirinError
from kirin_compiler.format import atomic_path, check_writable


def main(argv: Sequence[str]) -> int:
    args = parser().parse_args(argv)
    tokenizer = _common.load_tokenizer(args.tokenizer)
    by_name = pathlib.Path(args.input).suffix == ".npz"  # every input, by name
    if by_name:
        given = _common.named_inputs(pathlib.Path(args.input))
    else:
        ids = _common.token_ids(pathlib.Path(args.input), tokenizer)
    if args.save:
        if pathlib.Path(args.save).suffix not in (".npy", ".npz"):
            raise KirinError(f"--save '{args.save}': use a .npy or .npz file name")
        check_writable(args.save)
    model = _common.load_runnable(args.model)
    if by_name:
        inputs = feeds.named(model, given, args.input)
        shown = {name: f"{array.dtype}, as given" for name, array in inputs.items()}
        ids = inputs[model.graph.inputs[0].name]
    else:
        names = feeds.decoder_inputs(model, "kirinc run")
        inputs = names.feed(model, ids)
        _common.check_vocabulary(model, names, ids, args.input)
        shown = names.described()
    backend = execution.backend()
    module = backend.lower(model, args.mode)
    with _common.failing_on(args.model, args.input, ids):
        outputs = backend.run(module, model, inputs)
    for name, what in shown.items():
        print(f"input       {name}: {list(inputs[name].shape)} {what}")
    for value, array in zip(model.graph.outputs, outputs):
        print(
            f"output      {value.name}: {array.dtype}{list(array.shape)}  min {array.min():.4g}  "
            f"max {array.max():.4g}  mean {array.mean():.4g}"
        )
    logits = outputs[0]
    if logits.ndim == 3:
        predicted = logits[0, -1].argmax()
        text = f" {json.dumps(tokenizer.decode([int(predicted)]))}" if tokenizer else ""
        print(f"next token  {predicted}{text} (argmax at the last position of the first sequence)")
    if args.save:
        _save_outputs(pathlib.Path(args.save), model, outputs)
        print(f"kirinc: saved {args.save}", file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    parser = _common.model_command(
        "kirinc run", "Run a model on the torch backend and print (or save) its outputs.",
        ["kirinc run model.kirin --input ids.npy",
         "kirinc run model.kirin --input prompt.txt --tokenizer tokenizer/ --save logits.npy"],
    )
    parser.add_argument(
        "--input", required=True, metavar="FILE",
        help="token ids as .npy (shape [sequence] or [batch, sequence]), a text file to "
        "tokenize with --tokenizer, or every input of the model by name as .npz",
    )
    parser.add_argument(
        "--tokenizer", metavar="DIR", help="folder with a tokenizer.json, for text input"
    )
    _common.add_mode_argument(parser)
    parser.add_argument(
        "--save", metavar="OUT", help="save the outputs: .npy for the first output, .npz for all"
    )
    return parser


def _save_outputs(path: pathlib.Path, model: ir.Model, outputs: list) -> None:
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as file:
            if path.suffix == ".npy":
                np.save(file, outputs[0])
            else:
                np.savez(file, **{v.name: a for v, a in zip(model.graph.outputs, outputs)})
