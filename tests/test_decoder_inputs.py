"""Exports that take more than token ids (an attention mask, position ids, a KV cache) compile,
verify and run from token ids alone: kirinc gives the other inputs their natural values
(`feeds`)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CACHE, export_file, token_ids

from kirin_compiler import feeds, load_model
from kirin_compiler.backends import onnxruntime as ort_backend
from kirin_compiler.backends import torch_backend
from kirin_compiler.cli import main

MASK = ("input_ids", "attention_mask")
POSITIONS = (*MASK, "position_ids")
CASES = [("llama", "dynamo", POSITIONS), ("opt", "torchscript", MASK)]  # all families: test_export_matrix.py
@pytest.mark.parametrize("family,exporter,inputs", CASES,
                         ids=[f"{f}-{e}-{'+'.join(i[1:])}" for f, e, i in CASES])
def test_an_export_with_a_mask_and_positions_compiles_verifies_and_runs(family, exporter, inputs, tmp_path, capsys):
    path = export_file(family, exporter, 18, tmp_path, inputs)
    np.save(tmp_path / "ids.npy", token_ids((2, 16), seed=4))
    compiled = tmp_path / "model.kirin"
    assert main([str(path), "-o", str(compiled), "--calib", str(tmp_path / "ids.npy"), "--no-calib-cache"]) == 0
    assert main(["verify", str(compiled)]) == 0
    assert "0 differ" in capsys.readouterr().out
    model = load_model(path)
    assert feeds.decoder_inputs(model) == feeds.DecoderInputs(*inputs, *[None] * (3 - len(inputs)))
    # the float mode on token ids alone matches onnxruntime fed the same natural inputs
    ids = token_ids((1, 12), seed=5)
    fed = feeds.feed(model, ids)
    np.testing.assert_array_equal(fed["attention_mask"], np.ones((1, 12)))
    ours = torch_backend.run(torch_backend.lower(model, "float"), model, fed)[0]
    assert np.abs(ours - ort_backend.run(load_model(path), fed)[0]).max() <= 1e-4
    np.save(tmp_path / "few.npy", ids)
    assert main(["run", str(compiled), "--input", str(tmp_path / "few.npy"), "--mode", "snn"]) == 0
    printed = capsys.readouterr().out
    assert "attention_mask: [1, 12] attention mask of ones" in printed


def test_the_token_ids_are_found_by_the_embedding_they_index_not_by_their_name(tmp_path):
    import onnx
    import onnx.helper as oh

    table = onnx.numpy_helper.from_array(np.ones((50, 4), np.float32), "embedding")
    positions = onnx.numpy_helper.from_array(np.ones((8, 4), np.float32), "wpe")
    graph = oh.make_graph(
        [oh.make_node("Gather", ["embedding", "tokens"], ["x"]), oh.make_node("Gather", ["wpe", "pos"], ["p"]),
         oh.make_node("Add", ["x", "p"], ["y"])], "g",
        [oh.make_tensor_value_info("pos", onnx.TensorProto.INT64, ["b", "s"]),
         oh.make_tensor_value_info("tokens", onnx.TensorProto.INT64, ["b", "s"])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", "s", 4])], [table, positions])
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)], ir_version=9), tmp_path / "m.onnx")
    model = load_model(tmp_path / "m.onnx")
    with pytest.raises(Exception, match="input 'pos' \\(INT64\\[b, s\\]\\) is none of these"):
        feeds.decoder_inputs(model)  # 'pos' indexes a table too, but it is not called a position
    model.graph.inputs[0].name = "position_ids"
    assert feeds.decoder_inputs(model) == feeds.DecoderInputs("tokens", None, "position_ids")


def test_gpt2s_two_c_proj_products_get_roles_of_their_own(tmp_path, capsys):
    path = export_file("gpt2", "dynamo", 18, tmp_path)
    assert main([str(path), "-p", "canonicalize", "-o", str(tmp_path / "c.onnx")]) == 0
    weights = set(load_model(tmp_path / "c.onnx").graph.initializers)
    assert {"layers.0.attn-c.weight", "layers.0.mlp-c.weight", "layers.1.c_attn.weight"} <= weights


def test_run_takes_every_input_by_name_from_an_npz(tmp_path, capsys):
    path = export_file("llama", "dynamo", 18, tmp_path, POSITIONS)
    model = load_model(path)
    ids = token_ids((1, 6), seed=7)
    given = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(3, 9)[None]}
    np.savez(tmp_path / "inputs.npz", **given)
    assert main(["run", str(path), "--input", str(tmp_path / "inputs.npz"), "--save", str(tmp_path / "y.npy")]) == 0
    assert "position_ids: [1, 6] int64, as given" in capsys.readouterr().out
    expected = ort_backend.run(model, given)[0]  # positions 3..8, not the 0..5 of token ids alone
    assert np.abs(np.load(tmp_path / "y.npy") - expected).max() <= 1e-4
    for name, arrays, message in [
        ("missing", {k: v for k, v in given.items() if k != "position_ids"}, "lacks position_ids"),
        ("extra", {**given, "past": ids}, "holds past, which the model does not take"),
        ("float ids", {**given, "input_ids": ids.astype(np.float32)}, "gives input_ids as float32[1, 6]"),
    ]:
        np.savez(tmp_path / f"{name}.npz", **arrays)
        assert main(["run", str(path), "--input", str(tmp_path / f"{name}.npz")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err


def test_ids_past_the_vocabulary_are_named_where_the_embedding_reads_them_through_a_reshape(tmp_path, capsys):
    path = export_file("opt", "dynamo", 18, tmp_path, MASK)  # OPT reshapes its ids before the Gather
    np.save(tmp_path / "big.npy", np.array([[1, 2, 500]]))
    assert main(["run", str(path), "--input", str(tmp_path / "big.npy")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds the token id 500 (at [0, 2]), past the model's vocabulary of 128" in err


def test_a_cache_is_found_by_the_concatenation_that_returns_it_and_decode_steps_equal_a_whole_run(tmp_path):
    path = export_file("llama", "torchscript", 18, tmp_path, ("input_ids", "attention_mask", CACHE))
    model = load_model(path)
    names = feeds.decoder_inputs(model)
    assert [(c.past, c.present, c.axis) for c in names.cache] == [
        (f"past_key_values.{i}.{kind}", f"present.{i}.{kind}", 2) for i in (0, 1) for kind in ("key", "value")]
    ids = token_ids((2, 9), seed=6)
    whole = ort_backend.run(model, names.feed(model, ids))[0]
    first = names.feed(model, ids[:, :5])
    assert first["past_key_values.0.key"].shape == (2, 2, 0, 8) and first["attention_mask"].shape == (2, 5)
    cache = names.next_cache(model, ort_backend.run(model, first))
    for t in range(5, 9):
        step = names.feed(model, ids[:, t:t + 1], cache)
        assert step["attention_mask"].shape == (2, t + 1)
        outputs = ort_backend.run(model, step)
        assert np.abs(outputs[0][:, 0] - whole[:, t]).max() <= 1e-5
        cache = names.next_cache(model, outputs)


def test_verify_decode_steps_options(tmp_path, capsys):
    path = export_file("llama", "torchscript", 18, tmp_path, ("input_ids", "attention_mask", CACHE))
    np.save(tmp_path / "ids.npy", token_ids((1, 10), seed=4))
    compiled = tmp_path / "m.kirin"
    assert main([str(path), "-o", str(compiled), "--calib", str(tmp_path / "ids.npy"), "--no-calib-cache"]) == 0
    capsys.readouterr()
    assert main(["verify", str(compiled), "--decode-steps", "9"]) == 0
    assert "(10 runs, 9 of them decode steps)" in capsys.readouterr().out
    for steps, message in (("10", "--decode-steps 10: give 0 to 9"), ("-1", "--decode-steps -1: give 0 to 9")):
        assert main(["verify", str(compiled), "--decode-steps", steps]) == 2
        assert message in capsys.readouterr().err
    plain = export_file("llama", "torchscript", 18, tmp_path)
    assert main([str(plain), "-o", str(tmp_path / "p.kirin"), "--calib", str(tmp_path / "ids.npy"), "--no-calib-cache"]) == 0
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "p.kirin"), "--decode-steps", "2"]) == 2
    assert "has no KV cache to step on" in capsys.readouterr().err
