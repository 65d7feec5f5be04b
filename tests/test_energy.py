"""``kirinc report``: energy presets, the compiled network and its baselines priced on one
workload, time steps, NeuroBench's metrics, the JSON and the charts."""

from __future__ import annotations

import functools
import json
import pathlib
import re

import matplotlib.image
import numpy as np
import pytest
from kirin_models import calibrated, compiled

from conftest import REPO, TINY_LLAMA, TINY_LLAMA_IDS
from kirin_compiler import accounting, calibration, compile_model, load_model, save_model
from kirin_compiler.cli import main
from kirin_compiler.energy import pricing, presets, report
from kirin_compiler.errors import KirinError

DEFAULT = "canonicalize,quantize,outlier-detect,spike-matrix-hybridize,threshold-insert,energy-annotate"
SHIPPED = pathlib.Path(presets.__file__).parent / "presets"


@functools.cache
def _llama():
    model = calibrated(load_model(TINY_LLAMA), feeds=[{"input_ids": np.load(TINY_LLAMA_IDS)}])
    compile_model(model, DEFAULT)
    return model


def _models():
    """The tiny Llama (attention products, graded spikes) and the MLP (a fused TTFS neuron with
    a bias, outliers per channel)."""
    return {"llama": _llama(), "mlp": compiled(DEFAULT)}


@pytest.fixture(scope="module")
def kirin_file(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("energy") / "llama.kirin"
    save_model(_llama(), path)
    return path


def _run(capsys, *argv) -> tuple[int, str, str]:
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_report_prints_the_tables_and_writes_the_json_and_both_charts(capsys, kirin_file, tmp_path):
    out = {name: tmp_path / f"energy.{name}" for name in ("json", "png", "svg")}
    status, text, err = _run(capsys, "report", kirin_file, "--json", out["json"],
                             "--chart", out["png"], "--chart", out["svg"])
    assert status == 0, err
    for heading in ("energy, compute only", "energy, compute + memory", "Kirin's energy reduction",
                    "Kirin per layer", "time steps", "NeuroBench metrics", "by kind of work"):
        assert heading in text
    for name in ("fp16", "w8a8", "qann", "qann-sparse", "ttfs8", "rate8"):
        assert re.search(rf"^{re.escape(name)} .*%$", text, flags=re.M), name
    document = json.loads(out["json"].read_text())
    assert set(document["networks"]) == {n.name for n in pricing.NETWORKS}
    assert document["preset"]["name"] == "horowitz-45nm"
    assert out["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = matplotlib.image.imread(out["png"]).shape
    assert (width, height) == (1080, 1020)
    assert b"<svg" in out["svg"].read_bytes()[:400]
    assert err.count("kirinc: wrote") == 3


def test_the_report_is_the_same_byte_for_byte_on_every_run(capsys, kirin_file, tmp_path):
    made = []
    for run in ("a", "b"):
        paths = [tmp_path / f"{run}.json", tmp_path / f"{run}.png", tmp_path / f"{run}.svg"]
        status, text, _ = _run(capsys, "report", kirin_file, "--json", paths[0], "--chart", paths[1], "--chart", paths[2])
        assert status == 0
        made.append([text, *(p.read_bytes() for p in paths)])
    assert made[0] == made[1]


@pytest.mark.parametrize("name", ["llama", "mlp"])
@pytest.mark.parametrize("preset", presets.names())
def test_node_energies_add_up_to_the_totals(name, preset):
    document = report.build(_models()[name], presets.load(preset))
    kirin = document["networks"]["kirin"]
    for term in report.TERMS:
        nodes = sum(node["energy_pj"][term] for node in document["nodes"])
        work = sum(w["energy_pj"] for node in document["nodes"] for w in node["work"] if (w["traffic"] is None) == (term == "compute"))
        assert nodes == pytest.approx(kirin["total_pj"][term], rel=1e-9, abs=0.01)
        assert work == pytest.approx(nodes, rel=1e-9, abs=0.01)
    for network in document["networks"].values():
        for term in report.TERMS:
            total = network["total_pj"][term]
            assert sum(c[term] for c in network["categories_pj"].values()) == pytest.approx(total, rel=1e-9, abs=0.01)
            assert sum(layer[term] for layer in network["layers_pj"].values()) == pytest.approx(total, rel=1e-9, abs=0.01)
    assert kirin["total_pj"]["compute"] > 0 and kirin["total_pj"]["memory"] > 0


@pytest.mark.parametrize("name", ["llama", "mlp"])
def test_the_counted_spikes_are_the_spikes_an_snn_run_records(name):
    model = _models()[name]
    measured = accounting.count_operations(model, calibration.attached(model).feeds[:1], "snn")
    document = report.build(model, presets.load(presets.DEFAULT))
    counted = {node["name"]: node["counts"] for node in document["nodes"]}
    sources = [n for n, c in measured.items() if "spikes" in c]
    assert sources
    for node in sources:
        for key in ("spikes", "neurons", "comparisons", "magnitude"):
            assert counted[node][key] == measured[node][key], (node, key)
    assert sum(counted[n]["spikes"] for n in sources) == sum(measured[n]["spikes"] for n in sources)


def test_every_product_is_priced_densely_in_the_fp16_baseline():
    # under the convention every float MAC is 4.6 pJ: the FP16 products cost exactly that per
    # dense MAC, on the workload the compiled network counted
    model = _llama()
    document = report.build(model, presets.load("snn-convention"))
    workload = pricing.Workload.of(model)
    macs = sum(e.counts.get("dense_macs", 0) + e.counts.get("float_macs", 0) for e in workload.entries)
    fp16 = document["networks"]["fp16"]["categories_pj"]
    assert fp16["linear"]["compute"] + fp16["attention"]["compute"] == pytest.approx(4.6 * macs)
    # the literature's count: effective ACs at 0.9 pJ and MACs at 4.6 pJ against the dense MACs
    ops = document["neurobench"]["synaptic_operations"]
    snn = 0.9 * ops["effective_acs"] + 4.6 * ops["effective_macs"]
    assert document["literature"]["reduction"] == pytest.approx(1 - snn / (4.6 * ops["dense"]), abs=1e-6)
    # and the integer network with zero codes skipped makes one MAC per accumulate of the spike path
    accumulates = sum(e.counts.get("accumulates", 0) for e in workload.entries)
    assert document["neurobench"]["synaptic_operations"]["effective_acs"] == accumulates
    assert document["neurobench"]["synaptic_operations"]["dense"] == macs


def test_four_bit_windows_are_93_75_percent_shorter_than_8_bit_single_spikes(capsys, kirin_file):
    document = report.build(_llama(), presets.load(presets.DEFAULT))
    steps = document["timesteps"]
    assert {(s["window"], s["window_8bit"]) for s in steps["spiking_sources"]} == {(8, 128), (16, 256)}
    assert all(s["reduction"] == 0.9375 for s in steps["spiking_sources"])
    assert (steps["total"], steps["baseline_8bit_total"]) == (112, 1792)
    status, text, _ = _run(capsys, "report", kirin_file)
    assert "end to end: 112 steps, 1792 with 8-bit single spikes (93.75% fewer)" in text


def test_a_preset_of_ones_own_prices_the_same_work(capsys, kirin_file, tmp_path):
    text = (SHIPPED / "horowitz-45nm.toml").read_text()
    doubled = re.sub(r"^energy = ([\d.]+)$", lambda m: f"energy = {2 * float(m.group(1))}", text, flags=re.M)
    mine = tmp_path / "doubled.toml"
    mine.write_text(doubled.replace('name = "horowitz-45nm"', 'name = "doubled"'))
    ours = report.build(_llama(), presets.load(str(mine)))
    theirs = report.build(_llama(), presets.load("horowitz-45nm"))
    for term in report.TERMS:
        assert ours["networks"]["kirin"]["total_pj"][term] == pytest.approx(2 * theirs["networks"]["kirin"]["total_pj"][term], rel=1e-6)
    assert ours["reduction"] == theirs["reduction"]
    status, out, _ = _run(capsys, "report", kirin_file, "--preset", mine)
    assert status == 0 and "preset doubled" in out


_GOOD = (SHIPPED / "horowitz-45nm.toml").read_text()
_FIRST = _GOOD.index("[[constant]]")


def _edit_first_constant(old: str, new: str) -> str:
    head, first = _GOOD[:_FIRST], _GOOD[_FIRST:]
    assert old in first
    return head + first.replace(old, new, 1)


MALFORMED = {
    "not TOML": ("name = [unclosed", "not valid TOML"),
    "a missing constant": (re.sub(r"\[\[constant\]\]\nname = \"int\d+_mult\"(.|\n)*?(?=\[\[constant\]\])", "", _GOOD),
                           "no 'int_mult' constant"),
    "a negative value": (_edit_first_constant("energy = 0.03", "energy = -0.03"), "constant 'int8_add': energy = -0.03 must be a number at least 0"),
    "a wrong unit": (_edit_first_constant('unit = "pJ"', 'unit = "mW"'), "constant 'int8_add': unit 'mW' is not an energy"),
    "a missing field": (_edit_first_constant('node = "45 nm"\n', ""), "constant 'int8_add' has no 'node'"),
    "an unknown op": (_edit_first_constant('op = "int_add"', 'op = "int_divide"'), "constant 'int8_add': op 'int_divide'"),
    "a text for a number": (_edit_first_constant("bits = 8", 'bits = "8"'), "constant 'int8_add': 'bits' = '8' is not a whole number"),
    "a repeated width": (_edit_first_constant("bits = 8", "bits = 32"), "constant 'int32_add' repeats op int_add at 32 bits of constant 'int8_add'"),
    "an unknown memory": (_GOOD.replace('weights = "sram_1mb_read"', 'weights = "sram_2mb_read"'), "[memory] weights = 'sram_2mb_read' is not a memory_read constant"),
    "an unknown scaling": (_GOOD.replace('scaling = "width"', 'scaling = "log"'), "scaling = 'log' is not one of"),
}


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_preset_is_one_clear_error_naming_the_entry(capsys, kirin_file, tmp_path, kind):
    text, message = MALFORMED[kind]
    preset = tmp_path / "bad.toml"
    preset.write_text(text)
    out = tmp_path / "energy.json"
    status, stdout, err = _run(capsys, "report", kirin_file, "--preset", preset, "--json", out)
    assert status == 2 and stdout == ""
    assert err.count("\n") == 1 and err.startswith(f"kirinc: error: preset {preset}: "), err
    assert message in err, err
    assert not out.exists()


def test_an_unknown_preset_name_lists_the_shipped_ones(capsys, kirin_file):
    status, _, err = _run(capsys, "report", kirin_file, "--preset", "horowitz-7nm")
    assert status == 2
    assert err == "kirinc: error: --preset horowitz-7nm: no such preset; use one of horowitz-45nm, snn-convention or a TOML file\n"


def test_a_model_without_counts_is_refused(capsys, tmp_path):
    path = tmp_path / "uncounted.kirin"
    save_model(compiled(DEFAULT.removesuffix(",energy-annotate")), path)
    status, _, err = _run(capsys, "report", path, "--chart", tmp_path / "chart.png")
    assert status == 2 and "has no operation counts: compile it with the energy-annotate pass" in err
    assert not (tmp_path / "chart.png").exists()


def test_a_chart_needs_a_png_or_svg_name(capsys, kirin_file, tmp_path):
    status, _, err = _run(capsys, "report", kirin_file, "--chart", tmp_path / "chart.pdf")
    assert status == 2 and "give a file ending in .png or .svg" in err


def test_the_shipped_presets_cite_a_source_for_every_constant():
    for name in presets.names():
        preset = presets.load(name)
        for constant in preset.constants:
            assert "Horowitz 2014" in constant.source or "SNN convention" in constant.source, constant
            assert constant.node == "45 nm"
    convention = presets.load("snn-convention")
    assert convention.energy("int_add", 16) == convention.energy("int_add", 32) == 0.9
    assert convention.energy("int_mult", 8) + convention.energy("int_add", 8) == pytest.approx(4.6)
    horowitz = presets.load("horowitz-45nm")
    assert horowitz.energy("int_add", 8) == 0.03 and horowitz.energy("int_mult", 32) == 3.1
    assert horowitz.energy("int_mult", 8, 4) == pytest.approx(0.1)  # half the partial products of 8 x 8


def test_parse_names_the_preset_in_every_error():
    with pytest.raises(KirinError, match=r"^mine: no \[\[constant\]\] entries$"):
        presets.parse('name = "x"\ntitle = "y"\n', "mine")


def test_the_energy_page_shows_the_charts_it_names():
    text = (REPO / "docs" / "energy.md").read_text()
    names = re.findall(r"\]\(images/(energy_\w+\.png)\)", text)
    assert names == ["energy_wiki_llama.png", "energy_smollm2.png"]
    for name in names:
        height, width, _ = matplotlib.image.imread(REPO / "docs" / "images" / name).shape
        assert (width, height) == (1080, 1020)


TAIL = "spike-matrix-hybridize,threshold-insert"
VARIANTS = {
    "float attention": f"canonicalize,quantize{{attention=false}},outlier-detect,{TAIL},energy-annotate",
    "no outliers": f"canonicalize,quantize,outlier-detect{{mode=none}},{TAIL},energy-annotate",
    "static outliers": f"canonicalize,quantize,outlier-detect{{mode=static}},{TAIL},energy-annotate",
    "no blocks, no gains": f"canonicalize,quantize{{group=0,act_group=0}},outlier-detect,{TAIL},energy-annotate",
    "8-bit codes": f"canonicalize,quantize{{bits=8,group=0,asymmetric=false,act_bits=8,act_group=0}},"
                   f"outlier-detect{{mode=none}},{TAIL},energy-annotate",
    "counted in the snn mode": f"canonicalize,quantize,outlier-detect,{TAIL},energy-annotate{{mode=snn}}",
}


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_pipeline_variant_is_priced(variant):
    model = calibrated(load_model(TINY_LLAMA), feeds=[{"input_ids": np.load(TINY_LLAMA_IDS)}])
    compile_model(model, VARIANTS[variant])
    document = report.build(model, presets.load(presets.DEFAULT))
    kirin = document["networks"]["kirin"]
    assert sum(n["energy_pj"]["compute"] for n in document["nodes"]) == pytest.approx(kirin["total_pj"]["compute"], abs=0.01)
    for name, network in document["networks"].items():
        assert network["total_pj"]["compute"] > 0 and network["total_pj"]["memory"] > 0, name
    assert report.tables(document)
    if variant == "8-bit codes":  # 8-bit codes open 8-bit windows: no steps saved
        assert document["timesteps"]["reduction"] == 0.0
    if variant == "float attention":
        assert document["networks"]["kirin"]["categories_pj"]["attention"] == document["networks"]["qann"]["categories_pj"]["attention"]


def test_an_ablated_network_without_the_silent_phase_is_priced():
    model = compiled(DEFAULT.replace("threshold-insert", "threshold-insert{silent=false}"))
    document = report.build(model, presets.load("snn-convention"))
    assert document["networks"]["kirin"]["total_pj"]["compute"] > 0


def test_a_graph_the_passes_did_not_make_is_one_error(capsys, tmp_path):
    model = compiled(DEFAULT)
    rescale = next(n for n in model.graph if n.op_type == "Rescale")
    rescale.op_type, rescale.domain = "Identity", ""  # a custom rewrite the pricing cannot read
    with pytest.raises(KirinError, match=r"node 'fc\d\.spike': a SpikeMatMul priced by kirinc report"):
        report.build(model, presets.load(presets.DEFAULT))
