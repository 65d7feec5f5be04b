"""The exports of the usual tools, committed in ``tests/fixtures/exports`` (made by
``scripts/make_export_fixtures.py``: optimum's with-past, no-cache and merged decoders, the
onnxruntime-genai builder's fp32 and int4 models) compile, verify (decode steps included) and run
as onnxruntime does."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import REPO, token_ids

from kirin_compiler import feeds, load_model
from kirin_compiler.backends import onnxruntime as ort_backend
from kirin_compiler.cli import main

FIXTURES = REPO / "tests" / "fixtures" / "exports"
CACHED = ["optimum_llama_with_past", "optimum_opt_with_past", "optimum_gpt2_with_past", "optimum_qwen2_with_past",
          "genai_llama_fp32", "genai_llama_int4"]


@pytest.mark.parametrize("name", [*CACHED, "optimum_llama"])
def test_a_fixture_compiles_verifies_and_runs(name, tmp_path, capsys):
    path = FIXTURES / f"{name}.onnx"
    np.save(tmp_path / "calib.npy", token_ids((2, 12), seed=4))
    compiled = tmp_path / "model.kirin"
    assert main([str(path), "-o", str(compiled), "--calib", str(tmp_path / "calib.npy"), "--no-calib-cache"]) == 0
    capsys.readouterr()
    assert main(["verify", str(compiled)]) == 0
    steps = ", 8 of them decode steps" if name in CACHED else ""
    out = capsys.readouterr().out
    assert " compared, 0 differ" in out and f"({10 if steps else 2} runs{steps})" in out
    spiking = sum(1 for node in load_model(compiled).graph if node.op_type == "SpikeMatMul")
    per_layer = {"opt": 8, "gpt2": 6}.get(name.split("_")[1], 9) - 2 * name.startswith("genai")  # one qkv product
    assert spiking == 2 * per_layer  # every product of both layers
    ids = token_ids((1, 10), seed=5)
    np.save(tmp_path / "ids.npy", ids)
    assert main(["run", str(path), "--input", str(tmp_path / "ids.npy"), "--save", str(tmp_path / "out.npz")]) == 0
    model = load_model(path)
    for node in model.graph:  # accuracy_level 4: onnxruntime computes in int8, not as the graph says
        if node.op_type == "MatMulNBits":
            node.attributes.pop("accuracy_level", None)
    expected = ort_backend.run(model, feeds.feed(model, ids))
    ours = np.load(tmp_path / "out.npz")
    for value, reference in zip(model.graph.outputs, expected):
        assert np.abs(ours[value.name] - reference).max() <= 1e-4, value.name
