"""The output policy: aop never destroys what it did not create.

Every writer of aop (volumes, data sets, model packages, post-processed labels, the prediction
cache, study folders) goes through this module:

- an existing output that aop did not write is refused with one line;
- replacing aop's own output needs ``overwrite=True`` (``--overwrite`` on the command line);
- an output that is one of the inputs, holds one of them, or holds the current folder is always
  refused;
- writes are atomic: the new output is built in a temporary sibling named
  ``.NAME.aop-tmp-HOST-PID-XXXX`` and renamed into place; a failure removes it, and a temporary
  sibling left by a killed aop process is removed by the next write to the same target.

aop recognises its own output by a marker: a folder holds a ``.aop-output`` file (JSON: kind, aop
version, time), a TIFF written by aop carries ``Software: aop``, a Parquet table ``software: aop``
in its schema metadata (:func:`mark_parquet_metadata`). Data sets simulated by older aop
versions (``dataset.yaml`` provenance ``generator: aop...``) and study folders
(``experiment.yaml`` beside ``results/`` or ``tune/``) are recognised too. A ``.npy`` or ``.csv``
file cannot carry a marker, so an existing one is never replaced.

Example
-------
>>> import tempfile, pathlib
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> with atomic_output(root / "table.csv") as tmp:
...     _ = tmp.write_text("a,b\\n")
>>> (root / "table.csv").read_text()
'a,b\\n'
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import psutil

from aop.errors import AopError

MARKER = ".aop-output"
TIFF_SOFTWARE = "aop"
_TMP_TAG = ".aop-tmp-"

Kind = Literal["file", "folder", "dataset", "study"]

__all__ = [
    "MARKER",
    "TIFF_SOFTWARE",
    "atomic_file",
    "atomic_output",
    "claim_folder",
    "discard_output",
    "is_aop_output",
    "is_disk_full",
    "mark_parquet_metadata",
    "os_error_message",
    "prepare_output",
    "write_marker",
]


# ------------------------------------------------------------------------------------------------
# Recognising aop's own output
# ------------------------------------------------------------------------------------------------


def _legacy_dataset(path: Path) -> bool:
    try:
        import yaml

        raw = yaml.safe_load((path / "dataset.yaml").read_text(encoding="utf-8"))
        generator = raw["provenance"]["generator"]
    except Exception:  # missing, unreadable or without a generator: not recognisably aop's
        return False
    return isinstance(generator, str) and generator.startswith("aop")


def _legacy_study(path: Path) -> bool:
    return (path / "experiment.yaml").is_file() and any(
        (path / name).exists() for name in ("results", "tune", "mlflow_run_id")
    )


def _aop_tiff(path: Path) -> bool:
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            return bool(tif.pages) and tif.pages[0].software == TIFF_SOFTWARE
    except Exception:  # not a TIFF, or a corrupt one: not recognisably aop's
        return False


_PARQUET_KEY = b"software"


def mark_parquet_metadata(schema) -> dict[bytes, bytes]:  # type: ignore[no-untyped-def]
    """A pyarrow ``schema``'s metadata with aop's mark added (``software: aop``)."""
    return {**(schema.metadata or {}), _PARQUET_KEY: TIFF_SOFTWARE.encode()}


def _aop_parquet(path: Path) -> bool:
    try:
        import pyarrow.parquet as pq

        metadata = pq.read_schema(path).metadata or {}
    except Exception:  # not a Parquet file, or a corrupt one: not recognisably aop's
        return False
    return metadata.get(_PARQUET_KEY) == TIFF_SOFTWARE.encode()


def is_aop_output(path: str | os.PathLike) -> bool:
    """Whether the file or folder ``path`` is output that aop wrote (``False`` when missing)."""
    path = Path(path)
    if path.is_dir():
        return (path / MARKER).is_file() or _legacy_dataset(path) or _legacy_study(path)
    name = path.name.lower()
    if not path.is_file():
        return False
    if name.endswith(".parquet"):
        return _aop_parquet(path)
    return name.endswith((".tif", ".tiff")) and _aop_tiff(path)


def write_marker(folder: str | os.PathLike, kind: str) -> Path:
    """Mark ``folder`` as aop's output of ``kind`` (writes ``folder/.aop-output``)."""
    from aop import __version__

    marker = Path(folder) / MARKER
    text = json.dumps({"kind": kind, "aop_version": __version__, "created": time.time()})
    marker.write_text(text + "\n", encoding="utf-8")
    return marker


# ------------------------------------------------------------------------------------------------
# Checks before any work
# ------------------------------------------------------------------------------------------------


def os_error_message(path: str | os.PathLike, exc: OSError) -> str:
    """One line for an operating-system error while writing ``path`` (disk full, read-only...)."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno == errno.ENOSPC:
        reason = "no space left on the device"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        reason = f"not writable ({exc.strerror})"
    return f"{path}: cannot write: {reason}"


# the OS's text, SQLite's, and aop's own line (os_error_message), which a Ray task error carries
_DISK_FULL_TEXT = ("no space left on", "database or disk is full", "disk quota exceeded")


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it wraps) is a full disk or quota.

    Besides an ``OSError`` with ``ENOSPC``/``EDQUOT``, this recognises the errors that libraries
    raise in its place: SQLite's "database or disk is full" (inside MLflow's and SQLAlchemy's
    exceptions) and Ray Tune's wrapped worker errors, by their text.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        full = isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT)
        if full or any(marker in str(current).lower() for marker in _DISK_FULL_TEXT):
            return True
        current = current.__cause__ or current.__context__
    return False


def _absolute(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(Path(path).expanduser()))


def _writable_parent(path: Path) -> None:
    existing = next(parent for parent in path.parents if parent.exists())
    if not existing.is_dir():
        raise AopError(f"{path}: cannot write: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise AopError(f"{path}: cannot write: folder {existing} is not writable")


def _clean_stale(path: Path) -> None:
    """Remove temporary siblings of ``path`` left by an aop process of this host that died."""
    prefix, host = f".{path.name}{_TMP_TAG}", socket.gethostname()
    try:
        siblings = [p for p in path.parent.iterdir() if p.name.startswith(prefix)]
    except OSError:
        return
    for sibling in siblings:
        parts = sibling.name[len(prefix) :].rsplit("-", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        pid = int(parts[1])
        if pid != os.getpid() and not psutil.pid_exists(pid):
            _remove(sibling)


def prepare_output(
    path: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
    kind: Kind = "file",
    overwrite_hint: str = "overwrite=True",
) -> Path:
    """Check that ``path`` may be written, before any work is done.

    Parameters
    ----------
    path : path-like
        The output file or folder.
    inputs : iterable of path-like
        Inputs of the same request; the output may be none of them and (for a folder) hold none
        of them.
    overwrite : bool
        Allow replacing an existing output that aop wrote.
    kind : {"file", "folder", "dataset", "study"}
        What is written: a file, or a folder (``dataset`` and ``study`` are folders).
    overwrite_hint : str
        How the refusal tells the user to allow replacing (``--overwrite`` on the command line).

    Returns
    -------
    Path
        The absolute output path; its nearest existing parent folder is writable (missing
        parents are created only when the output is written).

    Raises
    ------
    AopError
        One line naming the path: it is an input, it holds files aop did not write, it is aop's
        output and ``overwrite`` is false, its folder cannot be created or written.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "mine.txt").write_text("precious")
    8
    >>> try:
    ...     prepare_output(root, kind="dataset")
    ... except AopError as error:
    ...     print(str(error).split(": ", 1)[1])
    folder holds files aop did not write (mine.txt); choose a new or empty folder
    """
    shown, target, folder = Path(path), _absolute(path), kind != "file"
    for item in inputs:
        source = _absolute(item)
        if target == source or (
            target.exists() and source.exists() and os.path.samefile(target, source)
        ):
            raise AopError(f"{shown}: output is one of the inputs; choose another path")
        if folder and source.is_relative_to(target):
            raise AopError(f"{shown}: output folder holds the input {item}; choose another path")
    if folder and Path.cwd().is_relative_to(target):
        raise AopError(f"{shown}: output folder holds the current folder; choose a new folder")
    if target.is_symlink() and not target.exists():
        raise AopError(f"{shown}: is a broken symbolic link; choose another path")
    if folder and target.exists() and not target.is_dir():
        raise AopError(f"{shown}: exists and is a file, not a folder; choose another path")
    if not folder and target.is_dir() and not target.name.lower().endswith(".zarr"):
        raise AopError(f"{shown}: exists and is a folder; give a file name")
    occupied = target.exists() and not (target.is_dir() and not any(target.iterdir()))
    if occupied and not is_aop_output(target):
        if target.is_dir():
            names = ", ".join(sorted(p.name for p in target.iterdir())[:3])
            what = f"folder holds files aop did not write ({names})"
        else:
            what = "file exists and was not written by aop"
        raise AopError(f"{shown}: {what}; choose a new or empty {'folder' if folder else 'path'}")
    if occupied and not overwrite:
        raise AopError(f"{shown}: holds an earlier aop output; pass {overwrite_hint} to replace it")
    _writable_parent(target)
    _clean_stale(target)
    return target


# ------------------------------------------------------------------------------------------------
# Atomic writes
# ------------------------------------------------------------------------------------------------


def _tmp_name(target: Path) -> str:
    return f".{target.name}{_TMP_TAG}{socket.gethostname()}-{os.getpid()}-"


def _umask_mode(base: int) -> int:
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(
    path: str | os.PathLike,
    *,
    kind: Kind = "file",
    inputs: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
    check: bool = True,
    overwrite_hint: str = "overwrite=True",
    mark: bool = True,
) -> Iterator[Path]:
    """Build an output under a temporary sibling name and rename it into place on success.

    Parameters
    ----------
    path : path-like
        The output.
    kind : {"file", "folder", "dataset", "study"}
        A file, or a folder (which gets the ``.aop-output`` marker).
    inputs, overwrite, overwrite_hint
        As for :func:`prepare_output`.
    check : bool
        Run :func:`prepare_output` first (skip when the caller already did).
    mark : bool
        Write the ``.aop-output`` marker into a folder (off for a folder whose files carry aop's
        mark themselves, which its writer recognises).

    Yields
    ------
    Path
        The temporary path to write (a folder that exists, or a file name that does not). Its
        suffix is the target's, so format detection by suffix works.

    Raises
    ------
    AopError
        From :func:`prepare_output`, or one line when the disk is full or read-only; nothing is
        left behind.
    """
    if check:
        target = prepare_output(
            path, inputs=inputs, overwrite=overwrite, kind=kind, overwrite_hint=overwrite_hint
        )
    else:
        target = Path(os.path.abspath(path))
    folder = kind != "file" or target.name.lower().endswith(".zarr")
    suffix = "".join(target.suffixes[-2:])
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        if folder:
            tmp = Path(tempfile.mkdtemp(prefix=_tmp_name(target), suffix=suffix, dir=target.parent))
            os.chmod(tmp, _umask_mode(0o777))
        else:
            fd, name = tempfile.mkstemp(prefix=_tmp_name(target), suffix=suffix, dir=target.parent)
            os.close(fd)
            tmp = Path(name)
            tmp.unlink()
    except OSError as exc:
        raise AopError(os_error_message(target, exc)) from None
    try:
        yield tmp
        if folder and mark:
            write_marker(tmp, kind)
        else:
            os.chmod(tmp, _umask_mode(0o666))
        _replace(tmp, target)
    except OSError as exc:
        _remove(tmp)
        raise AopError(os_error_message(target, exc)) from None
    except BaseException:
        _remove(tmp)
        raise


def atomic_file(path: str | os.PathLike) -> contextlib.AbstractContextManager[Path]:
    """Write a file aop owns (a study's YAML, a table, a figure) under a temporary sibling name.

    :func:`atomic_output` without the output policy: the caller owns ``path``. The yielded name
    keeps the target's suffix; on success it replaces ``path``, on any failure it is removed and
    an ``OSError`` (a full disk) becomes one :class:`AopError` line naming ``path``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> target = pathlib.Path(tempfile.mkdtemp()) / "table.csv"
    >>> with atomic_file(target) as tmp:
    ...     _ = tmp.write_text("a,b\\n")
    >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
    ('a,b\\n', ['table.csv'])
    """
    return atomic_output(path, kind="file", check=False)


def _move_aside(target: Path) -> Path:
    """Rename ``target`` into a fresh temporary sibling folder, which is returned."""
    aside = Path(tempfile.mkdtemp(prefix=_tmp_name(target), dir=target.parent))
    os.replace(target, aside / "old")
    return aside


def _replace(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` over ``target``; an old folder is moved aside first, then deleted."""
    if not target.is_dir() or target.is_symlink():
        os.replace(tmp, target)
        return
    aside = _move_aside(target)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(aside / "old", target)
        shutil.rmtree(aside, ignore_errors=True)
        raise
    shutil.rmtree(aside, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# Folders aop writes into (study folders, the prediction cache)
# ------------------------------------------------------------------------------------------------


def claim_folder(
    path: str | os.PathLike,
    kind: Kind | str,
    *,
    recognise: Iterable[str] = (),
    dry_run: bool = False,
) -> Path:
    """Make sure ``path`` is a folder aop may write into, and mark it as aop's.

    A missing or empty folder is created and marked; a marked folder (or one of the older layouts
    in ``recognise``: names of entries whose presence shows an aop folder) is used as it is; a
    folder holding anything else is refused. Nothing in it is deleted.

    Parameters
    ----------
    path : path-like
        The folder (a study folder, the prediction cache).
    kind : str
        Recorded in the marker.
    recognise : iterable of str
        Entry names that identify an unmarked older aop folder of this kind.
    dry_run : bool
        Only check; create and mark nothing.

    Returns
    -------
    Path
        The absolute folder path.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> cache = claim_folder(pathlib.Path(tempfile.mkdtemp()) / "cache", "cache")
    >>> (cache / MARKER).is_file()
    True
    """
    shown, target = Path(path), _absolute(path)
    if (target / MARKER).is_file():
        return target
    if target.exists() and not target.is_dir():
        raise AopError(f"{shown}: exists and is a file, not a folder; choose another path")
    names = sorted(p.name for p in target.iterdir()) if target.is_dir() else []
    if not names:
        prepare_output(target, kind="folder")
    elif not (is_aop_output(target) or set(recognise).intersection(names)):
        raise AopError(
            f"{shown}: folder holds files aop did not write ({', '.join(names[:3])}); "
            f"choose a new or empty folder for the {kind}"
        )
    if not dry_run:
        try:
            target.mkdir(parents=True, exist_ok=True)
            write_marker(target, str(kind))
        except OSError as exc:
            raise AopError(os_error_message(target, exc)) from None
    return target


def discard_output(path: str | os.PathLike) -> bool:
    """Delete ``path`` if it is aop's own output (moved aside first, so the name frees at once).

    Returns
    -------
    bool
        Whether something was deleted; anything aop did not write is left alone.
    """
    target = Path(os.path.abspath(path))
    if not target.exists() or not is_aop_output(target):
        return False
    shutil.rmtree(_move_aside(target), ignore_errors=True)
    return True
