"""The ``aop`` command line: one Typer app (:mod:`aop.cli.app`), commands grouped by stage.

A stage adds its commands in a module of this package that registers them on ``app``, and one
import line here.
"""

from aop.cli import cluster, commands  # noqa: F401  (registers the commands)
from aop.cli.app import app, main

__all__ = ["app", "main"]
