"""The ``aop`` Typer app, its error handling and its consoles.

Commands live in the modules of :mod:`aop.cli` and register themselves on :data:`app`; each is a
thin wrapper over library functions. User errors (:class:`aop.errors.AopError`) print one line and
exit with status 2, without a traceback.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
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
