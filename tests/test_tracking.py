"""MLflow tracking against a real ``mlflow server`` and SQLite stores, with a real Ray Tune run."""

from __future__ import annotations

import pickle
import socket
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import yaml
from mlflow import MlflowClient
from mlflow_helpers import wait_for_mlflow

from aop.io import dataset_fingerprint
from aop.metrics import IPQ_SCORES
from aop.pipeline_model import log_pipeline_model
from aop.segmentation.models import build_model
from aop.segmentation.postprocess import postprocess
from aop.tracking import (
    EXPERIMENT_KIND,
    RUN_ID_FILE,
    StudyTracker,
    default_tracking_uri,
    flatten,
)
from aop.tuning.callbacks import StudyCallback, trial_record

ZEROS = {
    "erode_dilate": 0, "open_close": 0, "merge_continuity": 0.0, "merge_smoothness": 0.0,
    "merge_area": 0.0, "split_sigma": 0.0, "split_threshold": 0.0,
}
CONFIG = {"name": "study-a", "data": {"path": "/data/bench"}, "models": [{"name": "classical"}],
          "search": {"searcher": "gp", "budget": 4}}
SPACE = {"erode_dilate": {"low": -10, "high": 10}, "models": ["classical"]}


def record(search, trial_id, ipq, model="classical", iteration=0, **params):
    return {
        "search": search, "trial_id": trial_id, "params": {"model": model, **ZEROS, **params},
        "metrics": {"ipq": ipq, "sq": 0.9, "rq": ipq + 0.05, "iq": 1.0},
        "per_volume": {"v0": {"ipq": ipq - 0.1, "sq": 0.9}, "v1": {"ipq": ipq + 0.1, "sq": 0.9}},
        "duration_s": 3.25, "node": "node-7", "iteration": iteration,
    }


def seven(params):
    """The post-processing parameters of a record's params (without the model choice)."""
    return {k: v for k, v in params.items() if k != "model"}


def children(client, parent_id):
    parent = client.get_run(parent_id)
    return client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on loopback, serving artifacts, stopped after the module."""
    root = tmp_path_factory.mktemp("mlflow_server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=(root / "server.log").open("w"),
    )
    url = f"http://127.0.0.1:{port}"
    wait_for_mlflow(url, process, 120, root / "server.log")
    yield url
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


def test_flatten_and_default_uri(tmp_path):
    flat = flatten({"a": {"b": 1, "c": [1, 2]}, "models": [{"name": "x"}], "s": "t" * 7000}, "cfg")
    assert flat == {"cfg.a.b": "1", "cfg.a.c": "[1, 2]", "cfg.models.0.name": "x",
                    "cfg.s": "t" * 6000}
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"


def test_study_as_the_mlflow_ui_shows_it(mlflow_server, tmp_path, nuclei_3d, monkeypatch):
    study = tmp_path / "study"
    study.mkdir()
    (study / "experiment.yaml").write_text(yaml.safe_dump(CONFIG))
    bench = tmp_path / "bench"
    (bench / "images").mkdir(parents=True)
    (bench / "images" / "a.npy").write_bytes(b"123")
    fingerprint = dataset_fingerprint(bench)
    tracker = StudyTracker(
        study, tracking_uri=mlflow_server, experiment_name="ui-study", metric="ipq", group="model"
    )
    parent_id = tracker.start(CONFIG, SPACE, dataset=bench, description="a study of tests")
    assert (study / RUN_ID_FILE).read_text().strip() == parent_id

    trials = [
        record("baseline", "b0", 0.40),
        record("gp", "g0", 0.55, iteration=0, erode_dilate=1),
        record("gp", "g1", 0.75, iteration=1, erode_dilate=-1, open_close=1, merge_area=0.25),
    ]
    child_ids = [tracker.log_trial(t) for t in trials]
    assert all(child_ids) and len(set(child_ids)) == 3
    assert [tracker.log_trial(t) for t in trials] == [None, None, None]  # already logged

    best = trials[2]
    (study / "best.yaml").write_text(yaml.safe_dump(best))
    (study / "plots").mkdir()
    (study / "plots" / "comparison.png").write_bytes(b"\x89PNG fake bytes")
    tracker.log_model_safely(lambda: log_pipeline_model(
        tracker, best, spacing=(2.0, 1.0, 1.0),
        model_spec={"name": "classical", "settings": {"sigma": 1.0}},
    ))  # fmt: skip
    tracker.finish(
        best, artifacts=[study / "best.yaml", study / "plots" / "comparison.png"],
        description="done: 0.75",
    )

    client = MlflowClient(mlflow_server)  # what the UI reads
    experiment = client.get_experiment_by_name("ui-study")
    assert experiment.tags["mlflow.experimentKind"] == EXPERIMENT_KIND  # opens on the runs table
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.info.run_name == "study"
    assert parent.data.tags["mlflow.note.content"] == "done: 0.75"
    assert parent.data.tags["mlflow.source.type"] == "LOCAL"
    assert parent.data.tags["mlflow.source.name"] and parent.data.tags["mlflow.user"]
    (dataset_input,) = parent.inputs.dataset_inputs  # the runs table's Dataset column
    assert dataset_input.dataset.name == "bench" and dataset_input.dataset.digest == fingerprint
    assert dataset_input.tags[0].value == "benchmark"
    assert parent.data.tags["dataset.fingerprint"] == fingerprint
    assert parent.data.tags["aop.version"] and "pipeline.error" not in parent.data.tags
    assert parent.data.params["config.search.budget"] == "4"
    assert parent.data.params["config.models.0.name"] == "classical"
    assert parent.data.params["space.erode_dilate.high"] == "10"
    assert parent.data.metrics["best_ipq"] == pytest.approx(0.75)
    assert parent.data.tags["best.trial_id"] == "g1"
    assert parent.data.tags["best.merge_area"] == "0.25"
    history = client.get_metric_history(parent_id, "gp/ipq")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.55), (1, 0.75)]
    artifacts = {a.path for a in client.list_artifacts(parent_id)}
    assert {"experiment.yaml", "search_space.yaml", "best.yaml", "plots"} <= artifacts
    assert [a.path for a in client.list_artifacts(parent_id, "plots")] == ["plots/comparison.png"]

    runs = children(client, parent_id)
    assert len(runs) == 3
    by_trial = {r.data.tags["trial_id"]: r for r in runs}
    g1 = by_trial["g1"]
    assert g1.data.tags["mlflow.parentRunId"] == parent_id
    assert (g1.data.tags["search"], g1.data.tags["model"], g1.data.tags["node"]) == (
        "gp", "classical", "node-7")
    assert g1.data.params == {**{k: repr(v) for k, v in ZEROS.items()}, "erode_dilate": "-1",
                              "open_close": "1", "merge_area": "0.25", "model": "classical"}
    assert g1.data.metrics == pytest.approx({
        "ipq": 0.75, "sq": 0.9, "rq": 0.8, "iq": 1.0, "ipq/v0": 0.65, "sq/v0": 0.9,
        "ipq/v1": 0.85, "sq/v1": 0.9, "duration_s": 3.25,
    })
    assert g1.info.status == "FINISHED"
    assert g1.info.end_time - g1.info.start_time == 3250

    # the best pipeline as a pyfunc model: segment + post-process a new volume
    image = nuclei_3d[0][:, :40, :40].astype(np.float32)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    model = mlflow.pyfunc.load_model(f"runs:/{parent_id}/pipeline")
    spacing = (2.0, 1.0, 1.0)
    expected = postprocess(
        build_model("classical", sigma=1.0).predict(image, spacing), image, seven(best["params"]),
        spacing=spacing,
    )
    labels = model.predict(image)
    assert labels.dtype == np.uint32 and labels.shape == image.shape and labels.max() >= 5
    np.testing.assert_array_equal(labels, expected)
    flat = (1.0, 1.0, 1.0)
    segmented = build_model("classical", sigma=1.0).predict(image, flat)
    expected_flat = postprocess(segmented, image, seven(best["params"]), spacing=flat)
    np.testing.assert_array_equal(model.predict(image, params={"spacing": list(flat)}),
                                  expected_flat)
    assert not np.array_equal(expected_flat, expected)  # the spacing parameter matters


def test_resumed_study_reuses_parent_and_adds_no_duplicates(tmp_path):
    study = tmp_path / "study"
    first = StudyTracker(study, experiment_name="aop-segmentation")
    parent_id = first.start(CONFIG, SPACE, "fp")
    first.log_trial(record("gp", "t0", 0.5))
    first.log_trial(record("gp", "t1", 0.6))
    # the driver died while logging t2: its child run exists but never finished
    half = first.client.create_run(
        first.experiment_id, tags={"mlflow.parentRunId": parent_id, "search": "gp",
                                   "trial_id": "t2"})

    # a new driver process resumes the study
    second = StudyTracker(study, experiment_name="aop-segmentation")
    assert second.start({**CONFIG, "extra": 1}, SPACE, "fp") == parent_id
    assert second.logged_trials("gp") == {"t0", "t1"}
    assert second.log_trial(record("gp", "t0", 0.5)) is None
    assert second.log_trial(record("gp", "t2", 0.7)) is not None
    assert second.log_trial(record("random", "t0", 0.3)) is not None  # same id, other search
    client = MlflowClient(default_tracking_uri(study))
    runs = children(client, parent_id)
    assert sorted((r.data.tags["search"], r.data.tags["trial_id"]) for r in runs) == [
        ("gp", "t0"), ("gp", "t1"), ("gp", "t2"), ("random", "t0")]
    assert client.get_run(half.info.run_id).info.lifecycle_stage == "deleted"
    parent = client.get_run(parent_id)
    assert parent.data.params["config.extra"] == "1"  # new keys are added on resume
    assert len(client.search_runs([parent.info.experiment_id], "")) == 5  # parent + 4 children
    assert (study / "mlartifacts").is_dir()  # artifacts stay inside the study folder

    # a trial the restored Tune run does not know is pruned, and could be logged again
    assert second.prune_trials("gp", keep={"t0", "t2"}) == 1
    assert second.logged_trials("gp") == {"t0", "t2"}
    assert sorted(r.data.tags["trial_id"] for r in second.child_runs("gp")) == ["t0", "t2"]
    assert second.log_trial(record("gp", "t1", 0.6)) is not None


def test_tracker_errors_are_one_line(tmp_path):
    tracker = StudyTracker(tmp_path / "s", experiment_name="aop-segmentation")
    with pytest.raises(ValueError, match="has no MLflow run yet"):
        tracker.log_trial(record("gp", "t", 0.5))
    (tmp_path / "s").mkdir(exist_ok=True)
    (tmp_path / "s" / RUN_ID_FILE).write_text("not-a-run\n")
    with pytest.raises(ValueError, match="mlflow_run_id: not an MLflow run id"):
        StudyTracker(tmp_path / "s", experiment_name="aop-segmentation").start(CONFIG, SPACE)
    with pytest.raises(ValueError, match="trial x of search 'gp': field 'metrics' is empty"):
        trial_record("gp", "x", {"model": "m", **ZEROS}, {"ipq": None}, IPQ_SCORES)


def test_ray_tune_callback_logs_each_trial_once(mlflow_server, tmp_path, monkeypatch):
    import ray
    from ray import tune
    from ray.tune import Callback, RunConfig, TuneConfig, Tuner

    class KeepTrials(Callback):
        def __init__(self):
            self.trials = []

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.trials.append(trial)

    def trainable(config):
        ipq = 0.5 + 0.1 * config["erode_dilate"] + (0.05 if config["model"] == "b" else 0.0)
        tune.report({"ipq": ipq, "sq": 0.8, "rq": 0.9, "iq": 1.0, "ipq/v0": ipq - 0.01,
                     "ipq/v1": ipq + 0.01, "model": config["model"], "node": "worker-1"})

    study = tmp_path / "study"
    tracker = StudyTracker(study, tracking_uri=mlflow_server, experiment_name="tune-study")
    parent_id = tracker.start(CONFIG, SPACE)
    records = study / "results" / "gp.jsonl"
    callback = StudyCallback(records, "gp", "ipq", IPQ_SCORES, sink=tracker.log_trial)
    keep = KeepTrials()
    monkeypatch.setenv("RAY_raylet_start_wait_time_s", "300")  # a busy 2-core machine is slow
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        space = {**ZEROS, "model": tune.grid_search(["a", "b"]),
                 "erode_dilate": tune.grid_search([-1, 1])}
        results = Tuner(
            trainable,
            param_space=space,
            tune_config=TuneConfig(num_samples=1, max_concurrent_trials=2),
            run_config=RunConfig(name="gp", storage_path=str(tmp_path / "tune"),
                                 callbacks=[callback, keep], verbose=0),
        ).fit()
    finally:
        ray.shutdown()
    assert len(results) == 4 and not results.errors

    client = MlflowClient(mlflow_server)
    runs = children(client, parent_id)
    assert len(runs) == 4
    assert {r.data.tags["trial_id"] for r in runs} == {t.trial_id for t in keep.trials}
    for run in runs:
        expected = 0.5 + 0.1 * int(run.data.params["erode_dilate"])
        expected += 0.05 if run.data.params["model"] == "b" else 0.0
        assert run.data.metrics["ipq"] == pytest.approx(expected)
        assert run.data.metrics["ipq/v1"] == pytest.approx(expected + 0.01)
        assert run.data.tags["node"] == "worker-1" and run.data.tags["search"] == "gp"
        assert run.data.params["model"] in ("a", "b") and len(run.data.params) == 8

    assert len(records.read_text().splitlines()) == 4
    # a restored driver (callback unpickled, new client) sees the same trials complete again
    again = pickle.loads(pickle.dumps(callback))
    again.setup()
    for trial in keep.trials:
        again.on_trial_complete(0, keep.trials, trial)
    for trial in keep.trials:
        assert tracker.log_trial(
            trial_record("gp", trial.trial_id, trial.config, trial.last_result, IPQ_SCORES)
        ) is None
    assert len(children(client, parent_id)) == 4
    assert len(records.read_text().splitlines()) == 4


def _bright_box_package(folder: Path) -> Path:
    """A BioImage.IO package of one Conv3d (1 -> 2 channels) whose channel 0 marks bright voxels."""
    import torch

    from aop.segmentation.bioimageio_package import write_model_package

    kwargs = {"in_channels": 1, "out_channels": 2, "kernel_size": 3, "padding": 1}
    net = torch.nn.Conv3d(**kwargs)
    with torch.no_grad():
        net.weight.zero_()
        net.weight[0, 0, 1, 1, 1] = 40.0  # foreground = sigmoid(40 * (x - 0.5)) of the scaled image
        net.bias[:] = torch.tensor([-20.0, 0.0])
    return write_model_package(
        folder, net, callable_name="Conv3d", import_from="torch.nn", kwargs=kwargs,
        name="bright boxes", description="one fixed conv", voxel_size=(1.0, 0.5, 0.5),
        min_shape=(8, 8, 8), step=(1, 1, 1), halo=(2, 2, 2),
    )


def test_pipeline_model_packs_a_weights_folder(tmp_path, monkeypatch):
    import shutil

    package = _bright_box_package(tmp_path / "weights" / "boxes")
    settings = {"model": str(package), "foreground_channel": 0, "boundary_channel": None,
                "min_size": 1, "alpha": 0.0}
    spacing = (1.0, 0.5, 0.5)
    best = record("gp", "g3", 0.8, model="bioimageio", erode_dilate=1)
    image = np.zeros((16, 32, 32), dtype=np.float32)
    image[4:12, 4:14, 4:14] = 1.0
    image[4:12, 18:28, 16:28] = 1.0
    direct = build_model("bioimageio", **settings).predict(image, spacing)
    expected = postprocess(direct, image, seven(best["params"]), spacing=spacing)
    assert expected.max() == 2  # two boxes, two instances

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = StudyTracker(tmp_path / "study", tracking_uri=uri, experiment_name="aop-segmentation")
    parent_id = tracker.start(CONFIG, SPACE)
    model_uri = log_pipeline_model(tracker,
        best, spacing=spacing, model_spec={"name": "bioimageio", "settings": settings}
    )
    assert model_uri == f"runs:/{parent_id}/pipeline"
    shutil.rmtree(tmp_path / "weights")  # the pipeline must run from its packed copy

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    loaded = mlflow.pyfunc.load_model(model_uri)
    python_model = loaded.unwrap_python_model()
    assert python_model.packed_weights == ("model", "boxes")
    assert python_model.model_settings["model"] == str(package)  # the logged, now missing, path
    labels = loaded.predict(image)
    assert labels.dtype == np.uint32 and labels.shape == image.shape
    np.testing.assert_array_equal(labels, expected)
