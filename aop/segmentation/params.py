"""The seven post-processing parameters (Table III of the source paper), typed and validated.

``PARAMETER_RANGES`` is the single source of truth for the names, types and ranges; the search-space
file is validated against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from aop.errors import AopError, error_message
from aop.labels import as_label_array

__all__ = [
    "CATEGORIES",
    "PARAMETER_RANGES",
    "PostprocessParams",
    "anisotropy",
    "check_image",
    "check_labels",
    "relabel_consecutive",
]

#: name -> (type, low, high), both bounds inclusive.
PARAMETER_RANGES: dict[str, tuple[type, int | float, int | float]] = {
    "erode_dilate": (int, -10, 10),
    "open_close": (int, -5, 5),
    "merge_continuity": (float, 0.0, 1.0),
    "merge_smoothness": (float, 0.0, 1.0),
    "merge_area": (float, 0.0, 1.0),
    "split_sigma": (float, 0.0, 1.0),
    "split_threshold": (float, 0.0, 1.0),
}

#: The three categories and their parameters, in the order they are applied.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "morphology": ("erode_dilate", "open_close"),
    "merging": ("merge_continuity", "merge_smoothness", "merge_area"),
    "splitting": ("split_sigma", "split_threshold"),
}


def _field(name: str) -> Any:
    _, low, high = PARAMETER_RANGES[name]
    return Field(ge=low, le=high)


class PostprocessParams(BaseModel):
    """The seven post-processing parameters, validated against :data:`PARAMETER_RANGES`.

    Immutable; unknown keys are rejected. Build one with :meth:`from_mapping` (errors become one
    :class:`aop.errors.AopError` line naming the key) or :meth:`zeros` (the identity).

    Examples
    --------
    >>> values = {**PostprocessParams.zeros().to_dict(), "erode_dilate": -1}
    >>> p = PostprocessParams.from_mapping(values)
    >>> p.erode_dilate
    -1
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    erode_dilate: int = _field("erode_dilate")
    open_close: int = _field("open_close")
    merge_continuity: float = _field("merge_continuity")
    merge_smoothness: float = _field("merge_smoothness")
    merge_area: float = _field("merge_area")
    split_sigma: float = _field("split_sigma")
    split_threshold: float = _field("split_threshold")

    @field_validator("*", mode="before")
    @classmethod
    def _plain_number(cls, value: Any) -> Any:
        if isinstance(value, bool | np.bool_):
            raise ValueError("must be a number, not a boolean")
        if isinstance(value, np.generic):
            return value.item()
        return value

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | PostprocessParams) -> PostprocessParams:
        """Validate a mapping with exactly the seven keys.

        Raises
        ------
        AopError
            One line naming the missing, unknown or out-of-range key and its value.
        """
        if isinstance(values, PostprocessParams):
            return values
        if not isinstance(values, Mapping):
            raise AopError(
                f"post-processing parameters must be a mapping, got {type(values).__name__}"
            )
        try:
            return cls(**dict(values))
        except ValidationError as exc:
            error = exc.errors()[0]
            key = ".".join(str(part) for part in error["loc"]) or "parameters"
            if error["type"] == "missing":
                raise AopError(f"post-processing parameter {key!r} is missing") from None
            if error["type"] == "extra_forbidden":
                raise AopError(
                    f"unknown post-processing parameter {key!r} "
                    f"(expected {', '.join(PARAMETER_RANGES)})"
                ) from None
            kind, low, high = PARAMETER_RANGES[key]
            raise AopError(
                f"post-processing parameter {key!r} = {values[key]!r} is invalid: "
                f"expected {kind.__name__} in [{low}, {high}] ({error_message(error)})"
            ) from None

    @classmethod
    def zeros(cls) -> PostprocessParams:
        """All seven parameters at 0: post-processing is the identity (up to relabelling)."""
        return cls(**{name: kind(0) for name, (kind, _, _) in PARAMETER_RANGES.items()})

    def to_dict(self) -> dict[str, int | float]:
        """The seven values as a plain ``dict`` (the keys of :data:`PARAMETER_RANGES`)."""
        return {name: getattr(self, name) for name in PARAMETER_RANGES}

    def active(self, category: str) -> bool:
        """Whether any parameter of ``category`` (see :data:`CATEGORIES`) is non-zero."""
        return any(getattr(self, name) != 0 for name in CATEGORIES[category])


# --------------------------------------------------------------------------------------------------
# Input checks shared by the post-processing functions
# --------------------------------------------------------------------------------------------------


def check_labels(labels: np.ndarray, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as a C-contiguous integer array, or raise one :class:`AopError` line.

    Accepts 2D or 3D arrays of integers (or booleans, or floats holding whole numbers), all >= 0.
    """
    labels = np.asarray(labels)
    if labels.ndim not in (2, 3):
        raise AopError(f"{name}: expected a 2D or 3D array, got shape {labels.shape}")
    labels = as_label_array(labels, name)
    return np.ascontiguousarray(labels)


def check_image(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Return ``image`` as a float32 array of ``shape``, or raise one :class:`AopError` line."""
    image = np.asarray(image)
    if image.shape != tuple(shape):
        raise AopError(f"image: shape {image.shape} differs from the labels' shape {tuple(shape)}")
    if image.dtype.kind not in "biuf":
        raise AopError(f"image: expected a numeric array, got dtype {image.dtype}")
    return np.ascontiguousarray(image, dtype=np.float32)


def anisotropy(spacing: Any, ndim: int) -> tuple[float, ...]:
    """Voxel size divided by its smallest entry: the unit in which radii are measured.

    Parameters
    ----------
    spacing : sequence of float or None
        Voxel size (z, y, x) or (y, x). ``None`` means isotropic. A 2D array also accepts three
        values (z, y, x), of which (y, x) are used.
    ndim : int
        2 or 3.

    Returns
    -------
    tuple of float
        ``ndim`` values, the smallest being 1.
    """
    if spacing is None:
        return (1.0,) * ndim
    values = [float(v) for v in np.ravel(spacing)]
    if ndim == 2 and len(values) == 3:
        values = values[1:]
    if len(values) != ndim:
        raise AopError(f"spacing: expected {ndim} values, got {len(values)} ({spacing!r})")
    if not all(np.isfinite(v) and v > 0 for v in values):
        raise AopError(f"spacing: values must be positive and finite, got {tuple(values)}")
    smallest = min(values)
    return tuple(v / smallest for v in values)


def relabel_consecutive(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relabel to 1..N in increasing order of the original labels (0 stays 0).

    Returns
    -------
    relabelled : ndarray of int32
    original : ndarray
        ``original[k]`` is the input label that became ``k`` (``original[0] == 0``).
    """
    import fastremap

    values = fastremap.unique(labels)
    values = values[values != 0]
    original = np.concatenate([[0], values]).astype(labels.dtype, copy=False)
    if len(values) and values[0] == 1 and values[-1] == len(values):
        return labels.astype(np.int32, copy=True), original
    mapping = {int(v): i for i, v in enumerate(original)}
    relabelled = fastremap.remap(labels, mapping, preserve_missing_labels=False)
    return relabelled.astype(np.int32, copy=False), original


def typed_params(config: Mapping[str, Any]) -> dict[str, float | int]:
    """The seven parameters of a configuration, each cast to its type (absent ones 0).

    Other keys of ``config`` (a trial's model choice) are left out; values are not range-checked
    (:meth:`PostprocessParams.from_mapping` checks them).

    >>> typed_params({"model": "classical", "erode_dilate": 2.0})["erode_dilate"]
    2
    """
    out: dict[str, float | int] = {}
    for name, (kind, _, _) in PARAMETER_RANGES.items():
        value = config.get(name, 0)
        out[name] = int(round(value)) if kind is int else float(value)
    return out
