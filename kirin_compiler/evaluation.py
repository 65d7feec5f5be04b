"""Perplexity: how well a model, compiled or not, predicts real text.

The protocol of ``../shared/EVALUATION.md``: the text's token ids are cut into non-overlapping
windows (`calibration.windows`), each scored on its own, with no context carried over. In a
window of ``L`` tokens the positions ``1..L-1`` are predicted from the ones before them; the
log-softmax is taken in float32 and the negative log-likelihoods are summed in float64;
perplexity is ``exp(total NLL / scored tokens)``.

`evaluate` runs a model in one or more execution modes on the same windows. Where both the
``qann`` and the ``snn`` mode run, it compares their logits bit for bit, window by window: the
spiking network must give exactly the integer network's outputs. The model runs on a
`kirin_compiler.execution.Backend` (the torch backend, from ``execution.backend()``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import onnx_ir as ir
import torch
import tqdm

from kirin_compiler import execution, feeds
from kirin_compiler.equivalence import bitwise_differences


@dataclasses.dataclass(frozen=True)
class Score:
    """A model's score in one mode: the windows and tokens scored, and their total NLL.
    ``differing``: for the snn mode beside the qann mode, the logits that are not bitwise
    equal to the qann mode's (0 when the spiking network is exact)."""

    mode: str
    windows: int
    tokens: int
    nll: float
    differing: int | None = None

    @property
    def perplexity(self) -> float:
        return math.exp(self.nll / self.tokens)


def negative_log_likelihood(logits: np.ndarray, ids: np.ndarray) -> tuple[float, int]:
    """The NLL (float64 sum) of ``ids[1:]`` under ``logits[:-1]`` (``[L, vocab]``, log-softmax
    in float32), and the number of tokens scored."""
    log_probs = torch.log_softmax(torch.from_numpy(logits[:-1]).float(), dim=-1)
    targets = torch.from_numpy(np.asarray(ids[1:], dtype=np.int64))
    picked = log_probs.gather(-1, targets[:, None])
    return -float(picked.double().sum()), len(targets)


def evaluate(
    model: ir.Model,
    windows: Sequence[np.ndarray],
    modes: Sequence[str],
    executor: execution.Backend,
    label: str = "",
    progress: bool = False,
) -> list[Score]:
    """Scores ``model`` in each of ``modes`` on every window (token ids ``[1, L]``, with the
    model's other inputs as `feeds.feed` gives them); one `Score` per mode, in the order given."""
    names = feeds.decoder_inputs(model)
    modules = {mode: executor.lower(model, mode) for mode in modes}
    nll = dict.fromkeys(modes, 0.0)
    tokens = differing = 0
    compare = "qann" in modes and "snn" in modes
    bar = tqdm.tqdm(windows, desc=f"eval {label}".strip(), unit="window", disable=not progress)
    for window in bar:
        logits, inputs = {}, names.feed(model, window)
        for mode in modes:
            logits[mode] = executor.run(modules[mode], model, inputs)[0][0]
            window_nll, count = negative_log_likelihood(logits[mode], window[0])
            nll[mode] += window_nll
        tokens += count  # the same in every mode
        if compare:
            differing += bitwise_differences(logits["qann"], logits["snn"])
    return [
        Score(mode, len(windows), tokens, nll[mode], differing if compare and mode == "snn" else None)
        for mode in modes
    ]

