"""How the core runs a model: the one small interface the backends implement, the probe they
report to, and the registry that finds them.

A backend (`Backend`) lowers a model once per execution mode and runs the result on numpy
inputs. The core never imports one: calibration, operation counting, verification and
evaluation call `backend`, which finds the installed backends through the
``kirin_compiler.backends`` entry-point group (``pyproject.toml`` registers the two that ship:
``torch``, the reference executor, and ``neuro``, the instruction-listing interpreter).

While a model runs, the Kirin ops report to a `Probe`: what they computed (integer
accumulators and codes, by node name) and what they did (spikes, accumulates, membrane updates,
threshold comparisons, MACs). Every backend reports the same integers under the same names, so
one backend's run can be checked against another's (`kirinc verify`).
"""

from __future__ import annotations

import importlib.metadata
from typing import Any, Literal, Mapping, Protocol, Sequence

import numpy as np
import onnx_ir as ir
import torch

from kirin_compiler import arithmetic
from kirin_compiler.errors import KirinError

ENTRY_POINT_GROUP = "kirin_compiler.backends"
DEFAULT_BACKEND = "torch"

Mode = Literal["float", "qann", "snn"]
MODES: tuple[Mode, ...] = ("float", "qann", "snn")


class Probe:
    """Receives what the Kirin ops compute and do while a model runs; ignores it all.

    A subclass sets ``records_integers``, ``counts_operations`` and ``counts_float_ops`` to
    receive those reports: the backends skip the work of making reports nobody reads."""

    records_integers = False
    counts_operations = False
    counts_float_ops = False  # the standard nodes' float work too (the torch backend then runs node by node)

    def observe(self, node: str, x: torch.Tensor, axis: int) -> None:
        """An activation quantizer's float input (``float`` mode only)."""

    def integers(self, node: str, kind: str, values: torch.Tensor) -> None:
        """An integer result: ``accumulator`` (V or U), ``codes`` or ``outlier-codes``."""

    def count(self, node: str, **counts: int) -> None:
        """Operation counts of one run of a node (added up by the probe)."""


class Backend(Protocol):
    """What runs a model: `lower` once per mode, then `run` on each input."""

    def lower(
        self, model: ir.Model, mode: Mode = "float", probe: Probe | None = None,
        outputs: Sequence[ir.Value] | None = None,
    ) -> Any:
        """``model`` prepared to run in ``mode``, reporting to ``probe``; with ``outputs``, only
        what those values need runs and they are the results."""

    def run(self, program: Any, model: ir.Model, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs of a lowered ``program`` on inputs given by name, in order."""


def backend(name: str = DEFAULT_BACKEND) -> Any:
    """The installed backend called ``name`` (a module or object implementing `Backend`)."""
    found = {point.name: point for point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise KirinError(
            f"no backend '{name}' is installed (installed: {known}); reinstall kirin_compiler "
            "(pip install -e .) to register the ones it ships"
        )
    return found[name].load()


def report_spikes(probe: Probe, node: str, train: torch.Tensor, comparisons: int) -> None:
    """What a layer of TTFS neurons did in one window, and the codes its spike ``train``
    carries (decoded from the train, for comparison with the integer network: decoding is not
    part of the network). ``magnitude`` is the sum of the codes' magnitudes, times their gains:
    the spikes a rate code of the same values would send."""
    if not (probe.records_integers or probe.counts_operations):
        return
    codes = arithmetic.spike_codes(train)
    if probe.records_integers:
        probe.integers(node, "codes", codes)
    if probe.counts_operations:
        probe.count(
            node, spikes=int(torch.count_nonzero(train)), comparisons=comparisons,
            neurons=train[0].numel(), magnitude=int(codes.abs().sum()),
        )


def report_outliers(probe: Probe, node: str, values: torch.Tensor) -> None:
    """The 8-bit outlier codes a quantizer sent: how many are not zero, and their magnitudes."""
    probe.count(node, outliers=int(values.count_nonzero()), outlier_magnitude=int(values.abs().sum()))
