"""The ``metadata_props`` keys kirin_compiler writes: on the model (``.kirin`` files, see
`format`) and on nodes. One place, so that the writers, the readers and the validator
(`validate`) agree on them."""

from __future__ import annotations

# on the model
KEY_FORMAT_VERSION = "kirin.format_version"  # the .kirin format version (format.FORMAT_VERSION)
KEY_PIPELINE = "kirin.pipeline"  # the passes that ran, in -p syntax
KEY_SOURCE = "kirin.source"  # JSON: provenance of the input
KEY_COMPILER = "kirin.compiler"  # "kirin_compiler <version>"
KEY_CALIBRATION = "kirin.calibration"  # JSON: the calibration inputs (outlier-detect)
KEY_TIMESTEPS = "kirin.timesteps"  # JSON: time steps per layer and in total (energy-annotate)
KEY_WORKLOAD = "kirin.workload"  # JSON: the runs the counts are of (energy-annotate)

# on nodes
KEY_OPS = "kirin.ops"  # JSON: a node's operation counts (energy-annotate)
KEY_ROLE = "kirin.role"  # the product's role (canonicalize): q, k, v, o, gate, up, down, ...
KEY_LAYER = "kirin.layer"  # its decoder layer, a number
KEY_SCOPE = "kirin.scope"  # the exporter's module scope

JSON_KEYS = (KEY_SOURCE, KEY_CALIBRATION, KEY_TIMESTEPS, KEY_WORKLOAD)
