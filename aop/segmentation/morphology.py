"""Morphology on the binary foreground, re-applied to the instances (theta_ED and theta_CO).

Every operation is a threshold of a Euclidean distance transform (``edt``), so its cost grows with
the number of voxels and not with the radius. A voxel offset ``d`` lies inside the ball of radius
``r`` when ``sum((d_i * a_i) ** 2) <= r ** 2`` with ``a`` the voxel size divided by its smallest
entry (:func:`aop.segmentation.params.anisotropy`): radii are in units of the finest axis, and a
ball is an ellipsoid in voxels on anisotropic data. Voxels outside the array are neither foreground
nor background: erosion does not eat in from the volume border.

Dilations only need distances up to the radius, so their transform skips the far background (see
:func:`_reach`; the few boolean box dilations that delimit the near region cost little beside
it). The voxels a dilation or closing adds take the nearest instance's label (the smallest label
between equidistant instances), read at the ball offsets whose length equals the voxel's
distance (one lattice shell: a handful of offsets for small radii, a few dozen at radius 10)
rather than from one transform per instance.
"""

from __future__ import annotations

from collections.abc import Sequence

import edt
import numpy as np

from aop.segmentation.params import anisotropy, check_labels

__all__ = [
    "ball",
    "close_mask",
    "dilate_mask",
    "erode_dilate",
    "erode_mask",
    "nearest_label_fill",
    "open_close",
    "open_mask",
]

#: Relative slack on ``r**2``: offsets exactly on the sphere count as inside despite rounding.
RADIUS_TOLERANCE = 1e-6

Spacing = Sequence[float] | None


def _limit(radius: float) -> float:
    return float(radius) ** 2 * (1.0 + RADIUS_TOLERANCE)


def ball(radius: int, spacing: Spacing = None, ndim: int = 3) -> np.ndarray:
    """Boolean ball (an ellipsoid in voxels on anisotropic data) of ``radius`` in finest-axis units.

    This is the structuring element that the distance-transform operations below are exactly
    equivalent to; it is meant for reference computations and pictures.
    """
    aniso = anisotropy(spacing, ndim)
    half = [int(np.floor(radius / a)) for a in aniso]
    grids = np.ogrid[tuple(slice(-h, h + 1) for h in half)]
    squared = sum((g * a) ** 2 for g, a in zip(grids, aniso, strict=True))
    return squared <= _limit(radius)


def erode_mask(mask: np.ndarray, radius: int, spacing: Spacing = None) -> np.ndarray:
    """Binary erosion by a ball: keep a voxel when no background voxel lies within ``radius``."""
    if radius <= 0:
        return mask.copy()
    # edt runs 2-3x faster on a uint8 view than on a boolean array
    data = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    aniso = anisotropy(spacing, mask.ndim)
    return edt.edtsq(data, anisotropy=aniso, black_border=False, parallel=1) > _limit(radius)


def _box_dilate(mask: np.ndarray, half: Sequence[int]) -> np.ndarray:
    """Dilation by the box of half-widths ``half``: ORs of shifted copies, O(log half) per axis.

    Returns ``mask`` itself when every half-width is 0 (callers only read the result then).
    """
    if not any(h > 0 for h in half):
        return mask
    out, spare = mask.copy(), np.empty_like(mask)  # two buffers, used in turn
    for axis, h in enumerate(half):
        covered = 0
        while covered < h:
            step = min(covered + 1, h - covered)
            head = [slice(None)] * out.ndim
            tail = [slice(None)] * out.ndim
            head[axis], tail[axis] = slice(step, None), slice(None, -step)
            np.copyto(spare, out)
            spare[tuple(head)] |= out[tuple(tail)]
            spare[tuple(tail)] |= out[tuple(head)]
            out, spare = spare, out
            covered += step
    return out


def _half_widths(radius: float, aniso: Sequence[float]) -> list[int]:
    """Per-axis voxel extent of the ball of ``radius``."""
    return [int(np.floor(radius / a * (1 + RADIUS_TOLERANCE))) for a in aniso]


def _shift_or(out: np.ndarray, plane: np.ndarray, shift: int) -> None:
    """``out |= plane`` moved by ``shift`` voxels along the first axis (nothing wraps round)."""
    if shift == 0:
        out |= plane
    elif shift > 0:
        out[shift:] |= plane[:-shift]
    else:
        out[:shift] |= plane[-shift:]


def _ball_cover_dilate(mask: np.ndarray, radius: float, aniso: Sequence[float]) -> np.ndarray:
    """Dilation by a union of boxes that covers the ball of ``radius`` (a superset of its dilation).

    For every offset along the first axis, the box that covers the ball's cross-section there;
    much closer to the ball than one box around it, yet made of box dilations only (the boxes
    shrink away from the centre, so each is grown from the next smaller one).
    """
    first = _half_widths(radius, aniso)[0]
    out = np.zeros_like(mask)
    plane, grown = mask, [0] * mask.ndim
    for level in range(first, -1, -1):
        rest = max(_limit(radius) - (aniso[0] * level) ** 2, 0.0)
        half = [0] + [int(np.floor(np.sqrt(rest) / a + 1e-9)) for a in aniso[1:]]
        plane = _box_dilate(plane, [h - g for h, g in zip(half, grown, strict=True)])
        grown = half
        _shift_or(out, plane, level)
        if level:
            _shift_or(out, plane, -level)
    return out


def _reach(
    mask: np.ndarray, radius: float, aniso: tuple[float, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Voxels within ``radius`` of ``mask`` and their squared distance to it.

    Only distances up to ``radius`` matter, so the transform runs on the voxels of a twofold
    dilation by a cover of the ball (:func:`_ball_cover_dilate`) and treats every voxel beyond it
    as if it were in ``mask``. Such a voxel is farther than ``radius`` from every voxel of the
    single dilation (``near``), so inside ``near`` the squared distance is exact wherever it is
    within reach, and beyond reach wherever the true one is. The transform then skips the far
    background, by far the costliest part of a full one.

    Returns
    -------
    within : ndarray of bool
        Voxels at most ``radius`` from ``mask`` (``mask`` included).
    squared : ndarray of float32
        Squared distance to ``mask``, exact on ``within`` (0 on ``mask``).
    """
    near = _ball_cover_dilate(mask, radius, aniso)
    wide = _ball_cover_dilate(near, radius, aniso)
    wide &= ~mask
    if mask.ndim == 3 and aniso[0] ** 2 > _limit(radius):
        # The ball is one plane thick: distances within reach never cross planes (a plane
        # step alone is longer), so plane-by-plane transforms suffice and skip a whole pass.
        squared = np.empty(mask.shape, dtype=np.float32)
        for index, plane in enumerate(wide.view(np.uint8)):
            squared[index] = edt.edtsq(
                plane, anisotropy=aniso[1:], black_border=False, parallel=1
            )
    else:
        squared = edt.edtsq(wide.view(np.uint8), anisotropy=aniso, black_border=False, parallel=1)
    within = near & (squared <= _limit(radius))
    return within, squared


def dilate_mask(mask: np.ndarray, radius: int, spacing: Spacing = None) -> np.ndarray:
    """Binary dilation by a ball: add every voxel within ``radius`` of the foreground."""
    if radius <= 0:
        return mask.copy()
    mask = np.ascontiguousarray(mask, dtype=bool)
    return _reach(mask, radius, anisotropy(spacing, mask.ndim))[0]


def _fill_nearest(
    out: np.ndarray,
    labels: np.ndarray,
    targets: np.ndarray,
    squared: np.ndarray,
    radius: float,
    aniso: tuple[float, ...],
) -> np.ndarray:
    """Write into ``out`` the label of the nearest instance of ``labels`` at every target voxel.

    ``squared`` holds each target's squared distance to the foreground (at most ``radius**2``).
    The nearest instances are those with a voxel at exactly that distance, so only the ball
    offsets of that length are looked at: the smallest label among the instance voxels they
    reach wins. The cost per target is the size of one spherical shell of the lattice.
    """
    if not targets.any():
        return out
    half = np.asarray(_half_widths(radius, aniso))
    shape = labels.shape
    wide = np.uint32 if int(labels.max()) < 2**32 - 1 else np.uint64
    flat_labels = labels.ravel()
    strides = np.cumprod([1, *shape[:0:-1]])[::-1]

    index = np.flatnonzero(targets)
    coords = np.unravel_index(index, shape)
    distance = squared.ravel()[index]
    # Away from the array's faces a flat offset lands on the right voxel; near them it may wrap
    # to the next row, so those few targets check every offset's coordinates.
    border = np.zeros(len(index), dtype=bool)
    for c, h, n in zip(coords, half, shape, strict=True):
        border |= (c < h) | (c >= n - h)

    offsets = np.argwhere(ball(radius, aniso, labels.ndim)) - half
    lengths = (offsets * np.asarray(aniso)) ** 2 @ np.ones(labels.ndim)
    deltas = offsets @ strides

    def read(rows: np.ndarray, k: int, near_face: bool) -> np.ndarray:
        """Labels at offset ``k`` from the targets ``rows`` (0 outside the array)."""
        if not near_face:
            return flat_labels[index[rows] + deltas[k]].astype(wide, copy=False)
        valid = np.ones(len(rows), dtype=bool)
        for c, o, n in zip(coords, offsets[k], shape, strict=True):
            moved = c[rows] + o
            valid &= (moved >= 0) & (moved < n)
        found = np.zeros(len(rows), dtype=wide)
        found[valid] = flat_labels[index[rows[valid]] + deltas[k]]
        return found

    nearest = np.zeros(len(index), dtype=wide)
    order = np.lexsort((~border, distance))  # per distance: interior targets, then border ones
    sorted_distance, sorted_border = distance[order], border[order]
    cuts = np.flatnonzero(
        (sorted_distance[1:] != sorted_distance[:-1]) | (sorted_border[1:] != sorted_border[:-1])
    )
    for begin, stop in zip([0, *(cuts + 1)], [*(cuts + 1), len(order)], strict=True):
        group = order[begin:stop]
        value = float(sorted_distance[begin])
        shell = np.flatnonzero(np.abs(lengths - value) <= 4e-7 * max(value, 1.0))
        near_face = bool(sorted_border[begin])
        best = np.full(len(group), np.iinfo(wide).max, dtype=wide)
        for k in shell:
            # 0 (no instance) wraps round to the largest value, so the minimum skips it
            np.minimum(best, read(group, k, near_face) - wide(1), out=best)
        nearest[group] = best + wide(1)
    lost = np.flatnonzero(nearest == 0)
    if len(lost):
        # A distance that matched no offset length (rounding on unusual spacings): compare
        # every offset of the ball for these few targets.
        rank = np.argsort(lengths, kind="stable")
        best_length = np.full(len(lost), np.inf)
        for k in rank:
            found = read(lost, k, True)
            better = (found > 0) & (
                (lengths[k] < best_length)
                | ((lengths[k] == best_length) & (found < nearest[lost]))
            )
            best_length[better] = lengths[k]
            nearest[lost[better]] = found[better]
    out[targets] = nearest.astype(labels.dtype, copy=False)
    return out


def open_mask(mask: np.ndarray, radius: int, spacing: Spacing = None) -> np.ndarray:
    """Binary opening (erosion, then dilation) by a ball of ``radius``."""
    return dilate_mask(erode_mask(mask, radius, spacing), radius, spacing)


def close_mask(mask: np.ndarray, radius: int, spacing: Spacing = None) -> np.ndarray:
    """Binary closing (dilation, then erosion) by a ball of ``radius``."""
    return erode_mask(dilate_mask(mask, radius, spacing), radius, spacing)


def nearest_label_fill(
    labels: np.ndarray, targets: np.ndarray, spacing: Spacing = None, reach: float = 10.0
) -> np.ndarray:
    """Give every ``targets`` voxel the label of the nearest instance of ``labels``.

    Parameters
    ----------
    labels : ndarray of int
        Instance labels, 0 = background.
    targets : ndarray of bool
        Voxels to fill (typically background voxels that became foreground).
    spacing : sequence of float, optional
        Voxel size; distances are physical.
    reach : float
        Upper bound (finest-axis units) on the distance from any target to its nearest instance:
        targets farther than ``reach`` from every instance stay 0.

    Returns
    -------
    ndarray
        A copy of ``labels`` with the targets filled. Between equidistant instances the smallest
        label wins.
    """
    out = labels.copy()
    foreground = labels != 0
    if not targets.any() or not foreground.any():
        return out
    aniso = anisotropy(spacing, labels.ndim)
    within, squared = _reach(foreground, reach, aniso)
    return _fill_nearest(out, labels, targets & within & ~foreground, squared, reach, aniso)


def erode_dilate(labels: np.ndarray, radius: int, spacing: Spacing = None) -> np.ndarray:
    """Erode (``radius < 0``) or dilate (``radius > 0``) the foreground and re-apply the labels.

    Parameters
    ----------
    labels : ndarray of int
        2D or 3D instance labels, 0 = background.
    radius : int
        theta_ED in [-10, 10], in units of the finest axis. Negative: a voxel stays foreground
        when no background voxel lies within ``|radius|``; removed voxels become 0 and an instance
        left with no voxel disappears. Positive: every background voxel within ``radius`` of the
        foreground takes the label of the nearest instance (no instance is overwritten). 0: the
        identity.
    spacing : sequence of float, optional
        Voxel size (z, y, x); default isotropic.

    Returns
    -------
    ndarray
        New labels, same dtype; label values are kept (not renumbered).

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.zeros((1, 7), int); labels[0, 3] = 5
    >>> erode_dilate(labels, 2)
    array([[0, 5, 5, 5, 5, 5, 0]])
    """
    labels = check_labels(labels)
    radius = int(radius)
    if radius == 0:
        return labels.copy()
    foreground = labels != 0
    if radius < 0:
        keep = erode_mask(foreground, -radius, spacing)
        return np.where(keep, labels, 0).astype(labels.dtype, copy=False)
    # The per-instance distances of the fill decide both what is within reach and its label.
    return nearest_label_fill(labels, ~foreground, spacing, reach=radius)


def open_close(labels: np.ndarray, radius: int, spacing: Spacing = None) -> np.ndarray:
    """Open (``radius < 0``) or close (``radius > 0``) the foreground and re-apply the labels.

    Parameters
    ----------
    labels : ndarray of int
        2D or 3D instance labels, 0 = background.
    radius : int
        theta_CO in [-5, 5], in units of the finest axis. Positive: closing (dilate, then erode);
        the voxels it adds take the nearest instance's label. Negative: opening (erode, then
        dilate); the voxels it removes become 0. 0: the identity.
    spacing : sequence of float, optional
        Voxel size (z, y, x); default isotropic.

    Returns
    -------
    ndarray
        New labels, same dtype; label values are kept (not renumbered).
    """
    labels = check_labels(labels)
    radius = int(radius)
    if radius == 0:
        return labels.copy()
    foreground = labels != 0
    if radius < 0:
        kept = open_mask(foreground, -radius, spacing) & foreground
        return np.where(kept, labels, 0).astype(labels.dtype, copy=False)
    # Closing: dilate, erode the dilated foreground, then give the voxels it added the nearest
    # instance's label (read from the dilation's own distances, for those voxels only).
    aniso = anisotropy(spacing, labels.ndim)
    dilated, squared = _reach(foreground, radius, aniso)
    closed = erode_mask(dilated, radius, spacing)
    out = np.where(closed, labels, 0).astype(labels.dtype, copy=False)
    return _fill_nearest(out, labels, closed & ~foreground, squared, radius, aniso)
