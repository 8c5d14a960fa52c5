"""Feature designs: scikit-learn classifiers on per-instance features, scored like the deep ones.

A feature design classifies an instance from its row of the feature table
(:func:`aop.instances.features.instance_features`, :func:`~aop.instances.features.dataset_features`)
instead of its image crop. Conventions:

- **Features**: the columns label spreading uses (:func:`feature_columns`: every numeric column but
  ``volume``, ``label`` and the centroid), as float64, with ``+-inf`` (the ``elongation`` of a flat
  instance) turned into NaN (:func:`feature_matrix`).
- **Pipeline**: every model is ``SimpleImputer(median) -> StandardScaler -> estimator``
  (:func:`make_model`), so a missing value takes the training median and the logistic
  regression's penalty treats every feature alike (the scaler changes nothing for the trees). The
  pipeline takes a DataFrame with the feature names and has ``predict_proba``.
- **Models** (:data:`FEATURE_MODELS`): ``logistic_regression``, ``random_forest`` and
  ``hist_gradient_boosting``, with globally unique, model-prefixed parameter names
  (:func:`model_of_parameter` tells which model a parameter belongs to). :data:`FEATURE_DEFAULTS`
  holds the value of a parameter a design does not set; :data:`FEATURE_RANGES` the search range
  recommended for a small annotation set (a few dozen labels, a class may have 3), in the format of
  a search-space file's ``parameters``.
- **Baseline**: :func:`baseline_model`, a standardised logistic regression with ``C = 1``, which a
  study scores beside every search.
- **Scores** (:func:`evaluate_design`): on the study's :class:`~aop.classification.evaluation.
  DesignSplits`, the same indices as the deep designs. Validation pools the out-of-fold predictions
  of every fold; the final model is refitted on all of ``splits.rest`` when cross-validated, and is
  the one fold's model (trained on its training split only) otherwise; it alone sees the test split.
- **Files** (:func:`save_model`, :func:`load_model`): skops (``skops.io``), MLflow's default
  scikit-learn format, which loads only the types a feature pipeline is made of instead of running
  arbitrary code as a pickle would.

Example
-------
>>> from aop.classification.evaluation import design_splits
>>> rng = np.random.default_rng(0)
>>> X = pd.DataFrame({"size": np.r_[rng.normal(0, 1, 20), rng.normal(4, 1, 20)]})
>>> y = np.repeat([0, 1], 20)
>>> splits = design_splits(y, folds=4, seed=0)
>>> result = evaluate_design(baseline_model, X, y, splits, ["small", "large"])
>>> result.to_metrics()  # doctest: +NORMALIZE_WHITESPACE
{'val_accuracy': 1.0, 'val_balanced_accuracy': 1.0,
 'test_accuracy': 1.0, 'test_balanced_accuracy': 1.0}
>>> len(result.fold_accuracy), result.model.predict(pd.DataFrame({"size": [-1.0, 5.0]})).tolist()
(4, [0, 1])
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from aop.classification.evaluation import DesignSplits, classification_metrics
from aop.errors import AopError
from aop.instances.spread import feature_columns

__all__ = [
    "FEATURE_DEFAULTS",
    "FEATURE_MODELS",
    "FEATURE_RANGES",
    "TRUSTED_TYPES",
    "DesignResult",
    "baseline_model",
    "evaluate_design",
    "feature_columns",
    "feature_matrix",
    "load_model",
    "make_model",
    "model_of_parameter",
    "save_model",
]

#: The models of a feature design and their searchable parameters (name -> description).
FEATURE_MODELS: dict[str, dict[str, str]] = {
    "logistic_regression": {
        "logreg_c": "inverse L2 regularisation strength C (> 0; smaller is stronger)",
    },
    "random_forest": {
        "rf_trees": "number of trees (>= 1)",
        "rf_max_features": "fraction of the features tried at each split (0 < f <= 1)",
        "rf_min_samples_leaf": "fewest training instances in a leaf (>= 1)",
    },
    "hist_gradient_boosting": {
        "hgb_learning_rate": "shrinkage of each boosting step (> 0)",
        "hgb_max_leaf_nodes": "most leaves of each tree (>= 2)",
        "hgb_min_samples_leaf": "fewest training instances in a leaf (>= 1)",
        "hgb_l2_regularization": "L2 penalty on the leaf values (>= 0)",
    },
}

#: The value of a parameter that a design does not set.
FEATURE_DEFAULTS: dict[str, int | float] = {
    "logreg_c": 1.0,
    "rf_trees": 200,
    "rf_max_features": 0.3,
    "rf_min_samples_leaf": 1,
    "hgb_learning_rate": 0.1,
    "hgb_max_leaf_nodes": 8,
    "hgb_min_samples_leaf": 3,
    "hgb_l2_regularization": 0.1,
}

#: Search ranges for a small annotation set (a few dozen labels; a class may have 3), written as
#: the ``parameters`` entries of a search-space file. A training fold then holds 30 to 40
#: instances, and a rare class 1 to 3 of them:
#:
#: - ``logreg_c``: 1e-2 (strong shrinkage; at 1e-3 the coefficients of ~40 standardised
#:   instances are gone and every instance gets the majority class) to 1e2 (hardly any penalty,
#:   for separable classes), log-uniform since C acts by its order of magnitude;
#: - ``rf_min_samples_leaf`` and ``hgb_min_samples_leaf`` up to 5: a larger leaf can never hold a
#:   rare class on its own (scikit-learn's default of 20 for boosting is half a training fold);
#: - ``hgb_max_leaf_nodes`` 2 to 16: 30 to 40 instances in leaves of 2 or 3 fill no more;
#: - ``rf_trees`` 50 to 500 (log): more trees only average the same forest more finely;
#: - ``rf_max_features`` 0.1 to 1: from 1 of the 15 features of a one-channel table to all of
#:   them (plain bagging); the default 0.3 is near scikit-learn's square-root rule (3.9 of 15);
#: - ``hgb_learning_rate`` 0.01 to 0.3 (log) with sklearn's 100 boosting steps;
#: - ``hgb_l2_regularization`` 1e-3 to 10 (log): a leaf of a few instances has a summed hessian
#:   below 1, so a penalty of 1 already more than halves its value.
FEATURE_RANGES: dict[str, dict[str, Any]] = {
    "logreg_c": {"float": [1.0e-2, 1.0e2], "log": True},
    "rf_trees": {"int": [50, 500], "log": True},
    "rf_max_features": {"float": [0.1, 1.0]},
    "rf_min_samples_leaf": {"int": [1, 5]},
    "hgb_learning_rate": {"float": [0.01, 0.3], "log": True},
    "hgb_max_leaf_nodes": {"int": [2, 16]},
    "hgb_min_samples_leaf": {"int": [1, 5]},
    "hgb_l2_regularization": {"float": [1.0e-3, 10.0], "log": True},
}

# What a value must be: integer or not, lowest allowed value and whether the lowest is excluded,
# highest allowed value (the estimators' own domains, checked before a fit so that a bad value is
# one line naming the parameter).
_DOMAINS: dict[str, tuple[bool, float, bool, float]] = {
    "logreg_c": (False, 0.0, True, math.inf),
    "rf_trees": (True, 1, False, math.inf),
    "rf_max_features": (False, 0.0, True, 1.0),
    "rf_min_samples_leaf": (True, 1, False, math.inf),
    "hgb_learning_rate": (False, 0.0, True, math.inf),
    "hgb_max_leaf_nodes": (True, 2, False, math.inf),
    "hgb_min_samples_leaf": (True, 1, False, math.inf),
    "hgb_l2_regularization": (False, 0.0, False, math.inf),
}

#: The classes a saved feature pipeline holds beyond those skops trusts by default.
TRUSTED_TYPES = [
    "numpy.dtype",
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
]

_CLASS_WEIGHTS = (None, "balanced")
_LOGREG_MAX_ITER = 10_000


def model_of_parameter(name: str) -> str | None:
    """The model of :data:`FEATURE_MODELS` that a parameter belongs to, or None for no model.

    Examples
    --------
    >>> model_of_parameter("rf_trees"), model_of_parameter("lr")
    ('random_forest', None)
    """
    for model, params in FEATURE_MODELS.items():
        if name in params:
            return model
    return None


def feature_matrix(table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """The feature columns of a table as float64, in the given order, with ``+-inf`` as NaN.

    Parameters
    ----------
    table : pandas.DataFrame
        A feature table (:func:`aop.instances.features.dataset_features`); its index is kept.
    columns : sequence of str
        The features (:func:`feature_columns` of the table the design was fitted on).

    Returns
    -------
    pandas.DataFrame
        One column per feature, float64; infinite values are NaN (the pipeline imputes them).

    Raises
    ------
    AopError
        Naming a column the table lacks, or one that does not hold numbers.

    Examples
    --------
    >>> table = pd.DataFrame({"label": [1, 2], "elongation": [2.0, np.inf], "solidity": [1, 0.5]})
    >>> feature_matrix(table, ["solidity", "elongation"]).values.tolist()
    [[1.0, 2.0], [0.5, nan]]
    """
    columns = list(columns)
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise AopError(
            f"features: no column {missing[0]!r} in the feature table ({len(table.columns)} "
            "columns); compute the features with the same channels as the design"
        )
    out = {}
    for column in columns:
        try:
            out[column] = pd.to_numeric(table[column], errors="raise").astype(np.float64)
        except (TypeError, ValueError):
            raise AopError(f"features: column {column!r} does not hold numbers") from None
    matrix = pd.DataFrame(out, index=table.index, columns=columns)
    return matrix.mask(np.isinf(matrix.to_numpy()))


def _parameter_value(name: str, value: Any) -> int | float:
    """``value`` checked against the domain of parameter ``name`` (an int where it must be one)."""
    integer, low, open_low, high = _DOMAINS[name]
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise AopError(f"{name}: must be {kind}, got {value!r}")
    if integer and float(value) != int(value):
        raise AopError(f"{name}: must be an integer, got {value!r}")
    number = int(value) if integer else float(value)
    if not (number > low if open_low else number >= low) or number > high:
        bound = f"> {low}" if open_low else f">= {low}"
        bounds = bound if high == math.inf else f"{bound} and <= {high}"
        raise AopError(f"{name}: must be {bounds}, got {value!r}")
    return number


def make_model(
    model: str,
    params: Mapping[str, Any] | None = None,
    *,
    class_weight: str | None = None,
    seed: int = 0,
) -> Pipeline:
    """An unfitted pipeline ``SimpleImputer(median) -> StandardScaler -> model``.

    Parameters
    ----------
    model : str
        A key of :data:`FEATURE_MODELS`.
    params : mapping, optional
        Values of that model's parameters; the others take :data:`FEATURE_DEFAULTS`.
    class_weight : None or "balanced"
        Passed to the estimator: ``"balanced"`` weighs every class by the inverse of its frequency
        in the training data.
    seed : int
        ``random_state`` of the estimator (the forest's bootstrap and feature draws).

    Returns
    -------
    sklearn.pipeline.Pipeline
        Steps ``impute``, ``scale`` and ``model``.

    Raises
    ------
    AopError
        An unknown model, a parameter of another model (or of none), a value outside the
        parameter's domain, or a class weight other than None and ``"balanced"``.

    Examples
    --------
    >>> forest = make_model("random_forest", {"rf_trees": 50}, class_weight="balanced")[-1]
    >>> forest  # doctest: +NORMALIZE_WHITESPACE
    RandomForestClassifier(class_weight='balanced', max_features=0.3, n_estimators=50, n_jobs=1,
                           random_state=0)
    """
    from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if model not in FEATURE_MODELS:
        known = ", ".join(FEATURE_MODELS)
        raise AopError(f"model: unknown feature model {model!r} (known: {known})")
    if class_weight not in _CLASS_WEIGHTS:
        raise AopError(f"class_weight: must be None or 'balanced', got {class_weight!r}")
    values = {name: FEATURE_DEFAULTS[name] for name in FEATURE_MODELS[model]}
    for name, value in (params or {}).items():
        owner = model_of_parameter(name)
        if owner is None:
            raise AopError(f"{name}: not a parameter of any feature model")
        if owner != model:
            raise AopError(f"{name}: a parameter of {owner}, not of {model}")
        values[name] = _parameter_value(name, value)
    if model == "logistic_regression":
        estimator: Any = LogisticRegression(
            C=values["logreg_c"], class_weight=class_weight, max_iter=_LOGREG_MAX_ITER,
            random_state=seed,
        )
    elif model == "random_forest":
        estimator = RandomForestClassifier(
            n_estimators=values["rf_trees"], max_features=values["rf_max_features"],
            min_samples_leaf=values["rf_min_samples_leaf"], class_weight=class_weight,
            random_state=seed, n_jobs=1,
        )
    else:
        estimator = HistGradientBoostingClassifier(
            learning_rate=values["hgb_learning_rate"], max_leaf_nodes=values["hgb_max_leaf_nodes"],
            min_samples_leaf=values["hgb_min_samples_leaf"],
            l2_regularization=values["hgb_l2_regularization"], class_weight=class_weight,
            early_stopping=False, random_state=seed,
        )
    return Pipeline([
        ("impute", SimpleImputer(strategy="median")),
        ("scale", StandardScaler()),
        ("model", estimator),
    ])


def baseline_model(seed: int = 0, class_weight: str | None = None) -> Pipeline:
    """The study's fixed baseline: a standardised logistic regression with ``C = 1``.

    Examples
    --------
    >>> baseline_model()[-1].C
    1.0
    """
    return make_model(
        "logistic_regression", {"logreg_c": 1.0}, class_weight=class_weight, seed=seed
    )


@dataclass
class DesignResult:
    """The scores of one feature design on the study's splits, and its final model.

    Attributes
    ----------
    val : dict
        :func:`~aop.classification.evaluation.classification_metrics` of the pooled validation
        predictions (every fold's validation split, predicted by the model that did not train on
        it).
    val_index, val_predictions : ndarray
        The validated indices (in fold order) and the class predicted for each.
    fold_accuracy, fold_balanced_accuracy : list of float
        One score per fold of ``splits.folds``, in order (for
        :func:`~aop.classification.evaluation.paired_comparison`).
    test : dict
        ``classification_metrics`` of :attr:`model` on the test split (NaN scores when empty).
    model : sklearn.pipeline.Pipeline
        The final fitted pipeline.
    """

    val: dict[str, Any]
    val_index: np.ndarray
    val_predictions: np.ndarray
    fold_accuracy: list[float]
    fold_balanced_accuracy: list[float]
    test: dict[str, Any]
    model: Pipeline

    @property
    def val_accuracy(self) -> float:
        """Accuracy over all validation predictions together."""
        return float(self.val["accuracy"])

    @property
    def val_balanced_accuracy(self) -> float:
        """Balanced accuracy over all validation predictions together."""
        return float(self.val["balanced_accuracy"])

    def to_metrics(self) -> dict[str, float]:
        """The flat scores a trial reports: validation and test accuracy, plain and balanced."""
        return {
            "val_accuracy": self.val_accuracy,
            "val_balanced_accuracy": self.val_balanced_accuracy,
            "test_accuracy": float(self.test["accuracy"]),
            "test_balanced_accuracy": float(self.test["balanced_accuracy"]),
        }


def evaluate_design(
    make: Callable[[], Pipeline],
    X: pd.DataFrame,
    y: Sequence[int] | np.ndarray,
    splits: DesignSplits,
    class_names: Sequence[str],
) -> DesignResult:
    """Cross-validate a feature design on the study's splits, then score its final model on test.

    Parameters
    ----------
    make : callable
        Returns a fresh, unfitted pipeline (e.g. ``lambda: make_model("random_forest", params)``),
        called once per fold and once more for the refit.
    X : pandas.DataFrame
        One row per manual label (:func:`feature_matrix`); rows are addressed by position.
    y : array of int
        Class index of every row, into ``class_names``.
    splits : DesignSplits
        The study's test split and folds (:func:`~aop.classification.evaluation.design_splits`).
    class_names : sequence of str
        The classes, in index order.

    Returns
    -------
    DesignResult
        Pooled and per-fold validation scores, test scores, and the final model: refitted on all
        of ``splits.rest`` with several folds, the fold's own model (trained on its training split)
        with one.

    Raises
    ------
    AopError
        When ``X`` and ``y`` differ in length, or a split addresses a row beyond them.
    """
    if not isinstance(X, pd.DataFrame):
        X = pd.DataFrame(X)
    y = np.asarray(y)
    if len(X) != len(y):
        raise AopError(f"features: {len(X)} rows but {len(y)} labels")
    largest = max(int(np.max(part, initial=-1)) for pair in splits.folds for part in pair)
    largest = max(largest, int(np.max(splits.test, initial=-1)))
    if largest >= len(y):
        raise AopError(f"splits: index {largest} beyond the {len(y)} labelled rows")
    indices, predictions = [], []
    fold_accuracy, fold_balanced = [], []
    model = None
    for train, val in splits.folds:
        model = make().fit(X.iloc[train], y[train])
        predicted = model.predict(X.iloc[val])
        scores = classification_metrics(y[val], predicted, class_names)
        fold_accuracy.append(scores["accuracy"])
        fold_balanced.append(scores["balanced_accuracy"])
        indices.append(np.asarray(val))
        predictions.append(np.asarray(predicted))
    val_index = np.concatenate(indices).astype(np.int64)
    val_predictions = np.concatenate(predictions)
    if splits.cross_validated:
        rest = splits.rest
        model = make().fit(X.iloc[rest], y[rest])
    test = np.asarray(splits.test, dtype=np.int64)
    test_predictions = model.predict(X.iloc[test]) if len(test) else np.empty(0, np.int64)
    return DesignResult(
        val=classification_metrics(y[val_index], val_predictions, class_names),
        val_index=val_index,
        val_predictions=val_predictions,
        fold_accuracy=fold_accuracy,
        fold_balanced_accuracy=fold_balanced,
        test=classification_metrics(y[test], test_predictions, class_names),
        model=model,  # type: ignore[arg-type]
    )


def save_model(model: Pipeline, path: str | os.PathLike) -> None:
    """Write a fitted feature pipeline to ``path`` (skops format), whole or not at all.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> model = baseline_model().fit(pd.DataFrame({"a": [0.0, 1.0, 2.0, 3.0]}), [0, 0, 1, 1])
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "model.skops"
    >>> save_model(model, path)
    >>> load_model(path).predict(pd.DataFrame({"a": [0.5, 2.5]})).tolist()
    [0, 1]
    """
    import skops.io

    from aop.outputs import atomic_file

    with atomic_file(path) as tmp:
        skops.io.dump(model, tmp)


def load_model(path: str | os.PathLike) -> Pipeline:
    """Read a pipeline written by :func:`save_model`.

    Only the types a feature pipeline is made of are loaded (scikit-learn's estimators and their
    trees); a file holding anything else is refused without running it.

    Raises
    ------
    AopError
        Naming ``path`` when it is missing, unreadable, not a skops file, holds other types, or
        holds something other than a pipeline.
    """
    import zipfile

    import skops.io

    try:
        model = skops.io.load(path, trusted=TRUSTED_TYPES)
    except FileNotFoundError:
        raise AopError(f"{path}: no such model file") from None
    except OSError as exc:
        raise AopError(f"{path}: cannot read the model file ({exc.strerror or exc})") from None
    except zipfile.BadZipFile:
        raise AopError(f"{path}: not a saved feature model (not a skops file)") from None
    except TypeError as exc:
        raise AopError(f"{path}: not a saved feature model ({exc})") from None
    except (KeyError, ValueError, AttributeError, ImportError) as exc:
        raise AopError(f"{path}: not a saved feature model (unreadable content: {exc})") from None
    if not isinstance(model, Pipeline):
        kind = type(model).__name__
        raise AopError(f"{path}: not a saved feature model (it holds type {kind}, not a pipeline)")
    return model
