"""The ``aop`` command line: one Typer app (:mod:`aop.cli.app`), commands grouped by stage.

A stage adds its commands in a module of this package that registers them on ``app``, and one
import line here.
"""

from aop.cli import (
    adapt,  # noqa: F401  (aop adapt)
    annotation,  # noqa: F401  (aop annotate)
    classification,  # noqa: F401  (aop analyze, aop classify)
    cluster,  # noqa: F401  (aop cluster)
    commands,  # noqa: F401  (data sets, scoring, post-processing, models, segmentation study)
    instances,  # noqa: F401  (aop instances, aop spread)
    ui,  # noqa: F401  (aop ui)
)
from aop.cli.app import app, main

__all__ = ["app", "main"]
