"""outlier-detect: textual before/after, the budget, both modes, and the statistics cache."""

from __future__ import annotations

import math

import pytest
import torch
from kirin_models import calibrated, compiled, inputs, mlp, node_lines

from kirin_compiler import compile_model
from kirin_compiler.backends import torch_backend
from kirin_compiler.backends.torch_kirin import ActQuant
from kirin_compiler.execution import Probe
from kirin_compiler.errors import KirinError, PassFailedError

AFTER_TOKEN = [
    '%fc1.in0.q: i8[batch, sequence, 8], %fc1.in0.s: f32[*], %fc1.in0.qo: i8[batch, sequence, 8], %fc1.in0.so: f32[*] = ai.kirin::ActQuant(%x) {axis=-1, bits=4, clip=0.95, outlier_count=1, outliers="token", scale="token", signed=1}',
    "%v0: ? = ai.kirin::QMatMul(%fc1.in0.q, %fc1.in0.s, %fc1.wq, %fc1.ws, %fc1.in0.qo, %fc1.in0.so, _, %fc1.wz) {group=0}  # role=fc1",
    "%v1: ? = Add(%v0, %c0)",
    "%v2: ? = Relu(%v1)",
    '%fc2.in0.q: i8[*], %fc2.in0.s: f32[*], %fc2.in0.qo: i8[*], %fc2.in0.so: f32[*] = ai.kirin::ActQuant(%v2, f32{4.126704}, %fc2.in0.mask, f32{0.52260596}) {axis=-1, bits=4, outliers="static", scale="static", signed=0}',
]


def test_after_in_token_mode():
    assert node_lines(compiled("canonicalize,quantize,outlier-detect"))[:5] == AFTER_TOKEN


def test_static_mode_keeps_the_channels_of_largest_energy():
    model = compiled("canonicalize,quantize,outlier-detect{mode=static}")
    quantizer = next(n for n in model.graph if n.name == "fc1.in0")
    assert quantizer.attributes["outliers"].value == "static"
    mask = quantizer.inputs[2].const_value.numpy()
    assert mask.tolist() == [i == 3 for i in range(8)]  # the channel the inputs scale by 20


def test_mode_none_adds_no_outliers_but_calibrates_static_scales():
    model = compiled("canonicalize,quantize,outlier-detect{mode=none}")
    for node in (n for n in model.graph if n.op_type == "ActQuant"):
        assert node.attributes["outliers"].value == "none" and len(node.outputs) == 2
    fc2 = next(n for n in model.graph if n.name == "fc2.in0")
    assert fc2.inputs[1].const_value.numpy() > 0


@pytest.mark.parametrize("fraction", [0.03, 0.25, 0.5])
def test_the_budget_is_a_fraction_of_each_tokens_values(fraction):
    model = compiled(f"canonicalize,quantize,outlier-detect{{fraction={fraction}}}")
    quantizer = next(n for n in model.graph if n.name == "fc1.in0")
    count = quantizer.attributes["outlier_count"].value
    assert count == max(1, math.floor(fraction * 8))  # within the budget, at least one
    module = ActQuant("q", {a: v.value for a, v in quantizer.attributes.items()}, "qann", Probe())
    x = torch.from_numpy(inputs(5)["x"])
    codes, _, outlier_codes, _ = module(x)
    assert ((outlier_codes != 0).sum(-1) <= count).all()
    assert ((codes != 0) & (outlier_codes != 0)).sum() == 0  # a value is on one path only
    largest = x.abs().argmax(-1, keepdim=True)
    assert (outlier_codes.gather(-1, largest) != 0).all()  # the token's largest value is an outlier


def test_without_calibration_inputs_the_pass_says_what_to_give():
    with pytest.raises(KirinError, match="outlier-detect: needs calibration inputs: give --calib"):
        compile_model(mlp(), "canonicalize,quantize,outlier-detect")


def test_statistics_are_cached_and_a_rerun_skips_calibration(tmp_path, monkeypatch):
    first = calibrated(mlp(), cache=tmp_path)
    compile_model(first, "canonicalize,quantize,outlier-detect")
    assert len(list(tmp_path.glob("*.npz"))) == 1

    def no_runs(*args, **kwargs):
        raise AssertionError("calibration ran although its statistics are cached")

    monkeypatch.setattr(torch_backend, "run", no_runs)
    second = calibrated(mlp(), cache=tmp_path)
    compile_model(second, "canonicalize,quantize,outlier-detect")
    assert node_lines(first) == node_lines(second)
    other = calibrated(mlp(), feeds=[inputs(99)], cache=tmp_path)  # other inputs: no cache hit
    with pytest.raises(PassFailedError, match="calibration ran"):
        compile_model(other, "canonicalize,quantize,outlier-detect")


def test_calibration_provenance_is_recorded():
    model = compiled("canonicalize,quantize,outlier-detect")
    import json

    provenance = json.loads(model.metadata_props["kirin.calibration"])
    assert provenance["runs"] == 2 and provenance["tokens"] == 2 * 2 * 5
    assert len(provenance["sha256"]) == 64


def test_bad_fraction_is_refused():
    with pytest.raises(KirinError, match="fraction=1.5"):
        compiled("canonicalize,quantize,outlier-detect{fraction=1.5}")
