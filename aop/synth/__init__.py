"""Synthetic 3D benchmark: simulated fluorescent objects with perfect instance labels.

The core entry point is :func:`simulate`; :func:`preset_params` gives parameter sets that match
the source paper's benchmarks (``myotube``, ``core_shell``, ``nuclei``).
"""

from aop.synth.layout import expected_object_count
from aop.synth.params import SimulationParams, make_params
from aop.synth.presets import PRESETS, preset_params
from aop.synth.simulate import simulate, touching_fraction, touching_labels

__all__ = [
    "PRESETS",
    "SimulationParams",
    "expected_object_count",
    "make_params",
    "preset_params",
    "simulate",
    "touching_fraction",
    "touching_labels",
]
