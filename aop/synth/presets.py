"""Named parameter sets that match the source paper's benchmarks in spirit.

Each preset keeps object sizes and density in physical units, so a smaller ``shape`` gives a
smaller crop of the same tissue with proportionally fewer objects. The densities are calibrated
so that the paper's volume shape yields the paper's object count:

- ``myotube``: dense small elongated nuclei of myotube cultures; 111,458 nuclei in ten volumes of
  90 x 1024 x 1024, i.e. about 11,146 per volume; anisotropic voxels (1.0, 0.5, 0.5).
- ``core_shell``: cells of a core-shell assembloid inside a spheroid, a smaller, brighter core
  population and a larger, dimmer shell; 3,358 cells in five volumes of 70 x 1024 x 1024, i.e.
  about 672 per volume; voxels (2.0, 0.5, 0.5).
- ``nuclei``: a generic isotropic nuclei benchmark (the defaults of :class:`SimulationParams`).
- ``packed_nuclei``: the same nuclei packed as in tissue (``overlap`` 0.4): about 36 % of the
  voxels are nuclei and 85 % of the nuclei touch a neighbour, close to StarDist's annotated 3D
  sample (38.5 %, 86 %). A benchmark to adapt to such data with ``aop adapt``: the CycleGAN
  matches the real share of bright voxels, so a sparser benchmark gets nuclei invented in its
  background.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from aop.errors import AopError
from aop.synth.layout import mean_object_volume, region_of
from aop.synth.params import SimulationParams, make_params

__all__ = ["PRESETS", "Preset", "preset_params"]


@dataclass(frozen=True)
class Preset:
    """A parameter set, a small default shape, and the paper volume it was calibrated on."""

    description: str
    values: dict[str, Any] = field(default_factory=dict)
    default_shape: tuple[int, int, int] = (32, 128, 128)
    paper_shape: tuple[int, int, int] | None = None
    paper_count: int | None = None

    def params(self) -> SimulationParams:
        """The preset's parameters, with ``density`` calibrated to the paper count if given."""
        params = make_params(**self.values)
        if self.paper_shape is None or self.paper_count is None:
            return params
        region = region_of(self.paper_shape, params).volume()
        density = self.paper_count * mean_object_volume(params) / region
        return params.model_copy(update={"density": density})


PRESETS: dict[str, Preset] = {
    "nuclei": Preset("generic isotropic nuclei, uniform layout", {"density": 0.15}),
    "packed_nuclei": Preset(
        "nuclei packed as in tissue (~36 % foreground, ~85 % touching), uniform layout",
        {"density": 0.45, "overlap": 0.4, "touching_fraction": 0.5},
    ),
    "myotube": Preset(
        "dense small elongated nuclei of a myotube culture (paper: 90x1024x1024, ~11,146 nuclei)",
        {
            "spacing": (1.0, 0.5, 0.5),
            "radius_range": (2.5, 4.0),
            "elongation": 1.8,
            "irregularity": 0.15,
            "touching_fraction": 0.3,
            "layout": "uniform",
            "psf_sigma": (1.2, 0.35, 0.35),
            "intensity": 150.0,
            "intensity_heterogeneity": 0.35,
            "texture": 0.3,
            "texture_scale": 0.6,
            "background": 15.0,
            "gaussian_noise": 3.0,
        },
        default_shape=(32, 256, 256),
        paper_shape=(90, 1024, 1024),
        paper_count=11146,
    ),
    "core_shell": Preset(
        "cells of a core-shell spheroid (paper: 70x1024x1024, ~672 cells)",
        {
            "spacing": (2.0, 0.5, 0.5),
            "radius_range": (5.5, 8.0),
            "elongation": 1.3,
            "irregularity": 0.2,
            "touching_fraction": 0.4,
            "layout": "core_shell",
            "spheroid_radius": 0.8,
            "core_radius_fraction": 0.55,
            "core_fraction": 0.4,
            "shell_radius_scale": 1.25,
            "shell_intensity_scale": 0.45,
            "psf_sigma": (2.0, 0.5, 0.5),
            "intensity": 120.0,
            "intensity_heterogeneity": 0.3,
            "texture": 0.2,
            "texture_scale": 1.5,
            "background": 10.0,
            "gaussian_noise": 3.0,
        },
        default_shape=(48, 512, 512),
        paper_shape=(70, 1024, 1024),
        paper_count=672,
    ),
}


def preset_params(name: str, **overrides: Any) -> SimulationParams:
    """The parameters of preset ``name`` with optional overrides.

    Raises
    ------
    AopError
        For an unknown preset name or an invalid override.
    """
    if name not in PRESETS:
        raise AopError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    from aop.synth.simulate import resolve_params

    return resolve_params(PRESETS[name].params(), **overrides)
