"""Makes the ONNX export fixtures in ``tests/fixtures/exports/`` with the tools users export with.

Users bring ONNX decoder LLMs made by Hugging Face optimum (``optimum-cli export onnx``) or by the
onnxruntime-genai model builder (``python -m onnxruntime_genai.models.builder``). This script makes
small, self-contained examples of both from tiny, randomly initialised Hugging Face models
(``torch.manual_seed(0)``; nothing is downloaded: models and tokenizer are built in code). The
tests only *read* the committed files; nothing in the test suite runs this script or needs these
tools installed.

The tools need different ``transformers`` versions (optimum-onnx 0.1.0 wants ``<4.58``; the
onnxruntime-genai 0.18.0 builder imports classes that only exist in transformers 5.x), so there
are two environments, both with the CPU-only ``torch==2.13.0``::

    python3.11 -m venv /tmp/fixture-env-optimum
    /tmp/fixture-env-optimum/bin/pip install -r scripts/fixtures-requirements-optimum.txt
    python3.11 -m venv /tmp/fixture-env-genai
    /tmp/fixture-env-genai/bin/pip install -r scripts/fixtures-requirements-genai.txt

Then, from the repository root::

    /tmp/fixture-env-optimum/bin/python scripts/make_export_fixtures.py --out tests/fixtures/exports --check

runs the optimum stage in the interpreter it was started with, the genai stage with
``--genai-python`` (default ``/tmp/fixture-env-genai/bin/python``), checks every file with
onnxruntime (``--check``) and rewrites ``README.md`` beside the fixtures. ``--stage`` runs one
stage alone.

The fixtures (all fp32 activations, batch 1 at run time, weights embedded, no external data):

* ``optimum_llama_with_past.onnx``, ``optimum_opt_with_past.onnx``, ``optimum_gpt2_with_past.onnx``,
  ``optimum_qwen2_with_past.onnx``: ``optimum-cli export onnx --task text-generation-with-past``.
  Inputs ``input_ids``, ``attention_mask``, ``position_ids``, ``past_key_values.N.key/value``;
  outputs ``logits``, ``present.N.key/value``.
* ``optimum_llama.onnx``: ``--task text-generation`` (no cache): inputs ``input_ids``,
  ``attention_mask``, ``position_ids``; output ``logits``.
* ``optimum_llama_merged.onnx``: optimum's legacy merged decoder (``decoder_model_merged.onnx``):
  an ``If`` on a boolean ``use_cache_branch`` input chooses between the decoder without past (its
  past inputs are ignored) and the decoder with past. optimum-onnx 0.1.0 no longer makes it from
  the CLI (decoder-only models export as one with-past graph; its CLI has no ``--legacy``, and
  ``--monolith`` / ``--no-post-process`` do not produce it), so this
  script exports the two decoders through optimum's Python API and joins them with
  ``optimum.onnx.merge_decoders``, the function optimum's own post-processing uses.
* ``genai_llama_fp32.onnx`` (``-p fp32 -e cpu``) and ``genai_llama_int4.onnx`` (``-p int4 -e cpu``,
  ``MatMulNBits`` with block size 32): onnxruntime-genai model builder, from the same tiny Llama
  checkpoint as the optimum Llama files (so all fp32 Llama fixtures compute the same logits). They
  use the com.microsoft contrib ops ``GroupQueryAttention``, ``SkipSimplifiedLayerNormalization``
  and, for int4, ``MatMulNBits``. Only ``model.onnx`` is kept (not ``genai_config.json`` or the
  tokenizer files).

Shapes (``SHAPES`` below): vocab 128, 2 layers, 4 attention heads, max positions 64; hidden 32,
intermediate 64 for OPT, GPT-2 and Qwen2 (2 KV heads for Qwen2), but hidden 64, intermediate 64
and 2 KV heads for Llama: onnxruntime's CPU GroupQueryAttention needs a head size that is a
multiple of 16, and the genai builder mistakes any Linear with vocab_size outputs for the LM head.

The files are byte-for-byte reproducible with the pinned environments; the script re-executes
itself with ``PYTHONHASHSEED=0`` for that (``merge_decoders`` names initializers from a set).

``--check`` loads each file in onnxruntime, runs ``input_ids`` of shape [1, 5] (mask of ones,
``position_ids`` arange, zero-length past of shape [1, kv_heads, 0, head_dim],
``use_cache_branch`` False) and, for the files with a cache, a decode step of one new token fed
the ``present.*`` outputs back as past; the decode-step logits must equal the last row of a full
6-token run (max abs diff <= 1e-4). It also checks that the fp32 Llama fixtures agree.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import pathlib
import subprocess
import sys
import tempfile

SEED = 0
VOCAB = 128
LAYERS = 2
HEADS = 4
MAX_POSITIONS = 64
# family -> (hidden, intermediate, key/value heads). Llama is wider than the rest: onnxruntime's CPU
# GroupQueryAttention kernel, which the genai builder always emits, rejects a head size that is no
# multiple of 16 ("head_size shall be a multiple of 16"), so the Llama checkpoint that the optimum
# and the genai Llama fixtures share has head size 64 / 4 = 16. Its intermediate size must not be
# the vocabulary size: the builder takes every nn.Linear with out_features == vocab_size for the LM
# head (builders/base.py has_lm_head), and an MLP projection of 128 outputs silently became the
# logits' input. OPT and GPT-2 have no GQA.
SHAPES = {"llama": (64, 64, 2), "qwen2": (32, 64, 2), "opt": (32, 64, 4), "gpt2": (32, 64, 4)}
SPECIAL_TOKENS = {"unk": 0, "bos": 1, "eos": 2, "pad": 3}

OPTIMUM_FAMILIES = ("llama", "opt", "gpt2", "qwen2")
DEFAULT_GENAI_PYTHON = "/tmp/fixture-env-genai/bin/python"

# name -> (tool, family, description of the options); README and --check read this.
FIXTURES = {
    "optimum_llama_with_past.onnx": ("optimum", "llama", "`optimum-cli export onnx --task text-generation-with-past`"),
    "optimum_opt_with_past.onnx": ("optimum", "opt", "`optimum-cli export onnx --task text-generation-with-past`"),
    "optimum_gpt2_with_past.onnx": ("optimum", "gpt2", "`optimum-cli export onnx --task text-generation-with-past`"),
    "optimum_qwen2_with_past.onnx": ("optimum", "qwen2", "`optimum-cli export onnx --task text-generation-with-past`"),
    "optimum_llama.onnx": ("optimum", "llama", "`optimum-cli export onnx --task text-generation` (no KV cache)"),
    "optimum_llama_merged.onnx": (
        "optimum",
        "llama",
        "legacy merged decoder (`decoder_model_merged.onnx`): decoder without past (config `use_past=True, "
        "use_past_in_inputs=False`) and decoder with past, exported with `optimum.exporters.onnx.main_export` "
        "and joined by `optimum.onnx.merge_decoders`",
    ),
    "genai_llama_fp32.onnx": ("genai", "llama", "`python -m onnxruntime_genai.models.builder -p fp32 -e cpu`"),
    "genai_llama_int4.onnx": (
        "genai",
        "llama",
        "`python -m onnxruntime_genai.models.builder -p int4 -e cpu` (default block_size 32, accuracy_level 4)",
    ),
}


def log(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------- tiny checkpoints


def build_tokenizer():
    """A 128-token WordLevel tokenizer, built in code: ``<unk> <s> </s> <pad> t4 ... t127``."""
    import tokenizers
    import transformers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3}
    vocab.update({f"t{i}": i for i in range(len(vocab), VOCAB)})
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def build_config(family: str):
    import transformers

    hidden, intermediate, kv_heads = SHAPES[family]
    ids = dict(
        bos_token_id=SPECIAL_TOKENS["bos"], eos_token_id=SPECIAL_TOKENS["eos"], pad_token_id=SPECIAL_TOKENS["pad"]
    )
    if family in ("llama", "qwen2"):  # grouped-query attention
        config = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[family]
        extra = {"tie_word_embeddings": False} if family == "qwen2" else {}
        return config(
            vocab_size=VOCAB,
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            num_key_value_heads=kv_heads,
            max_position_embeddings=MAX_POSITIONS,
            **extra,
            **ids,
        )
    if family == "opt":  # no GQA in OPT: 4 heads of keys and values
        return transformers.OPTConfig(
            vocab_size=VOCAB,
            hidden_size=hidden,
            ffn_dim=intermediate,
            num_hidden_layers=LAYERS,
            num_attention_heads=HEADS,
            max_position_embeddings=MAX_POSITIONS,
            word_embed_proj_dim=hidden,
            **ids,
        )
    if family == "gpt2":  # no GQA in GPT-2 either
        return transformers.GPT2Config(
            vocab_size=VOCAB,
            n_embd=hidden,
            n_inner=intermediate,
            n_layer=LAYERS,
            n_head=HEADS,
            n_positions=MAX_POSITIONS,
            **ids,
        )
    raise ValueError(family)


def build_checkpoint(family: str, folder: pathlib.Path) -> pathlib.Path:
    """Seeded random-init model + tokenizer, saved with ``save_pretrained`` into ``folder``."""
    import torch
    import transformers

    config = build_config(family)
    torch.manual_seed(SEED)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    log(f"checkpoint {family}: {sum(p.numel() for p in model.parameters())} parameters -> {folder}")
    return folder


def checkpoints(work: pathlib.Path, families) -> dict[str, pathlib.Path]:
    out = {}
    for family in families:
        folder = work / "checkpoints" / family
        out[family] = folder if (folder / "config.json").exists() else build_checkpoint(family, folder)
    return out


# --------------------------------------------------------------------------- saving


def save_embedded(source: pathlib.Path, target: pathlib.Path) -> None:
    """Re-saves ``source`` (and any external data beside it) as one self-contained file."""
    import onnx

    model = onnx.load(str(source), load_external_data=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target), save_as_external_data=False)
    # No onnx.checker here: the genai files use SimplifiedLayerNormalization, which onnxruntime
    # registers in the default ONNX domain although it is no standard ONNX op.
    reloaded = onnx.load(str(target), load_external_data=False)
    external = [t.name for t in reloaded.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert not external, f"{target} still refers to external data for {external}"
    log(f"wrote {target} ({target.stat().st_size} bytes)")


def run(command: list[str], **kwargs) -> None:
    log("$ " + " ".join(map(str, command)))
    subprocess.run([str(c) for c in command], check=True, **kwargs)


# --------------------------------------------------------------------------- optimum stage


def optimum_cli(checkpoint: pathlib.Path, task: str, folder: pathlib.Path) -> pathlib.Path:
    cli = [sys.executable, "-m", "optimum.commands.optimum_cli", "export", "onnx"]
    run(cli + ["-m", checkpoint, "--task", task, folder])
    return folder / "model.onnx"


def optimum_merged(checkpoint: pathlib.Path, work: pathlib.Path) -> pathlib.Path:
    """optimum's legacy ``decoder_model_merged.onnx``, made with the current optimum's own parts."""
    import transformers
    from optimum.exporters.onnx import main_export
    from optimum.exporters.onnx.model_configs import LlamaOnnxConfig
    from optimum.onnx import merge_decoders

    config = transformers.AutoConfig.from_pretrained(checkpoint)
    decoder = work / "decoder_model"
    log(f"main_export({checkpoint}, {decoder}, custom_onnx_configs={{'model': use_past_in_inputs=False}})")
    # The legacy "decoder_model.onnx": no past inputs, present outputs (optimum 1.x's
    # get_decoder_models_for_export gave it use_past=True, use_past_in_inputs=False).
    no_past = LlamaOnnxConfig(config, task="text-generation", use_past=True, use_past_in_inputs=False)
    main_export(
        str(checkpoint),
        output=decoder,
        task="text-generation-with-past",
        custom_onnx_configs={"model": no_past},
        no_post_process=True,
    )
    with_past = optimum_cli(checkpoint, "text-generation-with-past", work / "decoder_with_past_model")
    merged = work / "decoder_model_merged.onnx"
    merge_decoders(decoder=decoder / "model.onnx", decoder_with_past=with_past, save_path=merged)
    return merged


def stage_optimum(out: pathlib.Path, work: pathlib.Path, only: set[str] | None) -> None:
    wanted = [n for n, (tool, _, _) in FIXTURES.items() if tool == "optimum" and (not only or n in only)]
    families = sorted({FIXTURES[n][1] for n in wanted} | {"llama"})
    ckpts = checkpoints(work, families)
    for name in wanted:
        family = FIXTURES[name][1]
        folder = work / "optimum" / name.removesuffix(".onnx")
        if name.endswith("_merged.onnx"):
            produced = optimum_merged(ckpts[family], folder)
        elif name.endswith("_with_past.onnx"):
            produced = optimum_cli(ckpts[family], "text-generation-with-past", folder)
        else:
            produced = optimum_cli(ckpts[family], "text-generation", folder)
        save_embedded(produced, out / name)


# --------------------------------------------------------------------------- genai stage


def stage_genai(out: pathlib.Path, work: pathlib.Path, only: set[str] | None) -> None:
    ckpts = checkpoints(work, ["llama"])
    for name, (tool, family, _) in FIXTURES.items():
        if tool != "genai" or (only and name not in only):
            continue
        precision = name.removesuffix(".onnx").rsplit("_", 1)[1]
        folder = work / "genai" / name.removesuffix(".onnx")
        builder = [sys.executable, "-m", "onnxruntime_genai.models.builder"]
        run(builder + ["-i", ckpts[family], "-o", folder, "-p", precision, "-e", "cpu", "-c", work / "genai_cache"])
        save_embedded(folder / "model.onnx", out / name)


# --------------------------------------------------------------------------- check


NP_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
}


def feeds_for(session, family, tokens, past=None, use_cache_branch=None):
    """Inputs for ``tokens`` (shape [1, n]) after ``past`` (name -> array from present outputs)."""
    import numpy as np

    past_len = 0 if not past else next(iter(past.values())).shape[2]
    n = tokens.shape[1]
    feeds = {}
    for info in session.get_inputs():
        dtype = NP_TYPES[info.type]
        if info.name == "input_ids":
            feeds[info.name] = tokens.astype(dtype)
        elif info.name == "attention_mask":
            feeds[info.name] = np.ones((1, past_len + n), dtype=dtype)
        elif info.name == "position_ids":
            feeds[info.name] = np.arange(past_len, past_len + n, dtype=dtype)[None, :]
        elif info.name == "use_cache_branch":
            feeds[info.name] = np.array([bool(past) if use_cache_branch is None else use_cache_branch])
        elif info.name.startswith("past_key_values."):
            if past:
                feeds[info.name] = past[info.name]
            else:
                # genai leaves the head size symbolic ("kv_cache_dim")
                kv_heads, head_dim = info.shape[1], info.shape[3]
                kv_heads = kv_heads if isinstance(kv_heads, int) else SHAPES[family][2]
                head_dim = head_dim if isinstance(head_dim, int) else SHAPES[family][0] // HEADS
                feeds[info.name] = np.zeros((1, kv_heads, 0, head_dim), dtype=dtype)
        else:
            raise ValueError(f"no natural value for input {info.name}")
    return feeds


def run_named(session, feeds):
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds)))


def check_file(path: pathlib.Path, family: str, tolerance: float = 1e-4):
    """Runs the prefill / decode checks on one fixture; returns (summary, full 6-token logits)."""
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tokens = np.random.default_rng(SEED).integers(4, VOCAB, size=(1, 6), dtype=np.int64)
    full = run_named(session, feeds_for(session, family, tokens))["logits"]
    prefill = run_named(session, feeds_for(session, family, tokens[:, :5]))
    shapes = (full.shape, prefill["logits"].shape)
    assert shapes == ((1, 6, VOCAB), (1, 5, VOCAB)), shapes
    assert np.isfinite(full).all()
    causal = float(np.abs(prefill["logits"] - full[:, :5]).max())
    summary = {"prefill_vs_full_max_abs_diff": causal}
    assert causal <= tolerance, f"{path.name}: prefix logits differ by {causal}"
    presents = {k: v for k, v in prefill.items() if k.startswith("present")}
    if presents:
        past = {k.replace("present", "past_key_values", 1): v for k, v in presents.items()}
        for name, value in past.items():
            assert value.shape[0] == 1 and value.shape[2] == 5, (name, value.shape)
        step = run_named(session, feeds_for(session, family, tokens[:, 5:], past=past))
        diff = float(np.abs(step["logits"][:, -1] - full[:, 5]).max())
        summary["decode_vs_full_max_abs_diff"] = diff
        assert diff <= tolerance, f"{path.name}: decode-step logits differ by {diff}"
        assert all(v.shape[2] == 6 for k, v in step.items() if k.startswith("present"))
    return summary, full


def stage_check(out: pathlib.Path, only: set[str] | None) -> None:
    import numpy as np

    llama = {}
    quantized = None
    for name in FIXTURES:
        if only and name not in only:
            continue
        summary, logits = check_file(out / name, FIXTURES[name][1])
        log(f"check {name}: ok {json.dumps(summary)}")
        if FIXTURES[name][1] == "llama" and "int4" not in name:
            llama[name] = logits
        elif "int4" in name:
            quantized = (name, logits)
    if len(llama) > 1:
        first, *rest = llama
        for name in rest:
            diff = float(np.abs(llama[name] - llama[first]).max())
            log(f"check {name} vs {first}: max abs diff of logits {diff:.2e}")
            assert diff <= 1e-4, f"{name} and {first} disagree by {diff}"
    if quantized and llama:
        first = next(iter(llama))
        diff = float(np.abs(quantized[1] - llama[first]).max())
        log(f"check {quantized[0]} vs {first}: max abs diff of logits {diff:.2e} (int4 weights; not asserted)")


# --------------------------------------------------------------------------- README


def describe_value(info) -> str:
    import onnx

    kind = info.type.tensor_type
    dims = [d.dim_param if d.HasField("dim_param") else str(d.dim_value) for d in kind.shape.dim]
    return f"`{info.name}` {onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type).name} [{', '.join(dims)}]"


def op_counts(graph, counts) -> None:
    import onnx

    for node in graph.node:
        counts[(node.domain or "ai.onnx", node.op_type)] += 1
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                op_counts(attribute.g, counts)


def versions(python: str) -> dict[str, str]:
    """The versions of the tools in the environment of ``python`` (those installed there)."""
    script = (
        "import importlib.metadata as m, json\n"
        "found = {}\n"
        "for p in ['optimum-onnx', 'optimum', 'onnxruntime-genai', 'transformers', 'torch', 'onnx', 'onnxruntime']:\n"
        "    try:\n"
        "        found[p] = m.version(p)\n"
        "    except m.PackageNotFoundError:\n"
        "        pass\n"
        "print(json.dumps(found))\n"
    )
    try:
        return json.loads(subprocess.run([python, "-c", script], check=True, capture_output=True, text=True).stdout)
    except (OSError, subprocess.CalledProcessError, json.JSONDecodeError):
        return {}


def contrib_attributes(graph) -> list[str]:
    """Distinct attribute sets of the com.microsoft nodes, e.g. ``GroupQueryAttention(num_heads=4, ...)``."""
    import onnx

    seen = []
    for node in graph.node:
        if node.domain != "com.microsoft":
            continue
        attributes = sorted(node.attribute, key=lambda a: a.name)
        values = ", ".join(f"{a.name}={onnx.helper.get_attribute_value(a)!r}" for a in attributes)
        text = f"{node.op_type}({values})".replace("b'", "'")
        if text not in seen:
            seen.append(text)
    return seen


def write_readme(out: pathlib.Path, genai_python: str) -> None:
    import onnx

    tool_versions = {"optimum": versions(sys.executable), "genai": versions(genai_python)}
    lines = [
        "# ONNX export fixtures",
        "",
        "Small ONNX decoder LLM exports made by the tools users export with, from tiny randomly initialised",
        "Hugging Face models (`torch.manual_seed(0)`, saved with `save_pretrained`, with a 128-token",
        "WordLevel tokenizer built in code; nothing downloaded). The tests only read these files;",
        "`scripts/make_export_fixtures.py` made them. Its docstring tells how to build the two",
        "environments (`scripts/fixtures-requirements-optimum.txt`, `scripts/fixtures-requirements-genai.txt`:",
        "optimum-onnx needs transformers < 4.58, the genai builder needs transformers 5.x). Remake them with:",
        "",
        "```",
        "/tmp/fixture-env-optimum/bin/python scripts/make_export_fixtures.py --out tests/fixtures/exports --check",
        "```",
        "",
        "The tiny models: vocab 128, 2 layers, 4 attention heads, max positions 64, and",
        "",
        "| family | hidden | intermediate | KV heads | head_dim |",
        "| --- | --- | --- | --- | --- |",
        *[
            f"| {family} | {hidden} | {intermediate} | {kv} | {hidden // HEADS} |"
            for family, (hidden, intermediate, kv) in SHAPES.items()
        ],
        "",
        "Llama is wider (head_dim 16) because onnxruntime's CPU `GroupQueryAttention`, which the genai",
        "builder always emits, rejects a head size that is no multiple of 16; its intermediate size is",
        "not 128 because the genai builder takes any `nn.Linear` with `vocab_size` outputs for the LM",
        "head. All Llama files come from one checkpoint: the fp32 ones compute the same logits (to 1e-6).",
        "",
        "Every file is self-contained (weights embedded, no external data), has fp32 inputs and outputs,",
        "and passes the script's `--check` with onnxruntime: `input_ids` [1, 5] with a mask of ones,",
        "`position_ids` arange, zero-length past [1, kv_heads, 0, head_dim] and `use_cache_branch`",
        "False, and for the files with a cache a one-token decode step on the returned `present.*`,",
        "whose logits equal the last row of a full 6-token run to 1e-4.",
        "",
        "Notes for readers of the graphs:",
        "",
        "- optimum orders the inputs as the model's `forward` signature does: GPT-2 and OPT list",
        "  `attention_mask` and/or `position_ids` after the `past_key_values.*` inputs.",
        "- The merged decoder's `If` has two subgraph branches (the op counts below include them); its",
        "  `else` branch (`use_cache_branch` False) ignores the past inputs, which are still required",
        "  (feed them with a past length of 0).",
        "- The genai files have no `position_ids`: `GroupQueryAttention` applies the rotary embedding",
        "  itself (`do_rotary=1`, `cos_cache`/`sin_cache` initializers of [max positions, head_dim / 2])",
        "  and takes positions from `attention_mask` (`seqlens_k` = sum - 1, `total_sequence_length`).",
        "  The past inputs are ordered all keys, then all values, and the head size is the symbolic",
        "  `kv_cache_dim`. `SimplifiedLayerNormalization` (RMSNorm) sits in the default ONNX domain,",
        "  though it is an onnxruntime op and no standard ONNX op (`onnx.checker` rejects the files).",
        "",
        "Tool versions:",
        "",
    ]
    for tool, found in tool_versions.items():
        lines.append(f"- {tool} environment: " + ", ".join(f"{k} {v}" for k, v in found.items()))
    lines.append("")
    for name, (tool, family, options) in FIXTURES.items():
        path = out / name
        if not path.exists():
            continue
        model = onnx.load(str(path))
        graph = model.graph
        initializers = {i.name for i in graph.initializer}
        counts = collections.Counter()
        op_counts(graph, counts)
        opsets = ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import)
        contrib = sorted({op for (domain, op) in counts if domain == "com.microsoft"})
        tool_name = "optimum-onnx" if tool == "optimum" else "onnxruntime-genai"
        found = tool_versions[tool]
        lines += [
            f"## `{name}`",
            "",
            f"- tool: {tool_name} {found.get(tool_name, '?')} "
            f"(transformers {found.get('transformers', '?')}, torch {found.get('torch', '?')})",
            f"- family: {family}; options: {options}",
            f"- size: {path.stat().st_size} bytes; sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:16]}…",
            f"- opsets: {opsets}; producer: {model.producer_name} {model.producer_version}",
            "- inputs: " + "; ".join(describe_value(i) for i in graph.input if i.name not in initializers),
            "- outputs: " + "; ".join(describe_value(o) for o in graph.output),
            f"- ops ({sum(counts.values())} nodes, subgraphs included): "
            + ", ".join(
                f"{op}{' (com.microsoft)' if domain == 'com.microsoft' else ''} {n}"
                for (domain, op), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0][1]))
            ),
            "- com.microsoft contrib ops: " + (", ".join(contrib) if contrib else "none"),
        ]
        lines += [f"  - `{text}`" for text in contrib_attributes(graph)]
        lines.append("")
    (out / "README.md").write_text("\n".join(lines))
    log(f"wrote {out / 'README.md'}")


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    if os.environ.get("PYTHONHASHSEED") != "0":
        # optimum.onnx.merge_decoders names the shared initializers after the first member of a
        # Python set of names, so the merged file changes from run to run unless string hashing
        # is fixed. The genai stage inherits the variable.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONHASHSEED": "0"})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("tests/fixtures/exports"))
    parser.add_argument("--work", type=pathlib.Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--stage", choices=["all", "optimum", "genai", "check", "readme"], default="all")
    parser.add_argument("--genai-python", default=DEFAULT_GENAI_PYTHON)
    parser.add_argument("--check", action="store_true", help="check the fixtures with onnxruntime")
    parser.add_argument("--only", nargs="+", help="fixture file names to make (default: all)")
    args = parser.parse_args(argv)
    only = set(args.only) if args.only else None
    out = args.out.resolve()
    with tempfile.TemporaryDirectory(prefix="export-fixtures-") as scratch:
        work = (args.work or pathlib.Path(scratch)).resolve()
        if args.stage in ("all", "optimum"):
            stage_optimum(out, work, only)
        if args.stage == "genai":
            stage_genai(out, work, only)
        if args.stage == "all" and (not only or any(FIXTURES[n][0] == "genai" for n in only)):
            # The genai builder needs transformers 5.x: run this script again in its environment,
            # on the same tiny Llama checkpoint.
            command = [args.genai_python, pathlib.Path(__file__).resolve(), "--stage", "genai", "--out", out]
            run(command + ["--work", work] + (["--only", *only] if only else []))
        if args.check or args.stage == "check":
            stage_check(out, only)
        if args.stage in ("all", "readme"):
            write_readme(out, args.genai_python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
