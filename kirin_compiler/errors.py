"""Errors a user can cause, and how they reach the command line.

`KirinError` carries one line that says what was wrong, where, and what to do. The CLI prints it
as ``kirinc: error: <message>`` and exits with status 2. Anything else escaping a pass is a bug
in that pass, reported by `PassFailedError` with the passes that ran before it.
"""

from __future__ import annotations


class KirinError(Exception):
    """A problem with the user's input, options or environment: one clear line."""


class UnsupportedOpError(KirinError):
    """A node the pipeline cannot handle."""

    def __init__(self, node_name: str, op: str, why: str) -> None:
        super().__init__(f"node '{node_name}' ({op}): {why}")


class PassFailedError(KirinError):
    """A pass raised, or left an IR that does not verify."""

    def __init__(self, pass_name: str, ran_before: list[str], why: str) -> None:
        before = ", ".join(ran_before) if ran_before else "nothing"
        super().__init__(f"pass '{pass_name}' failed (after: {before}): {why}")
        self.pass_name = pass_name
