"""``kirinc generate``: greedy tokens, the same in the integer and the spiking network."""

from __future__ import annotations

import re

import pytest
from conftest import REPO

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
