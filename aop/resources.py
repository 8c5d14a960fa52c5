"""Refuse impossible work before starting it: memory estimates and reachable addresses.

Each estimate counts the volumes a request holds at once, their dtypes and the working copies of
the step (bytes per voxel measured on aop's own code, with ``tracemalloc``, and rounded up):

========================  ===============  =============================================
request                   bytes per voxel  what is held
========================  ===============  =============================================
``aop synth``             28               image (float32), labels, PSF blur and noise copies
``aop postprocess``       140              labels, image, distance transforms, merge features
prediction (per worker)   40               image (float32), labels, the model's working copies
========================  ===============  =============================================

The limit is the memory available now (``psutil.virtual_memory().available``), or the
``AOP_MEMORY_LIMIT`` environment variable (bytes, or a number with ``K``, ``M``, ``G``, ``T``
suffix) when it is set lower, e.g. to leave room for a study running beside it.

Example
-------
>>> check_memory("test request", 1_000, limit=10_000)
>>> check_memory("test request", 20_000, limit=10_000)
Traceback (most recent call last):
...
aop.errors.AopError: test request needs about 20.0 kB of memory, more than the 10.0 kB available
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

from aop.errors import AopError

SYNTH_BYTES_PER_VOXEL = 28
POSTPROCESS_BYTES_PER_VOXEL = 140
PREDICT_BYTES_PER_VOXEL = 40
MEMORY_LIMIT_ENV = "AOP_MEMORY_LIMIT"
TRACKING_TIMEOUT_S = 5.0
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}

__all__ = [
    "available_memory",
    "check_memory",
    "check_postprocess_memory",
    "check_prediction_memory",
    "check_synth_memory",
    "check_tracking_uri",
    "format_bytes",
    "volume_shape",
]


def format_bytes(n: float) -> str:
    """``1.5e9`` -> ``'1.5 GB'`` (decimal units)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000:
            return f"{n:.0f} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} PB"


def _parse_limit(text: str) -> int:
    value = text.strip().upper().removesuffix("B").replace("I", "")
    unit = value[-1:] if value[-1:] in _UNITS else ""
    number = value[: len(value) - len(unit)]
    try:
        return int(float(number) * _UNITS[unit])
    except ValueError:
        raise AopError(
            f"{MEMORY_LIMIT_ENV}={text!r}: expected bytes or a number with K, M, G or T"
        ) from None


def available_memory() -> int:
    """Bytes this process may use now: available memory, or ``AOP_MEMORY_LIMIT`` if lower."""
    import psutil

    available = int(psutil.virtual_memory().available)
    text = os.environ.get(MEMORY_LIMIT_ENV)
    return min(available, _parse_limit(text)) if text else available


def check_memory(what: str, estimate: float, *, limit: int | None = None) -> None:
    """Raise one line when ``estimate`` bytes exceed the available memory.

    Parameters
    ----------
    what : str
        The request, as the message names it (e.g. ``"synth of 3 volumes 90x1024x1024"``).
    estimate : float
        Bytes the request needs at its peak.
    limit : int, optional
        Bytes available (default :func:`available_memory`).
    """
    limit = available_memory() if limit is None else limit
    if estimate > limit:
        raise AopError(
            f"{what} needs about {format_bytes(estimate)} of memory, more than the "
            f"{format_bytes(limit)} available"
        )


def _voxels(shape: Sequence[int]) -> int:
    return math.prod(int(s) for s in shape)


def check_synth_memory(shape: Sequence[int], n_objects: int | None = None) -> None:
    """Refuse a simulation whose volume does not fit (one volume is held at a time)."""
    # 2 kB per object: its shape and the placement bookkeeping
    estimate = SYNTH_BYTES_PER_VOXEL * _voxels(shape) + 2_000 * (n_objects or 0)
    check_memory(f"simulating a volume of shape {[int(s) for s in shape]}", estimate)


def check_postprocess_memory(shape: Sequence[int]) -> None:
    """Refuse post-processing of a volume that does not fit."""
    estimate = POSTPROCESS_BYTES_PER_VOXEL * _voxels(shape)
    check_memory(f"post-processing a volume of shape {list(shape)}", estimate)


def volume_shape(path: str | os.PathLike) -> tuple[int, ...] | None:
    """The shape of a volume file read from its header (no voxels loaded); None if unknown."""
    import numpy as np
    import tifffile

    name = str(path).lower()
    with contextlib.suppress(Exception):  # unreadable here: the reader reports it with its message
        if name.endswith((".tif", ".tiff")):
            with tifffile.TiffFile(path) as tif:
                return tuple(tif.series[0].shape)
        if name.endswith(".npy"):
            return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
    return None


def check_prediction_memory(dataset: Any, num_workers: int | None = None) -> None:
    """Refuse predicting a data set when the concurrent workers' volumes do not fit.

    Parameters
    ----------
    dataset : aop.io.Dataset
        The data set; shapes come from the file headers.
    num_workers : int, optional
        Concurrent model workers (default: one per CPU, at most one per volume).
    """
    shapes = [volume_shape(entry.image_path) for entry in dataset]
    largest = max((_voxels(s) for s in shapes if s), default=0)
    workers = num_workers or min(len(shapes), os.cpu_count() or 1)
    estimate = PREDICT_BYTES_PER_VOXEL * largest * max(1, workers)
    check_memory(f"predicting {dataset.root} with {workers} worker(s)", estimate)


def check_tracking_uri(uri: str) -> None:
    """Refuse an MLflow tracking server that does not answer within ``TRACKING_TIMEOUT_S`` seconds.

    Only ``http``/``https`` URIs are contacted (a TCP connection, then ``GET /health``); local
    stores (``sqlite:``, ``file:``, paths) are left to MLflow.

    Raises
    ------
    AopError
        One line naming the URI and the reason.
    """
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    if not parsed.hostname:
        raise AopError(f"tracking URI {uri!r}: no host name")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=TRACKING_TIMEOUT_S).close()
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise AopError(
            f"tracking URI {uri}: MLflow server not reachable ({reason}; waited up to "
            f"{TRACKING_TIMEOUT_S:g} s)"
        ) from None
    import urllib.error
    import urllib.request

    health = f"{uri.rstrip('/')}/health"
    try:
        with urllib.request.urlopen(health, timeout=TRACKING_TIMEOUT_S) as response:  # noqa: S310
            response.read(64)
    except urllib.error.HTTPError:
        return  # a server answered (a proxy without /health): MLflow will say more
    except (OSError, ValueError) as exc:
        raise AopError(
            f"tracking URI {uri}: no MLflow server answered ({type(exc).__name__})"
        ) from None
