"""The instruction listing (the neuro backend): emitter, parser, interpreter, ``kirinc verify
--listing`` and the errors of malformed listings.

The golden file ``tests/golden/listing_mlp.nl`` is the reviewed listing of the MLP of
`kirin_models`; after an intentional change of the listing, regenerate it with
``python tests/test_listing.py`` and review the diff.
"""

from __future__ import annotations

import ast
import difflib
import pathlib
import re
import sys

import numpy as np
import pytest

from kirin_compiler import calibration, compile_model, execution, feeds, load_model
from kirin_compiler.backends import neuro
from kirin_compiler.backends.neuro import weights as weight_file
from kirin_compiler.cli import main as kirinc
from kirin_compiler.compiler import DEFAULT_PIPELINE
from kirin_compiler.errors import KirinError

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import conftest  # noqa: E402
import kirin_models  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
GOLDEN = pathlib.Path(__file__).parent / "golden" / "listing_mlp.nl"
TEXT = ["--calib", str(MODELS / "wiki_calib.txt"), "--tokenizer", str(MODELS / "wiki_tokenizer")]
QUICK = ["--calib-windows", "2", "--calib-length", "128", "--no-calib-cache"]


def _mlp_listing() -> tuple[str, bytes]:
    model = kirin_models.compiled(DEFAULT_PIPELINE)
    listing, data = neuro.emit(model, "mlp.kirin", "0" * 64, "mlp.nlw")
    return neuro.format_listing(listing), data


def _run(capsys, *argv) -> tuple[int, str, str]:
    status = kirinc([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def wiki(tmp_path_factory):
    """The trained tiny Llama and OPT compiled (two short calibration windows) and their
    listings, emitted by ``kirinc --emit listing``: ``{name: (model.kirin, model.nl)}``."""
    folder = tmp_path_factory.mktemp("listings")
    made = {}
    for name in ("wiki_llama", "wiki_opt"):
        model, listing = folder / f"{name}.kirin", folder / f"{name}.nl"
        assert kirinc([str(MODELS / f"{name}.onnx"), "-o", str(model), *TEXT, *QUICK]) == 0
        assert kirinc([str(model), "--emit", "listing", "-o", str(listing)]) == 0
        made[name] = model, listing
    return made


# 1. The interpreter equals the torch backend's snn mode, bit for bit ----------------------------


@pytest.mark.parametrize("name", ["wiki_llama", "wiki_opt"])
def test_kirinc_verify_proves_the_listing_equals_the_snn_mode(capsys, wiki, name):
    model, listing = wiki[name]
    status, out, err = _run(capsys, "verify", model, "--listing", listing, "--input", MODELS / "wiki_eval.txt",
                            "--tokenizer", MODELS / "wiki_tokenizer", "--length", "128")
    assert status == 0, err
    assert "OK: the listing equals the snn mode (1 run)" in out
    assert re.search(r"integers: [1-9][\d,]* compared, 0 differ", out), out
    assert re.search(r"outputs: [1-9][\d,]* values compared bit for bit, 0 differ", out), out


def _decoder(config: dict, seed: int = 0):
    import torch
    import transformers as hf

    torch.manual_seed(seed)
    return hf.LlamaForCausalLM(hf.LlamaConfig(**config)).eval()


def _compiled_export(module, vocab: int):
    import torch

    from kirin_compiler.frontend import export_causal_lm

    model = export_causal_lm(module, torch.ones((1, 8), dtype=torch.int64))
    names = feeds.decoder_inputs(model)
    ids = np.random.default_rng(2).integers(0, vocab, (2, 64)).astype(np.int64)
    calibration.attach(model, calibration.Calibration([names.feed(model, ids[i : i + 1]) for i in range(2)], "test", progress=False))
    compile_model(model, DEFAULT_PIPELINE)
    return model


def _check(model, decode_steps: int = 0, length: int = 32, vocab: int = 128):
    from kirin_compiler import equivalence

    names = feeds.decoder_inputs(model)
    window = np.random.default_rng(3).integers(0, vocab, (1, length)).astype(np.int64)
    return equivalence.check(model, [window], names, decode_steps, False, candidate=neuro, reference="snn")


def test_a_decoder_layer_of_smollm2s_shape_runs_bit_for_bit():
    """One decoder layer with SmolLM2-135M's configuration (hidden 576, 9 query and 3 key-value
    heads, MLP 1536, RoPE theta 100000), random weights from a seed, a short vocabulary; the
    real model's first layer is checked by ``benchmarks/listing_smollm2.py``."""
    config = dict(vocab_size=512, hidden_size=576, intermediate_size=1536, num_hidden_layers=1,
                  num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0,
                  max_position_embeddings=256, tie_word_embeddings=True)
    report = _check(_compiled_export(_decoder(config), 512), length=64, vocab=512)
    assert report.ok and report.integer_mismatches == 0 and report.outputs_compared > 0
    assert sum(layer.compared for layer in report.layers.values()) > 100_000


@pytest.mark.parametrize("family", ["gpt2", "qwen2", "phi3", "gemma"])
def test_other_families_run_bit_for_bit(exported, family):
    model = load_model(exported(family, "dynamo", 18))
    names = feeds.decoder_inputs(model)
    ids = conftest.token_ids((2, 32))
    calibration.attach(model, calibration.Calibration([names.feed(model, ids[i : i + 1]) for i in range(2)], "test", progress=False))
    compile_model(model, DEFAULT_PIPELINE)
    report = _check(model)
    assert report.ok, report.summary()


def test_a_kv_cache_export_runs_its_decode_steps_bit_for_bit():
    from kirin_compiler.cli._common import load_runnable

    model = load_runnable(str(REPO / "tests/fixtures/exports/genai_llama_int4.onnx"))
    names = feeds.decoder_inputs(model)
    ids = np.random.default_rng(1).integers(0, 96, (2, 32)).astype(np.int64)
    calibration.attach(model, calibration.Calibration([names.feed(model, ids[i : i + 1]) for i in range(2)], "test", progress=False))
    compile_model(model, DEFAULT_PIPELINE)
    report = _check(model, decode_steps=3, length=12, vocab=96)
    assert report.ok and report.decode_steps == 3, report.summary()


def test_a_float_attention_runs_as_the_torch_backend_runs_it():
    """With the attention products left in float, the torch backend runs each attention as one
    fused call; the listing's ``attn`` does too, so the outputs stay bitwise equal."""
    model = load_model(MODELS / "tiny_llama.onnx")
    calibration.attach(model, calibration.Calibration([{"input_ids": np.load(MODELS / "tiny_llama_ids.npy")}], "test", progress=False))
    compile_model(model, DEFAULT_PIPELINE.replace("quantize", "quantize{attention=false}"))
    text = neuro.format_listing(neuro.emit(model, "tiny.kirin", "0" * 64, "tiny.nlw")[0])
    assert len(re.findall(r"^\S+: attn ", text, re.M)) == 2  # one per layer
    report = _check(model, length=16, vocab=256)
    assert report.ok and report.outputs_compared > 0, report.summary()


def test_the_interpreter_counts_what_the_snn_mode_counts():
    from kirin_compiler.accounting import CountingProbe, count_operations

    model = kirin_models.compiled(DEFAULT_PIPELINE)
    feed = kirin_models.inputs(7)
    expected = count_operations(model, [feed], mode="snn")
    probe = CountingProbe()
    neuro.run(neuro.lower(model, "snn", probe), model, feed)
    kirin = {n.name for n in model.graph if n.domain == "ai.kirin"}
    for node in kirin:
        spiking = {k: v for k, v in expected.get(node, {}).items() if k not in ("float_ops", "values")}
        assert {k: v for k, v in probe.counts.get(node, {}).items() if k in spiking} == spiking, node


# 2. Golden file and round trip --------------------------------------------------------------------


def test_the_listing_of_the_mlp_matches_its_golden_file():
    text, _ = _mlp_listing()
    expected = GOLDEN.read_text()
    assert text == expected, "".join(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), "golden", "emitted"))


def test_emit_parse_emit_gives_the_same_text(wiki):
    for _, listing in wiki.values():
        text = listing.read_text()
        assert neuro.format_listing(neuro.parse(text, str(listing))) == text
    text, _ = _mlp_listing()
    assert neuro.format_listing(neuro.parse(text)) == text


def test_the_weights_file_holds_the_models_tensors(wiki):
    kirin, listing = wiki["wiki_llama"]
    model = load_model(kirin)
    program = neuro.load(listing)
    constants = {name: value.const_value for name, value in model.graph.initializers.items()}
    assert len(program.tensors) > 100
    for tensor in program.tensors.values():
        stored = weight_file.read(program.data, tensor.dtype, tensor.shape, tensor.offset, tensor.size)
        assert tensor.offset % weight_file.ALIGNMENT == 0
        np.testing.assert_array_equal(stored.astype(np.float64), constants[tensor.name].numpy().astype(np.float64))


def test_emitting_twice_gives_byte_identical_files(capsys, wiki, tmp_path):
    kirin, listing = wiki["wiki_opt"]
    again = tmp_path / "again.nl"
    assert _run(capsys, kirin, "--emit", "listing", "-o", again)[0] == 0
    assert again.read_text().replace("again.nlw", "wiki_opt.nlw") == listing.read_text()
    assert again.with_suffix(".nlw").read_bytes() == listing.with_suffix(".nlw").read_bytes()


def test_an_onnx_input_is_compiled_with_the_default_pipeline_and_emitted(capsys, tmp_path):
    out = tmp_path / "tiny.nl"
    status, _, err = _run(capsys, MODELS / "tiny_llama.onnx", "--emit", "listing", "-o", out,
                          "--calib", MODELS / "tiny_llama_ids.npy", "--no-calib-cache")
    assert status == 0, err
    assert re.search(r"wrote .*tiny\.nl \([\d,]+ instructions; 112 time steps in 12 barriers\) and .*tiny\.nlw", err)
    text = out.read_text()
    assert text.startswith("kirin-listing 1\n.model \"tiny_llama.onnx\" sha256 ")
    for mnemonic in ("enc", "quant", "syn", "sacc", "imac", "rescale", "host", "load", "free", "layer", "end", "barrier"):
        assert re.search(rf"^(\S+: )?{mnemonic}\b", text, re.M), mnemonic
    assert "float macs" in text and "pJ/token" in text  # the energy comments


def test_the_schedule_takes_the_time_steps_the_model_records(wiki):
    import json

    for kirin, listing in wiki.values():
        steps = json.loads(load_model(kirin).metadata_props["kirin.timesteps"])["total"]
        barriers = [int(m) for m in re.findall(r"^barrier\s+(\d+)", listing.read_text(), re.M)]
        assert sum(barriers) == steps


def test_the_energy_comments_add_up_to_the_reports_total(wiki):
    from kirin_compiler.energy import presets, report

    kirin, listing = wiki["wiki_llama"]
    document = report.build(load_model(kirin), presets.load(presets.DEFAULT))
    per_token = sum(document["networks"]["kirin"]["total_pj"].values()) / document["workload"]["tokens"]
    commented = sum(float(m.replace(",", "")) for m in re.findall(r"\| ([\d,.]+) pJ/token", listing.read_text()))
    assert commented == pytest.approx(per_token, rel=1e-3)


# 3. Malformed listings ----------------------------------------------------------------------------


def _edit(text: str, old: str, new: str, count: int = 1) -> str:
    assert old in text, old
    return text.replace(old, new, count)


def _at(text: str, needle: str, message: str) -> tuple[int, int, str]:
    """The line and column where ``needle`` first stands in ``text``, and the error's text."""
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number, line.index(needle) + 1, message
    raise AssertionError(needle)


# kind: (the edit of a good listing, where the error is and what it says)
MALFORMED = {
    "a wrong version header": (lambda t: _edit(t, "kirin-listing 1", "kirin-listing 7"),
                               lambda t: _at(t, "7", "listing version 7 is not supported: this kirin_compiler reads version 1")),
    "not a listing": (lambda t: "hello\n" + t, lambda t: (1, 1, "not an instruction listing: the first line must be 'kirin-listing 1'")),
    "an unknown instruction": (lambda t: _edit(t, "\nend\n", "\nfinish\n"),
                               lambda t: _at(t, "finish", "unknown instruction 'finish' (known: load, syn, enc, quant, "
                                                         "sacc, imac, rescale, fire, attn, host, layer, end, barrier, free)")),
    "a bad operand": (lambda t: _edit(t, " {window=8}", ", @0 {window=8}"),
                      lambda t: _at(t, "sacc", "'sacc' takes 2 operands, not 3")),
    "an operand of the wrong kind": (lambda t: _edit(t, "= %fc1.in0.q,", "= fc1,"),
                                     lambda t: _at(t, "fc1, %fc1.wq.syn", "operand 1 of 'sacc' must be a register or a constant, not fc1")),
    "a register never defined": (lambda t: _edit(t, "= %x {", "= %nowhere {"),
                                 lambda t: _at(t, "%nowhere", "%nowhere is read before it is defined (or after it is freed)")),
    "a missing weight reference": (lambda t: re.sub(r"= @0\b", "= @99", t, count=1),
                                   lambda t: _at(t, "@99", "@99 is not a tensor of the weights file (no .tensor line declares it)")),
    "a reference past the weights file": (lambda t: _edit(t, "at 0 size 64", "at 99999999 size 64"),
                                          lambda t: _at(t, "99999999", "@0 ends at byte 100,000,063, past the end of the weights file (608 bytes)")),
    "an unknown host operation": (lambda t: _edit(t, "; phase 0\n", "; phase 0\nhost Frobnicate %z = %x\n"),
                                  lambda t: _at(t, "Frobnicate", "host operation 'Frobnicate' is not in the torch backend's op table")),
    "a bad attribute value": (lambda t: _edit(t, "window=8}", "window=999}"),
                              lambda t: _at(t, "window=999", "window = 999 must be at least 1 and at most 256")),
    "an accumulator read before its barrier": (lambda t: re.sub(r"\nbarrier\s+8[^\n]*", "", t, count=1),
                                               lambda t: _at(t, "%fc1.V,", "%fc1.V is read before the barrier that closes its window")),
    "a layer of the wrong mode": (lambda t: _edit(t, "layer    fc2, hybrid", "layer    fc2, spiking"),
                                  lambda t: _at(t, "imac %fc2.U", "'imac' in layer 'fc2', whose mode is spiking")),
    "a line that does not parse": (lambda t: _edit(t, "\nend\n", "\nend = = \n"),
                                   lambda t: _at(t, "= = ", "expected a register (%name), found '='")),
}


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_listing_is_one_error_with_its_line_and_column(capsys, tmp_path, kind):
    text, data = _mlp_listing()
    edit, expect = MALFORMED[kind]
    bad = edit(text)
    listing = tmp_path / "bad.nl"
    listing.write_text(bad)
    (tmp_path / "mlp.nlw").write_bytes(data)  # the name the listing gives
    kirin = tmp_path / "mlp.kirin"
    from kirin_compiler import save_kirin

    save_kirin(kirin_models.compiled(DEFAULT_PIPELINE), kirin)
    status, out, err = _run(capsys, "verify", kirin, "--listing", listing, "--input", _ids(tmp_path))
    line, column, message = expect(bad)
    assert status == 2 and out == "", err
    assert err == f"kirinc: error: {listing}:{line}:{column}: {message}\n"


def _ids(folder: pathlib.Path) -> pathlib.Path:
    path = folder / "ids.npy"
    np.save(path, np.zeros((1, 4), dtype=np.int64))
    return path


def test_a_missing_weights_file_is_one_error(capsys, wiki, tmp_path):
    kirin, listing = wiki["wiki_opt"]
    moved = tmp_path / "alone.nl"
    moved.write_text(listing.read_text())
    status, _, err = _run(capsys, "verify", kirin, "--listing", moved)
    assert status == 2 and err.startswith(f"kirinc: error: {moved}:3:1: cannot read the weights file"), err


def test_a_listing_of_another_model_is_refused(capsys, wiki):
    status, _, err = _run(capsys, "verify", wiki["wiki_llama"][0], "--listing", wiki["wiki_opt"][1])
    assert status == 2 and err.endswith("was emitted from wiki_opt.kirin, not from this model or its source: "
                                        "emit it from this model (kirinc MODEL --emit listing -o FILE)\n"), err


def test_emit_listing_needs_an_output_and_leaves_no_partial_file(capsys, tmp_path):
    status, _, err = _run(capsys, MODELS / "tiny_llama.onnx", "--emit", "listing")
    assert status == 2 and "--emit listing needs -o" in err
    out = tmp_path / "x.nl"
    status, _, err = _run(capsys, MODELS / "tiny_llama.onnx", "--emit", "listing", "-o", out, "-p", "canonicalize")
    assert status == 2 and "has no spiking products" in err, err
    assert not out.exists() and not out.with_suffix(".nlw").exists()


# 5. The core imports no backend -------------------------------------------------------------------


def test_no_module_of_the_core_imports_a_backend():
    offenders = []
    for path in sorted((REPO / "kirin_compiler").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                names = [node.value] if node.value.startswith("kirin_compiler.backends.") else []  # import_module
            if any(name == "kirin_compiler.backends" or name.startswith("kirin_compiler.backends.") for name in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


def test_the_backends_are_found_through_the_registry():
    assert execution.backend("torch").lower.__module__ == "kirin_compiler.backends.torch_backend"
    assert execution.backend("neuro") is neuro
    with pytest.raises(KirinError, match="no backend 'tpu' is installed"):
        execution.backend("tpu")


if __name__ == "__main__":
    GOLDEN.write_text(_mlp_listing()[0])
    print(f"wrote {GOLDEN}")
