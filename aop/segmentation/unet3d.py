"""Train aop's own small 3D UNet on a synthetic benchmark and save it as a BioImage.IO package.

The network is MONAI's ``UNet`` (one input channel, two sigmoid outputs: foreground and instance
boundaries), trained with Lightning on random crops of a labelled data set (``aop synth`` output).
The saved package is loaded by the ``unet3d`` model (and by ``bioimageio``), so the embedded demo
has a real deep model without any download.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aop.errors import AopError

__all__ = ["UNET_KWARGS", "targets_from_labels", "train_unet"]

UNET_KWARGS: dict[str, Any] = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "channels": [8, 16, 32],
    "strides": [2, 2],
    "num_res_units": 1,
    "norm": "batch",  # running statistics: the same output whichever tile a voxel falls in
}
HALO = (8, 8, 8)
STEP = (4, 4, 4)


def targets_from_labels(labels: np.ndarray) -> np.ndarray:
    """(2, Z, Y, X) float32 training targets: foreground and inner instance boundaries."""
    from skimage.segmentation import find_boundaries

    foreground = labels > 0
    boundary = find_boundaries(labels, connectivity=1, mode="inner") & foreground
    return np.stack([foreground, boundary]).astype(np.float32)


def normalize_percentiles(image: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Scale to the (low, high) percentiles, as the package's ``scale_range`` step does."""
    lo, hi = np.percentile(image, [low, high])
    return ((image - lo) / (hi - lo + 1e-6)).astype(np.float32)


def _crop_dataset(images, targets, patch, steps, seed):  # type: ignore[no-untyped-def]
    import torch

    class Crops(torch.utils.data.IterableDataset):
        def __iter__(self):  # type: ignore[no-untyped-def]
            rng = np.random.default_rng(seed)
            for _ in range(steps):
                i = int(rng.integers(len(images)))
                image, target = images[i], targets[i]
                sizes = zip(image.shape, patch, strict=True)
                corner = [int(rng.integers(0, s - p + 1)) for s, p in sizes]
                region = tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True))
                x = image[region][None]
                y = target[(slice(None), *region)]
                if rng.random() < 0.5:
                    x, y = x[..., ::-1], y[..., ::-1]
                yield torch.from_numpy(x.copy()), torch.from_numpy(y.copy())

    return Crops()


def train_unet(
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    max_steps: int = 300,
    patch: Sequence[int] = (16, 32, 32),
    batch_size: int = 2,
    learning_rate: float = 3e-3,
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
        Optimiser steps.
    patch : (int, int, int)
        Training crop (z, y, x); volumes smaller than it are padded.
    batch_size : int
        Crops per step.
    learning_rate : float
        Adam learning rate.
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
    from aop.io import load_dataset
    from aop.outputs import prepare_output

    if max_steps < 1:
        raise AopError(f"--max-steps must be at least 1, got {max_steps}")
    if any(p % 4 for p in patch):
        raise AopError(f"patch {tuple(patch)} must be multiples of 4 (two 2x poolings)")
    prepare_output(
        out, inputs=[data], overwrite=overwrite, kind="folder", overwrite_hint=overwrite_hint
    )
    dataset = load_dataset(data, require_labels=True)
    import lightning as L
    import torch
    from monai.losses import DiceLoss
    from monai.networks.nets import UNet

    from aop.segmentation.bioimageio_package import write_model_package

    images, targets = [], []
    for name in dataset.names:
        image = dataset.image(name)
        if image.ndim == 4:
            image = image[0]
        labels = dataset.labels(name)
        pad = [(0, max(0, p - s)) for p, s in zip(patch, image.shape, strict=True)]
        images.append(np.pad(normalize_percentiles(image), pad, mode="reflect"))
        targets.append(np.pad(targets_from_labels(labels), [(0, 0), *pad]))

    L.seed_everything(seed, verbose=False)
    torch.manual_seed(seed)
    network = UNet(**UNET_KWARGS)
    dice = DiceLoss(sigmoid=True)
    bce = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([1.0, 3.0]).view(2, 1, 1, 1))

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.network = network

        def training_step(self, batch, _):  # type: ignore[no-untyped-def]
            x, y = batch
            logits = self.network(x)
            loss = bce(logits, y) + dice(logits, y)
            self.log("loss", loss, prog_bar=True)
            return loss

        def configure_optimizers(self):  # type: ignore[no-untyped-def]
            return torch.optim.Adam(self.parameters(), lr=learning_rate)

    crops = _crop_dataset(images, targets, tuple(patch), max_steps * batch_size, seed)
    loader = torch.utils.data.DataLoader(crops, batch_size=batch_size)
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
    trainer.fit(Module(), loader)
    network = network.cpu().eval()
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
        channel_names=("foreground", "boundary"),
        voxel_size=dataset.info.voxel_size,
        min_shape=(20, 20, 20),
        step=STEP,
        halo=HALO,
        overwrite=overwrite,
    )
