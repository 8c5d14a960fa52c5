"""Compare the searches of a study: the means of its metrics and per-volume paired t-tests.

This is the analysis behind Fig. 4 of the source paper. Each search is represented by a *sample* of
per-volume scores:

- a pooled search (e.g. a baseline grid over the candidate models) contributes every record's
  per-volume scores, ``n_records * n_volumes`` values (the paper's n_2), and its mean is the mean
  over the whole grid;
- every other search (``random``, ``gp``, ...) contributes the per-volume scores of its best
  configuration (best value of the first metric), ``n_volumes`` values (the paper's n_1).

Two samples are paired by volume: each value of one sample is paired with each value of the other on
the same volume. Between two best configurations that is one pair per volume; between the pooled
baseline and a best configuration it pairs every model's score on a volume with the best
configuration's score on that volume, so the test has n_2 pairs. The test is
:func:`scipy.stats.ttest_rel` (two-sided).

The pairs of a pooled search repeat each volume, so they are not independent draws: with fewer
than :data:`MIN_VOLUMES` distinct volumes a p-value means little, however small. Such a test is
marked not meaningful (``meaningful`` False, no stars), and every test carries the 95 %
confidence interval of the mean paired difference (Student's t), which shows the effect and its
uncertainty either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from aop.analysis.records import best_record, order_searches
from aop.errors import AopError

__all__ = [
    "MIN_VOLUMES",
    "SearchComparison",
    "compare_searches",
    "search_sample",
    "significance_stars",
]

#: Distinct volumes a paired t-test needs before its p-value is reported as meaningful.
MIN_VOLUMES = 5


def significance_stars(p_value: float) -> str:
    """Return ``***`` (p < 0.001), ``**`` (< 0.01), ``*`` (< 0.05), ``n.s.``, or ``""`` for NaN."""
    if p_value is None or not np.isfinite(p_value):
        return ""
    if p_value < 0.001:
        return "***"
    if p_value < 0.01:
        return "**"
    if p_value < 0.05:
        return "*"
    return "n.s."


def search_sample(
    records: Sequence[Mapping[str, Any]],
    pooled: bool,
    metrics: Sequence[str],
    metric: str | None = None,
    mode: str = "max",
    group: str | None = None,
) -> pd.DataFrame:
    """Per-volume scores that represent one search.

    Parameters
    ----------
    records : sequence of mapping
        Validated trial records of one search.
    pooled : bool
        True: every record contributes (baseline). False: only the best record (best ``metric``).
    metrics : sequence of str
        The metric columns.
    metric, mode : str
        What "best" means (default metric: the first of ``metrics``).
    group : str, optional
        A parameter whose value becomes a column (the study kind's group, e.g. its model).

    Returns
    -------
    DataFrame
        Columns ``[group,] trial_id, volume, *metrics``; one row per (record, volume). A record
        without per-volume scores gives one row with ``volume = None`` and its mean scores.
    """
    chosen = list(records) if pooled else [best_record(records, metric or metrics[0], mode)]
    columns = [*([group] if group else []), "trial_id", "volume", *metrics]
    rows = []
    for record in chosen:
        base = {"trial_id": record["trial_id"]}
        if group:
            base[group] = record["params"].get(group, "")
        per_volume = record.get("per_volume") or {}
        if not per_volume:
            values = record["metrics"]
            rows.append({**base, "volume": None, **{m: values.get(m, np.nan) for m in metrics}})
        for volume, scores in sorted(per_volume.items()):
            rows.append({**base, "volume": volume, **{m: scores.get(m, np.nan) for m in metrics}})
    return pd.DataFrame(rows, columns=columns)


def _python(value: Any) -> Any:
    """NumPy scalars as Python scalars."""
    return value.item() if isinstance(value, np.generic) else value


def _paired(a: pd.DataFrame, b: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The pairs of two samples on one metric: columns ``volume``, ``<metric>_a``, ``_b``."""
    left = a.loc[a["volume"].notna(), ["volume", metric]]
    right = b.loc[b["volume"].notna(), ["volume", metric]]
    return left.merge(right, on="volume", suffixes=("_a", "_b")).dropna()


def _test(pairs: pd.DataFrame, metric: str) -> dict[str, Any]:
    """The paired t-test of ``a - b`` and the 95 % confidence interval of its mean."""
    a, b = pairs[f"{metric}_a"].to_numpy(float), pairs[f"{metric}_b"].to_numpy(float)
    diff = a - b
    statistic = p_value = low = high = np.nan
    if len(diff) >= 2 and np.ptp(diff) > 0:
        result = stats.ttest_rel(a, b)
        statistic, p_value = float(result.statistic), float(result.pvalue)
        low, high = result.confidence_interval(0.95)
    elif len(diff) >= 1:
        low = high = float(diff.mean())  # constant differences: no spread to test
    volumes = int(pairs["volume"].nunique())
    meaningful = volumes >= MIN_VOLUMES and np.isfinite(p_value)
    return {
        "n_pairs": len(diff), "n_volumes": volumes,
        "mean_a": float(a.mean()) if len(a) else np.nan,
        "mean_b": float(b.mean()) if len(b) else np.nan,
        "difference": float(diff.mean()) if len(diff) else np.nan,
        "ci_low": float(low), "ci_high": float(high), "statistic": statistic,
        "p_value": p_value, "meaningful": bool(meaningful),
        "stars": significance_stars(p_value) if meaningful else "",
    }  # fmt: skip


@dataclass
class SearchComparison:
    """Result of :func:`compare_searches`.

    Attributes
    ----------
    summary : DataFrame
        Indexed by search: the group parameter (if any) and ``trial_id`` of the best
        configuration (pooled searches: ``"all"``), ``n`` (sample size), the means of the
        metrics, and against the reference search (NaN for the reference itself): ``p_<metric>``
        the paired t-test's p-value, ``ci_<metric>`` the 95 % interval of the reference's mean
        paired difference to this search, ``tested_<metric>`` whether the test is meaningful.
    tests : DataFrame
        One row per (search_a, search_b, metric) for every pair of searches: ``n_pairs``,
        ``n_volumes`` (distinct volumes among them), ``mean_a``, ``mean_b`` (means over the paired
        values), ``difference`` (mean of ``a - b``) with its 95 % confidence interval
        ``ci_low``, ``ci_high``, ``statistic`` and ``p_value`` of ``ttest_rel(a, b)`` (NaN with
        fewer than two pairs or constant differences), ``meaningful`` (at least
        :data:`MIN_VOLUMES` volumes) and ``stars`` (empty when not meaningful).
    samples : dict of DataFrame
        The per-volume sample of each search (see :func:`search_sample`).
    reference : str
        The search every other search is tested against in ``summary`` (the main search).
    """

    summary: pd.DataFrame
    tests: pd.DataFrame
    samples: dict[str, pd.DataFrame]
    reference: str

    def test(self, search_a: str, search_b: str, metric: str) -> dict[str, Any]:
        """The paired test of ``search_a - search_b`` on one metric, whichever order it ran in.

        The difference and its confidence interval are oriented as ``search_a - search_b``.
        """
        tests = self.tests[self.tests["metric"] == metric]
        for a, b, sign in ((search_a, search_b, 1.0), (search_b, search_a, -1.0)):
            rows = tests[(tests["search_a"] == a) & (tests["search_b"] == b)]
            if not rows.empty:
                row = rows.iloc[0].to_dict()
                low, high = sorted((sign * row["ci_low"], sign * row["ci_high"]))
                return {**row, "difference": sign * row["difference"], "ci_low": low,
                        "ci_high": high}  # fmt: skip
        raise AopError(f"no test between searches {search_a!r} and {search_b!r} on {metric!r}")

    def p_value(self, search_a: str, search_b: str, metric: str) -> float:
        """The p-value of the paired t-test between two searches on one metric (order-free)."""
        return float(self.test(search_a, search_b, metric)["p_value"])

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form (NaN becomes None)."""

        def plain(frame: pd.DataFrame) -> list[dict[str, Any]]:
            records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
            return [{k: _python(v) for k, v in record.items()} for record in records]

        return {
            "reference": self.reference,
            "summary": plain(self.summary.reset_index()),
            "tests": plain(self.tests),
        }


def compare_searches(
    records_by_search: Mapping[str, Sequence[Mapping[str, Any]]],
    pooled: Iterable[str] = (),
    reference: str | None = None,
    *,
    metrics: Sequence[str],
    mode: str = "max",
    group: str | None = None,
) -> SearchComparison:
    """Compare searches by their mean scores and per-volume paired t-tests.

    Parameters
    ----------
    records_by_search : mapping
        ``{search name: [trial record, ...]}`` (validated records, e.g. from
        :func:`aop.analysis.records.read_study_records`). Empty searches are left out.
    pooled : iterable of str
        Searches represented by all their records instead of their best one (a baseline grid).
    reference : str, optional
        The search the summary's p-values refer to, normally the study's main search; default
        the last search of :func:`aop.analysis.records.order_searches`.
    metrics : sequence of str
        The metrics compared; the first one decides each search's best configuration.
    mode : str
        ``"max"`` or ``"min"``: the direction of the first metric.
    group : str, optional
        A parameter shown beside each search's best configuration (see :func:`search_sample`).

    Returns
    -------
    SearchComparison
    """
    names = order_searches(
        (name for name, recs in records_by_search.items() if recs), main=reference
    )
    if not names:
        raise AopError("no trial records to compare")
    pooled = set(pooled)
    if reference is None:
        reference = names[-1]
    if reference not in names:
        raise AopError(f"reference search {reference!r} has no records (have: {', '.join(names)})")
    samples = {
        name: search_sample(records_by_search[name], name in pooled, metrics, mode=mode,
                            group=group)
        for name in names
    }

    tests = []
    for i, name_a in enumerate(names):
        for name_b in names[i + 1 :]:
            for metric in metrics:
                pairs = _paired(samples[name_a], samples[name_b], metric)
                tests.append({"search_a": name_a, "search_b": name_b, "metric": metric,
                              **_test(pairs, metric)})  # fmt: skip
    columns = ["search_a", "search_b", "metric", "n_pairs", "n_volumes", "mean_a", "mean_b",
               "difference", "ci_low", "ci_high", "statistic", "p_value", "meaningful", "stars"]
    tests_frame = pd.DataFrame(tests, columns=columns)
    comparison = SearchComparison(pd.DataFrame(), tests_frame, samples, reference)

    rows = []
    for name in names:
        sample = samples[name]
        is_pooled = name in pooled
        row: dict[str, Any] = {"search": name}
        if group:
            row[group] = "all" if is_pooled else sample[group].iloc[0]
        row["trial_id"] = "all" if is_pooled else sample["trial_id"].iloc[0]
        row["n"] = int(len(sample))
        for metric in metrics:
            row[metric] = float(sample[metric].mean())
        for metric in metrics:
            test = comparison.test(reference, name, metric) if name != reference else {}
            row[f"p_{metric}"] = test.get("p_value", np.nan)
            row[f"ci_{metric}"] = (test.get("ci_low", np.nan), test.get("ci_high", np.nan))
            row[f"tested_{metric}"] = bool(test.get("meaningful", False))
        rows.append(row)
    comparison.summary = pd.DataFrame(rows).set_index("search")
    return comparison
