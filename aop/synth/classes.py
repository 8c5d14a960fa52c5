"""Instance classes of the synthetic benchmark: per-class morphology, texture, channel expression.

The geometry is simulated exactly as without classes (the same seed gives the same labels); each
object then draws its class from the posterior of a mixture over its own geometry, so the classes
differ in size and elongation but overlap. The class of object ``i`` is sampled with probability
proportional to::

    weight_k * exp(-((log r_i - log radius_k) / SIZE_SPREAD)^2 / 2
                   - ((e_i - elongation_k) / ELONGATION_SPREAD)^2 / 2) * position term

where ``r_i`` is the object's equivalent radius and ``e_i`` the ratio of its longest to shortest
semi-axis; for the ``core_shell`` layout, a class may be tied to the core or shell population and
to the inner or outer half of the shell (``position``). Then every class has its own:

- nuclear channel (channel 0) brightness factor and texture amplitude;
- expression of the marker channels 1, 2, ...: each object's marker brightness is
  ``intensity * expression_k[c] * lognormal(EXPRESSION_SPREAD)``, rendered inside the object with
  the same blur and noise as channel 0.

One feature alone does not tell the classes apart (their distributions overlap); several do.
Presets: ``myotube`` (myotube, schwann, debris, other nuclei; channels DAPI, alpha-actinin,
S100beta, with the paper's class shares) and ``core_shell`` (core, inner shell and outer shell
cells; a nuclear channel and two markers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aop.errors import AopError
from aop.synth.layout import CORE, SHELL, place_objects, region_of
from aop.synth.params import SimulationParams, check_shape
from aop.synth.render import rasterize, render_image

__all__ = [
    "CLASS_PRESETS",
    "ClassModel",
    "ClassSet",
    "class_set",
    "simulate_classes",
]

SIZE_SPREAD = 0.12
ELONGATION_SPREAD = 0.25
EXPRESSION_SPREAD = 0.3


@dataclass(frozen=True)
class ClassModel:
    """How one class of objects looks.

    Attributes
    ----------
    name : str
        The class name (written to ``dataset.yaml`` and ``annotations.csv``).
    weight : float
        Prior share of objects.
    radius : float
        Preferred equivalent radius (µm).
    elongation : float
        Preferred ratio of longest to shortest semi-axis.
    brightness : float
        Channel 0 brightness relative to the preset's ``intensity``.
    texture : float
        Channel 0 texture amplitude (as ``SimulationParams.texture``).
    expression : tuple of float
        Marker channel brightness relative to ``intensity``, one per marker channel.
    position : {"any", "core", "inner_shell", "outer_shell"}
        ``core_shell`` layout: the population (and shell half) the class lives in.
    """

    name: str
    weight: float
    radius: float
    elongation: float
    brightness: float = 1.0
    texture: float = 0.3
    expression: tuple[float, ...] = ()
    position: str = "any"


@dataclass(frozen=True)
class ClassSet:
    """The classes of a preset and the names of the marker channels."""

    classes: tuple[ClassModel, ...]
    channel_names: tuple[str, ...]  # channel 0 first


CLASS_PRESETS: dict[str, ClassSet] = {
    # paper Myotube: 16 Schwann, 125 myotube, 95 debris, 148 other nuclei
    "myotube": ClassSet(
        (
            ClassModel("myotube", 0.33, 3.5, 1.6, 1.0, 0.25, (1.0, 0.2)),
            ClassModel("schwann", 0.08, 2.9, 1.6, 1.0, 0.3, (0.2, 1.0)),
            ClassModel("debris", 0.25, 2.7, 1.15, 1.8, 0.6, (0.2, 0.2)),
            ClassModel("other", 0.34, 3.4, 1.2, 0.9, 0.25, (0.2, 0.2)),
        ),
        ("dapi", "alpha_actinin", "s100beta"),
    ),
    "core_shell": ClassSet(
        (
            ClassModel("core", 0.4, 6.7, 1.15, 1.0, 0.2, (0.8, 0.35), "core"),
            ClassModel("inner_shell", 0.3, 8.4, 1.15, 1.0, 0.2, (0.5, 0.8), "inner_shell"),
            ClassModel("outer_shell", 0.3, 8.4, 1.15, 0.8, 0.3, (0.25, 0.45), "outer_shell"),
        ),
        ("nuclei", "marker_a", "marker_b"),
    ),
}


def class_set(name: str) -> ClassSet:
    """The class set of preset ``name``; raises :class:`AopError` for a preset without classes."""
    if name not in CLASS_PRESETS:
        known = ", ".join(CLASS_PRESETS)
        raise AopError(f"preset {name!r} has no instance classes (presets with classes: {known})")
    return CLASS_PRESETS[name]


def _class_probabilities(
    classes: Sequence[ClassModel],
    radius: np.ndarray,
    elongation: np.ndarray,
    populations: np.ndarray,
    shell_half: np.ndarray,
) -> np.ndarray:
    log_p = np.zeros((len(radius), len(classes)))
    for k, model in enumerate(classes):
        size = (np.log(radius) - np.log(model.radius)) / SIZE_SPREAD
        shape = (elongation - model.elongation) / ELONGATION_SPREAD
        log_p[:, k] = np.log(model.weight) - 0.5 * (size**2 + shape**2)
        allowed = {
            "any": np.ones(len(radius), bool),
            "core": populations == CORE,
            "inner_shell": (populations == SHELL) & ~shell_half,
            "outer_shell": (populations == SHELL) & shell_half,
        }[model.position]
        log_p[~allowed, k] = -np.inf
    log_p -= log_p.max(axis=1, keepdims=True)
    p = np.exp(log_p)
    return p / p.sum(axis=1, keepdims=True)


def simulate_classes(
    shape: Sequence[int],
    class_set: ClassSet,
    *,
    seed: int = 0,
    params: SimulationParams,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simulate a multi-channel volume whose objects belong to classes.

    Parameters
    ----------
    shape : (int, int, int)
        Volume shape (z, y, x).
    class_set : ClassSet
        The classes and channel names (e.g. ``CLASS_PRESETS["myotube"]``).
    seed : int
        Seed; the labels equal those of :func:`aop.synth.simulate` with the same seed.
    params : SimulationParams
        Geometry, intensity, blur and noise.

    Returns
    -------
    image : ndarray of float32, shape (C, Z, Y, X)
        Channel 0 the nuclear stain, then one channel per marker.
    labels : ndarray of uint32, shape (Z, Y, X)
    classes : ndarray of int64, shape (N,)
        ``classes[k - 1]`` is the index into ``class_set.classes`` of label ``k``.

    Examples
    --------
    >>> from aop.synth import preset_params
    >>> image, labels, classes = simulate_classes(
    ...     (16, 64, 64), CLASS_PRESETS["myotube"], seed=0, params=preset_params("myotube"))
    >>> image.shape, len(classes) == labels.max()
    ((3, 16, 64, 64), True)
    """
    shape = check_shape(shape)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise AopError(f"seed must be a non-negative integer, got {seed!r}")
    n_markers = len(class_set.channel_names) - 1
    for model in class_set.classes:
        if len(model.expression) != n_markers:
            raise AopError(f"class {model.name!r}: expression needs {n_markers} values")
    # the first three streams are those of aop.synth.simulate: the same placement and labels
    placement_seed, brightness_seed, image_seed, class_seed, marker_seed = np.random.SeedSequence(
        int(seed)
    ).spawn(5)
    placement = place_objects(shape, params, np.random.default_rng(placement_seed))
    labels, kept = rasterize(placement.blobs, shape, params.spacing, params.min_voxels)
    blobs = [placement.blobs[i] for i in kept]
    populations = placement.populations[kept]
    semi = np.array([b.semi_axes for b in blobs]).reshape(-1, 3)
    radius = np.cbrt(np.prod(semi, axis=1))
    elongation = semi.max(axis=1) / semi.min(axis=1)
    region = region_of(shape, params)
    shell_half = np.zeros(len(blobs), bool)
    if np.isfinite(region.radius):
        r = np.array([np.linalg.norm(b.center - region.center) for b in blobs]).reshape(-1)
        shell_half = r > (region.core_radius + region.radius) / 2
    p = _class_probabilities(class_set.classes, radius, elongation, populations, shell_half)
    class_rng = np.random.default_rng(class_seed)
    cumulative = p.cumsum(axis=1)
    draws = class_rng.uniform(size=(len(p), 1))
    classes = np.minimum((draws > cumulative).sum(axis=1), len(class_set.classes) - 1)

    from aop.synth.simulate import object_brightness

    base = object_brightness(populations, params, np.random.default_rng(brightness_seed))
    factor = np.array([m.brightness for m in class_set.classes])[classes]
    texture = np.array([m.texture for m in class_set.classes])[classes]
    image_rng = np.random.default_rng(image_seed)
    channels = [render_image(labels, base * factor, params, image_rng, texture)]
    marker_rng = np.random.default_rng(marker_seed)
    expression = np.array([m.expression for m in class_set.classes]).reshape(-1, n_markers)
    for c in range(n_markers):
        level = expression[classes, c] * np.exp(
            marker_rng.normal(-0.5 * EXPRESSION_SPREAD**2, EXPRESSION_SPREAD, size=len(classes))
        )
        channels.append(render_image(labels, params.intensity * level, params, marker_rng))
    return np.stack(channels), labels, classes.astype(np.int64)
