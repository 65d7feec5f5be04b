"""What the ``kirinc`` commands share: the calibration arguments, reading token ids from
``.npy`` files or text, and file sizes."""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import sys
from typing import Sequence

import numpy as np
import onnx_ir as ir
import tokenizers

from kirin_compiler import calibration, contrib_ops, feeds, files
from kirin_compiler.errors import KirinError
from kirin_compiler.format import load_model


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with a bad argument reported as kirinc reports every bad input: one line
    (``kirinc: error: ...``, exit status 2), pointing to ``--help`` instead of printing the
    usage."""

    def error(self, message: str):
        raise KirinError(f"{message}; see {self.prog} --help")


def model_command(
    prog: str, description: str, examples: Sequence[str], model_help: str = "ONNX or .kirin file"
) -> ArgumentParser:
    """The parser of a command that reads a model: its MODEL argument and its examples."""
    parser = ArgumentParser(
        prog=prog, description=description,
        epilog="examples:\n" + "\n".join(f"  {example}" for example in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="MODEL", help=model_help)
    return parser


def add_mode_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--mode", choices=["float", "qann", "snn"], default="float",
        help="execution mode: float (activations unquantized), qann (the integer reference) or "
        "snn (time-stepped spikes) (default: %(default)s)",
    )


def add_calibration_arguments(parser: argparse.ArgumentParser) -> None:
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
    parser.add_argument(
        "--calib-cache", metavar="DIR", default=str(calibration.DEFAULT_CACHE),
        help="cache calibration statistics here, so reruns skip calibration (default: %(default)s)",
    )
    parser.add_argument(
        "--no-calib-cache", action="store_true", help="neither read nor write cached statistics"
    )


def calibration_feeds(args: argparse.Namespace, model: ir.Model) -> tuple[list, str]:
    """The calibration windows of ``--calib`` as feeds, and their provenance."""
    names = feeds.decoder_inputs(model, "--calib")  # inputs it can feed, before any work
    require_at_least(args, 1, "calib_length", "calib_windows")
    ids = token_ids(pathlib.Path(args.calib), load_tokenizer(args.tokenizer))
    check_vocabulary(model, names, ids, args.calib)
    windows = calibration.windows(ids, args.calib_length, args.calib_windows)
    # what ran: the longest window and how many (the same windows come out of them again)
    length = max(w.shape[-1] for w in windows)
    source = {"file": str(args.calib), "length": length, "windows": len(windows)}
    if args.tokenizer:
        source["tokenizer"] = str(args.tokenizer)
    return [names.feed(model, w) for w in windows], json.dumps(source, sort_keys=True)


def require_at_least(args: argparse.Namespace, least: int, *options: str) -> None:
    """Refuses an integer option (``--calib-length`` for ``calib_length``) below ``least``."""
    for option in options:
        if getattr(args, option) < least:
            raise KirinError(f"--{option.replace('_', '-')} {getattr(args, option)}: use at least {least}")


@contextlib.contextmanager
def failing_on(model: str, inputs: str, ids: np.ndarray):
    """Turns the error of a model run on the token ids of ``inputs`` (for example a token id
    past the vocabulary) into one line that names them."""
    try:
        yield
    except (RuntimeError, IndexError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise KirinError(
            f"'{model}' failed on the ids of '{inputs}' "
            f"(values {ids.min()}..{ids.max()}, shape {list(ids.shape)}): {reason}"
        ) from error


def check_vocabulary(model: ir.Model, names: feeds.DecoderInputs, ids: np.ndarray, source: str) -> None:
    """Refuses token ids past the model's vocabulary (the rows of the embedding tables that
    look its token ids up, `feeds.DecoderInputs.vocabulary`), naming the first one, before
    anything runs."""
    vocabulary = names.vocabulary(model)
    if vocabulary is not None and ids.max() >= vocabulary:
        place = [int(i) for i in np.argwhere(ids >= vocabulary)[0]]
        raise KirinError(
            f"'{source}' holds the token id {ids[tuple(place)]} (at "
            f"{place}), past the model's vocabulary of {vocabulary} tokens; use the model's tokenizer"
        )


def sizes(files: Sequence[pathlib.Path]) -> str:
    """``0.45 MB``, or ``0.25 MB + 651.31 MB in model.kirin.data`` for external weights."""
    first, *rest = files
    text = f"{first.stat().st_size / 1e6:.2f} MB"
    return text + "".join(f" + {f.stat().st_size / 1e6:.2f} MB in {f.name}" for f in rest)


def load_runnable(path: str) -> ir.Model:
    """The model at ``path``, canonicalized first if it holds onnxruntime contrib ops (fused
    normalizations, attention, 4-bit products) or an ``If`` (a merged decoder's), which the
    torch backend leaves to ``canonicalize``."""
    from kirin_compiler.compiler import compile_model

    model = load_model(path)
    if contrib_ops.holds_contrib_ops(model) or any(node.op_type == "If" for node in model.graph):
        compile_model(model, "canonicalize")
    return model


def load_tokenizer(folder: str | None) -> tokenizers.Tokenizer | None:
    """The tokenizer of ``--tokenizer DIR`` (its ``tokenizer.json``), or None."""
    if folder is None:
        return None
    path = pathlib.Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise KirinError(f"--tokenizer '{folder}' has no tokenizer.json")
    try:
        return tokenizers.Tokenizer.from_file(str(files.read(path, "the tokenizer")))
    except Exception as error:  # the tokenizers library raises a bare Exception on a bad file
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise KirinError(
            f"--tokenizer '{folder}': '{path}' is not a readable tokenizer: {reason}"
        ) from None


def token_ids(path: pathlib.Path, tokenizer: tokenizers.Tokenizer | None) -> np.ndarray:
    """Token ids ``[batch, sequence]`` from a ``.npy`` file, or from a text file tokenized
    without special tokens."""
    if path.is_dir():
        raise KirinError(f"'{path}' is a folder; give a file of token ids (.npy) or text")
    if not path.is_file():
        raise KirinError(f"input file '{path}' does not exist" if not path.exists() else
                         f"input '{path}' is not a regular file; give a file of token ids (.npy) or text")
    if path.suffix == ".npz":
        raise KirinError(f"'{path}' is an .npz archive: only kirinc run takes every input by name "
                         "(--input FILE.npz); give token ids as .npy, or text")
    files.read(path, "the token ids" if path.suffix == ".npy" else "the text")
    if path.suffix == ".npy":
        try:
            ids = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, OSError) as error:
            raise KirinError(f"'{path}' is not a readable .npy file: {error or 'empty'}") from None
        if not isinstance(ids, np.ndarray):  # an .npz archive under a .npy name
            ids.close()
            raise KirinError(
                f"'{path}' is an .npz archive, not an .npy array; save the ids with np.save"
            )
        if ids.dtype.kind not in "iu" or ids.ndim not in (1, 2) or ids.size == 0:
            raise KirinError(
                f"'{path}' holds {ids.dtype}{list(ids.shape)}; token ids are integers of shape "
                "[sequence] or [batch, sequence]"
            )
        if ids.min() < 0 or ids.max() > np.iinfo(np.int64).max:
            bad = ids.min() if ids.min() < 0 else ids.max()
            place = [int(i) for i in np.argwhere(ids == bad)[0]]
            raise KirinError(
                f"'{path}' holds the token id {bad} (at {place}); token ids run from 0 to the "
                "vocabulary size - 1"
            )
        return ids.astype(np.int64).reshape((1, -1) if ids.ndim == 1 else ids.shape)
    if tokenizer is None:
        raise KirinError(f"'{path}' is text: give --tokenizer DIR to tokenize it, or token ids as .npy")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise KirinError(
            f"'{path}' is not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset "
            f"{error.start}); give UTF-8 text, or token ids as .npy"
        ) from None
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    if not ids:
        raise KirinError(f"'{path}' tokenizes to no tokens")
    return np.asarray([ids], dtype=np.int64)


def named_inputs(path: pathlib.Path) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` file, by name (never unpickled)."""
    if not path.is_file():
        raise KirinError(f"input file '{path}' does not exist")
    files.read(path, "the inputs")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not hasattr(archive, "files"):
                raise ValueError("it holds one array, not arrays by name")
            return {name: archive[name] for name in archive.files}
    except (ValueError, EOFError, OSError) as error:
        raise KirinError(f"'{path}' is not a readable .npz file of inputs by name: {error}") from None


def calibration_of(args: argparse.Namespace, model: ir.Model) -> calibration.Calibration:
    """The ``--calib`` windows for ``model``'s calibrating passes, and where their statistics
    are cached."""
    cache = None if args.no_calib_cache else pathlib.Path(args.calib_cache).expanduser()
    if cache is not None and cache.exists() and not cache.is_dir():
        raise KirinError(f"--calib-cache '{args.calib_cache}' is a file, not a folder; give a folder "
                         "(made if missing), or --no-calib-cache")
    feeds, source = calibration_feeds(args, model)
    return calibration.Calibration(feeds, source, cache, sys.stderr.isatty())


def attach_calibration(args: argparse.Namespace, model: ir.Model) -> None:
    """Attaches the ``--calib`` windows to ``model`` for its calibrating passes."""
    calibration.attach(model, calibration_of(args, model))
