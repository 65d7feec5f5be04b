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
          "optimum_llama_merged", "genai_llama_fp32", "genai_llama_int4"]


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
    # the merged decoder's products are all inside its If: canonicalize takes the cache branch
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


def test_the_merged_decoder_feeds_its_flag_false_then_true_and_its_if_is_folded(capsys):
    model = load_model(FIXTURES / "optimum_llama_merged.onnx")
    assert [node.op_type for node in model.graph] == ["If"]
    names = feeds.decoder_inputs(model)
    ids = token_ids((1, 6), seed=3)
    first = names.feed(model, ids[:, :5])
    assert names.cache_branch == "use_cache_branch" and first["use_cache_branch"].tolist() == [False]
    cache = names.next_cache(model, ort_backend.run(model, first))
    step = names.feed(model, ids[:, 5:], cache)
    assert step["use_cache_branch"].tolist() == [True] and step["past_key_values.0.key"].shape == (1, 2, 5, 16)
    whole = ort_backend.run(model, names.feed(model, ids))[0]
    assert np.abs(ort_backend.run(model, step)[0][:, 0] - whole[:, 5]).max() <= 1e-5
