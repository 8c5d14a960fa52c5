"""The one check that turns a user's array into instance labels.

Shared by :mod:`aop.io`, :mod:`aop.metrics` and the post-processing engine.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aop.errors import AopError


def as_label_array(labels: Any, name: str = "labels", *, allow_bool: bool = True) -> np.ndarray:
    """Validate instance labels and return them as a non-negative integer array.

    Integer arrays are returned as they are (no copy), booleans as a ``uint8`` copy, and floats
    holding whole numbers as ``int64``.

    Parameters
    ----------
    labels : array_like
        Instance labels, 0 = background.
    name : str
        What to call the array (a file name, ``gt``, ``pred``) in the error message.
    allow_bool : bool
        Accept a boolean mask as one instance (``True`` = label 1). Label *files* are read with
        ``False``: a boolean volume there is a foreground mask, not instance labels, and is refused.

    Raises
    ------
    AopError
        One line naming ``name`` when the values are not finite non-negative integers.
    """
    labels = np.asarray(labels)
    kind = labels.dtype.kind
    if kind == "b":
        if not allow_bool:
            raise AopError(
                f"{name}: labels are a boolean mask, not instance labels (label its connected "
                "components first, e.g. skimage.measure.label)"
            )
        return labels.astype(np.uint8)
    if kind == "f":
        if not np.all(np.isfinite(labels)):
            raise AopError(f"{name}: labels must be finite integers, found NaN or inf")
        if np.any(labels != np.floor(labels)):
            raise AopError(f"{name}: labels must be integers, got non-integral {labels.dtype}")
        if labels.min(initial=0) < 0:
            raise AopError(f"{name}: labels must be non-negative, found {labels.min():g}")
        if labels.max(initial=0) >= 2.0**63:
            raise AopError(f"{name}: label value {labels.max():g} is too large")
        return labels.astype(np.int64)
    if kind not in "iu":
        raise AopError(f"{name}: labels must be an integer array, got dtype {labels.dtype}")
    if kind == "i" and labels.min(initial=0) < 0:
        raise AopError(f"{name}: labels must be non-negative, found {labels.min()}")
    return labels
