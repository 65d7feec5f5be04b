"""`compile_model`: run a pipeline on a model and record what ran."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import onnx_ir as ir

from kirin_compiler.format import KEY_PIPELINE
from kirin_compiler.pass_manager import Instrument, Pass, PassManager, PassRecord
from kirin_compiler.registry import PassRegistry, split_pipeline

if TYPE_CHECKING:
    from kirin_compiler.calibration import Calibration

DEFAULT_PIPELINE = (
    "canonicalize,quantize,outlier-detect,spike-matrix-hybridize,threshold-insert,energy-annotate"
)


def compile_model(
    model: ir.Model,
    pipeline: str | Sequence[Pass] = DEFAULT_PIPELINE,
    *,
    registry: PassRegistry | None = None,
    instruments: Sequence[Instrument] = (),
    stop_after: str | None = None,
    calibration: "Calibration | None" = None,
) -> list[PassRecord]:
    """Runs ``pipeline`` on ``model`` in place and appends it to the model's
    ``kirin.pipeline`` metadata (a ``.kirin`` input keeps the record of earlier runs).

    ``pipeline`` is pipeline text (``"canonicalize,my-pass{alpha=0.5}"``, parsed with
    ``registry``, the built-in and installed passes by default) or pass instances.
    ``calibration`` gives the inputs the calibrating passes (``outlier-detect``,
    ``energy-annotate``) run the model on.
    """
    if calibration is not None:
        from kirin_compiler.calibration import attach  # imports torch: only when calibrating

        attach(model, calibration)
    if isinstance(pipeline, str):
        passes = (registry or PassRegistry.default()).parse_pipeline(pipeline)
    else:
        passes = list(pipeline)
    earlier = model.metadata_props.get(KEY_PIPELINE, "")
    manager = PassManager(passes, instruments, stop_after=stop_after)
    records = manager.run(model, already_run=[name for name, _ in split_pipeline(earlier)])
    model.metadata_props[KEY_PIPELINE] = ",".join(
        filter(None, [earlier, *(record.spec for record in records)])
    )
    return records
