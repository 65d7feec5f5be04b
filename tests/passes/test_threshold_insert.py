"""threshold-insert: textual before/after, fused output neurons, encoders, and exactness."""

from __future__ import annotations

import numpy as np
from kirin_models import compiled, inputs, node_lines, run

from kirin_compiler import calibration, compile_model, load_model

from conftest import TINY_LLAMA

PIPELINE = "canonicalize,quantize,outlier-detect,spike-matrix-hybridize"

AFTER = [
    '%fc1.in0.q: i8[batch, sequence, 8], %fc1.in0.s: f32[*], %fc1.in0.qo: i8[batch, sequence, 8], %fc1.in0.so: f32[*] = ai.kirin::TTFSEncoder(%x) {axis=-1, bits=4, clip=0.95, outlier_count=1, outliers="token", scale="token", signed=1, window=8}',
    "%fc1.V: i32[*] = ai.kirin::SpikeMatMul(%fc1.in0.q, %fc1.wq, _, %fc1.wz) {group=0}  # role=fc1",
    "%fc1.U: i32[*] = ai.kirin::IntMatMul(%fc1.in0.qo, %fc1.wq, _, %fc1.wz) {group=0}  # role=fc1",
    '%fc2.in0.q: i8[*], %fc2.in0.s: f32[*], %fc2.in0.qo: i8[*], %fc2.in0.so: f32[*] = ai.kirin::TTFSNeuron(%fc1.V, %fc1.in0.s, %fc1.ws, %fc1.U, %fc1.in0.so, %c0, f32{4.126704}, %fc2.in0.mask, f32{0.52260596}) {bits=4, outliers="static", silent=1, window=16}  # role=fc1',
    "%fc2.V: i32[*] = ai.kirin::SpikeMatMul(%fc2.in0.q, %fc2.wq, _, i16[1, 8]{1, 1, -2, 3, 1, -2, 0, 1}) {group=0}  # role=fc2",
]


def test_before_and_after():
    before = node_lines(compiled(PIPELINE))
    assert any("Relu(" in line for line in before) and any("ActQuant(%x)" in line for line in before)
    after = node_lines(compiled(PIPELINE + ",threshold-insert"))
    assert after[:5] == AFTER
    assert not [line for line in after if "Relu(" in line or " Add(" in line]  # fused: bias and ReLU


def test_neurons_compute_the_same_bits_in_both_modes():
    feeds = inputs(4)
    before, after = compiled(PIPELINE), compiled(PIPELINE + ",threshold-insert")
    expected = run(before, "qann", feeds)[0]
    assert np.array_equal(expected, run(after, "qann", feeds)[0])
    assert np.array_equal(expected, run(after, "snn", feeds)[0])


def test_a_static_quantizer_not_after_a_relu_is_not_fused():
    lines = node_lines(compiled("canonicalize,quantize{relu_static=false},outlier-detect,"
                                "spike-matrix-hybridize,threshold-insert"))
    assert not [line for line in lines if "TTFSNeuron" in line]
    assert sum("TTFSEncoder" in line for line in lines) == 2


def test_on_a_decoder_left_operands_get_encoders_and_right_operands_stay_codes():
    ids = {"input_ids": np.load(TINY_LLAMA.with_name("tiny_llama_ids.npy"))}
    model = load_model(TINY_LLAMA)
    calibration.attach(model, calibration.Calibration([ids], "test", progress=False))
    compile_model(model, PIPELINE + ",threshold-insert")
    encoders = [n for n in model.graph if n.op_type == "TTFSEncoder"]
    # per layer: q/k/v input, Q, P, o input, gate/up input, down input
    assert len(encoders) == 2 * 6
    assert {n.attributes["window"].value for n in encoders} == {8, 16}
    codes = [n for n in model.graph if n.op_type == "ActQuant"]
    assert len(codes) == 2 * 2 and all(n.attributes["axis"].value == -2 for n in codes)  # K^T, V
    assert not [n for n in model.graph if n.op_type == "TTFSNeuron"]  # SiLU gating: no fusion


def test_silent_false_is_recorded_on_the_neurons():
    model = compiled(PIPELINE + ",threshold-insert{silent=false}")
    neuron = next(n for n in model.graph if n.op_type == "TTFSNeuron")
    assert neuron.attributes["silent"].value == 0
