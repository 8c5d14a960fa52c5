"""Train aop's own small 3D UNet on a synthetic benchmark and save it as a BioImage.IO package.

The network is MONAI's ``UNet`` (one input channel, two sigmoid outputs: foreground and instance
boundaries), trained with Lightning on random crops of a labelled data set (``aop synth`` output).
The saved package is loaded by the ``unet3d`` model (and by ``bioimageio``), so the embedded demo
has a real deep model without any download.

:class:`UNetModule` (network, loss, optimiser) and :class:`UNetDataModule` (random crops) are the
Lightning parts; :func:`train_unet` runs them on a data set and writes the package.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from monai.losses import DiceLoss
from monai.networks.nets import UNet

from aop.errors import AopError
from aop.io import load_dataset
from aop.outputs import prepare_output
from aop.segmentation.bioimageio_package import normalize_percentiles, write_model_package

__all__ = [
    "UNET_KWARGS",
    "RandomCrops",
    "UNetDataModule",
    "UNetModule",
    "targets_from_labels",
    "train_unet",
]

UNET_KWARGS: dict[str, Any] = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [8, 16, 32],
    "strides": [2, 2],
    "num_res_units": 1,
    "norm": "batch",  # running statistics: the same output whichever tile a voxel falls in
}


def targets_from_labels(labels: np.ndarray) -> np.ndarray:
    """(2, Z, Y, X) float32 training targets: foreground and inner instance boundaries."""
    from skimage.segmentation import find_boundaries

    foreground = labels > 0
    boundary = find_boundaries(labels, connectivity=1, mode="inner") & foreground
    return np.stack([foreground, boundary]).astype(np.float32)


class RandomCrops(torch.utils.data.IterableDataset):
    """``count`` random (image, target) crops of shape ``patch``, half of them flipped along x.

    The crops are drawn from ``numpy.random.default_rng(seed)``, so every pass over the data set
    yields the same crops in the same order.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        targets: Sequence[np.ndarray],
        patch: Sequence[int],
        count: int,
        seed: int,
    ) -> None:
        super().__init__()
        self.images, self.targets = list(images), list(targets)
        self.patch, self.count, self.seed = tuple(patch), count, seed

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        rng = np.random.default_rng(self.seed)
        for _ in range(self.count):
            i = int(rng.integers(len(self.images)))
            image, target = self.images[i], self.targets[i]
            sizes = zip(image.shape, self.patch, strict=True)
            corner = [int(rng.integers(0, s - p + 1)) for s, p in sizes]
            region = tuple(slice(c, c + p) for c, p in zip(corner, self.patch, strict=True))
            x = image[region][None]
            y = target[(slice(None), *region)]
            if rng.random() < 0.5:
                x, y = x[..., ::-1], y[..., ::-1]
            yield torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


class UNetDataModule(L.LightningDataModule):
    """Training crops of labelled volumes for :class:`UNetModule`.

    Each image is scaled by :func:`normalize_percentiles`, its labels become
    :func:`targets_from_labels`, and both are padded up to ``patch`` where a volume is smaller
    (the image by reflection, the targets by zeros).

    Parameters
    ----------
    images : sequence of ndarray
        (Z, Y, X) images.
    labels : sequence of ndarray
        (Z, Y, X) instance labels, one per image.
    patch : (int, int, int)
        Training crop (z, y, x).
    steps : int
        Optimiser steps the loader feeds (``steps * batch_size`` crops).
    batch_size : int
        Crops per step.
    seed : int
        Seed of the crops.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        labels: Sequence[np.ndarray],
        *,
        patch: Sequence[int] = (16, 32, 32),
        steps: int = 300,
        batch_size: int = 2,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.patch = tuple(int(p) for p in patch)
        self.images: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        for image, label in zip(images, labels, strict=True):
            pad = [(0, max(0, p - s)) for p, s in zip(self.patch, image.shape, strict=True)]
            self.images.append(np.pad(normalize_percentiles(image), pad, mode="reflect"))
            self.targets.append(np.pad(targets_from_labels(label), [(0, 0), *pad]))
        self.steps, self.batch_size, self.seed = steps, batch_size, seed

    def train_dataloader(self) -> torch.utils.data.DataLoader:
        crops = RandomCrops(
            self.images, self.targets, self.patch, self.steps * self.batch_size, self.seed
        )
        return torch.utils.data.DataLoader(crops, batch_size=self.batch_size)


class UNetModule(L.LightningModule):
    """MONAI's ``UNet`` trained on foreground and boundary targets with BCE plus Dice loss.

    The hyperparameters are saved with each checkpoint, so ``UNetModule.load_from_checkpoint``
    rebuilds the same network.

    Parameters
    ----------
    architecture : mapping, optional
        Keyword arguments of ``monai.networks.nets.UNet``; :data:`UNET_KWARGS` when omitted.
    learning_rate : float
        Adam learning rate.
    boundary_weight : float
        Weight of the positive voxels of the boundary channel in the BCE (boundaries are thin).

    Examples
    --------
    >>> module = UNetModule()
    >>> tuple(module(torch.zeros(1, 1, 16, 32, 32)).shape)
    (1, 2, 16, 32, 32)
    """

    def __init__(
        self,
        architecture: Mapping[str, Any] | None = None,
        learning_rate: float = 3e-3,
        boundary_weight: float = 3.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.network = UNet(**dict(architecture or UNET_KWARGS))
        self.dice = DiceLoss(sigmoid=True)
        weight = torch.tensor([1.0, boundary_weight]).view(2, 1, 1, 1)
        self.bce = torch.nn.BCEWithLogitsLoss(pos_weight=weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of foreground and boundary, (N, 2, Z, Y, X), of (N, 1, Z, Y, X) images."""
        return self.network(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _index: int) -> torch.Tensor:
        x, y = batch
        logits = self.network(x)
        loss = self.bce(logits, y) + self.dice(logits, y)
        self.log("loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.learning_rate)


def train_unet(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    max_steps: int = 300,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
    overwrite_hint: str = "overwrite=True",
) -> Path:
    """Train the UNet on a labelled data set and write it as a BioImage.IO package.

    Parameters
    ----------
    data : path
        Data-set folder with ``images/`` and ``labels/`` (e.g. written by ``aop synth``).
    out : path
        Package folder to write: new, empty, or (with ``overwrite``) an earlier aop package
        (checked before training; written beside and renamed in, see :mod:`aop.outputs`).
    max_steps : int
        Optimiser steps (of two 16 x 32 x 32 crops each; smaller volumes are padded).
    seed : int
        Seed of weights and crops.
    progress : bool
        Show Lightning's progress bar.
    overwrite : bool
        Replace an earlier package written by aop.
    overwrite_hint : str
        How a refusal names the way to allow replacing.

    Returns
    -------
    Path
        The package folder.
    """
    if max_steps < 1:
        raise AopError(f"--max-steps must be at least 1, got {max_steps}")
    prepare_output(
        out, inputs=[data], overwrite=overwrite, kind="folder", overwrite_hint=overwrite_hint
    )
    dataset = load_dataset(data, require_labels=True)
    images = [dataset.image(name) for name in dataset.names]
    crops = UNetDataModule(
        [image[0] if image.ndim == 4 else image for image in images],
        [dataset.labels(name) for name in dataset.names],
        steps=max_steps,
        seed=seed,
    )
    L.seed_everything(seed, verbose=False)  # the network's initial weights
    module = UNetModule(dict(UNET_KWARGS))
    trainer = L.Trainer(
        max_steps=max_steps,
        max_epochs=1,
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=crops)
    network = module.network.cpu().eval()
    return write_model_package(
        out,
        network,
        callable_name="UNet",
        import_from="monai.networks.nets",
        kwargs=UNET_KWARGS,
        name="aop unet3d",
        description=(
            f"Small 3D UNet (foreground, boundary) trained by aop for {max_steps} steps on "
            f"{dataset.info.name}."
        ),
        voxel_size=dataset.info.voxel_size,
        min_shape=(20, 20, 20),  # the package's default step (4) and halo (8) fit this UNet
        overwrite=overwrite,
    )
