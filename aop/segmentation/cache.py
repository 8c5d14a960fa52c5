"""Content-addressed cache of model predictions.

A model predicts each volume once. The cache key hashes the model's identity (name, adapter
settings, SHA-256 of its weight files) with the volume's content (bytes, shape and dtype) and voxel
size, so a changed image, setting or weight file misses and an unchanged one hits wherever it is
stored. An entry is one compressed ``.npz`` file (the labels, their BLAKE2b checksum and the key)
written atomically under ``ROOT/KEY[:2]/KEY.npz``; an entry whose checksum does not match is
treated as a miss and recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aop.errors import AopError
from aop.outputs import atomic_file

if TYPE_CHECKING:
    from aop.segmentation.models import SegmentationModel

Spacing = tuple[float, float, float]

__all__ = ["PredictionCache", "volume_hash"]


def volume_hash(image: np.ndarray) -> str:
    """BLAKE2b hex digest of an array's bytes, shape and dtype."""
    image = np.ascontiguousarray(image)
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{image.dtype.str}{image.shape}".encode())
    digest.update(memoryview(image).cast("B"))
    return digest.hexdigest()


class PredictionCache:
    """Predictions stored by (model identity, volume content).

    Parameters
    ----------
    root : path-like
        Cache folder; created on the first write. Several processes (Ray workers on a shared file
        system) may use it at once: writes are atomic renames and equal keys hold equal content.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def key(
        self, model: SegmentationModel, image: np.ndarray, spacing: Spacing | None = None
    ) -> str:
        """Cache key of ``model`` applied to ``image`` (with voxel size ``spacing``, if given).

        The voxel size is part of the key because models rescale by it; pass the same ``spacing``
        to :meth:`get`, :meth:`put` and :meth:`get_or_predict` (which always passes it).
        """
        identity = json.dumps(model.identity(), sort_keys=True, separators=(",", ":"))
        digest = hashlib.blake2b(digest_size=20)
        digest.update(identity.encode())
        digest.update(volume_hash(image).encode())
        if spacing is not None:
            digest.update(json.dumps([float(s) for s in spacing]).encode())
        return digest.hexdigest()

    def path_for(self, key: str) -> Path:
        """Where the entry of ``key`` lives."""
        return self.root / key[:2] / f"{key}.npz"

    @staticmethod
    def load(path: str | os.PathLike) -> np.ndarray:
        """Read and verify one entry.

        Raises
        ------
        AopError
            When the file is missing, unreadable or fails its checksum.
        """
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as entry:
                labels = entry["labels"]
                checksum = str(entry["checksum"])
        except FileNotFoundError:
            raise AopError(f"{path}: cache entry not found") from None
        except Exception as exc:  # truncated zip, bad header, missing member
            raise AopError(f"{path}: corrupt cache entry ({type(exc).__name__})") from None
        if volume_hash(labels) != checksum:
            raise AopError(f"{path}: corrupt cache entry (checksum mismatch)")
        return labels

    def get(
        self, model: SegmentationModel, image: np.ndarray, spacing: Spacing | None = None
    ) -> np.ndarray | None:
        """The cached labels, or None on a miss or a corrupt entry."""
        return self._get(self.key(model, image, spacing))

    def _get(self, key: str) -> np.ndarray | None:
        try:
            return self.load(self.path_for(key))
        except AopError:  # missing or corrupt
            return None

    def put(
        self,
        model: SegmentationModel,
        image: np.ndarray,
        labels: np.ndarray,
        spacing: Spacing | None = None,
    ) -> Path:
        """Store ``labels`` as the prediction of ``model`` on ``image``; returns the entry path."""
        return self._put(self.key(model, image, spacing), labels, model.identity())

    def _put(self, key: str, labels: np.ndarray, identity: dict) -> Path:
        labels = np.ascontiguousarray(labels)
        path = self.path_for(key)
        with atomic_file(path) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(
                f,
                labels=labels,
                checksum=np.str_(volume_hash(labels)),
                key=np.str_(key),
                identity=np.str_(json.dumps(identity, sort_keys=True)),
            )
        return path

    def get_or_predict(
        self, model: SegmentationModel, image: np.ndarray, spacing: Spacing
    ) -> np.ndarray:
        """Cached labels of ``model`` on ``image``; predicts and stores them on a miss."""
        return self.fetch(model, image, spacing)[0]

    def fetch(
        self, model: SegmentationModel, image: np.ndarray, spacing: Spacing
    ) -> tuple[np.ndarray, Path]:
        """Like :meth:`get_or_predict`, also returning the entry path."""
        key = self.key(model, image, spacing)
        labels = self._get(key)
        if labels is None:
            labels = model.predict(image, spacing)
            self._put(key, labels, model.identity())
        return labels, self.path_for(key)
