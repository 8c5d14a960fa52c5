"""A classification study that survives its driver; truth matching of the demo."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from class_helpers import resnet_lr_space, truth_annotated_dataset
from mlflow_helpers import study_tracker

from aop.instances.truth import match_instances, simulate_annotation

AOP = [sys.executable, "-c", "from aop.cli import main; main()"]
MAX_EPOCHS = 10  # long enough to be caught training; an epoch is a fraction of a second
SPACE = resnet_lr_space(1.0e-3, 1.0e-2, {"head": "slice", "lr": 3.0e-3})
#: A deep design and a feature design (a forest of 500 trees: seconds, not a blink) side by side.
MIXED_SPACE = {
    "parameters": {
        "design": {"choice": ["deep", "features"]},
        "encoder": {"choice": ["test_resnet"], "when": {"design": "deep"}},
        "head": {"choice": ["slice", "volume"], "when": {"design": "deep"}},
        "pretraining": {"choice": ["none"], "when": {"design": "deep"}},
        "preprocessing": {"choice": ["mask"], "when": {"design": "deep"}},
        "lr": {"float": [1.0e-3, 1.0e-2], "log": True, "when": {"design": "deep"}},
        "model": {"choice": ["random_forest"], "when": {"design": "features"}},
        "rf_trees": {"choice": [500], "when": {"model": "random_forest"}},
    },
    "start": {"default": [
        {"design": "deep", "encoder": "test_resnet", "head": "slice", "pretraining": "none",
         "preprocessing": "mask", "lr": 3.0e-3},
        {"design": "features", "model": "random_forest", "rf_trees": 500},
    ]},
}  # fmt: skip


@pytest.fixture(scope="module")
def class_data(tmp_path_factory):
    """Three synthetic Myotube volumes with classes; the truth copied as manual annotations."""
    root = tmp_path_factory.mktemp("clsres") / "data"
    return truth_annotated_dataset(root, (16, 96, 96), 3, 101)


def _experiment(tmp_path: Path, data: Path, space: dict = SPACE, **extra) -> Path:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    raw = {
        "name": "clsres", "kind": "classification", "data": {"dataset": str(data)},
        "crops": {"size": [4, 16, 16]},
        "training": {"max_epochs": MAX_EPOCHS, "patience": MAX_EPOCHS, "batch_size": 8,
                     "head_width": 8, "head_depth": 1, "augment": False,
                     "val_fraction": 0.3, "test_fraction": 0.2, "folds": 1},
        "search": {"searcher": "smac", "budget": 2, "concurrency": 2, "seed": 0,
                   "resources": {"cpus": 1, "gpu": 0}},
        "search_space": str(tmp_path / "space.yaml"),
        "storage": {"study_dir": str(tmp_path / "study")},
        "comparison": {"random": False}, "ray": {"num_cpus": 2}, **extra,
    }
    path = tmp_path / "clsres.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _trial_states(study: Path) -> list[tuple[dict, dict]]:
    """``(meta, run)`` of every trial in the driver's latest saved Tune experiment state: the
    trial's id, config and status, and its last reported result."""
    states = sorted((study / "tune" / "smac").glob("experiment_state-*.json"))
    if not states:
        return []
    try:
        trials = json.loads(states[-1].read_text())["trial_data"]
        return [(json.loads(meta), json.loads(run)) for meta, run in trials]
    except (OSError, ValueError, KeyError):  # being written
        return []


def _unfinished(study: Path, trial_id: str) -> bool:
    """No final report of the trial yet (its best.ckpt comes with it)."""
    return not any((study / "tune" / "smac" / trial_id).glob("checkpoint_*/best.ckpt"))


def _training_trial(study: Path) -> str | None:
    """A trial whose epoch reports the driver has saved in Tune's experiment state (so there is
    a checkpoint to resume from) but that has not finished (no best.ckpt)."""
    for meta, run in _trial_states(study):
        reported = run["last_result"].get("training_iteration") or 0
        if reported >= 2 and _unfinished(study, meta["trial_id"]):
            return meta["trial_id"]
    return None


def _deep_trial_in_second_fold(study: Path) -> str | None:
    """A deep trial whose last saved report is of its second fold (a checkpoint in that fold to
    resume from), not yet finished."""
    for meta, run in _trial_states(study):
        last = run["last_result"]
        if last.get("fold") == 1 and not last.get("final") and _unfinished(
                study, meta["trial_id"]):
            return meta["trial_id"]
    return None


def _running_feature_trial(study: Path) -> str | None:
    """A feature trial that Tune's saved state shows running and that has reported nothing."""
    for meta, run in _trial_states(study):
        if (meta["config"].get("design") == "features" and meta["status"] == "RUNNING"
                and not run["last_result"].get("final")):
            return meta["trial_id"]
    return None


def _kill_when(
    argv: list[str], study: Path, find: Callable[[Path], str | None], log: Path, env: dict
) -> str | None:
    """Run ``aop ARGV``; SIGKILL it (and the local Ray it started) once ``find(study)`` names a
    trial. Returns that trial, or None when the command ended first."""
    with log.open("a") as handle:
        driver = subprocess.Popen([*AOP, *argv, "--quiet"], stdout=subprocess.DEVNULL,
                                  stderr=handle, start_new_session=True, env=env)  # fmt: skip
        found = None
        try:
            deadline = time.monotonic() + 240
            while found is None and driver.poll() is None:
                assert time.monotonic() < deadline, f"{argv[0]}: no trial to kill in time"
                found = find(study) if (study / "tune" / "smac").is_dir() else None
                time.sleep(0.05)
        finally:
            if driver.poll() is None:
                os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    return found


def test_each_segmented_instance_takes_the_truth_instance_it_overlaps_most(tmp_path):
    truth = np.zeros((1, 4, 8), np.uint16)
    truth[0, :, :4], truth[0, :, 4:] = 3, 9
    seg = np.zeros_like(truth)
    seg[0, :, 1:6] = 1  # 12 voxels on 3, 8 on 9
    seg[0, 0, 7] = 2  # inside 9 only
    match = match_instances(seg, truth)
    assert match.values.tolist() == [[1, 3, 12, 20], [2, 9, 1, 1]]
    with pytest.raises(Exception, match="differs from truth shape"):
        match_instances(seg, truth[:, :2])


@pytest.mark.slow
def test_a_study_killed_during_a_training_resumes_that_training(class_data, tmp_path):
    """SIGKILL of the driver while a trial trains; aop resume continues it from its checkpoint."""
    experiment = _experiment(tmp_path, class_data)
    study = tmp_path / "study"
    # the trials' scratch folders (and Ray's) in a folder of this test: removed after the kill,
    # as on a resume on another node, so the resumed training has only its Tune checkpoint
    scratch = Path(tempfile.mkdtemp(prefix="aopk", dir="/tmp"))  # short: Ray's socket paths
    env = {**os.environ, "TMPDIR": str(scratch)}
    killed = _kill_when(["search", str(experiment)], study, _training_trial,
                        tmp_path / "search.log", env)  # fmt: skip
    tail = (tmp_path / "search.log").read_text()[-1500:]
    assert killed is not None, f"no training was interrupted: {tail}"
    results = study / "results" / "smac.jsonl"
    assert killed not in {r["trial_id"] for r in _records(results)}
    scratches = list(scratch.glob("aop-trial-*"))
    assert scratches, "the trials did not train in the test's TMPDIR"
    for folder in scratches:  # the killed trainings' folders (Ray's own files stay)
        shutil.rmtree(folder, ignore_errors=True)

    try:
        done = subprocess.run([*AOP, "resume", str(study), "--quiet"], capture_output=True,
                              text=True, timeout=400, env=env)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    after = _records(results)
    ids = [r["trial_id"] for r in after]
    assert len(after) == 2 and len(set(ids)) == 2 and killed in ids, done.stderr[-3000:]
    record = next(r for r in after if r["trial_id"] == killed)
    # continued from its checkpoint: the resumed training reported fewer epochs than a whole
    # one (the driver's curve of the epochs before the kill died with it), and the epoch count
    # restored from the checkpoint reaches max_epochs exactly
    curve = record["curves"]["val_accuracy_epoch"]
    assert 1 <= len(curve) < MAX_EPOCHS
    assert record["metrics"]["epoch"] == MAX_EPOCHS
    tracker = study_tracker(study, "aop-classification")
    runs = tracker.child_runs("smac")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(ids)  # no duplicate runs
    # the resumed trial reopened its run: Lightning's logger wrote the epochs before the kill
    # and after it into one curve (an epoch the kill cut short may appear twice)
    run = next(r for r in runs if r.data.tags["trial_id"] == killed)
    steps = {m.step for m in tracker.client.get_metric_history(run.info.run_id, "curve/val_acc")}
    assert steps == set(range(1, MAX_EPOCHS + 1)) and run.info.status == "FINISHED"
    best = yaml.safe_load((study / "best.yaml").read_text())
    assert best["scores"]["val_accuracy"] == max(r["metrics"]["val_accuracy"] for r in after)


@pytest.mark.slow
def test_a_mixed_study_killed_in_a_feature_trial_and_in_a_second_fold_resumes_both(
    class_data, tmp_path
):
    """Two SIGKILLs of a study of deep and feature designs on 2 folds, each followed by aop
    resume: first while a feature trial runs (a forest of 500 trees beside a deep training;
    nothing reported yet, so it starts over), then while a deep trial trains its second fold
    (it continues there from its checkpoint). The study ends with its budget, each trial once."""
    from aop.tuning.classification_trial import FEATURE_MODEL_FILE, best_checkpoint

    folds, budget = 2, 2
    experiment = _experiment(
        tmp_path, class_data, space=MIXED_SPACE,
        training={"max_epochs": MAX_EPOCHS, "patience": MAX_EPOCHS, "batch_size": 8,
                  "head_width": 8, "head_depth": 1, "augment": False, "test_fraction": 0.2,
                  "folds": folds},
        search={"searcher": "smac", "budget": budget, "concurrency": 2, "seed": 0,
                "resources": {"cpus": 1, "gpu": 0}},
    )  # fmt: skip
    study = tmp_path / "study"
    results = study / "results" / "smac.jsonl"
    log = tmp_path / "study.log"
    scratch = Path(tempfile.mkdtemp(prefix="aopk", dir="/tmp"))  # short: Ray's socket paths
    env = {**os.environ, "TMPDIR": str(scratch)}
    try:
        features = _kill_when(["search", str(experiment)], study, _running_feature_trial, log,
                              env)  # fmt: skip
        assert features is not None, f"no feature trial was interrupted: {log.read_text()[-1500:]}"
        assert features not in {r["trial_id"] for r in _records(results)}
        deep = _kill_when(["resume", str(study)], study, _deep_trial_in_second_fold, log, env)
        assert deep is not None, f"no second fold was interrupted: {log.read_text()[-1500:]}"
        assert deep not in {r["trial_id"] for r in _records(results)}
        for folder in scratch.glob("aop-trial-*"):  # as on a resume on another node
            shutil.rmtree(folder, ignore_errors=True)
        done = subprocess.run([*AOP, "resume", str(study), "--quiet"], capture_output=True,
                              text=True, timeout=400, env=env)  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert done.returncode == 0, done.stderr[-2000:]
    after = _records(results)
    ids = [r["trial_id"] for r in after]
    assert len(after) == budget and len(set(ids)) == budget, done.stderr[-3000:]
    assert {features, deep} <= set(ids)
    by_id = {r["trial_id"]: r for r in after}

    record = by_id[deep]  # continued in its second fold: both folds scored, every epoch once
    assert record["params"]["design"] == "deep"
    assert len(record["folds"]["accuracy"]) == len(record["folds"]["balanced_accuracy"]) == folds
    assert record["metrics"]["epoch"] == folds * MAX_EPOCHS
    # the last driver saw only the rest of the second fold (the first fold's score came back
    # from the checkpoint), not a training started over
    assert 1 <= len(record["curves"]["val_accuracy_epoch"]) < MAX_EPOCHS
    record = by_id[features]  # started over: one report, its fitted forest in the checkpoint
    assert record["params"] == {"design": "features", "model": "random_forest", "rf_trees": 500}
    assert len(record["folds"]["accuracy"]) == folds
    assert best_checkpoint(study, record, filename=FEATURE_MODEL_FILE) is not None

    tracker = study_tracker(study, "aop-classification")
    runs = tracker.child_runs("smac")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(ids)  # one run per trial
    run = next(r for r in runs if r.data.tags["trial_id"] == deep)
    # the epochs of both folds, before and after each kill, on one curve of the reopened run
    steps = {m.step for m in tracker.client.get_metric_history(run.info.run_id, "curve/val_acc")}
    assert steps == set(range(1, folds * MAX_EPOCHS + 1)) and run.info.status == "FINISHED"
    best = yaml.safe_load((study / "best.yaml").read_text())
    assert best["scores"]["val_accuracy"] == max(r["metrics"]["val_accuracy"] for r in after)


def test_simulated_annotation_writes_manual_rows_of_the_truth_class(class_data, tmp_path):
    seg = tmp_path / "seg"
    from aop.io import load_dataset, write_dataset

    truth = load_dataset(class_data, require_labels=True)
    volumes = []
    for name in truth.names:
        labels = truth.labels(name).copy()
        labels[labels == labels.max()] = 0  # one truth instance missed by the segmentation
        volumes.append((name, truth.image(name), labels))
    write_dataset(seg, volumes, truth.info)
    rows = simulate_annotation(seg, class_data, 0.5, seed=1)
    table = pd.read_csv(seg / "annotations.csv")
    manual = table.query("source == 'manual'")
    assert len(manual) == len(rows) and (manual["annotator"] == "demo: truth").all()
    classes = pd.read_csv(class_data / "annotations.csv").query("source == 'truth'")
    keys = zip(classes["volume"], classes["label"], strict=True)
    lookup = dict(zip(keys, classes["class"], strict=True))
    assert all(lookup[(v, lab)] == c for v, lab, c in manual[["volume", "label", "class"]].values)
    n_instances = sum(len(np.unique(v[2])) - 1 for v in volumes)
    assert 0.3 * n_instances <= len(rows) <= 0.7 * n_instances
    again = simulate_annotation(seg, class_data, 0.5, seed=1)  # replaces its own rows
    assert len(pd.read_csv(seg / "annotations.csv").query("source == 'manual'")) == len(again)
