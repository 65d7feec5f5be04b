"""``kirinc``: the command-line driver, one module per command.

``main(argv) -> int`` is what the console script and ``python -m kirin_compiler`` call, and
what tests call in-process. It hands the arguments to the command's module (`compile`, the
default, `inspect`, `run`, `verify`, `evaluate`, `generate`, `report`), each with a
``main(argv) -> int`` of its own.
Errors a user can cause print one line, ``kirinc: error: <what, where, what to do>``, and exit
with status 2; no output file is left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import logging
import sys
import warnings
from typing import Sequence

from kirin_compiler import files
from kirin_compiler.errors import KirinError, PassFailedError

# command -> module (imported only when its command runs: torch loads in seconds)
COMMANDS = {
    "compile": "compile",
    "inspect": "inspect",
    "run": "run",
    "verify": "verify",
    "eval": "evaluate",
    "generate": "generate",
    "report": "report",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _return_freed_memory()
    command = argv[0] if argv and argv[0] in COMMANDS else None
    module = importlib.import_module(f"kirin_compiler.cli.{COMMANDS[command or 'compile']}")
    try:
        with files.session(), _libraries_quiet():  # what the command reads, protected from what it writes
            return module.main(argv[1:] if command else argv)
    except PassFailedError as error:
        print(f"kirinc: error: {error}", file=sys.stderr)
        return 1
    except KirinError as error:
        print(f"kirinc: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: outputs are written atomically, so none is left half-done
        print("kirinc: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (kirinc ... | head): not an error of ours
        sys.stderr.close()
        return 0


@contextlib.contextmanager
def _libraries_quiet():
    """Keeps the libraries' log records and warnings (onnx_ir's "The model is invalid but we
    will still ...", torch's beta notices) off the terminal: kirinc reports what went wrong
    itself, in one line."""
    logger = logging.getLogger("onnx_ir")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _return_freed_memory() -> None:
    """Makes glibc's malloc serve large blocks (4 MiB and up) from their own memory maps and
    trim freed memory past 4 MiB, so that activations freed after each forward go back to the
    system instead of fragmenting the heap (glibc otherwise raises its threshold as blocks are
    freed): compiling SmolLM2 peaked at 1.23 GB instead of 1.69 GB, for about 10% more time.
    Without glibc nothing changes."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(_M_MMAP_THRESHOLD, 4 << 20)
        libc.mallopt(_M_TRIM_THRESHOLD, 4 << 20)
    except (OSError, AttributeError):
        pass


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
