"""``energy-annotate``: operation counts per node and time steps, measured and stored in the IR.

Runs the compiled network on the first ``runs`` calibration inputs, in the qann mode (counts
derived from the codes, which are the spikes) or, with ``mode=snn``, time-stepped (counts
measured step by step; slower), and stores (`kirin_compiler.accounting` defines every count):

1. on every node that did work, ``kirin.ops``: a JSON object of its counts (spikes, neurons,
   comparisons, accumulates, membrane updates, integer MACs, float operations and MACs);
2. on the model, ``kirin.timesteps``: the longest chain of TTFS windows per decoder layer and in
   total, beside 8-bit single-spike coding and the reduction; and ``kirin.workload``: the runs
   and tokens the counts are for.

The counts carry no prices: pricing them with named energy constants is a separate step, not
part of this pass.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Literal

import onnx_ir as ir

from kirin_compiler import accounting, calibration
from kirin_compiler.errors import KirinError
from kirin_compiler.metadata import KEY_WORKLOAD
from kirin_compiler.pass_manager import Pass


@dataclasses.dataclass(frozen=True)
class EnergyAnnotatePass(Pass):
    """Per-node operation counts (spikes x fan-out accumulates, membrane updates, integer MACs,
    threshold comparisons, float ops) of a calibration run, and time steps."""

    name = "energy-annotate"
    requires_passes = ("threshold-insert",)
    needs_calibration = True

    runs: int = 1
    mode: Literal["qann", "snn"] = "qann"

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if self.runs < 1:
            raise KirinError(f"option runs={self.runs}: use at least 1")
        feeds = list(calibration.attached(model).feeds[: self.runs])
        counts = accounting.count_operations(model, feeds, self.mode)
        for node in model.graph:
            if node.name in counts:
                node.metadata_props[accounting.KEY_OPS] = json.dumps(counts[node.name], sort_keys=True)
        model.metadata_props[accounting.KEY_TIMESTEPS] = accounting.timesteps(model.graph).to_json()
        tokens = sum(calibration.tokens(feed) for feed in feeds)
        workload = {"runs": len(feeds), "tokens": tokens, "mode": self.mode}
        model.metadata_props[KEY_WORKLOAD] = json.dumps(workload, sort_keys=True)
        return ir.passes.PassResult(model, True)
