"""aop's own console, and a log file for what other libraries print.

Everything aop says to the user goes through :data:`out` (progress, results) and :data:`err`
(warnings, errors), two rich consoles. While a long command runs, :func:`library_output_to`
sends what other libraries print to a log file instead: Ray's, Tune's, Lightning's and MLflow's
log lines and warnings, the native (C++) lines Ray's core writes straight to the process's standard
streams, and the output of the processes started meanwhile (a local Ray). aop's two consoles keep
writing to the terminal (or pipe) the command was started from. Warnings that aop issues itself
stay on the console, as one ``warning:`` line each.

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
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from rich.console import Console

__all__ = ["LibraryLog", "err", "is_terminal", "library_output_to", "out", "say"]

#: aop's standard output: progress and results.
out = Console()
#: aop's error output: warnings and errors.
err = Console(stderr=True)


def say(message: str) -> None:
    """One plain line of aop's own on the console (a step, a finished search)."""
    out.print(message, markup=False, highlight=False, soft_wrap=True)


def is_terminal() -> bool:
    """Whether aop's output goes to a terminal (live progress) or a file or pipe (plain lines)."""
    return bool(out.is_terminal)


def _real_fd(stream: Any, fd: int) -> bool:
    try:
        return stream is not None and stream.fileno() == fd
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False


def _from_aop(filename: str) -> bool:
    """Whether a warning was issued by aop's own code (its file lies in the package)."""
    try:
        return Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent)
    except (OSError, ValueError):
        return False


class LibraryLog:
    """The log file other libraries write to while :func:`library_output_to` is active."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._streams = {1: sys.stdout, 2: sys.stderr}
        for stream in self._streams.values():
            with contextlib.suppress(Exception):
                stream.flush()
        self._file = self._open(path)
        self._saved: dict[int, int] = {}
        kept: dict[int, IO[str]] = {}
        for fd, stream in self._streams.items():
            if _real_fd(stream, fd):  # a terminal, file or pipe: keep a copy for aop's consoles
                self._saved[fd] = os.dup(fd)
                kept[fd] = os.fdopen(os.dup(self._saved[fd]), "w", buffering=1, encoding="utf-8")
            else:  # a stream object without that descriptor (a test runner's capture): keep it
                kept[fd] = stream
        self._kept = kept
        self._consoles = out._file, err._file  # what they wrote to (None: the current sys stream)
        out.file, err.file = kept[1], kept[2]
        self._point_at(self._file)
        self._shown = warnings.showwarning
        warnings.showwarning = self._show

    @staticmethod
    def _open(path: Path) -> IO[str]:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115

    def _point_at(self, file: IO[str]) -> None:
        for fd in self._saved:
            os.dup2(file.fileno(), fd)
        sys.stdout = sys.stderr = file

    def _show(self, message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if _from_aop(filename):
            err.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)
        else:
            self._file.write(warnings.formatwarning(message, category, filename, lineno, line))

    def move_to(self, path: str | os.PathLike, carry: bool = True) -> None:
        """Go on in ``path``; with ``carry`` it first receives what the log holds so far."""
        path = Path(path)
        if path.resolve() == self.path.resolve():
            return
        self._file.flush()
        new = self._open(path)
        if carry:
            with open(self.path, encoding="utf-8", errors="replace") as before:
                shutil.copyfileobj(before, new)
        self._point_at(new)
        self._file.close()
        self._file, self.path = new, path

    def close(self) -> None:
        """Give the standard streams back to what they were."""
        warnings.showwarning = self._shown
        sys.stdout, sys.stderr = self._streams[1], self._streams[2]
        out._file, err._file = self._consoles
        with contextlib.suppress(Exception):
            self._file.flush()
        for fd, copy in self._saved.items():
            os.dup2(copy, fd)
            os.close(copy)
            self._kept[fd].close()
        self._file.close()


class _NoLog:
    """What :func:`library_output_to` yields without a file: libraries print as usual."""

    path = None

    def move_to(self, path: str | os.PathLike, carry: bool = True) -> None:
        """Nothing to move."""


_active: list[LibraryLog] = []


@contextlib.contextmanager
def library_output_to(path: str | os.PathLike | None) -> Iterator[LibraryLog | _NoLog]:
    """Send other libraries' output to the log file ``path`` for the duration of the block.

    Parameters
    ----------
    path : path-like or None
        The log file (appended to; its folder is created). ``None`` changes nothing (``--verbose``).

    Yields
    ------
    LibraryLog
        The log; :meth:`LibraryLog.move_to` continues it in another file (e.g. once the study
        folder is claimed, a log begun in a temporary file moves there).

    Notes
    -----
    File descriptors 1 and 2 point at the log file inside the block, so that native code and
    child processes write there too; ``sys.stdout``, ``sys.stderr`` and other libraries' warnings
    as well. aop's consoles :data:`out` and :data:`err` write to copies of the original streams.
    A block inside another one writes its own file, then gives the outer block's back.
    """
    if path is None:
        yield _NoLog()
        return
    if _active:  # nested: this block's libraries write to its own file
        log = _active[-1]
        outer = log.path
        log.move_to(path, carry=False)
        try:
            yield log
        finally:
            log.move_to(outer, carry=False)
        return
    log = LibraryLog(Path(path))
    _active.append(log)
    try:
        yield log
    finally:
        _active.pop()
        log.close()
