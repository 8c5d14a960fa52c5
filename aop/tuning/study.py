"""Run a study of any kind: its comparisons (baseline, random search) and its main search.

Study folder (self-contained)::

    STUDY_DIR/experiment.yaml      the validated experiment (copy)
    STUDY_DIR/study.yaml           kind, objective, metric columns, main search (for reports)
    STUDY_DIR/tune/NAME/           Ray Tune experiment of search NAME (baseline, random, gp, ...)
    STUDY_DIR/tune/NAME.topupK/    a top-up of a resumed search that ended short (see run_search)
    STUDY_DIR/mlflow.db            default MLflow store
    STUDY_DIR/results/NAME.jsonl   one trial record per finished trial of search NAME
    STUDY_DIR/best.yaml            best configuration and scores of the main search
    STUDY_DIR/tables/pareto.csv    the main search's Pareto front (several objectives)
    STUDY_DIR/plots/pareto.png     every trial, the front highlighted (several objectives)
    STUDY_DIR/warm_start.yaml      the earlier studies' trials the main searcher was told
    STUDY_DIR/scheduler/NAME.pkl   the early-stopping scheduler's state of search NAME

plus what the kind writes (its data, caches, plots).

The engine knows no kind (:mod:`aop.tuning.kinds`): the kind gives the search space, the
trainable, the objective and the columns; the main searcher is whatever ``search.searcher`` names.

An interrupted study (driver killed, machine rebooted) continues with :func:`run_study` and
``resume=True`` (``aop resume STUDY_DIR``): every search whose Tune experiment exists is restored
with ``Tuner.restore(..., resume_unfinished=True)``; Ray Tune saved the searcher's state beside
it, so the search continues instead of restarting, and finished trials are kept.

A study with ``search.warm_start`` tells its main searcher the finished trials of earlier
studies before the first suggestion (:mod:`aop.tuning.warm_start`); they are not trials of the
study and do not count against its budget.

A study with ``search.scheduler: asha`` stops its main search's poor trials early on the kind's
fidelity (:mod:`aop.tuning.schedulers`): a stopped trial is a finished trial with ``stopped_at``
in its record, the searcher is told its last result, the best is a trial that ran to its end, and
the scheduler's state is saved beside the study for ``aop resume``.

A study with several ``objectives`` (:meth:`aop.tuning.kinds.StudyKind.with_objectives`) gives
its searchers every objective (:func:`aop.tuning.searchers.make_searcher` with lists), and its
result is the main search's Pareto front (:mod:`aop.analysis.pareto`): ``best.yaml`` lists the
front's trial ids (``pareto``) beside the pick, the best trial by the first objective (ties by
the next ones), and the front's table and plot join the MLflow parent run's artifacts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from ray.tune import CheckpointConfig, CLIReporter, FailureConfig, RunConfig, TuneConfig, Tuner

from aop import console
from aop.analysis.pareto import pareto_front
from aop.analysis.records import best_record
from aop.config import BaseExperiment
from aop.errors import AopError
from aop.outputs import atomic_file, claim_folder, is_disk_full, prepare_output
from aop.tuning.callbacks import StudyCallback, prune_orphans
from aop.tuning.kinds import (
    Fidelity,
    Prepared,
    StudyKind,
    get_kind,
    load_experiment,
    study_kind,
)
from aop.tuning.progress import SearchProgress, set_budget
from aop.tuning.searchers import make_searcher
from aop.tuning.space import SearchSpace
from aop.tuning.warm_start import WarmStart, load_warm_start

EXPERIMENT_FILE = "experiment.yaml"
#: Other libraries' output during a study, in ``STUDY_DIR/logs/``.
LOG_FILE = "aop.log"
STUDY_FILE = "study.yaml"
BEST_FILE = "best.yaml"


# ------------------------------------------------------------------------------------------------
# One search
# ------------------------------------------------------------------------------------------------


def run_search(
    name: str,
    trainable: Any,
    *,
    study_dir: str | os.PathLike,
    param_space: dict[str, Any],
    num_samples: int,
    kind: StudyKind | str,
    searcher: Any = None,
    concurrency: int = 1,
    max_failures: int = 2,
    tracker: Any = None,
    verbose: int = 0,
    storage: str | None = None,
    topup: Callable[[list[dict[str, Any]], int], Any] | None = None,
    per_trial_lines: bool = True,
    scheduler: Callable[[], Any] | None = None,
) -> list[dict[str, Any]]:
    """Run (or continue) one Ray Tune search and return its trial records.

    Parameters
    ----------
    name : str
        Search name: Tune run ``STUDY_DIR/tune/NAME``, records ``STUDY_DIR/results/NAME.jsonl``.
    trainable
        The Tune trainable of the study kind.
    study_dir : path-like
        The study folder.
    param_space : dict
        Constants and, without a searcher, Tune domains (e.g. a grid over models).
    num_samples : int
        Trials to run (with a grid: repeats of the grid).
    kind : StudyKind or str
        The study kind: its objective and recorded metrics.
    searcher : ray.tune.search.Searcher, optional
        The search algorithm; ``None`` for Tune's grid/random variant generator.
    concurrency : int
        Trials running at once.
    max_failures : int
        Retries of a trial whose worker died.
    tracker : StudyTracker, optional
        Logs each finished trial as an MLflow child run.
    verbose : int
        0: aop's own progress (:class:`aop.tuning.progress.SearchProgress`); 1 or more: Ray
        Tune's own progress table at that verbosity instead; below 0: no progress at all.
    storage : str, optional
        Ray Tune storage as a URI (``s3://bucket/path``, ``gs://...``, ``file:///shared/tune``)
        opened with pyarrow (see :func:`aop.tuning.storage.tune_storage`); default
        ``STUDY_DIR/tune``.
    topup : callable, optional
        ``topup(finished_records, part)`` returns a fresh searcher that knows the finished
        trials, for a search that a resume left short of ``num_samples`` trials (a searcher
        search; ``None``: no top-up, as for a grid).
    per_trial_lines : bool
        Without a terminal, print a line per finished trial (else one line when it ends).
    scheduler : callable, optional
        Returns the search's early-stopping scheduler (:class:`aop.tuning.schedulers.
        StudyScheduler`), for its first experiment and each top-up; they share one state
        file, so a top-up goes on with the rungs the first experiment recorded. ``None``:
        every trial runs to its end.

    Returns
    -------
    list of dict
        The records of ``results/NAME.jsonl``, in file order.
    """
    kind = get_kind(kind) if isinstance(kind, str) else kind
    study_dir = Path(study_dir).resolve()
    # save Tune's experiment state (and the searcher's) at every step, not every few seconds,
    # so that a killed driver loses as little as possible
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    # the classic progress output, so that the CLIReporter below (the kind's columns) is used
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # the records and MLflow are the study's results: no TensorBoard/CSV files per trial
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    first = scheduler() if scheduler is not None else None
    recorder = StudyCallback(
        study_dir / "results" / f"{name}.jsonl",
        name,
        kind.metric,
        kind.metrics,
        sink=tracker.log_trial if tracker is not None else None,
        extras=kind.record_extras,
        curves=kind.curves,
        fidelity=first.fidelity.attr if first is not None else None,
    )
    from aop.tuning.storage import tune_storage

    filesystem, root = tune_storage(storage, study_dir / "tune")
    # the trial records are aop's (results/NAME.jsonl): Tune's result.json files are not written,
    # and its result grid would warn about each of them once per search
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)

    budget = num_samples * (grid_size(param_space) if searcher is None else 1)
    set_budget(name, budget)
    shown = [SearchProgress(name, budget, kind.metric, kind.mode, records=recorder.path,
                            per_trial=per_trial_lines, fidelity=recorder.fidelity)
             ] if verbose == 0 else []  # fmt: skip

    def fit(experiment: str, search_alg: Any, samples: int, stopper: Any = None) -> Any:
        path = f"{root}/{experiment}"
        if Tuner.can_restore(path, storage_filesystem=filesystem):
            tuner = Tuner.restore(
                path,
                trainable,
                resume_unfinished=True,
                resume_errored=True,
                param_space=param_space,
                storage_filesystem=filesystem,
            )
        else:
            tuner = Tuner(
                trainable,
                param_space=param_space,
                tune_config=TuneConfig(
                    search_alg=search_alg,
                    scheduler=stopper,
                    num_samples=samples,
                    # a searcher is already limited by a ConcurrencyLimiter (see make_searcher)
                    max_concurrent_trials=concurrency if search_alg is None else None,
                    reuse_actors=True,
                    trial_dirname_creator=lambda trial: trial.trial_id,
                ),
                run_config=RunConfig(
                    name=experiment,
                    storage_path=root,
                    storage_filesystem=filesystem,
                    failure_config=FailureConfig(max_failures=max_failures),
                    # a trial resumes from its newest checkpoint; older ones only take disk space
                    checkpoint_config=CheckpointConfig(num_to_keep=2),
                    callbacks=[recorder, *shown],
                    progress_reporter=CLIReporter(
                        metric_columns=[*kind.metrics, "node"],
                        parameter_columns=list(kind.parameter_columns) or None,
                        max_report_frequency=30,
                    ) if verbose > 0 else None,
                    verbose=max(verbose, 0),
                ),
            )
        with _final_objectives(kind.multi_objective):
            grid = tuner.fit()
        _report_errors(name, grid)
        recorder.recover(grid)
        return grid

    if first is not None and not Tuner.can_restore(f"{root}/{name}", storage_filesystem=filesystem):
        # a search that starts afresh starts with empty rungs, whatever a driver killed before
        # Tune saved its first state left in the scheduler's state file
        Path(first.path).unlink(missing_ok=True)
    grid = fit(name, searcher, num_samples, first)
    kept, grids = _trial_ids(grid), [grid]
    # Tune saves its experiment state and its searcher's state as two files: after a full disk
    # (or a crash between the two writes) a restored searcher can believe it created trials
    # that the experiment never ran, and the search ends short of its budget. A top-up
    # experiment NAME.topupK then runs the missing trials with a fresh searcher that is told
    # the finished ones; on a later resume it is restored like the first one.
    part = 1
    while True:
        experiment = topup_name(name, part)
        done = [r for r in recorder.records() if r["trial_id"] in kept]
        errored = any(result.error is not None for result in grid)
        short = num_samples - len(done) if topup is not None and not errored else 0
        if Tuner.can_restore(f"{root}/{experiment}", storage_filesystem=filesystem):
            grid = fit(experiment, None, 0)
        elif short > 0:
            console.say(
                f"aop: search {name}: {len(done)} of {num_samples} trials in Ray Tune's state; "
                f"running the other {short} as {experiment}"
            )
            grid = fit(experiment, topup(done, part), short,
                       scheduler() if scheduler is not None else None)  # fmt: skip
            if not _trial_ids(grid) - kept:
                break  # nothing ran (its trials failed): aop resume retries it
        else:
            break
        kept |= _trial_ids(grid)
        grids.append(grid)
        part += 1
    if topup is not None:
        records = recorder.records()
        created = _creation_order(grids, records)
        kept -= set(_beyond_budget(name, created, records, num_samples))
    prune_orphans(recorder.path, kept, tracker, name)
    return recorder.records()


@contextlib.contextmanager
def _final_objectives(several: bool) -> Iterator[None]:
    """Ray Tune's check that every result holds each objective off while a block runs.

    A trial may report some objectives only at its end (a classifier trial measures its latency
    once, after training); Tune checks every reported result against the searcher's metrics
    (``TUNE_DISABLE_STRICT_METRIC_CHECKING``). The study's records need the first objective in
    a trial's last result, and a trial whose last result lacks another objective stays off the
    Pareto front.
    """
    key = "TUNE_DISABLE_STRICT_METRIC_CHECKING"
    if not several:
        yield
        return
    before = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def topup_name(search: str, part: int) -> str:
    """The Tune experiment of the ``part``-th top-up of ``search`` (see :func:`run_search`)."""
    return f"{search}.topup{part}"


def tune_experiments(search: str, exists: Callable[[str], bool]) -> list[str]:
    """The Tune experiments of ``search``: its own, then its top-ups for which ``exists``."""
    names = [search]
    while exists(topup_name(search, len(names))):
        names.append(topup_name(search, len(names)))
    return names


def _trial_ids(grid: Any) -> set[str]:
    return {r.metrics.get("trial_id") for r in grid if r.metrics}


def _creation_order(grids: Sequence[Any], records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The trial ids of a search's Tune experiments (their result grids, in the order they ran)
    in the order Tune created them.

    A record's ``iteration`` is its trial's position in its experiment's trial list; within an
    experiment, trials without a record come last.
    """
    position = {r["trial_id"]: r["iteration"] for r in records}
    created: list[str] = []
    for grid in grids:
        ids = sorted(_trial_ids(grid) - {None} - set(created))
        created += sorted(ids, key=lambda t: (t not in position, position.get(t, 0)))
    return created


def _beyond_budget(
    name: str, created: Sequence[str], records: Sequence[Mapping[str, Any]], budget: int
) -> list[str]:
    """The trials of a searcher search past its budget, the last created: to be dropped.

    Tune saves its experiment state before its search generator's: a driver killed between the
    two writes leaves a restored generator that counts one trial fewer than the experiment holds,
    and it creates one more (often the same configuration again, as the restored searcher does
    not know the trial it suggested). The search keeps the first ``budget`` trials that have a
    record, in the order Tune created them; the others' records and MLflow child runs go.
    """
    recorded = {r["trial_id"] for r in records}
    finished = [t for t in created if t in recorded]
    extra = finished[budget:]
    if extra:
        console.say(
            f"aop: search {name}: {len(finished)} trials for a budget of {budget} after the "
            f"resume (Ray Tune's searcher state lagged its trial state); the last "
            f"{len(extra)} ({', '.join(extra)}) do not count"
        )
    return extra


def _report_errors(name: str, grid: Any) -> None:
    """One line per trial that ended in error (after its retries), with Tune's error file.

    Such a trial has no record; ``aop resume`` retries it from its last checkpoint.
    """
    for result in grid:
        if result.error is None:
            continue
        trial_id = (result.metrics or {}).get("trial_id") or Path(result.path).name
        first = str(result.error).strip().splitlines()
        reason = first[-1] if first else type(result.error).__name__
        console.err.print(
            f"aop: search {name}: trial {trial_id} failed: {reason[:300]} "
            f"(traceback: {result.path}/error.txt; `aop resume` retries it)",
            markup=False, highlight=False, soft_wrap=True,
        )  # fmt: skip


# ------------------------------------------------------------------------------------------------
# The study
# ------------------------------------------------------------------------------------------------


@dataclass
class StudyResult:
    """What :func:`run_study` produced.

    Attributes
    ----------
    study_dir : Path
    records : dict
        ``{search: [trial record, ...]}``.
    best : dict
        The best record of the main search.
    main_search : str
        Name of the main search (``search.searcher``).
    analysis : Any
        Artifacts the kind wrote after the searches (plot paths).
    log : Path or None
        The log file of other libraries' output (``None`` when it went to the console).
    """

    study_dir: Path
    records: dict[str, list[dict[str, Any]]]
    best: dict[str, Any]
    main_search: str
    analysis: Any = None
    log: Path | None = None


def _write_yaml(path: Path, data: Any) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))


def save_experiment(
    exp: BaseExperiment, space: SearchSpace | None = None, warm: WarmStart | None = None
) -> Path:
    """Write the validated experiment and ``study.yaml`` (atomically).

    ``study.yaml`` holds the kind's :meth:`~aop.tuning.kinds.StudyKind.meta`, each search's
    budget in trials (``budgets``), the searched numeric ranges (``ranges``), for a
    warm-started study its sources and the number of trials told (``warm_start``, see
    :meth:`aop.tuning.warm_start.WarmStart.meta`) and, with early stopping, ``scheduler``
    (``search.scheduler``, the search it stops and the kind's fidelity), so that reports and
    plots need neither the kind nor Ray.
    """
    kind = study_kind(exp)
    space = space or kind.search_space(exp)
    path = exp.study_dir / EXPERIMENT_FILE
    _write_yaml(path, exp.to_yaml_dict())
    budgets = {
        name: budget if searcher else grid_size(_comparison_space(exp, kind, space, name))
        for name, searcher, budget in search_plan(exp, kind)
    }
    ranges = {name: list(bounds) for name, bounds in space.ranges().items()}
    meta = {**kind.meta(exp), "budgets": budgets, "ranges": ranges}
    if warm is not None and warm.meta():
        meta["warm_start"] = warm.meta()
    if exp.search.scheduler.name != "fifo":
        meta["scheduler"] = {**exp.search.scheduler.model_dump(), "search": exp.search.searcher,
                             "fidelity": kind.fidelity_attr}  # fmt: skip
    _write_yaml(exp.study_dir / STUDY_FILE, meta)
    return path


def grid_size(param_space: Mapping[str, Any]) -> int:
    """The number of configurations of a Tune param space's ``grid_search`` entries."""
    size = 1
    for value in param_space.values():
        if isinstance(value, Mapping) and set(value) == {"grid_search"}:
            size *= len(value["grid_search"])
    return size


def load_study_experiment(study_dir: str | os.PathLike) -> BaseExperiment:
    """The experiment saved in a study folder (for ``aop resume``).

    The folder given wins over the ``storage.study_dir`` stored in the file, so a moved or copied
    study resumes where it is now; paths that pointed inside the stored folder (the prediction
    cache, the benchmark, an SQLite tracking store) move with it.
    """
    folder = Path(study_dir)
    if not folder.is_dir():
        raise AopError(f"{folder}: study folder not found")
    path = folder / EXPERIMENT_FILE
    if not path.is_file():
        raise AopError(
            f"{path}: not a study folder (no {EXPERIMENT_FILE}; start one with aop search)"
        )
    exp = load_experiment(path)
    old, new = exp.storage.study_dir, folder.resolve()
    if old != new:
        exp.move_study(old, new)
        # the study's own SQLite store moves too, with the artifact locations in it
        from aop.tracking.relocate import moved_study_store

        exp.tracking.tracking_uri = moved_study_store(exp.tracking.tracking_uri, old, new)
    return exp


def search_plan(exp: BaseExperiment, kind: StudyKind) -> list[tuple[str, str | None, int]]:
    """The searches of a study in order: ``(name, searcher or None, budget)``.

    The kind's baseline (when it has one and the experiment asks for it), random search (unless
    it is the main searcher), then the main search.
    """
    plan: list[tuple[str, str | None, int]] = []
    main = exp.search.searcher
    if exp.comparison.baseline and type(kind).baseline_space is not StudyKind.baseline_space:
        plan.append(("baseline", None, 1))
    if exp.comparison.grid:
        if type(kind).grid_space is StudyKind.grid_space:
            raise AopError(f"comparison.grid: a {kind.name} study has no grid comparison")
        plan.append(("grid", None, 1))
    if exp.comparison.random and main != "random":
        plan.append(("random", "random", exp.random_budget))
    plan.append((main, main, exp.search.budget))
    return plan


def _comparison_space(
    exp: BaseExperiment, kind: StudyKind, space: SearchSpace, name: str
) -> dict[str, Any]:
    """The Tune param space of a comparison without a searcher (``grid`` or ``baseline``)."""
    return (kind.grid_space if name == "grid" else kind.baseline_space)(exp, space) or {}


def write_best(
    study_dir: Path,
    kind: StudyKind,
    records: dict[str, list[dict]],
    main: str,
    reference: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """Write ``best.yaml``: the main search's best trial plus each search's best value.

    ``reference(best)`` (the kind's :meth:`~aop.tuning.kinds.StudyKind.reference`) adds the
    ``reference`` block: a baseline scored once, and how the best compares with it.

    With several objectives the best is the pick of the main search's Pareto front (the best by
    the first objective, ties by the next ones: :func:`aop.analysis.pareto.pick_trial`), and
    ``best.yaml`` adds ``objectives`` and ``pareto``: the front's trial ids, in that order.
    """
    metric = kind.metric
    front = pareto_front(records[main], kind.objectives) if kind.multi_objective else []
    if front:  # in pick order: the first is the pick
        best = dict(front[0])
    else:  # one objective, or no trial reported every objective: the best by the first
        best = best_record(records[main], metric, kind.mode)
    searches = {}
    for name, recs in records.items():
        if recs:
            top = best_record(recs, metric, kind.mode)
            searches[name] = {"trials": len(recs), f"best_{metric}": top["metrics"][metric],
                              "best_params": top["params"]}  # fmt: skip
    summary = {"kind": kind.name, "search": main, "trial_id": best["trial_id"],
               **kind.best_summary(best), "searches": searches}  # fmt: skip
    if kind.multi_objective:
        summary["objectives"] = [o.model_dump() for o in kind.objectives]
        summary["pareto"] = [r["trial_id"] for r in front]
    block = reference(best) if reference is not None else None
    if block:
        summary["reference"] = block
    _write_yaml(study_dir / BEST_FILE, summary)
    return best


def check_study(
    exp: BaseExperiment, kind: StudyKind | None = None, *, check_models: bool = True
) -> WarmStart:
    """Find every error of a study request before any work or output (``experiment.yaml``).

    Checks the study folder (see :mod:`aop.outputs`: a folder of the user's files is refused),
    that an MLflow server given by URI answers within seconds, what the kind checks before
    its work (:meth:`aop.tuning.kinds.StudyKind.preflight`: data, memory and, with
    ``check_models``, that every model can be built: libraries, settings, weights), and the
    earlier studies of ``search.warm_start``.

    Returns
    -------
    WarmStart
        The trials of ``search.warm_start`` the main searcher will be told
        (:func:`aop.tuning.warm_start.load_warm_start`; none without sources).
    """
    from aop.resources import check_tracking_uri

    kind = kind or study_kind(exp)
    space = kind.search_space(exp)
    kind.preflight(exp, check_models=check_models)
    if exp.study_dir.is_dir() and any(exp.study_dir.iterdir()):
        claim_folder(exp.study_dir, "study")  # refuses a folder of the user's files
    else:
        prepare_output(exp.study_dir, kind="study")
    check_tracking_uri(exp.tracking_uri)
    return load_warm_start(exp, kind, space)


def run_searches(
    exp: BaseExperiment,
    kind: StudyKind,
    space: SearchSpace,
    trainable: Any,
    *,
    tracker: Any = None,
    verbose: int = 1,
    warm: WarmStart | None = None,
    scheduler: Callable[[], Any] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """Run (or continue) every search of the experiment's plan; return ``{search: records}``.

    ``warm``: earlier studies' trials, told to the main search's searcher (and its top-ups')
    before its first suggestion; the comparisons start from nothing. ``scheduler``: makes the
    main search's early-stopping scheduler (:func:`scheduler_factory`); the comparisons run
    every trial to its end.
    """
    records: dict[str, list[dict[str, Any]]] = {}
    for name, searcher_name, budget in search_plan(exp, kind):
        main = name == exp.search.searcher
        if searcher_name is None:
            param_space, samples = _comparison_space(exp, kind, space, name), 1
            searcher = topup = None
        else:
            use_starts = kind.start_point and name != "random"
            starts = space.start(kind.start_point) if use_starts else []
            told = warm.points() if warm is not None and main else []
            scaled = kind.fidelity_attr if main and scheduler and kind.scaled_stops else None
            topup = _topup_factory(exp, kind, space, searcher_name, starts, warm=told,
                                   scaled_stops=scaled)  # fmt: skip
            param_space, samples, searcher = dict(space.fixed), budget, topup([], 0)
        records[name] = run_search(
            name,
            trainable,
            study_dir=exp.study_dir,
            param_space=param_space,
            num_samples=samples,
            kind=kind,
            searcher=searcher,
            concurrency=exp.search.concurrency,
            max_failures=exp.search.max_failures,
            tracker=tracker,
            verbose=verbose,
            storage=exp.storage.tune_storage,
            topup=topup,
            per_trial_lines=main,
            scheduler=scheduler if main else None,
        )
    return records


def scheduler_factory(
    exp: BaseExperiment, kind: StudyKind, fidelity: Fidelity | None, search: str
) -> Callable[[], Any] | None:
    """``make()``: the early-stopping scheduler of ``search.scheduler`` for ``search``.

    ``None`` for ``fifo``. Each scheduler it makes keeps its state in
    ``STUDY_DIR/scheduler/SEARCH.pkl`` (:mod:`aop.tuning.schedulers`).

    Raises
    ------
    AopError
        One line for a scheduler the kind cannot use (see
        :func:`aop.tuning.schedulers.make_scheduler`).
    """
    from aop.tuning.schedulers import make_scheduler, state_path

    if exp.search.scheduler.name == "fifo":
        return None
    path = state_path(exp.study_dir, search)

    def make() -> Any:
        return make_scheduler(exp.search.scheduler, fidelity, path=path, metric=kind.metric,
                              mode=kind.mode)  # fmt: skip

    make()  # refuse a bad request before any trial
    return make


def _topup_factory(
    exp: BaseExperiment,
    kind: StudyKind,
    space: SearchSpace,
    searcher_name: str,
    starts: list[dict[str, Any]],
    *,
    warm: Sequence[tuple[dict[str, Any], float]] = (),
    scaled_stops: str | None = None,
) -> Callable[[list[dict[str, Any]], int], Any]:
    """``make(done, part)``: the searcher of a search (``make([], 0)``) and of its top-ups.

    Every searcher is first told the ``warm`` points (``(params, value)``: earlier studies'
    trials, :mod:`aop.tuning.warm_start`). A top-up's searcher (see :func:`run_search`) is
    seeded with ``search.seed + part`` (so it does not draw the first experiment's
    configurations again) and is told every finished trial whose active parameters are in the
    space too (with several objectives: each objective's value, a trial with all of them).
    Telling uses ``add_evaluated_point``; a searcher without it, such as ``tpe``,
    starts without them. Each searcher first evaluates the start points that no finished trial
    of the study has evaluated (a warm trial was evaluated on an earlier study's data, so a
    start point it shares is still evaluated here). Start points and records hold the active
    parameters only (conditions, see :mod:`aop.tuning.space`). ``scaled_stops``: the
    fidelity key of a search under an early-stopping scheduler whose kind tells stopped trials
    scaled to a whole trial (:class:`aop.tuning.stops.ScaledStops`); a top-up's searcher
    is told earlier stopped trials at their last result.
    """

    names = [o.metric for o in kind.objectives]

    def make(done: list[dict[str, Any]], part: int) -> Any:
        own: list[tuple[dict[str, Any], Any]] = []
        for record in done:
            values = [record["metrics"].get(name) for name in names]
            searched = {k: v for k, v in record["params"].items() if k in space.searched}
            params = space.active(searched)
            if None not in values and space.contains(params):
                told = [float(v) for v in values]
                own.append((params, told if kind.multi_objective else told[0]))
        points = [*((dict(p), value) for p, value in warm), *own]

        def evaluated(point: dict[str, Any]) -> bool:
            return any(all(p.get(k) == v for k, v in point.items()) for p, _ in own)

        several = kind.multi_objective
        searcher = make_searcher(
            searcher_name,
            space,
            metric=names if several else kind.metric,
            mode=[o.mode for o in kind.objectives] if several else kind.mode,
            seed=exp.search.seed + part,
            concurrency=exp.search.concurrency,
            start_points=[p for p in starts if not evaluated(p)],
            told=len(points),
            scaled_stops=scaled_stops,
        )
        for params, value in points:
            try:
                searcher.add_evaluated_point(params, value)
            except NotImplementedError:
                break
        return searcher

    return make


def make_tracker(exp: BaseExperiment, kind: StudyKind) -> Any:
    """The study's MLflow tracker (experiment ``tracking.experiment``, default the kind's)."""
    from aop.tracking import StudyTracker

    return StudyTracker(
        exp.study_dir,
        exp.tracking_uri,
        exp.tracking.experiment or kind.mlflow_experiment,
        metric=kind.metric,
        group=kind.group,
        trial_artifacts=kind.trial_artifacts,
        metrics=kind.metrics,
        mode=kind.mode,
    )


def run_study(
    exp: BaseExperiment,
    *,
    verbose: int = 0,
    prepare: Callable[[BaseExperiment], Prepared] | None = None,
) -> StudyResult:
    """Run or continue a study: the kind's comparisons, then the main search.

    Steps: save ``experiment.yaml`` and ``study.yaml``; start or connect to Ray; let the kind
    prepare its data and trainable; open the MLflow parent run; run each search of
    :func:`search_plan` (restoring any that was interrupted), logging each trial as a child run;
    write ``best.yaml``; let the kind finish (plots, models); close the parent run.

    Parameters
    ----------
    exp : BaseExperiment
        The validated experiment of any kind.
    verbose : int
        0: aop's own progress on the console, and what Ray, Tune, Lightning and MLflow print in
        the log file ``STUDY_DIR/logs/aop.log`` (:func:`aop.console.library_output_to`); 1 or
        more: everything on the console, with Ray Tune's own progress table; below 0: as 0
        without progress.
    prepare : callable, optional
        Replaces the kind's :meth:`StudyKind.prepare` (e.g. a custom trainable).

    Returns
    -------
    StudyResult
    """
    kind = study_kind(exp)
    warm = check_study(exp, kind)
    with tempfile.TemporaryDirectory(prefix="aop-log-") as tmp, console.library_output_to(
        Path(tmp) / LOG_FILE if verbose < 1 else None
    ) as log:
        return _run_checked_study(exp, kind, verbose, prepare, log, warm)


def _run_checked_study(
    exp: BaseExperiment,
    kind: StudyKind,
    verbose: int,
    prepare: Callable[[BaseExperiment], Prepared] | None,
    log: Any,
    warm: WarmStart,
) -> StudyResult:
    """:func:`run_study` once the request is checked: Ray, the study folder, the searches."""
    from aop.ray_cluster import check_resources, connect

    # Ray first (token auth of `ray start` clusters, one-line errors): a cluster that refuses
    # writes nothing; then refuse a search.resources request that no node can hold
    connect(exp.ray.address, num_cpus=exp.ray.num_cpus)
    resources = {"CPU": exp.search.resources.cpus, "GPU": exp.search.resources.gpu}
    check_resources(resources, exp.search.concurrency, what="search.resources")
    study_dir = claim_folder(exp.study_dir, "study")
    log.move_to(study_dir / "logs" / LOG_FILE)  # what Ray said while starting, then the rest
    try:
        space = kind.search_space(exp)
        save_experiment(exp, space, warm)
        warm.save(study_dir)
        warm.say()
        prepared = (prepare or kind.prepare)(exp)
        # a scheduler the kind cannot use is one line here, before any trial
        scheduler = scheduler_factory(exp, kind, kind.fidelity(exp, prepared),
                                      exp.search.searcher)  # fmt: skip
        tracker = make_tracker(exp, kind)
        run_id = tracker.start(exp.to_yaml_dict(), space.describe(), dataset=prepared.dataset,
                               description=_description(exp, kind, warm=warm))  # fmt: skip
        for tag, value in warm.tags().items():
            tracker.client.set_tag(run_id, tag, value)
        records = run_searches(exp, kind, space, prepared.trainable, tracker=tracker,
                               verbose=verbose, warm=warm, scheduler=scheduler)  # fmt: skip
        log_missing_trials(exp, records, kind)
        tracker.close_open_runs()  # runs that trials opened but that ended in error: FAILED
        main = exp.search.searcher
        reference: dict[str, Any] = {}

        def _reference(top: dict[str, Any]) -> dict[str, Any] | None:
            reference.update(kind.reference(exp, prepared, records, top) or {})
            return reference or None

        best = write_best(study_dir, kind, records, main, _reference)
        artifacts = kind.finish(exp, records, best, prepared, tracker)
        if kind.multi_objective:
            artifacts = [*artifacts, *_pareto_outputs(exp, kind, records, artifacts, reference)]
        tracker.finish(best, metrics=kind.metrics, artifacts=[study_dir / BEST_FILE, *artifacts],
                       description=_description(exp, kind, best, reference, warm),
                       reference=reference or None)  # fmt: skip
        return StudyResult(study_dir, records, best, main, analysis=artifacts, log=log.path)
    except Exception as exc:
        # a full disk surfaces as OSError (or aop's one line for it), as SQLite's "database or
        # disk is full" inside MLflow, or as a Tune error around a worker's: one line, since the
        # finished trials are in results/ and Tune's state, and aop resume continues from them
        if not is_disk_full(exc):
            raise
        raise AopError(
            f"{study_dir}: cannot write: no space left on the device; free space, then run aop "
            f"resume {study_dir} (it continues from the last state Ray Tune saved)"
        ) from None


def _pareto_outputs(
    exp: BaseExperiment,
    kind: StudyKind,
    records: Mapping[str, Sequence[dict[str, Any]]],
    artifacts: Sequence[Path],
    reference: Mapping[str, Any],
) -> list[Path]:
    """``tables/pareto.csv``, ``plots/pareto.png`` and the convergence plot with the
    hypervolume (:func:`aop.analysis.plots.write_pareto_outputs`), each unless the kind's
    ``finish`` wrote it (the generic study plots draw all three)."""
    from aop.analysis.plots import write_pareto_outputs

    return write_pareto_outputs(
        exp.study_dir, records, kind.objectives, main=exp.search.searcher, pooled=kind.pooled,
        reference=(reference or {}).get("scores"), skip=[Path(p).name for p in artifacts],
    )


def _description(
    exp: BaseExperiment,
    kind: StudyKind,
    best: dict | None = None,
    reference: Mapping[str, Any] | None = None,
    warm: WarmStart | None = None,
) -> str:
    """The parent run's description: kind, budget, a warm start, and (when done) the best."""
    objectives = ", ".join(f"{o.metric} ({o.mode})" for o in kind.objectives)
    lines = [
        f"aop {kind.name} study `{exp.name}`: searcher `{exp.search.searcher}`, "
        f"budget {exp.search.budget} trials, objective{'s' * kind.multi_objective} "
        f"{objectives}."
    ]
    if warm is not None and warm.sources:
        lines[0] += f" The searcher was {warm.summary()}."
    if best is not None:
        params = ", ".join(f"{k}={v}" for k, v in best["params"].items())
        lines.append(
            f"Best {kind.metric} {best['metrics'][kind.metric]:.4f} "
            f"(search {best['search']}, trial {best['trial_id']}): {params}."
        )
    if reference and reference.get("verdict"):
        lines.append(str(reference["verdict"]))
    return "\n\n".join(lines)


def log_missing_trials(
    exp: BaseExperiment,
    records: Mapping[str, Sequence[Mapping]],
    kind: StudyKind | None = None,
) -> int:
    """Log to MLflow every trial record that has no child run yet (e.g. the server was away).

    Child runs are keyed by (search, trial_id), so nothing is logged twice.

    Raises
    ------
    AopError
        One line when the tracking server still does not answer (the study stays resumable).
    """
    from aop.resources import check_tracking_uri

    try:
        check_tracking_uri(exp.tracking_uri)
    except AopError as exc:
        missing = sum(len(recs) for recs in records.values())
        raise AopError(
            f"{exc}; up to {missing} finished trials are safe in {exp.study_dir}/results: run "
            f"aop resume {exp.study_dir} when the server is back to log them"
        ) from None
    tracker = make_tracker(exp, kind or study_kind(exp))  # fresh: re-reads what is logged
    return sum(tracker.log_trial(r) is not None for recs in records.values() for r in recs)
