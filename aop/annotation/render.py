"""Server-side pictures of one instance for the annotation page.

An instance is shown in its neighbourhood: a crop around its bounding box, padded on every side by
``context`` times the box's extent (at least a few voxels), so that a merged or cut instance can be
recognised against its neighbours. For every channel the picture holds the classic orthogonal views

- ``xy``: the slice at ``z`` (the centroid's by default), rows y, columns x;
- ``yz``: the slice through the centroid's x, rows y (aligned with ``xy``), columns z;
- ``xz``: the slice through the centroid's y, rows z, columns x (aligned with ``xy``), below ``xy``;
- ``max``: the maximum projection of the crop along z;

with the instance's outline drawn in yellow and its neighbours' outlines in cyan. The z axis of the
side views is stretched by the voxel size, so anisotropic data keeps its proportions. Intensities
are mapped per channel between two percentiles of the whole volume (:func:`channel_limits`), so
every instance of a volume is shown with the same contrast.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont
from skimage.measure import regionprops_table
from skimage.segmentation import find_boundaries

from aop.errors import AopError

__all__ = [
    "InstanceBox",
    "RenderedInstance",
    "channel_limits",
    "crop_box",
    "index_instances",
    "render_instance",
    "take",
]

INSTANCE_COLOUR = np.array([255, 214, 0], dtype=np.float32)
NEIGHBOUR_COLOUR = np.array([0, 200, 255], dtype=np.float32)
BACKGROUND = 28
CAPTION_HEIGHT = 14
GAP = 4


@dataclass(frozen=True)
class InstanceBox:
    """Where one instance lies in its volume.

    Attributes
    ----------
    volume : str
        Volume name.
    label : int
        Label id in ``labels/<volume>``.
    centroid : tuple of 3 int
        Centroid (z, y, x), rounded to a voxel.
    bbox : tuple of 6 int
        ``(z0, y0, x0, z1, y1, x1)``, upper bounds exclusive.
    voxels : int
        Number of voxels.
    """

    volume: str
    label: int
    centroid: tuple[int, int, int]
    bbox: tuple[int, int, int, int, int, int]
    voxels: int


def index_instances(labels: np.ndarray, volume: str) -> list[InstanceBox]:
    """Centroid and bounding box of every instance of a label volume, in label order.

    Parameters
    ----------
    labels : ndarray (Z, Y, X) of int
        Instance labels, 0 = background.
    volume : str
        The volume's name, stored in each box.

    Examples
    --------
    >>> labels = np.zeros((4, 8, 8), np.uint16); labels[1:3, 2:5, 2:6] = 7
    >>> index_instances(labels, "v")[0]
    InstanceBox(volume='v', label=7, centroid=(2, 3, 4), bbox=(1, 2, 2, 3, 5, 6), voxels=24)
    """
    if labels.ndim != 3:
        raise AopError(f"labels of {volume!r}: expected a 3D (Z, Y, X) volume, got {labels.shape}")
    props = regionprops_table(
        np.asarray(labels), properties=("label", "bbox", "centroid", "area")
    )
    table = pd.DataFrame(props)
    boxes = []
    for row in table.itertuples(index=False):
        centroid = tuple(int(np.floor(c + 0.5)) for c in row[7:10])
        bbox = tuple(int(v) for v in row[1:7])
        boxes.append(InstanceBox(volume, int(row[0]), centroid, bbox, int(row[10])))  # type: ignore[arg-type]
    return boxes


def channel_limits(
    image: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.8), max_samples: int = 2_000_000
) -> np.ndarray:
    """Contrast limits per channel: two percentiles of a regular subsample of the volume.

    Parameters
    ----------
    image : ndarray (Z, Y, X) or (C, Z, Y, X)
        The volume.
    percentiles : (low, high)
        Percentiles mapped to black and white.
    max_samples : int
        At most about this many voxels per channel are read (a regular stride over the volume).

    Returns
    -------
    ndarray (C, 2) of float32
        ``(low, high)`` per channel, ``high > low``.

    Examples
    --------
    >>> channel_limits(np.arange(1000, dtype=np.float32).reshape(10, 10, 10), (0, 100))
    array([[  0., 999.]], dtype=float32)
    """
    image = image[None] if image.ndim == 3 else image
    stride = max(1, int(np.ceil(image[0].size / max_samples)))
    limits = np.empty((image.shape[0], 2), np.float32)
    for c, channel in enumerate(image):
        sample = channel.reshape(-1)[::stride]
        low, high = np.percentile(sample, percentiles)
        if not high > low:
            high = low + 1.0
        limits[c] = low, high
    return limits


def crop_box(
    box: InstanceBox,
    context: float = 1.0,
    min_pad: Sequence[int] = (2, 8, 8),
) -> tuple[slice, slice, slice]:
    """The neighbourhood shown around an instance: its bounding box padded on every side.

    In y and x the window is square: the larger of the two extents, centred on the box. Each axis
    is padded by ``context`` times that extent (at least ``min_pad``). The window is not clipped to
    the volume: beyond the volume's edge it shows background, so an instance at the edge stays in
    the middle of its views (see :func:`take`).

    Examples
    --------
    >>> crop_box(InstanceBox("v", 1, (5, 20, 20), (4, 16, 16, 7, 24, 24), 100))
    (slice(1, 10, None), slice(8, 32, None), slice(8, 32, None))
    >>> crop_box(InstanceBox("v", 2, (1, 3, 60), (0, 0, 58, 3, 6, 64), 80))
    (slice(-3, 6, None), slice(-8, 14, None), slice(50, 72, None))
    """
    z0, y0, x0, z1, y1, x1 = box.bbox
    pad_z = max(int(min_pad[0]), int(round(context * (z1 - z0))))
    side = max(y1 - y0, x1 - x0)
    slices = [slice(z0 - pad_z, z1 + pad_z)]
    for axis, (lo, hi) in ((1, (y0, y1)), (2, (x0, x1))):
        pad = max(int(min_pad[axis]), int(round(context * side)))
        start = lo - (side - (hi - lo)) // 2 - pad
        slices.append(slice(start, start + side + 2 * pad))
    return tuple(slices)  # type: ignore[return-value]


def take(array: np.ndarray, window: Sequence[slice], fill: float = 0) -> np.ndarray:
    """``array[window]`` for a window that may reach past the array's edges (filled with ``fill``).

    Examples
    --------
    >>> take(np.arange(4), [slice(-1, 3)], fill=-1)
    array([-1,  0,  1,  2])
    """
    shape = tuple(s.stop - s.start for s in window)
    out = np.full(shape, fill, dtype=np.result_type(array.dtype, np.min_scalar_type(fill)))
    inside = tuple(
        slice(max(0, s.start), min(n, s.stop)) for s, n in zip(window, array.shape, strict=True)
    )
    if all(i.stop > i.start for i in inside):
        target = tuple(
            slice(i.start - s.start, i.stop - s.start) for i, s in zip(inside, window, strict=True)
        )
        out[target] = array[inside]
    return out


@dataclass(frozen=True)
class RenderedInstance:
    """A rendered picture: PNG bytes and where each panel lies in it.

    ``panels`` holds one dict per panel: ``channel``, ``view`` (``xy``, ``yz``, ``xz``, ``max``),
    and ``x``, ``y``, ``width``, ``height`` in pixels of the picture.
    """

    png: bytes
    width: int
    height: int
    z: int
    panels: list[dict]


def _to_uint8(values: np.ndarray, limits: np.ndarray) -> np.ndarray:
    low, high = float(limits[0]), float(limits[1])
    scaled = (values.astype(np.float32) - low) * (255.0 / (high - low))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _resize(panel: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a 2D array to (height, width) by index arithmetic."""
    rows = (np.arange(height) * panel.shape[0] // height).clip(0, panel.shape[0] - 1)
    cols = (np.arange(width) * panel.shape[1] // width).clip(0, panel.shape[1] - 1)
    return panel[rows[:, None], cols[None, :]]


def _outlines(labels: np.ndarray, label: int) -> tuple[np.ndarray, np.ndarray]:
    """Outline pixels (1 pixel, at display resolution) of the instance and of its neighbours."""
    edges = find_boundaries(labels, mode="inner") & (labels > 0)
    own = edges & (labels == label)
    return own, edges & ~own


def _overlay(grey: np.ndarray, outlines: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """RGB panel: the instance's outline in yellow, its neighbours' blended in cyan."""
    own, others = outlines
    rgb = np.repeat(grey[..., None], 3, axis=2)
    rgb[others] = (0.45 * rgb[others] + 0.55 * NEIGHBOUR_COLOUR).astype(np.uint8)
    rgb[own] = INSTANCE_COLOUR.astype(np.uint8)
    return rgb


def render_instance(
    image: np.ndarray,
    labels: np.ndarray,
    box: InstanceBox,
    *,
    z: int | None = None,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    limits: np.ndarray | None = None,
    channel_names: Sequence[str] | None = None,
    context: float = 1.0,
    min_size: int = 160,
    max_scale: int = 8,
) -> RenderedInstance:
    """Render one instance's orthogonal views and max projection for every channel into a PNG.

    Parameters
    ----------
    image : ndarray (Z, Y, X) or (C, Z, Y, X)
        The volume's image.
    labels : ndarray (Z, Y, X)
        The volume's instance labels.
    box : InstanceBox
        The instance (from :func:`index_instances`).
    z : int, optional
        The slice of the ``xy`` view (any z of the volume); the centroid's by default.
    spacing : 3 floats
        Voxel size (z, y, x); the side views' z axis is stretched by ``spacing[0] / spacing[2]``.
    limits : ndarray (C, 2), optional
        Contrast limits per channel (:func:`channel_limits` of the volume); the crop's own 1 and
        99.8 percentiles when omitted.
    channel_names : sequence of str, optional
        Row captions.
    context : float
        Neighbourhood shown around the bounding box, as a multiple of its extent (see
        :func:`crop_box`; past the volume's edge the views show background).
    min_size : int
        The ``xy`` view is enlarged by an integer factor (at most ``max_scale``) until its longer
        side has at least this many pixels.

    Returns
    -------
    RenderedInstance

    Examples
    --------
    >>> labels = np.zeros((8, 32, 32), np.uint16); labels[3:6, 10:20, 12:22] = 1
    >>> image = labels.astype(np.float32) + 0.1
    >>> r = render_instance(image, labels, index_instances(labels, "v")[0])
    >>> r.png[:4], r.z, [p["view"] for p in r.panels]
    (b'\\x89PNG', 4, ['xy', 'yz', 'max', 'xz'])
    """
    image = image[None] if image.ndim == 3 else image
    if image.shape[1:] != labels.shape:
        raise AopError(f"image shape {image.shape[1:]} does not match labels {labels.shape}")
    n_z = labels.shape[0]
    zc, yc, xc = box.centroid
    z = zc if z is None else int(z)
    if not 0 <= z < n_z:
        raise AopError(f"z={z} is outside the volume (0..{n_z - 1})")
    zs, ys, xs = crop_box(box, context)
    ny, nx, nz = ys.stop - ys.start, xs.stop - xs.start, zs.stop - zs.start
    scale = int(np.clip(np.ceil(min_size / max(ny, nx)), 1, max_scale))
    z_ratio = float(spacing[0]) / float(spacing[2]) if spacing[2] > 0 else 1.0
    h_xy, w_xy = ny * scale, nx * scale
    h_z = max(1, int(round(nz * scale * z_ratio)))
    names = list(channel_names or [])
    names += [f"channel{c}" for c in range(len(names), image.shape[0])]
    # the centroid's row and column inside the window (it lies inside the bounding box's window)
    yi, xi = min(max(yc - ys.start, 0), ny - 1), min(max(xc - xs.start, 0), nx - 1)
    at_z = (slice(z, z + 1), ys, xs)

    lab_crop = take(labels, (zs, ys, xs))
    lab_xy = _resize(take(labels, at_z)[0], h_xy, w_xy)
    lab_yz = _resize(lab_crop[:, :, xi].T, h_xy, h_z)
    lab_xz = _resize(lab_crop[:, yi, :], h_z, w_xy)
    own = (lab_crop == box.label).any(axis=0)
    others = np.where(lab_crop == box.label, 0, lab_crop).max(axis=0)
    lab_max = _resize(np.where(own, box.label, others), h_xy, w_xy)
    outlines = {  # the same for every channel
        view: _outlines(lab, box.label)
        for view, lab in (("xy", lab_xy), ("yz", lab_yz), ("max", lab_max), ("xz", lab_xz))
    }

    row_height = CAPTION_HEIGHT + h_xy + GAP + h_z
    width = w_xy + GAP + h_z + GAP + w_xy
    height = image.shape[0] * row_height + (image.shape[0] - 1) * GAP
    canvas = np.full((height, width, 3), BACKGROUND, np.uint8)
    panels: list[dict] = []
    captions: list[tuple[int, int, str]] = []
    z_row = int(round((z - zs.start + 0.5) * scale * z_ratio)) if zs.start <= z < zs.stop else None
    for c, channel in enumerate(image):
        crop = take(channel.astype(np.float32, copy=False), (zs, ys, xs), np.nan)
        if limits is not None:
            lim = limits[c]
        else:
            lim = channel_limits(crop[np.isfinite(crop)].reshape(1, 1, -1))[0]
        crop = np.nan_to_num(crop, nan=float(lim[0]))
        plane = take(channel, at_z, float(lim[0]))[0]
        top = c * (row_height + GAP) + CAPTION_HEIGHT
        views = {
            "xy": (_to_uint8(_resize(plane, h_xy, w_xy), lim), 0, 0),
            "yz": (_to_uint8(_resize(crop[:, :, xi].T, h_xy, h_z), lim), 0, w_xy + GAP),
            "max": (
                _to_uint8(_resize(crop.max(axis=0), h_xy, w_xy), lim),
                0,
                w_xy + GAP + h_z + GAP,
            ),
            "xz": (_to_uint8(_resize(crop[:, yi, :], h_z, w_xy), lim), h_xy + GAP, 0),
        }
        for view, (grey, dy, dx) in views.items():
            rgb = _overlay(grey, outlines[view])
            if z_row is not None and view == "xz":
                rgb[min(z_row, rgb.shape[0] - 1), :: max(2, scale)] = (255, 64, 64)
            if z_row is not None and view == "yz":
                rgb[:: max(2, scale), min(z_row, rgb.shape[1] - 1)] = (255, 64, 64)
            y0, x0 = top + dy, dx
            canvas[y0 : y0 + rgb.shape[0], x0 : x0 + rgb.shape[1]] = rgb
            panels.append(
                {"channel": names[c], "view": view, "x": x0, "y": y0,
                 "width": int(rgb.shape[1]), "height": int(rgb.shape[0])}
            )
        captions.append((top - CAPTION_HEIGHT, 0, f"{names[c]}  xy z={z}"))
        captions.append((top - CAPTION_HEIGHT, w_xy + GAP, "yz"))
        captions.append((top - CAPTION_HEIGHT, w_xy + GAP + h_z + GAP, "max projection"))
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default()
    for y0, x0, text in captions:
        draw.text((x0 + 2, y0 + 1), text, fill=(220, 220, 220), font=font)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return RenderedInstance(buffer.getvalue(), width, height, z, panels)
