"""Instances of a segmented data set: class tables, crops, features and label spreading.

Pure array and table code (no Ray, no MLflow):

- :mod:`aop.instances.annotations`: the class table ``annotations.csv`` and the classes declared in
  ``dataset.yaml``; the one module that owns that format.
- :mod:`aop.instances.crops`: fixed-size, anisotropy-aware crops of every instance (mask and
  distance preprocessing, paper eq. 6).
- :mod:`aop.instances.features`: a table of per-instance morphology and intensity features.
- :mod:`aop.instances.spread`: label spreading from a few manual labels to every instance.
- :mod:`aop.instances.truth`: segmented instances matched to truth instances (largest overlap),
  and annotation simulated from the truth.
"""

from aop.instances.annotations import (
    ANNOTATIONS_FILE,
    BAD_SEGMENTATION,
    COLUMNS,
    SOURCES,
    ClassSpec,
    append_annotations,
    read_annotations,
    read_classes,
    remove_annotations,
    replace_annotations,
    write_classes,
)

__all__ = [
    "ANNOTATIONS_FILE",
    "BAD_SEGMENTATION",
    "COLUMNS",
    "SOURCES",
    "ClassSpec",
    "append_annotations",
    "read_annotations",
    "read_classes",
    "remove_annotations",
    "replace_annotations",
    "write_classes",
]
