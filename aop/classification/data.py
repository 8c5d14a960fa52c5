"""Crops in memory as a ``LightningDataModule``: stratified splits and MONAI augmentation.

Splits (:func:`stratified_split`) are drawn per class, so every class is represented in train,
validation and test in the configured proportions; a class with fewer than ``small_class_size``
samples puts ``small_class_val_fraction`` (50 %, as the paper does for its 16 Schwann cells) into
validation instead. The paper's Core-Shell split (48 train, 12 test, 300 validation of 360) is
``val_fraction=300/360, test_fraction=12/360``.

Augmentation (training batches only, seeded): random flips along z, y and x, in-plane 90 degree
rotations (y-x plane), intensity scaling and shifting, and Gaussian noise (MONAI array transforms on
each ``(C, Z, Y, X)`` crop, applied to every channel, including a mask channel).

Example
-------
>>> import numpy as np
>>> labels = np.repeat([0, 1, 2], [25, 25, 8])  # class 2 is small: 4 of its 8 validate
>>> train, val, test = stratified_split(labels, SplitConfig(val_fraction=0.2, test_fraction=0.2))
>>> len(train), len(val), len(test)
(32, 14, 12)
"""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader, Dataset

from aop.errors import AopError

__all__ = ["CropDataModule", "CropDataset", "SplitConfig", "augmentation", "stratified_split"]


class SplitConfig(BaseModel):
    """How labelled crops are split into train, validation and test, per class."""

    model_config = ConfigDict(extra="forbid")

    val_fraction: float = Field(0.2, ge=0, lt=1, description="Share of each class in validation.")
    test_fraction: float = Field(0.2, ge=0, lt=1, description="Share of each class in test.")
    small_class_size: int = Field(
        20, ge=0, description="A class with fewer samples is a small class."
    )
    small_class_val_fraction: float = Field(
        0.5, ge=0, lt=1, description="Share of a small class in validation (the paper: 50 %)."
    )
    seed: int = 0


def stratified_split(
    labels: Sequence[int] | np.ndarray, config: SplitConfig | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train, validation and test, drawn per class.

    Per class of ``n`` samples: ``round(v * n)`` go to validation (``v`` is ``val_fraction``, or
    ``small_class_val_fraction`` when ``n < small_class_size``), ``round(test_fraction * n)`` to
    test (never so many that nothing is left to train on), the rest to training. Indices are sorted.

    Raises
    ------
    AopError
        When a class has fewer than two samples (it cannot be both trained and validated).
    """
    config = config or SplitConfig()
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise AopError(f"labels: expected a 1D array of class indices, got shape {labels.shape}")
    if config.val_fraction + config.test_fraction >= 1:
        raise AopError(
            f"split: val_fraction + test_fraction must be below 1, got "
            f"{config.val_fraction} + {config.test_fraction}"
        )
    rng = np.random.default_rng(config.seed)
    parts: tuple[list[np.ndarray], ...] = ([], [], [])
    for cls in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == cls))
        n = len(index)
        if n < 2:
            raise AopError(f"labels: class {cls} has {n} sample; at least 2 are needed to split")
        small = n < config.small_class_size
        v = config.small_class_val_fraction if small else config.val_fraction
        n_val = min(max(1, int(np.floor(v * n + 0.5))), n - 1)
        n_test = min(int(np.floor(config.test_fraction * n + 0.5)), n - n_val - 1)
        parts[1].append(index[:n_val])
        parts[2].append(index[n_val : n_val + n_test])
        parts[0].append(index[n_val + n_test :])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)  # type: ignore[return-value]


def augmentation(seed: int = 0):  # type: ignore[no-untyped-def]
    """The MONAI training augmentation of one crop ``(C, Z, Y, X)``, seeded.

    Examples
    --------
    >>> aug = augmentation(seed=0)
    >>> tuple(aug(np.ones((1, 4, 8, 8), np.float32)).shape)
    (1, 4, 8, 8)
    """
    from monai.transforms import (
        Compose,
        RandFlip,
        RandGaussianNoise,
        RandRotate90,
        RandScaleIntensity,
        RandShiftIntensity,
    )

    transform = Compose(
        [
            RandFlip(prob=0.5, spatial_axis=0),
            RandFlip(prob=0.5, spatial_axis=1),
            RandFlip(prob=0.5, spatial_axis=2),
            RandRotate90(prob=0.75, max_k=3, spatial_axes=(1, 2)),
            RandScaleIntensity(factors=0.1, prob=0.5),
            RandShiftIntensity(offsets=0.1, prob=0.5),
            RandGaussianNoise(prob=0.5, std=0.05),
        ],
        lazy=False,
    )
    transform.set_random_state(seed=seed)
    return transform


class CropDataset(Dataset):
    """Crops ``(N, C, Z, Y, X)`` and labels ``(N,)`` as ``{"crop", "label"}`` items."""

    def __init__(self, crops: np.ndarray, labels: np.ndarray, transform=None) -> None:  # type: ignore[no-untyped-def]
        self.crops = crops
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        crop = self.crops[i]
        if self.transform is not None:
            crop = self.transform(crop)
        crop = torch.as_tensor(np.ascontiguousarray(np.asarray(crop, dtype=np.float32)))
        return {"crop": crop, "label": torch.as_tensor(self.labels[i])}


class CropDataModule(L.LightningDataModule):
    """Labelled crops in memory, split per class, augmented for training.

    Parameters
    ----------
    crops : ndarray
        float32 ``(N, C, Z, Y, X)`` (preprocessing, ``mask`` or ``distance``, already applied).
    labels : ndarray
        Integer class indices ``(N,)`` in ``0 .. num_classes - 1``.
    split : SplitConfig or (train, val, test) index arrays, optional
        How to split; default :class:`SplitConfig`.
    extra_train : (crops, labels), optional
        More training samples (the pseudo-labelled crops of semi-supervised pretraining); they
        never enter validation or test.
    batch_size : int
        Batch size of every loader.
    augment : bool
        Augment training crops (:func:`augmentation`).
    seed : int
        Seed of the augmentation and the training order.

    Examples
    --------
    >>> crops = np.zeros((50, 1, 2, 8, 8), np.float32)
    >>> dm = CropDataModule(crops, np.repeat([0, 1], 25), batch_size=4)
    >>> len(dm.train_index), len(dm.val_index), len(dm.test_index)
    (30, 10, 10)
    """

    def __init__(
        self,
        crops: np.ndarray,
        labels: np.ndarray,
        *,
        split: SplitConfig | tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
        extra_train: tuple[np.ndarray, np.ndarray] | None = None,
        batch_size: int = 16,
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.crops = check_crops(crops, labels, "crops")
        self.labels = np.asarray(labels, dtype=np.int64)
        index = split if isinstance(split, tuple) else stratified_split(self.labels, split)
        self.train_index, self.val_index, self.test_index = (np.asarray(i, np.int64) for i in index)
        if extra_train is not None:
            extra_crops = check_crops(extra_train[0], extra_train[1], "pseudo-labelled crops")
            if extra_crops.shape[1:] != self.crops.shape[1:]:
                raise AopError(
                    f"pseudo-labelled crops: shape {extra_crops.shape[1:]} does not match "
                    f"the crops {self.crops.shape[1:]}"
                )
            extra_train = (extra_crops, np.asarray(extra_train[1], np.int64))
        self.extra_train = extra_train
        self.batch_size = int(batch_size)
        self.augment = augment
        self.seed = int(seed)

    def train_dataset(self) -> CropDataset:
        """The training set: the train split plus ``extra_train``, augmented."""
        crops, labels = self.crops[self.train_index], self.labels[self.train_index]
        if self.extra_train is not None:
            crops = np.concatenate([crops, self.extra_train[0]])
            labels = np.concatenate([labels, self.extra_train[1]])
        transform = augmentation(self.seed) if self.augment else None
        return CropDataset(crops, labels, transform)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.train_dataset(), batch_size=self.batch_size, shuffle=True, generator=generator
        )

    def _loader(self, index: np.ndarray) -> DataLoader:
        return DataLoader(CropDataset(self.crops[index], self.labels[index]), self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_index)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_index)


def check_crops(crops: np.ndarray, labels: np.ndarray, what: str) -> np.ndarray:
    """Check crops ``(N, C, Z, Y, X)`` float32 against labels ``(N,)``; return them as float32."""
    crops = np.asarray(crops)
    labels = np.asarray(labels)
    if crops.ndim != 5:
        raise AopError(f"{what}: expected (N, C, Z, Y, X), got shape {crops.shape}")
    if crops.dtype.kind != "f":
        raise AopError(f"{what}: expected float32 crops, got dtype {crops.dtype}")
    if labels.ndim != 1 or len(labels) != len(crops):
        raise AopError(f"{what}: {len(crops)} crops but labels of shape {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise AopError(f"{what}: labels must be integer class indices, got dtype {labels.dtype}")
    if len(labels) and labels.min() < 0:
        raise AopError(f"{what}: labels must be >= 0, got {labels.min()}")
    if not np.all(np.isfinite(crops)):
        raise AopError(f"{what}: crops have non-finite values (NaN or inf)")
    return crops.astype(np.float32, copy=False)
