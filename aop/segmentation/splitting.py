"""Splitting instances by a watershed of their own distance transform (theta_Ssigma, theta_St).

For every instance: its Euclidean distance transform (distance to the nearest voxel that is not in
the instance, physical units; the volume border is not a boundary), smoothed with a Gaussian of
``sigma = 3 * theta_Ssigma`` finest-axis units (``3 * theta_Ssigma / a_i`` voxels along axis ``i``,
i.e. exactly ``3 * theta_Ssigma`` voxels on isotropic data), restricted to the instance (zero
outside it, so neighbours never leak in). Markers are the connected components (full connectivity)
of the instance's voxels whose smoothed distance is at least the ``theta_St`` quantile of the
instance's smoothed distances (:func:`numpy.quantile`, linear interpolation). An instance with two
or more markers is split by :func:`skimage.segmentation.watershed` of the negative smoothed
distance from those markers, masked to the instance; a part the flood cannot reach (an instance
made of several pieces) joins the nearest region. ``theta_St = 0`` skips splitting.

All distance transforms come from one label-aware ``edt`` pass; the rest works on each instance's
bounding box, so the cost grows with the voxel count and not with the number of instances.
"""

from __future__ import annotations

from collections.abc import Sequence

import cc3d
import edt
import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from aop.segmentation.params import anisotropy, check_labels, relabel_consecutive

__all__ = ["split_instances", "split_relabelled"]

Spacing = Sequence[float] | None


def _split_instance(
    mask: np.ndarray, distance: np.ndarray, sigma: float, threshold: float, aniso: tuple
) -> tuple[np.ndarray, int]:
    """Split one instance (``mask``, cropped) by its ``distance`` transform, as described above.

    Returns the int32 parts (0 outside the mask, 1..n inside) and their number ``n``.
    """
    smooth = np.where(mask, distance, 0).astype(np.float32)
    if sigma > 0:
        smooth = ndi.gaussian_filter(
            smooth, sigma=[3.0 * sigma / a for a in aniso], mode="constant", cval=0.0
        )
    level = np.quantile(smooth[mask], threshold)
    markers, n = ndi.label(mask & (smooth >= level), structure=np.ones((3,) * mask.ndim, bool))
    if n < 2:
        return mask.astype(np.int32), 1
    parts = watershed(-smooth, markers, mask=mask)
    lost = mask & (parts == 0)
    if lost.any():
        nearest = ndi.distance_transform_edt(
            parts == 0, return_distances=False, return_indices=True
        )
        parts[lost] = parts[tuple(index[lost] for index in nearest)]
    return parts.astype(np.int32, copy=False), n


def _linear_quantiles(ordered: np.ndarray, starts: np.ndarray, counts: np.ndarray, q: float):
    """:func:`numpy.quantile` (linear method) of many sorted float32 runs at once, bit for bit.

    ``ordered[starts[k]:starts[k] + counts[k]]`` is run ``k``, sorted. The arithmetic follows
    numpy's own: the interpolation weight is a Python float, so it enters the float32
    interpolation as float32, from the nearer end once it reaches one half.
    """
    virtual = (counts - 1) * float(q)
    previous = np.floor(virtual)
    at_end = virtual >= counts - 1
    previous = np.where(at_end, counts - 1, previous).astype(np.int64)
    following = np.where(at_end, counts - 1, previous + 1)
    gamma = virtual - previous
    low, high = ordered[starts + previous], ordered[starts + following]
    difference = high - low
    level = low + difference * gamma.astype(np.float32)
    upper = gamma >= 0.5
    level[upper] = high[upper] - difference[upper] * (1.0 - gamma[upper]).astype(np.float32)
    return np.where(at_end, high, level)


def _split_candidates(
    labels: np.ndarray,
    distance: np.ndarray,
    boxes: list,
    sigma: float,
    threshold: float,
    aniso: tuple[float, ...],
    chunk: int = 64,
) -> list[int]:
    """Labels whose markers (as in :func:`_split_instance`) form two or more components.

    Instead of one smoothing, quantile and labelling per instance, the instances' bounding boxes
    are stacked along the first axis in chunks of similar size, each box's distances zeroed
    outside its instance and separated from the next by at least the Gaussian's reach along
    that axis. A separable Gaussian of the stack then equals each box's own Gaussian value for
    value (every term outside the instance is an exact zero in both), the quantiles of all
    instances come from one sort, and one multi-label connected-components pass counts every
    instance's markers. Only the few instances with two or more markers are split afterwards.
    """
    # the reach of gaussian_filter's kernel (truncate=4) along the first axis
    gap = max(int(4.0 * (3.0 * sigma / aniso[0]) + 0.5), 1) if sigma > 0 else 1
    present = [k for k, box in enumerate(boxes, start=1) if box is not None]
    extents = {k: [s.stop - s.start for s in boxes[k - 1]] for k in present}
    present.sort(key=lambda k: (max(extents[k][1:]), min(extents[k][1:])))
    connectivity = 26 if labels.ndim == 3 else 8
    candidates: list[int] = []
    for first in range(0, len(present), chunk):
        members = present[first : first + chunk]
        rest = np.max([extents[k][1:] for k in members], axis=0)
        heights = np.array([extents[k][0] for k in members])
        tops = np.concatenate([[0], np.cumsum(heights + gap)[:-1]])
        shape = (int(tops[-1] + heights[-1]), *(int(n) for n in rest))
        stack = np.zeros(shape, dtype=np.float32)
        ids = np.zeros(shape, dtype=np.uint32)
        for slot, (k, top) in enumerate(zip(members, tops, strict=True), start=1):
            box = boxes[k - 1]
            mask = labels[box] == k
            place = (slice(int(top), int(top) + mask.shape[0]),) + tuple(
                slice(0, n) for n in mask.shape[1:]
            )
            stack[place] = np.where(mask, distance[box], 0)
            ids[place][mask] = slot
        if sigma > 0:
            stack = ndi.gaussian_filter(
                stack, sigma=[3.0 * sigma / a for a in aniso], mode="constant", cval=0.0
            )
        inside = ids != 0
        slots, values = ids[inside], stack[inside]
        # Slots come in order along the first axis; within one, sort the (non-negative) values
        # through their bit patterns, which order like the floats.
        keys = (slots.astype(np.int64) << 32) | values.view(np.int32).astype(np.int64)
        ordered = (np.sort(keys) & 0xFFFFFFFF).astype(np.uint32).view(np.float32)
        counts = np.bincount(slots, minlength=len(members) + 1)[1:]
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        levels = np.zeros(len(members) + 1, dtype=np.float32)
        levels[1:] = _linear_quantiles(ordered, starts, counts, threshold)
        markers = np.where(inside & (stack >= levels[ids]), ids, 0)
        components, n = cc3d.connected_components(
            markers, connectivity=connectivity, return_N=True
        )
        owner = np.zeros(n + 1, dtype=np.int64)
        owner[components.ravel()] = markers.ravel()
        per_slot = np.bincount(owner[1:], minlength=len(members) + 1)
        candidates.extend(members[slot - 1] for slot in np.flatnonzero(per_slot >= 2))
    return sorted(candidates)


def split_instances(
    labels: np.ndarray, sigma: float, threshold: float, spacing: Spacing = None
) -> np.ndarray:
    """Split every instance whose smoothed distance transform has several peaks.

    Parameters
    ----------
    labels : ndarray of int
        2D or 3D instance labels, 0 = background.
    sigma : float
        theta_Ssigma in [0, 1]: Gaussian smoothing of the distance transform, sigma = 3 * value.
    threshold : float
        theta_St in [0, 1]: marker quantile. 0 skips splitting (the identity).
    spacing : sequence of float, optional
        Voxel size (z, y, x); default isotropic.

    Returns
    -------
    ndarray of int32
        Labels 1..N: an instance that stays whole keeps its rank among the input labels; the extra
        parts of split instances are numbered after them.

    Examples
    --------
    >>> import numpy as np
    >>> yy, xx = np.ogrid[:20, :40]
    >>> two = ((yy - 10) ** 2 + (xx - 9) ** 2 <= 49) | ((yy - 10) ** 2 + (xx - 30) ** 2 <= 49)
    >>> dumbbell = (two | ((abs(yy - 10) <= 1) & (xx > 9) & (xx < 30))).astype(int)
    >>> int(split_instances(dumbbell, 0.0, 0.8).max())
    2
    """
    relabelled, _ = relabel_consecutive(check_labels(labels))
    return split_relabelled(relabelled, sigma, threshold, spacing)


def split_relabelled(
    relabelled: np.ndarray,
    sigma: float,
    threshold: float,
    spacing: Spacing = None,
    boxes: list | None = None,
) -> np.ndarray:
    """:func:`split_instances` on int32 labels that are already consecutive (1..N).

    Skips the checks and the relabelling pass; splits ``relabelled`` in place and returns it.
    ``boxes``, when given, must be ``scipy.ndimage.find_objects(relabelled)`` (saves that pass).
    """
    if threshold <= 0 or relabelled.max() == 0:
        return relabelled
    aniso = anisotropy(spacing, relabelled.ndim)
    # edt is fastest on the narrowest unsigned type (int32 input is about 2x slower here)
    narrow = relabelled.astype(np.uint16 if relabelled.max() < 2**16 else np.uint32)
    distance = edt.edt(narrow, anisotropy=aniso, black_border=False, parallel=1)
    next_label = int(relabelled.max()) + 1
    if boxes is None:
        boxes = ndi.find_objects(relabelled)
    for label in _split_candidates(relabelled, distance, boxes, sigma, threshold, aniso):
        box = boxes[label - 1]
        mask = relabelled[box] == label
        parts, n = _split_instance(mask, distance[box], sigma, threshold, aniso)
        if n < 2:
            continue
        # Part 1 keeps the label; parts 2..n get new numbers.
        new = np.where(parts > 1, parts - 2 + next_label, label)
        relabelled[box][mask] = new[mask]
        next_label += n - 1
    return relabelled
