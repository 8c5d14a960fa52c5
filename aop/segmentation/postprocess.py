"""Post-processing of a cached instance prediction with the seven searched parameters.

``postprocess(labels, image, params, spacing)`` applies, in this order (shared
spec/POSTPROCESSING.md):

1. morphology: erosion/dilation (``erode_dilate``), then opening/closing (``open_close``), on the
   binary foreground, re-applied to the instances (:mod:`aop.segmentation.morphology`);
2. merging of touching instances over an adjacency graph (``merge_continuity``,
   ``merge_smoothness``, ``merge_area``; :mod:`aop.segmentation.merging`);
3. splitting by a distance-transform watershed (``split_sigma``, ``split_threshold``;
   :mod:`aop.segmentation.splitting`).

A category whose parameters are all 0 is skipped, so it is exactly the identity; the output is
relabelled 1..N in the order of the input labels. Each category is also a public function of its
own, re-exported here; where the spec leaves a choice, its module's docstring says which reading
it takes. The module imports neither Ray nor MLflow: it runs the same in a test, a Ray task or a
notebook.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aop.segmentation.merging import (
    adjacency_features,
    contact_graph,
    merge_instances,
    merge_with_boxes,
    smoothness,
)
from aop.segmentation.morphology import (
    ball,
    close_mask,
    dilate_mask,
    erode_dilate,
    erode_mask,
    open_close,
    open_mask,
)
from aop.segmentation.params import (
    PARAMETER_RANGES,
    PostprocessParams,
    anisotropy,
    check_image,
    check_labels,
    relabel_consecutive,
)
from aop.segmentation.splitting import split_instances, split_relabelled

__all__ = [
    "PARAMETER_RANGES",
    "PostprocessParams",
    "adjacency_features",
    "ball",
    "check_labels",
    "close_mask",
    "contact_graph",
    "dilate_mask",
    "erode_dilate",
    "erode_mask",
    "merge_instances",
    "open_close",
    "open_mask",
    "postprocess",
    "relabel_consecutive",
    "smoothness",
    "split_instances",
]


def postprocess(
    labels: np.ndarray,
    image: np.ndarray | None,
    params: Mapping[str, Any] | PostprocessParams,
    spacing: Sequence[float] | None = None,
) -> np.ndarray:
    """Apply morphology, merging and splitting to an instance prediction.

    Parameters
    ----------
    labels : ndarray of int
        2D or 3D instance prediction, 0 = background.
    image : ndarray or None
        Raw intensities of the same shape (one channel); needed when ``merge_continuity > 0``.
    params : mapping or PostprocessParams
        Exactly the keys of :data:`PARAMETER_RANGES`.
    spacing : sequence of float, optional
        Voxel size (z, y, x) (or (y, x)); radii are in units of its smallest entry.

    Returns
    -------
    ndarray of int32
        Labels 1..N.

    Raises
    ------
    AopError
        A missing, unknown or out-of-range parameter (the message names the key), labels that are
        not a 2D/3D non-negative integer array, an image of another shape, a bad spacing.

    Examples
    --------
    >>> import numpy as np
    >>> labels = np.zeros((5, 9), int); labels[2, 2] = 7; labels[2, 6] = 9
    >>> params = {**PostprocessParams.zeros().to_dict(), "erode_dilate": 1}
    >>> postprocess(labels, None, params)
    array([[0, 0, 0, 0, 0, 0, 0, 0, 0],
           [0, 0, 1, 0, 0, 0, 2, 0, 0],
           [0, 1, 1, 1, 0, 2, 2, 2, 0],
           [0, 0, 1, 0, 0, 0, 2, 0, 0],
           [0, 0, 0, 0, 0, 0, 0, 0, 0]], dtype=int32)
    """
    p = PostprocessParams.from_mapping(params)
    labels = check_labels(labels)
    if image is not None:
        image = check_image(image, labels.shape)
    anisotropy(spacing, labels.ndim)  # validate once, early
    out, _ = relabel_consecutive(labels)
    if p.erode_dilate or p.open_close:
        if p.erode_dilate:
            out = erode_dilate(out, p.erode_dilate, spacing)
        if p.open_close:
            out = open_close(out, p.open_close, spacing)
        if p.erode_dilate < 0 or p.open_close < 0:
            # Erosion and opening may remove instances; dilation and closing never do (the
            # closing of the foreground contains it), so their output stays consecutive.
            out, _ = relabel_consecutive(out)
    # From here on the labels stay consecutive (1..N, int32): merging and splitting number
    # their output in the order of their input, so no further relabelling pass is needed.
    boxes = None
    if p.active("merging"):
        out, boxes = merge_with_boxes(
            out, image, p.merge_continuity, p.merge_smoothness, p.merge_area, spacing
        )
    if p.split_threshold > 0:
        out = split_relabelled(out, p.split_sigma, p.split_threshold, spacing, boxes=boxes)
    return out
