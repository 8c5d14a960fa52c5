"""The ``aop`` Typer app, its error handling and its consoles.

Commands live in the modules of :mod:`aop.cli` and register themselves on :data:`app`; each is a
thin wrapper over library functions. The options that several commands declare alike and the
progress and output helpers are defined here once. User errors (:class:`aop.errors.AopError`, and
operating-system errors such as a full disk or a read-only folder; a lost connection is told apart
from those) print one line and exit with status 2, without a traceback; any other exception prints
one line and exits with status 1. ``aop --debug ...`` or ``AOP_DEBUG=1`` shows the traceback
instead (for bug reports).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import click
import typer
from typer.core import TyperGroup

from aop.console import err as err_console
from aop.console import out as console
from aop.errors import AopError

DEBUG_ENV = "AOP_DEBUG"
_debug = {"on": False}


def debug_enabled() -> bool:
    """Whether tracebacks are shown: ``--debug`` was given or ``AOP_DEBUG`` is set (not 0)."""
    value = os.environ.get(DEBUG_ENV, "").strip().lower()
    return _debug["on"] or value not in ("", "0", "false", "no")


def _one_line(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)


# Typer's Exit and Abort are its own classes, and newer Typers carry their own copy of click
# (usage errors derive from typer.exceptions.TyperException there): all of them pass through
_PASS_THROUGH: tuple[type[BaseException], ...] = tuple({
    click.exceptions.Exit, click.exceptions.Abort, click.ClickException, typer.Exit, typer.Abort,
    getattr(typer.exceptions, "TyperException", click.ClickException),
})


class _AopGroup(TyperGroup):
    """Command group that turns every exception into one line (see the module docstring)."""

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        try:
            return super().invoke(ctx)
        except _PASS_THROUGH:  # --help, typer.Exit(code), usage errors: Typer's own handling
            raise
        except Exception as exc:
            if debug_enabled():
                raise
            message, status = _error_line(exc)
            _one_line(message)
            raise typer.Exit(status) from None


def _error_line(exc: Exception) -> tuple[str, int]:
    """The one line that reports ``exc``, and the exit status: 2 for a user error, 1 for a bug."""
    if isinstance(exc, AopError):
        return str(exc), 2
    if isinstance(exc, ConnectionError):  # an OSError, but about a cluster or server, not a file
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        return (
            f"aop: connection failed: {text} (check the Ray cluster of --address, or the "
            "MLflow server of --tracking-uri, and that this machine reaches it)"
        ), 2
    from aop.outputs import is_disk_full, os_error_message

    if isinstance(exc, OSError):
        return os_error_message(exc.filename or "aop", exc), 2
    if is_disk_full(exc):  # e.g. inside a Ray worker's error: not a bug
        return "aop: cannot write: no space left on the device", 2
    text = " ".join(str(exc).split())[:300]
    return (
        f"{type(exc).__name__}: {text} (an aop bug? rerun with --debug or "
        f"{DEBUG_ENV}=1 for the traceback and report it)"
    ), 1


class _DropDiskFull(logging.Filter):
    """Drop library log records about a full disk: aop stops with its own line for it."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aop.outputs import is_disk_full

        error = record.exc_info[1] if record.exc_info else None
        if error is not None and is_disk_full(error):
            return False
        return not is_disk_full(Exception(record.getMessage()))


# Ray Tune's driver logs a failed copy of its experiment state as a warning with a whole traceback
_DISK_FULL_LOGGERS = (
    "ray.train._internal.syncer",
    "ray.tune.execution.experiment_state",
    "ray.tune.execution.tune_controller",
    "ray.tune.experiment.trial",
)


def _quiet_libraries() -> None:
    """Hide MLflow's (and its dependencies') warnings, which otherwise precede an error line."""
    for name in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # logs a whole traceback at ERROR before raising the MlflowException that aop handles (a full
    # disk, a locked database): the one line comes from aop
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
    for name in _DISK_FULL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropDiskFull) for f in logger.filters):
            logger.addFilter(_DropDiskFull())
    # a CLI run shows aop's own progress; MLflow's per-download bars only repeat it
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)  # "GPU available", the logger tip
    # MLflow issues some warnings under its own ``simplefilter("once")``, which a filter here cannot
    # override: drop them where they are shown instead
    if getattr(warnings.showwarning, "_aop_quiet", False):
        return
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if "mlflow" in Path(str(filename)).parts:
            return
        shown(message, category, filename, lineno, file, line)

    show._aop_quiet = True  # type: ignore[attr-defined]
    warnings.showwarning = show


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
    debug: Annotated[
        bool, typer.Option("--debug", help=f"Show tracebacks (for bug reports; or {DEBUG_ENV}=1).")
    ] = False,
) -> None:
    """3D data Analysis Optimization Pipeline."""
    _debug["on"] = debug
    if not debug_enabled():
        _quiet_libraries()


# Options that several commands declare with the same name, type and help
OverwriteOption = Annotated[
    bool, typer.Option("--overwrite", help="Replace an earlier output of aop at --out.")
]
AddressOption = Annotated[
    str | None, typer.Option("--address", help="Ray cluster address (default: local Ray).")
]
TuneQuietOption = Annotated[
    bool, typer.Option("--quiet", help="No progress display: the steps and the result only.")
]
VerboseOption = Annotated[
    bool,
    typer.Option("--verbose", help="Show what Ray, Tune, Lightning and MLflow print, and Tune's "
                 "progress table (else they go to the log file in the study's logs/)."),
]
FeaturesOption = Annotated[
    Path | None,
    typer.Option("--features", help="Feature table from `aop instances` (default: computed)."),
]
PickOption = Annotated[
    tuple[str, str] | None,
    typer.Option(
        "--pick", metavar="RULE TOLERANCE",
        help="Apply the trial that RULE picks from a study with several objectives instead of its "
        "pick: `fastest-within 0.02` is the best in the second objective (e.g. the fastest) among "
        "the trials within 0.02 of the best first objective.",
    ),
]  # fmt: skip
TrialOption = Annotated[
    str | None,
    typer.Option("--trial", help="Apply this trial of the study (its id, as in aop report or "
                 "tables/pareto.csv) instead of its pick."),
]  # fmt: skip


def at_least_one(option: str, value: int | None) -> None:
    """Refuse an integer ``option`` given below 1 (``None``: not given, nothing to check)."""
    if value is not None and value < 1:
        raise AopError(f"{option} must be at least 1, got {value}")


def study_trial(source: str, pick: tuple[str, str] | None, trial: str | None) -> Any:
    """The trial record that ``--pick`` or ``--trial`` chooses in the study folder ``source``.

    Returns ``None`` when neither is given (the study's pick applies); prints the chosen trial.
    Both given, a source that is no folder, a tolerance that is no number, and what
    :func:`aop.analysis.report.chosen_trial` refuses are one line each.
    """
    if pick is None and trial is None:
        return None
    if pick is not None and trial is not None:
        raise AopError("--pick and --trial: give one of them")
    if not Path(source).is_dir():
        raise AopError(f"{source}: --pick and --trial choose a trial of a study folder")
    from aop.analysis.report import chosen_trial

    if pick is not None:
        rule, text = pick
        try:
            tolerance = float(text)
        except ValueError:
            raise AopError(f"--pick {rule} {text}: the tolerance must be a number") from None
        record = chosen_trial(source, pick=rule, tolerance=tolerance)
    else:
        record = chosen_trial(source, trial=trial)
    scores = ", ".join(f"{k} {v:.4g}" for k, v in record["metrics"].items())
    print_line(f"trial {record['trial_id']} of search {record['search']}: {scores}")
    return record


def print_line(line: str) -> None:
    """Print a line on stderr as it is written (markup, but no highlighting of numbers)."""
    err_console.print(line, highlight=False)


def step_line(line: str) -> None:
    """Print a step of a long command on stdout: markup, no highlighting, no wrapping (a file or
    CI log keeps it whole)."""
    console.print(line, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def library_output(command: str) -> Iterator[None]:
    """Other libraries' output in a log file while ``command`` runs on Ray.

    What Ray prints while it starts, Ray Data's execution lines and the workers' native lines go
    to a temporary log file (:func:`aop.console.library_output_to`); aop's own progress and
    results stay on the console. The file is removed when the command ends, unless it failed
    with an error that is not the user's (an :class:`~aop.errors.AopError` is one line): then
    one more line names it. With ``--debug`` (or ``AOP_DEBUG``) everything is shown as printed.
    """
    from aop import console as aop_console

    if debug_enabled():
        yield
        return
    handle, name = tempfile.mkstemp(prefix=f"aop-{command}-", suffix=".log")
    os.close(handle)
    path, keep = Path(name), False
    try:
        with aop_console.library_output_to(path):
            yield
    except AopError:
        raise
    except Exception:
        keep = True
        raise
    finally:
        if keep:
            err_console.print(f"other libraries' output: {path}", highlight=False,
                              soft_wrap=True)  # fmt: skip
        else:
            path.unlink(missing_ok=True)


def volume_progress(what: str, total: int, unit: str = "", completed: int = 0) -> tuple[Any, Any]:
    """A transient progress bar over ``total`` volumes on stderr, and its per-volume callback.

    The callback ``advance(name, count=None)`` moves the bar by one volume and shows ``name``, or
    ``name: count unit`` when given a count; the bar starts at ``completed`` volumes. Use the bar
    as a context manager around the work.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    progress = Progress(
        TextColumn(what), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
        console=err_console, transient=True,
    )  # fmt: skip
    task = progress.add_task("", total=total, completed=completed)

    def advance(name: str, count: int | None = None) -> None:
        description = name if count is None else f"{name}: {count} {unit}"
        progress.update(task, advance=1, description=description)

    return progress, advance
