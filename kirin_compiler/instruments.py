"""Pass instruments: printing, diffing, dumping and timing around passes (as in TVM and MLIR),
kept out of the passes themselves."""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import pathlib
from typing import Sequence, TextIO

import onnx_ir as ir

from kirin_compiler import files
from kirin_compiler.errors import KirinError
from kirin_compiler.format import atomic_path, save_model
from kirin_compiler.pass_manager import PassRecord, node_count
from kirin_compiler.printer import format_model

MANIFEST = "manifest.json"


def _banner(title: str) -> str:
    return f"// ----- {title} ----- //\n"


class PrintIR:
    """Prints the IR after every pass, or after the passes named in ``after``."""

    def __init__(self, stream: TextIO, after: Sequence[str] | None = None) -> None:
        self.stream = stream
        self.after = set(after) if after is not None else None

    def run_started(self, model: ir.Model) -> None:
        pass

    def pass_finished(self, record: PassRecord, model: ir.Model) -> None:
        if self.after is None or record.name in self.after:
            changed = "" if record.modified else " (unchanged)"
            self.stream.write(_banner(f"IR after {record.index:02d} {record.name}{changed}"))
            self.stream.write(format_model(model))

    def run_finished(self, records: Sequence[PassRecord], model: ir.Model) -> None:
        pass


class PrintChanged:
    """Prints a unified diff of the IR dump for every pass that changed it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._previous = ""
        self._previous_label = "00_input"

    def run_started(self, model: ir.Model) -> None:
        self._previous = format_model(model)

    def pass_finished(self, record: PassRecord, model: ir.Model) -> None:
        label = f"{record.index:02d}_{record.name}"
        if record.modified:
            current = format_model(model)
            self.stream.write(_banner(f"IR changed by {label}"))
            self.stream.writelines(
                difflib.unified_diff(
                    self._previous.splitlines(keepends=True),
                    current.splitlines(keepends=True),
                    fromfile=self._previous_label,
                    tofile=label,
                )
            )
            self._previous, self._previous_label = current, label
        else:
            self.stream.write(_banner(f"{label} left the IR unchanged"))

    def run_finished(self, records: Sequence[PassRecord], model: ir.Model) -> None:
        pass


class DumpDir:
    """Writes ``00_input.txt``/``.onnx``, ``01_<pass>.txt``/``.onnx``, ... and ``manifest.json``.

    The manifest is rewritten after every file, so that a run that fails halfway leaves a
    folder that says what it holds (and can be reused). It records the sha256 of every file
    written. A folder is only ever reused if it is empty or holds an earlier dump; the files of
    the earlier dump are removed only when they are still what it wrote (their sha256) and the
    run does not read them; otherwise the run is refused before it writes anything. Nothing
    else in the folder is touched.
    """

    def __init__(self, folder: str | pathlib.Path) -> None:
        self.folder = pathlib.Path(folder)
        check_dump_dir(self.folder)
        self._manifest: dict = {"tool": "kirin_compiler", "input": {}, "passes": [], "sha256": {}}

    def run_started(self, model: ir.Model) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            reason = error.strerror or error
            raise KirinError(f"cannot create --dump-dir '{self.folder}': {reason}") from None
        self._remove_previous_dump()
        self._manifest["input"] = {"files": self._write("00_input", model), "nodes": node_count(model)}
        self._write_manifest()

    def pass_finished(self, record: PassRecord, model: ir.Model) -> None:
        entry = dataclasses.asdict(record)
        entry["seconds"] = round(record.seconds, 6)
        entry["files"] = self._write(f"{record.index:02d}_{record.name}", model)
        self._manifest["passes"].append(entry)
        self._write_manifest()

    def run_finished(self, records: Sequence[PassRecord], model: ir.Model) -> None:
        pass

    def _write(self, stem: str, model: ir.Model) -> list[str]:
        text = self.folder / f"{stem}.txt"
        with atomic_path(text) as temporary:
            temporary.write_text(format_model(model))
        self._written(text)  # listed at once: a run that fails next leaves no file unlisted
        written = [text, *save_model(model, self.folder / f"{stem}.onnx")]
        for path in written[1:]:
            self._written(path)
        return [path.name for path in written]

    def _written(self, path: pathlib.Path) -> None:
        self._manifest["sha256"][path.name] = _sha256(path)
        self._write_manifest()

    def _write_manifest(self) -> None:
        with atomic_path(self.folder / MANIFEST) as temporary:
            temporary.write_text(json.dumps(self._manifest, indent=2) + "\n")

    def _remove_previous_dump(self) -> None:
        """Removes the earlier dump's files, after checking every one of them: a file the run
        reads, or one that is no longer what the earlier dump wrote, stops the run."""
        manifest = self.folder / MANIFEST
        if not manifest.exists():
            return
        try:
            previous = json.loads(manifest.read_text())
            entries = [previous.get("input", {})] + list(previous.get("passes", []))
            digests = dict(previous.get("sha256", {}))
            listed = [pathlib.Path(f).name for entry in entries for f in entry.get("files", [])]
            # and the files a failed run wrote before it could list them in an entry
            listed += sorted({pathlib.Path(f).name for f in digests} - set(listed))
        except (ValueError, TypeError, AttributeError):
            raise KirinError(
                f"--dump-dir '{self.folder}': its {MANIFEST} is malformed; choose another folder"
            ) from None
        removable = []
        for name in listed:
            path = self.folder / name
            if not path.exists() and not path.is_symlink():
                continue
            if files.reads(path):
                raise KirinError(
                    f"--dump-dir '{self.folder}' holds '{path}', which this run reads; "
                    "choose another folder"
                )
            if path.is_symlink() or not path.is_file() or digests.get(name) != _sha256(path):
                raise KirinError(
                    f"--dump-dir '{self.folder}': '{path}' is not the file the earlier dump "
                    "wrote (changed, or written by hand); move it or choose another folder"
                )
            removable.append(path)
        for path in [*removable, manifest]:
            path.unlink(missing_ok=True)


def _sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_dump_dir(folder: pathlib.Path) -> None:
    """Refuses a folder that holds anything but an earlier kirin dump."""
    if folder.exists() and not folder.is_dir():
        raise KirinError(f"--dump-dir '{folder}' is a file, not a folder")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    manifest = folder / MANIFEST
    try:
        is_dump = json.loads(manifest.read_text()).get("tool") == "kirin_compiler"
    except (OSError, ValueError, AttributeError):
        is_dump = False
    if not is_dump:
        raise KirinError(
            f"--dump-dir '{folder}' is not empty and holds no earlier kirin dump; "
            "choose an empty or new folder"
        )


class TimePasses:
    """Prints a table of wall time per pass at the end of the run."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def run_started(self, model: ir.Model) -> None:
        pass

    def pass_finished(self, record: PassRecord, model: ir.Model) -> None:
        pass

    def run_finished(self, records: Sequence[PassRecord], model: ir.Model) -> None:
        total = sum(r.seconds for r in records) or 1e-12
        rows = [("#", "pass", "seconds", "share", "nodes", "modified")]
        for r in records:
            rows.append(
                (
                    f"{r.index:02d}",
                    r.name,
                    f"{r.seconds:.3f}",
                    f"{100 * r.seconds / total:.1f}%",
                    f"{r.nodes_before} -> {r.nodes_after}",
                    "yes" if r.modified else "no",
                )
            )
        rows.append(("", "total", f"{sum(r.seconds for r in records):.3f}", "100.0%", "", ""))
        self.stream.write(_banner("pass timing"))
        self.stream.write(format_table(rows))


def format_table(rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned text columns, numbers right-aligned; the first row is the header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]

    def cell(text: str, width: int) -> str:
        numeric = text[:1].isdigit() or text[:1] == "-" and text[1:2].isdigit()
        return text.rjust(width) if numeric else text.ljust(width)

    lines = ["  ".join(cell(c, w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"
