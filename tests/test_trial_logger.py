"""Lightning's MLflow logger inside a trial: curves into the trial's own child run, never fatal."""

from __future__ import annotations

import warnings

import pytest

from aop.tracking import StudyTracker
from aop.tracking.trial_logger import TrialCurveLogger, open_trial_logger, store_reachable

RECORD = {"search": "smac", "trial_id": "t1", "params": {"encoder": "test_resnet", "lr": 0.003},
          "ipq": 0.5, "sq": 0.5, "rq": 1.0, "iq": 1.0}  # fmt: skip


def _tracker(tmp_path):
    tracker = StudyTracker(tmp_path / "study", experiment_name="curves")
    tracker.start({}, {})
    return tracker


def test_a_trial_logs_its_curves_into_the_run_its_record_completes(tmp_path):
    tracker = _tracker(tmp_path)
    run_id = tracker.open_trial_run("smac", "t1", "node-a")
    assert tracker.open_trial_run("smac", "t1", "node-a") == run_id  # a resumed trial: same run
    epoch = {"n": 1}
    logger = TrialCurveLogger(tracker.tracking_uri, run_id, step=lambda: epoch["n"])
    logger.log_hyperparams({"lr": 1.0})  # the driver's parameters win: nothing logged
    for n, value in ((1, 0.25), (2, 0.75)):
        epoch["n"] = n
        logger.log_metrics({"val_acc": value, "epoch": n - 1})
    logger.finalize("success")
    client = tracker.client
    assert client.get_run(run_id).info.status == "RUNNING"  # only the record ends the run
    history = client.get_metric_history(run_id, "curve/val_acc")
    assert [(m.step, m.value) for m in history] == [(1, 0.25), (2, 0.75)]
    assert "curve/epoch" not in client.get_run(run_id).data.metrics

    fresh = StudyTracker(tmp_path / "study", experiment_name="curves")  # the driver, later
    assert fresh.log_trial({**RECORD, "curves": {"val_accuracy_epoch": [[1, 0.25]]}}) == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params == {"encoder": "test_resnet",
                                                                 "lr": "0.003"}
    assert "curve/val_accuracy_epoch" not in run.data.metrics  # the trial's curves, not twice
    assert [r.info.run_id for r in fresh.child_runs()] == [run_id]
    assert fresh.log_trial(RECORD) is None  # logged once


def test_a_run_opened_by_a_trial_that_failed_is_closed_as_failed(tmp_path):
    tracker = _tracker(tmp_path)
    run_id = tracker.open_trial_run("smac", "t9")
    tracker.log_trial(RECORD)  # another trial: a new run
    assert tracker.close_open_runs() == 1
    assert tracker.client.get_run(run_id).info.status == "FAILED"
    assert len(tracker.child_runs()) == 2


def test_the_logger_never_stops_a_training(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    logger = TrialCurveLogger("http://127.0.0.1:9", "0" * 32, step=lambda: 1)  # nobody there
    with pytest.warns(UserWarning, match="curves of run .* not logged from epoch 1"):
        logger.log_metrics({"val_acc": 0.5})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        logger.log_metrics({"val_acc": 0.6})  # warned once


def test_a_store_out_of_reach_gives_no_logger(tmp_path):
    missing = f"sqlite:///{tmp_path / 'elsewhere' / 'mlflow.db'}"
    assert not store_reachable(missing) and store_reachable("http://mlflow:5000")
    tracking = {"study_dir": str(tmp_path), "tracking_uri": missing, "experiment": "curves"}
    assert open_trial_logger(tracking, "smac", "t1", "n", step=lambda: 0) is None
    assert open_trial_logger(None, "smac", "t1", "n", step=lambda: 0) is None
