"""A Fig. 3-like panel: a real slice, a synthetic slice and the same synthetic slice adapted."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["adaptation_panel"]


def _slice(volume: np.ndarray) -> np.ndarray:
    """The middle yx slice of the first channel of (Z, Y, X) or (C, Z, Y, X)."""
    if volume.ndim == 4:
        volume = volume[0]
    return volume[volume.shape[0] // 2] if volume.ndim == 3 else volume


def adaptation_panel(real: np.ndarray, synthetic: np.ndarray, adapted: np.ndarray) -> Any:
    """A matplotlib figure with the middle slices of ``real``, ``synthetic`` and ``adapted``.

    Each image is shown between its own 1 and 99.8 percentiles.

    >>> import numpy as np
    >>> figure = adaptation_panel(*(np.random.rand(3, 8, 8) for _ in range(3)))
    >>> len(figure.axes)
    3
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.2), dpi=100)
    axes = figure.subplots(1, 3)
    titles = ("a) real", "b) synthetic", "c) adapted")
    for axis, volume, title in zip(axes, (real, synthetic, adapted), titles, strict=True):
        image = _slice(np.asarray(volume, dtype=np.float32))
        lo, hi = np.percentile(image, [1, 99.8])
        axis.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        axis.set_title(title)
        axis.axis("off")
    figure.tight_layout()
    return figure
