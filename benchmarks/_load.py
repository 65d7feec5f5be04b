"""The machine's load, printed beside every timing: figures from a busy machine are not quoted."""

from __future__ import annotations

import os


def machine_load() -> str:
    """``load 0.52 / 2 cores`` (the one-minute load average, and the cores there are)."""
    return f"load {os.getloadavg()[0]:.2f} / {os.cpu_count()} cores"
