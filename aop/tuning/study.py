"""Run a segmentation study: baseline, random search and Bayesian optimisation on Ray Tune.

Study folder (self-contained)::

    STUDY_DIR/experiment.yaml      the validated experiment (copy)
    STUDY_DIR/benchmark/           the synthetic benchmark, when the experiment has a synth block
    STUDY_DIR/predictions/         prediction cache (unless storage.cache_dir points elsewhere)
    STUDY_DIR/tune/NAME/           Ray Tune experiment of search NAME (baseline, random, gp, ...)
    STUDY_DIR/mlflow.db            default MLflow store
    STUDY_DIR/results/NAME.jsonl   one trial record per finished trial of search NAME
    STUDY_DIR/best.yaml            best model, parameters and scores

An interrupted study (driver killed, machine rebooted) continues with :func:`run_study` and
``resume=True`` (``aop resume STUDY_DIR``): every search whose Tune experiment exists is restored
with ``Tuner.restore(..., resume_unfinished=True)``; Ray Tune saved the searcher's state (the
Optuna study with all its trials) beside it, so the search continues instead of restarting, and
finished trials are kept.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ray import tune
from ray.tune import Callback, CLIReporter, FailureConfig, RunConfig, TuneConfig, Tuner

from aop.analysis.records import append_record, best_record, read_records
from aop.config import Experiment, SearchSpace, experiment_search_space, load_experiment
from aop.errors import AopError
from aop.tuning.searchers import make_searcher
from aop.tuning.trainable import METRICS, BenchmarkRefs, make_trainable, trial_params

EXPERIMENT_FILE = "experiment.yaml"
BEST_FILE = "best.yaml"


# ------------------------------------------------------------------------------------------------
# Trial records
# ------------------------------------------------------------------------------------------------


def trial_record(
    search: str, trial_id: str, config: Mapping[str, Any], result: Mapping, iteration: int = -1
) -> dict:
    """The trial record (see :mod:`aop.analysis.records`) of one reported trial result."""
    per_volume: dict[str, dict[str, float]] = {}
    for key, value in result.items():
        metric, _, volume = str(key).partition("/")
        if volume and metric in METRICS:
            per_volume.setdefault(volume, {})[metric] = float(value)
    return {
        "search": search,
        "trial_id": trial_id,
        "model": str(config["model"]),
        "params": trial_params(config),
        **{m: float(result[m]) for m in METRICS},
        "per_volume": per_volume,
        "duration_s": float(result.get("duration_s", result.get("time_total_s", 0.0))),
        "node": str(result.get("node", "")),
        "iteration": iteration,
        "volume_nodes": dict(result.get("volume_nodes", {})),
    }


class TrialRecorder(Callback):
    """Driver-side Tune callback: append each trial's first result to ``results/NAME.jsonl``.

    A trial already in the file (a trial rerun after a resume) is not written twice.
    """

    def __init__(self, path: str | os.PathLike, search: str) -> None:
        self.path = Path(path)
        self.search = search
        self._seen: set[str] = set()

    def setup(self, **info: Any) -> None:
        self._seen = {r["trial_id"] for r in self.records()}

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.path) if self.path.is_file() else []

    def on_trial_result(self, iteration, trials, trial, result, **info):  # type: ignore[override]
        if trial.trial_id in self._seen or "ipq" not in result:
            return
        position = next((i for i, t in enumerate(trials) if t.trial_id == trial.trial_id), -1)
        record = trial_record(self.search, trial.trial_id, trial.config, result, position)
        append_record(self.path, record)
        self._seen.add(trial.trial_id)


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
    searcher: Any = None,
    concurrency: int = 1,
    max_failures: int = 2,
    callbacks: Sequence[Callback] = (),
    verbose: int = 1,
    storage: str | None = None,
) -> list[dict[str, Any]]:
    """Run (or continue) one Ray Tune search and return its trial records.

    Parameters
    ----------
    name : str
        Search name: Tune run ``STUDY_DIR/tune/NAME``, records ``STUDY_DIR/results/NAME.jsonl``.
    trainable
        The Tune trainable (see :func:`aop.tuning.trainable.make_trainable`).
    study_dir : path-like
        The study folder.
    param_space : dict
        Constants and, without a searcher, Tune domains (e.g. a grid over models).
    num_samples : int
        Trials to run (with a grid: repeats of the grid).
    searcher : ray.tune.search.Searcher, optional
        The search algorithm; ``None`` for Tune's grid/random variant generator.
    concurrency : int
        Trials running at once.
    max_failures : int
        Retries of a trial whose worker died.
    callbacks : sequence of Callback
        Further driver-side callbacks (e.g. MLflow tracking).
    storage : str, optional
        Ray Tune storage as a URI (``s3://bucket/path``, ``gs://...``, ``file:///shared/tune``)
        opened with pyarrow (see :func:`aop.tuning.cluster.tune_storage`); default
        ``STUDY_DIR/tune``.

    Returns
    -------
    list of dict
        The records of ``results/NAME.jsonl``, in file order.
    """
    study_dir = Path(study_dir).resolve()
    # save Tune's experiment state (and the searcher's) at every step, not every few seconds,
    # so that a killed driver loses as little as possible
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    # the classic progress output, so that the CLIReporter below (IPQ columns) is used
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    recorder = TrialRecorder(study_dir / "results" / f"{name}.jsonl", name)
    from aop.tuning.cluster import tune_storage

    filesystem, root = tune_storage(storage, study_dir / "tune")
    path = f"{root}/{name}"
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
        reporter = CLIReporter(
            metric_columns=["ipq", "sq", "rq", "iq", "node"],
            parameter_columns=["model", "erode_dilate", "open_close"],
            max_report_frequency=30,
        )
        tuner = Tuner(
            trainable,
            param_space=param_space,
            tune_config=TuneConfig(
                search_alg=searcher,
                num_samples=num_samples,
                # a searcher is already limited by a ConcurrencyLimiter (see make_searcher)
                max_concurrent_trials=concurrency if searcher is None else None,
                reuse_actors=True,
                trial_dirname_creator=lambda trial: trial.trial_id,
            ),
            run_config=RunConfig(
                name=name,
                storage_path=root,
                storage_filesystem=filesystem,
                failure_config=FailureConfig(max_failures=max_failures),
                callbacks=[recorder, *callbacks],
                progress_reporter=reporter,
                verbose=verbose,
            ),
        )
    grid = tuner.fit()
    kept = {r.metrics.get("trial_id") for r in grid if r.metrics}
    return reconcile_records(recorder.path, kept)


def reconcile_records(path: Path, trial_ids: set[str]) -> list[dict[str, Any]]:
    """Keep only the records of trials that Ray Tune's experiment state knows.

    A trial that reported just before the driver was killed, but after Tune last saved its
    experiment state, is unknown to the restored run: the restored searcher suggests the same
    configuration again under a new trial id. Its orphaned record is dropped here (the file is
    rewritten atomically), so every search has exactly its budget of records.
    """
    records = read_records(path) if path.is_file() else []
    kept = [r for r in records if r["trial_id"] in trial_ids]
    if len(kept) != len(records):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.unlink(missing_ok=True)
        for record in kept:
            append_record(tmp, record)
        os.replace(tmp, path)
    return kept


def baseline_space(space: SearchSpace) -> dict[str, Any]:
    """Every model with every parameter at 0: the no-post-processing baseline."""
    return {"model": tune.grid_search(list(space.models or [])), **trial_params({})}


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
        Name of the main (Bayesian) search.
    analysis : Any
        What the analysis step returned (tables, plot paths), or ``None``.
    """

    study_dir: Path
    records: dict[str, list[dict[str, Any]]]
    best: dict[str, Any]
    main_search: str
    analysis: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


def save_experiment(exp: Experiment) -> Path:
    """Write the validated experiment to ``STUDY_DIR/experiment.yaml`` (atomically)."""
    path = exp.study_dir / EXPERIMENT_FILE
    _write_yaml(path, exp.to_yaml_dict())
    return path


def load_study_experiment(study_dir: str | os.PathLike) -> Experiment:
    """The experiment saved in a study folder (for ``aop resume``)."""
    path = Path(study_dir) / EXPERIMENT_FILE
    if not path.is_file():
        raise AopError(
            f"{path}: not a study folder (no {EXPERIMENT_FILE}; start one with aop search)"
        )
    return load_experiment(path)


def _write_yaml(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)


def search_plan(exp: Experiment) -> list[tuple[str, str | None, int]]:
    """The searches of a study in order: ``(name, searcher or None, budget)``."""
    plan: list[tuple[str, str | None, int]] = []
    main = exp.search.searcher
    if exp.comparison.baseline:
        plan.append(("baseline", None, 1))
    if exp.comparison.random and main != "random":
        plan.append(("random", "random", exp.random_budget))
    plan.append((main, main, exp.search.budget))
    return plan


def write_best(study_dir: Path, records: dict[str, list[dict]], main: str) -> dict[str, Any]:
    """Write ``best.yaml``: the main search's best trial plus each search's best IPQ."""
    best = best_record(records[main])
    summary = {
        "search": main,
        "model": best["model"],
        "params": trial_params(best["params"]),
        "scores": {m: best[m] for m in METRICS},
        "per_volume": best["per_volume"],
        "trial_id": best["trial_id"],
        "searches": {
            name: {
                "trials": len(recs),
                "best_ipq": max(r["ipq"] for r in recs),
                "best_model": best_record(recs)["model"],
            }
            for name, recs in records.items()
            if recs
        },
    }
    _write_yaml(study_dir / BEST_FILE, summary)
    return best


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (``auto``, ``ray://host:10001``) or start a local Ray."""
    from aop.tuning.cluster import connect

    connect(address, num_cpus=num_cpus)  # token auth of `ray start` clusters, one-line errors


def check_study_resources(exp: Experiment) -> int:
    """Refuse a ``search.resources`` request that no node can hold (before any trial)."""
    from aop.tuning.cluster import check_resources

    bundle = {"CPU": exp.search.resources.cpus, "GPU": exp.search.resources.gpu}
    return check_resources(bundle, exp.search.concurrency, what="search.resources (one volume)")


def run_searches(
    exp: Experiment,
    benchmark: BenchmarkRefs,
    *,
    callbacks: Callable[[str], Sequence[Callback]] | None = None,
    trainable: Any = None,
    verbose: int = 1,
    n_startup_trials: int = 10,
) -> dict[str, list[dict[str, Any]]]:
    """Run (or continue) every search of the experiment's plan; return ``{search: records}``."""
    space = experiment_search_space(exp)
    if trainable is None:
        trainable = make_trainable(
            benchmark, cpus=exp.search.resources.cpus, gpu=exp.search.resources.gpu
        )
    records: dict[str, list[dict[str, Any]]] = {}
    for name, searcher_name, budget in search_plan(exp):
        extra = list(callbacks(name)) if callbacks else []
        if searcher_name is None:
            param_space, searcher, samples = baseline_space(space), None, 1
        else:
            param_space = dict(space.fixed)
            searcher = make_searcher(
                searcher_name,
                space,
                seed=exp.search.seed,
                concurrency=exp.search.concurrency,
                start_at_zeros=name != "random",
                n_startup_trials=n_startup_trials,
            )
            samples = budget
        records[name] = run_search(
            name,
            trainable,
            study_dir=exp.study_dir,
            param_space=param_space,
            num_samples=samples,
            searcher=searcher,
            concurrency=exp.search.concurrency,
            max_failures=exp.search.max_failures,
            callbacks=extra,
            verbose=verbose,
            storage=exp.storage.tune_storage,
        )
    return records


def _tracker(exp: Experiment) -> Any:
    from aop.tracking import StudyTracker

    return StudyTracker(exp.study_dir, exp.tracking_uri, exp.tracking.experiment)


def default_volume_tasks(exp: Experiment, n_volumes: int) -> int:
    """Volumes a trial scores at once: all of them, limited by the CPUs left per running trial."""
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    per_trial = int(cpus // (exp.search.concurrency * exp.search.resources.cpus))
    return max(1, min(n_volumes, per_trial))


def run_study(
    exp: Experiment,
    *,
    verbose: int = 1,
    analyse: bool = True,
    trainable_factory: Callable[[BenchmarkRefs], Any] | None = None,
) -> StudyResult:
    """Run or continue a segmentation study: baseline, random search and the main search.

    Steps: save ``experiment.yaml``; build or load the benchmark; predict every model once
    (cache); start or connect to Ray; put the arrays into the object store; run each search of
    :func:`search_plan` (restoring any that was interrupted); write ``best.yaml``; log to MLflow
    (parent run + one child run per trial); draw the plots.

    Parameters
    ----------
    exp : Experiment
        The validated experiment.
    verbose : int
        Ray Tune verbosity (0 silent, 1 progress table).
    analyse : bool
        Draw the comparison and contour plots into ``STUDY_DIR/plots``.
    trainable_factory : callable, optional
        Builds the Tune trainable from the benchmark references (default
        :func:`aop.tuning.trainable.make_trainable` with the experiment's resources).

    Returns
    -------
    StudyResult
    """
    from aop.tracking import dataset_fingerprint
    from aop.tuning.benchmark import benchmark_dir, load_benchmark
    from aop.tuning.trainable import put_benchmark

    study_dir = exp.study_dir
    init_ray(exp.ray.address, exp.ray.num_cpus)  # first: a cluster that refuses writes nothing
    check_study_resources(exp)
    study_dir.mkdir(parents=True, exist_ok=True)
    save_experiment(exp)
    space = experiment_search_space(exp)
    data = load_benchmark(exp)
    refs = put_benchmark(
        data.predictions, data.labels, data.images, {v: data.spacing for v in data.labels}
    )
    if trainable_factory is not None:
        trainable = trainable_factory(refs)
    else:
        trainable = make_trainable(
            refs,
            cpus=exp.search.resources.cpus,
            gpu=exp.search.resources.gpu,
            volume_tasks=default_volume_tasks(exp, len(refs.volumes)),
        )
    tracker = _tracker(exp)
    tracker.start(
        exp.to_yaml_dict(),
        {"models": space.models, "ranges": _plain_ranges(space), "fixed": space.fixed},
        dataset_fingerprint(benchmark_dir(exp)),
    )
    records = run_searches(
        exp,
        refs,
        callbacks=lambda name: [tracker.callback(name)],
        trainable=trainable,
        verbose=verbose,
    )
    for name, recs in records.items():
        drop_orphan_child_runs(tracker, name, {r["trial_id"] for r in recs})
    main = exp.search.searcher
    best = write_best(study_dir, records, main)
    plots: list[Path] = []
    if analyse:
        from aop.analysis.plots import make_study_plots

        plots = make_study_plots(study_dir, records)
    spec = next(m for m in exp.models if m.key == best["model"])
    tracker.finish(
        best,
        artifacts=[study_dir / BEST_FILE, *plots],
        spacing=data.spacing,
        model_spec={"name": spec.name, "settings": spec.settings},
    )
    return StudyResult(study_dir, records, best, main, analysis=plots)


def _plain_ranges(space: SearchSpace) -> dict[str, list]:
    return {name: [kind.__name__, low, high] for name, (kind, low, high) in space.ranges.items()}


def drop_orphan_child_runs(tracker: Any, search: str, trial_ids: set[str]) -> int:
    """Delete MLflow child runs of ``search`` whose trial is not in the Tune run (see above)."""
    dropped = 0
    for run in tracker.child_runs(search):
        if run.data.tags.get("trial_id") not in trial_ids:
            tracker.client.delete_run(run.info.run_id)
            dropped += 1
    return dropped
