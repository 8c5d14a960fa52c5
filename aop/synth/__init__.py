"""Synthetic 3D benchmark: simulated fluorescent objects with perfect instance labels.

The core entry point is :func:`simulate`; :func:`preset_params` gives parameter sets that match
the source paper's benchmarks (``myotube``, ``core_shell``, ``nuclei``); :func:`simulate_classes`
adds instance classes with marker channels (:data:`CLASS_PRESETS`).
"""

from aop.synth.classes import CLASS_PRESETS, ClassModel, ClassSet, class_set, simulate_classes
from aop.synth.layout import expected_object_count
from aop.synth.params import SimulationParams, make_params
from aop.synth.presets import PRESETS, preset_params
from aop.synth.simulate import simulate, touching_fraction, touching_labels

__all__ = [
    "CLASS_PRESETS",
    "PRESETS",
    "ClassModel",
    "ClassSet",
    "class_set",
    "SimulationParams",
    "expected_object_count",
    "make_params",
    "preset_params",
    "simulate",
    "simulate_classes",
    "touching_fraction",
    "touching_labels",
]
