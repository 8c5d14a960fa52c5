"""Fixed-size crops of every instance, the classifier's input (paper section II-C.4).

Conventions:

- A crop has ``size = (z, y, x)`` samples spaced ``target_spacing`` apart (µm), so it covers
  ``size * target_spacing`` µm whatever the data's voxel size (anisotropy-aware resampling, linear
  interpolation for intensities, nearest neighbour for the mask). Without ``target_spacing`` the
  crop keeps the data's voxel size and the samples are voxels, copied exactly.
- The crop is centred on the instance's centroid: its middle sample ``(size - 1) / 2`` lies on the
  centroid, shifted to the nearest voxel when the grid is not resampled. Samples outside the
  volume are 0 (zero padding at the border).
- ``method="mask"``: every image channel, with channel ``mask_channel`` (the channel the instances
  were segmented on, 0 by default) replaced by the binary mask of the instance (1 inside, 0
  elsewhere, neighbours included).
- ``method="distance"`` (paper eq. 6): every channel is multiplied, outside the instance, by
  ``exp(-d / sigma)``, where ``d`` is the Euclidean distance in µm from the voxel to the nearest
  voxel of the instance (``edt`` with the voxel size as anisotropy) and ``sigma`` is in µm; inside
  the instance ``d = 0`` and intensities are unchanged. The scaling is done at the data's
  resolution, before resampling.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import edt
import numpy as np
from scipy import ndimage as ndi

from aop.errors import AopError
from aop.instances.features import check_labels_image, check_spacing

__all__ = ["METHODS", "instance_crops"]

METHODS = ("mask", "distance")
MIN_SIZE = 4


def _check_size(size: Sequence[int]) -> tuple[int, int, int]:
    try:
        values = tuple(int(s) for s in size)
        exact = all(int(s) == s for s in size)
    except (TypeError, ValueError):
        raise AopError(f"crop size must be three integers (z, y, x), got {size!r}") from None
    if len(values) != 3 or not exact:
        raise AopError(f"crop size must be three integers (z, y, x), got {size!r}")
    if min(values) < MIN_SIZE:
        raise AopError(f"crop size {list(values)} is smaller than {MIN_SIZE} along an axis")
    return values  # type: ignore[return-value]


def instance_crops(
    labels: np.ndarray,
    image: np.ndarray,
    *,
    size: Sequence[int] = (16, 64, 64),
    spacing: Sequence[float] | None = None,
    target_spacing: Sequence[float] | None = None,
    method: str = "mask",
    sigma: float = 2.0,
    labels_subset: Iterable[int] | None = None,
    mask_channel: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Crop every instance (or ``labels_subset``) to a fixed size, preprocessed by ``method``.

    Parameters
    ----------
    labels : ndarray (Z, Y, X)
        Instance labels, 0 = background.
    image : ndarray (Z, Y, X) or (C, Z, Y, X)
        Intensities; a 3D image is one channel.
    size : (int, int, int)
        Samples per crop (z, y, x), each at least 4.
    spacing : (float, float, float), optional
        Voxel size of the data (µm); default 1 µm.
    target_spacing : (float, float, float), optional
        Sample spacing of the crops (µm); default ``spacing`` (no resampling).
    method : {"mask", "distance"}
        Preprocessing (module docstring).
    sigma : float
        Length scale of the distance method in µm (> 0).
    labels_subset : iterable of int, optional
        Crop these instances, in this order; default every instance in increasing order.
    mask_channel : int
        Channel replaced by the mask (``method="mask"``).

    Returns
    -------
    crops : ndarray of float32, shape (N, C, z, y, x)
    ids : ndarray of int64, shape (N,)
        The label of each crop.

    Raises
    ------
    AopError
        For a crop size under 4, a non-positive ``sigma``, an unknown method, a label not in the
        volume, an empty volume, or shapes that do not match.

    Examples
    --------
    >>> labels = np.zeros((8, 16, 16), np.uint8); labels[3:5, 6:10, 6:10] = 1
    >>> image = np.full(labels.shape, 5.0, np.float32)
    >>> crops, ids = instance_crops(labels, image, size=(4, 8, 8), method="distance", sigma=1.0)
    >>> crops.shape, ids.tolist()
    ((1, 1, 4, 8, 8), [1])
    >>> [round(float(v), 3) for v in crops[0, 0, 2, 4, :3]]  # 2, 1, 0 µm away: 5 exp(-d)
    [0.677, 1.839, 5.0]
    """
    size = _check_size(size)
    if method not in METHODS:
        raise AopError(f"unknown crop method {method!r} (known: {', '.join(METHODS)})")
    if method == "distance" and not (np.isfinite(sigma) and sigma > 0):
        raise AopError(f"sigma must be positive, got {sigma!r}")
    labels, image = check_labels_image(labels, image)
    assert image is not None
    spacing = check_spacing((1.0, 1.0, 1.0) if spacing is None else spacing)
    target = spacing if target_spacing is None else check_spacing(target_spacing, "target_spacing")
    if method == "mask" and not 0 <= mask_channel < image.shape[0]:
        raise AopError(f"mask_channel {mask_channel} is not a channel of {image.shape[0]}")
    boxes = ndi.find_objects(labels)
    if labels_subset is None:
        ids = np.array([i + 1 for i, box in enumerate(boxes) if box is not None], np.int64)
    else:
        ids = np.array([int(i) for i in labels_subset], np.int64)
        for i in ids:
            if not 0 < i <= len(boxes) or boxes[i - 1] is None:
                raise AopError(f"label {i} does not exist in the volume")
    step = np.asarray(target) / np.asarray(spacing)  # source voxels per crop sample
    resample = not np.allclose(step, 1.0)
    half = (np.asarray(size) - 1) / 2.0
    offsets = [np.arange(n) * s for n, s in zip(size, step, strict=True)]
    extent = (np.asarray(size) - 1) * step
    shape = np.asarray(labels.shape)
    crops = np.zeros((len(ids), image.shape[0], *size), np.float32)
    for n, label in enumerate(ids):
        box = boxes[label - 1]
        local = labels[box] == label
        centroid = np.array([s.start for s in box]) + np.argwhere(local).mean(axis=0)
        start = centroid - half * step
        if not resample:
            start = np.round(start)
        # the source region the crop samples, plus the instance (its distance needs all of it)
        low = np.maximum(np.minimum(np.floor(start).astype(int) - 1, [s.start for s in box]), 0)
        high = np.maximum(np.ceil(start + extent).astype(int) + 2, [s.stop for s in box])
        high = np.minimum(high, shape)
        region = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
        mask = labels[region] == label
        values = image[(slice(None), *region)].astype(np.float32)
        if method == "distance":
            # a uint8 view of the (contiguous) complement: edt converts a bool array itself, at
            # about three times the cost of the transform on a crop-sized region
            outside = (~mask).view(np.uint8)
            distance = edt.edt(outside, anisotropy=spacing, black_border=False, parallel=1)
            values *= np.exp(-distance / sigma).astype(np.float32)
        if resample:
            axes = (o + s - a for o, s, a in zip(offsets, start, low, strict=True))
            grid = np.meshgrid(*axes, indexing="ij")
            for c in range(values.shape[0]):
                ndi.map_coordinates(values[c], grid, crops[n, c], order=1, mode="constant")
            if method == "mask":
                ndi.map_coordinates(mask, grid, crops[n, mask_channel], order=0, mode="constant")
        else:
            binary = mask if method == "mask" else None
            _copy_shifted(values, binary, start - low, crops[n], mask_channel)
    return crops, ids


def _copy_shifted(
    values: np.ndarray, mask: np.ndarray | None, start: np.ndarray, out: np.ndarray, channel: int
) -> None:
    """Copy a (C, z, y, x) block into ``out`` at integer offset ``start`` (zeros elsewhere)."""
    src, dst = [], []
    for axis, first in enumerate(start.astype(int)):
        n = out.shape[axis + 1]
        lo = max(first, 0)
        hi = min(first + n, values.shape[axis + 1])
        src.append(slice(lo, hi))
        dst.append(slice(lo - first, hi - first))
    out[(slice(None), *dst)] = values[(slice(None), *src)]
    if mask is not None:
        out[channel] = 0
        out[(channel, *dst)] = mask[tuple(src)]
