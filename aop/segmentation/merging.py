"""Merging touching instances over an adjacency graph (theta_Mc, theta_Ms, theta_Mr).

Two instances are adjacent when they share a face (6-connectivity in 3D, 4 in 2D). Each edge gets
three features in [0, 1]:

- ``f_c`` (contour continuity): the minimum image intensity along the segment joining the two
  centroids (linear interpolation, samples at most half a voxel apart), divided by the smaller of
  the two instances' mean intensities, clipped to [0, 1]. When that mean is <= 0 the ratio has no
  meaning; ``f_c`` is then 1 if the segment never drops below it and 0 otherwise.
- ``f_s`` (connecting-surface smoothness): ``|a ∪ b| / |hull|`` where ``|hull|`` counts the voxels
  whose centres lie in the convex hull of the voxel centres of ``a ∪ b`` (the digital convex hull),
  so a digitised ball scores exactly 1 and the ratio never exceeds 1. Volume ratios do not change
  under axis scaling, so ``f_s`` needs no spacing. A union that spans no volume (all its voxels in
  one plane that is not an axis plane) scores 1.
- ``f_r`` (relative intersecting area): the shared faces divided by the boundary faces of the
  smaller instance (fewer voxels). Faces are weighted by their physical area, which on isotropic
  data is the plain count; faces on the volume border are not boundary (the border is not
  background). On voxelised spheres the staircase surface is about 1.5x the smooth one, so two
  halves of a ball give ``f_r`` near 0.26 rather than the spec's "near 1/3".

The edge score is ``s = theta_Mc * f_c + theta_Ms * f_s + theta_Mr * f_r``; edges with
``s > 0.5`` merge, transitively. Features are non-negative, so raising any weight never merges less.
"""

from __future__ import annotations

from collections.abc import Sequence

import fastremap
import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import ConvexHull, QhullError

from aop.errors import AopError
from aop.segmentation.params import anisotropy, check_image, check_labels, relabel_consecutive

__all__ = [
    "MERGE_THRESHOLD",
    "adjacency_features",
    "contact_graph",
    "continuity",
    "merge_instances",
    "merge_with_boxes",
    "smoothness",
]

#: An edge merges when its score is strictly greater than this.
MERGE_THRESHOLD = 0.5

Spacing = Sequence[float] | None


def contact_graph(
    labels: np.ndarray, spacing: Spacing = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One pass over neighbouring voxel pairs: edges, contact faces and boundary areas.

    Parameters
    ----------
    labels : ndarray of int
        Consecutive labels 0..N (see :func:`aop.segmentation.params.relabel_consecutive`).
    spacing : sequence of float, optional
        Voxel size; a face's area is the product of the other axes' (normalised) sizes.

    Returns
    -------
    pairs : ndarray of int64, shape (E, 2)
        Adjacent label pairs ``a < b``, sorted.
    faces : ndarray of int64, shape (E,)
        Number of faces each pair shares.
    contact_area : ndarray of float64, shape (E,)
        Area of those faces.
    surface : ndarray of float64, shape (N + 1,)
        Boundary area of every label (faces towards any other label or background).
    """
    aniso = anisotropy(spacing, labels.ndim)
    n = int(labels.max()) + 1 if labels.size else 1
    if n <= 2**16:
        labels = labels.astype(np.uint16)  # the pair scans below run faster on narrow labels
    surface = np.zeros(n)
    keys, weights = [], []
    axes = range(labels.ndim)
    for axis in axes:
        area = float(np.prod([a for i, a in enumerate(aniso) if i != axis]))
        lower = labels[tuple(slice(0, -1) if i == axis else slice(None) for i in axes)]
        upper = labels[tuple(slice(1, None) if i == axis else slice(None) for i in axes)]
        differ = lower != upper
        u, v = lower[differ].astype(np.int64), upper[differ].astype(np.int64)
        surface += area * (np.bincount(u, minlength=n) + np.bincount(v, minlength=n))
        both = (u > 0) & (v > 0)
        u, v = u[both], v[both]
        keys.append(np.minimum(u, v) * n + np.maximum(u, v))
        weights.append(np.full(len(u), area))
    surface[0] = 0.0
    key = np.concatenate(keys)
    unique, inverse = np.unique(key, return_inverse=True)
    faces = np.bincount(inverse, minlength=len(unique)).astype(np.int64)
    contact_area = np.bincount(inverse, weights=np.concatenate(weights), minlength=len(unique))
    pairs = np.stack([unique // n, unique % n], axis=1)
    return pairs, faces, contact_area, surface


def continuity(
    image: np.ndarray,
    centroids: np.ndarray,
    means: np.ndarray,
    pairs: np.ndarray,
) -> np.ndarray:
    """Contour continuity ``f_c`` of each pair (see the module docstring).

    Parameters
    ----------
    image : ndarray of float
    centroids : ndarray, shape (N + 1, ndim)
        Centroid of every label, in voxel coordinates.
    means : ndarray, shape (N + 1,)
        Mean image intensity of every label.
    pairs : ndarray of int, shape (E, 2)
    """
    if len(pairs) == 0:
        return np.zeros(0)
    start, stop = centroids[pairs[:, 0]], centroids[pairs[:, 1]]
    length = np.linalg.norm(stop - start, axis=1)
    steps = np.maximum(2, np.ceil(2 * length).astype(np.int64) + 1)
    edge = np.repeat(np.arange(len(pairs)), steps)
    first = np.concatenate([[0], np.cumsum(steps)[:-1]])
    t = (np.arange(len(edge)) - first[edge]) / (steps[edge] - 1)
    points = start[edge] + t[:, None] * (stop - start)[edge]
    profile = ndi.map_coordinates(image, points.T, order=1, mode="nearest")
    lowest = np.minimum.reduceat(profile, first)
    reference = np.minimum(means[pairs[:, 0]], means[pairs[:, 1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(reference > 0, lowest / reference, (lowest >= reference).astype(float))
    return np.clip(ratio, 0.0, 1.0)


def _hull_points(mask: np.ndarray) -> np.ndarray:
    """Candidate hull vertices: the first and last voxel of every row along the last axis."""
    rows = mask.any(axis=-1)
    index = np.nonzero(rows)
    width = mask.shape[-1]
    first = mask.argmax(axis=-1)[index]
    last = width - 1 - mask[..., ::-1].argmax(axis=-1)[index]
    lead = np.stack(index, axis=1)
    return np.concatenate(
        [np.column_stack([lead, first]), np.column_stack([lead, last])]
    ).astype(np.float64)


def _lattice_points_in_hull(hull: ConvexHull, shape: tuple[int, ...]) -> int:
    """Number of integer points of the box ``shape`` inside a full-dimensional convex hull."""
    normals, offsets = hull.equations[:, :-1], hull.equations[:, -1]
    eps = 1e-9 * max(shape)
    lead = np.stack(
        [g.ravel() for g in np.meshgrid(*[np.arange(s) for s in shape[:-1]], indexing="ij")], axis=1
    )
    rest = eps - offsets[None, :] - lead @ normals[:, :-1].T  # (rows, facets): n_last * x <= rest
    n_last = normals[:, -1]
    upper_facets, lower_facets = n_last > 1e-12, n_last < -1e-12
    flat = ~(upper_facets | lower_facets)
    upper = np.min(rest[:, upper_facets] / n_last[upper_facets], axis=1, initial=np.inf)
    lower = np.max(rest[:, lower_facets] / n_last[lower_facets], axis=1, initial=-np.inf)
    upper = np.minimum(np.floor(upper + 1e-9), shape[-1] - 1)
    lower = np.maximum(np.ceil(lower - 1e-9), 0)
    inside = np.all(rest[:, flat] >= 0, axis=1)
    return int(np.sum(np.where(inside, np.maximum(upper - lower + 1, 0), 0)))


def smoothness(mask: np.ndarray) -> float:
    """Connecting-surface smoothness ``f_s`` of a mask: voxels over digital-convex-hull voxels."""
    count = int(mask.sum())
    if count == 0:
        return 1.0
    # Axes along which the mask is one voxel thick carry no volume: drop them.
    flat_axes = tuple(
        axis
        for axis in range(mask.ndim)
        if np.count_nonzero(mask.any(axis=tuple(i for i in range(mask.ndim) if i != axis))) == 1
    )
    if flat_axes:
        mask = mask.any(axis=flat_axes)
    if mask.ndim == 0:
        return 1.0
    if mask.ndim == 1:
        index = np.nonzero(mask)[0]
        return count / float(index[-1] - index[0] + 1)
    points = _hull_points(mask)
    if np.linalg.matrix_rank(points - points[0]) < mask.ndim:
        return 1.0  # all voxels in one (oblique) plane or line: no volume
    try:
        # Joggled input ("QJ") skips Qhull's costly merging of the many coplanar facets of
        # lattice points; it moves them by about 1e-11, far below both the counting tolerance
        # and the distance (>= 1e-4) from any lattice point off a facet's plane to that plane.
        hull = ConvexHull(points, qhull_options="QJ")
    except QhullError:
        return 1.0
    return min(1.0, count / max(_lattice_points_in_hull(hull, mask.shape), 1))


def _union_mask(labels: np.ndarray, boxes: list, a: int, b: int) -> np.ndarray:
    """``a ∪ b`` cropped to its bounding box."""
    box = tuple(
        slice(min(p.start, q.start), max(p.stop, q.stop))
        for p, q in zip(boxes[a - 1], boxes[b - 1], strict=True)
    )
    crop = labels[box]
    return (crop == a) | (crop == b)


def _instance_statistics(
    labels: np.ndarray, image: np.ndarray | None, boxes: list, wanted: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel counts, centroids (voxel coordinates) and mean intensities of the ``wanted`` labels.

    Computed on each instance's bounding box; entries of other labels stay 0.
    """
    n = len(boxes) + 1
    counts, centroids, means = np.zeros(n), np.zeros((n, labels.ndim)), np.zeros(n)
    for label in wanted:
        box = boxes[label - 1]
        mask = labels[box] == label
        where = np.nonzero(mask)
        counts[label] = len(where[0])
        centroids[label] = [w.mean() + s.start for w, s in zip(where, box, strict=True)]
        if image is not None:
            means[label] = float(image[box][where].mean(dtype=np.float64))
    return counts, centroids, means


def _features(
    relabelled: np.ndarray, image: np.ndarray | None, spacing: Spacing
) -> tuple[np.ndarray, dict[str, np.ndarray], list]:
    pairs, faces, contact_area, surface = contact_graph(relabelled, spacing)
    boxes = ndi.find_objects(relabelled)
    counts, centroids, means = _instance_statistics(relabelled, image, boxes, np.unique(pairs))
    a, b = pairs[:, 0], pairs[:, 1]
    # the smaller instance: fewer voxels, then the smaller surface, then the lower label
    tie = (counts[a] == counts[b]) & (surface[a] <= surface[b])
    smaller = np.where((counts[a] < counts[b]) | tie, a, b)
    columns = {
        "contact_faces": faces,
        "contact_area": contact_area,
        "f_c": continuity(image, centroids, means, pairs) if image is not None else None,
        "f_r": np.clip(contact_area / np.maximum(surface[smaller], 1e-12), 0.0, 1.0),
    }
    return pairs, columns, boxes


def adjacency_features(
    labels: np.ndarray, image: np.ndarray, spacing: Spacing = None
) -> pd.DataFrame:
    """The adjacency graph of touching instances with its three edge features.

    Parameters
    ----------
    labels : ndarray of int
        2D or 3D instance labels, 0 = background.
    image : ndarray
        Intensities of the same shape.
    spacing : sequence of float, optional
        Voxel size (z, y, x); default isotropic.

    Returns
    -------
    pandas.DataFrame
        One row per touching pair, columns ``a``, ``b`` (original labels, ``a < b``),
        ``contact_faces`` (shared faces), ``contact_area`` (their physical area, finest-axis units
        squared), ``f_c``, ``f_s``, ``f_r`` (see the module docstring).
    """
    labels = check_labels(labels)
    image = check_image(image, labels.shape)
    relabelled, original = relabel_consecutive(labels)
    columns = ["a", "b", "contact_faces", "contact_area", "f_c", "f_s", "f_r"]
    if relabelled.max() < 2:
        return pd.DataFrame({name: [] for name in columns})
    pairs, features, boxes = _features(relabelled, image, spacing)
    features["f_s"] = np.array([smoothness(_union_mask(relabelled, boxes, a, b)) for a, b in pairs])
    original_pairs = {"a": original[pairs[:, 0]], "b": original[pairs[:, 1]]}
    return pd.DataFrame({**original_pairs, **features}, columns=columns)


def merge_instances(
    labels: np.ndarray,
    image: np.ndarray | None,
    continuity_weight: float,
    smoothness_weight: float,
    area_weight: float,
    spacing: Spacing = None,
) -> np.ndarray:
    """Merge touching instances whose weighted evidence exceeds 0.5.

    Parameters
    ----------
    labels : ndarray of int
        2D or 3D instance labels, 0 = background.
    image : ndarray or None
        Intensities of the same shape; needed only when ``continuity_weight > 0``.
    continuity_weight, smoothness_weight, area_weight : float
        theta_Mc, theta_Ms, theta_Mr in [0, 1]. All 0: the identity.
    spacing : sequence of float, optional
        Voxel size (z, y, x); default isotropic.

    Returns
    -------
    ndarray of int32
        Labels 1..N in the order of the input labels; each merged group takes one number.

    Notes
    -----
    ``f_s`` (a convex hull per edge) is computed only for edges whose decision depends on it, that
    is when ``s`` without it is <= 0.5 but could exceed 0.5 with ``f_s = 1``, and not even then
    when the lower bound ``|a ∪ b| / |bounding box|`` already lifts ``s`` above 0.5; the result is
    the same as computing every feature.
    """
    relabelled, _ = relabel_consecutive(check_labels(labels))
    return merge_with_boxes(
        relabelled, image, continuity_weight, smoothness_weight, area_weight, spacing
    )[0]


def merge_with_boxes(
    relabelled: np.ndarray,
    image: np.ndarray | None,
    continuity_weight: float,
    smoothness_weight: float,
    area_weight: float,
    spacing: Spacing = None,
) -> tuple[np.ndarray, list | None]:
    """:func:`merge_instances` on int32 labels that are already consecutive (1..N).

    Skips the checks and the relabelling pass; may return ``relabelled`` itself. Also returns
    the output's bounding boxes (as :func:`scipy.ndimage.find_objects` gives them, label ``k`` at
    ``k - 1``; a merged group's box is the union of its members'), or ``None`` when merging did
    not run.
    """
    weights = np.array([continuity_weight, smoothness_weight, area_weight], dtype=float)
    if not np.any(weights > 0) or relabelled.max() < 2:
        return relabelled, None
    if continuity_weight > 0 and image is None:
        raise AopError("image: needed for merge_continuity > 0 (contour continuity)")
    image = check_image(image, relabelled.shape) if continuity_weight > 0 else None
    pairs, features, boxes = _features(relabelled, image, spacing)
    score = area_weight * features["f_r"]
    if image is not None:
        score = score + continuity_weight * features["f_c"]
    merged = score > MERGE_THRESHOLD
    if smoothness_weight > 0:
        undecided = np.nonzero(~merged & (score + smoothness_weight > MERGE_THRESHOLD))[0]
        for edge in undecided:
            union = _union_mask(relabelled, boxes, *pairs[edge])
            # The digital hull lies in the bounding box, so f_s >= |a ∪ b| / |box|: when that
            # bound already merges, the hull is not needed.
            lower = np.count_nonzero(union) / union.size
            if score[edge] + smoothness_weight * lower > MERGE_THRESHOLD:
                merged[edge] = True
                continue
            merged[edge] = score[edge] + smoothness_weight * smoothness(union) > MERGE_THRESHOLD
    if not merged.any():
        return relabelled, boxes
    n = int(relabelled.max()) + 1
    chosen = pairs[merged]
    graph = coo_matrix((np.ones(len(chosen)), (chosen[:, 0], chosen[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    # Number the groups in the order of their smallest member (renumber goes by first
    # appearance); label 0 has no edge, so its component is 0 and stays background.
    lookup, _ = fastremap.renumber(component, preserve_zero=True)
    lookup = lookup.astype(np.int32, copy=False)
    return lookup[relabelled], _merged_boxes(boxes, lookup, int(lookup.max()))


def _merged_boxes(boxes: list, lookup: np.ndarray, count: int) -> list | None:
    """Bounding boxes after relabelling by ``lookup``: the union of each group's boxes."""
    if any(box is None for box in boxes):
        return None
    starts = np.array([[s.start for s in box] for box in boxes])
    stops = np.array([[s.stop for s in box] for box in boxes])
    group = lookup[1 : len(boxes) + 1]
    first = np.full((count + 1, starts.shape[1]), np.iinfo(np.int64).max, dtype=np.int64)
    last = np.zeros((count + 1, starts.shape[1]), dtype=np.int64)
    np.minimum.at(first, group, starts)
    np.maximum.at(last, group, stops)
    return [
        tuple(slice(int(a), int(b)) for a, b in zip(first[k], last[k], strict=True))
        for k in range(1, count + 1)
    ]
