"""Pareto fronts of trial records with several objectives: front, pick, hypervolume.

A study with several objectives (``objectives`` in its experiment file, e.g. validation accuracy
to maximise and latency to minimise) has no single best trial: its result is the **Pareto
front**, the trials that no other trial dominates. Conventions fixed here:

- An objective is a metric and a mode (``max`` or ``min``), given as a mapping ``{"metric",
  "mode"}`` or an object with those attributes (:class:`aop.config.ObjectiveConfig`).
- Trial *a* dominates trial *b* when *a* is at least as good in every objective and better in
  one. Trials with equal values in every objective do not dominate each other: both are on the
  front. A record without every objective among its ``metrics`` takes no part.
- The front is ordered best first by the first objective, ties by the next ones, then by the
  records' order (:func:`lexicographic_order`); the first of that order is the study's **pick**
  (``best.yaml``), always on the front.
- ``fastest-within`` *d* (:func:`pick_trial`): among the trials whose first objective is within
  *d* of the best first objective, the best by the second objective (ties: the first objective,
  then the others): for ``[accuracy max, latency min]``, the fastest design at most *d* below the
  best accuracy.
- **Hypervolume** (:func:`hypervolume`): the volume the front dominates up to a reference point,
  in minimisation form. :func:`hypervolume_history` scales every objective to [0, 1] between the
  best (0) and the worst (1) value among the records given (:func:`objective_bounds`) and puts
  the reference point at 1.1 in each, so that the trials with a worst value count too: a
  hypervolume of 1.1 ** k (k objectives) would be one trial best in everything, and the values
  of several searches scaled by one set of bounds compare.

Everything works on validated trial records (:mod:`aop.analysis.records`); nothing here reads
files or imports Ray.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from aop.errors import AopError

__all__ = [
    "REFERENCE_MARGIN",
    "dominates",
    "hypervolume",
    "hypervolume_history",
    "lexicographic_order",
    "objective_bounds",
    "objective_pairs",
    "pareto_front",
    "pareto_rows",
    "pick_trial",
]

#: Where the reference point of :func:`hypervolume_history` lies, in scaled units (1: the worst
#: value of each objective).
REFERENCE_MARGIN = 1.1
#: The rules of :func:`pick_trial`.
PICK_RULES = ("fastest-within",)

_Records = Iterable[Mapping[str, Any]]


def objective_pairs(objectives: Iterable[Any]) -> list[tuple[str, str]]:
    """``[(metric, mode), ...]`` of objectives given as mappings, ``ObjectiveConfig`` objects or
    ``(metric, mode)`` pairs.

    >>> objective_pairs([{"metric": "acc", "mode": "max"}, {"metric": "ms", "mode": "min"}])
    [('acc', 'max'), ('ms', 'min')]
    """
    pairs = []
    for objective in objectives:
        if isinstance(objective, Mapping):
            metric, mode = objective.get("metric"), objective.get("mode")
        elif isinstance(objective, tuple) and len(objective) == 2:
            metric, mode = objective
        else:
            metric, mode = getattr(objective, "metric", None), getattr(objective, "mode", None)
        if not isinstance(metric, str) or mode not in ("max", "min"):
            raise AopError(f"objective {objective!r}: expected a metric and a mode (max or min)")
        pairs.append((metric, str(mode)))
    if not pairs:
        raise AopError("no objectives given")
    return pairs


def _costs(record: Mapping[str, Any], pairs: Sequence[tuple[str, str]]) -> tuple[float, ...] | None:
    """The record's objectives in minimisation form (``max`` negated); None when one is missing."""
    metrics = record["metrics"]
    if any(metric not in metrics for metric, _ in pairs):
        return None
    return tuple(-float(metrics[m]) if mode == "max" else float(metrics[m]) for m, mode in pairs)


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether cost vector ``a`` dominates ``b`` (minimisation: no worse anywhere, better once).

    >>> dominates((1, 2), (1, 3)), dominates((1, 2), (1, 2)), dominates((0, 3), (1, 2))
    (True, False, False)
    """
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(
        x < y for x, y in zip(a, b, strict=True)
    )


def lexicographic_order(
    records: _Records, objectives: Iterable[Any]
) -> list[dict[str, Any]]:
    """The records with every objective, best first by the first objective, then the next ones.

    Records equal in every objective keep their given order.
    """
    pairs = objective_pairs(objectives)
    scored = [(costs, index, dict(r)) for index, r in enumerate(records)
              if (costs := _costs(r, pairs)) is not None]  # fmt: skip
    return [record for _, _, record in sorted(scored, key=lambda item: (item[0], item[1]))]


def pareto_front(records: _Records, objectives: Iterable[Any]) -> list[dict[str, Any]]:
    """The records that no other record dominates, in :func:`lexicographic_order`.

    Parameters
    ----------
    records : iterable of mapping
        Validated trial records; those without every objective are left out.
    objectives : iterable
        ``{"metric", "mode"}`` mappings or ``ObjectiveConfig`` objects.

    Returns
    -------
    list of dict
        The non-dominated records, best first by the first objective.

    Examples
    --------
    >>> records = [{"trial_id": t, "metrics": {"acc": a, "ms": m}}
    ...            for t, a, m in [("a", 0.9, 5.0), ("b", 0.8, 1.0), ("c", 0.7, 2.0)]]
    >>> [r["trial_id"] for r in pareto_front(records, [{"metric": "acc", "mode": "max"},
    ...                                                 {"metric": "ms", "mode": "min"}])]
    ['a', 'b']
    """
    pairs = objective_pairs(objectives)
    front: list[tuple[tuple[float, ...], dict[str, Any]]] = []
    # in lexicographic order a dominating record comes first, and whatever dominates a dropped
    # record dominates what that record dominates: comparing with the kept ones is enough
    for record in lexicographic_order(records, pairs):
        costs = _costs(record, pairs)
        assert costs is not None
        if not any(dominates(kept, costs) for kept, _ in front):
            front.append((costs, record))
    return [record for _, record in front]


def pick_trial(
    records: _Records, objectives: Iterable[Any], rule: str | None = None, tolerance: float = 0.0
) -> dict[str, Any]:
    """One trial of a multi-objective search: the pick, or the one a rule chooses.

    Parameters
    ----------
    records : iterable of mapping
        Validated trial records (those without every objective are left out).
    objectives : iterable
        The study's objectives, first the one the tolerance applies to.
    rule : {None, "fastest-within"}
        None: the first of :func:`lexicographic_order` (``best.yaml``'s pick).
        ``fastest-within``: among the records whose first objective is within ``tolerance`` of
        the best one, the best by the second objective (ties: by the first, then the others).
    tolerance : float
        How far below the best (above, for ``min``) the first objective may be; >= 0.

    Returns
    -------
    dict
        The chosen record, on the Pareto front.

    Raises
    ------
    AopError
        An unknown rule, a negative or non-finite tolerance, ``fastest-within`` with one
        objective, or no record with every objective.

    Examples
    --------
    >>> records = [{"trial_id": t, "metrics": {"acc": a, "ms": m}}
    ...            for t, a, m in [("a", 0.90, 5.0), ("b", 0.89, 1.0), ("c", 0.80, 0.5)]]
    >>> objectives = [{"metric": "acc", "mode": "max"}, {"metric": "ms", "mode": "min"}]
    >>> pick_trial(records, objectives)["trial_id"], pick_trial(
    ...     records, objectives, "fastest-within", 0.02)["trial_id"]
    ('a', 'b')
    """
    pairs = objective_pairs(objectives)
    ordered = lexicographic_order(records, pairs)
    if not ordered:
        metrics = ", ".join(m for m, _ in pairs)
        raise AopError(f"no trial has every objective ({metrics}) to choose from")
    if rule is None:
        return ordered[0]
    if rule not in PICK_RULES:
        raise AopError(f"pick: unknown rule {rule!r} (known: {', '.join(PICK_RULES)})")
    if len(pairs) < 2:
        raise AopError(f"pick: {rule} needs a second objective; the study has one ({pairs[0][0]})")
    if not math.isfinite(tolerance) or tolerance < 0:
        raise AopError(f"pick: {rule}: the tolerance must be a number >= 0, got {tolerance:g}")
    first = _costs(ordered[0], pairs)
    assert first is not None
    within = [r for r in ordered if (c := _costs(r, pairs)) is not None and c[0] <= first[0]
              + tolerance]  # fmt: skip
    reordered = [pairs[1], pairs[0], *pairs[2:]]
    return lexicographic_order(within, reordered)[0]


def pareto_rows(
    records: _Records, objectives: Iterable[Any], params: bool = True
) -> list[dict[str, Any]]:
    """The front as table rows: ``search``, ``trial_id``, each objective, then the parameters.

    >>> pareto_rows([{"search": "gp", "trial_id": "a", "params": {"lr": 0.1},
    ...               "metrics": {"acc": 0.9, "ms": 2.0}}], [("acc", "max"), ("ms", "min")])
    [{'search': 'gp', 'trial_id': 'a', 'acc': 0.9, 'ms': 2.0, 'lr': 0.1}]
    """
    pairs = objective_pairs(objectives)
    rows = []
    for record in pareto_front(records, pairs):
        row = {"search": record.get("search"), "trial_id": record["trial_id"]}
        row |= {metric: record["metrics"][metric] for metric, _ in pairs}
        if params:
            row |= {k: v for k, v in record.get("params", {}).items() if k not in row}
        rows.append(row)
    return rows


def objective_bounds(
    records: _Records, objectives: Iterable[Any]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(best, worst)`` cost of each objective over the records (minimisation form).

    Raises
    ------
    AopError
        When no record has every objective.
    """
    pairs = objective_pairs(objectives)
    costs = [c for r in records if (c := _costs(r, pairs)) is not None]
    if not costs:
        raise AopError(f"no trial has every objective ({', '.join(m for m, _ in pairs)})")
    return (tuple(min(column) for column in zip(*costs, strict=True)),
            tuple(max(column) for column in zip(*costs, strict=True)))  # fmt: skip


def hypervolume(points: Iterable[Sequence[float]], reference: Sequence[float]) -> float:
    """The volume that ``points`` dominate up to ``reference``, every coordinate minimised.

    Points not better than the reference in every coordinate add nothing. Two coordinates are
    swept once (sorted by the first); more are sliced along the last coordinate, each slice the
    hypervolume of one dimension fewer.

    Examples
    --------
    >>> hypervolume([(1.0, 2.0), (2.0, 1.0)], (3.0, 3.0))
    3.0
    >>> hypervolume([(0.0, 0.0, 0.0)], (1.0, 2.0, 3.0))
    6.0
    """
    reference = tuple(float(r) for r in reference)
    inside = sorted({tuple(float(x) for x in p) for p in points
                     if all(x < r for x, r in zip(p, reference, strict=True))})  # fmt: skip
    if not inside:
        return 0.0
    if len(reference) == 1:
        return reference[0] - inside[0][0]
    if len(reference) == 2:
        volume, level = 0.0, reference[1]
        for x, y in inside:  # x ascending: each point adds the strip below the lowest y so far
            if y < level:
                volume += (reference[0] - x) * (level - y)
                level = y
        return volume
    inside.sort(key=lambda p: p[-1])
    volume = 0.0
    for index, point in enumerate(inside):
        upper = inside[index + 1][-1] if index + 1 < len(inside) else reference[-1]
        if upper > point[-1]:
            slice_ = [p[:-1] for p in inside[: index + 1]]
            volume += (upper - point[-1]) * hypervolume(slice_, reference[:-1])
    return volume


def hypervolume_history(
    records: _Records,
    objectives: Iterable[Any],
    bounds: tuple[Sequence[float], Sequence[float]] | None = None,
) -> list[float]:
    """The hypervolume of the first 1, 2, ... records (in ``iteration`` order), scaled.

    Parameters
    ----------
    records : iterable of mapping
        Validated trial records of one search; those without every objective add nothing but
        count as trials.
    objectives : iterable
        The objectives.
    bounds : (best, worst), optional
        The cost bounds the objectives are scaled by (see the module docstring); default
        :func:`objective_bounds` of ``records``. Give the bounds of every search drawn together
        so that their curves compare.

    Returns
    -------
    list of float
        One value per record: the hypervolume after that many trials, reference point
        :data:`REFERENCE_MARGIN` in each scaled objective.
    """
    pairs = objective_pairs(objectives)
    ordered = sorted(records, key=lambda r: (r.get("iteration", -1) < 0, r.get("iteration", -1)))
    best, worst = bounds if bounds is not None else objective_bounds(ordered, pairs)
    spans = [(w - b) or 1.0 for b, w in zip(best, worst, strict=True)]
    reference = [REFERENCE_MARGIN] * len(pairs)
    history, front = [], []
    for record in ordered:
        costs = _costs(record, pairs)
        if costs is not None:
            scaled = tuple((c - b) / s for c, b, s in zip(costs, best, spans, strict=True))
            if not any(dominates(kept, scaled) or kept == scaled for kept in front):
                front = [kept for kept in front if not dominates(scaled, kept)] + [scaled]
        history.append(hypervolume(front, reference))
    return history
