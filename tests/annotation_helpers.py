"""Shared set-up of the annotation tests: a small two-channel data set and a server on it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from aop.io import DatasetInfo, write_dataset
from aop.synth import simulate

SPACING = (2.0, 1.0, 1.0)
CLASSES = ["myotube", "schwann", "debris"]


def make_dataset(root: Path, n_volumes: int = 2, n_objects: int = 36) -> Path:
    """``n_volumes`` simulated 12x64x64 volumes of ``n_objects`` nuclei, two channels, truth."""
    volumes = []
    for seed in range(n_volumes):
        image, labels = simulate(
            (12, 64, 64), spacing=SPACING, n_objects=n_objects, radius_range=(3.0, 5.0), seed=seed
        )
        second = np.sqrt(np.clip(image, 0, None))  # a second channel with its own contrast
        volumes.append((f"vol_{seed}", np.stack([image, second]).astype(np.float32), labels))
    info = DatasetInfo(name="annotate-test", voxel_size=SPACING, channel_names=["dapi", "actin"])
    return write_dataset(root, volumes, info)


def copy_dataset(source: Path, target: Path) -> Path:
    """A fresh copy of a data set, for a test that writes annotations."""
    shutil.copytree(source, target)
    return target
