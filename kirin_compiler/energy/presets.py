"""Energy presets: named constants, each with its unit, bit width, technology node and source.

A preset is a TOML file (the shipped ones are in ``presets/``; ``docs/energy.md`` has the
schema):

- ``name`` and ``title``;
- ``[[constant]]`` entries: ``name``, ``op`` (one of `OPS`), ``bits``, ``energy``, ``unit``
  (``fJ``, ``pJ`` or ``nJ``), ``node`` (the technology) and ``source``;
- ``[memory]``: for each kind of traffic (`TRAFFIC`), the name of the ``memory_read`` constant
  it is priced with;
- ``scaling`` (optional): ``"none"`` (the default) or ``"width"``.

An operation of width ``w`` is priced with the constant of its op whose ``bits`` ``n`` is the
smallest at least ``w`` (an adder that wide does the job), or with the widest if none is that
wide. With ``scaling = "width"`` an operation costs its share of that constant: an add
``w / n`` of it, a multiply of ``a``- by ``b``-bit operands ``a * b / n^2`` (an array
multiplier's partial products). A memory constant's ``bits`` is its word width: traffic is
priced per bit.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from importlib import resources
from pathlib import Path

from kirin_compiler.errors import KirinError

OPS = ("int_add", "int_mult", "float_add", "float_mult", "memory_read")
TRAFFIC = ("weights", "activations", "membranes")
UNITS = {"fJ": 1e-3, "pJ": 1.0, "nJ": 1e3}  # to pJ
SCALINGS = ("none", "width")
_FIELDS = {"name": str, "op": str, "bits": int, "energy": (int, float), "unit": str, "node": str, "source": str}

DEFAULT = "horowitz-45nm"


@dataclasses.dataclass(frozen=True)
class Constant:
    """One priced operation: ``energy`` picojoules for an ``op`` of ``bits`` bits."""

    name: str
    op: str
    bits: int
    energy: float  # pJ
    unit: str  # as the file gave it
    node: str
    source: str


@dataclasses.dataclass(frozen=True)
class Preset:
    name: str
    title: str
    constants: tuple[Constant, ...]
    memory: dict[str, str]  # traffic kind -> memory_read constant name
    scaling: str  # "none" or "width"
    path: str  # where it was read from

    def constant(self, op: str, bits: int) -> Constant:
        """The constant an ``op`` of width ``bits`` is priced with."""
        widths = sorted((c for c in self.constants if c.op == op), key=lambda c: c.bits)
        return next((c for c in widths if c.bits >= bits), widths[-1])

    def energy(self, op: str, bits: int, by: int = 0) -> float:
        """picojoules of one ``op`` of ``bits`` bits (a multiply: by ``by`` bits, default the same)."""
        c = self.constant(op, bits)
        if self.scaling == "none":
            return c.energy
        share = bits * (by or bits) / c.bits**2 if op.endswith("mult") else bits / c.bits
        return c.energy * share

    def per_bit(self, traffic: str) -> Constant:
        """The memory constant ``traffic`` is priced with (its energy is per ``bits``-bit word)."""
        return next(c for c in self.constants if c.name == self.memory[traffic])

    def describe(self) -> list[dict]:
        """Every constant, for the report's JSON."""
        return [dataclasses.asdict(c) for c in self.constants]


def names() -> list[str]:
    """The shipped presets."""
    return sorted(p.name.removesuffix(".toml") for p in _folder().iterdir() if p.name.endswith(".toml"))


def load(spec: str) -> Preset:
    """A shipped preset by name, or a preset file (a path, or anything ending in ``.toml``)."""
    if spec in names():
        path = _folder() / f"{spec}.toml"
        return parse(path.read_text(encoding="utf-8"), f"preset {spec}")
    if not (spec.endswith(".toml") or Path(spec).exists()):
        raise KirinError(f"--preset {spec}: no such preset; use one of {', '.join(names())} or a TOML file")
    try:
        text = Path(spec).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise KirinError(f"preset {spec}: cannot read it ({getattr(error, 'strerror', None) or error})") from None
    return parse(text, f"preset {spec}")


def parse(text: str, where: str) -> Preset:
    """A preset from its TOML text; ``where`` names it in errors."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise KirinError(f"{where}: not valid TOML: {error}") from None
    for key in ("name", "title"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise KirinError(f"{where}: give '{key}' as a string at the top of the file")
    entries = data.get("constant")
    if not isinstance(entries, list) or not entries:
        raise KirinError(f"{where}: no [[constant]] entries")
    constants = tuple(_constant(entry, index, where) for index, entry in enumerate(entries, 1))
    seen: dict[tuple[str, int] | str, str] = {}
    for c in constants:  # memories differ by size, not width: only their names must differ
        for key in (c.name,) if c.op == "memory_read" else (c.name, (c.op, c.bits)):
            if key in seen:
                raise KirinError(f"{where}: constant '{c.name}' repeats {_what(key)} of constant '{seen[key]}'")
            seen[key] = c.name
    for op in OPS:
        if not any(c.op == op for c in constants):
            raise KirinError(f"{where}: no '{op}' constant; the pricing needs one of each of {', '.join(OPS)}")
    scaling = data.get("scaling", "none")
    if scaling not in SCALINGS:
        raise KirinError(f"{where}: scaling = {scaling!r} is not one of {', '.join(map(repr, SCALINGS))}")
    memory = _memory(data.get("memory"), constants, where)
    return Preset(data["name"], data["title"], constants, memory, scaling, where)


def _constant(entry, index: int, where: str) -> Constant:
    label = f"constant {entry.get('name')!r}" if isinstance(entry, dict) and "name" in entry else f"constant #{index}"
    if not isinstance(entry, dict):
        raise KirinError(f"{where}: {label} is not a table")
    for field, kind in _FIELDS.items():
        if field not in entry:
            raise KirinError(f"{where}: {label} has no '{field}'")
        value = entry[field]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise KirinError(f"{where}: {label}: '{field}' = {value!r} is not a {_type_name(kind)}")
    unknown = sorted(set(entry) - set(_FIELDS))
    if unknown:
        raise KirinError(f"{where}: {label}: unknown field '{unknown[0]}' (fields: {', '.join(_FIELDS)})")
    if entry["op"] not in OPS:
        raise KirinError(f"{where}: {label}: op '{entry['op']}' is not one of {', '.join(OPS)}")
    if entry["bits"] < 1:
        raise KirinError(f"{where}: {label}: bits = {entry['bits']} must be at least 1")
    if entry["unit"] not in UNITS:
        raise KirinError(f"{where}: {label}: unit '{entry['unit']}' is not an energy; use {', '.join(UNITS)}")
    energy = float(entry["energy"])
    if not math.isfinite(energy) or energy < 0:
        raise KirinError(f"{where}: {label}: energy = {entry['energy']} must be a number at least 0")
    return Constant(
        entry["name"], entry["op"], entry["bits"], energy * UNITS[entry["unit"]], entry["unit"],
        entry["node"], entry["source"],
    )


def _memory(table, constants: tuple[Constant, ...], where: str) -> dict[str, str]:
    if not isinstance(table, dict):
        raise KirinError(f"{where}: no [memory] table naming the memory_read constant of {', '.join(TRAFFIC)}")
    reads = {c.name for c in constants if c.op == "memory_read"}
    for traffic in TRAFFIC:
        name = table.get(traffic)
        if name is None:
            raise KirinError(f"{where}: [memory] has no '{traffic}'")
        if name not in reads:
            raise KirinError(f"{where}: [memory] {traffic} = {name!r} is not a memory_read constant ({', '.join(sorted(reads))})")
    unknown = sorted(set(table) - set(TRAFFIC))
    if unknown:
        raise KirinError(f"{where}: [memory] has unknown traffic '{unknown[0]}' (known: {', '.join(TRAFFIC)})")
    return {traffic: table[traffic] for traffic in TRAFFIC}


def _folder():
    return resources.files("kirin_compiler.energy") / "presets"


def _type_name(kind) -> str:
    return "number" if isinstance(kind, tuple) else {str: "string", int: "whole number"}[kind]


def _what(key) -> str:
    return "the name" if isinstance(key, str) else f"op {key[0]} at {key[1]} bits"
