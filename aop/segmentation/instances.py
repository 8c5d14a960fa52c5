"""Turning model outputs into 3D instances: distance-transform watershed and slice stitching.

Pure functions on NumPy arrays (no Ray, no MLflow), shared by the model adapters.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cc3d
import edt
import fastremap
import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from skimage.morphology import h_maxima
from skimage.segmentation import watershed

__all__ = ["distance_watershed", "sigma_voxels", "stitch_slices"]


def sigma_voxels(sigma: float, spacing: Sequence[float]) -> tuple[float, ...]:
    """A Gaussian width of ``sigma`` in units of the finest axis, as voxels along each axis."""
    finest = min(spacing)
    return tuple(sigma * finest / s for s in spacing)


def distance_watershed(
    foreground: np.ndarray,
    boundary: np.ndarray | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    *,
    threshold: float = 0.5,
    sigma_seeds: float = 1.0,
    sigma_weights: float = 2.0,
    seed_height: float = 0.5,
    alpha: float = 1.0,
    min_size: int = 100,
    stacked: bool = False,
) -> np.ndarray:
    """Instances from foreground and/or boundary probabilities by a distance-transform watershed.

    The PlantSeg recipe: the interior (foreground above ``threshold`` and boundary below it) gets an
    anisotropic Euclidean distance transform; its smoothed regional maxima (``h``-maxima of height
    ``seed_height`` in physical units) seed a watershed whose relief mixes the smoothed boundary map
    (weight ``alpha``) with the inverted, normalised distance (weight ``1 - alpha``); the flood is
    confined to the foreground. Instances smaller than ``min_size`` voxels are removed.

    Parameters
    ----------
    foreground : ndarray
        (Z, Y, X) foreground probability in [0, 1] (or None when only ``boundary`` is known).
    boundary : ndarray, optional
        (Z, Y, X) boundary probability in [0, 1].
    spacing : sequence of 3 floats
        Voxel size (z, y, x).
    threshold : float
        Probability threshold for foreground and boundary.
    sigma_seeds, sigma_weights : float
        Gaussian widths (in voxels of the finest axis) for the distance map and the relief.
    seed_height : float
        Minimum height of a distance maximum, in the physical units of ``spacing``.
    alpha : float
        Weight of the boundary map in the relief (0: distance only).
    min_size : int
        Smallest kept instance, in voxels (pixels of a slice when ``stacked``).
    stacked : bool
        PlantSeg's "stacked" mode for strongly anisotropic data: every z-slice gets its own 2D
        watershed and the slices' labels are kept apart (join them with
        :func:`aop.segmentation.agglomeration.agglomerate_average` or :func:`stitch_slices`).

    Returns
    -------
    ndarray of uint32
        (Z, Y, X) instance labels.
    """
    if foreground is None and boundary is None:
        raise ValueError("distance_watershed needs a foreground or a boundary map")

    def one(foreground: Any, boundary: Any, spacing: tuple[float, ...]) -> np.ndarray:
        """The watershed of one 2D or 3D array (labels not yet consecutive)."""
        connectivity = 26 if len(spacing) == 3 else 8
        if foreground is not None:
            region = np.asarray(foreground) > threshold
        else:
            region = np.ones(np.shape(boundary), dtype=bool)
        interior = region & (np.asarray(boundary) < threshold) if boundary is not None else region
        if not interior.any():
            return np.zeros(region.shape, dtype=np.uint32)
        distance = edt.edt(interior, anisotropy=tuple(map(float, spacing)), black_border=False)
        if sigma_seeds > 0:
            distance = ndi.gaussian_filter(distance, sigma_voxels(sigma_seeds, spacing))
        peaks = h_maxima(distance, seed_height) & interior
        seeds = cc3d.connected_components(peaks, connectivity=connectivity).astype(np.int32)
        relief = 1.0 - distance / max(float(distance.max()), 1e-6)
        if boundary is not None and alpha > 0:
            smooth_boundary = np.asarray(boundary, dtype=np.float32)
            if sigma_weights > 0:
                sigma = sigma_voxels(sigma_weights, spacing)
                smooth_boundary = ndi.gaussian_filter(smooth_boundary, sigma)
            relief = alpha * smooth_boundary + (1.0 - alpha) * relief
        labels = watershed(relief, seeds, mask=region if foreground is not None else None)
        if min_size > 0:
            labels = cc3d.dust(labels, threshold=min_size, connectivity=connectivity, in_place=True)
        return labels

    if stacked:
        depth = np.shape(foreground if foreground is not None else boundary)[0]
        planes = [
            one(
                None if foreground is None else foreground[z],
                None if boundary is None else boundary[z],
                tuple(spacing[1:]),
            )
            for z in range(depth)
        ]
        labels, _ = _separate_slices(np.stack(planes))
    else:
        labels = one(foreground, boundary, tuple(spacing))
    labels, _ = fastremap.renumber(labels, preserve_zero=True)
    return labels.astype(np.uint32, copy=False)


def stitch_slices(slices: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Join per-slice 2D instances into 3D instances by overlap between consecutive slices.

    Label ``a`` in slice ``z`` and label ``b`` in slice ``z + 1`` are linked when
    ``|a & b| / min(|a|, |b|) > threshold``; the connected components of the link graph
    (a union-find over all slices) become the 3D instances.

    Parameters
    ----------
    slices : ndarray
        (Z, Y, X) integer labels, each slice labelled independently (values may repeat across
        slices).
    threshold : float
        Overlap ratio in [0, 1) above which two 2D instances belong to the same 3D instance.

    Returns
    -------
    ndarray of uint32
        (Z, Y, X) 3D instance labels, consecutive from 1.
    """
    slices = np.asarray(slices)
    if slices.ndim != 3:
        raise ValueError(f"stitch_slices expects (Z, Y, X) labels, got shape {slices.shape}")
    if not 0 <= threshold < 1:
        raise ValueError(f"stitch_slices: threshold must be in [0, 1), got {threshold}")
    unique, offset = _separate_slices(slices)
    if offset == 0:
        return np.zeros(slices.shape, dtype=np.uint32)
    sizes = np.bincount(unique.ravel(), minlength=offset + 1)
    rows, cols = [], []
    for z in range(slices.shape[0] - 1):
        a, b = unique[z].ravel(), unique[z + 1].ravel()
        both = (a > 0) & (b > 0)
        if not both.any():
            continue
        pairs, counts = np.unique(a[both] * (offset + 1) + b[both], return_counts=True)
        left, right = pairs // (offset + 1), pairs % (offset + 1)
        ratio = counts / np.minimum(sizes[left], sizes[right])
        keep = ratio > threshold
        rows.append(left[keep])
        cols.append(right[keep])
    none = np.zeros(0, dtype=np.int64)
    r, c = np.concatenate([none, *rows]), np.concatenate([none, *cols])
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(offset + 1,) * 2)
    _, component = connected_components(graph, directed=False)
    # node 0 (background) has no links, so it is alone in component 0
    out, _ = fastremap.renumber(component[unique], preserve_zero=True)
    return out.astype(np.uint32, copy=False)


def _separate_slices(slices: np.ndarray) -> tuple[np.ndarray, int]:
    """Give every 2D instance of a (Z, Y, X) stack its own id: each slice renumbered, offset.

    Returns the int64 labels (1..count, slice by slice) and ``count``.
    """
    unique = np.zeros(slices.shape, dtype=np.int64)
    offset = 0
    for z in range(slices.shape[0]):
        plane, _ = fastremap.renumber(slices[z], preserve_zero=True, in_place=False)
        plane = plane.astype(np.int64)
        unique[z] = np.where(plane > 0, plane + offset, 0)
        offset += int(plane.max())
    return unique, offset
