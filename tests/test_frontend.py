"""The torch frontend: Hugging Face models straight to the IR, then canonicalized."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_hf_model, token_ids

from kirin_compiler import compile_model, export_causal_lm
from kirin_compiler.backends import onnxruntime as ort_backend


@pytest.mark.parametrize("family", ["llama", "opt"])
def test_export_causal_lm_matches_torch_at_any_length(family):
    hf_model = tiny_hf_model(family)
    model = export_causal_lm(hf_model, torch.from_numpy(token_ids((1, 8))))
    assert [v.name for v in model.graph.inputs] == ["input_ids"]
    exported_logits = {}
    for shape in [(1, 5), (2, 11)]:
        ids = token_ids(shape, seed=shape[1])
        with torch.no_grad():
            expected = hf_model(input_ids=torch.from_numpy(ids), use_cache=False).logits.numpy()
        (logits,) = ort_backend.run(model, {"input_ids": ids})
        assert np.abs(logits - expected).max() <= 1e-4
        exported_logits[shape] = logits
    compile_model(model, "canonicalize")
    for shape, before in exported_logits.items():
        (after,) = ort_backend.run(model, {"input_ids": token_ids(shape, seed=shape[1])})
        assert np.abs(after - before).max() <= 1e-5
    roles = [n.metadata_props.get("kirin.role") for n in model.graph]
    assert roles.count("attn-qk") == roles.count("attn-pv") == 2
