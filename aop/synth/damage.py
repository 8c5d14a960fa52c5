"""Deliberately damaged copies of ground-truth labels: the errors post-processing should undo.

Each kind mimics one error of a segmentation model, on a seeded random subset of the instances:

- ``"shrink"``: instances too small: each chosen instance loses the voxels within ``amount`` of its
  boundary (towards background or other instances).
- ``"grow"``: instances too large: each chosen instance takes the background voxels within
  ``amount`` of it (never another instance's voxels).
- ``"split"``: one instance predicted as two: each chosen instance is cut by a plane through its
  centroid with a random orientation.
- ``"merge"``: two touching instances predicted as one: disjoint pairs of face-touching instances
  get one label (instances without a touching partner are left alone).

These are the errors the four post-processing categories address: dilation, erosion, merging
and splitting respectively.
"""

from __future__ import annotations

from collections.abc import Sequence

import edt
import numpy as np
from scipy import ndimage as ndi

from aop.errors import AopError
from aop.segmentation.merging import contact_graph
from aop.segmentation.morphology import nearest_label_fill
from aop.segmentation.params import anisotropy, check_labels, relabel_consecutive

__all__ = ["DAMAGE_KINDS", "damage_labels"]

DAMAGE_KINDS = ("shrink", "grow", "split", "merge")


def _choose(labels_present: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    count = int(round(fraction * len(labels_present)))
    return np.sort(rng.choice(labels_present, size=count, replace=False))


def damage_labels(
    labels: np.ndarray,
    kind: str,
    fraction: float = 1.0,
    amount: float = 2.0,
    seed: int = 0,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Return a damaged copy of ``labels``.

    Parameters
    ----------
    labels : ndarray of int
        2D or 3D ground-truth instance labels, 0 = background.
    kind : {"shrink", "grow", "split", "merge"}
        The error to introduce (see the module docstring).
    fraction : float
        Fraction of the instances to damage, in [0, 1]. For ``"merge"``, the fraction of instances
        that end up in a merged pair (at most all touching ones).
    amount : float
        Distance in finest-axis units for ``"shrink"`` and ``"grow"`` (> 0); unused otherwise.
    seed : int
        Seed of the random choice of instances and cut orientations.
    spacing : sequence of float, optional
        Voxel size (z, y, x); default isotropic.

    Returns
    -------
    ndarray of int32
        Damaged labels, numbered 1..N.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.zeros((20, 20), int); labels[5:15, 5:15] = 1
    >>> int(damage_labels(labels, "split", seed=0).max())
    2
    """
    labels = check_labels(labels)
    if kind not in DAMAGE_KINDS:
        raise AopError(f"damage kind: unknown {kind!r} (expected one of {', '.join(DAMAGE_KINDS)})")
    if not 0.0 <= fraction <= 1.0:
        raise AopError(f"damage fraction: {fraction!r} is not in [0, 1]")
    if kind in ("shrink", "grow") and not amount > 0:
        raise AopError(f"damage amount: {amount!r} must be > 0 for {kind!r}")
    rng = np.random.default_rng(seed)
    out, _ = relabel_consecutive(labels)
    present = np.arange(1, int(out.max()) + 1)
    aniso = anisotropy(spacing, out.ndim)
    if kind == "merge":
        return _merge_pairs(out, fraction, rng)
    chosen = _choose(present, fraction, rng)
    if len(chosen) == 0:
        return out
    selected = np.isin(out, chosen)
    if kind == "shrink":
        distance = edt.edtsq(out, anisotropy=aniso, black_border=False, parallel=1)
        out[selected & (distance <= amount**2)] = 0
    elif kind == "grow":
        distance = edt.edtsq(~selected, anisotropy=aniso, black_border=False, parallel=1)
        band = (out == 0) & (distance <= amount**2)
        grown = nearest_label_fill(np.where(selected, out, 0), band, spacing, reach=amount)
        out = np.where(band, grown, out)
    else:
        out = _split_by_planes(out, chosen, aniso, rng)
    return relabel_consecutive(out)[0]


def _split_by_planes(
    labels: np.ndarray, chosen: np.ndarray, aniso: tuple[float, ...], rng: np.random.Generator
) -> np.ndarray:
    boxes = ndi.find_objects(labels)
    next_label = int(labels.max()) + 1
    for label in chosen:
        box = boxes[label - 1]
        crop = labels[box]
        mask = crop == label
        coords = np.argwhere(mask).astype(float) * np.asarray(aniso)
        direction = rng.normal(size=labels.ndim)
        side = (coords - coords.mean(axis=0)) @ (direction / np.linalg.norm(direction)) > 0
        if side.all() or not side.any():
            continue
        index = tuple(np.argwhere(mask)[side].T)
        crop[index] = next_label
        next_label += 1
    return labels


def _merge_pairs(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    pairs, _, _, _ = contact_graph(labels)
    n = int(labels.max())
    target = int(round(fraction * n)) // 2
    used = np.zeros(n + 1, dtype=bool)
    lookup = np.arange(n + 1, dtype=np.int32)
    merged = 0
    for a, b in pairs[rng.permutation(len(pairs))]:
        if merged >= target:
            break
        if used[a] or used[b]:
            continue
        used[a] = used[b] = True
        lookup[b] = a
        merged += 1
    return relabel_consecutive(lookup[labels])[0]
