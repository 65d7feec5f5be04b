"""The neuro backend: a compiled model as a program for an integer/spike hybrid core.

`write` emits a model's instruction listing (``docs/isa.md``) and its weights file; `load`
reads one back, checked; a `Program` runs it. As a backend (`kirin_compiler.execution`) it
runs the spiking network: `lower` emits a model's listing in memory and interprets it, and a
`ListingFile` runs a listing from disk on the model it was emitted from, so that ``kirinc
verify --listing`` checks it against the torch backend bit for bit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Mapping, Sequence

import numpy as np
import onnx_ir as ir

from kirin_compiler.backends.neuro.emit import emit
from kirin_compiler.backends.neuro.interpret import Program
from kirin_compiler.backends.neuro.listing import Listing, ListingError, format_listing, parse
from kirin_compiler.backends.neuro.weights import sha256
from kirin_compiler.errors import KirinError
from kirin_compiler.execution import Probe
from kirin_compiler.format import atomic_path, source_provenance
from kirin_compiler.metadata import KEY_SOURCE

__all__ = ["ListingError", "ListingFile", "Program", "Written", "emit", "format_listing", "load", "lower", "parse", "run", "write"]

WEIGHTS_SUFFIX = ".nlw"


def lower(model: ir.Model, mode: str = "snn", probe: Probe | None = None, outputs: Sequence[ir.Value] | None = None) -> Program:
    """``model``'s listing, emitted in memory, ready to run (the snn mode only: a listing is
    the spiking network)."""
    _check_mode(mode, outputs)
    listing, data = emit(model, "<memory>", "0" * 64, "<memory>")
    # read back from its text, as from a file: the checks' errors then have lines and columns
    return Program(parse(format_listing(listing), "<emitted listing>"), data, "<emitted listing>", probe)


def run(program: Program, model: ir.Model, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    return program.run(feeds)


def _check_mode(mode: str, outputs) -> None:
    if mode != "snn":
        raise KirinError(f"the neuro backend runs the spiking network: mode 'snn', not '{mode}'")
    if outputs is not None:
        raise KirinError("the neuro backend runs whole listings: it cannot stop at given values")


def weights_path(listing_path: str | os.PathLike) -> pathlib.Path:
    """Where the weights file of a listing written to ``listing_path`` goes: beside it."""
    path = pathlib.Path(listing_path)
    return path.with_name(path.stem + WEIGHTS_SUFFIX) if path.suffix else path.with_name(path.name + WEIGHTS_SUFFIX)


@dataclasses.dataclass(frozen=True)
class Written:
    listing: pathlib.Path
    weights: pathlib.Path
    instructions: int
    steps: str  # "224 time steps in 24 barriers"


def write(model: ir.Model, path: str | os.PathLike, model_file: str, model_sha256: str) -> Written:
    """Writes ``model``'s listing to ``path`` and its weights file beside it (`weights_path`),
    each atomically: a failure leaves neither half-written."""
    path = pathlib.Path(path)
    data_path = weights_path(path)
    listing, data = emit(model, model_file, model_sha256, data_path.name)
    text = format_listing(listing)
    with atomic_path(data_path) as temporary:
        temporary.write_bytes(data)
    with atomic_path(path) as temporary:
        temporary.write_text(text)
    return Written(path, data_path, len(listing.instructions), schedule_summary(listing))


def schedule_summary(listing: Listing) -> str:
    barriers = [i.operands[0] for i in listing.instructions if i.mnemonic == "barrier"]
    return f"{sum(barriers)} time steps in {len(barriers)} barriers"


def load(path: str | os.PathLike, probe: Probe | None = None) -> Program:
    """The listing at ``path`` and its weights file, checked (a `ListingError` names the line
    and column of what is wrong)."""
    path = pathlib.Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise KirinError(f"cannot read the listing '{path}': {getattr(error, 'strerror', None) or error}") from None
    listing = parse(text, str(path))
    return Program(listing, _weights(listing, path), str(path), probe)


def _weights(listing: Listing, path: pathlib.Path) -> bytes:
    directive = listing.directive("weights")
    if directive is None:
        raise ListingError(str(path), 1, 1, "the listing has no .weights line")
    file = path.parent / directive.fields["file"]
    try:
        return file.read_bytes()
    except OSError as error:
        where = directive.where()
        raise ListingError(str(path), where.line, where.column,
                           f"cannot read the weights file '{file}': {error.strerror or error}") from None


class ListingFile:
    """A listing on disk as a backend: `lower` checks that it is the model's and runs it."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = pathlib.Path(path)
        self.program = load(self.path)

    def lower(self, model: ir.Model, mode: str = "snn", probe: Probe | None = None, outputs=None) -> Program:
        _check_mode(mode, outputs)
        ours = [v.name for v in model.graph.inputs], [v.name for v in model.graph.outputs]
        theirs = self.program.inputs, self.program.outputs
        if ours != (list(theirs[0]), list(theirs[1])):
            raise KirinError(
                f"the listing '{self.path}' computes {', '.join(theirs[1])} from {', '.join(theirs[0])}, "
                f"the model {', '.join(ours[1])} from {', '.join(ours[0])}: it was emitted from another model"
            )
        return Program(self.program.listing, self.program.data, str(self.path), probe)

    def check_source(self, model: ir.Model, model_path: str | os.PathLike) -> None:
        """Refuses a listing emitted from neither the file at ``model_path`` nor the model it was
        compiled from (its ``.model`` line names the file and its SHA-256)."""
        emitted = self.program.listing.directive("model").fields
        source = json.loads(model.metadata_props.get(KEY_SOURCE, "{}") or "{}")
        if emitted["sha256"] not in (source_provenance(model_path)["sha256"], source.get("sha256")):
            raise KirinError(
                f"the listing '{self.path}' was emitted from {emitted['file']}, not from this model or "
                "its source: emit it from this model (kirinc MODEL --emit listing -o FILE)"
            )

    run = staticmethod(run)
