"""aop's own console, and a log file for what other libraries print.

Everything aop says to the user goes through :data:`out` (progress, results) and :data:`err`
(warnings, errors), two rich consoles. While a long command runs, :func:`library_output_to`
sends what other libraries print to a log file instead: Ray's, Tune's, Lightning's and MLflow's
log lines and warnings, the native (C++) lines Ray's core writes straight to the process's standard
streams, and the output of the processes a local Ray starts. aop's two consoles keep writing to the
terminal (or pipe) the command was started from. Warnings that aop issues itself stay on the
console, as one ``warning:`` line each.

Example
-------
>>> from aop import console
>>> with console.library_output_to(None):    # no file: libraries print as usual
...     console.out.print("aop: step 1 done", highlight=False)
aop: step 1 done
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from rich.console import Console

__all__ = ["err", "is_terminal", "library_output_to", "out", "say"]

#: aop's standard output: progress and results.
out = Console(highlight=False, soft_wrap=True)
#: aop's error output: warnings and errors.
err = Console(stderr=True, highlight=False, soft_wrap=True)


def say(message: str) -> None:
    """One plain line of aop's own on the console (a step, a finished search)."""
    out.print(message, markup=False)


def is_terminal() -> bool:
    """Whether aop's output goes to a terminal (live progress) or a file or pipe (plain lines)."""
    return bool(out.is_terminal)


def _real_fd(stream: Any, fd: int) -> bool:
    try:
        return stream is not None and stream.fileno() == fd
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


@contextlib.contextmanager
def library_output_to(path: str | os.PathLike | None) -> Iterator[Path | None]:
    """Send other libraries' output to the log file ``path`` for the duration of the block.

    Parameters
    ----------
    path : path-like or None
        The log file (appended to; its folder is created). ``None`` changes nothing (``--verbose``).

    Yields
    ------
    Path or None
        The log file.

    Notes
    -----
    File descriptors 1 and 2 point at the log file inside the block, so that native code and child
    processes write there too; ``sys.stdout``, ``sys.stderr`` and Python's warnings as well. aop's
    consoles :data:`out` and :data:`err` write to copies of the original streams.
    """
    if path is None:
        yield None
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    streams = {1: sys.stdout, 2: sys.stderr}
    for stream in streams.values():
        with contextlib.suppress(Exception):
            stream.flush()
    log = open(path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
    saved: dict[int, int] = {}
    kept: dict[int, IO[str]] = {}
    for fd, stream in streams.items():
        if _real_fd(stream, fd):  # a terminal, file or pipe: keep a copy for aop's consoles
            saved[fd] = os.dup(fd)
            kept[fd] = os.fdopen(os.dup(saved[fd]), "w", buffering=1, encoding="utf-8")
            os.dup2(log.fileno(), fd)
        else:  # a stream object without that descriptor (a test runner's capture): keep it
            kept[fd] = stream
    files = out.file, err.file
    out.file, err.file = kept[1], kept[2]
    sys.stdout = sys.stderr = log
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if _from_aop(filename):
            err.print(f"warning: {message}", markup=False)
        else:
            log.write(warnings.formatwarning(message, category, filename, lineno, line))

    warnings.showwarning = show
    try:
        yield path
    finally:
        warnings.showwarning = shown
        sys.stdout, sys.stderr = streams[1], streams[2]
        out.file, err.file = files
        with contextlib.suppress(Exception):
            log.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
            kept[fd].close()
        log.close()


def _from_aop(filename: str) -> bool:
    """Whether a warning was issued by aop's own code (its file lies in the package)."""
    package = Path(__file__).resolve().parent
    try:
        return Path(filename).resolve().is_relative_to(package)
    except (OSError, ValueError):
        return False
