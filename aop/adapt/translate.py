"""Whole-volume translation with a trained generator, tiled with overlap blending.

Tiles are the training patch; MONAI's ``sliding_window_inference`` blends overlapping tiles with
Gaussian weights. In 2D mode every slice, with its context slices as channels, is one image of a
batch of slices, and the centre slice of the output is kept.

>>> import numpy as np, torch
>>> from aop.adapt.config import AdaptSettings
>>> from aop.adapt.model import CycleGAN
>>> module = CycleGAN(AdaptSettings(ngf=4, ndf=4, n_blocks=1, patch=(16, 16)).model_dump())
>>> translate_volume(module, np.zeros((1, 3, 20, 20), np.float32)).shape
(1, 3, 20, 20)
"""

from __future__ import annotations

import numpy as np
import torch

from aop.adapt.data import context_stack
from aop.adapt.model import CycleGAN

__all__ = ["translate_volume"]

#: Slices translated together in 2D mode.
SLICES_PER_BATCH = 16


def translate_volume(
    module: CycleGAN,
    volume: np.ndarray,
    *,
    overlap: float | None = None,
    mode: str = "gaussian",
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Translate a normalised (C, Z, Y, X) synthetic volume into the real domain.

    Parameters
    ----------
    module : CycleGAN
        The trained module; its ``generator_ab`` is applied.
    volume : ndarray
        (C, Z, Y, X) float32, normalised as for training (:func:`aop.adapt.data.normalize`).
    overlap : float, optional
        Tile overlap (default: the module's setting).
    mode : {"gaussian", "constant"}
        Blending of overlapping tiles.
    device : str or torch.device, optional
        Default: CUDA when available, else the CPU.

    Returns
    -------
    ndarray
        (C, Z, Y, X) float32 in the generator's range [-1, 1].
    """
    from monai.inferers import sliding_window_inference

    s = module.settings
    overlap = s.overlap if overlap is None else overlap
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = module.generator_ab.to(device).eval()
    keep = module.centre_channels()
    roi = tuple(s.patch)
    with torch.inference_mode():
        if s.mode == "3d":
            x = torch.from_numpy(np.ascontiguousarray(volume[None])).to(device)
            y = sliding_window_inference(x, roi, 1, generator, overlap=overlap, mode=mode)
            return y[0].cpu().numpy().astype(np.float32)
        stack = context_stack(volume, s.context)  # (Z, C', Y, X)
        out = np.empty(volume.shape, np.float32)
        for start in range(0, stack.shape[0], SLICES_PER_BATCH):
            x = torch.from_numpy(stack[start : start + SLICES_PER_BATCH]).to(device)
            y = sliding_window_inference(
                x, roi, SLICES_PER_BATCH, generator, overlap=overlap, mode=mode
            )
            out[:, start : start + x.shape[0]] = y[:, keep].cpu().numpy().swapaxes(0, 1)
    return out
