"""spike-matrix-hybridize: textual before/after, and the split changes no bit of the result."""

from __future__ import annotations

import numpy as np
from kirin_models import compiled, inputs, node_lines, run

from kirin_compiler import calibration, compile_model, load_model

from conftest import TINY_LLAMA

PIPELINE = "canonicalize,quantize,outlier-detect"

AFTER = [
    '%fc1.in0.q: i8[batch, sequence, 8], %fc1.in0.s: f32[*], %fc1.in0.qo: i8[batch, sequence, 8], %fc1.in0.so: f32[*] = ai.kirin::ActQuant(%x) {axis=-1, bits=4, clip=0.95, outlier_count=1, outliers="token", scale="token", signed=1}',
    "%fc1.V: i32[*] = ai.kirin::SpikeMatMul(%fc1.in0.q, %fc1.wq, _, %fc1.wz) {group=0}  # role=fc1",
    "%fc1.U: i32[*] = ai.kirin::IntMatMul(%fc1.in0.qo, %fc1.wq, _, %fc1.wz) {group=0}  # role=fc1",
    "%v0: ? = ai.kirin::Rescale(%fc1.V, %fc1.in0.s, %fc1.ws, %fc1.U, %fc1.in0.so)  # role=fc1",
    "%v1: ? = Add(%v0, %c0)",
]


def test_before_and_after():
    before = node_lines(compiled(PIPELINE))
    assert before[1].startswith("%v0: ? = ai.kirin::QMatMul(")
    assert node_lines(compiled(PIPELINE + ",spike-matrix-hybridize"))[:5] == AFTER


def test_without_outliers_there_is_no_integer_path():
    lines = node_lines(compiled("canonicalize,quantize,outlier-detect{mode=none},spike-matrix-hybridize"))
    assert not [line for line in lines if "IntMatMul" in line]
    assert "%v0: ? = ai.kirin::Rescale(%fc1.V, %fc1.in0.s, %fc1.ws)  # role=fc1" in lines


def test_the_split_products_compute_the_same_bits():
    feeds = inputs(3)
    before, after = compiled(PIPELINE), compiled(PIPELINE + ",spike-matrix-hybridize")
    assert np.array_equal(run(before, "qann", feeds)[0], run(after, "qann", feeds)[0])


def test_on_a_decoder_with_blocks_every_product_is_split():
    ids = {"input_ids": np.load(TINY_LLAMA.with_name("tiny_llama_ids.npy"))}
    models = []
    for pipeline in (PIPELINE, PIPELINE + ",spike-matrix-hybridize"):
        model = load_model(TINY_LLAMA)
        calibration.attach(model, calibration.Calibration([ids], "test", progress=False))
        compile_model(model, pipeline.replace("quantize", "quantize{group=16,act_group=16}"))
        models.append(model)
    ops = [n.op_type for n in models[1].graph if n.domain == "ai.kirin"]
    assert ops.count("SpikeMatMul") == ops.count("IntMatMul") == ops.count("Rescale") == 18
    assert "QMatMul" not in ops
    spikes = [n for n in models[1].graph if n.op_type == "SpikeMatMul" and n.attributes["group"].value]
    assert len(spikes) == 14 and all(len(n.inputs) == 4 for n in spikes)  # sub-scales and offsets
    assert np.array_equal(run(models[0], "qann", ids)[0], run(models[1], "qann", ids)[0])
