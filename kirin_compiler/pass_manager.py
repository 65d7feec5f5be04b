"""Passes, pipelines and the pass manager.

A pass is a frozen dataclass whose fields are its options, with a kebab-case ``name``; ``call``
rewrites the model in place and returns an honest ``modified`` flag (the `onnx_ir` pass
contract). The pass manager runs the passes in exactly the order given, after checking that each
pass's prerequisites ran earlier (it never reorders), verifies the IR after every pass, and
reports each step to its instruments (printing, dumping, timing: see `instruments`).

Pipelines are written as in xDSL and MLIR: ``canonicalize,quantize{group=128,symmetric=true}``.
"""

from __future__ import annotations

import dataclasses
import time
import typing
from typing import ClassVar, Protocol, Sequence

import onnx_ir as ir

from kirin_compiler.errors import KirinError, PassFailedError
from kirin_compiler.verify import VerificationError, verify_model


@dataclasses.dataclass(frozen=True)
class Pass(ir.passes.InPlacePass):
    """Base class of every kirin_compiler pass.

    Subclasses are ``@dataclasses.dataclass(frozen=True)`` classes that set ``name`` (kebab-case,
    used in ``-p``), optionally ``requires_passes`` (names that must run before), and implement
    ``call(model) -> ir.passes.PassResult``. Fields become options; their types (``int``,
    ``float``, ``bool``, ``str`` or a ``Literal`` of strings) are checked when parsed. A pass
    that runs the model on calibration inputs sets ``needs_calibration``; one that converts
    what it finds (its output is no longer its input) sets ``runs_once``, and the pass manager
    refuses to run it on a model it already ran on.
    """

    name: ClassVar[str]
    requires_passes: ClassVar[tuple[str, ...]] = ()
    needs_calibration: ClassVar[bool] = False
    runs_once: ClassVar[bool] = False  # a conversion: run again, it would find its own output

    def spec(self) -> str:
        """The pass with all its options, in pipeline syntax: ``quantize{group=128}``."""
        options = [f"{k}={format_option(v)}" for k, v in self.options().items()]
        return f"{self.name}{{{','.join(options)}}}" if options else self.name

    def options(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @classmethod
    def summary(cls) -> str:
        """The first paragraph of the pass's docstring, on one line."""
        return " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split())

    @classmethod
    def option_types(cls) -> dict[str, object]:
        hints = typing.get_type_hints(cls)
        return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def format_option(value: object) -> str:
    """An option value as written in a pipeline (``true``, ``0.5``, ``exact``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def node_count(model: ir.Model) -> int:
    return sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph))


@dataclasses.dataclass
class PassRecord:
    """What one pass did: the pass manager's report to instruments and the dump manifest."""

    index: int
    name: str
    spec: str
    options: dict[str, object]
    modified: bool
    nodes_before: int
    nodes_after: int
    seconds: float


class Instrument(Protocol):
    """Observes a pipeline run; the pass manager calls all three methods."""

    def run_started(self, model: ir.Model) -> None: ...

    def pass_finished(self, record: PassRecord, model: ir.Model) -> None: ...

    def run_finished(self, records: Sequence[PassRecord], model: ir.Model) -> None: ...


class PassManager:
    """Runs passes in the given order, verifying the IR after each."""

    def __init__(
        self,
        passes: Sequence[Pass],
        instruments: Sequence[Instrument] = (),
        stop_after: str | None = None,
    ) -> None:
        self.passes = list(passes)
        self.instruments = list(instruments)
        if stop_after is not None:
            names = [p.name for p in self.passes]
            if stop_after not in names:
                raise KirinError(
                    f"stop after '{stop_after}': no pass of the pipeline has that name "
                    f"({', '.join(names) or 'empty'})"
                )
            self.passes = self.passes[: names.index(stop_after) + 1]

    def check_prerequisites(self, already_run: Sequence[str] = ()) -> None:
        """Each pass's prerequisites ran before it; a pass that ``runs_once`` has not run yet
        (on a ``.kirin`` input, ``already_run`` is its record)."""
        done = set(already_run)
        for pass_ in self.passes:
            missing = [name for name in pass_.requires_passes if name not in done]
            if missing:
                raise KirinError(
                    f"pass '{pass_.name}' requires {', '.join(repr(m) for m in missing)} to run "
                    "before it: add it earlier in the pipeline"
                )
            if pass_.runs_once and pass_.name in done:
                where = "this model's kirin.pipeline records it" if pass_.name in already_run else \
                    "the pipeline runs it twice"
                raise KirinError(
                    f"pass '{pass_.name}' runs once ({where}): compile the ONNX file again "
                    "with the pipeline you want"
                )
            done.add(pass_.name)

    def run(self, model: ir.Model, already_run: Sequence[str] = ()) -> list[PassRecord]:
        """Runs the pipeline on ``model`` in place; ``already_run`` names passes a ``.kirin``
        input went through before."""
        self.check_prerequisites(already_run)
        for instrument in self.instruments:
            instrument.run_started(model)
        records: list[PassRecord] = []
        for index, pass_ in enumerate(self.passes, start=1):
            nodes_before = node_count(model)
            start = time.perf_counter()
            modified = self._run_one(pass_, model, [r.name for r in records])
            record = PassRecord(
                index=index,
                name=pass_.name,
                spec=pass_.spec(),
                options=pass_.options(),
                modified=modified,
                nodes_before=nodes_before,
                nodes_after=node_count(model),
                seconds=time.perf_counter() - start,
            )
            records.append(record)
            for instrument in self.instruments:
                instrument.pass_finished(record, model)
        for instrument in self.instruments:
            instrument.run_finished(records, model)
        return records

    @staticmethod
    def _run_one(pass_: Pass, model: ir.Model, ran_before: list[str]) -> bool:
        try:
            result = pass_(model)
        except PassFailedError:
            raise
        except KirinError as error:
            raise KirinError(f"{pass_.name}: {error}") from error
        except Exception as error:  # a bug in the pass: name it and what ran before
            raise PassFailedError(pass_.name, ran_before, f"{type(error).__name__}: {error}") from error
        try:
            verify_model(result.model)
        except (VerificationError, KirinError) as error:  # e.g. an op no backend knows
            raise PassFailedError(pass_.name, ran_before, f"the IR does not verify: {error}") from error
        return result.modified
