"""From placed objects to a label volume and a fluorescence image.

Rasterisation visits each object's bounding box only. Where two objects of a touching pair claim
the same voxel, the one with the smaller normalised radius keeps it, which splits the overlap along
a smooth surface: the two objects share voxel faces. An object cut by that surface or by the
volume's faces into several face-connected pieces keeps its largest piece (rare, for strongly
irregular shapes), so every label is one piece.

The image model: per-object brightness (log-normal), smooth multiplicative texture inside objects,
blur by a Gaussian point-spread function (its sigma in voxels follows the spacing), a constant
background, Poisson photon noise and Gaussian read noise.
"""

from __future__ import annotations

from collections.abc import Sequence

import cc3d
import fastremap
import numpy as np
from scipy import ndimage as ndi

from aop.synth.params import SimulationParams
from aop.synth.shapes import Blob, blob_box, inside_mask, normalized_radius

__all__ = ["rasterize", "render_image", "smoothed_noise_std"]

_CHUNK_VOXELS = 1 << 23
_TRUNCATE = 3.0


def smoothed_noise_std(sigma: Sequence[float], truncate: float = _TRUNCATE) -> float:
    """Standard deviation of unit white noise after a separable Gaussian filter.

    The filtered value is a weighted sum of independent unit variables, so its variance is the
    sum of squared weights: the product over axes of the squared 1D kernel weights (the kernel
    that :func:`scipy.ndimage.gaussian_filter` uses, radius ``int(truncate * sigma + 0.5)``).
    """
    variance = 1.0
    for s in sigma:
        if s <= 0:
            continue
        radius = int(truncate * s + 0.5)
        x = np.arange(-radius, radius + 1, dtype=float)
        weights = np.exp(-0.5 * (x / s) ** 2)
        weights /= weights.sum()
        variance *= float((weights**2).sum())
    return variance**0.5


def rasterize(
    blobs: Sequence[Blob],
    shape: tuple[int, int, int],
    spacing: Sequence[float],
    min_voxels: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw objects into a label volume.

    Parameters
    ----------
    blobs : sequence of Blob
        Object ``i`` is drawn with label ``i + 1`` before renumbering.
    shape : (int, int, int)
        Volume shape (z, y, x).
    spacing : (float, float, float)
        Voxel size; voxel ``i`` has its centre at ``i * spacing``.
    min_voxels : int
        Objects with fewer voxels in the volume are removed.

    Returns
    -------
    labels : ndarray of uint32
        Consecutive labels 1..N.
    kept : ndarray of int
        For each label ``k`` (1..N), ``kept[k - 1]`` is the index of its blob in ``blobs``.
    """
    spacing = np.asarray(spacing, dtype=float)
    labels = np.zeros(shape, dtype=np.uint32)
    boxes: dict[int, tuple[slice, slice, slice]] = {}
    may_split: set[int] = set()  # cut by the volume's faces or by a touching partner
    for index, blob in enumerate(blobs):
        box = blob_box(blob, spacing, shape)
        if box is None:
            continue
        slices, (dz, dy, dx) = box
        boxes[index] = slices
        if _clipped(blob, slices, spacing, shape):
            may_split.add(index)
        inside = inside_mask(blob, dz, dy, dx)
        view = labels[slices]
        taken = inside & (view > 0)
        if taken.any():
            may_split.add(index)
            may_split.update(int(owner) - 1 for owner in np.unique(view[taken]))
            _resolve(blobs, blob, view, inside, taken, (dz, dy, dx))
        view[inside] = index + 1
    for index in may_split:
        _keep_largest_piece(labels[boxes[index]], index + 1)
    counts = np.bincount(labels.ravel(), minlength=len(blobs) + 1)
    present = np.flatnonzero(counts[1:] >= min_voxels) + 1
    mapping = {int(old): 0 for old in np.flatnonzero(counts[1:]) + 1}
    mapping.update({int(old): new for new, old in enumerate(present, start=1)})
    mapping[0] = 0
    fastremap.remap(labels, mapping, preserve_missing_labels=True, in_place=True)
    return labels, present - 1


def _clipped(
    blob: Blob, slices: tuple[slice, slice, slice], spacing: np.ndarray, shape: tuple[int, ...]
) -> bool:
    """Whether the volume's faces cut the blob's box."""
    low = blob.center - blob.half_extent
    high = blob.center + blob.half_extent
    return bool(np.any(low < 0) or np.any(high > (np.asarray(shape) - 1) * spacing))


def _keep_largest_piece(view: np.ndarray, label: int) -> None:
    """Clear all but the largest face-connected piece of ``label`` inside ``view``."""
    mask = view == label
    pieces = cc3d.connected_components(mask, connectivity=6)
    if pieces.max() <= 1:
        return
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    view[mask & (pieces != sizes.argmax())] = 0


def _resolve(
    blobs: Sequence[Blob],
    blob: Blob,
    view: np.ndarray,
    inside: np.ndarray,
    taken: np.ndarray,
    displacements: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    """Give contested voxels to whichever object has the smaller normalised radius there.

    ``inside`` (the new blob's mask over its box) loses the voxels its rivals keep.
    """
    where = np.nonzero(taken)
    owners = view[where]
    points = [np.broadcast_to(d, inside.shape)[where] for d in displacements]
    q_new = normalized_radius(blob, *points)
    keep_old = np.zeros(owners.shape, dtype=bool)
    for owner in np.unique(owners):
        rival = blobs[int(owner) - 1]
        mine = owners == owner
        shift = blob.center - rival.center
        dz, dy, dx = (points[axis][mine] + shift[axis] for axis in range(3))
        q_rival = normalized_radius(rival, dz, dy, dx)
        keep_old[mine] = q_rival <= q_new[mine]
    inside[tuple(axis[keep_old] for axis in where)] = False


def render_image(
    labels: np.ndarray,
    brightness: np.ndarray,
    params: SimulationParams,
    rng: np.random.Generator,
    texture: np.ndarray | None = None,
) -> np.ndarray:
    """Turn a label volume into a noisy, blurred fluorescence image.

    Parameters
    ----------
    labels : ndarray of uint32
        Consecutive labels 1..N.
    brightness : ndarray, shape (N,)
        Photons per voxel of each object before texture and blur.
    params : SimulationParams
        Texture, point-spread function, background and noise settings.
    rng : numpy.random.Generator
        Source of texture and noise.
    texture : ndarray, shape (N,), optional
        Texture amplitude of each object (instance classes); default ``params.texture`` for all.

    Returns
    -------
    ndarray of float32
        The image in photons (read noise can make a few voxels negative).
    """
    spacing = np.asarray(params.spacing, dtype=float)
    lookup = np.concatenate([[0.0], brightness]).astype(np.float32)
    image = lookup[labels]
    if params.texture > 0 if texture is None else bool(np.any(texture > 0)):
        field = rng.standard_normal(labels.shape, dtype=np.float32)
        sigma = params.texture_scale / spacing
        ndi.gaussian_filter(field, sigma, output=field, truncate=_TRUNCATE)
        if texture is None:
            field *= np.float32(params.texture / smoothed_noise_std(sigma))
        else:
            amplitude = np.concatenate([[0.0], texture]) / smoothed_noise_std(sigma)
            field *= amplitude.astype(np.float32)[labels]
        field += 1.0
        np.maximum(field, 0.0, out=field)
        image *= field
        del field
    sigma = np.asarray(params.psf_sigma, dtype=float) / spacing
    if np.any(sigma > 0):
        ndi.gaussian_filter(image, sigma, output=image, mode="nearest", truncate=_TRUNCATE)
    image += np.float32(params.background)
    np.maximum(image, 0.0, out=image)
    if params.poisson_noise or params.gaussian_noise > 0:
        step = max(1, _CHUNK_VOXELS // max(1, labels.shape[1] * labels.shape[2]))
        for start in range(0, labels.shape[0], step):
            chunk = image[start : start + step]
            if params.poisson_noise:
                chunk[...] = rng.poisson(chunk)
            if params.gaussian_noise > 0:
                noise = rng.standard_normal(chunk.shape, dtype=np.float32)
                noise *= np.float32(params.gaussian_noise)
                chunk += noise
    return image
