"""energy-annotate: counts measured in the snn mode, checked against the codes; time steps."""

from __future__ import annotations

import json

import numpy as np
import pytest
from kirin_models import calibrated, compiled, mlp

from kirin_compiler import accounting, calibration, compile_model, load_model
from kirin_compiler.backends import torch_backend
from kirin_compiler.execution import Probe
from kirin_compiler.errors import KirinError

from conftest import TINY_LLAMA

KIRIN = "canonicalize,quantize,outlier-detect,spike-matrix-hybridize,threshold-insert"


class _Codes(Probe):
    records_integers = True

    def __init__(self):
        self.codes = {}

    def integers(self, node, kind, values):
        self.codes[(node, kind)] = values


def test_counts_follow_from_the_codes_the_network_sends():
    model = compiled(KIRIN + ",energy-annotate")
    ops = {n.name: json.loads(n.metadata_props["kirin.ops"]) for n in model.graph if "kirin.ops" in n.metadata_props}
    probe = _Codes()
    feeds = calibration.attached(model).feeds[0]
    torch_backend.run(torch_backend.lower(model, "qann", probe), model, feeds)
    codes = probe.codes[("fc1.in0", "codes")]
    spikes = int((codes != 0).sum())
    assert ops["fc1.in0"]["spikes"] == spikes  # one spike per non-zero code
    assert ops["fc1.in0"]["neurons"] == codes.numel()
    # a neuron compares until it fires (T - |q| steps), a silent one in all T - 1 steps
    assert ops["fc1.in0"]["comparisons"] == int(np.where(codes != 0, 8 - codes.abs(), 7).sum())
    assert ops["fc1.spike"]["accumulates"] == spikes * 16  # fan-out of fc1
    outliers = probe.codes[("fc1.in0", "outlier-codes")]
    assert ops["fc1.int"]["int_macs"] == int((outliers != 0).sum()) * 16
    assert ops["fc1.spike"]["membrane_updates"] > 0 and ops["fc1.neuron"]["spikes"] > 0


def test_time_steps_per_layer_and_against_8_bit_single_spikes():
    model = compiled(KIRIN + ",energy-annotate")
    steps = json.loads(model.metadata_props["kirin.timesteps"])
    assert steps["total"] == 8 + 16  # the fc1 encoder, then the fused neurons (unsigned)
    assert steps["baseline_8bit_total"] == 128 + 256
    assert steps["reduction"] == 0.9375
    workload = json.loads(model.metadata_props["kirin.workload"])
    assert workload == {"mode": "qann", "runs": 1, "tokens": 10}


def test_a_decoder_layer_takes_56_steps_instead_of_896():
    ids = {"input_ids": np.load(TINY_LLAMA.with_name("tiny_llama_ids.npy"))}
    model = load_model(TINY_LLAMA)
    calibration.attach(model, calibration.Calibration([ids], "test", progress=False))
    compile_model(model, KIRIN)
    steps = accounting.timesteps(model.graph)
    # encoders in sequence: q/k/v input 8, Q (and K^T) 8, P 16, o input 8, gate/up 8, down 8
    assert steps.per_layer == {"0": 56, "1": 56}
    assert steps.baseline_per_layer == {"0": 896, "1": 896}
    assert steps.total == 112 and steps.reduction == 0.9375


def test_float_work_of_the_other_nodes_is_counted():
    model = calibrated(load_model(TINY_LLAMA), feeds=[{"input_ids": np.arange(10)[None] % 256}])
    compile_model(model, KIRIN + ",energy-annotate")
    ops = {n.op_type: json.loads(n.metadata_props["kirin.ops"]) for n in model.graph if "kirin.ops" in n.metadata_props}
    assert ops["Softmax"]["float_ops"] == 4 * 1 * 4 * 10 * 10  # heads x queries x keys
    assert ops["MatMul"]["float_macs"] == 10 * 64 * 256  # lm_head stays float


def test_without_calibration_inputs():
    with pytest.raises(KirinError, match="needs calibration inputs"):
        compile_model(mlp(), "canonicalize,quantize,spike-matrix-hybridize,threshold-insert,energy-annotate")


@pytest.mark.parametrize("model_name", ["mlp", "llama"])
def test_counts_from_the_codes_equal_the_counts_measured_in_the_snn_mode(model_name):
    if model_name == "mlp":
        model = compiled(KIRIN)
    else:
        model = calibrated(load_model(TINY_LLAMA), feeds=[{"input_ids": np.load(TINY_LLAMA.with_name("tiny_llama_ids.npy"))}])
        compile_model(model, KIRIN)
    feeds = calibration.attached(model).feeds[:1]
    derived = accounting.count_operations(model, feeds, "qann")
    measured = accounting.count_operations(model, feeds, "snn")
    assert derived.keys() == measured.keys()
    for node, counts in measured.items():
        for key, value in counts.items():
            if key == "membrane_updates":
                assert value <= derived[node][key]  # the qann count is an upper bound
            else:
                assert derived[node][key] == value, (node, key)
