"""Crops in memory as a ``LightningDataModule``: stratified splits, sampling, augmentation.

Splits (:func:`stratified_split`) are drawn per class, so every class is represented in train,
validation and test in the configured proportions; a class with fewer than ``small_class_size``
samples puts ``small_class_val_fraction`` (50 %, as the paper does for its 16 Schwann cells) into
validation instead. The paper's Core-Shell split (48 train, 12 test, 300 validation of 360) is
``val_fraction=300/360, test_fraction=12/360``.

Sampling: ``sampler="shuffle"`` visits every training crop once per epoch in a seeded random
order; ``sampler="balanced"`` draws as many crops per epoch, with replacement, each with probability
proportional to ``1 / count`` of its class, so every class fills about the same share of the batches
(of 40 and 3 crops, the 3 fill about half of the draws, not 7 %; the augmentation makes their
repeats differ). It is an alternative to cross-entropy class weights (``class_weights="balanced"``
in :class:`~aop.classification.train.ClassifierConfig`); the two together correct twice.

Augmentation (training crops only, seeded; :class:`CropAugmentation`) draws, per crop ``(C, Z, Y,
X)``:

- one of the eight symmetries of the square in the yx plane (the dihedral group: a rotation by
  ``k`` quarter turns, ``k`` uniform in 0..3, then a flip of x with probability 1/2, so each of the
  eight with probability 1/8), applied to every channel alike. A crop whose y and x sizes differ
  draws from the four that keep its shape (identity, the two flips, the half turn). A quarter turn
  is a symmetry of the data when the crops sample y and x with the same spacing, which
  :func:`aop.instances.crops.instance_crops` does unless the data's own yx voxel is not square and
  no ``target_spacing`` resamples it.
- optionally (``z_flip``) a flip of z with probability 1/2. Off by default: the objects of a
  microscope volume do not look the same upside down in z. The point spread function is
  asymmetric along the optical axis (spherical aberration from a refractive-index mismatch), and
  intensity falls with depth (scattering, absorption, bleaching of the planes imaged first), so a
  flipped crop is one the microscope does not produce. Turn it on for data known to be symmetric
  in z (a cleared sample with a matched immersion medium, or crops from deconvolved volumes).
- intensity jitter of the image channels, each with probability 1/2: a scale by ``1 + u``, ``u``
  uniform in ``[-scale, scale]``; a shift by ``u * sd``; Gaussian noise of standard deviation
  ``noise * sd``, where ``sd`` is the channel's standard deviation over the crop, so the jitter
  is the same relative change whatever the data's intensity range (raw 16-bit intensities or
  values in [0, 1]). Mask channels (the binary mask of ``mask`` preprocessing, which
  :func:`~aop.instances.crops.instance_crops` writes into channel ``mask_channel``, 0 by default)
  get the symmetry only, so they stay exactly binary.

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
from typing import Literal

import lightning as L
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from aop.errors import AopError

__all__ = [
    "SAMPLERS",
    "CropAugmentation",
    "CropDataModule",
    "CropDataset",
    "SplitConfig",
    "augmentation",
    "stratified_split",
]

#: How the training crops of an epoch are drawn (module docstring).
SAMPLERS = ("shuffle", "balanced")


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


class CropAugmentation:
    """Random symmetries and intensity jitter of crops ``(C, Z, Y, X)`` (see the module docstring).

    Parameters
    ----------
    seed : int
        Seeds the draws (a NumPy ``Generator``); the same seed gives the same sequence of crops.
    z_flip : bool
        Also flip z with probability 1/2.
    mask_channels : sequence of int
        Channels that only get the symmetry (a binary mask), never the intensity jitter.
    scale, shift, noise : float
        Intensity jitter: the largest relative scale, the largest shift and the noise's standard
        deviation, the last two in units of the channel's standard deviation over the crop; 0
        turns one off.
    prob : float
        Probability of each of the three intensity transforms.

    Examples
    --------
    >>> crop = np.arange(2 * 1 * 2 * 2, dtype=np.float32).reshape(2, 1, 2, 2)
    >>> crop[1] = [[1, 0], [0, 0]]  # channel 1: a binary mask
    >>> out = CropAugmentation(seed=1, mask_channels=[1])(crop)
    >>> out.shape, sorted(np.unique(out[1]).tolist())
    ((2, 1, 2, 2), [0.0, 1.0])
    """

    def __init__(
        self,
        seed: int = 0,
        *,
        z_flip: bool = False,
        mask_channels: Sequence[int] = (),
        scale: float = 0.1,
        shift: float = 0.1,
        noise: float = 0.05,
        prob: float = 0.5,
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.z_flip = bool(z_flip)
        self.mask_channels = frozenset(int(c) for c in mask_channels)
        self.scale, self.shift, self.noise, self.prob = scale, shift, noise, prob

    def __call__(self, crop: np.ndarray) -> np.ndarray:
        """A new augmented float32 copy of ``crop`` (the input is not modified)."""
        crop = np.asarray(crop, dtype=np.float32)
        if crop.ndim != 4:
            raise AopError(f"augmentation: expected a crop (C, Z, Y, X), got shape {crop.shape}")
        rng = self.rng
        square = crop.shape[2] == crop.shape[3]
        turns = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
        out = np.rot90(crop, turns, axes=(2, 3))
        if rng.random() < 0.5:
            out = out[..., ::-1]
        if self.z_flip and rng.random() < 0.5:
            out = out[:, ::-1]
        out = np.array(out, dtype=np.float32)  # a copy: the jitter below writes in place
        image = [c for c in range(len(out)) if c not in self.mask_channels]
        if not image:
            return out
        sd = out[image].std(axis=(1, 2, 3), keepdims=True)
        values = out[image]
        if self.scale and rng.random() < self.prob:
            values *= np.float32(1 + rng.uniform(-self.scale, self.scale))
        if self.shift and rng.random() < self.prob:
            values += np.float32(rng.uniform(-self.shift, self.shift)) * sd
        if self.noise and rng.random() < self.prob:
            values += (rng.standard_normal(values.shape) * (self.noise * sd)).astype(np.float32)
        out[image] = values
        return out


def augmentation(
    seed: int = 0, *, z_flip: bool = False, mask_channels: Sequence[int] = ()
) -> CropAugmentation:
    """The training augmentation of one crop ``(C, Z, Y, X)``, seeded (:class:`CropAugmentation`).

    Examples
    --------
    >>> aug = augmentation(seed=0)
    >>> tuple(aug(np.ones((1, 4, 8, 8), np.float32)).shape)
    (1, 4, 8, 8)
    """
    return CropAugmentation(seed, z_flip=z_flip, mask_channels=mask_channels)


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
    augment_z_flip : bool
        Include the z flip in the augmentation (module docstring: off for most microscopy).
    mask_channel : int, optional
        The channel that holds the instance's binary mask (``mask`` preprocessing): it gets the
        symmetries but no intensity jitter. None: every channel is intensities (``distance``).
    sampler : {"shuffle", "balanced"}
        How an epoch's training crops are drawn (module docstring).
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
        augment_z_flip: bool = False,
        mask_channel: int | None = None,
        sampler: Literal["shuffle", "balanced"] = "shuffle",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.crops = check_crops(crops, labels, "crops")
        if sampler not in SAMPLERS:
            raise AopError(f"sampler: {sampler!r} is not one of {', '.join(SAMPLERS)}")
        if mask_channel is not None and not 0 <= mask_channel < self.crops.shape[1]:
            raise AopError(
                f"mask_channel: {mask_channel} is not a channel of crops with "
                f"{self.crops.shape[1]} channel(s)"
            )
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
        self.augment_z_flip = bool(augment_z_flip)
        self.mask_channel = mask_channel
        self.sampler = sampler
        self.seed = int(seed)

    def training_set(self) -> tuple[np.ndarray, np.ndarray]:
        """Crops and labels of the train split plus ``extra_train``, not augmented."""
        crops, labels = self.crops[self.train_index], self.labels[self.train_index]
        if self.extra_train is not None:
            crops = np.concatenate([crops, self.extra_train[0]])
            labels = np.concatenate([labels, self.extra_train[1]])
        return crops, labels

    def train_dataset(self) -> CropDataset:
        """The training set: the train split plus ``extra_train``, augmented."""
        crops, labels = self.training_set()
        transform = None
        if self.augment:
            masks = () if self.mask_channel is None else (self.mask_channel,)
            transform = augmentation(self.seed, z_flip=self.augment_z_flip, mask_channels=masks)
        return CropDataset(crops, labels, transform)

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset()
        generator = torch.Generator().manual_seed(self.seed)
        if self.sampler == "shuffle":
            return DataLoader(
                dataset, batch_size=self.batch_size, shuffle=True, generator=generator
            )
        # each crop is drawn with probability 1 / count of its class: equal class shares
        counts = np.bincount(dataset.labels)
        weights = torch.as_tensor(1.0 / counts[dataset.labels], dtype=torch.float64)
        sampler = WeightedRandomSampler(
            weights, num_samples=len(dataset), replacement=True, generator=generator
        )
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler)

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
