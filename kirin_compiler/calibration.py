"""Calibration: the float model run on calibration inputs, reduced to per-channel statistics.

The compiler attaches the inputs to a model (`attach`, kept in ``model.meta``: a transient
analysis, never written to a file); passes that need statistics call `statistics`, which runs the
model in the torch backend's ``float`` mode (activation quantizers are identities, weights as
quantized) with a progress bar, and records, at the input of every ``ActQuant``, per channel of
its last axis: the maximum ``|x|`` and the mean ``x^2`` over the batch and token axes.

A pass may also ask for a search (`Search`): for a quantizer, the error of its codes under
each of several clipping ratios, measured on every `Search.stride`-th token of every run and
weighted per channel by how much the channel moves the products' outputs.

Statistics are cached on disk, keyed by a SHA-256 of the model (its printed IR and every
constant's bytes), of the inputs and of the searches, so a rerun with the same model and inputs
skips the runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import onnx_ir as ir
import torch
import tqdm

from kirin_compiler import arithmetic, execution
from kirin_compiler.execution import Probe
from kirin_compiler.errors import KirinError
from kirin_compiler.kirin_ops import ACT_QUANT, is_kirin
from kirin_compiler.metadata import KEY_CALIBRATION

_META_KEY = "kirin.calibration"
_CACHE_VERSION = 2
DEFAULT_CACHE = Path("~/.cache/kirin_compiler/calibration")


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Calibration inputs (one feed dictionary per run) and where statistics are cached."""

    feeds: Sequence[Mapping[str, np.ndarray]]
    source: str
    cache_dir: Path | None = None
    progress: bool = True

    def digest(self) -> str:
        h = hashlib.sha256()
        for feed in self.feeds:
            for name in sorted(feed):
                array = np.ascontiguousarray(feed[name])
                h.update(f"{name}:{array.dtype}:{array.shape}".encode())
                h.update(array.tobytes())
        return h.hexdigest()

    def provenance(self) -> str:
        """What the ``.kirin`` metadata records of the calibration."""
        count = sum(tokens(f) for f in self.feeds)
        return json.dumps(
            {"source": self.source, "runs": len(self.feeds), "tokens": count, "sha256": self.digest()},
            sort_keys=True,
        )


def tokens(feed: Mapping[str, np.ndarray]) -> int:
    """Batch times sequence of a feed's first input (token ids, or hidden states)."""
    return int(np.prod(next(iter(feed.values())).shape[:2]))


@dataclasses.dataclass
class ChannelStats:
    """Per-channel statistics of one quantizer's input: ``amax`` and ``mean_square`` have the
    input's shape with the batch axis and the token axis (-2) reduced to 1. ``errors``: the
    weighted squared error of the codes for each candidate of the quantizer's `Search`."""

    amax: np.ndarray
    mean_square: np.ndarray
    errors: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Search:
    """Measure a quantizer's error under each clipping ratio of ``clips``: the sum over the
    observed tokens of ``importance[k] * (x - dequantized x)^2`` (``importance``: one weight
    per channel of the last axis, or None for 1), with the codes of ``spec`` and
    `arithmetic.outlier_count` outliers per token."""

    spec: arithmetic.ActivationSpec
    fraction: float
    clips: tuple[float, ...]
    importance: np.ndarray | None = None
    stride: int = 4

    def digest(self) -> bytes:
        text = f"{tuple(self.spec)}|{self.fraction}|{self.clips}|{self.stride}|"
        weights = b"" if self.importance is None else np.ascontiguousarray(self.importance).tobytes()
        return text.encode() + hashlib.sha256(weights).digest()


def windows(ids: np.ndarray, length: int, count: int) -> list[np.ndarray]:
    """The first ``count`` windows ``[1, <=length]`` of token ids ``[batch, sequence]``: each
    row cut into non-overlapping windows of ``length`` tokens (a shorter row is one window; a
    row's shorter tail is dropped)."""
    result = []
    for row in ids:
        starts = range(0, max(len(row) - length, 0) + 1, length)
        result.extend(row[None, s : s + length] for s in starts)
        if len(result) >= count:
            break
    return result[:count]


def attach(model: ir.Model, calibration: Calibration) -> None:
    model.meta[_META_KEY] = calibration


def attached(model: ir.Model) -> Calibration:
    calibration = model.meta.get(_META_KEY)
    if calibration is None:  # the pass manager prefixes the pass's name
        raise KirinError(
            "needs calibration inputs: give --calib IDS.npy (token ids) or --calib "
            "TEXT --tokenizer DIR"
        )
    return calibration


def statistics(model: ir.Model, searches: Mapping[str, Search] | None = None) -> dict[str, ChannelStats]:
    """The statistics of every ``ActQuant`` input (and the errors of the ``searches``, by
    quantizer name), from the cache or from calibration runs."""
    calibration = attached(model)
    searches = dict(searches or {})
    cache = Path(calibration.cache_dir).expanduser() if calibration.cache_dir else None
    key = _cache_key(model, calibration, searches)
    path = cache / f"{key}.npz" if cache else None
    if path is not None and path.is_file():
        stats = _load(path, key, model, searches)
        if stats is not None:
            return stats  # else the entry is damaged: calibrate again, and replace it
    backend = execution.backend()
    probe = _StatsProbe(searches)
    quantizers = [n for n in model.graph if is_kirin(n, ACT_QUANT)]
    # the last quantizer's input as the output: nothing after it (the lm_head) runs
    module = backend.lower(model, "float", probe, outputs=quantizers[-1].inputs[:1])
    runs = tqdm.tqdm(calibration.feeds, desc="calibrate", unit="run", disable=not calibration.progress)
    for index, feed in enumerate(runs, start=1):
        try:
            backend.run(module, model, feed)
        except (RuntimeError, IndexError, ValueError) as error:  # e.g. ids past the vocabulary
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            shapes = ", ".join(f"{name} {list(np.shape(v))}" for name, v in feed.items())
            raise KirinError(
                f"calibration run {index} ({shapes}) failed: {reason}; the model does not run "
                "on its inputs (check its shapes, or the inputs it takes)"
            ) from error
    stats = probe.result()
    if path is not None:
        _save(path, key, stats)
    return stats


class _StatsProbe(Probe):
    def __init__(self, searches: dict[str, Search]) -> None:
        self.amax: dict[str, torch.Tensor] = {}
        self.sum_square: dict[str, torch.Tensor] = {}
        self.rows: dict[str, int] = {}
        self.searches = searches
        self.errors: dict[str, torch.Tensor] = {}

    def observe(self, node: str, x: torch.Tensor, axis: int) -> None:
        x = x.float()  # the statistics of a float16 or bfloat16 model's activations in float32
        if node in self.searches:
            errors = _clip_errors(x, self.searches[node])
            self.errors[node] = errors + self.errors[node] if node in self.errors else errors
        dims = sorted({0, x.dim() - 2})
        amax = x.abs().amax(dim=dims, keepdim=True)
        square = x.square().sum(dim=dims, keepdim=True).double()  # a run's sum in float32
        if node in self.amax:
            amax = torch.maximum(amax, self.amax[node])
            square = square + self.sum_square[node]
        self.amax[node] = amax
        self.sum_square[node] = square
        self.rows[node] = self.rows.get(node, 0) + x.shape[0] * x.shape[-2]

    def result(self) -> dict[str, ChannelStats]:
        return {
            node: ChannelStats(
                self.amax[node].numpy(),
                (self.sum_square[node] / self.rows[node]).float().numpy(),
                self.errors[node].numpy() if node in self.errors else None,
            )
            for node in sorted(self.amax)
        }


def _clip_errors(x: torch.Tensor, search: Search) -> torch.Tensor:
    """The weighted squared error of ``x``'s codes for each clip of ``search`` (float64)."""
    sample = x[..., :: search.stride, :]
    weights = None if search.importance is None else torch.from_numpy(search.importance)
    errors = []
    count = arithmetic.outlier_count(search.fraction, x.shape[-1]) if search.spec.outliers != "none" else 0
    spec = search.spec._replace(count=count)
    chosen = arithmetic.choose_outliers(sample, spec) if spec.outliers == "token" else None  # once
    for clip in search.clips:
        spec = spec._replace(clip=clip)
        split = arithmetic.split_activation(sample, spec, chosen=chosen)
        error = (sample - arithmetic.dequantize_activation(split, spec)).square_()
        if weights is not None:
            error = error.mul_(weights)
        errors.append(error.sum(dtype=torch.float64))
    return torch.stack(errors)


def _cache_key(model: ir.Model, calibration: Calibration, searches: dict[str, Search]) -> str:
    from kirin_compiler.printer import format_model

    h = hashlib.sha256(f"kirin-calibration {_CACHE_VERSION}\n".encode())
    h.update(format_model(model).encode())
    for name in sorted(model.graph.initializers):
        tensor = model.graph.initializers[name].const_value
        if tensor is not None:
            h.update(name.encode())
            h.update(tensor.tobytes())
    h.update(calibration.digest().encode())
    for node in sorted(searches):
        h.update(node.encode())
        h.update(searches[node].digest())
    return h.hexdigest()[:32]


def _save(path: Path, key: str, stats: dict[str, ChannelStats]) -> None:
    """Writes a cache entry with its checksum; a cache that cannot be written (a full disk, no
    permission) is left as it was: the statistics are used all the same."""
    arrays = {}
    for node, s in stats.items():
        arrays[f"{node}|amax"] = s.amax
        arrays[f"{node}|mean_square"] = s.mean_square
        if s.errors is not None:
            arrays[f"{node}|errors"] = s.errors
    arrays[_CHECKSUM] = np.frombuffer(_checksum(key, arrays), dtype=np.uint8)
    partial = path.with_suffix(".partial.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(partial, **arrays)
        partial.replace(path)
    except OSError:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)


def _load(path: Path, key: str, model: ir.Model, searches: Mapping[str, Search]) -> dict[str, ChannelStats] | None:
    """A cache entry's statistics, or None when it is not one this key wrote: unreadable (or
    pickled: never unpickled), another key's, altered after writing (its checksum), or not
    shaped as the model's quantizers need."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except Exception:  # zip, npy and I/O errors alike: a damaged entry
        return None
    checksum = arrays.pop(_CHECKSUM, None)
    if checksum is None or checksum.tobytes() != _checksum(key, arrays):
        return None
    nodes = sorted({name.split("|")[0] for name in arrays})
    quantizers = {n.name: n for n in model.graph if is_kirin(n, ACT_QUANT)}
    if not set(searches) <= set(nodes) <= set(quantizers):
        return None
    stats = {}
    for node in nodes:
        amax, mean_square = arrays.get(f"{node}|amax"), arrays.get(f"{node}|mean_square")
        errors = arrays.get(f"{node}|errors")
        rank = quantizers[node].inputs[0].shape.rank() if quantizers[node].inputs[0].shape else None
        if amax is None or mean_square is None or amax.shape != mean_square.shape or (
            rank is not None and amax.ndim != rank
        ):
            return None
        if (errors is None) != (node not in searches) or (
            errors is not None and errors.shape != (len(searches[node].clips),)
        ):
            return None
        stats[node] = ChannelStats(amax, mean_square, errors)
    return stats


_CHECKSUM = "__checksum__"


def _checksum(key: str, arrays: Mapping[str, np.ndarray]) -> bytes:
    h = hashlib.sha256(key.encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{array.dtype.str}:{array.shape}".encode())
        h.update(array.tobytes())
    return h.digest()
