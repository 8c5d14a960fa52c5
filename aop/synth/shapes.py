"""Randomly deformed ellipsoids in physical coordinates.

A :class:`Blob` is an ellipsoid (centre, semi-axes, rotation) whose surface radius in the
ellipsoid's normalised frame is ``1 + delta(n)`` for the unit direction ``n``. ``delta`` is a random
polynomial of degree 2 and 3 in the components of ``n``; on the unit sphere such polynomials span
the real spherical harmonics of degree up to 3, so the deformation is smooth and low-order. It is
centred to mean zero over the sphere and scaled so that its largest magnitude equals the requested
irregularity; evaluation clips it to ``bound`` so that ``bounding_radius`` holds exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

__all__ = [
    "Blob",
    "blob_box",
    "inside_mask",
    "normalized_radius",
    "random_blob",
    "random_blobs",
    "surface_distance",
]

N_COEFFICIENTS = 16
_BOUND_MARGIN = 1.1


def _fibonacci_sphere(n: int) -> np.ndarray:
    """``n`` nearly uniform unit vectors, shape (n, 3)."""
    i = np.arange(n) + 0.5
    polar = np.arccos(1.0 - 2.0 * i / n)
    azimuth = np.pi * (1.0 + 5.0**0.5) * i
    return np.stack(
        [np.cos(polar), np.sin(polar) * np.sin(azimuth), np.sin(polar) * np.cos(azimuth)], axis=1
    )


_DIRECTIONS = _fibonacci_sphere(256)


def _polynomial(c: np.ndarray, a: np.ndarray, b: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The 6 quadratic and 10 cubic monomials of (a, b, d), weighted by ``c`` (16 numbers)."""
    c = [float(v) for v in c]  # plain floats keep float32 arrays in float32
    aa, bb, dd, ab, ad, bd = a * a, b * b, d * d, a * b, a * d, b * d
    quadratic = c[0] * aa + c[1] * bb + c[2] * dd + c[3] * ab + c[4] * ad + c[5] * bd
    cubic_a = c[6] * aa + c[7] * bb + c[8] * dd + c[9] * ab + c[10] * ad + c[11] * bd
    cubic_b = c[12] * bb + c[13] * dd + c[14] * bd
    return quadratic + a * cubic_a + b * cubic_b + c[15] * d * dd


@dataclass(frozen=True)
class Blob:
    """One object: a deformed ellipsoid in physical (z, y, x) coordinates.

    Attributes
    ----------
    center : ndarray, shape (3,)
        Centre in physical units.
    semi_axes : ndarray, shape (3,)
        Semi-axes of the ellipsoid in physical units.
    rotation : ndarray, shape (3, 3)
        Columns are the ellipsoid's axes in the (z, y, x) frame.
    coefficients : ndarray, shape (16,)
        Weights of the quadratic and cubic monomials of the deformation.
    offset : float
        Subtracted from the polynomial so that the deformation has mean zero over the sphere.
    bound : float
        The deformation is clipped to ``[-bound, bound]``.
    """

    center: np.ndarray
    semi_axes: np.ndarray
    rotation: np.ndarray
    coefficients: np.ndarray
    offset: float
    bound: float

    @property
    def bounding_radius(self) -> float:
        """Radius of a ball around ``center`` that contains the whole object."""
        return float(self.semi_axes.max() * (1.0 + self.bound))

    @property
    def half_extent(self) -> np.ndarray:
        """Half-size (z, y, x) of an axis-aligned box around ``center`` that holds the object."""
        return (1.0 + self.bound) * np.sqrt(((self.rotation * self.semi_axes) ** 2).sum(axis=1))

    def moved(self, center: np.ndarray) -> Blob:
        """The same object with another centre."""
        return Blob(
            np.asarray(center, dtype=float),
            self.semi_axes,
            self.rotation,
            self.coefficients,
            self.offset,
            self.bound,
        )

    def deformation(self, n0: np.ndarray, n1: np.ndarray, n2: np.ndarray) -> np.ndarray:
        """``delta(n)`` for unit directions given by their components in the ellipsoid frame."""
        if self.bound == 0.0:
            return np.zeros(np.broadcast_shapes(n0.shape, n1.shape, n2.shape))
        delta = np.asarray(_polynomial(self.coefficients, n0, n1, n2) - float(self.offset))
        if delta.ndim == 0:
            return np.clip(delta, -self.bound, self.bound)
        return np.clip(delta, -self.bound, self.bound, out=delta)


def random_blob(
    rng: np.random.Generator,
    radius: float,
    elongation: float,
    irregularity: float,
) -> Blob:
    """Draw one blob centred at the origin (see :func:`random_blobs`)."""
    return random_blobs(rng, np.asarray([radius]), elongation, irregularity)[0]


def random_blobs(
    rng: np.random.Generator,
    radii: np.ndarray,
    elongation: float,
    irregularity: float,
) -> list[Blob]:
    """Draw blobs centred at the origin, one per radius.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness.
    radii : ndarray
        Equivalent radii: each ellipsoid's semi-axes multiply to ``radius**3``.
    elongation : float
        Largest ratio of longest to shortest semi-axis.
    irregularity : float
        Largest relative deviation of the surface from the ellipsoid.
    """
    radii = np.asarray(radii, dtype=float)
    n = len(radii)
    if n == 0:
        return []
    log_axes = rng.uniform(-0.5, 0.5, size=(n, 3)) * np.log(elongation)
    semi_axes = radii[:, None] * np.exp(log_axes - log_axes.mean(axis=1, keepdims=True))
    rotations = Rotation.from_quat(rng.normal(size=(n, 4))).as_matrix()
    coefficients = rng.normal(size=(n, N_COEFFICIENTS))
    offsets = np.zeros(n)
    bound = 0.0
    if irregularity > 0:
        monomials = np.stack(
            [_polynomial(np.eye(N_COEFFICIENTS)[k], *_DIRECTIONS.T) for k in range(N_COEFFICIENTS)],
            axis=1,
        )  # (directions, 16)
        values = monomials @ coefficients.T  # (directions, n)
        offsets = values.mean(axis=0)
        scale = irregularity / np.abs(values - offsets).max(axis=0)
        coefficients *= scale[:, None]
        offsets *= scale
        bound = irregularity * _BOUND_MARGIN
    else:
        coefficients[:] = 0.0
    return [
        Blob(np.zeros(3), semi_axes[i], rotations[i], coefficients[i], float(offsets[i]), bound)
        for i in range(n)
    ]


def _frame(blob: Blob, dz: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> list[np.ndarray]:
    """Displacements expressed in the ellipsoid frame, divided by the semi-axes."""
    m = (blob.rotation / blob.semi_axes).tolist()  # column k: axis k over its semi-axis
    return [m[0][k] * dz + m[1][k] * dy + m[2][k] * dx for k in range(3)]


def normalized_radius(blob: Blob, dz: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Normalised radius ``q`` of points at displacements (dz, dy, dx) from the blob's centre.

    ``q <= 1`` inside the object and ``q = 1`` on its surface; the arrays broadcast together.
    Where two objects claim a voxel, the one with the smaller ``q`` keeps it.
    """
    u0, u1, u2 = _frame(blob, dz, dy, dx)
    rho = np.sqrt(u0 * u0 + u1 * u1 + u2 * u2)
    if blob.bound == 0.0:
        return rho
    safe = np.maximum(rho, 1e-12)
    delta = blob.deformation(u0 / safe, u1 / safe, u2 / safe)
    return rho / (1.0 + delta)


def inside_mask(blob: Blob, dz: np.ndarray, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Boolean mask of points inside the blob, equal to ``normalized_radius(...) <= 1``.

    The deformation is evaluated only in the shell ``1 - bound < rho <= 1 + bound`` where it can
    decide, which saves most of the work.
    """
    u0, u1, u2 = _frame(blob, dz, dy, dx)
    rho = np.sqrt(u0 * u0 + u1 * u1 + u2 * u2)
    if blob.bound == 0.0:
        return rho <= 1.0
    inside = rho <= 1.0 - blob.bound
    shell = np.nonzero((rho > 1.0 - blob.bound) & (rho <= 1.0 + blob.bound))
    r = rho[shell]
    delta = blob.deformation(u0[shell] / r, u1[shell] / r, u2[shell] / r)
    inside[shell] = r <= 1.0 + delta
    return inside


def surface_distance(blob: Blob, direction: np.ndarray) -> float:
    """Distance from the blob's centre to its surface along a unit ``direction`` (z, y, x)."""
    u = (blob.rotation.T @ np.asarray(direction, dtype=float)) / blob.semi_axes
    length = float(np.linalg.norm(u))
    n = u / length
    delta = float(blob.deformation(np.asarray(n[0]), np.asarray(n[1]), np.asarray(n[2])))
    return (1.0 + delta) / length


def blob_box(
    blob: Blob, spacing: np.ndarray, shape: tuple[int, int, int]
) -> tuple[tuple[slice, slice, slice], tuple[np.ndarray, np.ndarray, np.ndarray]] | None:
    """The voxel box that holds the blob, clipped to the volume, and the displacements in it.

    Voxel ``i`` along an axis has its centre at ``i * spacing``.

    Returns
    -------
    slices : tuple of 3 slices, or None
        The box in the volume; None when the blob lies outside the volume.
    displacements : tuple of 3 arrays
        Physical displacement of each voxel centre from the blob's centre, shaped
        ``(nz, 1, 1)``, ``(1, ny, 1)`` and ``(1, 1, nx)`` for broadcasting.
    """
    reach = blob.half_extent
    low = np.maximum(np.ceil((blob.center - reach) / spacing), 0).astype(int)
    high = np.minimum(np.floor((blob.center + reach) / spacing), np.asarray(shape) - 1).astype(int)
    if np.any(high < low):
        return None
    slices = tuple(slice(lo, hi + 1) for lo, hi in zip(low, high, strict=True))
    axes = [
        (np.arange(lo, hi + 1) * s - c).astype(np.float32)
        for lo, hi, s, c in zip(low, high, spacing, blob.center, strict=True)
    ]
    displacements = (
        axes[0][:, None, None],
        axes[1][None, :, None],
        axes[2][None, None, :],
    )
    return slices, displacements  # type: ignore[return-value]
