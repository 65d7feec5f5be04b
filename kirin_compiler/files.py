"""What a command reads, so that nothing it writes replaces it.

A ``kirinc`` command runs inside a `session`. Everything it reads (the model and its weight
files, token ids and texts, the tokenizer, plugin sources) is recorded there with `read`, and
every file it writes is checked with `check_output`: before any work (the commands check their
outputs early) and again when the file is written (`format.atomic_path`). A target is refused
when it is a file the command reads (by identity: a symlink or a hard link to an input is the
input), or when it exists and is not a regular file (a FIFO, a device, a socket: writing
would replace the node with a regular file). Outside a session nothing is recorded; the
outputs are still refused when they are not regular files.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import pathlib
import stat
from typing import Iterator

from kirin_compiler.errors import KirinError

_Identity = tuple[int, int]  # (device, inode)

_reads: contextvars.ContextVar[dict[_Identity, str] | None] = contextvars.ContextVar(
    "kirin_reads", default=None
)


@contextlib.contextmanager
def session() -> Iterator[None]:
    """Records the files read from here on, and protects them from the outputs."""
    token = _reads.set({})
    try:
        yield
    finally:
        _reads.reset(token)


def read(path: str | os.PathLike, what: str) -> pathlib.Path:
    """Records that the command reads ``path`` (``what`` it is, for the error message)."""
    path = pathlib.Path(path)
    reads = _reads.get()
    identity = _identity(path)
    if reads is not None and identity is not None:
        reads.setdefault(identity, f"{what} '{path}'")
    return path


def check_output(path: str | os.PathLike) -> None:
    """Refuses to write ``path`` over a file the command reads, or over anything but a
    regular file."""
    path = pathlib.Path(path)
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # nothing there (or a dangling link): a new file
    if stat.S_ISDIR(mode):
        raise KirinError(f"output path '{path}' is a directory; give a file name")
    if not stat.S_ISREG(mode):
        raise KirinError(
            f"output path '{path}' is not a regular file (a FIFO, a device or a socket); "
            "give the name of a file to write"
        )
    source = (_reads.get() or {}).get(_identity(path))
    if source is not None:
        raise KirinError(f"writing '{path}' would replace {source}, which this run reads; "
                         "choose another output name")


def reads(path: str | os.PathLike) -> bool:
    """Whether the command reads ``path``."""
    return _identity(pathlib.Path(path)) in (_reads.get() or {})


def _identity(path: pathlib.Path) -> _Identity | None:
    try:
        status = path.stat()
    except OSError:
        return None
    return status.st_dev, status.st_ino
