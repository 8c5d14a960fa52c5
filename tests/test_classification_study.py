"""The classification study kind end to end: Lightning trials on Ray Tune, MLflow, aop classify."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import ray
import torch
import yaml
from class_helpers import resnet_lr_space, truth_annotated_dataset
from mlflow import MlflowClient
from ray.cluster_utils import Cluster

from aop.errors import AopError
from aop.tuning.classification import design_text, load_class_data
from aop.tuning.kinds import load_experiment
from aop.tuning.study import run_study

SPACE = {
    "parameters": {
        "encoder": {"choice": ["test_resnet", "test_efficientnet"]},
        "head": {"choice": ["slice", "volume"]},
        "pretraining": {"choice": ["none"]},
        "preprocessing": {"choice": ["mask", "distance"]},
        "lr": {"float": [1.0e-3, 1.0e-2], "log": True},
    },
    "start": {"default": {"encoder": "test_resnet", "head": "slice", "pretraining": "none",
                          "preprocessing": "mask", "lr": 3.0e-3}},
}


#: Both design families in one space: the tiny deep design and two feature models.
MIXED_SPACE = {
    "parameters": {
        "design": {"choice": ["deep", "features"]},
        "encoder": {"choice": ["test_resnet"], "when": {"design": "deep"}},
        "head": {"choice": ["slice", "volume"], "when": {"design": "deep"}},
        "pretraining": {"choice": ["none"], "when": {"design": "deep"}},
        "preprocessing": {"choice": ["mask"], "when": {"design": "deep"}},
        "lr": {"float": [1.0e-3, 1.0e-2], "log": True, "when": {"design": "deep"}},
        "model": {"choice": ["logistic_regression", "random_forest"],
                  "when": {"design": "features"}},
        "logreg_c": {"float": [1.0e-2, 1.0e2], "log": True,
                     "when": {"model": "logistic_regression"}},
        "rf_trees": {"int": [20, 80], "log": True, "when": {"model": "random_forest"}},
        "rf_min_samples_leaf": {"int": [1, 3], "when": {"model": "random_forest"}},
    },
    "start": {"default": [
        {"design": "deep", "encoder": "test_resnet", "head": "slice", "pretraining": "none",
         "preprocessing": "mask", "lr": 3.0e-3},
        {"design": "features", "model": "logistic_regression", "logreg_c": 1.0},
        {"design": "features", "model": "random_forest", "rf_trees": 40, "rf_min_samples_leaf": 1},
    ]},
}  # fmt: skip
#: Feature designs only (``design`` a constant): the study's pick is a scikit-learn pipeline.
FEATURE_SPACE = {
    "parameters": {
        "design": "features",
        "model": {"choice": ["logistic_regression", "random_forest"],
                  "when": {"design": "features"}},
        "logreg_c": {"float": [1.0e-2, 1.0e2], "log": True,
                     "when": {"model": "logistic_regression"}},
        "rf_trees": {"int": [20, 80], "log": True, "when": {"model": "random_forest"}},
        "rf_min_samples_leaf": {"int": [1, 3], "when": {"model": "random_forest"}},
    },
    "start": {"default": [{"model": "logistic_regression", "logreg_c": 1.0}]},
}  # fmt: skip
#: The parameters a trial of each family (and feature model) holds, and nothing else.
FAMILY_PARAMETERS = {
    "deep": {"design", "encoder", "head", "pretraining", "preprocessing", "lr"},
    "logistic_regression": {"design", "model", "logreg_c"},
    "random_forest": {"design", "model", "rf_trees", "rf_min_samples_leaf"},
}


@pytest.fixture(scope="module")
def class_data(tmp_path_factory):
    """A synthetic Myotube data set with classes; the truth copied as manual annotations."""
    return truth_annotated_dataset(tmp_path_factory.mktemp("cls") / "data", (16, 80, 80), 2, 5)


def _experiment(tmp_path, data, space=SPACE, **extra):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    raw = {
        "name": "cls", "kind": "classification", "data": {"dataset": str(data)},
        "crops": {"size": [6, 16, 16]},
        "training": {"max_epochs": 2, "patience": 2, "batch_size": 8, "head_width": 8,
                     "head_depth": 1, "val_fraction": 0.3, "test_fraction": 0.2, "folds": 1},
        "search": {"searcher": "smac", "budget": 2, "concurrency": 2, "seed": 0},
        "search_space": str(tmp_path / "space.yaml"),
        "storage": {"study_dir": str(tmp_path / "study")},
        "comparison": {"random": False}, "ray": {"num_cpus": 2}, **extra,
    }
    path = tmp_path / "cls.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_crops_are_made_once_per_preprocessing_method(class_data, tmp_path):
    exp = load_experiment(_experiment(tmp_path, class_data))
    bundle = load_class_data(exp, ["mask", "distance"])
    manual = bundle["manual"]
    n = len(pd.read_csv(class_data / "annotations.csv").query("source == 'manual'"))
    assert len(manual["keys"]) == n == len(manual["y"])
    assert manual["crops"]["mask"].shape == manual["crops"]["distance"].shape
    assert manual["crops"]["mask"].shape[0] == n
    assert manual["crops"]["mask"].shape[2:] == (6, 16, 16)
    assert not np.array_equal(manual["crops"]["mask"], manual["crops"]["distance"])
    assert bundle["classes"] == ["myotube", "schwann", "debris", "other"]
    assert len(bundle["pseudo"]["y"]) == 0  # no spread rows in this data set


def test_weights_for_full_pretraining_are_checked_when_the_experiment_loads(class_data, tmp_path):
    space = {**SPACE, "parameters": {**SPACE["parameters"],
                                     "pretraining": {"choice": ["none", "full"]}}}
    path = _experiment(tmp_path, class_data)
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    with pytest.raises(AopError, match=r"cls.yaml: weights.test_resnet: .*"):
        load_experiment(path)
    raw = yaml.safe_load(path.read_text())
    raw["weights"] = {"resnet18": "x.safetensors"}
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(AopError, match=r"weights.resnet18: not an encoder of the search space"):
        load_experiment(path)


@pytest.mark.slow
def test_a_classification_study_trains_logs_registers_and_classifies(class_data, tmp_path):
    """A whole study on a 2-node local cluster (one CPU each: one trial per node), its MLflow
    runs and registered model, and aop classify with it."""
    from aop.classify import classify_dataset

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        # Tune's trial folders on a storage URI, as on a cluster without a shared disk: the
        # best checkpoint is fetched from there for the logged model and aop classify
        remote = tmp_path / "remote_tune"
        exp = load_experiment(_experiment(
            tmp_path, class_data, ray={"address": cluster.address},
            storage={"study_dir": str(tmp_path / "study"), "tune_storage": remote.as_uri()},
        ))
        result = run_study(exp, verbose=0)
        records = result.records["smac"]
        assert len(records) == 2
        assert len({n["NodeID"] for n in ray.nodes() if n["Alive"]}) == 2
        assert len({r["node"] for r in records}) == 2  # both nodes trained
        for record in records:
            assert 0.0 <= record["metrics"]["val_accuracy"] <= 1.0
            assert record["params"]["pretraining"] == "none"
            curve = record["curves"]["val_accuracy_epoch"]
            assert 1 <= len(curve) <= 2 and record["metrics"]["epoch"] == len(curve)
            assert math.isclose(record["metrics"]["val_accuracy"], max(v for _, v in curve),
                                rel_tol=1e-6)
            assert len(record["test"]["confusion_matrix"]) == 4
        assert not (exp.study_dir / "tune").exists() and (remote / "smac").is_dir()
        first = min(records, key=lambda r: r["iteration"])
        assert first["params"]["encoder"] == "test_resnet" and first["params"]["lr"] == 3e-3
        study = exp.study_dir
        best = yaml.safe_load((study / "best.yaml").read_text())
        assert best["kind"] == "classification" and "test" in best
        for name in ("fig6_encoder_head_preprocessing.png", "fig6_encoder_pretraining.png",
                     "confusion.png"):
            assert (study / "plots" / name).is_file()
        inference = pd.read_csv(study / "tables" / "inference.csv")
        assert (inference["instances_per_s_batch_32"] > 0).all()

        client = MlflowClient(exp.tracking_uri)
        parent = client.get_run((study / "mlflow_run_id").read_text().strip())
        assert client.get_experiment(parent.info.experiment_id).name == "aop-classification"
        children = client.search_runs(
            [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        assert len(children) == 2
        for child in children:  # each trial's confusion matrix image
            assert "confusion.png" in {a.path for a in client.list_artifacts(child.info.run_id)}
        by_trial = {r["trial_id"]: r for r in records}
        for child in children:  # Lightning's MLflow logger wrote each epoch from inside the trial
            assert child.data.tags["aop.trial_open"] == "true" and child.info.status == "FINISHED"
            record = by_trial[child.data.tags["trial_id"]]
            epochs = int(record["metrics"]["epoch"])
            for name in ("curve/val_acc", "curve/val_loss", "curve/train_loss"):
                history = client.get_metric_history(child.info.run_id, name)
                assert [m.step for m in history] == list(range(1, epochs + 1)), name
            accuracy = [m.value for m in client.get_metric_history(child.info.run_id,
                                                                   "curve/val_acc")]
            assert accuracy == pytest.approx([v for _, v in record["curves"]["val_accuracy_epoch"]])
            assert "curve/val_accuracy_epoch" not in child.data.metrics  # not twice
            assert child.data.params["encoder"] == record["params"]["encoder"]
        assert "classifier.error" not in parent.data.tags, parent.data.tags["classifier.error"]
        version = client.search_model_versions("name = 'aop-cls-classifier'")[0]
        mlflow.set_tracking_uri(exp.tracking_uri)  # models:/ URIs resolve in the study's store
        model = mlflow.pytorch.load_model(f"models:/aop-cls-classifier/{version.version}")
        from aop.classify import classifier_source

        source = classifier_source(study)
        direct = source.load().eval()
        x = torch.randn(3, 3, 6, 16, 16)  # three channels: the mask and two markers
        with torch.no_grad():
            np.testing.assert_allclose(model.eval()(x).numpy(), direct(x).numpy(), atol=1e-5)

        count = classify_dataset(study, class_data)
        table = pd.read_csv(class_data / "annotations.csv")
        predicted = table.query("source == 'predicted'")
        assert count == len(predicted) == len(table.query("source == 'truth'"))
        probabilities = pd.read_csv(class_data / "predictions.csv")
        columns = [f"p_{c}" for c in ("myotube", "schwann", "debris", "other")]
        np.testing.assert_allclose(probabilities[columns].sum(axis=1), 1.0, atol=1e-4)
        uri = f"models:/aop-cls-classifier/{version.version}"
        requirements = Path(mlflow.pyfunc.get_model_dependencies(uri)).read_text()
        assert "aop==" in requirements and "timm==" in requirements  # given, not inferred
        assert classify_dataset(uri, class_data) == count  # the same from the registry
    finally:
        mlflow.set_tracking_uri(None)
        ray.shutdown()
        cluster.shutdown()


def test_the_objective_picks_the_metric_and_comes_first(class_data, tmp_path):
    from aop.tuning.kinds import study_kind

    kind = study_kind(load_experiment(_experiment(tmp_path, class_data)))
    assert kind.metric == "val_accuracy"
    assert kind.metrics == ("val_accuracy", "val_balanced_accuracy", "test_accuracy",
                            "test_balanced_accuracy", "epoch")  # fmt: skip
    kind = study_kind(load_experiment(_experiment(tmp_path, class_data,
                                                  objective="balanced_accuracy")))
    assert kind.metric == "val_balanced_accuracy"
    assert kind.metrics == ("val_balanced_accuracy", "val_accuracy", "test_accuracy",
                            "test_balanced_accuracy", "epoch")  # fmt: skip
    assert kind.curves == ("val_balanced_accuracy_epoch", "val_balanced_accuracy")
    assert sorted(kind.metrics) == sorted(
        study_kind(load_experiment(_experiment(tmp_path, class_data))).metrics)


@pytest.mark.parametrize("searcher", ["smac", "gp", "tpe", "random"])
def test_a_space_with_design_as_a_constant_is_searched(class_data, tmp_path, searcher):
    """``design: features`` written as a constant, the parent of ``model``'s condition (as the
    search-space format allows): each searcher suggests a feature design's active parameters."""
    from aop.tuning.kinds import study_kind
    from aop.tuning.searchers import make_searcher

    exp = load_experiment(_experiment(tmp_path, class_data, space=FEATURE_SPACE))
    space = study_kind(exp).search_space(exp)
    assert space.fixed == {"design": "features"}
    found = make_searcher(searcher, space, metric="val_accuracy", mode="max", seed=0,
                          concurrency=4)  # fmt: skip
    for i in range(4):
        config = {**space.fixed, **found.suggest(f"t{i}")}
        assert set(config) == FAMILY_PARAMETERS[config["model"]], config
        assert space.contains(config)


def _manual_features(data: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Instance features and class indices of the manual labels, volume by volume, label order."""
    from aop.instances.features import instance_features
    from aop.io import load_dataset

    classes = [c["name"] for c in yaml.safe_load((data / "dataset.yaml").read_text())["classes"]]
    manual = pd.read_csv(data / "annotations.csv").query("source == 'manual'")
    dataset = load_dataset(data, require_labels=True)
    tables, y = [], []
    for volume, rows in manual.sort_values(["volume", "label"]).groupby("volume", sort=True):
        table = instance_features(dataset.labels(volume), dataset.image(volume),
                                  dataset.info.voxel_size).set_index("label")  # fmt: skip
        tables.append(table.loc[rows["label"].astype(int).to_list()])
        y += [classes.index(c) for c in rows["class"]]
    features = pd.concat(tables, ignore_index=True)
    position = [c for c in features.columns if c.startswith("centroid_")]
    return features.drop(columns=position), np.asarray(y)


def _baseline_by_hand(x: pd.DataFrame, y: np.ndarray, splits) -> dict:
    """StandardScaler + LogisticRegression(C=1, balanced class weights) on every fold, pooled;
    refitted on the rest for the test split. Accuracy is counted here."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def fit(index):
        model = make_pipeline(StandardScaler(), LogisticRegression(
            C=1.0, class_weight="balanced", max_iter=10_000))
        return model.fit(x.iloc[index], y[index])

    predicted = [fit(train).predict(x.iloc[val]) for train, val in splits.folds]
    truth = [y[val] for _, val in splits.folds]
    test = fit(splits.rest).predict(x.iloc[splits.test]) == y[splits.test]
    return {
        "val_accuracy": float(np.mean(np.concatenate(predicted) == np.concatenate(truth))),
        "val_balanced_accuracy": balanced_accuracy_score(np.concatenate(truth),
                                                         np.concatenate(predicted)),
        "folds_balanced": [balanced_accuracy_score(t, p) for t, p in zip(truth, predicted,
                                                                          strict=True)],
        "test_accuracy": float(test.mean()),
    }  # fmt: skip


def _check_records(records: list[dict], sizes: list[int], max_epochs: int) -> None:
    """Each record holds its family's parameters only, its fold scores, and pooled validation
    scores that are the fold scores weighted by the folds' validation sizes."""
    for record in records:
        params = record["params"]
        family = "deep" if params["design"] == "deep" else params["model"]
        assert set(params) == FAMILY_PARAMETERS[family], params
        metrics, scores = record["metrics"], record["folds"]
        assert len(scores["accuracy"]) == len(scores["balanced_accuracy"]) == len(sizes)
        for value in [*scores["accuracy"], *scores["balanced_accuracy"],
                      *(metrics[m] for m in ("val_accuracy", "val_balanced_accuracy",
                                             "test_accuracy", "test_balanced_accuracy"))]:
            assert 0.0 <= value <= 1.0, record
        # pooled out-of-fold predictions: the fold accuracies weighted by their sizes
        assert metrics["val_accuracy"] == pytest.approx(
            np.average(scores["accuracy"], weights=sizes), abs=1e-9)
        if family == "deep":  # patience = max_epochs: every fold trains all its epochs
            assert metrics["epoch"] == len(sizes) * max_epochs


@pytest.mark.slow
def test_a_study_of_deep_and_feature_designs_with_a_baseline(class_data, tmp_path):
    """Both design families in one search on 2 folds, with balanced accuracy as the objective:
    records, fold scores, the baseline checked against scikit-learn by hand, its comparison and
    verdict in best.yaml, aop report and MLflow. Then a study of feature designs only (its pick
    is one by construction) in the same Ray: its registered scikit-learn model, and aop classify
    from the study folder and from the models:/ URI."""
    from rich.console import Console

    from aop.analysis.report import load_report, print_report
    from aop.classification.evaluation import design_splits
    from aop.classification.tabular import load_model
    from aop.classify import classify_dataset
    from aop.tuning.classification_trial import FEATURE_MODEL_FILE, best_checkpoint

    folds, max_epochs = 2, 2
    training = {"max_epochs": max_epochs, "patience": max_epochs, "batch_size": 8,
                "head_width": 8, "head_depth": 1, "test_fraction": 0.2, "folds": folds,
                "class_weights": "balanced"}  # fmt: skip
    exp = load_experiment(_experiment(
        tmp_path, class_data, space=MIXED_SPACE, training=training,
        search={"searcher": "smac", "budget": 5, "concurrency": 2, "seed": 0},
        objective="balanced_accuracy",
    ))  # fmt: skip
    (tmp_path / "features").mkdir()
    features_exp = load_experiment(_experiment(
        tmp_path / "features", class_data, space=FEATURE_SPACE, training=training,
        search={"searcher": "random", "budget": 2, "concurrency": 2, "seed": 0},
    ))  # fmt: skip
    x, y = _manual_features(class_data)
    splits = design_splits(y, folds=folds, val_fraction=0.3, test_fraction=0.2,
                           seed=exp.search.seed)  # fmt: skip
    sizes = [len(val) for _, val in splits.folds]
    by_hand = _baseline_by_hand(x, y, splits)
    if ray.is_initialized():
        ray.shutdown()
    try:
        records = run_study(exp, verbose=0).records["smac"]
        assert len(records) == 5 and len({r["trial_id"] for r in records}) == 5
        families = [r["params"]["design"] for r in records]
        assert {"deep", "features"} <= set(families), families
        assert {r["params"].get("model") for r in records} >= {"logistic_regression",
                                                                 "random_forest"}
        _check_records(records, sizes, max_epochs)

        metric = "val_balanced_accuracy"
        best = yaml.safe_load((exp.study_dir / "best.yaml").read_text())
        assert best["scores"][metric] == max(r["metrics"][metric] for r in records)
        reference = best["reference"]
        assert reference["scores"]["val_accuracy"] == pytest.approx(by_hand["val_accuracy"])
        assert reference["scores"][metric] == pytest.approx(by_hand[metric])
        assert reference["scores"]["test_accuracy"] == pytest.approx(by_hand["test_accuracy"])
        comparison = reference["comparison"]  # the best has fold scores: paired over them
        assert comparison["n"] == folds
        difference = np.mean(np.subtract(best["folds"]["balanced_accuracy"],
                                         by_hand["folds_balanced"]))
        assert comparison["mean_difference"] == pytest.approx(difference)
        assert comparison["wins"] + comparison["ties"] + comparison["losses"] == folds
        verdict, value = reference["verdict"], best["scores"][metric]
        assert verdict.startswith(
            f"The study's pick ({design_text(best['params'])}, {metric} {value:.3f}) is ")
        deep = max(r["metrics"][metric] for r in records if r["params"]["design"] == "deep")
        if best["params"]["design"] == "features":  # said only when the best deep design loses
            assert ("The best deep design (deep: test_resnet" in verdict) == (
                deep < by_hand[metric])
        assert (exp.study_dir / "plots" / "fig6_designs.png").is_file()

        console = Console(record=True, width=400)
        print_report(load_report(exp.study_dir), console)
        text = console.export_text()
        assert "Reference" in text and verdict in text

        client = MlflowClient(exp.tracking_uri)
        parent = client.get_run((exp.study_dir / "mlflow_run_id").read_text().strip())
        assert parent.data.metrics["reference_val_accuracy"] == pytest.approx(
            by_hand["val_accuracy"])
        assert parent.data.tags["reference.verdict"] == verdict
        children = client.search_runs(
            [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
        assert sorted(c.data.tags["trial_id"] for c in children) == sorted(
            r["trial_id"] for r in records)
        assert "classifier.error" not in parent.data.tags, parent.data.tags["classifier.error"]
        version = client.search_model_versions("name = 'aop-cls-classifier'")[0]
        mlflow.set_tracking_uri(exp.tracking_uri)  # models:/ URIs resolve in the study's store
        info = mlflow.models.get_model_info(f"models:/aop-cls-classifier/{version.version}")
        assert info.metadata["design"] == best["params"]["design"]
        assert mlflow.pyfunc.load_model(info.model_uri) is not None

        # feature designs only: the pick is a scikit-learn pipeline
        records = run_study(features_exp, verbose=0).records["random"]
        assert len(records) == 2 and all(r["params"]["design"] == "features" for r in records)
        _check_records(records, sizes, max_epochs)
        study = features_exp.study_dir
        best = yaml.safe_load((study / "best.yaml").read_text())
        assert best["reference"]["scores"]["val_accuracy"] == pytest.approx(
            by_hand["val_accuracy"])  # the same splits: the same baseline
        client = MlflowClient(features_exp.tracking_uri)
        assert "classifier.error" not in client.get_run(
            (study / "mlflow_run_id").read_text().strip()).data.tags
        version = client.search_model_versions("name = 'aop-cls-classifier'")[0]
        uri = f"models:/aop-cls-classifier/{version.version}"
        mlflow.set_tracking_uri(features_exp.tracking_uri)
        info = mlflow.models.get_model_info(uri)
        assert info.metadata["design"] == "features"
        assert info.metadata["model"] == best["params"]["model"]
        assert info.metadata["classes"] == ["myotube", "schwann", "debris", "other"]
        registered = mlflow.sklearn.load_model(uri)
        own = load_model(best_checkpoint(study, best, filename=FEATURE_MODEL_FILE))
        columns = info.metadata["feature_columns"]
        assert columns == list(own.feature_names_in_)
        np.testing.assert_array_equal(registered.predict_proba(x[columns]),
                                      own.predict_proba(x[columns]))

        data = tmp_path / "apply"  # a copy: aop classify writes into the data set
        shutil.copytree(class_data, data)
        count = classify_dataset(study, data)
        from_study = (data / "predictions.csv").read_bytes()
        table = pd.read_csv(data / "annotations.csv")
        assert count == len(table.query("source == 'predicted'")) == len(
            table.query("source == 'truth'"))
        assert classify_dataset(uri, data) == count
        assert (data / "predictions.csv").read_bytes() == from_study
        predictions = pd.read_csv(data / "predictions.csv")
        columns = [f"p_{c}" for c in ("myotube", "schwann", "debris", "other")]
        np.testing.assert_allclose(predictions[columns].sum(axis=1), 1.0, atol=1e-6)
    finally:
        mlflow.set_tracking_uri(None)
        ray.shutdown()


#: Deep designs only, a good learning rate and a hopeless one evaluated first (start points).
ASHA_SPACE = resnet_lr_space(
    1.0e-7, 1.0e-2, [{"head": "slice", "lr": 1.0e-2}, {"head": "slice", "lr": 1.0e-7}]
)


@pytest.mark.slow
def test_asha_stops_poor_deep_trials_and_the_pick_trained_to_its_end(class_data, tmp_path):
    """``search.scheduler: asha`` on deep trials: a hopeless design stops at the first rung,
    its record and MLflow run say where, the searcher learned it, and the pick ran every epoch."""
    max_epochs = 4
    exp = load_experiment(_experiment(
        tmp_path, class_data, space=ASHA_SPACE,
        training={"max_epochs": max_epochs, "patience": max_epochs, "batch_size": 8,
                  "head_width": 8, "head_depth": 1, "val_fraction": 0.3, "test_fraction": 0.2,
                  "folds": 1},
        search={"searcher": "gp", "budget": 4, "concurrency": 1, "seed": 0,
                "scheduler": {"name": "asha", "grace_period": 1, "reduction_factor": 2}},
    ))  # fmt: skip
    result = run_study(exp, verbose=-1)
    records = result.records["gp"]
    assert len(records) == 4
    stopped = [r for r in records if r.get("stopped_at")]
    ended = [r for r in records if not r.get("stopped_at")]
    hopeless = next(r for r in records if r["params"]["lr"] == pytest.approx(1.0e-7))
    assert hopeless in stopped and ended
    for record in stopped:
        epoch = record["stopped_at"]["epoch"]
        assert epoch in (1, 2)  # the rungs below the last epoch: 1 and 2
        assert record["metrics"]["epoch"] == epoch
        assert "test" not in record and "test_accuracy" not in record["metrics"]
    for record in ended:
        assert record["metrics"]["epoch"] == max_epochs
        assert 0.0 <= record["metrics"]["test_accuracy"] <= 1.0
    best = yaml.safe_load((exp.study_dir / "best.yaml").read_text())
    assert best["trial_id"] in {r["trial_id"] for r in ended}
    tags = {r.data.tags["trial_id"]: r.data.tags for r in
            MlflowClient(exp.tracking_uri).search_runs(
                [MlflowClient(exp.tracking_uri).get_experiment_by_name(
                    "aop-classification").experiment_id],
                filter_string="tags.search = 'gp'")}  # fmt: skip
    for record in records:
        epoch = (record.get("stopped_at") or {}).get("epoch")
        assert tags[record["trial_id"]].get("stopped_at_epoch") == (
            None if epoch is None else f"{epoch:g}")
