"""Figures of a study's searches (matplotlib, Agg backend, PNG), for any study kind.

The caller names the objective (``metric``, ``mode``), the metric columns and their colours; this
module knows no study kind and no metric. Parameter importance, the contour (Fig. 5 of the paper)
and the convergence plot are Optuna's, on an in-memory study of the trial records
(:func:`records_study`); the grouped bars of the searches (Fig. 4) are aop's.
:func:`make_study_plots` draws them for a study folder into ``STUDY_DIR/plots/``.

A study with several objectives (:mod:`aop.analysis.pareto`) adds the Pareto plot
(:func:`plot_pareto`: every trial, the main search's front highlighted and connected, the
baseline marked) and the hypervolume per trial count under the convergence plot;
:func:`write_pareto_outputs` writes them with the front's table ``tables/pareto.csv``.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from optuna.distributions import CategoricalDistribution as Categorical  # noqa: E402
from optuna.distributions import FloatDistribution, IntDistribution  # noqa: E402
from optuna.importance import FanovaImportanceEvaluator, get_param_importances  # noqa: E402
from optuna.visualization.matplotlib import plot_contour, plot_optimization_history  # noqa: E402

from aop.analysis.compare import SearchComparison, compare_searches, significance_stars  # noqa: E402
from aop.analysis.pareto import (  # noqa: E402
    REFERENCE_MARGIN,
    hypervolume_history,
    objective_bounds,
    objective_pairs,
    pareto_front,
    pareto_rows,
)
from aop.analysis.records import best_record, read_study_records, stopped  # noqa: E402
from aop.analysis.report import BEST_FILE, read_study_meta  # noqa: E402
from aop.config import read_yaml  # noqa: E402
from aop.errors import AopError  # noqa: E402
from aop.outputs import atomic_file  # noqa: E402

__all__ = [
    "influential_parameters", "make_study_plots", "plot_convergence", "plot_parameter_contour",
    "plot_pareto", "plot_search_comparison", "records_study", "write_pareto_outputs",
]

#: Hatching per search: baseline filled, random search thick stripes, BO thin stripes.
SEARCH_HATCHES = {"baseline": "", "random": "//", "gp": "\\\\\\\\"}
SEARCH_LABELS = {
    "baseline": "baseline", "random": "random search", "gp": "BO (GP)", "tpe": "BO (TPE)",
    "smac": "BO (SMAC)", "nsga2": "NSGA-II",
}
_EXTRA_HATCHES = ("xx", "..", "++", "oo")
_DIRECTIONS = {"max": "maximize", "min": "minimize"}
_Records = Sequence[Mapping[str, Any]]
_OutPath = str | os.PathLike | None


def _finish(figure: Figure, path: _OutPath, size: tuple[float, float] | None = None) -> Figure:
    """``figure`` resized (Optuna's figures), laid out and, unless ``path`` is None, saved."""
    if size:
        figure.set_size_inches(*size)
    figure.tight_layout()
    if path is not None:
        with atomic_file(path) as tmp:
            figure.savefig(tmp, dpi=150, bbox_inches="tight")
    return figure


@contextmanager
def _optuna_calls() -> Iterator[None]:
    """Optuna quiet (log, experimental warnings); its pyplot style is undone after the block."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings(), matplotlib.rc_context():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _distributions(records: _Records) -> dict[str, Any]:
    """One Optuna distribution per parameter: integers or floats over the observed minimum to
    maximum, anything else (strings, booleans, a mix) categories in order of appearance."""
    distributions: dict[str, Any] = {}
    for name in dict.fromkeys(name for record in records for name in record["params"]):
        values = [r["params"][name] for r in records if name in r["params"]]
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
            distributions[name] = Categorical(list(dict.fromkeys(values)))
        elif all(isinstance(v, int) for v in values):
            distributions[name] = IntDistribution(min(values), max(values))
        else:
            distributions[name] = FloatDistribution(float(min(values)), float(max(values)))
    return distributions


def _numeric_parameters(records: _Records) -> list[str]:
    """Parameters that every record holds as a number, in record order."""
    return [
        name for name, distribution in _distributions(records).items()
        if not isinstance(distribution, Categorical) and all(name in r["params"] for r in records)
    ]


def _check_objective(records: _Records, metric: str, mode: str | None = None) -> None:
    """One clear error for a ``mode`` other than max or min, or a record without ``metric``."""
    if mode is not None and mode not in _DIRECTIONS:
        raise AopError(f"mode must be 'max' or 'min', got {mode!r}")
    for r in records:
        if metric not in r["metrics"]:
            raise AopError(f"trial {r['trial_id']} of search {r['search']!r} has no metric "
                           f"{metric!r} (has: {', '.join(r['metrics'])})")


def records_study(
    records: _Records, metric: str, mode: str = "max", name: str | None = None
) -> optuna.Study:
    """Trial records as an in-memory Optuna study whose objective value is ``metric``.

    Parameters
    ----------
    records : sequence of mapping
        Validated trial records (:func:`aop.analysis.records.validate_record`).
    metric, mode : str
        The key of the records' ``metrics`` to optimise; ``"max"`` or ``"min"``.
    name : str, optional
        The study's name (Optuna's plots show it in legends).

    Returns
    -------
    optuna.Study
        One trial per record in ``iteration`` order (records without one last), with ``search``
        and ``trial_id`` as user attributes; numbers span their observed range, others are
        categorical. A trial that an early-stopping scheduler stopped (``stopped_at``) is
        Optuna's pruned trial, its value the intermediate value where it stopped: histories
        and importances count the trials that ran to their end, as the study's best does.

    Examples
    --------
    >>> records = [{"search": "random", "trial_id": str(i), "iteration": i, "params": {"depth": d},
    ...             "metrics": {"score": s}} for i, (d, s) in enumerate([(2, 0.5), (4, 0.7)])]
    >>> study = records_study(records, "score")
    >>> study.best_params, study.trials[0].distributions["depth"]
    ({'depth': 4}, IntDistribution(high=4, log=False, low=2, step=1))
    """
    _check_objective(records, metric, mode)
    distributions = _distributions(records)
    trials = [
        optuna.trial.create_trial(
            params={k: float(v) if isinstance(distributions[k], FloatDistribution) else v
                    for k, v in record["params"].items()},
            distributions={k: distributions[k] for k in record["params"]},
            **_outcome(record, metric),
            user_attrs={"search": record["search"], "trial_id": record["trial_id"]},
        )
        # a stable sort: records without an iteration (-1) keep their given order, last
        for record in sorted(records, key=lambda r: (r["iteration"] < 0, r["iteration"]))
    ]
    with _optuna_calls():
        study = optuna.create_study(direction=_DIRECTIONS[mode], study_name=name)
        study.add_trials(trials)
    return study


def _outcome(record: Mapping[str, Any], metric: str) -> dict[str, Any]:
    """Optuna's ``create_trial`` arguments of a record's outcome: a value, or pruned at a step."""
    stop = record.get("stopped_at")
    if not stop:
        return {"value": record["metrics"][metric]}
    step = int(next(iter(stop.values())))
    return {"state": optuna.trial.TrialState.PRUNED,
            "intermediate_values": {step: record["metrics"][metric]}}  # fmt: skip


def influential_parameters(records: _Records, metric: str, count: int = 2) -> list[str]:
    """The ``count`` numeric parameters that explain most of the variance of ``metric``.

    Importance is Optuna's fANOVA (seed 0), which, unlike a correlation, sees an optimum inside
    the range.

    Parameters
    ----------
    records : sequence of mapping
        Validated trial records, typically those that share every categorical value.
    metric : str
        The key of the records' ``metrics`` to explain.
    count : int
        How many parameter names to return.

    Returns
    -------
    list of str
        The numeric parameters of every record that vary, most important first (ties in record
        order), then the constant ones.

    Raises
    ------
    AopError
        With no records, or fewer than ``count`` numeric parameters.
    """
    if not records:
        raise AopError("no trial records to rank parameters by importance")
    numeric = _numeric_parameters(records)
    if len(numeric) < count:
        raise AopError(f"trial records need at least {count} numeric parameters, have "
                       f"{', '.join(numeric) or 'none'}")
    _check_objective(records, metric)
    varying = [n for n in numeric if len({r["params"][n] for r in records}) > 1]
    importance: dict[str, float] = {}
    if varying and len({r["metrics"][metric] for r in records}) > 1:
        with _optuna_calls():
            importance = get_param_importances(records_study(records, metric), params=varying,
                                               evaluator=FanovaImportanceEvaluator(seed=0))
    ranked = sorted(varying, key=lambda n: (-np.nan_to_num(importance.get(n, 0.0)),
                                            numeric.index(n)))
    return (ranked + [n for n in numeric if n not in varying])[:count]


def _best_slice(
    records: _Records, metric: str, mode: str, fixed: Mapping[str, Any] | None = None
) -> tuple[list[Mapping[str, Any]], str]:
    """The records with the values ``fixed`` (default: the best record's categorical values),
    and those values as text (``"model='unet'"``)."""
    if not records:
        raise AopError("no trial records for a contour plot")
    _check_objective(records, metric, mode)
    if fixed is None:
        best = best_record(records, metric, mode)["params"]
        fixed = {name: best[name] for name, distribution in _distributions(records).items()
                 if isinstance(distribution, Categorical) and name in best}
    chosen = [r for r in records if all(r["params"].get(k) == v for k, v in fixed.items())]
    described = ", ".join(f"{name}={value!r}" for name, value in fixed.items())
    if not chosen:
        raise AopError(f"no trial records with {described} for a contour plot")
    return chosen, described


def plot_parameter_contour(
    records: _Records, params: tuple[str, str], *, metric: str, mode: str = "max",
    fixed: Mapping[str, Any] | None = None,
    ranges: Mapping[str, Sequence[float]] | None = None, path: _OutPath = None,
) -> Figure:
    """``metric`` over two numeric parameters: Optuna's contour, the optimum and repeated points.

    :func:`optuna.visualization.matplotlib.plot_contour` draws the contours and the points, the
    alphabetically first parameter on x (with one value on an axis, the points coloured by
    ``metric`` instead). Red numbers count repeated evaluations; a red cross marks the optimum.

    Parameters
    ----------
    records : sequence of mapping
        Validated trial records.
    params : (str, str)
        The two numeric parameters.
    metric, mode : str
        The key of the records' ``metrics`` to draw; ``"max"`` or ``"min"``.
    fixed : mapping, optional
        The parameter values of the drawn records; default the best record's categorical values.
    ranges : mapping, optional
        ``{parameter: (low, high)}`` the axes span (4 % margin); default the points' range.
    path : path-like, optional
        Where to save the PNG.

    Returns
    -------
    matplotlib.figure.Figure
    """
    chosen, described = _best_slice(records, metric, mode, fixed)
    numeric = _numeric_parameters(chosen)
    for name in params:
        if any(name not in r["params"] for r in chosen):
            raise AopError(f"parameter {name!r} is missing from some trial records")
        if name not in numeric:
            raise AopError(f"parameter {name!r} is not numeric; a contour plot needs two numbers")
    x, y = sorted(params)
    if x == y:
        raise AopError(f"a contour plot needs two different parameters, got {x!r} twice")
    counts = Counter((r["params"][x], r["params"][y]) for r in chosen)
    optimum = best_record(chosen, metric, mode)
    study = records_study(chosen, metric, mode)
    with _optuna_calls():
        axes = plot_contour(study, params=[x, y], target_name=metric)
        if not axes.collections:  # one value on an axis: Optuna drew no contour and no points
            dots = axes.scatter(
                [r["params"][x] for r in chosen], [r["params"][y] for r in chosen],
                c=[r["metrics"][metric] for r in chosen], cmap="Blues", s=22,
                edgecolors="black", linewidths=0.6, zorder=3,
            )
            axes.figure.colorbar(dots, ax=axes, format="%.2f").set_label(metric)
            axes.set(xlabel=x, ylabel=y)
        for point, n in counts.items():
            if n > 1:
                axes.annotate(str(n), point, xytext=(4, 3), textcoords="offset points",
                              color="red", fontsize=7, fontweight="bold", zorder=4)
        axes.scatter([optimum["params"][x]], [optimum["params"][y]], marker="X", s=150, c="red",
                     edgecolors="white", linewidths=1.2, zorder=5,
                     label=f"optimum ({metric} {optimum['metrics'][metric]:.3f})")
        for name, axis, limit in ((x, axes.xaxis, axes.set_xlim), (y, axes.yaxis, axes.set_ylim)):
            if ranges and name in ranges:
                low, high = ranges[name]
                limit(low - 0.04 * (high - low), high + 0.04 * (high - low))
            if isinstance(study.trials[0].distributions[name], IntDistribution):
                axis.set_major_locator(MaxNLocator(integer=True))
        axes.legend(loc="best", frameon=True, framealpha=0.85, fontsize=8, handletextpad=0.3)
        where = f" for {described}" if described else ""
        repeated = " (red: times evaluated)" if max(counts.values()) > 1 else ""
        axes.set_title(f"{metric} over {x} and {y}{where}\n{len(chosen)} evaluations, "
                       f"{len(counts)} distinct points{repeated}", fontsize=9)
        return _finish(axes.figure, path, (6.0, 4.6))


def plot_convergence(
    records_by_search: Mapping[str, _Records], *, metric: str, mode: str = "max",
    pooled: Sequence[str] = (), path: _OutPath = None, objectives: Sequence[Any] | None = None,
) -> Figure:
    """Each search's trials and best ``metric`` so far against the trial number.

    Parameters
    ----------
    records_by_search : mapping
        ``{search: [trial record, ...]}`` (Optuna's ``plot_optimization_history``).
    metric, mode : str
        The key of the records' ``metrics`` to draw; ``"max"`` or ``"min"``.
    pooled : sequence of str
        Searches without an order (a baseline grid), drawn as their mean (dashed) and best
        (dotted) value.
    path : path-like, optional
        Where to save the PNG.
    objectives : sequence, optional
        Several objectives (``{"metric", "mode"}``): a second panel draws each search's
        hypervolume per trial count (:func:`aop.analysis.pareto.hypervolume_history`, every
        search scaled by the bounds of all the records drawn; a pooled search as a line).

    Returns
    -------
    matplotlib.figure.Figure
    """
    _check_objective([r for records in records_by_search.values() for r in records], metric, mode)
    histories = [
        records_study(records, metric, mode, name=SEARCH_LABELS.get(search, search))
        for search, records in records_by_search.items() if records and search not in pooled
    ]
    best = max if mode == "max" else min
    with _optuna_calls():
        if histories:
            axes = plot_optimization_history(histories, target_name=metric)
        else:  # Optuna warns that nothing has a label and leaves an empty legend
            axes = plt.subplots()[1]
            axes.set(xlabel="Trial", ylabel=metric)
        for search in pooled:
            values = [r["metrics"][metric] for r in records_by_search.get(search) or []]
            lines = (("mean", np.mean(values), "--"), ("best", best(values), ":")) if values else ()
            for what, value, style in lines:
                axes.axhline(value, color="#555555", linestyle=style, linewidth=1,
                             label=f"{SEARCH_LABELS.get(search, search)}: {what} ({value:.3f})")
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        names = ", ".join(study.study_name for study in histories)
        axes.set_title(f"Convergence{' of ' + names if names else ''}: best {metric} so far",
                       fontsize=10)
        if objectives is not None and len(objectives) > 1:
            _hypervolume_panel(axes, records_by_search, objectives, pooled)
            return _finish(axes.figure, path, (8.0, 7.4))
        return _finish(axes.figure, path, (8.0, 4.2))


def _hypervolume_panel(
    axes: Any, records_by_search: Mapping[str, _Records], objectives: Sequence[Any],
    pooled: Sequence[str],
) -> None:
    """A second panel under ``axes``: the hypervolume of each search per trial count."""
    everything = [r for records in records_by_search.values() for r in records]
    pairs = objective_pairs(objectives)
    try:
        bounds = objective_bounds(everything, pairs)
    except AopError:
        return  # no trial has every objective: nothing to draw
    grid = axes.figure.add_gridspec(2, 1, height_ratios=(1.0, 0.9))
    axes.set_subplotspec(grid[0])
    panel = axes.figure.add_subplot(grid[1])
    for index, (search, records) in enumerate(records_by_search.items()):
        if not records:
            continue
        label = SEARCH_LABELS.get(search, search)
        history = hypervolume_history(records, pairs, bounds)
        if search in pooled:
            panel.axhline(history[-1], color="#555555", linestyle="--", linewidth=1,
                          label=f"{label}: all {len(history)} trials ({history[-1]:.3f})")
            continue
        # trial numbers from 0, as the panel above: the hypervolume once that trial finished
        panel.plot(range(len(history)), history, marker="o", markersize=3,
                   color=f"C{index}", label=f"{label} ({history[-1]:.3f})")
    names = ", ".join(f"{m} ({mode})" for m, mode in pairs)
    panel.set(xlabel="Trial", ylabel="hypervolume",
              title=f"Hypervolume of {names}\n(each scaled to [0, 1] between the best and worst "
                    f"trial drawn; reference point {REFERENCE_MARGIN:g})")
    panel.title.set_fontsize(9)
    panel.xaxis.set_major_locator(MaxNLocator(integer=True))
    if panel.get_legend_handles_labels()[0]:
        panel.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))


def _staircase(
    points: Sequence[tuple[float, float]], x_mode: str
) -> tuple[list[float], list[float]]:
    """The attainment line through front points ``(x, y)`` sorted by x: between two points,
    the corner that the better of them in x dominates."""
    xs, ys = [points[0][0]], [points[0][1]]
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        corner = (x1, y0) if x_mode == "min" else (x0, y1)
        xs += [corner[0], x1]
        ys += [corner[1], y1]
    return xs, ys


def plot_pareto(
    records_by_search: Mapping[str, _Records], objectives: Sequence[Any], *,
    main: str | None = None, reference: Mapping[str, float] | None = None,
    path: _OutPath = None,
) -> Figure:
    """Every trial over the first two objectives, the main search's Pareto front highlighted.

    The first objective is on y, the second on x (accuracy against latency). The front
    (:func:`aop.analysis.pareto.pareto_front` over every objective) is drawn in red and, with
    two objectives, connected by its attainment line (the border of what it dominates).

    Parameters
    ----------
    records_by_search : mapping
        ``{search: [trial record, ...]}``; each search's trials in their own colour.
    objectives : sequence
        At least two ``{"metric", "mode"}``.
    main : str, optional
        The search whose front is drawn (default: the last one).
    reference : mapping, optional
        ``{metric: value}`` of a baseline (``best.yaml``'s ``reference`` scores): marked with
        a star when it has both objectives drawn.
    path : path-like, optional
        Where to save the PNG.

    Returns
    -------
    matplotlib.figure.Figure
    """
    pairs = objective_pairs(objectives)
    if len(pairs) < 2:
        raise AopError("a Pareto plot needs two objectives")
    (y_name, y_mode), (x_name, x_mode) = pairs[0], pairs[1]
    if not records_by_search:
        raise AopError("no trial records for a Pareto plot")
    main = main if main in records_by_search else list(records_by_search)[-1]
    figure, axes = plt.subplots(figsize=(7.0, 4.8))
    for index, (search, records) in enumerate(records_by_search.items()):
        drawn = [r for r in records if x_name in r["metrics"] and y_name in r["metrics"]]
        if drawn:
            axes.scatter([r["metrics"][x_name] for r in drawn],
                         [r["metrics"][y_name] for r in drawn], s=22, alpha=0.55,
                         color=f"C{index}", edgecolors="none",
                         label=f"{SEARCH_LABELS.get(search, search)} ({len(drawn)} trials)")
    front = pareto_front(records_by_search[main], pairs)
    if front:
        points = sorted((r["metrics"][x_name], r["metrics"][y_name]) for r in front)
        if len(pairs) == 2:
            xs, ys = _staircase(points, x_mode)
            axes.plot(xs, ys, color="#d62728", linewidth=1.2, zorder=3)
        axes.scatter([p[0] for p in points], [p[1] for p in points], s=46, color="#d62728",
                     edgecolors="black", linewidths=0.7, zorder=4,
                     label=f"Pareto front of {SEARCH_LABELS.get(main, main)} ({len(front)})")
    if reference and x_name in reference and y_name in reference:
        axes.scatter([reference[x_name]], [reference[y_name]], marker="*", s=220, color="gold",
                     edgecolors="black", linewidths=0.8, zorder=5, label="baseline")
    axes.set(xlabel=f"{x_name} ({x_mode})", ylabel=f"{y_name} ({y_mode})")
    others = f"; front over {', '.join(m for m, _ in pairs)}" if len(pairs) > 2 else ""
    axes.set_title(f"{y_name} against {x_name}: every trial, the Pareto front in red{others}",
                   fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _finish(figure, path)


def write_pareto_outputs(
    study_dir: str | os.PathLike, records_by_search: Mapping[str, _Records],
    objectives: Sequence[Any], *, main: str | None = None, pooled: Sequence[str] = (),
    reference: Mapping[str, float] | None = None, skip: Sequence[str] = (),
) -> list[Path]:
    """The front's table and plots of a study with several objectives.

    Writes ``tables/pareto.csv`` (:func:`aop.analysis.pareto.pareto_rows` of the main search:
    search, trial id, each objective, the parameters; best first by the first objective),
    ``plots/pareto.png`` (:func:`plot_pareto`) and ``plots/convergence.png``
    (:func:`plot_convergence` with the hypervolume panel), leaving out the file names in
    ``skip`` (what a kind drew already).

    Returns
    -------
    list of Path
        The files written.
    """
    import pandas as pd

    study_dir = Path(study_dir)
    pairs = objective_pairs(objectives)
    main = main if main in records_by_search else list(records_by_search)[-1]
    written: list[Path] = []
    table = study_dir / "tables" / "pareto.csv"
    if table.name not in skip:
        with atomic_file(table) as tmp:
            pd.DataFrame(pareto_rows(records_by_search[main], pairs)).to_csv(tmp, index=False)
        written.append(table)
    plot = study_dir / "plots" / "pareto.png"
    if plot.name not in skip:
        plt.close(plot_pareto(records_by_search, pairs, main=main, reference=reference,
                              path=plot))  # fmt: skip
        written.append(plot)
    convergence = study_dir / "plots" / "convergence.png"
    if convergence.name not in skip:
        (metric, mode) = pairs[0]
        plt.close(plot_convergence(records_by_search, metric=metric, mode=mode, pooled=pooled,
                                   path=convergence, objectives=pairs))  # fmt: skip
        written.append(convergence)
    return written


def plot_search_comparison(
    comparison: SearchComparison, colours: Mapping[str, str], path: _OutPath = None,
    title: str | None = None,
) -> Figure:
    """Grouped bars of the metrics per search, with the t-tests' stars against the reference.

    Parameters
    ----------
    comparison : SearchComparison
        From :func:`aop.analysis.compare.compare_searches`.
    colours : mapping
        ``{metric: matplotlib colour}``: the metrics drawn, in this order, and their bars' colour.
    path, title : path-like and str, optional
        Where to save the PNG; the figure's title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    metrics, summary, reference = list(colours), comparison.summary, comparison.reference
    missing = [m for m in metrics if m not in summary.columns]
    if missing:
        raise AopError(f"the comparison has no metric {', '.join(map(repr, missing))}")
    searches, width = list(summary.index), 0.8 / len(summary.index)
    figure, axes = plt.subplots(figsize=(2.2 + 1.6 * len(metrics) * max(len(searches), 2) / 3, 4.6))
    tops: dict[tuple[str, str], tuple[float, float]] = {}  # bar centre and top of its error bar
    handles = []
    for j, search in enumerate(searches):
        hatch = SEARCH_HATCHES.get(search, _EXTRA_HATCHES[j % len(_EXTRA_HATCHES)])
        for i, metric in enumerate(metrics):
            x, mean = i + (j - (len(searches) - 1) / 2) * width, summary.loc[search, metric]
            spread = float(comparison.samples[search][metric].std(ddof=1))  # NaN for one trial
            spread = spread if np.isfinite(spread) else 0.0
            axes.bar(x, mean, width * 0.92, color=colours[metric], edgecolor="black",
                     linewidth=0.8, hatch=hatch, yerr=spread, capsize=2.5,
                     error_kw={"elinewidth": 0.8, "ecolor": "#333333"})
            tops[(search, metric)] = (x, mean + spread)
        handles.append(Patch(facecolor="white", edgecolor="black", hatch=hatch, label=(
            f"{SEARCH_LABELS.get(search, search)} (n={int(summary.loc[search, 'n'])})")))
    # scores in [0, 1] keep the paper's axis; larger ones scale the label and bracket offsets
    scale = max(1.0, *(top for _, top in tops.values()))
    for (search, metric), (x, _) in tops.items():
        axes.text(x, 0.015 * scale, f"{summary.loc[search, metric]:.2f}", ha="center",
                  va="bottom", fontsize=7, rotation=90, color="black",
                  bbox={"facecolor": "white", "alpha": 0.7, "pad": 0.6, "edgecolor": "none"})
    # brackets with stars: the reference search against each other one, stacked above the bars
    highest = scale
    for metric in metrics if reference in searches else ():
        x_ref = tops[(reference, metric)][0]
        level = max(top for (_, m), (_, top) in tops.items() if m == metric) + 0.04 * scale
        for other in (s for s in searches if s != reference):
            p_value = summary.loc[other, f"p_{metric}"]
            text = (significance_stars(p_value) if summary.loc[other, f"tested_{metric}"]
                    else "n.m." if np.isfinite(p_value) else "") or "n/a"
            x_other = tops[(other, metric)][0]
            axes.plot([x_other, x_other, x_ref, x_ref],
                      [level - 0.015 * scale, level, level, level - 0.015 * scale],
                      color="black", linewidth=0.8)
            axes.text((x_other + x_ref) / 2, level + 0.004 * scale, text, ha="center",
                      va="bottom", fontsize=8 if text.startswith("*") else 7)
            level += 0.075 * scale
        highest = max(highest, level)
    axes.set_xticks(range(len(metrics)), [m.upper() for m in metrics])
    for tick, metric in zip(axes.get_xticklabels(), metrics, strict=True):
        tick.set(color=colours[metric], fontweight="bold")
    axes.set(ylim=(0, highest + 0.02 * scale), title=title or "",
             ylabel="score (mean; bars: s.d. of the search's sample)")
    if scale == 1.0:
        axes.set_yticks(np.linspace(0, 1, 6))
    axes.spines[["top", "right"]].set_visible(False)
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False,
                fontsize=8, title_fontsize=8, handleheight=1.6,
                title=f"stars: paired t-test vs {SEARCH_LABELS.get(reference, reference)}")
    return _finish(figure, path)


def make_study_plots(
    study_dir: str | os.PathLike, records_by_search: Mapping[str, _Records] | None = None, *,
    metric: str | None = None, mode: str | None = None, metrics: Sequence[str] | None = None,
    colours: Mapping[str, str] | None = None, pooled: Sequence[str] | None = None,
    main: str | None = None, contour_parameters: tuple[str, str] | None = None,
) -> list[Path]:
    """Draw the comparison, convergence and contour plots of a study into ``STUDY_DIR/plots/``.

    Parameters
    ----------
    study_dir : path-like
        The study folder.
    records_by_search : mapping, optional
        ``{search: [trial record, ...]}``; default read from ``STUDY_DIR/results/*.jsonl``.
        Trials that an early-stopping scheduler stopped (``stopped_at``) are left out.
    metric, mode, metrics, colours, pooled, main : optional
        The objective, its direction (default ``"max"``), the comparison's metric columns after
        ``metric``, their colours (default ``"C0"``, ``"C1"``, ...), the pooled baseline searches
        and the t-tests' reference search. Without ``metric``, ``study.yaml`` gives it, the
        contour's axis ranges and the others left out (:func:`aop.analysis.report.read_study_meta`).
    contour_parameters : (str, str), optional
        The contour's two parameters; default :func:`influential_parameters`.

    Returns
    -------
    list of Path
        ``plots/comparison.png``, ``plots/convergence.png`` and, when a search that is not pooled
        has two numeric parameters, ``plots/contour_<a>_<b>.png`` (as given or ranked). A study
        whose ``study.yaml`` lists several ``objectives`` adds the hypervolume to the
        convergence plot, and ``plots/pareto.png`` and ``tables/pareto.csv``
        (:func:`write_pareto_outputs`; the baseline is ``best.yaml``'s ``reference``).
    """
    study_dir = Path(study_dir)
    if records_by_search is None:
        records_by_search = read_study_records(study_dir)
    # a trial an early-stopping scheduler stopped was scored on part of its fidelity (fewer
    # epochs, its first volumes): the plots compare trials that ran to their end, as the best
    # does (a search whose every trial stopped keeps them all, as best_record does)
    records_by_search = {search: [r for r in recs if not stopped(r)] or list(recs)
                         for search, recs in records_by_search.items()}  # fmt: skip
    ranges = None
    objectives: list[dict[str, str]] = []
    if metric is None:
        meta = read_study_meta(study_dir)
        metric, ranges, objectives = meta.metric, meta.ranges, meta.objectives
        mode = meta.mode if mode is None else mode
        metrics = meta.metrics if metrics is None else metrics
        pooled = meta.pooled if pooled is None else pooled
        colours = meta.colours if colours is None else colours
        if main is None and meta.main_search in records_by_search:
            main = meta.main_search
    mode, pooled = mode or "max", pooled or ()
    columns = [metric, *(m for m in metrics or () if m != metric)]
    comparison = compare_searches(records_by_search, pooled=pooled, reference=main,
                                  metrics=columns, mode=mode)
    palette = {m: (colours or {}).get(m, f"C{i}") for i, m in enumerate(columns)}
    written = [study_dir / "plots" / name for name in ("comparison.png", "convergence.png")]
    plt.close(plot_search_comparison(comparison, palette, written[0],
                                     title=f"Study {study_dir.resolve().name}"))
    plt.close(plot_convergence(records_by_search, metric=metric, mode=mode, pooled=pooled,
                               path=written[1], objectives=objectives or None))
    optimised = [r for s, recs in records_by_search.items() if s not in pooled for r in recs]
    if optimised and contour_parameters is None:
        chosen = _best_slice(optimised, metric, mode)[0]
        if len(_numeric_parameters(chosen)) >= 2:
            contour_parameters = tuple(influential_parameters(chosen, metric))  # type: ignore[assignment]
    if optimised and contour_parameters is not None:
        a, b = contour_parameters
        written.append(study_dir / "plots" / f"contour_{a}_{b}.png")
        plt.close(plot_parameter_contour(optimised, (a, b), metric=metric, mode=mode,
                                         ranges=ranges, path=written[-1]))
    if len(objectives) > 1:
        best = read_yaml(study_dir / BEST_FILE) if (study_dir / BEST_FILE).is_file() else {}
        reference = (best.get("reference") or {}).get("scores") if isinstance(best, dict) else None
        written += write_pareto_outputs(study_dir, records_by_search, objectives, main=main,
                                        pooled=pooled, reference=reference,
                                        skip=["convergence.png"])  # fmt: skip
    return written
