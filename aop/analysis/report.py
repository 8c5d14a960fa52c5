"""The report of a study folder: comparison table, t-tests, best configuration, MLflow command.

Used by ``aop report STUDY_DIR``; reads ``results/*.jsonl``, ``best.yaml`` and ``experiment.yaml``
and never writes (plots are drawn only on request). A study with several objectives adds its main
search's Pareto front (:mod:`aop.analysis.pareto`); :func:`chosen_trial` finds the trial that
``aop classify`` and ``aop segment`` apply when asked for another than the pick.
"""

from __future__ import annotations

import math
import os
import shlex
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aop.analysis.compare import MIN_VOLUMES, SearchComparison, compare_searches
from aop.analysis.pareto import pareto_rows, pick_trial
from aop.analysis.records import (
    RESULTS_DIR,
    best_record,
    read_study_records,
    torn_last_line,
)
from aop.config import read_yaml
from aop.errors import AopError

BEST_FILE = "best.yaml"
EXPERIMENT_FILE = "experiment.yaml"
STUDY_FILE = "study.yaml"

__all__ = [
    "StudyMeta",
    "StudyReport",
    "chosen_trial",
    "load_report",
    "mlflow_ui_command",
    "print_report",
    "read_study_meta",
    "warm_start_line",
    "early_stopping_line",
]


@dataclass
class StudyReport:
    """Everything ``aop report`` shows about a study.

    Attributes
    ----------
    study_dir : Path
    records : dict
        ``{search: [trial record, ...]}``.
    comparison : SearchComparison
        Means and paired t-tests (:func:`aop.analysis.compare.compare_searches`).
    best : dict
        The best configuration: ``search``, ``trial_id``, ``params``, ``scores`` (and the value
        of the kind's group parameter, when ``best.yaml`` names it), and ``reference``: the
        kind's baseline (``name``, ``scores``, ``comparison``, ``verdict``) when it has one.
    best_source : str
        ``best.yaml`` when read from that file, else ``results`` (best record of the reference).
    tracking_uri : str
        The study's MLflow store.
    plots : list of Path
        PNG files in ``STUDY_DIR/plots/``.
    meta : StudyMeta
        Kind, metric and main search of the study.
    problems : list of str
        Why the study is incomplete (searches short of their budget, no ``best.yaml``) and
        warnings (torn last lines of results files); empty for a finished study.
    complete : bool
        Every search has its budget of trials and ``best.yaml`` exists.
    pareto : list of dict
        With several objectives, the main search's Pareto front as rows (search, trial id,
        each objective, the parameters; :func:`aop.analysis.pareto.pareto_rows`); else empty.
    """

    study_dir: Path
    records: dict[str, list[dict[str, Any]]]
    comparison: SearchComparison
    best: dict[str, Any]
    best_source: str
    tracking_uri: str
    plots: list[Path] = field(default_factory=list)
    meta: StudyMeta = field(default_factory=lambda: StudyMeta("", "", "max", []))
    problems: list[str] = field(default_factory=list)
    complete: bool = True
    pareto: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (``aop report --json``)."""
        return {
            "study_dir": str(self.study_dir),
            "trials": {name: len(recs) for name, recs in self.records.items()},
            "comparison": self.comparison.to_dict(),
            "best": self.best,
            "best_source": self.best_source,
            "tracking_uri": self.tracking_uri,
            "mlflow_ui": mlflow_ui_command(self.tracking_uri, self.study_dir),
            "plots": [str(p) for p in self.plots],
            "complete": self.complete,
            "problems": list(self.problems),
            "warm_start": dict(self.meta.warm_start),
            "scheduler": {**self.meta.scheduler, "stopped": {
                name: sum(1 for r in recs if r.get("stopped_at"))
                for name, recs in self.records.items()}} if self.meta.scheduler else {},
            **({"objectives": list(self.meta.objectives), "pareto": list(self.pareto)}
               if len(self.meta.objectives) > 1 else {}),
        }


@dataclass
class StudyMeta:
    """What a study folder says about its kind (``study.yaml``, written when the study starts).

    Attributes
    ----------
    kind : str
        The study kind.
    metric, mode : str
        The objective and its direction.
    metrics : list of str
        The metric columns to show, objective first.
    main_search : str or None
        The search every other search is compared with.
    pooled : list of str
        Searches represented by all their records (a baseline grid).
    group : str or None
        The parameter shown beside each search's best configuration.
    budgets : dict
        Trials each search of the study runs (``{}`` when the file does not say).
    colours : dict
        ``{metric: colour}`` of the comparison plot.
    ranges : dict
        ``{parameter: [low, high]}`` of the searched numeric parameters.
    warm_start : dict
        ``sources``, ``trials`` (told) and ``source_runs`` of a warm-started study (``{}``
        otherwise; see :mod:`aop.tuning.warm_start`).
    objectives : list of dict
        ``[{metric, mode}, ...]`` of a study with several objectives (``[]`` otherwise).
    scheduler : dict
        ``name``, ``grace_period``, ``reduction_factor``, ``search`` and ``fidelity`` of a
        study whose main search stops poor trials early (``{}`` otherwise; see
        :mod:`aop.tuning.schedulers`).
    """

    kind: str
    metric: str
    mode: str
    metrics: list[str]
    main_search: str | None = None
    pooled: list[str] = field(default_factory=list)
    group: str | None = None
    budgets: dict[str, int] = field(default_factory=dict)
    colours: dict[str, str] = field(default_factory=dict)
    ranges: dict[str, list[float]] = field(default_factory=dict)
    warm_start: dict[str, Any] = field(default_factory=dict)
    objectives: list[dict[str, str]] = field(default_factory=list)
    scheduler: dict[str, Any] = field(default_factory=dict)


def read_study_meta(study_dir: Path) -> StudyMeta:
    """The study's :class:`StudyMeta` from ``study.yaml``; a folder without one is no study."""
    path = study_dir / STUDY_FILE
    if not path.is_file():
        raise AopError(
            f"{study_dir}: not a study folder (no {STUDY_FILE}; start a study with aop search)"
        )
    data = read_yaml(path)
    if not isinstance(data, Mapping):
        raise AopError(f"{path}: expected a mapping (kind, metric, mode, metrics)")
    known = set(StudyMeta.__dataclass_fields__)
    missing = [k for k in ("kind", "metric", "mode", "metrics") if k not in data]
    if missing:
        raise AopError(f"{path}: missing field {missing[0]!r}")
    return StudyMeta(**{k: v for k, v in data.items() if k in known})


def warm_start_line(warm_start: Mapping[str, Any]) -> str:
    """The one line that says what a study's searcher was told of earlier studies.

    >>> warm_start_line({"sources": ["studies/a", "runs:/0a1b"], "trials": 40})
    'warm-started from 40 trials of studies/a, runs:/0a1b'
    """
    sources = ", ".join(str(s) for s in warm_start.get("sources") or [])
    return f"warm-started from {warm_start.get('trials', 0)} trials of {sources}"


def early_stopping_line(scheduler: Mapping[str, Any], records: Sequence[Mapping[str, Any]]) -> str:
    """The one line that says how many trials of a search a scheduler stopped, and where.

    >>> line = early_stopping_line(
    ...     {"name": "asha", "grace_period": 1, "reduction_factor": 3.0, "search": "gp",
    ...      "fidelity": "epoch"},
    ...     [{"stopped_at": {"epoch": 1}}, {"stopped_at": {"epoch": 3}}, {}])
    >>> print(line)  # doctest: +NORMALIZE_WHITESPACE
    asha (grace period 1 epoch, reduction factor 3) stopped 2 of 3 trials of gp early:
    at epoch 1: 1, at epoch 3: 1
    """
    attr = scheduler.get("fidelity") or "step"
    where = Counter(v for r in records for v in (r.get("stopped_at") or {}).values())
    at = ", ".join(f"at {attr} {value:g}: {n}" for value, n in sorted(where.items()))
    line = (
        f"{scheduler.get('name')} (grace period {scheduler.get('grace_period')} {attr}, "
        f"reduction factor {float(scheduler.get('reduction_factor', 0)):g}) stopped "
        f"{sum(where.values())} of {len(records)} trials of {scheduler.get('search')} early"
    )
    return f"{line}: {at}" if at else line


def _tracking_uri(study_dir: Path) -> str:
    uri = None
    experiment = study_dir / EXPERIMENT_FILE
    if experiment.is_file():
        data = read_yaml(experiment)
        tracking = data.get("tracking") if isinstance(data, Mapping) else None
        if isinstance(tracking, Mapping):
            uri = tracking.get("tracking_uri")
    return uri or f"sqlite:///{study_dir.resolve() / 'mlflow.db'}"


def _best_from_file(path: Path, group: str | None) -> dict[str, Any]:
    data = read_yaml(path)
    if not isinstance(data, Mapping):
        raise AopError(f"{path}: expected a mapping with model, params and scores")
    if "params" not in data:
        raise AopError(f"{path}: missing field 'params'")
    if not isinstance(data["params"], Mapping):
        raise AopError(f"{path}: field 'params' must be a mapping")
    scores = data.get("scores")
    if not isinstance(scores, Mapping):
        raise AopError(f"{path}: field 'scores' must be a mapping")
    best = {
        "search": data.get("search"),
        "trial_id": data.get("trial_id"),
        "params": dict(data["params"]),
        "scores": dict(scores),
    }
    if group is not None and group in data:
        best[group] = data[group]
    reference = data.get("reference")
    if reference is not None:
        if not isinstance(reference, Mapping) or not isinstance(reference.get("scores"), Mapping):
            raise AopError(f"{path}: field 'reference' must be a mapping with 'scores'")
        best["reference"] = dict(reference)
    return best


def load_report(study_dir: str | os.PathLike) -> StudyReport:
    """Read a study folder into a :class:`StudyReport`.

    Raises
    ------
    AopError
        A missing folder, no trial records, or a corrupt ``results/*.jsonl``, ``best.yaml`` or
        ``experiment.yaml`` (one line naming the file).
    """
    study_dir = Path(study_dir)
    try:
        records = read_study_records(study_dir)
    except AopError as exc:
        if "no trial records" in str(exc) or "no results folder" in str(exc):
            raise AopError(
                f"{study_dir}: no trial records: the study failed or has not finished "
                "(continue it with aop resume)"
            ) from None
        raise
    meta = read_study_meta(study_dir)
    main = meta.main_search if meta.main_search in records else None
    comparison = compare_searches(
        records, pooled=meta.pooled, reference=main, metrics=meta.metrics, mode=meta.mode,
        group=meta.group,
    )  # fmt: skip
    best_file = study_dir / BEST_FILE
    if best_file.is_file():
        best, source = _best_from_file(best_file, meta.group), BEST_FILE
    else:
        record = best_record(records[comparison.reference], meta.metric, meta.mode)
        params = dict(record["params"])
        best = {"search": record["search"], "trial_id": record["trial_id"]}
        if meta.group is not None and meta.group in params:
            best[meta.group] = params.pop(meta.group)
        best.update(params=params, scores=dict(record["metrics"]))
        source = "results"
    plots = sorted((study_dir / "plots").glob("*.png"))
    torn = [
        f"{RESULTS_DIR}/{path.name}: last line is cut off (an interrupted write); not counted"
        for path in sorted((study_dir / RESULTS_DIR).glob("*.jsonl"))
        if torn_last_line(path)
    ]
    short = [
        f"search {name}: {len(records.get(name, []))} of {wanted} trials finished"
        for name, wanted in meta.budgets.items()
        if len(records.get(name, [])) < wanted
    ]
    if not best_file.is_file() and (study_dir / EXPERIMENT_FILE).is_file():
        short.append(f"no {BEST_FILE} (the study has not finished)")
    several = len(meta.objectives) > 1 and comparison.reference in records
    pareto = pareto_rows(records[comparison.reference], meta.objectives) if several else []
    return StudyReport(
        study_dir, records, comparison, best, source, _tracking_uri(study_dir), plots, meta,
        problems=short + torn, complete=not short, pareto=pareto,
    )  # fmt: skip


def chosen_trial(
    study_dir: str | os.PathLike,
    *,
    pick: str | None = None,
    tolerance: float = 0.0,
    trial: str | None = None,
) -> dict[str, Any]:
    """The trial record of a study that a rule or an id chooses (for applying its model).

    Parameters
    ----------
    study_dir : path-like
        A finished or interrupted study folder.
    pick : str, optional
        A rule of :func:`aop.analysis.pareto.pick_trial` (``fastest-within``) over the main
        search's trials; the study needs several objectives.
    tolerance : float
        The rule's tolerance on the first objective.
    trial : str, optional
        A trial id of any search of the study.

    Returns
    -------
    dict
        The trial record (``search``, ``trial_id``, ``params``, ``metrics`` and the kind's
        extras).

    Raises
    ------
    AopError
        Both or neither of ``pick`` and ``trial``, an unknown trial id, a rule on a study with
        one objective, or a bad rule or tolerance; one line naming the study.
    """
    study_dir = Path(study_dir)
    if (pick is None) == (trial is None):
        raise AopError(f"{study_dir}: choose a trial by a pick rule or by its id (one of them)")
    meta = read_study_meta(study_dir)
    records = read_study_records(study_dir)
    if trial is not None:
        found = [r for recs in records.values() for r in recs if r["trial_id"] == str(trial)]
        if not found:
            searches = ", ".join(f"{name} ({len(recs)})" for name, recs in records.items())
            raise AopError(f"{study_dir}: no trial {trial!r} (trials of searches {searches})")
        if len(found) > 1:
            raise AopError(f"{study_dir}: trial {trial!r} is in several searches")
        return found[0]
    main = meta.main_search if meta.main_search in records else list(records)[-1]
    if len(meta.objectives) < 2:
        raise AopError(
            f"{study_dir}: a study with one objective ({meta.metric}) has no trade-off to pick "
            f"from; choose a trial by its id"
        )
    try:
        return pick_trial(records[main], meta.objectives, pick, tolerance)
    except AopError as exc:
        raise AopError(f"{study_dir}: {exc}") from None


def mlflow_ui_command(tracking_uri: str, study_dir: Path) -> str:
    """How to see a study's trials in the MLflow UI: ``aop ui STUDY_DIR`` for a local store."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri} in a browser"
    return f"aop ui {shlex.quote(str(study_dir))}"


def _number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}f}"


def _p_text(test: Mapping[str, Any]) -> str:
    p_value = test["p_value"]
    if p_value is None or not math.isfinite(p_value):
        return "-"
    return f"p={p_value:.2g} {test['stars'] or 'n.s.' if test['meaningful'] else 'n.m.'}"


def _print_pareto(report: StudyReport, console: Any) -> None:
    """The table of the main search's Pareto front: trial, each objective, the group value."""
    from rich.table import Table

    meta = report.meta
    objectives = [o["metric"] for o in meta.objectives]
    search = report.pareto[0]["search"]
    table = Table(
        title=f"Pareto front of search {search}: {len(report.pareto)} of "
        f"{len(report.records.get(search, []))} trials (best {objectives[0]} first)",
        title_justify="left",
    )
    group = meta.group if any(meta.group in row for row in report.pareto) else None
    table.add_column("trial")
    if group:
        table.add_column(group)
    for objective in meta.objectives:
        table.add_column(f"{objective['metric'].upper()} ({objective['mode']})", justify="right")
    for row in report.pareto:
        chosen = [str(row.get(group, "-"))] if group else []
        table.add_row(str(row["trial_id"]), *chosen,
                      *[_number(row[m], 4) for m in objectives])  # fmt: skip
    console.print(table)


def print_report(report: StudyReport, console: Any) -> None:
    """Print the report with rich: comparison table, t-tests, best configuration, MLflow command.

    Parameters
    ----------
    report : StudyReport
    console : rich.console.Console
    """
    from rich.table import Table

    comparison = report.comparison
    summary = comparison.summary
    meta = report.meta
    metrics, group = meta.metrics, meta.group
    table = Table(title=f"Study {report.study_dir}: searches compared", title_justify="left")
    grouped = [f"best {group}", "n"] if group else []
    for column in ["search", "trials", *grouped, *[m.upper() for m in metrics]]:
        table.add_column(column, justify="left" if column == "search" or column in grouped[:1]
                         else "right")  # fmt: skip
    for search, row in summary.iterrows():
        chosen = []
        if group:
            value = row[group]
            chosen = [f"all ({search})" if value == "all" else str(value or "-"), str(row["n"])]
        table.add_row(
            search,
            str(len(report.records[search])),
            *chosen,
            *[_number(row[m]) for m in metrics],
        )
    console.print(table)
    if meta.warm_start:
        console.print(f"  {warm_start_line(meta.warm_start)}", highlight=False, soft_wrap=True)
    stopping = meta.scheduler.get("search")
    if stopping in report.records:
        console.print(f"  {early_stopping_line(meta.scheduler, report.records[stopping])}",
                      highlight=False, soft_wrap=True)  # fmt: skip

    others = [s for s in summary.index if s != comparison.reference]
    if others:
        tests = Table(
            title=f"Paired t-tests per volume: {comparison.reference} vs ...",
            title_justify="left",
        )
        tests.add_column("metric")
        for other in others:
            tests.add_column(f"vs {other}", justify="right")
        untested: set[int] = set()
        for metric in metrics:
            cells = []
            for other in others:
                test = comparison.test(comparison.reference, other, metric)
                low, high, diff = (test[k] + 0.0 for k in ("ci_low", "ci_high", "difference"))
                if not test["meaningful"]:
                    untested.add(int(test["n_volumes"]))
                cells.append(f"{diff:+.3f}  {_p_text(test)}\n[{low:+.3f}, {high:+.3f}]")
            tests.add_row(metric.upper(), *cells)
        console.print(tests)
        console.print(
            "  difference of means and its [95% confidence interval]; * p<0.05, ** p<0.01, "
            "*** p<0.001, n.s. otherwise", highlight=False, soft_wrap=True,
        )  # fmt: skip
        if untested:
            console.print(
                f"  n.m.: with {min(untested)} volume(s) a paired t-test is not meaningful (it "
                f"needs at least {MIN_VOLUMES}); read the differences and their intervals",
                highlight=False, soft_wrap=True,
            )

    if report.pareto:
        _print_pareto(report, console)
    for problem in report.problems:
        console.print(f"[bold yellow]warning:[/] {problem}", highlight=False, soft_wrap=True)
    best = report.best
    scores = "  ".join(f"{m.upper()} {_number(best['scores'].get(m))}" for m in metrics)
    origin = f"search {best.get('search')}, trial {best.get('trial_id')}"
    if report.complete:
        console.print(f"\n[bold]Best configuration[/] ({origin}; from {report.best_source})")
    else:
        console.print(
            f"\n[bold yellow]Study incomplete[/] (continue it with aop resume "
            f"{report.study_dir}); best so far ({origin}; from {report.best_source})",
            soft_wrap=True,
        )
    chosen = f"{group}: {best[group]}    " if group and group in best else ""
    console.print(f"  {chosen}{scores}")
    params = Table(show_header=True, box=None, padding=(0, 2))
    params.add_column("parameter")
    params.add_column("value", justify="right")
    for key, value in best["params"].items():
        params.add_row(key, f"{value:.4g}" if isinstance(value, int | float) else str(value))
    console.print(params)
    reference = best.get("reference")
    if reference:
        shown = "  ".join(f"{m.upper()} {_number(reference['scores'].get(m))}" for m in metrics
                          if m in reference["scores"])  # fmt: skip
        console.print(f"\n[bold]Reference[/]: {reference.get('name', 'baseline')}", soft_wrap=True,
                      highlight=False)  # fmt: skip
        console.print(f"  {shown}", highlight=False)
        comparison = reference.get("comparison") or {}
        if "mean_difference" in comparison:
            console.print(
                f"  best - reference over {comparison.get('n')} folds: "
                f"{_number(comparison['mean_difference'])} "
                f"[{_number(comparison.get('ci_low'))}, {_number(comparison.get('ci_high'))}], "
                f"p {_number(comparison.get('p_value'))}",
                highlight=False, soft_wrap=True,
            )
        if reference.get("verdict"):
            console.print(f"  [bold]{reference['verdict']}[/]", highlight=False, soft_wrap=True)
    if report.plots:
        console.print("\nPlots: " + ", ".join(str(p) for p in report.plots), soft_wrap=True)
    console.print("\nMLflow UI:", highlight=False)
    console.print(f"  {mlflow_ui_command(report.tracking_uri, report.study_dir)}",
                  highlight=False, soft_wrap=True)  # fmt: skip
