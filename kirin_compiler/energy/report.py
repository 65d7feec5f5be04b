"""The energy report: the compiled network and its baselines priced with one preset, per op type,
per layer and in total, with and without the memory term; time steps; NeuroBench's metrics.

`build` returns everything as one JSON-ready dict (what ``kirinc report --json`` writes);
`tables` renders it as the text ``kirinc report`` prints. Energies are picojoules in the dict
and nanojoules per token in the tables.
"""

from __future__ import annotations

import collections

import onnx_ir as ir

from kirin_compiler.energy import pricing
from kirin_compiler.energy.presets import Preset
from kirin_compiler.instruments import format_table
from kirin_compiler.metadata import KEY_PIPELINE, KEY_SOURCE

TERMS = ("compute", "memory")


def build(model: ir.Model, preset: Preset, float_bits: int = 16) -> dict:
    workload = pricing.Workload.of(model)
    networks, kirin_nodes = {}, []
    for network_type in pricing.NETWORKS:
        network = network_type(workload, float_bits)
        priced = _price(network, workload, preset)
        networks[network.name] = _summary(network, priced, workload)
        if network.name == "kirin":
            kirin_nodes = [_node(entry, work, preset) for entry, work in priced]
    kirin = networks["kirin"]
    return {
        "model": {"pipeline": model.metadata_props.get(KEY_PIPELINE, ""), "source": model.metadata_props.get(KEY_SOURCE, "")},
        "workload": {"tokens": workload.tokens, "runs": workload.runs, "mode": workload.mode},
        "preset": {"name": preset.name, "title": preset.title, "scaling": preset.scaling,
                   "memory": preset.memory, "constants": preset.describe()},
        "float_bits": float_bits,
        "networks": networks,
        "reduction": {name: _reductions(kirin, n) for name, n in networks.items() if name != "kirin"},
        "work": _by_work(kirin_nodes),
        "nodes": kirin_nodes,
        "timesteps": _timesteps(workload),
        "neurobench": (neurobench := _neurobench(workload)),
        "literature": _literature(neurobench, preset),
    }


def _price(network: pricing.Network, workload: pricing.Workload, preset: Preset):
    return [(entry, [(w, w.energy(preset)) for w in network.work(entry)]) for entry in workload.entries]


def _terms(priced_work) -> dict[str, float]:
    terms = dict.fromkeys(TERMS, 0.0)
    for work, energy in priced_work:
        terms["memory" if work.traffic else "compute"] += energy
    return terms


def _summary(network: pricing.Network, priced, workload: pricing.Workload) -> dict:
    categories = {c: dict.fromkeys(TERMS, 0.0) for c in pricing.CATEGORIES}
    layers: dict[str, dict[str, float]] = collections.defaultdict(lambda: dict.fromkeys(TERMS, 0.0))
    for entry, work in priced:
        for term, energy in _terms(work).items():
            categories[entry.category][term] += energy
            layers[entry.layer][term] += energy
    total = {t: sum(c[t] for c in categories.values()) for t in TERMS}
    return {
        "title": network.title,
        "spiking": network.steps,
        "total_pj": _rounded(total),
        "categories_pj": {c: _rounded(v) for c, v in categories.items()},
        "layers_pj": {layer: _rounded(v) for layer, v in sorted(layers.items(), key=lambda kv: _layer_key(kv[0]))},
    }


def _reductions(kirin: dict, baseline: dict) -> dict:
    """1 - Kirin / baseline, per op type and in total, compute only and with memory."""
    def reduce(ours: dict, theirs: dict) -> dict:
        compute = _fraction(ours["compute"], theirs["compute"])
        both = _fraction(ours["compute"] + ours["memory"], theirs["compute"] + theirs["memory"])
        return {"compute": compute, "with_memory": both}
    out = {c: reduce(kirin["categories_pj"][c], baseline["categories_pj"][c]) for c in pricing.CATEGORIES}
    out["total"] = reduce(kirin["total_pj"], baseline["total_pj"])
    return out


def _fraction(ours: float, theirs: float) -> float | None:
    return round(1.0 - ours / theirs, 6) if theirs else None


def _node(entry: pricing.Entry, work, preset: Preset) -> dict:
    return {
        "name": entry.name, "kind": entry.kind, "category": entry.category, "layer": entry.layer,
        "counts": entry.counts, "energy_pj": _rounded(_terms(work)),
        "work": [
            {"what": w.what, "op": w.op, "bits": w.bits, "by": w.by, "count": w.count,
             "traffic": w.traffic, "energy_pj": round(e, 3)}
            for w, e in work
        ],
    }


def _by_work(nodes: list[dict]) -> list[dict]:
    """Kirin's energy by kind of work (what, op and width), largest first."""
    total: dict[tuple, list] = collections.defaultdict(lambda: [0, 0.0])
    for node in nodes:
        for w in node["work"]:
            key = (w["what"], w["op"], w["bits"], w["by"], w["traffic"])
            total[key][0] += w["count"]
            total[key][1] += w["energy_pj"]
    rows = [
        {"what": k[0], "op": k[1], "bits": k[2], "by": k[3], "traffic": k[4], "count": c, "energy_pj": round(e, 3)}
        for k, (c, e) in total.items()
    ]
    return sorted(rows, key=lambda r: (-r["energy_pj"], r["what"], str(r["bits"])))


def _timesteps(workload: pricing.Workload) -> dict:
    """The TTFS sources by window, against 8-bit single spikes, and the end-to-end chain."""
    windows: dict[tuple, int] = collections.Counter()
    for source in workload.sources.values():
        if source.spiking:
            windows[(source.bits, source.signed, source.window, source.window8)] += 1
    layers = [
        {"bits": bits, "signed": signed, "window": window, "window_8bit": window8, "sources": count,
         "reduction": round(1 - window / window8, 6)}
        for (bits, signed, window, window8), count in sorted(windows.items())
    ]
    return {"spiking_sources": layers, **workload.timesteps}


def _neurobench(workload: pricing.Workload) -> dict:
    """NeuroBench's names (Yik et al., "NeuroBench", Nature Communications 2025): activation
    sparsity of the spiking sources, and synaptic operations split into dense, effective MACs
    (multiplies performed: the integer path and the float products) and effective ACs (the
    spike path's accumulates), each with its widths."""
    neurons = spikes = 0
    dense = macs = acs = 0
    widths: dict[str, collections.Counter] = {"effective_macs": collections.Counter(), "effective_acs": collections.Counter()}
    for entry in workload.entries:
        c = entry.counts
        if entry.kind in ("source", "neuron"):
            neurons += c.get("neurons", 0)
            spikes += c.get("spikes", 0)
        if entry.kind == "spike":
            p = workload.products[entry.name]
            dense += c.get("dense_macs", 0)
            acs += c.get("accumulates", 0)
            widths["effective_acs"][f"{p.source.event_bits}-bit spike x {p.right_operand_bits}-bit synapse"] += c.get("accumulates", 0)
        if entry.kind == "integer":
            p = workload.products[entry.name]
            macs += c.get("int_macs", 0)
            widths["effective_macs"][f"int8 x int{p.right_operand_bits}"] += c.get("int_macs", 0)
        if entry.kind == "float-product":
            dense += c.get("float_macs", 0)
            macs += c.get("float_macs", 0)
            widths["effective_macs"]["float x float"] += c.get("float_macs", 0)
    return {
        "activation_sparsity": round(1 - spikes / neurons, 6) if neurons else None,
        "synaptic_operations": {"dense": dense, "effective_macs": macs, "effective_acs": acs},
        "by_width": {k: dict(sorted(v.items())) for k, v in widths.items()},
    }


def _literature(neurobench: dict, preset: Preset) -> dict:
    """The count most SNN papers publish: effective ACs at E_AC and effective MACs at E_MAC,
    against the dense MACs at E_MAC; no widths, no memory. E_AC and E_MAC are the preset's
    32-bit float add and multiply plus add (Horowitz's 0.9 and 4.6 pJ in both shipped presets)."""
    e_ac = preset.energy("float_add", 32)
    e_mac = preset.energy("float_mult", 32) + e_ac
    ops = neurobench["synaptic_operations"]
    snn = ops["effective_acs"] * e_ac + ops["effective_macs"] * e_mac
    ann = ops["dense"] * e_mac
    return {"e_ac_pj": e_ac, "e_mac_pj": e_mac, "snn_pj": round(snn, 3), "ann_pj": round(ann, 3),
            "reduction": _fraction(snn, ann)}


def _rounded(terms: dict[str, float]) -> dict[str, float]:
    return {t: round(v, 3) for t, v in terms.items()}


def _layer_key(layer: str):
    return (0, int(layer)) if layer.isdigit() else (1, 0)


# Text ---------------------------------------------------------------------------------------------


def tables(report: dict) -> str:
    """The report as text tables, energies in nanojoules per token."""
    tokens = report["workload"]["tokens"]
    nj = lambda pj: pj / tokens / 1000.0  # noqa: E731
    w, p = report["workload"], report["preset"]
    lines = [
        f"energy per token over {w['tokens']:,} tokens ({w['runs']} run(s), counted in the {w['mode']} mode), "
        f"preset {p['name']}: {p['title']}; non-spiking ops at fp{report['float_bits']}",
        "",
    ]
    names = list(report["networks"])
    for term, label in (("compute", "compute only"), ("both", "compute + memory")):
        def value(terms):
            return terms["compute"] + (terms["memory"] if term == "both" else 0.0)
        rows = []
        for name in names:
            n = report["networks"][name]
            cells = [f"{nj(value(n['categories_pj'][c])):,.1f}" for c in pricing.CATEGORIES]
            reduction = "" if name == "kirin" else _percent(report["reduction"][name]["total"][
                "compute" if term == "compute" else "with_memory"])
            rows.append([name, n["title"], *cells, f"{nj(value(n['total_pj'])):,.1f}", reduction])
        lines.append(f"// energy, {label} (nJ per token) //")
        lines.append(_table(["network", "", *pricing.CATEGORIES.values(), "total", "Kirin saves"], rows))
        lines.append("")
    for key, label in (("compute", "compute only"), ("with_memory", "compute + memory")):
        rows = [
            [name, *(_percent(r[c][key]) for c in pricing.CATEGORIES), _percent(r["total"][key])]
            for name, r in report["reduction"].items()
        ]
        lines.append(f"// Kirin's energy reduction against each baseline, {label} //")
        lines.append(_table(["baseline", *pricing.CATEGORIES.values(), "total"], rows))
        lines.append("")
    lines += _layer_table(report, nj) + [""] + _step_tables(report) + [""] + _neurobench_table(report)
    lit = report["literature"]
    ops = report["neurobench"]["synaptic_operations"]
    per_token = {key: round(value / tokens) for key, value in ops.items()}
    lines += [
        "",
        "// the SNN literature's count: ACs at E_AC, MACs at E_MAC; compute only, no widths, no memory //",
        f"per token: {per_token['effective_acs']:,} effective ACs x {lit['e_ac_pj']:g} pJ + "
        f"{per_token['effective_macs']:,} effective MACs x {lit['e_mac_pj']:g} pJ = {nj(lit['snn_pj']):,.1f} nJ, "
        f"against {per_token['dense']:,} dense MACs x {lit['e_mac_pj']:g} pJ = {nj(lit['ann_pj']):,.1f} nJ: "
        f"{_percent(lit['reduction'])} less",
    ]
    lines += [""] + _work_table(report, nj)
    return "\n".join(lines)


def _layer_table(report: dict, nj) -> list[str]:
    kirin = report["networks"]["kirin"]["layers_pj"]
    steps = report["timesteps"]
    rows = []
    for layer, terms in kirin.items():
        rows.append([
            layer, f"{nj(terms['compute']):,.1f}", f"{nj(terms['memory']):,.1f}",
            f"{nj(terms['compute'] + terms['memory']):,.1f}",
            str(steps["per_layer"].get(layer, "")), str(steps["baseline_8bit_per_layer"].get(layer, "")),
        ])
    return ["// Kirin per layer (nJ per token; head: what follows the last layer) //",
            _table(["layer", "compute", "memory", "total", "steps", "8-bit steps"], rows)]


def _step_tables(report: dict) -> list[str]:
    t = report["timesteps"]
    rows = [
        [f"{'signed' if s['signed'] else 'unsigned'} {s['bits']}-bit codes", str(s["sources"]), str(s["window"]),
         str(s["window_8bit"]), _percent(s["reduction"], 2)]
        for s in t["spiking_sources"]
    ]
    return [
        "// time steps: TTFS windows against 8-bit single-spike coding //",
        _table(["spiking sources", "count", "steps", "8-bit steps", "fewer"], rows),
        f"end to end: {t['total']} steps, {t['baseline_8bit_total']} with 8-bit single spikes "
        f"({_percent(t['reduction'], 2)} fewer)",
    ]


def _neurobench_table(report: dict) -> list[str]:
    nb = report["neurobench"]
    ops = nb["synaptic_operations"]
    rows = [["activation sparsity", _percent(nb["activation_sparsity"]), "of the TTFS neurons are silent"],
            ["synaptic operations: dense", f"{ops['dense']:,}", "every product computed densely"]]
    for key, label in (("effective_macs", "effective MACs"), ("effective_acs", "effective ACs")):
        rows.append([f"synaptic operations: {label}", f"{ops[key]:,}", ""])
        rows += [[f"  {width}", f"{count:,}", ""] for width, count in nb["by_width"][key].items()]
    return ["// NeuroBench metrics (counted runs) //", _table(["metric", "value", ""], rows)]


def _work_table(report: dict, nj) -> list[str]:
    total = sum(r["energy_pj"] for r in report["work"]) or 1.0
    rows = []
    for r in report["work"][:12]:
        width = f"{r['bits']:g}" + (f"x{r['by']}" if r["by"] else "")
        kind = r["traffic"] or r["op"]
        rows.append([r["what"], kind, width, f"{r['count'] / report['workload']['tokens']:,.0f}",
                     f"{nj(r['energy_pj']):,.1f}", f"{100 * r['energy_pj'] / total:.1f}%"])
    return [f"// Kirin's energy by kind of work (the largest 12 of {len(report['work'])}) //",
            _table(["work", "op or memory", "bits", "per token", "nJ/token", "share"], rows)]


def _table(header: list[str], rows: list[list[str]]) -> str:
    return format_table([header, *rows]).rstrip("\n")


def _percent(fraction: float | None, digits: int = 1) -> str:
    return "-" if fraction is None else f"{round(100 * fraction, digits) + 0.0:.{digits}f}%"  # no -0.0


def comparison(reports: list[dict]) -> str:
    """Kirin's total reduction against each baseline, compute only and with the memory term,
    under each report's preset (the reports are of one model)."""
    header = ["baseline"]
    for r in reports:
        header += [f"{r['preset']['name']}: compute", "+ memory"]
    rows = []
    for name, network in reports[0]["networks"].items():
        if name == "kirin":
            continue
        row = [f"{name}: {network['title']}"]
        for r in reports:
            total = r["reduction"][name]["total"]
            row += [_percent(total["compute"]), _percent(total["with_memory"])]
        rows.append(row)
    literature = reports[0]["literature"]["reduction"]
    return _table(header, rows) + (
        f"\nthe SNN literature's count (effective ACs at E_AC and MACs at E_MAC, against the dense "
        f"MACs): {_percent(literature)} less"
    )
