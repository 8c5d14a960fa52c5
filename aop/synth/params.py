"""Parameters of the instance simulation, validated once.

Lengths (``spacing``, ``radius_range``, ``psf_sigma``, ``texture_scale``) are in physical units
(micrometres by convention), always in (z, y, x) order; intensities are in photons per voxel.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from aop.errors import AopError, error_message

Layout = Literal["uniform", "spheroid", "core_shell"]
Triple = tuple[float, float, float]

__all__ = [
    "Layout",
    "SimulationParams",
    "check_shape",
    "check_shape_holds_an_object",
    "make_params",
    "smallest_shape",
]


class SimulationParams(BaseModel):
    """Every parameter of one simulated volume except its shape and seed.

    Attributes
    ----------
    spacing : (float, float, float)
        Voxel size (z, y, x) in physical units. Objects are defined in physical units, so an
        anisotropic spacing gives objects fewer voxels along the coarse axis.
    n_objects : int or None
        Number of objects to place. Exclusive with ``density``.
    density : float or None
        Fraction of the layout region (the volume, or the spheroid) filled by objects; the number
        of objects follows from the region's volume and the mean object volume. Used when
        ``n_objects`` is None; when both are None a density of 0.15 is used. Objects are packed
        by their bounding balls, so the reachable density is about 0.15 to 0.3 (lower for
        elongated or irregular objects) with ``overlap`` 0, and up to about 0.45 with
        ``overlap`` 0.4; beyond it :func:`aop.synth.simulate` raises.
    radius_range : (float, float)
        Range of the objects' equivalent radius (physical units), drawn uniformly.
    elongation : float
        Largest ratio of longest to shortest semi-axis of the underlying ellipsoid (1 = sphere).
    irregularity : float
        Largest relative deviation of the surface from the ellipsoid, a random smooth function of
        the direction (a polynomial of degree 3 on the unit sphere, i.e. spherical harmonics up to
        degree 3).
    touching_fraction : float
        Fraction of objects placed in contact with a neighbour (they share voxel faces in the
        label volume). With ``overlap`` 0, every other object keeps at least one voxel of
        background to the rest.
    overlap : float
        Fraction of the summed bounding-ball radii by which the bounding balls of any two objects
        may interpenetrate (0 to 0.5). Bounding balls enclose the elongated, irregular surface, so
        a small overlap only packs objects tighter; a larger one lets neighbours touch and share
        faces, as in densely packed tissue (the denser half of the real data). 0 (the default)
        keeps a background gap between objects that are not a touching pair.
    layout : {"uniform", "spheroid", "core_shell"}
        ``uniform`` fills the volume; ``spheroid`` fills a ball centred in the volume, denser
        towards its centre; ``core_shell`` fills a ball with a core population and a shell
        population of different size and brightness.
    spheroid_radius : float
        Ball radius as a fraction of half the smaller in-plane (y, x) extent.
    central_density : float
        ``spheroid``: ratio of object density at the ball's centre to that at its rim.
    core_radius_fraction : float
        ``core_shell``: core radius as a fraction of the ball radius.
    core_fraction : float
        ``core_shell``: fraction of objects in the core population (their centres lie in the
        core ball; shell objects have their centres outside it, and all lie inside the ball).
    shell_radius_scale, shell_intensity_scale : float
        ``core_shell``: size and brightness of shell objects relative to core objects.
    intensity : float
        Mean object brightness in photons per voxel (before blur).
    intensity_heterogeneity : float
        Standard deviation of the log-normal per-object brightness factor.
    texture : float
        Relative amplitude of smooth intensity variation inside objects (chromatin-like).
    texture_scale : float
        Correlation length of that texture (physical units).
    psf_sigma : (float, float, float)
        Standard deviation (z, y, x) of the Gaussian point-spread function (physical units).
    background : float
        Background level in photons per voxel.
    poisson_noise : bool
        Draw photon (shot) noise.
    gaussian_noise : float
        Standard deviation of additive Gaussian read noise (photons).
    min_voxels : int
        Objects with fewer voxels inside the volume (cut at its border) are dropped.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    spacing: Triple = (1.0, 1.0, 1.0)
    n_objects: int | None = Field(default=None, ge=0)
    density: float | None = Field(default=None, gt=0.0, le=0.5)
    radius_range: tuple[float, float] = (4.0, 8.0)
    elongation: float = Field(default=1.3, ge=1.0, le=4.0)
    irregularity: float = Field(default=0.2, ge=0.0, le=0.5)
    touching_fraction: float = Field(default=0.3, ge=0.0, le=1.0)
    overlap: float = Field(default=0.0, ge=0.0, le=0.5)
    layout: Layout = "uniform"
    spheroid_radius: float = Field(default=0.9, gt=0.0, le=2.0)
    central_density: float = Field(default=3.0, ge=1.0, le=100.0)
    core_radius_fraction: float = Field(default=0.55, gt=0.0, lt=1.0)
    core_fraction: float = Field(default=0.4, ge=0.0, le=1.0)
    shell_radius_scale: float = Field(default=1.25, gt=0.0, le=4.0)
    shell_intensity_scale: float = Field(default=0.5, gt=0.0, le=10.0)
    intensity: float = Field(default=200.0, gt=0.0)
    intensity_heterogeneity: float = Field(default=0.3, ge=0.0, le=2.0)
    texture: float = Field(default=0.25, ge=0.0, le=1.0)
    texture_scale: float = Field(default=1.0, gt=0.0)
    psf_sigma: Triple = (1.5, 0.6, 0.6)
    background: float = Field(default=20.0, ge=0.0)
    poisson_noise: bool = True
    gaussian_noise: float = Field(default=3.0, ge=0.0)
    min_voxels: int = Field(default=8, ge=1)

    @field_validator("spacing")
    @classmethod
    def _positive_spacing(cls, value: Triple) -> Triple:
        if not all(v > 0 for v in value):
            raise ValueError("must be three positive numbers (z, y, x)")
        return value

    @field_validator("psf_sigma", mode="before")
    @classmethod
    def _broadcast_sigma(cls, value: Any) -> Any:
        if isinstance(value, int | float):
            return (value, value, value)
        return value

    @field_validator("psf_sigma")
    @classmethod
    def _non_negative_sigma(cls, value: Triple) -> Triple:
        if not all(v >= 0 for v in value):
            raise ValueError("must be three non-negative numbers (z, y, x)")
        return value

    @field_validator("radius_range")
    @classmethod
    def _ordered_radii(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high:
            raise ValueError("must be two numbers with 0 < low <= high")
        return value

    @model_validator(mode="after")
    def _count_or_density(self) -> SimulationParams:
        if self.n_objects is not None and self.density is not None:
            raise ValueError("give n_objects or density, not both")
        return self


def make_params(**values: Any) -> SimulationParams:
    """Build :class:`SimulationParams`, turning validation errors into one-line :class:`AopError`.

    Raises
    ------
    AopError
        Naming the first offending parameter and its value, e.g. ``simulation parameter
        'touching_fraction': Input should be less than or equal to 1 (got 1.5)``.
    """
    try:
        return SimulationParams(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"] if not isinstance(part, int))
        if error["type"] == "extra_forbidden":
            known = ", ".join(SimulationParams.model_fields)
            raise AopError(f"unknown simulation parameter {field!r} (known: {known})") from None
        message = error_message(error)
        if not field:
            raise AopError(f"simulation parameters: {message}") from None
        value = values.get(field, error.get("input"))
        raise AopError(f"simulation parameter {field!r}: {message} (got {value!r})") from None


def check_shape(shape: Any) -> tuple[int, int, int]:
    """Validate a volume shape (z, y, x): three integers, each at least 1.

    Raises
    ------
    AopError
        When ``shape`` is not three positive integers.
    """
    try:
        values = tuple(int(s) for s in shape)
        exact = all(int(s) == s for s in shape)
    except (TypeError, ValueError):
        raise AopError(f"shape must be three positive integers (z, y, x), got {shape!r}") from None
    if len(values) != 3 or not exact or min(values) < 1:
        raise AopError(f"shape must be three positive integers (z, y, x), got {shape!r}")
    return values  # type: ignore[return-value]


def smallest_shape(params: SimulationParams) -> tuple[int, int, int]:
    """The smallest volume shape (z, y, x) that holds one whole object of ``params``.

    Each side spans the diameter of the smallest object, ``2 * radius_range[0]`` (the core shell's
    ``shell_radius_scale`` applied when it shrinks the shell's objects), in voxels of
    ``spacing``, rounded up. A thinner volume only holds cut objects: a slab of one or a few
    z-slices that no 3D model or post-processing step can segment.

    Examples
    --------
    >>> smallest_shape(make_params())  # radius 4 at 1 µm
    (8, 8, 8)
    >>> smallest_shape(make_params(spacing=(2.0, 0.5, 0.5), radius_range=(2.5, 4.0)))
    (3, 10, 10)
    """
    radius = params.radius_range[0]
    if params.layout == "core_shell":
        radius *= min(1.0, params.shell_radius_scale)
    # a relative tolerance: 2 * 2.5 / 0.5 must give 10, not 11 through rounding error
    return tuple(max(1, math.ceil(2 * radius / s - 1e-9)) for s in params.spacing)  # type: ignore[return-value]


def check_shape_holds_an_object(
    shape: tuple[int, int, int], params: SimulationParams, name: str = "shape"
) -> None:
    """Refuse a volume shape too small to hold one whole object (:func:`smallest_shape`).

    Parameters
    ----------
    shape : (int, int, int)
        The volume shape (z, y, x), already checked by :func:`check_shape`.
    params : SimulationParams
        The objects' sizes and the voxel size.
    name : str
        How the message names the shape (``--shape`` on the command line).

    Raises
    ------
    AopError
        Naming the shape, the smallest object and the smallest shape that holds it.
    """
    low = smallest_shape(params)
    if any(side < need for side, need in zip(shape, low, strict=True)):
        radius = params.radius_range[0]
        raise AopError(
            f"{name} {list(shape)}: too small to hold an object: each side must span the "
            f"smallest object's diameter (2 x {radius:g} µm at voxel size "
            f"{list(params.spacing)}), i.e. at least {list(low)} voxels (z, y, x)"
        )
