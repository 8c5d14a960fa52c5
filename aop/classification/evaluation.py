"""How a classifier design is scored: one held-out test split, validation folds, paired comparisons.

Every design of a classifier study (a deep encoder trained with Lightning, a scikit-learn model on
instance features, the logistic-regression baseline) is scored on the same indices of the manual
labels, drawn once per study by :func:`design_splits`:

- a **test split** drawn per class (``round(test_fraction * n)`` of each class, never so many that
  fewer than ``folds`` are left, at least one when the class has room), held out from every design
  and from the choice between them;
- **validation**: with ``folds == 1`` one stratified validation split
  (:func:`aop.classification.data.stratified_split`'s proportions); with ``folds >= 2``
  scikit-learn's ``StratifiedKFold`` over the rest, so that every labelled instance outside the test
  split validates once. A design's validation score is then its score on all the out-of-fold
  predictions together (pooled), and its per-fold scores feed :func:`paired_comparison`.

:func:`auto_folds` gives the fold count of ``folds: auto``: 5 below :data:`SMALL_SET` labels (a
split of a few dozen instances is too noisy to choose a design by), capped by the rarest class, and
1 from :data:`SMALL_SET` on.

Scores (:func:`classification_metrics`) always include the balanced accuracy (the mean per-class
recall, scikit-learn's ``balanced_accuracy_score``), which a study can take as its objective when
the classes are imbalanced.

Example
-------
>>> labels = np.repeat([0, 1], [30, 18])
>>> splits = design_splits(labels, folds=5, test_fraction=0.2, seed=0)
>>> len(splits.test), len(splits.folds), np.bincount(labels[splits.test]).tolist()
(10, 5, [6, 4])
>>> sorted(np.concatenate([val for _, val in splits.folds]).tolist()) == splits.rest.tolist()
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aop.errors import AopError

__all__ = [
    "MAX_FOLDS",
    "SMALL_SET",
    "DesignSplits",
    "auto_folds",
    "classification_metrics",
    "design_splits",
    "paired_comparison",
]

#: Below this many manual labels ``folds: auto`` cross-validates.
SMALL_SET = 200
#: The fold count of ``folds: auto`` on a small set (fewer when the rarest class has fewer labels).
MAX_FOLDS = 5


def classification_metrics(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class precision, recall, F1, support, confusion matrix.

    The confusion matrix (scikit-learn) has true classes as rows and predictions as columns, in the
    order of ``class_names``; a class without predictions gets precision 0. The balanced accuracy
    is the mean recall over the classes present in ``y_true``.

    Examples
    --------
    >>> m = classification_metrics([0, 0, 1, 1], [0, 1, 1, 1], ["a", "b"])
    >>> m["accuracy"], m["balanced_accuracy"], m["confusion_matrix"]
    (0.75, 0.75, [[1, 1], [0, 2]])
    >>> m["per_class"]["b"]["precision"]
    0.6666666666666666
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        precision_recall_fscore_support,
    )

    labels = list(range(len(class_names)))
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return {"accuracy": float("nan"), "balanced_accuracy": float("nan"), "n": 0,
                "per_class": {}, "confusion_matrix": [], "class_names": list(class_names)}
    scores = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    per_class = {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(n)}
        for name, p, r, f, n in zip(class_names, *scores, strict=True)
    }
    import warnings

    with warnings.catch_warnings():  # a class predicted but absent from y_true
        warnings.simplefilter("ignore", UserWarning)
        balanced = balanced_accuracy_score(y_true, y_pred)
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced),
        "n": int(len(y_true)),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "class_names": list(class_names),
    }


@dataclass(frozen=True)
class DesignSplits:
    """Indices into the manual labels: the held-out test split and the validation folds.

    Attributes
    ----------
    test : ndarray
        The test split (sorted).
    folds : list of (train, val)
        One pair with ``folds == 1``; otherwise the k folds of :attr:`rest`.
    """

    test: np.ndarray
    folds: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

    @property
    def rest(self) -> np.ndarray:
        """Every index outside the test split (what the designs train and validate on)."""
        train, val = self.folds[0]
        return np.sort(np.concatenate([train, val]))

    @property
    def cross_validated(self) -> bool:
        return len(self.folds) > 1


def auto_folds(labels: Sequence[int] | np.ndarray, test_fraction: float = 0.2) -> int:
    """The fold count of ``folds: auto``: :data:`MAX_FOLDS` on a small set, else 1.

    On a set of fewer than :data:`SMALL_SET` labels the count is capped by the rarest class (every
    fold validates at least one instance of every class, after the test split took its share);
    a class too rare for two folds gives 1.

    Examples
    --------
    >>> auto_folds(np.repeat([0, 1], [40, 8])), auto_folds(np.repeat([0, 1], [40, 3]))
    (5, 2)
    >>> auto_folds(np.repeat([0, 1], [200, 100]))
    1
    """
    labels = np.asarray(labels)
    if len(labels) >= SMALL_SET:
        return 1
    counts = np.bincount(labels)
    counts = counts[counts > 0]
    rarest = int(counts.min() - _test_count(int(counts.min()), test_fraction, 2))
    return max(1, min(MAX_FOLDS, rarest)) if rarest >= 2 else 1


def _test_count(n: int, fraction: float, keep: int) -> int:
    """Test instances of a class of ``n``: ``round(fraction * n)``, leaving at least ``keep``."""
    return max(0, min(int(np.floor(fraction * n + 0.5)), n - keep))


def design_splits(
    labels: Sequence[int] | np.ndarray,
    *,
    folds: int,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
) -> DesignSplits:
    """The study's test split and validation folds of the manual labels (see the module docstring).

    Parameters
    ----------
    labels : array of int
        Class index of every manual label.
    folds : int
        1: one validation split of ``val_fraction`` (per class; half of a class of fewer than 20,
        as :func:`aop.classification.data.stratified_split` does); k >= 2: k stratified folds.
    val_fraction, test_fraction : float
        Shares of each class.
    seed : int
        Seeds the test split and the folds.
    class_names : sequence of str, optional
        Names the rarest class in an error.

    Raises
    ------
    AopError
        A class with fewer than two labels, or fewer labels outside the test split than ``folds``.
    """
    from sklearn.model_selection import StratifiedKFold

    from aop.classification.data import SplitConfig, stratified_split

    labels = np.asarray(labels)
    if folds < 1:
        raise AopError(f"training.folds: must be at least 1, got {folds}")
    if folds == 1:
        train, val, test = stratified_split(
            labels, SplitConfig(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
        )
        return DesignSplits(test=test, folds=[(train, val)])
    rng = np.random.default_rng(seed)
    test_parts, rest_parts = [], []
    for cls in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == cls))
        n_test = _test_count(len(index), test_fraction, folds)
        if len(index) - n_test < folds:
            name = class_names[int(cls)] if class_names is not None else str(cls)
            raise AopError(
                f"training.folds: {folds} folds need at least {folds} manual labels of every "
                f"class outside the test split; class {name!r} has {len(index) - n_test} "
                f"(of {len(index)}): lower folds or annotate more"
            )
        test_parts.append(index[:n_test])
        rest_parts.append(index[n_test:])
    test = np.sort(np.concatenate(test_parts)).astype(np.int64)
    rest = np.sort(np.concatenate(rest_parts)).astype(np.int64)
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    pairs = [
        (rest[train].astype(np.int64), rest[val].astype(np.int64))
        for train, val in splitter.split(np.zeros(len(rest)), labels[rest])
    ]
    return DesignSplits(test=test, folds=pairs)


def paired_comparison(
    scores: Sequence[float], reference: Sequence[float], confidence: float = 0.95
) -> dict[str, Any]:
    """Compare two designs scored on the same folds: mean difference, its interval, a paired test.

    Parameters
    ----------
    scores, reference : sequence of float
        One score per fold, same folds in the same order (``scores`` minus ``reference``).
    confidence : float
        Level of the t interval of the mean difference.

    Returns
    -------
    dict
        ``n`` (folds), ``mean_difference``, ``ci_low``, ``ci_high`` (Student t over the per-fold
        differences; NaN with one fold), ``p_value`` (two-sided paired t-test; NaN with one fold or
        identical differences), ``wins``, ``ties``, ``losses`` (folds where ``scores`` is above,
        equal to, below ``reference``).

    Examples
    --------
    >>> r = paired_comparison([0.9, 0.8, 1.0], [0.7, 0.8, 0.9])
    >>> round(r["mean_difference"], 3), r["wins"], r["ties"], r["losses"]
    (0.1, 2, 1, 0)
    """
    from scipy import stats

    a, b = np.asarray(scores, dtype=float), np.asarray(reference, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise AopError(f"paired comparison: {len(a)} and {len(b)} fold scores (need equal, >= 1)")
    diff = a - b
    n = len(diff)
    mean = float(diff.mean())
    low = high = p_value = float("nan")
    if n >= 2:
        sd = float(diff.std(ddof=1))
        if sd > 0:
            half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / np.sqrt(n)
            low, high = mean - half, mean + half
            p_value = float(stats.ttest_rel(a, b).pvalue)
        else:
            low = high = mean
    return {
        "n": n,
        "mean_difference": mean,
        "ci_low": float(low),
        "ci_high": float(high),
        "p_value": p_value,
        "wins": int((diff > 0).sum()),
        "ties": int((diff == 0).sum()),
        "losses": int((diff < 0).sum()),
    }
