"""Feature designs (aop.classification.tabular): scikit-learn models on aop's instance features,
scored on the study's splits, checked against scikit-learn used directly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import skops.io
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from threadpoolctl import threadpool_limits

from aop.classification.evaluation import auto_folds, design_splits, paired_comparison
from aop.classification.tabular import (
    FEATURE_DEFAULTS,
    FEATURE_MODELS,
    FEATURE_RANGES,
    baseline_model,
    evaluate_design,
    feature_columns,
    feature_matrix,
    load_model,
    make_model,
    model_of_parameter,
    save_model,
)
from aop.errors import AopError
from aop.instances import spread
from aop.instances.features import instance_features

SHAPES = ["round", "long", "bright"]
PREFIXES = {"logistic_regression": "logreg_", "random_forest": "rf_",
            "hist_gradient_boosting": "hgb_"}


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(1):  # the tests share two cores
        yield


def _shape_volume(counts: tuple[int, int, int], seed: int = 0) -> tuple[np.ndarray, np.ndarray,
                                                                        np.ndarray]:
    """Labels, image and class of every instance: dim balls, dim elongated ellipsoids along a
    random axis, and bright balls, one per 14-voxel cell of a (28, 84, 84) volume.

    The ellipsoids (semi-axes 5.5-6.5 and 2.5-3.2) have about the volume of the small balls
    (radius 3.5-4.5), so the size alone does not tell them apart; the intensities differ by
    70 with a noise of 15 per voxel.
    """
    rng = np.random.default_rng(seed)
    shape, cell = (28, 84, 84), 14
    labels = np.zeros(shape, np.uint16)
    image = 20 + rng.normal(0, 15, shape)
    cells = [(z, y, x) for z in range(2) for y in range(6) for x in range(6)]
    order = rng.permutation(len(cells))
    classes = np.repeat(np.arange(3), counts)
    classes = classes[rng.permutation(len(classes))]
    grid = np.indices((cell, cell, cell)).astype(float)
    for label, (where, cls) in enumerate(zip(order, classes, strict=False), start=1):
        centre = np.full(3, cell / 2 - 0.5) + rng.uniform(-1, 1, 3)
        if cls == 1:
            semi = np.full(3, rng.uniform(2.5, 3.2))
            semi[rng.integers(3)] = rng.uniform(5.5, 6.5)
        else:
            semi = np.full(3, rng.uniform(3.5, 4.5))
        inside = sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, semi, strict=True)) <= 1
        box = tuple(slice(c * cell, (c + 1) * cell) for c in cells[where])
        labels[box][inside] = label
        image[box][inside] += (170 if cls == 2 else 100) + rng.normal(0, 15, int(inside.sum()))
    return labels, image.astype(np.float32), classes


@pytest.fixture(scope="module")
def shapes() -> tuple[pd.DataFrame, np.ndarray]:
    """48 labelled instances (20 round, 16 long, 12 bright) as aop's feature table."""
    labels, image, classes = _shape_volume((20, 16, 12))
    table = instance_features(labels, image)
    return table, classes[table["label"].to_numpy() - 1]


@pytest.fixture(scope="module")
def nuclei(nuclei_3d) -> tuple[pd.DataFrame, np.ndarray]:
    """StarDist's 51 real nuclei, classed by volume: small (< 450 voxels), medium, large (> 1000).
    """
    image, labels = nuclei_3d
    table = instance_features(labels, image)
    volume = table["instance_volume"].to_numpy()
    return table, np.digitize(volume, [450, 1000])


def _by_hand(estimator) -> Pipeline:
    """The documented pipeline, built with scikit-learn alone."""
    return Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler()),
                     ("model", estimator)])


# --------------------------------------------------------------------------------------------------
# Models and their parameters
# --------------------------------------------------------------------------------------------------


def test_parameters_have_one_model_a_default_and_a_range_holding_it():
    names = [name for params in FEATURE_MODELS.values() for name in params]
    assert len(names) == len(set(names)) == 8
    assert set(FEATURE_DEFAULTS) == set(FEATURE_RANGES) == set(names)
    for model, params in FEATURE_MODELS.items():
        for name, description in params.items():
            assert name.startswith(PREFIXES[model]) and name == name.lower()
            assert model_of_parameter(name) == model and description
            spec = FEATURE_RANGES[name]
            key = "int" if "int" in spec else "float"
            low, high = spec[key]
            assert low < high and low <= FEATURE_DEFAULTS[name] <= high
            assert isinstance(FEATURE_DEFAULTS[name], int) == (key == "int")
            for value in (low, high):  # both ends of the range build a model
                make_model(model, {name: value})
    assert model_of_parameter("lr") is None and model_of_parameter("encoder") is None
    # scikit-learn's boosting default of 20 per leaf is half a training fold of 48 labels
    assert FEATURE_RANGES["hgb_min_samples_leaf"]["int"][1] <= 5


def test_the_parameters_reach_the_estimators():
    logreg = make_model("logistic_regression", {"logreg_c": 0.01}, seed=3)
    forest = make_model("random_forest", {"rf_trees": 7, "rf_max_features": 0.5,
                                          "rf_min_samples_leaf": 2}, seed=3)
    boost = make_model("hist_gradient_boosting", {"hgb_learning_rate": 0.05,
                                                  "hgb_max_leaf_nodes": 4}, seed=3)
    assert [name for name, _ in logreg.steps] == ["impute", "scale", "model"]
    assert logreg[0].strategy == "median" and isinstance(logreg[1], StandardScaler)
    assert isinstance(logreg[-1], LogisticRegression)
    assert logreg[-1].C == 0.01 and logreg[-1].max_iter >= 1000
    f = forest[-1].get_params()
    assert (f["n_estimators"], f["max_features"], f["min_samples_leaf"]) == (7, 0.5, 2)
    assert (f["random_state"], f["n_jobs"], f["class_weight"]) == (3, 1, None)
    b = boost[-1].get_params()
    assert (b["learning_rate"], b["max_leaf_nodes"]) == (0.05, 4)
    assert (b["min_samples_leaf"], b["l2_regularization"]) == (3, 0.1)  # the defaults
    assert (b["early_stopping"], b["random_state"]) == (False, 3)
    assert make_model("random_forest", {"rf_trees": 20.0})[-1].n_estimators == 20
    assert isinstance(make_model("random_forest", {"rf_trees": 20.0})[-1].n_estimators, int)
    baseline = baseline_model(seed=1)[-1]
    assert isinstance(baseline, LogisticRegression) and baseline.C == 1.0
    assert baseline.class_weight is None
    assert baseline_model(class_weight="balanced")[-1].class_weight == "balanced"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: make_model("svm"), "model: unknown feature model 'svm' (known: logistic_regr"),
        (lambda: make_model("random_forest", {"logreg_c": 1.0}),
         "logreg_c: a parameter of logistic_regression, not of random_forest"),
        (lambda: make_model("logistic_regression", {"lr": 0.1}),
         "lr: not a parameter of any feature model"),
        (lambda: make_model("logistic_regression", {"logreg_c": 0}), "logreg_c: must be > 0.0, "),
        (lambda: make_model("logistic_regression", {"logreg_c": "big"}),
         "logreg_c: must be a number, got 'big'"),
        (lambda: make_model("random_forest", {"rf_max_features": 1.5}),
         "rf_max_features: must be > 0.0 and <= 1.0, got 1.5"),
        (lambda: make_model("random_forest", {"rf_trees": 2.5}),
         "rf_trees: must be an integer, got 2.5"),
        (lambda: make_model("random_forest", {"rf_trees": True}),
         "rf_trees: must be an integer, got True"),
        (lambda: make_model("random_forest", {"rf_min_samples_leaf": 0}),
         "rf_min_samples_leaf: must be >= 1, got 0"),
        (lambda: make_model("hist_gradient_boosting", {"hgb_max_leaf_nodes": 1}),
         "hgb_max_leaf_nodes: must be >= 2, got 1"),
        (lambda: make_model("hist_gradient_boosting", {"hgb_l2_regularization": -1.0}),
         "hgb_l2_regularization: must be >= 0.0, got -1.0"),
        (lambda: make_model("random_forest", class_weight="inverse"),
         "class_weight: must be None or 'balanced', got 'inverse'"),
    ],
)
def test_bad_models_are_one_line(call, message):
    with pytest.raises(AopError) as error:
        call()
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


# --------------------------------------------------------------------------------------------------
# The feature matrix
# --------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::RuntimeWarning")  # the plate's hull
def test_feature_matrix_is_float_in_order_with_inf_as_nan():
    labels = np.zeros((6, 16, 16), np.uint8)
    labels[1:5, 2:6, 2:6] = 1  # a cube
    labels[3, 8:14, 8:14] = 2  # a plate one voxel thick: no third axis, infinite elongation
    table = instance_features(labels, np.ones_like(labels, dtype=np.float32))
    assert np.isinf(table["elongation"].iloc[1])
    assert feature_columns is spread.feature_columns  # one definition of the feature columns
    columns = feature_columns(table)
    assert columns[0] == "instance_volume" and "ch0_p90" in columns
    assert not {"label", "centroid_z", "centroid_y", "centroid_x"} & set(columns)
    X = feature_matrix(table, columns[::-1])
    assert list(X.columns) == columns[::-1] and (X.dtypes == np.float64).all()
    assert X.index.equals(table.index)
    assert np.isnan(X["elongation"].iloc[1]) and not np.isinf(X.to_numpy()).any()
    finite = table[columns].to_numpy(float)
    assert np.array_equal(X[columns].to_numpy(), np.where(np.isinf(finite), np.nan, finite),
                          equal_nan=True)
    ints = pd.DataFrame({"n": np.array([1, 2], np.int32), "f": [-np.inf, 0.5]})
    assert feature_matrix(ints, ["n", "f"]).to_numpy().tolist()[0][0] == 1.0
    assert np.isnan(feature_matrix(ints, ["f"])["f"].iloc[0])


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        (["instance_volume", "ch1_mean"], "features: no column 'ch1_mean' in the feature table"),
        (["volume"], "features: column 'volume' does not hold numbers"),
    ],
)
def test_feature_matrix_errors_name_the_column(columns, message):
    table = pd.DataFrame({"volume": ["a", "b"], "instance_volume": [1.0, 2.0]})
    with pytest.raises(AopError, match=message.replace("(", r"\(")):
        feature_matrix(table, columns)


def test_inf_and_nan_take_the_training_median(shapes):
    table, y = shapes
    table = table.copy()
    table.loc[[0, 5], "elongation"] = np.inf
    table.loc[[1, 2, 3], "nearest_neighbour"] = np.nan
    columns = feature_columns(table)
    X = feature_matrix(table, columns)
    train = np.arange(0, 40)
    model = baseline_model().fit(X.iloc[train], y[train])
    statistics = dict(zip(columns, model.named_steps["impute"].statistics_, strict=True))
    for column in ("elongation", "nearest_neighbour"):
        values = X[column].to_numpy()[train]
        assert statistics[column] == np.median(values[np.isfinite(values)])
    filled = X.copy()
    filled.loc[[0, 5], "elongation"] = statistics["elongation"]
    filled.loc[[1, 2, 3], "nearest_neighbour"] = statistics["nearest_neighbour"]
    assert np.allclose(model.predict_proba(X), model.predict_proba(filled))
    assert np.isfinite(model.predict_proba(X)).all()


# --------------------------------------------------------------------------------------------------
# Scoring on the study's splits
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [*FEATURE_MODELS, "baseline"])
def test_separable_shapes_are_classified(shapes, model):
    table, y = shapes
    X = feature_matrix(table, feature_columns(table))
    splits = design_splits(y, folds=auto_folds(y), seed=0, class_names=SHAPES)
    assert len(splits.folds) == 5 and len(splits.test) == 9  # 4 + 3 + 2

    def make():
        return baseline_model() if model == "baseline" else make_model(model)

    result = evaluate_design(make, X, y, splits, SHAPES)
    assert result.val_accuracy >= 0.95 and result.val_balanced_accuracy >= 0.95  # <= 1 miss
    assert result.test["accuracy"] >= 0.85 and result.test["n"] == 9
    assert len(result.fold_accuracy) == len(result.fold_balanced_accuracy) == 5
    assert min(result.fold_accuracy) >= 0.85
    # the out-of-fold predictions cover every index outside the test split exactly once
    assert sorted(result.val_index.tolist()) == splits.rest.tolist()
    assert result.val["n"] == len(splits.rest) == 39
    assert result.to_metrics() == {
        "val_accuracy": result.val_accuracy,
        "val_balanced_accuracy": result.val_balanced_accuracy,
        "test_accuracy": result.test["accuracy"],
        "test_balanced_accuracy": result.test["balanced_accuracy"],
    }
    assert list(result.model.feature_names_in_) == list(X.columns)
    assert result.model.predict_proba(X).shape == (48, 3)


def test_the_shapes_need_both_shape_and_intensity(shapes):
    table, y = shapes
    splits = design_splits(y, folds=5, seed=0)

    def recalls(columns):
        result = evaluate_design(baseline_model, feature_matrix(table, columns), y, splits, SHAPES)
        return result.val_accuracy, [result.val["per_class"][c]["recall"] for c in SHAPES]

    size, _ = recalls(["instance_volume"])
    assert size < 0.6  # balls and ellipsoids of about one volume
    assert recalls(["ch0_mean"])[1] == [1.0, 0.0, 1.0]  # intensity alone misses every ellipsoid
    assert recalls(["ch0_mean", "elongation"]) == (1.0, [1.0, 1.0, 1.0])


def test_out_of_fold_predictions_and_refit_match_scikit_learn(shapes):
    table, y = shapes
    X = feature_matrix(table, feature_columns(table))
    splits = design_splits(y, folds=5, seed=1)
    params = {"rf_trees": 60, "rf_max_features": 0.5}
    result = evaluate_design(lambda: make_model("random_forest", params, seed=4), X, y, splits,
                             SHAPES)
    rest = splits.rest
    position = {index: i for i, index in enumerate(rest)}
    cv = [([position[i] for i in train], [position[i] for i in val]) for train, val in splits.folds]

    def forest():
        return _by_hand(RandomForestClassifier(n_estimators=60, max_features=0.5,
                                               random_state=4, n_jobs=1))

    expected = cross_val_predict(forest(), X.iloc[rest], y[rest], cv=cv)
    got = dict(zip(result.val_index.tolist(), result.val_predictions.tolist(), strict=True))
    assert [got[i] for i in rest] == expected.tolist()
    assert result.val_accuracy == accuracy_score(y[rest], expected)
    assert result.val_balanced_accuracy == balanced_accuracy_score(y[rest], expected)
    for (_, val), accuracy in zip(splits.folds, result.fold_accuracy, strict=True):
        assert accuracy == accuracy_score(y[val], [got[i] for i in val])
    refit = forest().fit(X.iloc[rest], y[rest])  # the final model trains on all of rest
    assert np.array_equal(result.model.predict_proba(X), refit.predict_proba(X))
    test = splits.test
    assert result.test["accuracy"] == accuracy_score(y[test], refit.predict(X.iloc[test]))


def test_one_split_keeps_the_model_trained_on_its_training_split(shapes):
    table, y = shapes
    X = feature_matrix(table, feature_columns(table))
    splits = design_splits(y, folds=1, seed=2)
    (train, val), = splits.folds
    assert not splits.cross_validated
    result = evaluate_design(lambda: make_model("logistic_regression", {"logreg_c": 0.3}), X, y,
                             splits, SHAPES)
    by_hand = _by_hand(LogisticRegression(C=0.3, max_iter=10_000)).fit(X.iloc[train], y[train])
    assert np.allclose(result.model.predict_proba(X), by_hand.predict_proba(X))
    assert result.val_index.tolist() == val.tolist()
    assert result.fold_accuracy == [result.val_accuracy]
    assert result.val_accuracy == accuracy_score(y[val], by_hand.predict(X.iloc[val]))
    assert result.test["accuracy"] == accuracy_score(y[splits.test],
                                                     by_hand.predict(X.iloc[splits.test]))
    assert result.test["n"] == len(splits.test) > 0


def test_a_class_of_three_labels_still_trains_in_every_fold(shapes):
    table, y = shapes
    keep = np.r_[np.flatnonzero(y != 2), np.flatnonzero(y == 2)[:3]]  # 36 + 3 labels
    X = feature_matrix(table.iloc[keep], feature_columns(table))
    folds = auto_folds(y[keep])
    splits = design_splits(y[keep], folds=folds, seed=0)
    assert folds == 2 and np.bincount(y[keep][splits.test]).tolist()[2] == 1
    for model in FEATURE_MODELS:
        result = evaluate_design(lambda m=model: make_model(m), X, y[keep], splits, SHAPES)
        assert result.model[-1].classes_.tolist() == [0, 1, 2]
        assert len(result.fold_accuracy) == 2 and result.val["n"] == len(splits.rest)
        assert result.val["per_class"]["round"]["recall"] >= 0.8


def test_the_baseline_and_a_design_compare_on_the_same_folds(nuclei):
    table, y = nuclei
    assert np.bincount(y).tolist() == [15, 23, 13]
    names = ["small", "medium", "large"]
    X = feature_matrix(table, feature_columns(table))
    splits = design_splits(y, folds=auto_folds(y), seed=0, class_names=names)
    results = {
        "baseline": evaluate_design(baseline_model, X, y, splits, names),
        **{model: evaluate_design(lambda m=model: make_model(m), X, y, splits, names)
           for model in FEATURE_MODELS},
    }
    for name, result in results.items():  # 0.90 (logistic) to 0.95 (trees) in scikit-learn 1.9
        assert result.val_accuracy >= 0.85 and result.val_balanced_accuracy >= 0.85, name
        assert result.test["accuracy"] >= 0.85, name
    comparison = paired_comparison(results["random_forest"].fold_accuracy,
                                   results["baseline"].fold_accuracy)
    assert comparison["n"] == 5
    assert comparison["wins"] + comparison["ties"] + comparison["losses"] == 5


def test_balanced_class_weight_predicts_the_rare_class_more_often(nuclei):
    table, _ = nuclei
    y = (table["instance_volume"].to_numpy() > 1250).astype(int)  # 11 large of 51
    assert np.bincount(y).tolist() == [40, 11]
    X = feature_matrix(table, feature_columns(table))
    plain = make_model("logistic_regression", {"logreg_c": 0.05}).fit(X, y)
    balanced = make_model("logistic_regression", {"logreg_c": 0.05},
                          class_weight="balanced").fit(X, y)
    p_plain, p_balanced = plain.predict_proba(X)[:, 1], balanced.predict_proba(X)[:, 1]
    assert (p_balanced > p_plain).all()  # every instance is pulled towards the rare class
    flipped = (balanced.predict(X) == 1) & (plain.predict(X) == 0)
    assert flipped.sum() >= 1
    assert not ((balanced.predict(X) == 0) & (plain.predict(X) == 1)).any()
    for model in ("random_forest", "hist_gradient_boosting"):  # both take the weights
        fitted = make_model(model, class_weight="balanced").fit(X, y)
        assert fitted[-1].class_weight == "balanced" and fitted.predict(X).sum() >= 1


def test_an_empty_test_split_scores_nan(shapes):
    table, y = shapes
    X = feature_matrix(table, feature_columns(table))
    splits = design_splits(y, folds=3, test_fraction=0.0, seed=0)
    assert len(splits.test) == 0
    metrics = evaluate_design(baseline_model, X, y, splits, SHAPES).to_metrics()
    assert np.isnan(metrics["test_accuracy"]) and np.isnan(metrics["test_balanced_accuracy"])
    assert metrics["val_accuracy"] >= 0.9


def test_evaluation_errors_are_one_line(shapes):
    table, y = shapes
    X = feature_matrix(table, feature_columns(table))
    splits = design_splits(y, folds=2, seed=0)
    with pytest.raises(AopError, match=r"^features: 47 rows but 48 labels$"):
        evaluate_design(baseline_model, X.iloc[:47], y, splits, SHAPES)
    short = design_splits(np.r_[y, y], folds=2, seed=0)
    with pytest.raises(AopError, match=r"^splits: index 9\d beyond the 48 labelled rows$"):
        evaluate_design(baseline_model, X, y, short, SHAPES)


# --------------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", list(FEATURE_MODELS))
def test_a_saved_model_predicts_the_same(shapes, model, tmp_path):
    table, y = shapes
    X = feature_matrix(table, feature_columns(table))
    fitted = make_model(model, class_weight="balanced").fit(X, y)
    path = tmp_path / "model.skops"
    save_model(fitted, path)
    loaded = load_model(path)
    assert np.array_equal(loaded.predict_proba(X), fitted.predict_proba(X))
    assert list(loaded.feature_names_in_) == list(X.columns)
    assert [p.name for p in tmp_path.iterdir()] == ["model.skops"]  # no temporary file left


def test_unreadable_model_files_are_one_line(tmp_path):
    (tmp_path / "text.skops").write_text("not a model")
    skops.io.dump({"a": 1}, tmp_path / "dict.skops")
    untrusted = Pipeline([("f", FunctionTransformer(feature_columns)),
                          ("model", LogisticRegression())])
    skops.io.dump(untrusted, tmp_path / "code.skops")
    cases = {
        "missing.skops": "no such model file",
        "text.skops": "not a saved feature model (not a skops file)",
        "dict.skops": "not a saved feature model (it holds type dict, not a pipeline)",
        "code.skops": "not a saved feature model (Untrusted types found in the file: "
                      "['aop.instances.spread.feature_columns']",
    }
    for name, message in cases.items():
        with pytest.raises(AopError) as error:
            load_model(tmp_path / name)
        assert str(error.value).startswith(f"{tmp_path / name}: {message}")
        assert "\n" not in str(error.value)
    with pytest.raises(AopError, match="cannot read the model file"):
        load_model(tmp_path)
