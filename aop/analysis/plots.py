"""Figures of a segmentation study (matplotlib, Agg backend, PNG).

- :func:`plot_search_comparison`: grouped bars of IPQ, SQ, RQ, IQ for baseline, random search and
  BO, with standard deviations over volumes and the paired t-test's stars (Fig. 4 of the paper).
- :func:`plot_parameter_contour`: IPQ over two post-processing parameters for the best model, filled
  contours through the explored points, dots for the explored points (a red count where one point
  was evaluated more than once) and a cross on the optimum (Fig. 5 of the paper).
- :func:`plot_convergence`: best IPQ so far against the trial number, per search.
- :func:`make_study_plots`: all three for a study folder, saved in ``STUDY_DIR/plots/``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from matplotlib.tri import Triangulation  # noqa: E402

from aop.analysis.compare import (  # noqa: E402
    SearchComparison,
    compare_searches,
    significance_stars,
)
from aop.analysis.records import best_record, read_study_records  # noqa: E402
from aop.errors import AopError  # noqa: E402
from aop.metrics import IPQ_SCORES as METRICS  # noqa: E402
from aop.outputs import atomic_file
from aop.segmentation.params import PARAMETER_RANGES  # noqa: E402

__all__ = [
    "METRIC_COLOURS",
    "choose_contour_parameters",
    "effect_strength",
    "make_study_plots",
    "plot_convergence",
    "plot_parameter_contour",
    "plot_search_comparison",
]

#: Colours of the paper's Fig. 4: IPQ grey, SQ pink, RQ orange, IQ blue.
METRIC_COLOURS = {"ipq": "#8c8c8c", "sq": "#e377c2", "rq": "#ff9f40", "iq": "#4a90d9"}
#: Hatching per search: baseline filled, random search thick stripes, BO thin stripes.
SEARCH_HATCHES = {"baseline": "", "random": "//", "gp": "\\\\\\\\"}
SEARCH_LABELS = {
    "baseline": "baseline", "random": "random search", "gp": "BO (GP)", "tpe": "BO (TPE)",
    "smac": "BO (SMAC)",
}
_EXTRA_HATCHES = ("xx", "..", "++", "oo")


def _label(search: str) -> str:
    return SEARCH_LABELS.get(search, search)


def _hatch(search: str, index: int) -> str:
    return SEARCH_HATCHES.get(search, _EXTRA_HATCHES[index % len(_EXTRA_HATCHES)])


def _save(figure: Figure, path: str | os.PathLike | None) -> None:
    if path is None:
        return
    with atomic_file(path) as tmp:
        figure.savefig(tmp, dpi=150, bbox_inches="tight")


def plot_search_comparison(
    comparison: SearchComparison,
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """Grouped bars of the four metrics per search, with the t-tests' stars against the reference.

    Parameters
    ----------
    comparison : SearchComparison
        From :func:`aop.analysis.compare.compare_searches`.
    path : path-like, optional
        Where to save the PNG.
    title : str, optional
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    summary = comparison.summary
    searches = list(summary.index)
    n_bars = len(searches)
    width = 0.8 / n_bars
    figure, axes = plt.subplots(figsize=(2.2 + 1.6 * len(METRICS) * max(n_bars, 2) / 3, 4.6))
    tops: dict[tuple[str, str], float] = {}
    for j, search in enumerate(searches):
        sample = comparison.samples[search]
        for i, metric in enumerate(METRICS):
            x = i + (j - (n_bars - 1) / 2) * width
            mean = summary.loc[search, metric]
            spread = float(sample[metric].std(ddof=1)) if len(sample) > 1 else 0.0
            spread = 0.0 if not np.isfinite(spread) else spread
            axes.bar(
                x, mean, width * 0.92, color=METRIC_COLOURS[metric], edgecolor="black",
                linewidth=0.8, hatch=_hatch(search, j), yerr=spread, capsize=2.5,
                error_kw={"elinewidth": 0.8, "ecolor": "#333333"},
            )
            axes.text(x, 0.015, f"{mean:.2f}", ha="center", va="bottom", fontsize=7, rotation=90,
                      color="black", bbox={"facecolor": "white", "alpha": 0.7, "pad": 0.6,
                                           "edgecolor": "none"})
            tops[(search, metric)] = (x, mean + spread)

    # brackets with stars: the reference search against each other one
    reference = comparison.reference
    others = [s for s in searches if s != reference]
    highest = 1.0
    for metric in METRICS:
        if reference not in searches:
            break
        x_ref, top_ref = tops[(reference, metric)]
        level = max(top for (s, m), (_, top) in tops.items() if m == metric) + 0.04
        for other in others:
            text = significance_stars(comparison.summary.loc[other, f"p_{metric}"]) or "n/a"
            x_other, _ = tops[(other, metric)]
            axes.plot([x_other, x_other, x_ref, x_ref],
                      [level - 0.015, level, level, level - 0.015], color="black", linewidth=0.8)
            axes.text((x_other + x_ref) / 2, level + 0.004, text, ha="center", va="bottom",
                      fontsize=8 if text.startswith("*") else 7)
            level += 0.075
        highest = max(highest, level)

    axes.set_xticks(range(len(METRICS)), [m.upper() for m in METRICS])
    for tick, metric in zip(axes.get_xticklabels(), METRICS, strict=True):
        tick.set_color(METRIC_COLOURS[metric])
        tick.set_fontweight("bold")
    axes.set_ylim(0, highest + 0.02)
    axes.set_yticks(np.linspace(0, 1, 6))
    axes.set_ylabel("score (mean over volumes; bars: s.d.)")
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


def _optimisation_records(
    records_by_search: Mapping[str, Sequence[Mapping[str, Any]]], pooled: Sequence[str]
) -> list[Mapping[str, Any]]:
    return [r for name, recs in records_by_search.items() if name not in pooled for r in recs]


def effect_strength(values: np.ndarray, scores: np.ndarray, n_bins: int = 5) -> float:
    """Share of the variance of ``scores`` explained by groups of ``values``, chance-corrected.

    ``values`` with at most ``2 * n_bins`` distinct values (e.g. an integer radius) are grouped by
    value, others are cut into ``n_bins`` quantile bins. The result is epsilon squared,
    ``(SS_between - (k - 1) MS_within) / SS_total`` clipped to [0, 1]: the correlation ratio less
    what k groups explain by chance, so parameters with many groups are not favoured. Unlike a
    correlation it also sees an optimum inside the range (e.g. best IPQ at a small erosion).
    """
    values = np.asarray(values, dtype=float)
    scores = np.asarray(scores, dtype=float)
    keep = np.isfinite(values) & np.isfinite(scores)
    values, scores = values[keep], scores[keep]
    distinct = np.unique(values)
    total = float(((scores - scores.mean()) ** 2).sum()) if scores.size else 0.0
    if total == 0 or distinct.size < 2:
        return 0.0
    if distinct.size <= 2 * n_bins:
        groups = np.searchsorted(distinct, values)
    else:
        groups = np.digitize(values, np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1]))
    labels = np.unique(groups)
    between = sum(
        scores[groups == g].size * (scores[groups == g].mean() - scores.mean()) ** 2
        for g in labels
    )
    k, n = labels.size, scores.size
    within_mean_square = (total - between) / (n - k) if n > k else 0.0
    return float(np.clip((between - (k - 1) * within_mean_square) / total, 0.0, 1.0))


def choose_contour_parameters(records: Sequence[Mapping[str, Any]]) -> tuple[str, str]:
    """The two parameters that explain most of the variance of IPQ (:func:`effect_strength`).

    Parameters that never vary are skipped; with fewer than two varying parameters the first
    parameters (in record order) fill in.
    """
    if not records:
        raise AopError("no trial records to choose contour parameters from")
    names = [
        name for name, value in records[0]["params"].items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]
    ipq = np.array([r["metrics"]["ipq"] for r in records], dtype=float)
    strength = {}
    for name in names:
        values = np.array([r["params"].get(name, np.nan) for r in records], dtype=float)
        if np.unique(values[np.isfinite(values)]).size >= 2:
            strength[name] = effect_strength(values, ipq)
    chosen = sorted(strength, key=lambda n: (-strength[n], names.index(n)))[:2]
    for name in names:
        if len(chosen) == 2:
            break
        if name not in chosen:
            chosen.append(name)
    if len(chosen) < 2:
        raise AopError("trial records need at least two parameters for a contour plot")
    return chosen[0], chosen[1]


def plot_parameter_contour(
    records: Sequence[Mapping[str, Any]],
    x: str | None = None,
    y: str | None = None,
    model: str | None = None,
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """IPQ over two parameters for one model: contours, explored points and the optimum.

    Parameters
    ----------
    records : sequence of mapping
        Trial records (typically of the random and BO searches).
    x, y : str, optional
        Parameter names; default :func:`choose_contour_parameters`.
    model : str, optional
        Only records of this model are drawn; default the model of the best record.
    path : path-like, optional
        Where to save the PNG.
    title : str, optional
        Figure title (default names the model).

    Returns
    -------
    matplotlib.figure.Figure

    Notes
    -----
    Points evaluated more than once (same x and y) are averaged and their count is printed in red.
    With fewer than three distinct, non-collinear points no contour is drawn, only the points. The
    axes span the parameters' search ranges (:data:`aop.segmentation.params.PARAMETER_RANGES`).
    """
    if not records:
        raise AopError("no trial records for a contour plot")
    best = best_record(records)
    model = model or best["params"].get("model")
    chosen = [r for r in records if r["params"].get("model") == model]
    if not chosen:
        raise AopError(f"no trial records of model {model!r} for a contour plot")
    if x is None or y is None:
        x, y = choose_contour_parameters(chosen)
    for name in (x, y):
        if any(name not in r["params"] for r in chosen):
            raise AopError(f"parameter {name!r} is missing from some trial records")
    frame = pd.DataFrame(
        {"x": [r["params"][x] for r in chosen], "y": [r["params"][y] for r in chosen],
         "ipq": [r["metrics"]["ipq"] for r in chosen]}
    )
    points = frame.groupby(["x", "y"], as_index=False).agg(ipq=("ipq", "mean"), n=("ipq", "size"))
    optimum = best_record(chosen)

    figure, axes = plt.subplots(figsize=(5.6, 4.4))
    low, high = float(points["ipq"].min()), float(points["ipq"].max())
    levels = np.linspace(low, high if high > low else low + 1e-6, 12)
    drawn = None
    if len(points) >= 3:
        try:
            triangulation = Triangulation(points["x"], points["y"])
            drawn = axes.tricontourf(triangulation, points["ipq"], levels=levels, cmap="viridis")
        except (ValueError, RuntimeError):  # collinear or degenerate points
            drawn = None
    scatter = axes.scatter(points["x"], points["y"], c=points["ipq"], cmap="viridis",
                           vmin=levels[0], vmax=levels[-1], s=22, edgecolors="black",
                           linewidths=0.6, zorder=3)
    for row in points.itertuples():
        if row.n > 1:
            axes.annotate(str(row.n), (row.x, row.y), xytext=(4, 3), textcoords="offset points",
                          color="red", fontsize=7, fontweight="bold", zorder=4)
    axes.scatter([optimum["params"][x]], [optimum["params"][y]], marker="X", s=150, c="red",
                 edgecolors="white", linewidths=1.2, zorder=5,
                 label=f"optimum (IPQ {optimum['metrics']['ipq']:.3f})")
    colourbar = figure.colorbar(drawn if drawn is not None else scatter, ax=axes, format="%.2f")
    colourbar.set_label("IPQ")
    for name, axis, set_limits in ((x, axes.xaxis, axes.set_xlim), (y, axes.yaxis, axes.set_ylim)):
        if name in PARAMETER_RANGES:
            kind, low, high = PARAMETER_RANGES[name]
            margin = 0.04 * (high - low)
            set_limits(low - margin, high + margin)
            if kind is int:
                axis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel(x)
    axes.set_ylabel(y)
    axes.legend(loc="best", frameon=True, framealpha=0.85, fontsize=8, handletextpad=0.3)
    heading = title or f"IPQ of model '{model}' over {x} and {y}"
    repeated = " (red: times evaluated)" if (points["n"] > 1).any() else ""
    axes.set_title(
        f"{heading}\n{len(chosen)} evaluations, {len(points)} distinct points{repeated}",
        fontsize=9,
    )
    figure.tight_layout()
    _save(figure, path)
    return figure


def plot_convergence(
    records_by_search: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike | None = None,
    pooled: Sequence[str] = ("baseline",),
    title: str | None = None,
) -> Figure:
    """Best IPQ so far against the trial number for each search; baseline as horizontal lines.

    Trials are ordered by their ``iteration`` field (records without one keep file order).
    """
    figure, axes = plt.subplots(figsize=(6.4, 4.0))
    colours = {"random": "#ff7f0e", "gp": "#1f77b4"}
    others = iter(["#2ca02c", "#9467bd", "#8c564b", "#17becf"])
    for search, records in records_by_search.items():
        if not records:
            continue
        if search in pooled:
            mean = float(np.mean([r["metrics"]["ipq"] for r in records]))
            best = max(r["metrics"]["ipq"] for r in records)
            axes.axhline(mean, color="#555555", linestyle="--", linewidth=1,
                         label=f"{_label(search)}: mean of models ({mean:.3f})")
            axes.axhline(best, color="#555555", linestyle=":", linewidth=1,
                         label=f"{_label(search)}: best model ({best:.3f})")
            continue
        ordered = sorted(
            enumerate(records), key=lambda item: (item[1]["iteration"] < 0, item[1]["iteration"],
                                                  item[0])
        )
        ipq = np.array([r["metrics"]["ipq"] for _, r in ordered])
        trials = np.arange(1, len(ipq) + 1)
        colour = colours.get(search) or next(others, "black")
        axes.scatter(trials, ipq, s=10, color=colour, alpha=0.35, linewidths=0)
        axes.step(trials, np.maximum.accumulate(ipq), where="post", color=colour, linewidth=1.8,
                  label=f"{_label(search)}: best so far ({ipq.max():.3f})")
    axes.set_xlabel("trial")
    axes.set_ylabel("IPQ")
    axes.set_ylim(bottom=-0.02)  # trials at IPQ 0 stay visible
    axes.spines[["top", "right"]].set_visible(False)
    axes.legend(fontsize=8, frameon=False, loc="lower right")
    axes.set_title(title or "Convergence: best IPQ so far (dots: single trials)", fontsize=10)
    figure.tight_layout()
    _save(figure, path)
    return figure


def make_study_plots(
    study_dir: str | os.PathLike,
    records_by_search: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    contour_parameters: tuple[str, str] | None = None,
    pooled: Sequence[str] = ("baseline",),
    main: str | None = None,
) -> list[Path]:
    """Draw the comparison, convergence and contour plots of a study into ``STUDY_DIR/plots/``.

    Parameters
    ----------
    study_dir : path-like
        The study folder.
    records_by_search : mapping, optional
        Records to plot; default read from ``STUDY_DIR/results/*.jsonl``.
    contour_parameters : (str, str), optional
        The two parameters of the contour plot; default :func:`choose_contour_parameters`.
    pooled : sequence of str
        Searches that are pooled baselines (see :func:`aop.analysis.compare.compare_searches`).
    main : str, optional
        The study's main search, the reference of the t-tests.

    Returns
    -------
    list of Path
        ``plots/comparison.png``, ``plots/convergence.png`` and, when a non-baseline search has
        records, ``plots/contour_<x>_<y>.png``.
    """
    study_dir = Path(study_dir)
    if records_by_search is None:
        records_by_search = read_study_records(study_dir)
    plots = study_dir / "plots"
    written = []
    comparison = compare_searches(records_by_search, pooled=pooled, reference=main)
    name = study_dir.resolve().name
    for path, draw in (
        (plots / "comparison.png",
         lambda p: plot_search_comparison(comparison, p, title=f"Study {name}")),
        (plots / "convergence.png", lambda p: plot_convergence(records_by_search, p, pooled)),
    ):
        plt.close(draw(path))
        written.append(path)
    optimised = _optimisation_records(records_by_search, pooled)
    if optimised:
        best = best_record(optimised)
        model = best["params"].get("model")
        chosen = [r for r in optimised if r["params"].get("model") == model]
        x, y = contour_parameters or choose_contour_parameters(chosen)
        path = plots / f"contour_{x}_{y}.png"
        plt.close(plot_parameter_contour(optimised, x, y, model=model, path=path))
        written.append(path)
    return written
