"""The built-in passes, one per module; `BUILTIN_PASSES` lists them in pipeline order."""

from kirin_compiler.passes.canonicalize import CanonicalizePass
from kirin_compiler.passes.energy_annotate import EnergyAnnotatePass
from kirin_compiler.passes.outlier_detect import OutlierDetectPass
from kirin_compiler.passes.quantize import QuantizePass
from kirin_compiler.passes.spike_matrix_hybridize import SpikeMatrixHybridizePass
from kirin_compiler.passes.threshold_insert import ThresholdInsertPass

BUILTIN_PASSES = (
    CanonicalizePass,
    QuantizePass,
    OutlierDetectPass,
    SpikeMatrixHybridizePass,
    ThresholdInsertPass,
    EnergyAnnotatePass,
)

__all__ = [
    "BUILTIN_PASSES",
    "CanonicalizePass",
    "EnergyAnnotatePass",
    "OutlierDetectPass",
    "QuantizePass",
    "SpikeMatrixHybridizePass",
    "ThresholdInsertPass",
]
