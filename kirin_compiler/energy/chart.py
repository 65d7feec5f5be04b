"""The energy report as a picture: the networks compared, and where the compiled one's energy goes.

Two panels: energy per token of the compiled network and each baseline, compute only and with
the memory term (a log scale: the rate-coded network is an order of magnitude above the rest);
and the compiled network's energy by kind of work. PNG or SVG by the file's suffix, byte for
byte the same on every run of the same report.
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")  # files only, no screen

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import StrMethodFormatter  # noqa: E402

FORMATS = (".png", ".svg")
_WORK_BARS = 10


def draw(report: dict, path: pathlib.Path, kind: str) -> None:
    """Writes the chart of ``report`` (`report.build`) to ``path``, as ``kind`` (png or svg)."""
    tokens = report["workload"]["tokens"]
    networks = report["networks"]
    with plt.rc_context({"svg.hashsalt": "kirin", "font.size": 9}):
        figure, (compare, breakdown) = plt.subplots(
            2, 1, figsize=(9, 8.5), layout="constrained", height_ratios=(len(networks), _WORK_BARS)
        )
        _comparison(compare, networks, tokens, report["preset"]["name"])
        _breakdown(breakdown, report["work"], tokens)
        metadata = {"Date": None} if kind == "svg" else {"Software": None}
        figure.savefig(path, format=kind, dpi=120, metadata=metadata)
        plt.close(figure)


def _comparison(axes, networks: dict, tokens: int, preset: str) -> None:
    names = list(networks)[::-1]  # the compiled network on top
    rows = range(len(names))
    compute = [networks[n]["total_pj"]["compute"] / tokens / 1000 for n in names]
    total = [c + networks[n]["total_pj"]["memory"] / tokens / 1000 for c, n in zip(compute, names)]
    height = 0.38
    axes.barh([r + height / 2 for r in rows], compute, height, label="compute only", color="#3a78b5")
    axes.barh([r - height / 2 for r in rows], total, height, label="compute + memory", color="#e08a2c")
    for r, (c, t) in enumerate(zip(compute, total)):
        axes.text(c, r + height / 2, f" {c:,.0f}", va="center", fontsize=8)
        axes.text(t, r - height / 2, f" {t:,.0f}", va="center", fontsize=8)
    axes.set_yticks(list(rows), [networks[n]["title"] for n in names])
    axes.set_xscale("log")
    axes.set_xlim(min(compute) / 2, max(total) * 4)  # room for the labels
    axes.set_xlabel("energy per token (nJ, log scale)")
    axes.set_title(f"The compiled network against its baselines (preset {preset})")
    axes.legend(loc="upper right")
    axes.grid(axis="x", which="major", alpha=0.3)


def _breakdown(axes, work: list[dict], tokens: int) -> None:
    rows = work[:_WORK_BARS]
    rest = sum(r["energy_pj"] for r in work[_WORK_BARS:])
    labels = [_label(r) for r in rows] + (["everything else"] if rest else [])
    values = [r["energy_pj"] / tokens / 1000 for r in rows] + ([rest / tokens / 1000] if rest else [])
    colors = ["#e08a2c" if r["traffic"] else "#3a78b5" for r in rows] + (["#999999"] if rest else [])
    total = sum(values) or 1.0
    positions = range(len(values))[::-1]
    axes.barh(list(positions), values, color=colors)
    for y, v in zip(positions, values):
        axes.text(v, y, f" {v:,.1f} ({100 * v / total:.1f}%)", va="center", fontsize=8)
    axes.set_yticks(list(positions), labels)
    axes.set_xlim(0, max(values) * 1.3)
    axes.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    axes.set_xlabel("energy per token (nJ)")
    axes.set_title("Where the compiled network's energy goes (the largest kinds of work)")
    axes.barh([0], [0], color="#3a78b5", label="compute")
    axes.barh([0], [0], color="#e08a2c", label="memory")
    axes.legend(loc="lower right")
    axes.grid(axis="x", alpha=0.3)


def _label(row: dict) -> str:
    width = f"{row['bits']:g}" + (f"x{row['by']}" if row["by"] else "")
    return f"{row['what']} ({width} bit)"
