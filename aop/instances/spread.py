"""Label spreading: pseudo-labels for every instance from a few manual labels (paper II-C.1).

The paper's recipe, with scikit-learn: instance features -> :class:`~sklearn.preprocessing.
StandardScaler` -> :class:`~sklearn.decomposition.PCA` (``n_components``: a number of components,
or the fraction of variance to keep) -> :class:`~sklearn.semi_supervised.LabelSpreading` with an
RBF kernel ``exp(-gamma ||x - y||^2)`` and clamping factor ``alpha``.

Conventions:

- The features are every numeric column of the table except ``volume``, ``label`` and the
  centroid (``centroid_z/y/x``, a position in one volume, meaningless across volumes). Missing or
  infinite values (a lone instance's ``nearest_neighbour``) become the column's median.
- Only ``manual`` rows of the annotations are used as labels; :data:`BAD_SEGMENTATION` is a class
  like the others.
- ``confidence`` is the largest entry of the spread label distribution; ``uncertainty`` is
  ``1 - margin``, where the margin is the difference between the two largest entries (0 for a
  sure instance, 1 for a tie), which the annotation page sorts by. ``p_<class>`` is the
  distribution itself. An instance the kernel leaves unreached (its distribution is all zero)
  gets the uniform distribution.
- Defaults for ``gamma`` and ``alpha`` (when None) come from a small cross-validation over the
  manual labels: for every pair of ``gamma = g / m`` with ``g`` in :data:`GAMMA_FACTORS` (``m``
  the median squared distance from a point to its nearest neighbour in the reduced space) and
  ``alpha`` in :data:`ALPHAS`, the manual labels are split into stratified folds (up to 3;
  seeded by ``seed``), each fold's labels hidden in turn, and the accuracy of the spread labels on
  the hidden ones averaged. The best pair wins (the first in grid order on a tie). The search
  runs on the manual instances plus at most :data:`CV_POINTS` others drawn at random, so it stays
  quick for large tables. With fewer than two manual labels per class the search is skipped and
  ``g = 1``, ``alpha = 0.2`` are used. The chosen values and the cross-validated accuracy are in
  ``frame.attrs``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree
from sklearn.decomposition import PCA
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.semi_supervised import LabelSpreading

from aop.errors import AopError

__all__ = ["ALPHAS", "CV_POINTS", "GAMMA_FACTORS", "feature_columns", "spread_labels"]

GAMMA_FACTORS = (0.3, 1.0, 3.0, 10.0)
ALPHAS = (0.2, 0.5, 0.8)
CV_POINTS = 1500
MAX_ITER = 200
_KEYS = ("volume", "label")


def feature_columns(features: pd.DataFrame) -> list[str]:
    """The columns label spreading uses: numeric, other than ``volume``, ``label``, centroid."""
    skip = {"volume", "label", "centroid_z", "centroid_y", "centroid_x"}
    return [
        c for c in features.columns if c not in skip and pd.api.types.is_numeric_dtype(features[c])
    ]


def _spread(z: np.ndarray, y: np.ndarray, gamma: float, alpha: float) -> np.ndarray:
    model = LabelSpreading(kernel="rbf", gamma=gamma, alpha=alpha, max_iter=MAX_ITER)
    with np.errstate(divide="ignore", invalid="ignore"):
        model.fit(z, y)
    return model.label_distributions_


def _cross_validate(
    z: np.ndarray, y: np.ndarray, scale: float, seed: int
) -> tuple[float, float, float]:
    labelled = np.flatnonzero(y >= 0)
    counts = np.bincount(y[labelled])
    folds = int(min(3, counts[counts > 0].min()))
    if folds < 2:
        return GAMMA_FACTORS[1] / scale, 0.2, float("nan")
    rng = np.random.default_rng(seed)
    others = np.flatnonzero(y < 0)
    if len(others) > CV_POINTS:
        others = rng.choice(others, CV_POINTS, replace=False)
    points = np.concatenate([labelled, np.sort(others)])
    z_cv, y_cv = z[points], y[points]
    n_labelled = len(labelled)
    splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
    splits = list(splitter.split(np.zeros(n_labelled), y_cv[:n_labelled]))
    best = (-1.0, GAMMA_FACTORS[1] / scale, 0.2)
    for factor in GAMMA_FACTORS:
        for alpha in ALPHAS:
            correct = 0
            for _, hidden in splits:
                masked = y_cv.copy()
                masked[hidden] = -1
                dist = _spread(z_cv, masked, factor / scale, alpha)
                correct += int((dist[hidden].argmax(axis=1) == y_cv[hidden]).sum())
            accuracy = correct / n_labelled
            if accuracy > best[0]:
                best = (accuracy, factor / scale, alpha)
    return best[1], best[2], best[0]


def spread_labels(
    features: pd.DataFrame,
    annotations: pd.DataFrame,
    *,
    gamma: float | None = None,
    alpha: float | None = None,
    n_components: float | int = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """Spread the manual labels of ``annotations`` to every instance of ``features``.

    Parameters
    ----------
    features : pandas.DataFrame
        One row per instance with ``volume``, ``label`` and feature columns (as
        :func:`aop.instances.features.dataset_features` gives).
    annotations : pandas.DataFrame
        The class table (:func:`aop.instances.annotations.read_annotations`); only its ``manual``
        rows are used.
    gamma : float, optional
        RBF kernel width in the reduced space; chosen by cross-validation when None.
    alpha : float, optional
        Clamping factor in (0, 1): 0 keeps the manual labels, larger values let them change;
        chosen by cross-validation when None.
    n_components : float or int
        PCA: the fraction of variance to keep (0 < f < 1) or a number of components.
    seed : int
        Seeds the cross-validation folds and its sample of unlabelled instances.

    Returns
    -------
    pandas.DataFrame
        One row per instance of ``features``, in its order: ``volume``, ``label``, ``class``,
        ``confidence``, ``uncertainty``, then ``p_<class>`` for each class (sorted by name).
        ``attrs`` holds ``gamma``, ``alpha``, ``cv_accuracy`` and ``n_components``.

    Raises
    ------
    AopError
        When a manual row names an instance that is not in ``features``, fewer than two classes
        are annotated, or a parameter is out of range.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> sizes = np.concatenate([rng.normal(10, 1, 50), rng.normal(20, 1, 50)])
    >>> features = pd.DataFrame({"volume": "a", "label": np.arange(1, 101), "size": sizes,
    ...                          "brightness": sizes * 2 + rng.normal(0, 1, 100)})
    >>> manual = pd.DataFrame({"volume": "a", "label": [1, 2, 51, 52], "source": "manual",
    ...                        "class": ["small", "small", "large", "large"]})
    >>> spread = spread_labels(features, manual, gamma=1.0, alpha=0.2)
    >>> (spread["class"] == ["small"] * 50 + ["large"] * 50).mean()
    np.float64(1.0)
    """
    missing = [c for c in _KEYS if c not in features.columns]
    if missing:
        raise AopError(f"features: no column {missing[0]!r}")
    if alpha is not None and not 0 < alpha < 1:
        raise AopError(f"alpha must be between 0 and 1 (exclusive), got {alpha!r}")
    if gamma is not None and not gamma > 0:
        raise AopError(f"gamma must be positive, got {gamma!r}")
    if isinstance(n_components, float) and not 0 < n_components <= 1:
        raise AopError(f"n_components must be a fraction in (0, 1] or a count, got {n_components}")
    columns = feature_columns(features)
    if not columns:
        raise AopError("features: no numeric feature columns")
    keys = pd.MultiIndex.from_arrays([features["volume"].astype(str), features["label"]])
    if keys.has_duplicates:
        raise AopError("features: duplicate (volume, label) rows")
    manual = annotations[annotations["source"] == "manual"]
    classes = sorted(manual["class"].unique())
    if len(classes) < 2:
        raise AopError(f"label spreading needs manual labels of two classes or more, got {classes}")
    manual_keys = pd.MultiIndex.from_arrays([manual["volume"].astype(str), manual["label"]])
    where = keys.get_indexer(manual_keys)
    if (where < 0).any():
        row = manual.iloc[int(np.flatnonzero(where < 0)[0])]
        raise AopError(
            f"annotations: manual label of {row['volume']} label {row['label']} has no instance "
            "in the features"
        )
    y = np.full(len(features), -1, np.int64)
    y[where] = [classes.index(c) for c in manual["class"]]

    values = features[columns].to_numpy(dtype=float, copy=True)
    values[~np.isfinite(values)] = np.nan
    medians = np.nanmedian(values, axis=0)
    medians[~np.isfinite(medians)] = 0.0
    values = np.where(np.isnan(values), medians, values)
    scaled = StandardScaler().fit_transform(values)
    if isinstance(n_components, int) and not 0 < n_components <= scaled.shape[1]:
        raise AopError(f"n_components {n_components} is not in 1..{scaled.shape[1]}")
    pca = PCA(n_components=n_components, svd_solver="full")
    z = pca.fit_transform(scaled)

    cv_accuracy = float("nan")
    if gamma is None or alpha is None:
        nearest, _ = cKDTree(z).query(z, k=2)
        scale = float(np.median(nearest[:, 1] ** 2)) or 1.0
        cv_gamma, cv_alpha, cv_accuracy = _cross_validate(z, y, scale, seed)
        gamma = cv_gamma if gamma is None else gamma
        alpha = cv_alpha if alpha is None else alpha

    dist = _spread(z, y, float(gamma), float(alpha))
    unreached = ~np.isfinite(dist).all(axis=1) | (dist.sum(axis=1) <= 0)
    dist[unreached] = 1.0 / len(classes)
    order = np.sort(dist, axis=1)
    out = pd.DataFrame(
        {
            "volume": features["volume"].to_numpy(),
            "label": features["label"].to_numpy(np.int64),
            "class": np.asarray(classes, dtype=object)[dist.argmax(axis=1)],
            "confidence": order[:, -1],
            "uncertainty": 1.0 - (order[:, -1] - order[:, -2]),
        }
    )
    for k, name in enumerate(classes):
        out[f"p_{name}"] = dist[:, k]
    attrs: dict[str, Any] = {
        "gamma": float(gamma),
        "alpha": float(alpha),
        "cv_accuracy": cv_accuracy,
        "n_components": int(pca.n_components_),
    }
    out.attrs.update(attrs)
    return out
