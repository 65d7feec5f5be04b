"""The decoder exports users have: 15 families x both exporters x (token ids; ids and a mask;
ids, a mask and position ids; ids, a mask and a KV cache) compile with the default pipeline,
verify (decode steps included, for a cache) and run in the float mode as onnxruntime does."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CACHE, FAMILIES, export_file, token_ids

from kirin_compiler import feeds, load_model
from kirin_compiler.backends import onnxruntime as ort_backend
from kirin_compiler.cli import main

ALL_FAMILIES = (*FAMILIES, "llama-tied", "qwen3", "gemma2", "gemma3", "falcon", "gpt-neox", "stablelm", "bloom")
KINDS = {
    "ids": ("input_ids",),
    "mask": ("input_ids", "attention_mask"),
    "positions": ("input_ids", "attention_mask", "position_ids"),
    "cache": ("input_ids", "attention_mask", CACHE),
}
CASES = [(f, e, k) for f in ALL_FAMILIES for e in ("dynamo", "torchscript") for k in KINDS]


@pytest.mark.parametrize("family,exporter,kind", CASES, ids=["-".join(case) for case in CASES])
def test_an_export_compiles_verifies_and_runs_as_onnxruntime_does(family, exporter, kind, tmp_path, capsys):
    path = export_file(family, exporter, 18, tmp_path, KINDS[kind])
    np.save(tmp_path / "calib.npy", token_ids((2, 12), seed=4))
    compiled = tmp_path / "model.kirin"
    assert main([str(path), "-o", str(compiled), "--calib", str(tmp_path / "calib.npy"), "--no-calib-cache"]) == 0
    capsys.readouterr()
    assert main(["verify", str(compiled)]) == 0
    verified = capsys.readouterr().out
    steps = ", 8 of them decode steps" if kind == "cache" else ""
    assert "integers: " in verified and " compared, 0 differ" in verified
    assert f"OK: the snn mode equals the qann mode ({10 if steps else 2} runs{steps})" in verified
    model = load_model(path)
    assert len(feeds.decoder_inputs(model).cache) == (4 if kind == "cache" else 0)
    ids = token_ids((1, 10), seed=5)
    np.save(tmp_path / "ids.npy", ids)
    assert main(["run", str(path), "--input", str(tmp_path / "ids.npy"), "--save", str(tmp_path / "out.npz")]) == 0
    ours = np.load(tmp_path / "out.npz")
    expected = ort_backend.run(model, feeds.feed(model, ids))
    for value, reference in zip(model.graph.outputs, expected):
        assert np.abs(ours[value.name] - reference).max() <= 1e-4, value.name
