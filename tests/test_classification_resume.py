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
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow_helpers import study_tracker

from aop.instances.truth import match_instances, simulate_annotation
from aop.synth import preset_params
from aop.synth.classes import class_set
from aop.synth.dataset import write_synthetic_dataset

AOP = [sys.executable, "-c", "from aop.cli import main; main()"]
MAX_EPOCHS = 10  # long enough to be caught training; an epoch is a fraction of a second
SPACE = {
    "parameters": {
        "encoder": "test_resnet",
        "head": {"choice": ["slice", "volume"]},
        "pretraining": "none",
        "preprocessing": "mask",
        "lr": {"float": [1.0e-3, 1.0e-2], "log": True},
    },
    "start": {"default": {"head": "slice", "lr": 3.0e-3}},
}


@pytest.fixture(scope="module")
def class_data(tmp_path_factory):
    """Three synthetic Myotube volumes with classes; the truth copied as manual annotations."""
    root = tmp_path_factory.mktemp("clsres") / "data"
    write_synthetic_dataset(root, preset_params("myotube"), (16, 96, 96), 3, seed=101,
                            preset="myotube", classes=class_set("myotube"))
    table = pd.read_csv(root / "annotations.csv")
    manual = table.assign(source="manual", annotator="test (truth)")
    pd.concat([table, manual]).to_csv(root / "annotations.csv", index=False)
    return root


def _experiment(tmp_path: Path, data: Path, **extra) -> Path:
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
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


def _training_trial(study: Path) -> str | None:
    """A trial whose epoch reports the driver has saved in Tune's experiment state (so there is
    a checkpoint to resume from) but that has not finished (no best.ckpt)."""
    states = sorted((study / "tune" / "smac").glob("experiment_state-*.json"))
    if not states:
        return None
    try:
        trials = json.loads(states[-1].read_text())["trial_data"]
    except (OSError, ValueError, KeyError):  # being written
        return None
    for meta, run in trials:
        trial_id = json.loads(meta)["trial_id"]
        reported = json.loads(run)["last_result"].get("training_iteration") or 0
        folder = study / "tune" / "smac" / trial_id
        if reported >= 2 and not any(folder.glob("checkpoint_*/best.ckpt")):
            return trial_id
    return None


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
    log = (tmp_path / "search.log").open("w")
    # the trials' scratch folders (and Ray's) in a folder of this test: removed after the kill,
    # as on a resume on another node, so the resumed training has only its Tune checkpoint
    scratch = Path(tempfile.mkdtemp(prefix="aopk", dir="/tmp"))  # short: Ray's socket paths
    env = {**os.environ, "TMPDIR": str(scratch)}
    driver = subprocess.Popen(
        [*AOP, "search", str(experiment), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=log, start_new_session=True, env=env,
    )
    killed = None
    try:
        deadline = time.monotonic() + 240
        while killed is None and driver.poll() is None:
            assert time.monotonic() < deadline, "no trial reported an epoch in time"
            killed = _training_trial(study) if (study / "tune" / "smac").is_dir() else None
            time.sleep(0.05)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait()
        log.close()
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
