"""Ray Tune's storage on a local or mounted disk, where every file appears whole or not at all.

Ray Tune writes its experiment state, searcher state and trial checkpoints into a staging folder
on the driver (or worker) and then copies them into the storage path with
``pyarrow.fs.copy_files``. On a plain local filesystem that copy writes the target in place, so a
full disk (or a killed process) leaves a truncated ``experiment_state-*.json``: the next
``Tuner.restore`` cannot read it, and Tune silently restarts the search from scratch.

:func:`atomic_local_filesystem` is the local filesystem with one change: a file opened for
writing is written under a temporary sibling name (``.NAME.aop-part-PID-XXXX``) and renamed onto
its name only when it is closed after a complete write. A failed write removes the temporary, so
the previous version of the file (Tune's last good state) stays in place. Object stores (S3, GCS)
already behave like this and keep their own filesystem.

An empty write over a non-empty file is dropped too, keeping the earlier version: Tune's
background copy can read a staging file at the moment the next save has truncated it, and with
the disk full just after, that empty ``experiment_state-*.json`` would be the one left. (Seen in
the disk-full test; no Tune file is legitimately emptied.)

The handler holds no state but a ``LocalFileSystem``, so it pickles to Ray's workers.

:func:`tune_storage` turns a study's ``storage.tune_storage`` URI (or none: the study folder) into
the filesystem and path that Ray Tune's ``RunConfig`` and ``Tuner.restore`` take.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.fs as pafs

from aop.errors import AopError

__all__ = ["atomic_local_filesystem", "tune_storage"]

PART_TAG = ".aop-part-"


class _AtomicWriter:
    """A write-only file object: writes go to a temporary sibling, ``close`` renames it."""

    def __init__(self, path: str) -> None:
        folder, name = os.path.split(path)
        self.path = path
        self.tmp = os.path.join(folder, f".{name}{PART_TAG}{os.getpid()}-{secrets.token_hex(4)}")
        self._handle: Any = open(self.tmp, "wb")  # noqa: SIM115  (closed in close or _discard)
        self.closed = False
        self.written = 0

    def _discard(self) -> None:
        try:
            self._handle.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass
        self.closed = True

    def write(self, data: Any) -> int:
        try:
            count = self._handle.write(data)
            self.written += len(memoryview(data).cast("B")) if count is None else count
            return count
        except BaseException:
            self._discard()
            raise

    def flush(self) -> None:
        if not self.closed:
            self._handle.flush()

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return False

    def tell(self) -> int:
        return self._handle.tell()

    def close(self) -> None:
        if self.closed:
            return
        if self.written == 0 and _size(self.path) > 0:  # see the module docstring
            self._discard()
            return
        try:
            self._handle.close()  # flushes: a full disk can fail here too
            os.replace(self.tmp, self.path)
        except BaseException:
            self._discard()
            raise
        self.closed = True


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


class AtomicLocalHandler(pafs.FileSystemHandler):
    """``pyarrow.fs.LocalFileSystem`` whose output streams are written atomically."""

    def __init__(self) -> None:
        self._fs = pafs.LocalFileSystem()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AtomicLocalHandler)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(AtomicLocalHandler)

    def __reduce__(self) -> tuple[type, tuple]:
        return AtomicLocalHandler, ()

    def get_type_name(self) -> str:
        return "aop-atomic-local"

    def normalize_path(self, path: str) -> str:
        return self._fs.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pafs.FileInfo]:
        return self._fs.get_file_info(paths)

    def get_file_info_selector(self, selector: pafs.FileSelector) -> list[pafs.FileInfo]:
        return self._fs.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self._fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self._fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("aop's Tune storage never empties the root folder")

    def delete_file(self, path: str) -> None:
        self._fs.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self._fs.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        with self._fs.open_input_stream(src) as source, self.open_output_stream(dest, None) as out:
            while chunk := source.read(1 << 20):
                out.write(chunk)

    def open_input_stream(self, path: str) -> pyarrow.NativeFile:
        return self._fs.open_input_stream(path)

    def open_input_file(self, path: str) -> pyarrow.NativeFile:
        return self._fs.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any) -> pyarrow.NativeFile:
        return pyarrow.PythonFile(_AtomicWriter(path), mode="w")

    def open_append_stream(self, path: str, metadata: Any) -> pyarrow.NativeFile:
        return self._fs.open_append_stream(path)


def atomic_local_filesystem() -> pafs.PyFileSystem:
    """The local filesystem for ``RunConfig(storage_filesystem=...)``, with atomic file writes.

    Examples
    --------
    >>> import tempfile
    >>> fs, folder = atomic_local_filesystem(), tempfile.mkdtemp()
    >>> with fs.open_output_stream(f"{folder}/state.json") as out:
    ...     _ = out.write(b"{}")
    >>> fs.open_input_stream(f"{folder}/state.json").read(), sorted(os.listdir(folder))
    (b'{}', ['state.json'])
    """
    return pafs.PyFileSystem(AtomicLocalHandler())


def tune_storage(uri: str | None, default: str | os.PathLike) -> tuple[Any, str]:
    """Ray Tune's ``(storage_filesystem, storage_path)`` for a storage URI.

    Parameters
    ----------
    uri : str or None
        A URI pyarrow opens (``s3://bucket/aop``, ``gs://bucket/aop``, ``file:///shared/tune``,
        ``hdfs://...``); ``None`` keeps the local folder ``default``.
    default : path-like
        The local folder used without a URI.

    Returns
    -------
    (pyarrow.fs.FileSystem, str)
        The filesystem and the path inside it, for
        ``RunConfig(storage_path=..., storage_filesystem=...)`` and ``Tuner.restore``. A local
        folder or ``file://`` URI gets :func:`atomic_local_filesystem`, so a
        full disk cannot leave Tune a truncated state file.

    Examples
    --------
    >>> fs, path = tune_storage("file:///tmp/aop-tune", "unused")
    >>> fs.type_name, path
    ('py::aop-atomic-local', '/tmp/aop-tune')
    """
    if uri is None:
        folder = Path(default).resolve()
        return atomic_local_filesystem(), str(folder)

    if "://" not in uri:
        raise AopError(
            f"storage.tune_storage: {uri!r} is not a URI (e.g. s3://bucket/path, "
            "file:///shared/tune); leave it out for STUDY_DIR/tune"
        )
    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
        if isinstance(filesystem, pafs.LocalFileSystem):
            filesystem = atomic_local_filesystem()
        filesystem.create_dir(path, recursive=True)
    except (pyarrow.ArrowException, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AopError(f"storage.tune_storage: {uri}: {first[:300]}") from None
    return filesystem, path.rstrip("/") or "/"
