"""The ``aop`` command line: one Typer app.

Each command is a thin wrapper over library functions; user errors (:class:`aop.errors.AopError`)
print one line and exit with status 2, without a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from aop.errors import AopError

console = Console()
err_console = Console(stderr=True)


class _AopGroup(TyperGroup):
    """Command group that prints an :class:`AopError` as one line and exits with status 2."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except AopError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None


app = typer.Typer(
    name="aop",
    cls=_AopGroup,
    help="3D data Analysis Optimization Pipeline: find the best segmentation and classification "
    "pipeline for your 3D microscopy data by Bayesian optimisation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def main() -> None:
    """Console entry point (``aop``)."""
    app()


def _version(value: bool) -> None:
    if value:
        from aop import __version__

        console.print(f"aop {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """3D data Analysis Optimization Pipeline."""


# ------------------------------------------------------------------------------------------------
# Data sets
# ------------------------------------------------------------------------------------------------


@app.command()
def info(
    dataset: Annotated[
        Path, typer.Argument(help="Data-set folder (images/, labels/, dataset.yaml).")
    ],
) -> None:
    """Validate a data set and print its volumes, shapes and label counts."""
    import numpy as np

    from aop.io import load_dataset, read_volume

    ds = load_dataset(dataset)
    table = Table(title=f"{ds.info.name}  voxel size (z, y, x) = {ds.info.voxel_size}")
    for column in ("volume", "shape", "dtype", "labels", "instances"):
        table.add_column(column)
    for entry in ds:
        image, _ = read_volume(entry.image_path)
        n = "-"
        if entry.label_path is not None:
            labels, _ = read_volume(entry.label_path)
            n = str(len(np.unique(labels[labels > 0])))
        table.add_row(
            entry.name, str(image.shape), str(image.dtype), "yes" if entry.label_path else "no", n
        )
    console.print(table)
