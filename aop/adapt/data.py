"""Unpaired volumes for the CycleGAN: loading, voxel-size matching, normalisation, random crops.

Volumes are held as float32 arrays (C, Z, Y, X), each channel scaled by its 1 and 99.8 percentiles
to [-1, 1] (the range of the generators' ``tanh``). Domain A is the synthetic benchmark, domain B
the real volumes; real volumes are resampled to the benchmark's voxel size, so that nuclei have the
same size in voxels in both domains (a benchmark simulated at the real voxel size needs none).

>>> import numpy as np
>>> scaled, (lo, hi) = normalize(np.arange(1000.0).reshape(10, 10, 10))
>>> bool(scaled.min() >= -1.1 and scaled.max() <= 1.1)
True
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch

from aop.adapt.config import AdaptSettings
from aop.errors import AopError
from aop.io import DATASET_FILE, find_volumes, load_dataset, read_volume

__all__ = [
    "UnpairedCrops",
    "UnpairedDataModule",
    "VolumeSet",
    "context_stack",
    "denormalize",
    "load_volumes",
    "normalize",
    "voxel_size_of",
]

LOW, HIGH = 1.0, 99.8


@dataclass
class VolumeSet:
    """Volumes of one domain as (C, Z, Y, X) float32 arrays in their own intensity units.

    Attributes
    ----------
    names : list of str
    volumes : list of ndarray
    voxel_size : tuple of float or None
        (z, y, x); ``None`` when neither ``dataset.yaml`` nor the files record it.
    files : list of str
        Each volume's file, for messages.
    """

    names: list[str]
    volumes: list[np.ndarray]
    voxel_size: tuple[float, float, float] | None
    files: list[str]

    @property
    def channels(self) -> int:
        return int(self.volumes[0].shape[0])


def _as_czyx(data: np.ndarray, where: str) -> np.ndarray:
    if data.ndim == 3:
        data = data[None]
    if data.ndim != 4:
        raise AopError(
            f"{where}: expected a 3D (Z, Y, X) or 4D (C, Z, Y, X) volume, got {data.shape}"
        )
    if data.dtype.kind not in "uif":
        raise AopError(f"{where}: unsupported dtype {data.dtype}")
    data = data.astype(np.float32, copy=False)
    if not np.all(np.isfinite(data)):
        raise AopError(f"{where}: non-finite values (NaN or inf)")
    return data


def load_volumes(folder: str | os.PathLike, role: str = "volumes") -> VolumeSet:
    """Read every volume of a data set (``images/``) or of a plain folder of volume files.

    Parameters
    ----------
    folder : path
        A data-set folder (labels, if any, are ignored) or a folder of ``.tif``/``.npy``/``.zarr``.
    role : str
        Names the folder in error messages (``real``, ``synthetic``).

    Raises
    ------
    AopError
        Missing folder, no volumes, unreadable volumes, or volumes of different channel counts.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise AopError(f"{role} folder {folder}: not found")
    voxel_size = None
    if (folder / DATASET_FILE).is_file() or (folder / "images").is_dir():
        if not find_volumes(folder / "images"):
            raise AopError(f"{role} folder {folder}: no volumes in images/")
        dataset = load_dataset(folder, validate=False)
        paths = {entry.name: entry.image_path for entry in dataset}
        if (folder / DATASET_FILE).is_file():
            voxel_size = tuple(float(v) for v in dataset.info.voxel_size)
    else:
        paths = find_volumes(folder)
        if not paths:
            raise AopError(f"{role} folder {folder}: no volumes (.tif, .tiff, .npy or .zarr files)")
    names, volumes, files = [], [], []
    for name, path in paths.items():
        data, spacing = read_volume(path)
        volumes.append(_as_czyx(data, str(path)))
        names.append(name)
        files.append(str(path))
        if voxel_size is None and spacing is not None:
            voxel_size = tuple(float(s) for s in spacing)
    channels = {v.shape[0] for v in volumes}
    if len(channels) > 1:
        raise AopError(f"{role} folder {folder}: volumes have different channel counts {channels}")
    return VolumeSet(names, volumes, voxel_size, files)  # type: ignore[arg-type]


def match_voxel_size(
    volumes: VolumeSet, target: Sequence[float] | None
) -> tuple[VolumeSet, list[float]]:
    """Resample ``volumes`` to the voxel size ``target`` (linear interpolation).

    Returns the resampled set and the zoom factors (z, y, x); factors of 1 copy nothing.
    """
    from scipy.ndimage import zoom

    if target is None or volumes.voxel_size is None:
        return volumes, [1.0, 1.0, 1.0]
    factors = [float(s) / float(t) for s, t in zip(volumes.voxel_size, target, strict=True)]
    if np.allclose(factors, 1.0, rtol=1e-3):
        return volumes, [1.0, 1.0, 1.0]
    resampled = [
        np.stack([zoom(c, factors, order=1) for c in v]).astype(np.float32)
        for v in volumes.volumes
    ]
    out = VolumeSet(volumes.names, resampled, tuple(float(t) for t in target), volumes.files)  # type: ignore[arg-type]
    return out, factors


def normalize(volume: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Scale a volume by its (1, 99.8) percentiles to about [-1, 1]; also return the percentiles."""
    lo, hi = (float(p) for p in np.percentile(volume, [LOW, HIGH]))
    scale = hi - lo if hi > lo else 1.0
    return ((volume - lo) / scale * 2.0 - 1.0).astype(np.float32), (lo, hi)


def denormalize(volume: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Inverse of :func:`normalize` for the percentiles ``(lo, hi)``."""
    return ((volume + 1.0) / 2.0 * (hi - lo) + lo).astype(np.float32)


def context_stack(volume: np.ndarray, context: int) -> np.ndarray:
    """(Z, C * (2 context + 1), Y, X): each slice with ``context`` neighbours on each side.

    Slices beyond the volume are mirrored. ``volume`` is (C, Z, Y, X).

    >>> context_stack(np.zeros((1, 5, 4, 4)), 1).shape
    (5, 3, 4, 4)
    """
    c, z = volume.shape[:2]
    padded = np.pad(volume, [(0, 0), (context, context), (0, 0), (0, 0)], mode="symmetric")
    windows = [padded[:, i : i + z] for i in range(2 * context + 1)]  # each (C, Z, Y, X)
    stacked = np.stack(windows, axis=1)  # (C, 2k+1, Z, Y, X)
    stacked = stacked.reshape(c * (2 * context + 1), z, *volume.shape[2:])
    return np.ascontiguousarray(stacked.swapaxes(0, 1))


def check_patch(volumes: VolumeSet, settings: AdaptSettings, role: str) -> None:
    """Every volume must hold a whole training crop."""
    patch = tuple(settings.patch)
    for name, volume, file in zip(volumes.names, volumes.volumes, volumes.files, strict=True):
        spatial = volume.shape[1:] if settings.mode == "3d" else volume.shape[2:]
        if any(s < p for s, p in zip(spatial, patch, strict=True)):
            what = "zyx" if settings.mode == "3d" else "yx"
            raise AopError(
                f"{role} volume {file} ({name}): {what} size {tuple(spatial)} is smaller than the "
                f"patch {patch}; choose a smaller patch"
            )


class UnpairedCrops(torch.utils.data.Dataset):
    """Random unpaired crops ``(synthetic, real)``, reproducible from (seed, epoch, index).

    In 2D each crop is a slice with its context slices as channels, shape
    (C (2 context + 1), Y, X); in 3D a (C, Z, Y, X) patch. Crops are flipped at random along x
    (``augment="flip"``), or transformed by a random symmetry of the yx plane (``"dihedral"``:
    flips along y and x, and a y-x transpose when the patch is square).
    With ``masks`` (the synthetic volumes' foreground, (1, Z, Y, X) each) a sample is
    ``(synthetic, real, mask)``, the mask cut exactly like the synthetic crop (its context slices
    as channels in 2D).
    """

    def __init__(
        self,
        synthetic: Sequence[np.ndarray],
        real: Sequence[np.ndarray],
        settings: AdaptSettings,
        masks: Sequence[np.ndarray] | None = None,
    ) -> None:
        self.settings = settings
        self.epoch = 0
        self.domains = [self._prepare(v) for v in (synthetic, real)]
        self.masks = None if masks is None else self._prepare(
            [np.asarray(m, dtype=np.uint8) for m in masks]  # 0/1; the loss casts the crops
        )

    def _prepare(self, volumes: Sequence[np.ndarray]) -> list[np.ndarray]:
        if self.settings.mode == "3d":
            return list(volumes)
        return [context_stack(v, self.settings.context) for v in volumes]  # (Z, C', Y, X)

    def __len__(self) -> int:
        return self.settings.steps_per_epoch * self.settings.batch_size

    def _draw(self, volumes: list[np.ndarray], rng: np.random.Generator) -> tuple:
        index = int(rng.integers(len(volumes)))
        volume, patch = volumes[index], self.settings.patch
        lead: tuple = (slice(None),)  # 3D: (C, Z, Y, X), every channel
        if self.settings.mode == "2d":  # (Z, C', Y, X): one slice z, its channels
            lead = (int(rng.integers(volume.shape[0])), slice(None))
        shape = volume.shape[len(lead) :]
        corner = [int(rng.integers(0, s - p + 1)) for s, p in zip(shape, patch, strict=True)]
        region = (*lead, *(slice(c, c + p) for c, p in zip(corner, patch, strict=True)))
        flip_x = bool(rng.random() < 0.5)
        if self.settings.augment == "flip":
            return index, region, (False, flip_x, False)
        flip_y, transpose = (bool(v) for v in rng.random(2) < 0.5)
        return index, region, (flip_y, flip_x, transpose and patch[-1] == patch[-2])

    @staticmethod
    def _cut(volume: np.ndarray, region: tuple, transform: tuple[bool, bool, bool]) -> torch.Tensor:
        crop = volume[region]
        flip_y, flip_x, transpose = transform
        if flip_y:
            crop = crop[..., ::-1, :]
        if flip_x:
            crop = crop[..., ::-1]
        if transpose:
            crop = crop.swapaxes(-1, -2)
        return torch.from_numpy(np.ascontiguousarray(crop))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        rng = np.random.default_rng([self.settings.seed, self.epoch, index])
        a, region_a, transform_a = self._draw(self.domains[0], rng)
        b, region_b, transform_b = self._draw(self.domains[1], rng)
        synthetic = self._cut(self.domains[0][a], region_a, transform_a)
        real = self._cut(self.domains[1][b], region_b, transform_b)
        if self.masks is None:
            return synthetic, real
        return synthetic, real, self._cut(self.masks[a], region_a, transform_a)


class UnpairedDataModule(L.LightningDataModule):
    """Lightning data module over :class:`UnpairedCrops` (normalised synthetic and real volumes).

    Parameters
    ----------
    synthetic, real : sequence of ndarray
        Normalised (C, Z, Y, X) volumes of each domain.
    settings : AdaptSettings
    masks : sequence of ndarray, optional
        The synthetic volumes' foreground masks, (1, Z, Y, X), for the label loss.
    """

    def __init__(
        self,
        synthetic: Sequence[np.ndarray],
        real: Sequence[np.ndarray],
        settings: AdaptSettings,
        masks: Sequence[np.ndarray] | None = None,
    ) -> None:
        super().__init__()
        self.crops = UnpairedCrops(synthetic, real, settings, masks)

    def set_epoch(self, epoch: int) -> None:
        self.crops.epoch = epoch

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(self.crops, batch_size=self.crops.settings.batch_size)


def voxel_size_of(
    folder: str | os.PathLike, role: str = "real"
) -> tuple[float, float, float] | None:
    """The voxel size (z, y, x) recorded for a folder of volumes, or ``None`` when none is.

    ``dataset.yaml`` is read first, then the first volume file's metadata.
    """
    folder = Path(folder)
    if (folder / DATASET_FILE).is_file():
        return tuple(float(v) for v in load_dataset(folder, validate=False).info.voxel_size)  # type: ignore[return-value]
    paths = find_volumes(folder / "images") or find_volumes(folder)
    if not paths:
        raise AopError(f"{role} folder {folder}: no volumes (.tif, .tiff, .npy or .zarr files)")
    _, spacing = read_volume(next(iter(paths.values())))
    return None if spacing is None else tuple(float(s) for s in spacing)  # type: ignore[return-value]
