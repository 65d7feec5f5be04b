"""``kirinc generate``: greedy tokens, the same in the integer and the spiking network."""

from __future__ import annotations

import re

import pytest
from conftest import REPO, wiki_llama_module

from kirin_compiler.cli import main

WIKI = REPO / "models" / "wiki_llama.onnx"
TOKENIZER = REPO / "models" / "wiki_tokenizer"


@pytest.fixture(scope="module")
def wiki_kirin(tmp_path_factory):
    out = tmp_path_factory.mktemp("generate") / "wiki.kirin"
    assert main([str(WIKI), "-o", str(out), "--calib", str(REPO / "models" / "wiki_calib.txt"),
                 "--tokenizer", str(TOKENIZER), "--calib-windows", "1", "--calib-length", "128",
                 "--no-calib-cache"]) == 0
    return out


@pytest.fixture(scope="module")
def wiki_with_cache(tmp_path_factory):
    """The trained tiny Llama exported with a KV cache, as ONNX and compiled."""
    import torch

    from kirin_compiler import export_causal_lm, save_model

    folder = tmp_path_factory.mktemp("generate-cache")
    save_model(export_causal_lm(wiki_llama_module(), torch.zeros(1, 8, dtype=torch.int64), cache=True),
               folder / "wiki_kv.onnx")
    assert main([str(folder / "wiki_kv.onnx"), "-o", str(folder / "wiki_kv.kirin"), "--calib",
                 str(REPO / "models" / "wiki_calib.txt"), "--tokenizer", str(TOKENIZER), "--calib-windows",
                 "1", "--calib-length", "128", "--no-calib-cache"]) == 0
    return folder / "wiki_kv.onnx", folder / "wiki_kv.kirin"


def _generate(capsys, model, mode, tokens=8):
    capsys.readouterr()
    assert main(["generate", str(model), "--prompt", "The river", "--tokenizer", str(TOKENIZER),
                 "--max-new-tokens", str(tokens), "--mode", mode]) == 0
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and f"{tokens} tokens in " in err and f"{mode} mode" in err
    return out, [int(i) for i in re.search(r"ids \[(.*)\]", err).group(1).split(", ")]


def test_qann_and_snn_generate_the_same_tokens(wiki_kirin, capsys):
    text, qann = _generate(capsys, wiki_kirin, "qann")
    assert text.startswith("The river") and len(text) > len("The river\n")
    assert _generate(capsys, wiki_kirin, "snn") == (text, qann)


def test_a_kv_cache_export_generates_on_its_cache_the_same_tokens_as_recomputing(wiki_with_cache, capsys):
    exported, compiled = wiki_with_cache
    text, tokens = _generate(capsys, exported, "float")
    assert (text, tokens) == _generate(capsys, WIKI, "float")  # the recompute path, same weights
    qann = _generate(capsys, compiled, "qann", tokens=12)
    assert qann == _generate(capsys, compiled, "snn", tokens=12)
    capsys.readouterr()
    assert main(["generate", str(compiled), "--prompt", "The river", "--tokenizer", str(TOKENIZER),
                 "--max-new-tokens", "2"]) == 0
    assert "one token a step on the KV cache" in capsys.readouterr().err


def test_the_float_model_generates_what_its_logits_say(capsys, tmp_path):
    import numpy as np
    import tokenizers

    from kirin_compiler import feeds, load_model
    from kirin_compiler.backends import onnxruntime as ort_backend

    _, generated = _generate(capsys, WIKI, "float", tokens=4)
    model = load_model(WIKI)
    ids = np.asarray([tokenizers.Tokenizer.from_file(str(TOKENIZER / "tokenizer.json")).encode(
        "The river", add_special_tokens=False).ids])
    for token in generated:  # greedy by onnxruntime, step by step
        assert int(ort_backend.run(model, feeds.feed(model, ids))[0][0, -1].argmax()) == token
        ids = np.concatenate([ids, [[token]]], axis=1)


@pytest.mark.parametrize("argv,message", [
    (["--prompt", "", "--tokenizer", str(TOKENIZER)], "tokenizes to no tokens"),
    (["--prompt", "x", "--tokenizer", str(TOKENIZER), "--max-new-tokens", "0"], "--max-new-tokens 0"),
    (["--prompt", "x"], "the following arguments are required: --tokenizer"),
])
def test_bad_generate_arguments_are_one_line(argv, message, capsys):
    assert main(["generate", str(WIKI), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
