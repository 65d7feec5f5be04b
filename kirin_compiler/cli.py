"""``kirinc``: the command-line driver.

``main(argv) -> int`` is what the console script and ``python -m kirin_compiler`` call, and
what tests call in-process. Errors a user can cause print one line,
``kirinc: error: <what, where, what to do>``, and exit with status 2; no output file is left
behind.
"""

from __future__ import annotations

import argparse
import collections
import ctypes
import json
import pathlib
import sys
from typing import TYPE_CHECKING, Sequence

import onnx_ir as ir

from kirin_compiler import __version__, calibration, roles
from kirin_compiler.accounting import KEY_TIMESTEPS
from kirin_compiler.calibration import DEFAULT_CACHE
from kirin_compiler.compiler import DEFAULT_PIPELINE, compile_model
from kirin_compiler.errors import KirinError, PassFailedError
from kirin_compiler.format import (
    KEY_FORMAT_VERSION,
    atomic_path,
    KEY_PIPELINE,
    check_not_weights_in_use,
    check_writable,
    external_data_files,
    load_model,
    save_kirin,
    source_provenance,
)
from kirin_compiler.instruments import DumpDir, PrintChanged, PrintIR, TimePasses, format_table
from kirin_compiler.pass_manager import format_option, node_count
from kirin_compiler.printer import format_value_type
from kirin_compiler.registry import PassRegistry, type_name

if TYPE_CHECKING:
    import numpy as np


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

examples:
  kirinc model.onnx -o model.kirin --calib calib_ids.npy
  kirinc model.onnx -o model.kirin --calib wiki.txt --tokenizer tok/ --dump-dir dumps
  kirinc model.onnx -o model.onnx.canonical -p canonicalize
  kirinc model.onnx --load-pass my_passes.py:DropMulByOnePass -p "canonicalize,drop-mul-by-one"
  kirinc inspect model.kirin
  kirinc run model.kirin --input prompt.txt --tokenizer tok/ --mode snn
  kirinc verify model.kirin

The default pipeline:
  {_wrapped(DEFAULT_PIPELINE)}
Its outlier-detect and energy-annotate passes run the model on the --calib inputs. Exit status:
0 on success, 2 on bad input or options, 1 when a pass fails or verify finds a mismatch.
"""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _return_freed_memory()
    try:
        if argv and argv[0] == "inspect":
            return _inspect(_inspect_parser().parse_args(argv[1:]))
        if argv and argv[0] == "run":
            return _run(_run_parser().parse_args(argv[1:]))
        if argv and argv[0] == "verify":
            return _verify(_verify_parser().parse_args(argv[1:]))
        if argv and argv[0] == "compile":
            argv = argv[1:]
        return _compile(_compile_parser().parse_args(argv))
    except PassFailedError as error:
        print(f"kirinc: error: {error}", file=sys.stderr)
        return 1
    except KirinError as error:
        print(f"kirinc: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (kirinc ... | head): not an error of ours
        sys.stderr.close()
        return 0


def _return_freed_memory() -> None:
    """Makes glibc's malloc serve large blocks (4 MiB and up) from their own memory maps and
    trim freed memory past 4 MiB, so that activations freed after each forward go back to the
    system instead of fragmenting the heap (glibc otherwise raises its threshold as blocks are
    freed): compiling SmolLM2 peaked at 1.23 GB instead of 1.69 GB, for about 10% more time.
    Without glibc nothing changes."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 4 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 4 << 20)
    except (OSError, AttributeError):
        pass


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters


def _compile_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kirinc",
        description="Compile an LLM into an integer/spike hybrid spiking neural network.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", nargs="?", metavar="MODEL", help="ONNX or .kirin file to compile")
    parser.add_argument("-o", "--output", metavar="OUT", help="write the compiled .kirin file here")
    parser.add_argument(
        "-p", "--passes", default=DEFAULT_PIPELINE, metavar="PIPELINE",
        help='passes to run, in order: "name,name{option=value,...}" (default: %(default)s)',
    )
    parser.add_argument(
        "--load-pass", action="append", default=[], metavar="MODULE:CLASS",
        help="register a custom pass from 'package.module:Class' or 'path/to/file.py:Class' "
        "(repeatable)",
    )
    _add_calibration_arguments(parser)
    parser.add_argument(
        "--calib-cache", metavar="DIR", default=str(DEFAULT_CACHE),
        help="cache calibration statistics here, so reruns skip calibration (default: %(default)s)",
    )
    parser.add_argument(
        "--no-calib-cache", action="store_true", help="neither read nor write cached statistics"
    )
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


def _compile(args: argparse.Namespace) -> int:
    registry = PassRegistry.default()
    for spec in args.load_pass:
        registry.load(spec)
    if args.list_passes:
        print(_passes_table(registry), end="")
        return 0
    if args.input is None:
        raise KirinError("no input model given; usage: kirinc MODEL -o OUT.kirin (see --help)")
    passes = registry.parse_pipeline(args.passes)
    names = [p.name for p in passes]
    for name in args.print_ir_after:
        registry[name]  # an unknown name fails here, with the list of known ones
        if name not in names:
            raise KirinError(
                f"--print-ir-after '{name}': the pipeline ({', '.join(names)}) does not run it"
            )
    if args.output is not None:
        check_writable(args.output)
        if pathlib.Path(args.output).resolve() == pathlib.Path(args.input).resolve():
            raise KirinError(f"output '{args.output}' is the input file; choose another name")
    instruments = _instruments(args)
    model = load_model(args.input)
    if args.output is not None:  # checked again when saving; here, before any work
        check_not_weights_in_use(model, [pathlib.Path(args.output)])
    calibrating = [p.name for p in passes if p.needs_calibration]
    if calibrating and args.calib is None:
        raise KirinError(
            f"the pipeline's {', '.join(calibrating)} run the model on calibration inputs: give "
            "--calib IDS.npy (token ids) or --calib TEXT --tokenizer DIR, or a pipeline without "
            "them (-p canonicalize)"
        )
    if args.calib is not None:
        cache = None if args.no_calib_cache else pathlib.Path(args.calib_cache).expanduser()
        feeds, source = _calibration_feeds(args, model)
        progress = sys.stderr.isatty()
        calibration.attach(model, calibration.Calibration(feeds, source, cache, progress))
    compile_model(model, passes, instruments=instruments, stop_after=args.stop_after)
    if args.output is None:
        print("kirinc: no -o given: nothing written", file=sys.stderr)
        return 0
    # A .kirin input keeps the provenance of the model it was first compiled from.
    is_kirin = KEY_FORMAT_VERSION in model.metadata_props
    source = None if is_kirin else source_provenance(args.input)
    written = save_kirin(model, args.output, source)
    print(
        f"kirinc: wrote {args.output} ({node_count(model)} nodes, {_sizes(written)}; "
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


def _add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--calib", metavar="FILE",
        help="calibration inputs: token ids as .npy ([batch, sequence]: one run per row, cut "
        "into windows) or a text file to tokenize with --tokenizer",
    )
    parser.add_argument("--tokenizer", metavar="DIR", help="folder with a tokenizer.json, for text")
    parser.add_argument(
        "--calib-length", type=int, default=512, metavar="N",
        help="tokens per calibration window (default: %(default)s)",
    )
    parser.add_argument(
        "--calib-windows", type=int, default=8, metavar="N",
        help="number of calibration windows, the first ones (default: %(default)s)",
    )


def _calibration_feeds(args: argparse.Namespace, model: ir.Model) -> tuple[list, str]:
    """The calibration windows of ``--calib`` as feeds, and their provenance."""
    if len(model.graph.inputs) != 1:
        raise KirinError("--calib feeds token ids to a model with one input; this model has "
                         f"{len(model.graph.inputs)}")
    for option in ("calib_length", "calib_windows"):
        if getattr(args, option) < 1:
            raise KirinError(f"--{option.replace('_', '-')} {getattr(args, option)}: use at least 1")
    tokenizer = _tokenizer(args.tokenizer) if args.tokenizer else None
    ids = _token_ids(pathlib.Path(args.calib), tokenizer)
    windows = calibration.windows(ids, args.calib_length, args.calib_windows)
    name = model.graph.inputs[0].name
    source = {"file": str(args.calib), "length": args.calib_length, "windows": args.calib_windows}
    if args.tokenizer:
        source["tokenizer"] = str(args.tokenizer)
    return [{name: w} for w in windows], json.dumps(source, sort_keys=True)


def _sizes(files: Sequence[pathlib.Path]) -> str:
    """``0.45 MB``, or ``0.25 MB + 651.31 MB in model.kirin.data`` for external weights."""
    first, *rest = files
    text = f"{first.stat().st_size / 1e6:.2f} MB"
    return text + "".join(f" + {f.stat().st_size / 1e6:.2f} MB in {f.name}" for f in rest)


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
    rows = [("pass", "options", "requires", "description")]
    for pass_class in registry:
        defaults = pass_class()
        options = ", ".join(
            f"{name}: {type_name(kind)} = {format_option(getattr(defaults, name))}"
            for name, kind in pass_class.option_types().items()
        )
        requires = ", ".join(pass_class.requires_passes)
        rows.append((pass_class.name, options or "-", requires or "-", pass_class.summary()))
    return format_table(rows)


def _inspect_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kirinc inspect",
        description="Summarize an ONNX or .kirin file: metadata, pipeline, ops, parameters.",
    )
    parser.add_argument("file", metavar="FILE", help="ONNX or .kirin file")
    return parser


def _inspect(args: argparse.Namespace) -> int:
    model = load_model(args.file)
    path = pathlib.Path(args.file)
    print(f"file            {path} ({_sizes([path, *external_data_files(model)])})")
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


def _run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kirinc run",
        description="Run a model on the torch backend and print (or save) its outputs.",
        epilog="examples:\n  kirinc run model.kirin --input ids.npy\n"
        "  kirinc run model.kirin --input prompt.txt --tokenizer tokenizer/ --save logits.npy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help="ONNX or .kirin file")
    parser.add_argument(
        "--input", required=True, metavar="FILE",
        help="token ids as .npy (shape [sequence] or [batch, sequence]), or a text file to "
        "tokenize with --tokenizer",
    )
    parser.add_argument(
        "--tokenizer", metavar="DIR", help="folder with a tokenizer.json, for text input"
    )
    parser.add_argument(
        "--mode", choices=["float", "qann", "snn"], default="float",
        help="execution mode: float (activations unquantized), qann (the integer reference) or "
        "snn (time-stepped spikes) (default: %(default)s)",
    )
    parser.add_argument(
        "--save", metavar="OUT", help="save the outputs: .npy for the first output, .npz for all"
    )
    return parser


def _run(args: argparse.Namespace) -> int:
    from kirin_compiler.backends import torch_backend  # imports torch: only for this command

    tokenizer = _tokenizer(args.tokenizer) if args.tokenizer else None
    ids = _token_ids(pathlib.Path(args.input), tokenizer)
    if args.save:
        if pathlib.Path(args.save).suffix not in (".npy", ".npz"):
            raise KirinError(f"--save '{args.save}': use a .npy or .npz file name")
        check_writable(args.save)
    model = load_model(args.model)
    if len(model.graph.inputs) != 1:
        names = ", ".join(v.name for v in model.graph.inputs)
        raise KirinError(f"'{args.model}' takes {len(model.graph.inputs)} inputs ({names}); "
                         "kirinc run feeds one input of token ids")
    module = torch_backend.lower(model, args.mode)
    try:
        outputs = torch_backend.run(module, model, {model.graph.inputs[0].name: ids})
    except (RuntimeError, IndexError, ValueError) as error:  # e.g. a token id past the vocabulary
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise KirinError(
            f"'{args.model}' failed on the ids of '{args.input}' "
            f"(values {ids.min()}..{ids.max()}, shape {list(ids.shape)}): {reason}"
        ) from error
    print(f"input       {model.graph.inputs[0].name}: {list(ids.shape)} token ids")
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


def _tokenizer(folder: str):
    import tokenizers

    path = pathlib.Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise KirinError(f"--tokenizer '{folder}' has no tokenizer.json")
    return tokenizers.Tokenizer.from_file(str(path))


def _token_ids(path: pathlib.Path, tokenizer) -> "np.ndarray":
    import numpy as np

    if not path.is_file():
        raise KirinError(f"input file '{path}' does not exist")
    if path.suffix == ".npy":
        try:
            ids = np.load(path, allow_pickle=False)
        except ValueError as error:
            raise KirinError(f"'{path}' is not a readable .npy file: {error}") from None
        if ids.dtype.kind not in "iu" or ids.ndim not in (1, 2) or ids.size == 0:
            raise KirinError(
                f"'{path}' holds {ids.dtype}{list(ids.shape)}; token ids are integers of shape "
                "[sequence] or [batch, sequence]"
            )
        return ids.astype(np.int64).reshape((1, -1) if ids.ndim == 1 else ids.shape)
    if tokenizer is None:
        raise KirinError(f"'{path}' is text: give --tokenizer DIR to tokenize it, or token ids as .npy")
    ids = tokenizer.encode(path.read_text(), add_special_tokens=False).ids
    if not ids:
        raise KirinError(f"'{path}' tokenizes to no tokens")
    return np.asarray([ids], dtype=np.int64)


def _save_outputs(path: pathlib.Path, model: ir.Model, outputs: list) -> None:
    import numpy as np

    with atomic_path(path) as temporary:
        with open(temporary, "wb") as file:
            if path.suffix == ".npy":
                np.save(file, outputs[0])
            else:
                np.savez(file, **{v.name: a for v, a in zip(model.graph.outputs, outputs)})


def _verify_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kirinc verify",
        description="Run a compiled model in the qann mode (integer reference) and the snn mode\n"
        "(time-stepped spikes), compare every integer accumulator, code and output bit for\n"
        "bit, and print a per-layer table. Exits with status 1 on any mismatch.",
        epilog="examples:\n  kirinc verify model.kirin                  (its calibration inputs)\n"
        "  kirinc verify model.kirin --input ids.npy\n"
        "  kirinc verify model.kirin --input wiki.txt --tokenizer tok/ --windows 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help=".kirin file")
    parser.add_argument(
        "--input", metavar="FILE",
        help="token ids (.npy) or text (with --tokenizer); default: the calibration inputs the "
        "model was compiled with, if their file is still there and unchanged",
    )
    parser.add_argument("--tokenizer", metavar="DIR", help="folder with a tokenizer.json, for text")
    parser.add_argument("--length", type=int, metavar="N",
                        help="tokens per window (default: 512, or the calibration's)")
    parser.add_argument("--windows", type=int, metavar="N",
                        help="number of windows to run, the first ones (default: 1, or the "
                        "calibration's)")
    return parser


def _verify(args: argparse.Namespace) -> int:
    from kirin_compiler import equivalence

    model = load_model(args.model)
    equivalence.require_spiking(model)
    if len(model.graph.inputs) != 1:
        raise KirinError(f"'{args.model}' takes {len(model.graph.inputs)} inputs; verify feeds one "
                         "input of token ids")
    digest = None
    if args.input is None:  # the calibration inputs, as compiled, unless the user says otherwise
        recorded = _recorded_calibration(model, args.model)
        args.input, args.tokenizer = recorded["file"], args.tokenizer or recorded.get("tokenizer")
        if args.length is None and args.windows is None:
            args.length, args.windows, digest = recorded["length"], recorded["windows"], recorded["sha256"]
    args.length = 512 if args.length is None else args.length
    args.windows = 1 if args.windows is None else args.windows
    for option in ("length", "windows"):
        if getattr(args, option) < 1:
            raise KirinError(f"--{option} {getattr(args, option)}: use at least 1")
    tokenizer = _tokenizer(args.tokenizer) if args.tokenizer else None
    ids = _token_ids(pathlib.Path(args.input), tokenizer)
    name = model.graph.inputs[0].name
    feeds = [{name: w} for w in calibration.windows(ids, args.length, args.windows)]
    if digest is not None and calibration.Calibration(feeds, "").digest() != digest:
        raise KirinError(
            f"the calibration file '{args.input}' changed since '{args.model}' was compiled: "
            "give --input FILE"
        )
    print(f"kirinc: verifying {args.model} on {len(feeds)} window(s) of {args.input}", file=sys.stderr)
    report = equivalence.check(model, feeds, progress=sys.stderr.isatty())
    print(report.table())
    print(report.summary(), end="")
    return 0 if report.ok else 1


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
