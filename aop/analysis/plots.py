"""Figures of a study's searches (matplotlib, Agg backend, PNG), for any study kind.

The caller names the objective (``metric``, ``mode``), the metric columns and their colours; this
module knows no study kind and no metric. Parameter importance, the contour and the convergence
plot come from Optuna, on an in-memory :class:`optuna.Study` built from the trial records
(:func:`records_study`); the grouped bar chart is aop's.

- :func:`plot_search_comparison`: grouped bars of the metrics per search, with standard deviations
  over the search's sample and the paired t-test's stars (Fig. 4 of the paper).
- :func:`records_study`: trial records as an in-memory Optuna study of one metric.
- :func:`influential_parameters`: the numeric parameters ranked by fANOVA importance
  (:func:`optuna.importance.get_param_importances`).
- :func:`plot_parameter_contour`: :func:`optuna.visualization.matplotlib.plot_contour` over two
  parameters for the trials that share the best trial's categorical values, with a cross on the
  optimum and a red count where one point was evaluated more than once (Fig. 5 of the paper).
- :func:`plot_convergence`: :func:`optuna.visualization.matplotlib.plot_optimization_history`,
  one study per search; pooled searches as horizontal lines.
- :func:`make_study_plots`: all three for a study folder, saved in ``STUDY_DIR/plots/``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from matplotlib.contour import ContourSet  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from optuna.distributions import (  # noqa: E402
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.importance import FanovaImportanceEvaluator, get_param_importances  # noqa: E402
from optuna.visualization.matplotlib import plot_contour, plot_optimization_history  # noqa: E402

from aop.analysis.compare import (  # noqa: E402
    SearchComparison,
    compare_searches,
    significance_stars,
)
from aop.analysis.records import best_record, read_study_records  # noqa: E402
from aop.analysis.report import read_study_meta  # noqa: E402
from aop.errors import AopError  # noqa: E402
from aop.outputs import atomic_file  # noqa: E402

__all__ = [
    "influential_parameters",
    "make_study_plots",
    "plot_convergence",
    "plot_parameter_contour",
    "plot_search_comparison",
    "records_study",
]

#: Hatching per search: baseline filled, random search thick stripes, BO thin stripes.
SEARCH_HATCHES = {"baseline": "", "random": "//", "gp": "\\\\\\\\"}
SEARCH_LABELS = {
    "baseline": "baseline", "random": "random search", "gp": "BO (GP)", "tpe": "BO (TPE)",
    "smac": "BO (SMAC)",
}
_EXTRA_HATCHES = ("xx", "..", "++", "oo")
_DIRECTIONS = {"max": "maximize", "min": "minimize"}


def _label(search: str) -> str:
    return SEARCH_LABELS.get(search, search)


def _hatch(search: str, index: int) -> str:
    return SEARCH_HATCHES.get(search, _EXTRA_HATCHES[index % len(_EXTRA_HATCHES)])


def _save(figure: Figure, path: str | os.PathLike | None) -> None:
    if path is None:
        return
    with atomic_file(path) as tmp:
        figure.savefig(tmp, dpi=150, bbox_inches="tight")


@contextmanager
def _optuna_calls() -> Iterator[None]:
    """Run Optuna's study, importance and plot functions quietly and without side effects.

    Optuna's matplotlib functions are experimental (an ``ExperimentalWarning`` on every call) and
    switch pyplot to its ggplot style; creating a study logs a line. The style lasts for the block
    (figures are drawn and saved inside it), the log level and warning filters are restored after.
    """
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        with warnings.catch_warnings(), matplotlib.rc_context():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _distributions(records: Sequence[Mapping[str, Any]]) -> dict[str, BaseDistribution]:
    """One Optuna distribution per parameter, inferred from the values the records hold.

    Numbers become an ``IntDistribution`` (all integers) or a ``FloatDistribution`` over the
    observed minimum to maximum; anything else (strings, booleans, a mix) a
    ``CategoricalDistribution`` of the observed values in order of appearance.
    """
    names = dict.fromkeys(name for record in records for name in record["params"])
    distributions: dict[str, BaseDistribution] = {}
    for name in names:
        values = [r["params"][name] for r in records if name in r["params"]]
        if all(_is_number(v) for v in values):
            if all(isinstance(v, int) for v in values):
                distributions[name] = IntDistribution(min(values), max(values))
            else:
                distributions[name] = FloatDistribution(float(min(values)), float(max(values)))
        else:
            distributions[name] = CategoricalDistribution(list(dict.fromkeys(values)))
    return distributions


def _check_objective(
    records: Sequence[Mapping[str, Any]], metric: str, mode: str | None = None
) -> None:
    """One clear error for a ``mode`` other than max or min, or a record without ``metric``."""
    if mode is not None and mode not in _DIRECTIONS:
        raise AopError(f"mode must be 'max' or 'min', got {mode!r}")
    for record in records:
        if metric not in record["metrics"]:
            raise AopError(
                f"trial {record['trial_id']} of search {record['search']!r} has no metric "
                f"{metric!r} (has: {', '.join(record['metrics'])})"
            )


def _in_search_order(records: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Records by ``iteration``; records without one (-1) follow, in their given order."""
    def key(item: tuple[int, Mapping[str, Any]]) -> tuple[bool, int, int]:
        index, record = item
        return record["iteration"] < 0, record["iteration"], index

    return [record for _, record in sorted(enumerate(records), key=key)]


def records_study(
    records: Sequence[Mapping[str, Any]], metric: str, mode: str = "max", name: str | None = None
) -> optuna.Study:
    """Trial records as an in-memory Optuna study whose objective value is ``metric``.

    Parameters
    ----------
    records : sequence of mapping
        Validated trial records (:func:`aop.analysis.records.validate_record`).
    metric : str
        The key of the records' ``metrics`` that becomes each trial's value.
    mode : str
        ``"max"`` or ``"min"``: the study's direction.
    name : str, optional
        The study's name (Optuna's plots show it in legends).

    Returns
    -------
    optuna.Study
        One complete trial per record, in ``iteration`` order (records without one last, in the
        given order). Distributions are inferred from the records' values: numbers span the
        observed minimum to maximum, strings and booleans are categorical. Each trial keeps the
        record's ``search`` and ``trial_id`` as user attributes.

    Examples
    --------
    >>> records = [
    ...     {"search": "random", "trial_id": str(i), "iteration": i, "metrics": {"score": s},
    ...      "params": {"depth": d, "rate": r, "solver": v}}
    ...     for i, (d, r, v, s) in enumerate([(2, 0.1, "a", 0.5), (4, 0.3, "b", 0.7)])
    ... ]
    >>> study = records_study(records, "score")
    >>> study.best_value, study.best_params["depth"]
    (0.7, 4)
    >>> study.trials[0].distributions["rate"]
    FloatDistribution(high=0.3, log=False, low=0.1, step=None)
    """
    _check_objective(records, metric, mode)
    distributions = _distributions(records)
    trials = []
    for record in _in_search_order(records):
        params = {
            key: float(value) if isinstance(distributions[key], FloatDistribution) else value
            for key, value in record["params"].items()
        }
        trials.append(optuna.trial.create_trial(
            params=params,
            distributions={key: distributions[key] for key in params},
            value=record["metrics"][metric],
            user_attrs={"search": record["search"], "trial_id": record["trial_id"]},
        ))
    with _optuna_calls():
        study = optuna.create_study(direction=_DIRECTIONS[mode], study_name=name)
        study.add_trials(trials)
    return study


def _numeric_parameters(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """Parameters that every record holds as a number, in record order."""
    distributions = _distributions(records)
    return [
        name for name, distribution in distributions.items()
        if not isinstance(distribution, CategoricalDistribution)
        and all(name in r["params"] for r in records)
    ]


def influential_parameters(
    records: Sequence[Mapping[str, Any]], metric: str, count: int = 2
) -> list[str]:
    """The ``count`` numeric parameters that explain most of the variance of ``metric``.

    Importance is Optuna's fANOVA (:class:`optuna.importance.FanovaImportanceEvaluator`, seed 0,
    so the choice is reproducible): a random forest fitted to the metric over the parameters, and
    the share of its variance each parameter explains. Unlike a correlation it also sees an
    optimum inside the range.

    Parameters
    ----------
    records : sequence of mapping
        Validated trial records, typically those that share one value of every categorical
        parameter (as :func:`plot_parameter_contour` draws them).
    metric : str
        The key of the records' ``metrics`` to explain.
    count : int
        How many parameter names to return.

    Returns
    -------
    list of str
        Numeric parameters held by every record that take at least two values, most important
        first (ties, and all of them when ``metric`` is constant, in record order). When fewer
        than ``count`` vary, the constant numeric parameters follow in record order.

    Raises
    ------
    AopError
        With no records, or fewer than ``count`` numeric parameters.
    """
    if not records:
        raise AopError("no trial records to rank parameters by importance")
    numeric = _numeric_parameters(records)
    if len(numeric) < count:
        raise AopError(
            f"trial records need at least {count} numeric parameters, have "
            f"{', '.join(numeric) or 'none'}"
        )
    _check_objective(records, metric)
    varying = [n for n in numeric if len({r["params"][n] for r in records}) > 1]
    importance: dict[str, float] = {}
    if varying and len({r["metrics"][metric] for r in records}) > 1:
        study = records_study(records, metric)
        with _optuna_calls():
            importance = get_param_importances(
                study, evaluator=FanovaImportanceEvaluator(seed=0), params=varying
            )
    ranked = sorted(
        varying,
        key=lambda n: (-np.nan_to_num(importance.get(n, 0.0)), numeric.index(n)),
    )
    return (ranked + [n for n in numeric if n not in varying])[:count]


def _best_slice(
    records: Sequence[Mapping[str, Any]],
    metric: str,
    mode: str,
    fixed: Mapping[str, Any] | None = None,
) -> tuple[list[Mapping[str, Any]], dict[str, Any]]:
    """The records with the values ``fixed`` (default: the best record's categorical values).

    Returns the records and the values they share.
    """
    if not records:
        raise AopError("no trial records for a contour plot")
    _check_objective(records, metric, mode)
    if fixed is None:
        best = best_record(records, metric, mode)
        fixed = {
            name: best["params"][name]
            for name, distribution in _distributions(records).items()
            if isinstance(distribution, CategoricalDistribution) and name in best["params"]
        }
    chosen = [r for r in records if all(r["params"].get(k) == v for k, v in fixed.items())]
    if not chosen:
        raise AopError(f"no trial records with {_describe(fixed)} for a contour plot")
    return chosen, dict(fixed)


def _describe(fixed: Mapping[str, Any]) -> str:
    return ", ".join(f"{name}={value!r}" for name, value in fixed.items())


def plot_parameter_contour(
    records: Sequence[Mapping[str, Any]],
    params: tuple[str, str] | None = None,
    *,
    metric: str,
    mode: str = "max",
    fixed: Mapping[str, Any] | None = None,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """``metric`` over two numeric parameters: Optuna's contour, the optimum and repeated points.

    Parameters
    ----------
    records : sequence of mapping
        Validated trial records (typically of the searches other than a pooled baseline).
    params : (str, str), optional
        The two numeric parameters; default :func:`influential_parameters` of the drawn records.
        Optuna orders the axes by name: the alphabetically first is x.
    metric : str
        The key of the records' ``metrics`` to draw.
    mode : str
        ``"max"`` or ``"min"``: which trial is the optimum.
    fixed : mapping, optional
        Only records with these parameter values are drawn; default the values of every
        categorical parameter of the best record (the trials of the best configuration's
        categorical choices).
    ranges : mapping, optional
        ``{parameter: (low, high)}``: the search ranges the axes span (4 % margin); default the
        range of the drawn points.
    path : path-like, optional
        Where to save the PNG.
    title : str, optional
        First line of the title (default names the metric, the parameters and ``fixed``).

    Returns
    -------
    matplotlib.figure.Figure

    Notes
    -----
    The filled contours and the black dots come from
    :func:`optuna.visualization.matplotlib.plot_contour` (a point evaluated more than once takes
    its best value there). With one distinct value on an axis Optuna draws no contour; the points
    are then drawn coloured by ``metric``. A red number next to a point counts its evaluations;
    a red cross marks the best drawn trial.
    """
    chosen, fixed = _best_slice(records, metric, mode, fixed)
    if params is None:
        params = tuple(influential_parameters(chosen, metric))  # type: ignore[assignment]
    assert params is not None
    numeric = _numeric_parameters(chosen)
    for name in params:
        if any(name not in r["params"] for r in chosen):
            raise AopError(f"parameter {name!r} is missing from some trial records")
        if name not in numeric:
            raise AopError(f"parameter {name!r} is not numeric; a contour plot needs two numbers")
    x, y = sorted(params)
    if x == y:
        raise AopError(f"a contour plot needs two different parameters, got {x!r} twice")
    distributions = _distributions(chosen)
    counts: dict[tuple[float, float], int] = {}
    for record in chosen:
        point = (record["params"][x], record["params"][y])
        counts[point] = counts.get(point, 0) + 1
    optimum = best_record(chosen, metric, mode)
    study = records_study(chosen, metric, mode)

    with _optuna_calls():
        axes = plot_contour(study, params=[x, y], target_name=metric)
        figure = axes.figure
        if not any(isinstance(c, ContourSet) for c in axes.collections):
            dots = axes.scatter(
                [r["params"][x] for r in chosen], [r["params"][y] for r in chosen],
                c=[r["metrics"][metric] for r in chosen], cmap="Blues", s=22,
                edgecolors="black", linewidths=0.6, zorder=3,
            )
            figure.colorbar(dots, ax=axes, format="%.2f").set_label(metric)
            axes.set_xlabel(x)
            axes.set_ylabel(y)
        for (px, py), n in counts.items():
            if n > 1:
                axes.annotate(str(n), (px, py), xytext=(4, 3), textcoords="offset points",
                              color="red", fontsize=7, fontweight="bold", zorder=4)
        axes.scatter([optimum["params"][x]], [optimum["params"][y]], marker="X", s=150, c="red",
                     edgecolors="white", linewidths=1.2, zorder=5,
                     label=f"optimum ({metric} {optimum['metrics'][metric]:.3f})")
        limits = {x: (axes.xaxis, axes.set_xlim), y: (axes.yaxis, axes.set_ylim)}
        for name, (axis, set_limits) in limits.items():
            if ranges and name in ranges:
                low, high = ranges[name]
                margin = 0.04 * (high - low)
                set_limits(low - margin, high + margin)
            if isinstance(distributions[name], IntDistribution):
                axis.set_major_locator(MaxNLocator(integer=True))
        axes.legend(loc="best", frameon=True, framealpha=0.85, fontsize=8, handletextpad=0.3)
        where = f" for {_describe(fixed)}" if fixed else ""
        heading = title or f"{metric} over {x} and {y}{where}"
        repeated = " (red: times evaluated)" if any(n > 1 for n in counts.values()) else ""
        axes.set_title(
            f"{heading}\n{len(chosen)} evaluations, {len(counts)} distinct points{repeated}",
            fontsize=9,
        )
        figure.set_size_inches(6.0, 4.6)
        figure.tight_layout()
        _save(figure, path)
    return figure


def plot_convergence(
    records_by_search: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    metric: str,
    mode: str = "max",
    pooled: Sequence[str] = (),
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """Each search's trials and best ``metric`` so far against the trial number.

    Parameters
    ----------
    records_by_search : mapping
        ``{search: [trial record, ...]}``.
    metric : str
        The key of the records' ``metrics`` to draw.
    mode : str
        ``"max"`` or ``"min"``: what "best so far" means.
    pooled : sequence of str
        Searches drawn as two horizontal lines, the mean of their trials (dashed) and their best
        trial (dotted), instead of a history (a baseline grid has no order).
    path : path-like, optional
        Where to save the PNG.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure

    Notes
    -----
    The histories are :func:`optuna.visualization.matplotlib.plot_optimization_history` of one
    :func:`records_study` per search, trials in ``iteration`` order.
    """
    _check_objective([], metric, mode)
    histories = [
        records_study(records, metric, mode, name=_label(search))
        for search, records in records_by_search.items() if records and search not in pooled
    ]
    best = max if mode == "max" else min
    with _optuna_calls():
        if histories:
            axes = plot_optimization_history(histories, target_name=metric)
        else:
            axes = plt.subplots()[1]
            axes.set_xlabel("Trial")
            axes.set_ylabel(metric)
        figure = axes.figure
        for search in pooled:
            records = records_by_search.get(search) or []
            if not records:
                continue
            _check_objective(records, metric)
            values = [r["metrics"][metric] for r in records]
            axes.axhline(float(np.mean(values)), color="#555555", linestyle="--", linewidth=1,
                         label=f"{_label(search)}: mean ({np.mean(values):.3f})")
            axes.axhline(best(values), color="#555555", linestyle=":", linewidth=1,
                         label=f"{_label(search)}: best ({best(values):.3f})")
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        names = ", ".join(study.study_name for study in histories)
        axes.set_title(
            title or f"Convergence{' of ' + names if names else ''}: best {metric} so far",
            fontsize=10,
        )
        figure.set_size_inches(8.0, 4.2)
        figure.tight_layout()
        _save(figure, path)
    return figure


def plot_search_comparison(
    comparison: SearchComparison,
    colours: Mapping[str, str],
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """Grouped bars of the metrics per search, with the t-tests' stars against the reference.

    Parameters
    ----------
    comparison : SearchComparison
        From :func:`aop.analysis.compare.compare_searches`.
    colours : mapping
        ``{metric: matplotlib colour}``: the metrics drawn, in this order, and their bars' colour
        (the paper's Fig. 4 passes grey, pink, orange and blue for its four scores).
    path : path-like, optional
        Where to save the PNG.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    metrics = list(colours)
    summary = comparison.summary
    missing = [m for m in metrics if m not in summary.columns]
    if missing:
        raise AopError(f"the comparison has no metric {', '.join(map(repr, missing))}")
    searches = list(summary.index)
    n_bars = len(searches)
    width = 0.8 / n_bars
    figure, axes = plt.subplots(figsize=(2.2 + 1.6 * len(metrics) * max(n_bars, 2) / 3, 4.6))
    tops: dict[tuple[str, str], tuple[float, float]] = {}
    for j, search in enumerate(searches):
        sample = comparison.samples[search]
        for i, metric in enumerate(metrics):
            x = i + (j - (n_bars - 1) / 2) * width
            mean = summary.loc[search, metric]
            spread = float(sample[metric].std(ddof=1)) if len(sample) > 1 else 0.0
            spread = 0.0 if not np.isfinite(spread) else spread
            axes.bar(
                x, mean, width * 0.92, color=colours[metric], edgecolor="black",
                linewidth=0.8, hatch=_hatch(search, j), yerr=spread, capsize=2.5,
                error_kw={"elinewidth": 0.8, "ecolor": "#333333"},
            )
            tops[(search, metric)] = (x, mean + spread)
    # scores in [0, 1] keep the paper's axis; larger ones scale the label and bracket offsets
    scale = max(1.0, *(top for _, top in tops.values()))
    for (search, metric), (x, _) in tops.items():
        axes.text(x, 0.015 * scale, f"{summary.loc[search, metric]:.2f}", ha="center",
                  va="bottom", fontsize=7, rotation=90, color="black",
                  bbox={"facecolor": "white", "alpha": 0.7, "pad": 0.6, "edgecolor": "none"})

    # brackets with stars: the reference search against each other one
    reference = comparison.reference
    others = [s for s in searches if s != reference]
    highest = scale
    for metric in metrics:
        if reference not in searches:
            break
        x_ref, _ = tops[(reference, metric)]
        level = max(top for (_, m), (_, top) in tops.items() if m == metric) + 0.04 * scale
        for other in others:
            text = significance_stars(summary.loc[other, f"p_{metric}"]) or "n/a"
            x_other, _ = tops[(other, metric)]
            axes.plot([x_other, x_other, x_ref, x_ref],
                      [level - 0.015 * scale, level, level, level - 0.015 * scale],
                      color="black", linewidth=0.8)
            axes.text((x_other + x_ref) / 2, level + 0.004 * scale, text, ha="center",
                      va="bottom", fontsize=8 if text.startswith("*") else 7)
            level += 0.075 * scale
        highest = max(highest, level)

    axes.set_xticks(range(len(metrics)), [m.upper() for m in metrics])
    for tick, metric in zip(axes.get_xticklabels(), metrics, strict=True):
        tick.set_color(colours[metric])
        tick.set_fontweight("bold")
    axes.set_ylim(0, highest + 0.02 * scale)
    if scale == 1.0:
        axes.set_yticks(np.linspace(0, 1, 6))
    axes.set_ylabel("score (mean; bars: s.d. of the search's sample)")
    axes.spines[["top", "right"]].set_visible(False)
    handles = [
        Patch(facecolor="white", edgecolor="black", hatch=_hatch(s, j),
              label=f"{_label(s)} (n={int(summary.loc[s, 'n'])})")
        for j, s in enumerate(searches)
    ]
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False,
                fontsize=8, title=f"stars: paired t-test vs {_label(reference)}",
                title_fontsize=8, handleheight=1.6)
    if title:
        axes.set_title(title)
    figure.tight_layout()
    _save(figure, path)
    return figure


def make_study_plots(
    study_dir: str | os.PathLike,
    records_by_search: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    *,
    metric: str | None = None,
    mode: str | None = None,
    metrics: Sequence[str] | None = None,
    colours: Mapping[str, str] | None = None,
    pooled: Sequence[str] | None = None,
    main: str | None = None,
    ranges: Mapping[str, tuple[float, float]] | None = None,
    contour_parameters: tuple[str, str] | None = None,
) -> list[Path]:
    """Draw the comparison, convergence and contour plots of a study into ``STUDY_DIR/plots/``.

    Parameters
    ----------
    study_dir : path-like
        The study folder.
    records_by_search : mapping, optional
        Records to plot; default read from ``STUDY_DIR/results/*.jsonl``.
    metric : str, optional
        The objective. Left out, the study folder's ``study.yaml`` says it and, unless given,
        ``mode``, ``metrics``, ``pooled`` and ``main``
        (:func:`aop.analysis.report.read_study_meta`).
    mode : str, optional
        ``"max"`` (default) or ``"min"``: the objective's direction.
    metrics : sequence of str, optional
        The metric columns of the comparison, default ``metric`` alone (``metric`` is put first).
    colours : mapping, optional
        ``{metric: colour}`` of the comparison's bars; a metric without one takes the next colour
        of matplotlib's cycle (``"C0"``, ``"C1"``, ...).
    pooled : sequence of str, optional
        Searches that are pooled baselines (see :func:`aop.analysis.compare.compare_searches`),
        default none.
    main : str, optional
        The study's main search, the reference of the t-tests (default: the last search of
        :func:`aop.analysis.records.order_searches`).
    ranges : mapping, optional
        ``{parameter: (low, high)}``: search ranges the contour's axes span.
    contour_parameters : (str, str), optional
        The two parameters of the contour plot; default :func:`influential_parameters`.

    Returns
    -------
    list of Path
        ``plots/comparison.png``, ``plots/convergence.png`` and, when a search that is not pooled
        has records with two numeric parameters, ``plots/contour_<a>_<b>.png`` (the pair in the
        order given or ranked, most influential first).
    """
    study_dir = Path(study_dir)
    if records_by_search is None:
        records_by_search = read_study_records(study_dir)
    if metric is None:
        meta = read_study_meta(study_dir)
        metric = meta.metric
        mode = meta.mode if mode is None else mode
        metrics = meta.metrics if metrics is None else metrics
        pooled = meta.pooled if pooled is None else pooled
        if main is None and meta.main_search in records_by_search:
            main = meta.main_search
    mode = mode or "max"
    metrics = [metric] if metrics is None else metrics
    pooled = () if pooled is None else pooled
    columns = [metric, *(m for m in metrics if m != metric)]
    palette = {m: (colours or {}).get(m, f"C{i}") for i, m in enumerate(columns)}
    plots = study_dir / "plots"
    comparison = compare_searches(
        records_by_search, pooled=pooled, reference=main, metrics=columns, mode=mode
    )
    name = study_dir.resolve().name
    written = [plots / "comparison.png", plots / "convergence.png"]
    plt.close(plot_search_comparison(comparison, palette, written[0], title=f"Study {name}"))
    plt.close(plot_convergence(
        records_by_search, metric=metric, mode=mode, pooled=pooled, path=written[1]
    ))
    optimised = [r for s, recs in records_by_search.items() if s not in pooled for r in recs]
    if optimised:
        chosen, fixed = _best_slice(optimised, metric, mode)
        if contour_parameters is None and len(_numeric_parameters(chosen)) >= 2:
            contour_parameters = tuple(influential_parameters(chosen, metric))  # type: ignore[assignment]
        if contour_parameters is not None:
            a, b = contour_parameters
            written.append(plots / f"contour_{a}_{b}.png")
            plt.close(plot_parameter_contour(
                chosen, (a, b), metric=metric, mode=mode, fixed=fixed, ranges=ranges,
                path=written[-1],
            ))
    return written
