"""The classification study kind end to end: Lightning trials on Ray Tune, MLflow, aop classify."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import ray
import torch
import yaml
from mlflow import MlflowClient
from ray.cluster_utils import Cluster

from aop.errors import AopError
from aop.synth import preset_params
from aop.synth.classes import class_set
from aop.synth.dataset import write_synthetic_dataset
from aop.tuning.classification import load_class_data
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


@pytest.fixture(scope="module")
def class_data(tmp_path_factory):
    """A synthetic Myotube data set with classes; the truth copied as manual annotations."""
    root = tmp_path_factory.mktemp("cls") / "data"
    write_synthetic_dataset(root, preset_params("myotube"), (16, 80, 80), 2, seed=5,
                            preset="myotube", classes=class_set("myotube"))
    table = pd.read_csv(root / "annotations.csv")
    manual = table.assign(source="manual", annotator="test (truth)")
    pd.concat([table, manual]).to_csv(root / "annotations.csv", index=False)
    return root


def _experiment(tmp_path, data, **extra):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
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
