"""Per-instance features: morphology in physical units and intensity statistics per channel.

One pass over the volume: :func:`skimage.measure.regionprops_table` finds every instance's bounding
box once (``scipy.ndimage.find_objects``) and computes each property on that box only; the surface
area comes from marching cubes on the same boxes, the nearest neighbour from a k-d tree of the
centroids.

Columns of :func:`instance_features` (lengths in the units of ``spacing``, µm by convention):

========================  =====================================================================
``label``                 the instance id
``instance_volume``       voxel count times the voxel volume (µm³)
``surface_area``          area of the marching-cubes mesh (level 0.5) of the binary mask (µm²)
``equivalent_diameter``   diameter of the ball of the same volume (µm)
``axis_major``,           full lengths of the principal axes of the ellipsoid with the same
``axis_middle``,          second moments (µm, ``axis_major >= axis_middle >= axis_minor``)
``axis_minor``
``elongation``            ``axis_major / axis_minor`` (1 for a ball)
``sphericity``            ``pi^(1/3) (6 V)^(2/3) / A``: 1 for a ball, smaller for other shapes
``solidity``              volume over the volume of the convex hull of the voxels
``centroid_z/y/x``        centroid in physical coordinates (voxel ``i`` at ``i * spacing``)
``nearest_neighbour``     distance to the nearest other centroid (NaN for a lone instance)
``ch{c}_mean/std``        mean and standard deviation of channel ``c`` inside the instance
``ch{c}_p10/p50/p90``     10th, 50th and 90th percentiles of channel ``c`` inside the instance
========================  =====================================================================

The channel columns appear only when an image is given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.spatial import cKDTree
from skimage.measure import marching_cubes, mesh_surface_area, regionprops_table

from aop.errors import AopError
from aop.labels import as_label_array

__all__ = ["PERCENTILES", "dataset_features", "instance_features", "surface_areas"]

PERCENTILES = (10, 50, 90)

_PROPERTIES = (
    "label",
    "area",
    "equivalent_diameter_area",
    "inertia_tensor_eigvals",
    "solidity",
    "centroid",
)


def _intensity_percentiles(regionmask: np.ndarray, intensity: np.ndarray) -> np.ndarray:
    return np.percentile(intensity[regionmask], PERCENTILES)


def check_labels_image(
    labels: np.ndarray, image: np.ndarray | None, name: str = "labels"
) -> tuple[np.ndarray, np.ndarray | None]:
    """Validate a label volume (Z, Y, X) with instances and an image (Z, Y, X) or (C, Z, Y, X).

    Returns the labels and the image as (C, Z, Y, X) (or None).

    Raises
    ------
    AopError
        Naming ``name`` for a label volume that is not 3D, holds no instance (an empty volume),
        or an image whose shape does not match.
    """
    labels = as_label_array(labels, name)
    if labels.ndim != 3:
        raise AopError(f"{name}: labels must be 3D (Z, Y, X), got shape {labels.shape}")
    if not labels.any():
        raise AopError(f"{name}: no instances (an empty volume)")
    if image is None:
        return labels, None
    image = np.asarray(image)
    if image.ndim == 3:
        image = image[np.newaxis]
    if image.ndim != 4 or image.shape[1:] != labels.shape:
        raise AopError(
            f"{name}: image shape {image.shape} does not match labels {labels.shape} "
            "(expected (Z, Y, X) or (C, Z, Y, X))"
        )
    if image.dtype.kind not in "uifb":
        raise AopError(f"{name}: image has unsupported dtype {image.dtype}")
    return labels, image


def check_spacing(spacing: Sequence[float], name: str = "spacing") -> tuple[float, float, float]:
    message = f"{name} must be three positive numbers (z, y, x), got {spacing!r}"
    try:
        values = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise AopError(message) from None
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise AopError(message)
    return values  # type: ignore[return-value]


def surface_areas(
    labels: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> dict[int, float]:
    """Marching-cubes surface area of every instance, computed on its bounding box.

    Each instance's binary mask, padded by one voxel of background, is meshed at level 0.5 with
    :func:`skimage.measure.marching_cubes` (with ``spacing``) and the mesh area summed by
    :func:`skimage.measure.mesh_surface_area`.

    Examples
    --------
    >>> cube = np.zeros((12, 12, 12), np.uint8); cube[2:10, 2:10, 2:10] = 1
    >>> round(surface_areas(cube)[1], 1)  # a cube of side 8 with its edges cut: just under 384
    355.1
    """
    spacing = check_spacing(spacing)
    out: dict[int, float] = {}
    for index, box in enumerate(ndi.find_objects(labels)):
        if box is None:
            continue
        mask = np.pad(labels[box] == index + 1, 1).astype(np.float32)
        verts, faces, _, _ = marching_cubes(mask, level=0.5, spacing=spacing)
        out[index + 1] = float(mesh_surface_area(verts, faces))
    return out


def instance_features(
    labels: np.ndarray,
    image: np.ndarray | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
) -> pd.DataFrame:
    """A table of morphology and intensity features, one row per instance.

    Parameters
    ----------
    labels : ndarray (Z, Y, X)
        Instance labels, 0 = background.
    image : ndarray (Z, Y, X) or (C, Z, Y, X), optional
        Intensities; adds the ``ch{c}_*`` columns for every channel.
    spacing : (float, float, float)
        Voxel size (z, y, x), µm by convention.

    Returns
    -------
    pandas.DataFrame
        Columns as in the module docstring, ``label`` first, rows in increasing label order.

    Raises
    ------
    AopError
        For labels that are not a 3D integer volume with at least one instance, an image of
        another shape, or a spacing that is not three positive numbers.

    Examples
    --------
    >>> labels = np.zeros((10, 20, 20), np.uint8)
    >>> labels[2:8, 4:10, 4:10] = 1; labels[2:8, 12:18, 4:16] = 2
    >>> table = instance_features(labels, spacing=(2.0, 1.0, 1.0))
    >>> table[["label", "instance_volume", "elongation"]].round(2).values.tolist()
    [[1.0, 432.0, 2.0], [2.0, 864.0, 2.02]]
    """
    labels, image = check_labels_image(labels, image)
    spacing = check_spacing(spacing)
    intensity = None if image is None else np.moveaxis(image, 0, -1)
    extra = () if image is None else (_intensity_percentiles,)
    properties = _PROPERTIES + (() if image is None else ("intensity_mean", "intensity_std"))
    raw = regionprops_table(
        labels,
        intensity_image=intensity,
        properties=properties,
        extra_properties=extra,
        spacing=spacing,
    )
    ids = raw["label"].astype(np.int64)
    volume = raw["area"].astype(float)
    eig = np.stack([raw[f"inertia_tensor_eigvals-{i}"] for i in range(3)], axis=1)
    s1, s2, s3 = eig[:, 0], eig[:, 1], eig[:, 2]
    axes = np.sqrt(np.maximum(0.0, 10 * np.stack([s1 + s2 - s3, s1 - s2 + s3, -s1 + s2 + s3])))
    areas = surface_areas(labels, spacing)
    area = np.array([areas[int(i)] for i in ids])
    centroid = np.stack([raw[f"centroid-{i}"] for i in range(3)], axis=1)
    nearest = np.full(len(ids), np.nan)
    if len(ids) > 1:
        distance, _ = cKDTree(centroid).query(centroid, k=2)
        nearest = distance[:, 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        elongation = np.where(axes[2] > 0, axes[0] / axes[2], np.inf)
        sphericity = np.pi ** (1 / 3) * (6 * volume) ** (2 / 3) / area
    table: dict[str, np.ndarray] = {
        "label": ids,
        "instance_volume": volume,
        "surface_area": area,
        "equivalent_diameter": raw["equivalent_diameter_area"],
        "axis_major": axes[0],
        "axis_middle": axes[1],
        "axis_minor": axes[2],
        "elongation": elongation,
        "sphericity": sphericity,
        "solidity": raw["solidity"],
        "centroid_z": centroid[:, 0],
        "centroid_y": centroid[:, 1],
        "centroid_x": centroid[:, 2],
        "nearest_neighbour": nearest,
    }
    if image is not None:
        for c in range(image.shape[0]):
            table[f"ch{c}_mean"] = raw[f"intensity_mean-{c}"]
            table[f"ch{c}_std"] = raw[f"intensity_std-{c}"]
            for p, q in enumerate(PERCENTILES):
                table[f"ch{c}_p{q}"] = raw[f"_intensity_percentiles-{p}-{c}"]
    return pd.DataFrame(table)


def dataset_features(
    dataset_dir: str | os.PathLike,
    *,
    on_volume: Callable[[str, int], None] | None = None,
) -> pd.DataFrame:
    """The features of every instance of a data set: columns ``volume``, ``label``, then features.

    Images and labels are read one volume at a time; the voxel size is the data set's.

    Parameters
    ----------
    dataset_dir : str or path-like
        A data set with ``labels/`` for every image.
    on_volume : callable, optional
        Called as ``on_volume(name, n_instances)`` after each volume (progress).

    Raises
    ------
    AopError
        For a data set without labels (naming the image), an empty label volume (naming it), or
        any problem :func:`aop.io.load_dataset` finds.
    """
    from aop.io import load_dataset

    dataset = load_dataset(dataset_dir, require_labels=True, validate=False)
    spacing = dataset.info.voxel_size
    tables = []
    for entry in dataset:
        labels = dataset.labels(entry.name)
        image = dataset.image(entry.name)
        name = str(Path(entry.label_path).relative_to(dataset.root))  # type: ignore[arg-type]
        check_labels_image(labels, image, name)
        table = instance_features(labels, image, spacing)
        table.insert(0, "volume", entry.name)
        tables.append(table)
        if on_volume is not None:
            on_volume(entry.name, len(table))
    return pd.concat(tables, ignore_index=True)
