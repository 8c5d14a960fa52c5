"""Where objects go: regions (volume, spheroid, core and shell), object counts, packing.

Packing is random sequential addition of bounding balls with a spatial hash: a new object is
accepted when its bounding ball keeps a gap of more than one voxel (``max(spacing)``) to every
placed ball, so separate objects never share a voxel face. With the ``overlap`` parameter the
test allows that fraction of the two radii to interpenetrate (the balls are loose bounds of the
surfaces), which packs objects up to about density 0.45 and lets neighbours touch. Touching
objects are placed in pairs: the second member is put along a random direction at the sum of
both surface distances minus an overlap, and is exempt from the gap test against its partner
only. Rasterisation later splits the overlap between the two, so they share a face.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from aop.errors import AopError
from aop.synth.params import SimulationParams
from aop.synth.shapes import Blob, random_blobs, surface_distance

__all__ = [
    "Placement",
    "Region",
    "expected_object_count",
    "mean_object_volume",
    "place_objects",
    "region_of",
]

CORE, SHELL = 0, 1
_ATTEMPTS_PER_OBJECT = 300
_PARTNER_DIRECTIONS = 12
_GIVE_UP_AFTER_FAILURES = 25
_MIN_PLACED_FRACTION = 0.9


@dataclass(frozen=True)
class Region:
    """The part of the volume objects are placed in (physical units)."""

    extent: np.ndarray  # (3,) physical size of the volume: (shape - 1) * spacing
    center: np.ndarray  # (3,) centre of the ball (the volume's centre)
    radius: float  # ball radius; inf for the uniform layout
    core_radius: float  # core ball radius (core_shell); equal to radius otherwise

    def volume(self, samples: int = 48) -> float:
        """Volume of the region: the box, or the ball intersected with the box."""
        box = float(np.prod(np.maximum(self.extent, 1e-9)))
        if math.isinf(self.radius):
            return box
        axes = [(np.arange(samples) + 0.5) / samples * e for e in self.extent]
        grid = np.meshgrid(*axes, indexing="ij")
        squared = sum((g - c) ** 2 for g, c in zip(grid, self.center, strict=True))
        return box * float(np.mean(squared <= self.radius**2))


def region_of(shape: tuple[int, int, int], params: SimulationParams) -> Region:
    """The placement region for ``shape`` and the layout in ``params``."""
    spacing = np.asarray(params.spacing, dtype=float)
    extent = (np.asarray(shape) - 1) * spacing
    center = extent / 2
    if params.layout == "uniform":
        return Region(extent, center, math.inf, math.inf)
    radius = params.spheroid_radius * min(extent[1], extent[2]) / 2
    radius = max(radius, float(spacing.max()))
    core = radius * params.core_radius_fraction if params.layout == "core_shell" else radius
    return Region(extent, center, radius, core)


def _mean_cubed(low: float, high: float) -> float:
    """E[r**3] for r uniform in [low, high]."""
    if high == low:
        return low**3
    return (high**4 - low**4) / (4 * (high - low))


def mean_object_volume(params: SimulationParams) -> float:
    """Mean volume of one object (physical units), over populations."""
    ball = 4.0 / 3.0 * math.pi * _mean_cubed(*params.radius_range)
    if params.layout != "core_shell":
        return ball
    shell = ball * params.shell_radius_scale**3
    return params.core_fraction * ball + (1 - params.core_fraction) * shell


def expected_object_count(shape: tuple[int, int, int], params: SimulationParams) -> int:
    """Number of objects to place: ``n_objects``, or ``density`` times region over object volume."""
    if params.n_objects is not None:
        return params.n_objects
    density = 0.15 if params.density is None else params.density
    region = region_of(shape, params)
    return int(round(density * region.volume() / mean_object_volume(params)))


class _CellGrid:
    """Bounding balls binned in a dense grid of cells no smaller than the largest ball's diameter
    plus the gap, so a ball can only conflict with balls in its own and the 26 adjacent cells.

    Each cell keeps up to ``depth`` ball indices (-1 for empty slots); the depth doubles when a
    cell overflows. The grid has a margin of one cell on every side.
    """

    def __init__(
        self, cell: float, extent: np.ndarray, overlap: float = 0.0, capacity: int = 1024
    ) -> None:
        self.cell = cell
        self.keep = 1.0 - overlap  # the part of the summed radii two balls must keep apart
        cells = np.floor(np.asarray(extent) / cell).astype(int) + 3
        self.slots = np.full((*cells, 4), -1, dtype=np.int64)
        self.centers = np.zeros((capacity, 3))
        self.radii = np.zeros(capacity)
        self.count = 0

    def key(self, center: np.ndarray) -> tuple[int, int, int]:
        kz, ky, kx = (center // self.cell).astype(int) + 1
        return int(kz), int(ky), int(kx)

    def free(self, center: np.ndarray, radius: float, gap: float, exclude: int = -1) -> bool:
        """Whether a ball keeps more than ``gap`` to every stored ball (except ``exclude``), after
        the allowed overlap of the two radii."""
        kz, ky, kx = self.key(center)
        near = self.slots[kz - 1 : kz + 2, ky - 1 : ky + 2, kx - 1 : kx + 2].ravel()
        near = near[(near >= 0) & (near != exclude)]
        if near.size == 0:
            return True
        offset = self.centers[near] - center
        distance = np.sqrt(np.einsum("ij,ij->i", offset, offset))
        # multiplying by keep = 1.0 is exact, so overlap 0 reproduces the plain gap test bit for bit
        reach = self.keep * self.radii[near] + (self.keep * radius + gap)
        return bool((distance > reach).all())

    def add(self, center: np.ndarray, radius: float) -> int:
        """Store a ball and return its index."""
        if self.count == len(self.radii):
            self.centers = np.concatenate([self.centers, np.zeros_like(self.centers)])
            self.radii = np.concatenate([self.radii, np.zeros_like(self.radii)])
        index = self.count
        self.centers[index] = center
        self.radii[index] = radius
        cell = self.slots[self.key(center)]
        empty = np.flatnonzero(cell < 0)
        if empty.size == 0:
            depth = self.slots.shape[-1]
            grown = np.full((*self.slots.shape[:-1], 2 * depth), -1, dtype=np.int64)
            grown[..., :depth] = self.slots
            self.slots = grown
            cell = self.slots[self.key(center)]
            empty = np.flatnonzero(cell < 0)
        cell[empty[0]] = index
        self.count += 1
        return index

    def remove_last(self) -> None:
        """Forget the most recently added ball."""
        index = self.count - 1
        cell = self.slots[self.key(self.centers[index])]
        cell[cell == index] = -1
        self.count -= 1


@dataclass
class Placement:
    """Placed objects with their population (0 core or only, 1 shell) and touching partner."""

    blobs: list[Blob]
    populations: np.ndarray
    partners: np.ndarray  # index of the object it was placed against, -1 for none
    requested: int


class _Placer:
    def __init__(self, shape: tuple[int, int, int], params: SimulationParams, rng) -> None:
        self.params = params
        self.rng = rng
        self.spacing = np.asarray(params.spacing, dtype=float)
        self.region = region_of(shape, params)
        self.gap = float(self.spacing.max())
        largest = params.radius_range[1] * max(1.0, params.shell_radius_scale)
        reach = largest * params.elongation ** (2 / 3) * (1 + 1.1 * params.irregularity)
        self.hash = _CellGrid(2 * reach + self.gap, self.region.extent, params.overlap)
        self.blobs: list[Blob] = []
        self.populations: list[int] = []
        self.partners: list[int] = []

    def draw_shapes(self, population: int, count: int) -> None:
        """Draw the shapes of a population's objects at once (placement only moves them)."""
        p = self.params
        radii = self.rng.uniform(*p.radius_range, size=count)
        if population == SHELL:
            radii *= p.shell_radius_scale
        self.shapes = iter(random_blobs(self.rng, radii, p.elongation, p.irregularity))

    def new_blob(self) -> Blob:
        return next(self.shapes)

    def random_center(self) -> np.ndarray:
        region = self.region
        if math.isinf(region.radius):
            return self.rng.uniform(0.0, 1.0, size=3) * region.extent
        low = np.maximum(region.center - region.radius, 0.0)
        high = np.minimum(region.center + region.radius, region.extent)
        return low + self.rng.uniform(0.0, 1.0, size=3) * (high - low)

    def inside(self, blob: Blob, population: int) -> bool:
        """Whether the blob's centre is in the volume and the blob in its population's region."""
        region = self.region
        if np.any(blob.center < 0) or np.any(blob.center > region.extent):
            return False
        if math.isinf(region.radius):
            return True
        r = float(np.linalg.norm(blob.center - region.center))
        reach = blob.bounding_radius
        if self.params.layout == "core_shell" and (population == CORE) != (r < region.core_radius):
            return False  # core objects have their centre in the core, shell objects outside it
        return r + reach <= region.radius

    def density_accepts(self, blob: Blob) -> bool:
        """Thin candidates so that the spheroid is denser towards its centre."""
        if self.params.layout != "spheroid" or self.params.central_density == 1.0:
            return True
        r = float(np.linalg.norm(blob.center - self.region.center)) / self.region.radius
        k = self.params.central_density
        return self.rng.uniform() * k <= 1.0 + (k - 1.0) * (1.0 - r * r)

    def candidate(self, shape: Blob, population: int) -> Blob | None:
        """``shape`` moved to a random centre, or None when that position is not allowed."""
        blob = shape.moved(self.random_center())
        if not self.inside(blob, population) or not self.density_accepts(blob):
            return None
        if not self.hash.free(blob.center, blob.bounding_radius, self.gap):
            return None
        return blob

    def commit(self, blob: Blob, population: int, partner: int) -> int:
        index = self.hash.add(blob.center, blob.bounding_radius)
        self.blobs.append(blob)
        self.populations.append(population)
        self.partners.append(partner)
        return index

    def place_single(self, population: int) -> bool:
        shape = self.new_blob()
        for _ in range(_ATTEMPTS_PER_OBJECT):
            blob = self.candidate(shape, population)
            if blob is not None:
                self.commit(blob, population, -1)
                return True
        return False

    def partner_for(self, first: Blob, second: Blob, population: int, exclude: int) -> Blob | None:
        """``second`` moved into contact with ``first``, or None when no direction fits."""
        for _ in range(_PARTNER_DIRECTIONS):
            direction = self.rng.normal(size=3)
            direction /= np.linalg.norm(direction)
            reach = surface_distance(first, direction) + surface_distance(second, -direction)
            overlap = min(max(self.rng.uniform(0.15, 0.3) * reach, self.gap), 0.5 * reach)
            blob = second.moved(first.center + direction * (reach - overlap))
            if not self.inside(blob, population):
                continue
            if self.hash.free(blob.center, blob.bounding_radius, self.gap, exclude=exclude):
                return blob
        return None

    def place_pair(self, population: int) -> bool:
        first_shape, second_shape = self.new_blob(), self.new_blob()
        for _ in range(_ATTEMPTS_PER_OBJECT // _PARTNER_DIRECTIONS + 1):
            first = self.candidate(first_shape, population)
            if first is None:
                continue
            # the partner must also clear the first object's neighbours: test it with the first
            # object stored, then roll back if no partner fits
            index = self.commit(first, population, -1)
            second = self.partner_for(first, second_shape, population, exclude=index)
            if second is not None:
                self.commit(second, population, index)
                self.partners[index] = index + 1
                return True
            self._rollback()
        return False

    def _rollback(self) -> None:
        self.hash.remove_last()
        self.blobs.pop()
        self.populations.pop()
        self.partners.pop()


def place_objects(
    shape: tuple[int, int, int], params: SimulationParams, rng: np.random.Generator
) -> Placement:
    """Place the objects of one volume.

    The number of objects comes from :func:`expected_object_count`; ``touching_fraction`` of them
    are placed in touching pairs. Pairs are placed first (they need more room), then single objects.

    Raises
    ------
    AopError
        When fewer than 90 % (rounded down) of the requested objects fit (too dense for the
        object sizes).
    """
    requested = expected_object_count(shape, params)
    placer = _Placer(shape, params, rng)
    if params.layout == "core_shell":
        n_core = int(round(requested * params.core_fraction))
        counts = {CORE: n_core, SHELL: requested - n_core}
    else:
        counts = {CORE: requested}
    for population, count in counts.items():
        placer.draw_shapes(population, count)
        failures = 0
        n_pairs = int(round(count * params.touching_fraction / 2))
        for _ in range(n_pairs):
            if failures < _GIVE_UP_AFTER_FAILURES and not placer.place_pair(population):
                failures += 1
        for _ in range(count - 2 * n_pairs):
            if failures < _GIVE_UP_AFTER_FAILURES and not placer.place_single(population):
                failures += 1
    placed = len(placer.blobs)
    if placed < math.floor(_MIN_PLACED_FRACTION * requested):
        what = "n_objects" if params.n_objects is not None else "density"
        raise AopError(
            f"simulation parameter {what!r}: only {placed} of {requested} objects fit in a "
            f"{'x'.join(map(str, shape))} volume (layout {params.layout}, radius_range "
            f"{params.radius_range}); lower {what} or radius_range, or enlarge the shape"
        )
    return Placement(
        placer.blobs,
        np.asarray(placer.populations, dtype=np.int8),
        np.asarray(placer.partners, dtype=np.int64),
        requested,
    )
