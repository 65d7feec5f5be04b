"""Runs the ONNX conformance node tests against the torch backend and prints, per operator, how
many cases pass, are skipped and fail: the table in docs/backends.md. Run::

    .venv/bin/python scripts/conformance_report.py
"""

from __future__ import annotations

import collections
import contextlib
import io
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


class _Outcomes:
    def __init__(self) -> None:
        self.by_case: dict[str, str] = {}

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or (report.when == "setup" and report.skipped):
            name = report.nodeid.rsplit("::", 1)[-1].removesuffix("_cpu")
            self.by_case[name] = report.outcome


def main() -> int:
    outcomes = _Outcomes()
    with contextlib.redirect_stdout(io.StringIO()):  # the report is the only output
        pytest.main(["-q", "-p", "no:cacheprovider", str(REPO / "tests" / "test_onnx_conformance.py")],
                    plugins=[outcomes])
    sys.path.insert(0, str(REPO / "tests"))
    from onnx.backend.test.loader import load_model_tests

    from kirin_compiler.backends.torch_ops import OPS

    counts: dict[str, collections.Counter] = {op: collections.Counter() for op in OPS}
    for case in load_model_tests(kind="node"):
        outcome = outcomes.by_case.get(case.name)
        if outcome is None:
            continue
        for op in {node.op_type for node in case.model.graph.node}:
            counts[op][outcome] += 1
    total = collections.Counter(outcomes.by_case.values())
    print(f"{len(OPS)} operators; {len(outcomes.by_case)} conformance cases: "
          f"{total['passed']} passed, {total['skipped']} skipped, {total['failed']} failed\n")
    print("| operator | passed | skipped | failed |")
    print("| --- | ---: | ---: | ---: |")
    for op, counter in counts.items():
        print(f"| {op} | {counter['passed']} | {counter['skipped']} | {counter['failed']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
