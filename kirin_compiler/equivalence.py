"""The proof by execution that the spiking network is the integer network: `kirinc verify`.

For every input, the model runs twice: in the qann mode (integer reference), recording every
integer it computes (codes, outlier codes, accumulators ``V`` and ``U``), then in the snn mode
(time-stepped spikes), whose integers are compared with the recorded ones as they are made, so
memory holds one run's integers at a time. The graph outputs are compared bit for bit. A model
with a KV cache is also checked on decode steps, one token a run on the cache of the run before. The
report counts, per decoder layer, the spikes, the silent neurons, the work, the integers
compared and the mismatches, and adds the time steps of `accounting.timesteps`.

The two runs are any two backends' (`kirin_compiler.execution`): by default the torch backend's
qann and snn modes; for an instruction listing, the torch backend's snn mode against the
listing's interpreter, which reports the same integers under the same node names.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Sequence

import numpy as np
import onnx_ir as ir
import torch
import tqdm

from kirin_compiler import accounting, execution, feeds, roles
from kirin_compiler.execution import Probe
from kirin_compiler.errors import KirinError
from kirin_compiler.instruments import format_table
from kirin_compiler.kirin_ops import SPIKE_MATMUL, SPIKING_SOURCES, is_kirin


@dataclasses.dataclass
class LayerCheck:
    """What one decoder layer did and how its integers compared, over all runs."""

    products: int = 0
    spikes: int = 0
    neurons: int = 0
    accumulates: int = 0
    int_macs: int = 0
    compared: int = 0
    mismatches: int = 0

    @property
    def silence(self) -> float:
        """The fraction of TTFS neurons that stayed silent (code 0: no spike, no energy)."""
        return 1.0 - self.spikes / self.neurons if self.neurons else 0.0


@dataclasses.dataclass
class Report:
    layers: dict[str, LayerCheck]
    mismatched_nodes: dict[str, int]  # in graph order
    outputs_compared: int
    output_mismatches: int
    timesteps: accounting.TimeSteps
    runs: int
    decode_steps: int = 0  # of the runs, those that were one token on a KV cache
    claim: str = "the snn mode equals the qann mode"  # what an OK run proves

    @property
    def ok(self) -> bool:
        return not self.mismatched_nodes and not self.output_mismatches

    @property
    def integer_mismatches(self) -> int:
        return sum(layer.mismatches for layer in self.layers.values())

    def table(self) -> str:
        steps, base = self.timesteps.per_layer, self.timesteps.baseline_per_layer
        rows = [["layer", "products", "spikes", "silent", "accumulates", "int MACs", "integers",
                 "mismatches", "steps", "8-bit steps"]]
        total = LayerCheck()
        for name, layer in self.layers.items():
            rows.append([
                name, str(layer.products), f"{layer.spikes:,}", f"{layer.silence:.1%}",
                f"{layer.accumulates:,}", f"{layer.int_macs:,}", f"{layer.compared:,}",
                f"{layer.mismatches:,}", str(steps.get(name, "-")), str(base.get(name, "-")),
            ])
            for field in dataclasses.fields(LayerCheck):
                setattr(total, field.name, getattr(total, field.name) + getattr(layer, field.name))
        rows.append([
            "total", str(total.products), f"{total.spikes:,}", f"{total.silence:.1%}",
            f"{total.accumulates:,}", f"{total.int_macs:,}", f"{total.compared:,}",
            f"{total.mismatches:,}", str(self.timesteps.total), str(self.timesteps.baseline_total),
        ])
        return format_table(rows)

    def summary(self) -> str:
        t = self.timesteps
        verdict = f"OK: {self.claim}" if self.ok else "MISMATCH"
        lines = [
            f"time steps: {t.total} in total, {t.baseline_total} with 8-bit single spikes "
            f"({t.reduction:.2%} fewer)",
            f"outputs: {self.outputs_compared:,} values compared bit for bit, "
            f"{self.output_mismatches:,} differ",
            f"integers: {sum(layer.compared for layer in self.layers.values()):,} compared, "
            f"{self.integer_mismatches:,} differ",
        ]
        if self.mismatched_nodes:
            first = list(self.mismatched_nodes.items())[:5]  # in graph order: where it starts
            more = len(self.mismatched_nodes) - len(first)
            lines.append(
                "mismatched nodes: " + ", ".join(f"{n} ({c:,})" for n, c in first)
                + (f" and {more} more" if more else "")
            )
        steps = f", {self.decode_steps} of them decode steps" if self.decode_steps else ""
        lines.append(f"{verdict} ({self.runs} run{'s' if self.runs != 1 else ''}{steps})")
        return "\n".join(lines) + "\n"


def check(
    model: ir.Model,
    windows: Sequence[np.ndarray],
    names: feeds.DecoderInputs,
    decode_steps: int = 0,
    progress: bool = True,
    candidate: execution.Backend | None = None,
    reference: str = "qann",
) -> Report:
    """Runs ``model`` on every window of token ids in the ``reference`` mode of the default
    backend and, as the candidate, in the snn mode of ``candidate`` (the default backend
    unless another is given: a listing's interpreter), and compares them.

    With ``decode_steps`` (a model with a KV cache), the last ``decode_steps`` tokens of each
    window are decode steps: one token a run, after a first run on the tokens before them. Both
    runs get the cache the reference returned, so every step is compared on the same input (the
    candidate's cache is compared as an output of the run before)."""
    require_spiking(model)
    default = execution.backend()
    candidate = candidate or default
    recorder, comparer = _Recorder(), _Comparer()
    expected_program = default.lower(model, reference, recorder)
    actual_program = candidate.lower(model, "snn", comparer)
    compared = mismatched = runs = 0
    bar = tqdm.tqdm(total=len(windows) * (1 + decode_steps), desc="verify", unit="run", disable=not progress)
    for window in windows:
        first = window.shape[1] - decode_steps
        cache = None
        for start, stop in [(0, first), *((t, t + 1) for t in range(first, window.shape[1]))]:
            feed = names.feed(model, window[:, start:stop], cache)
            expected = default.run(expected_program, model, feed)
            comparer.reference = recorder.take()
            actual = candidate.run(actual_program, model, feed)
            comparer.finish_run()
            for a, b in zip(expected, actual):
                compared += a.size
                mismatched += bitwise_differences(a, b)
            cache = names.next_cache(model, expected)
            runs += 1
            bar.update()
    bar.close()
    return Report(
        layers=_layers(model.graph, comparer),
        mismatched_nodes={
            n.name: comparer.mismatches[n.name] for n in model.graph if comparer.mismatches.get(n.name)
        },
        outputs_compared=compared,
        output_mismatches=mismatched,
        timesteps=accounting.timesteps(model.graph),
        runs=runs,
        decode_steps=len(windows) * decode_steps,
        claim=f"{'the listing' if candidate is not default else 'the snn mode'} equals the {reference} mode",
    )


def require_spiking(model: ir.Model) -> None:
    if not any(is_kirin(n, SPIKE_MATMUL) for n in model.graph):
        raise KirinError(
            "the model has no spiking products: compile it with the Kirin pipeline "
            "(quantize ... threshold-insert) first"
        )


def bitwise_differences(a: np.ndarray, b: np.ndarray) -> int:
    if a.shape != b.shape or a.dtype != b.dtype:
        return a.size
    bits = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    return int(np.count_nonzero(a.view(bits) != b.view(bits)))


class _Recorder(Probe):
    records_integers = True

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], torch.Tensor] = {}

    def integers(self, node: str, kind: str, values: torch.Tensor) -> None:
        self.values[(node, kind)] = values.clone()  # `Rescale` reuses its accumulators' memory

    def take(self) -> dict[tuple[str, str], torch.Tensor]:
        values, self.values = self.values, {}
        return values


class _Comparer(accounting.CountingProbe):
    """Compares the snn mode's integers with the qann mode's as they are computed."""

    records_integers = True

    def __init__(self) -> None:
        super().__init__()
        self.reference: dict[tuple[str, str], torch.Tensor] = {}
        self.compared: dict[str, int] = defaultdict(int)
        self.mismatches: dict[str, int] = defaultdict(int)

    def integers(self, node: str, kind: str, values: torch.Tensor) -> None:
        expected = self.reference.pop((node, kind), None)
        self.compared[node] += values.numel()
        if expected is None or expected.shape != values.shape:
            self.mismatches[node] += values.numel()
        else:
            self.mismatches[node] += int((expected != values).sum())

    def finish_run(self) -> None:
        for (node, _), missing in self.reference.items():  # computed by qann only
            self.compared[node] += missing.numel()
            self.mismatches[node] += missing.numel()
        self.reference = {}


def _layers(graph: ir.Graph, comparer: _Comparer) -> dict[str, LayerCheck]:
    layers: dict[str, LayerCheck] = defaultdict(LayerCheck)
    for node in graph:
        if node.name not in comparer.compared and node.name not in comparer.counts:
            continue
        layer = roles.layer(node)
        check_ = layers["-" if layer is None else str(layer)]
        counts = comparer.counts.get(node.name, {})
        if is_kirin(node, SPIKE_MATMUL):
            check_.products += 1
        if is_kirin(node, *SPIKING_SOURCES):
            check_.spikes += counts.get("spikes", 0)
            check_.neurons += counts.get("neurons", 0)
        check_.accumulates += counts.get("accumulates", 0)
        check_.int_macs += counts.get("int_macs", 0)
        check_.compared += comparer.compared.get(node.name, 0)
        check_.mismatches += comparer.mismatches.get(node.name, 0)
    return dict(sorted(layers.items(), key=lambda item: _layer_order(item[0])))


def _layer_order(name: str) -> tuple[int, int]:
    return (1, 0) if name == "-" else (0, int(name))
