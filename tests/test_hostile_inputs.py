"""Hostile and careless inputs against every command: one line, the right exit code, no damage.

Each row of :data:`CASES` is ``(class, id, argv, exit code, message regex, guarded paths, absent
paths, environment)``. ``{W}`` in an argument is the workspace folder. After the command, every
guarded path must be byte-for-byte unchanged (files, names and modes of a whole tree) and every
absent path must not exist. The output must be exactly one line starting with ``error:`` when the
exit code is 2 (a user error), and must hold no traceback.

Classes: ``output`` (never destroy what aop did not create), ``resources`` (refuse impossible
work), ``validation`` (config errors before any output), ``study`` (relocatable studies, report),
``oneline`` (one line, never a traceback).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from typer.testing import CliRunner

from aop.cli import app
from aop.io import DatasetInfo, read_volume, write_dataset, write_volume
from aop.outputs import MARKER, atomic_output, is_aop_output, prepare_output
from aop.synth import preset_params
from aop.synth.dataset import write_synthetic_dataset

SHAPE = (8, 24, 24)


def _experiment(study: str, **changes) -> dict:
    raw = {
        "name": "hostile",
        "data": {"synth": {"n_volumes": 1, "shape": list(SHAPE), "seed": 0}},
        "models": [{"name": "classical"}],
        "search": {"searcher": "random", "budget": 2},
        "storage": {"study_dir": study},
        "comparison": {"baseline": False, "random": False},
        "ray": {"num_cpus": 1},
    }
    for key, value in changes.items():
        section, _, field = key.partition(".")
        if field:
            raw.setdefault(section, {})[field] = value
        else:
            raw[section] = value
    return raw


def _yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """Users' files, aop outputs and broken inputs; built once, guarded by every case."""
    w = tmp_path_factory.mktemp("hostile")
    user = w / "user_dir"
    user.mkdir()
    (user / "notes.txt").write_text("a user's notes\n")
    (user / "thesis.docx").write_bytes(b"\x00precious")
    zarr_like = w / "user.zarr"
    zarr_like.mkdir()
    (zarr_like / "keep.txt").write_text("not a zarr store\n")
    (w / "user.txt").write_text("a user's file\n")
    (w / "user.csv").write_text("a,b\n1,2\n")
    tifffile.imwrite(w / "user.tif", np.ones((2, 8, 8), np.uint16))  # not written by aop
    np.save(w / "user.npy", np.ones((2, 8, 8), np.uint16))
    write_synthetic_dataset(w / "ds", preset_params("nuclei"), SHAPE, 1, 0)
    image, _ = read_volume(w / "ds" / "images" / "synth_000.tif")
    labels, _ = read_volume(w / "ds" / "labels" / "synth_000.tif")
    write_volume(w / "pred.tif", labels, (1.0, 1.0, 1.0))
    write_volume(w / "image.tif", image, (1.0, 1.0, 1.0))
    write_volume(w / "earlier_out.tif", labels)
    mask = labels > 0
    tifffile.imwrite(w / "mask.tif", mask)
    bool_ds = w / "bool_ds"
    write_dataset(bool_ds, [("v", image, labels)], DatasetInfo("b"))
    tifffile.imwrite(bool_ds / "labels" / "v.tif", mask)
    (w / "binary.yaml").write_bytes(bytes(range(256)) * 4)
    (w / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    binary_ds = w / "binary_ds"
    shutil.copytree(w / "ds", binary_ds)
    (binary_ds / "dataset.yaml").write_bytes(b"\xff\xfe\x00\x01")
    # experiments whose errors must show before any output
    _yaml(w / "good.yaml", _experiment("studies/good"))
    space = w / "space_wide.yaml"
    _yaml(space, {"parameters": {"erode_dilate": {"int": [-3, 50]}}})
    _yaml(w / "wide.yaml", _experiment("studies/wide", search_space=str(space)))
    space = w / "space_models.yaml"
    _yaml(space, {"parameters": {"model": {"choice": ["nonexistent"]},
                                 "open_close": {"int": [-1, 1]}}})
    _yaml(w / "models.yaml", _experiment("studies/models", search_space=str(space)))
    space = w / "space_reversed.yaml"
    _yaml(space, {"parameters": {"split_sigma": {"low": 0.9, "high": 0.1}}})
    _yaml(w / "reversed.yaml", _experiment("studies/reversed", search_space=str(space)))
    synth = {"n_volumes": 1, "shape": list(SHAPE), "options": {"bogus_option": 1}}
    _yaml(w / "synthopt.yaml", _experiment("studies/synthopt", data={"synth": synth}))
    synth = {"n_volumes": 1, "shape": [5000, 5000, 5000]}
    _yaml(w / "huge.yaml", _experiment("studies/huge", data={"synth": synth}))
    _yaml(w / "nobench.yaml", _experiment("studies/nobench", data={"benchmark": "missing_bench"}))
    _yaml(w / "noweights.yaml", _experiment("studies/noweights", models=[{"name": "unet3d"}]))
    _yaml(w / "user_study.yaml", _experiment("user_dir"))
    _yaml(w / "self_study.yaml", _experiment("."))
    # a closed local port: nothing listens there
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tracking = {"tracking_uri": f"http://127.0.0.1:{port}", "experiment": "x"}
    _yaml(w / "deadserver.yaml", _experiment("studies/deadserver", tracking=tracking))
    # an earlier study (aop's own) and a non-study folder
    old = w / "old_study"
    old.mkdir()
    (old / MARKER).write_text("{}\n")
    _yaml(old / "experiment.yaml", _experiment(str(old)))
    (old / "results").mkdir()
    _yaml(old / "study.yaml", {"kind": "segmentation", "metric": "ipq", "mode": "max",
                               "metrics": ["ipq"]})  # fmt: skip
    _yaml(w / "old.yaml", _experiment("old_study"))
    _yaml(w / "old_wide.yaml", _experiment("old_study", search_space=str(w / "space_wide.yaml")))
    broken = w / "broken_study"
    broken.mkdir()
    (broken / "experiment.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (w / "dupkey.yaml").write_text(yaml.safe_dump(_experiment("studies/dupkey")) + "name: b\n")
    # a benchmark whose image holds a NaN (float32), its labels fine
    nan_image = image.astype(np.float32)
    nan_image[0, 0, 0] = np.nan
    write_dataset(w / "nan_bench", [("v", image, labels)], DatasetInfo("n"))
    tifffile.imwrite(w / "nan_bench" / "images" / "v.tif", nan_image)
    _yaml(w / "nanbench.yaml", _experiment("studies/nanbench", data={"benchmark": "nan_bench"}))
    _classification_inputs(w)
    _segmentation_study(w / "seg_study")
    # a user's project: their own dataset.yaml and labels/, as a segmentation's output would be
    (w / "user_proj" / "labels").mkdir(parents=True)
    (w / "user_proj" / "dataset.yaml").write_text("name: mine\nvoxel_size: [2.0, 0.5, 0.5]\n")
    tifffile.imwrite(w / "user_proj" / "labels" / "synth_000.tif", labels)
    return w


def _class_experiment(w: Path, name: str, dataset: str, space: str = "space_cls.yaml",
                      **changes) -> None:
    raw = {
        "name": "hostile-cls", "kind": "classification", "data": {"dataset": dataset},
        "crops": {"size": [4, 8, 8]}, "search": {"searcher": "random", "budget": 1},
        "search_space": space, "storage": {"study_dir": f"studies/{name}"},
        "comparison": {"baseline": False, "random": False}, "ray": {"num_cpus": 1}, **changes,
    }  # fmt: skip
    _yaml(w / f"{name}.yaml", raw)


def _classification_inputs(w: Path) -> None:
    """Data sets with classes (one bad thing each), classification experiments and a finished
    classification study whose classifier takes one channel (the data sets have three)."""
    from aop.synth.classes import class_set

    cls = w / "cls"
    write_synthetic_dataset(cls, preset_params("myotube"), (8, 64, 64), 2, seed=5,
                            preset="myotube", classes=class_set("myotube"))  # fmt: skip
    table = (cls / "annotations.csv").read_text().splitlines()
    manual = [line.replace(",truth,", ",manual,") for line in table[1:]]
    (cls / "annotations.csv").write_text("\n".join([*table, *manual]) + "\n")
    stamp = "2026-01-01T00:00:00+00:00"
    bad_rows = {
        "cls_ghost_volume": f"ghost,1,myotube,manual,,{stamp}",
        "cls_undeclared": f"synth_000,1,banana,manual,,{stamp}",
        "cls_dup_manual": manual[0],
        "cls_bad_label": f"synth_000,abc,myotube,manual,,{stamp}",
    }
    for name, row in bad_rows.items():
        shutil.copytree(cls, w / name)
        with open(w / name / "annotations.csv", "a") as handle:
            handle.write(row + "\n")
    shutil.copytree(cls, w / "cls_binary")
    (w / "cls_binary" / "annotations.csv").write_bytes(bytes(range(256)) * 4)
    shutil.copytree(cls, w / "cls_no_table")
    (w / "cls_no_table" / "annotations.csv").unlink()
    shutil.copytree(cls, w / "cls_one_class")  # manual rows of one class only
    first = manual[0].split(",")[2]
    kept = [line for line in manual if line.split(",")[2] == first]
    (w / "cls_one_class" / "annotations.csv").write_text("\n".join([*table, *kept]) + "\n")
    space = {"encoder": {"choice": ["test_resnet"]}, "head": {"choice": ["slice"]},
             "pretraining": {"choice": ["none"]}, "preprocessing": {"choice": ["mask"]},
             "lr": {"float": [1.0e-3, 1.0e-2], "log": True}}  # fmt: skip
    _yaml(w / "space_cls.yaml", {"parameters": space})
    bad_spaces = {
        "head": {"choice": ["slice", "banana"]},
        "lr": {"float": [0.0, 0.1]},
        "head_depth": {"int": [0, 3]},
        "preprocessing": {"choice": ["mask", "blur"]},
    }
    for key, spec in bad_spaces.items():
        _yaml(w / f"space_cls_{key}.yaml", {"parameters": {**space, key: spec}})
        _class_experiment(w, f"cls_space_{key}", "cls", f"space_cls_{key}.yaml")
    for name in ("cls_missing", *bad_rows, "cls_binary", "cls_no_table", "cls_one_class"):
        _class_experiment(w, name, name)
    _class_experiment(w, "cls_fractions", "cls",
                      training={"val_fraction": 0.7, "test_fraction": 0.6})  # fmt: skip
    _design_family_inputs(w, space)
    _classification_study(w / "cls_study")
    shutil.copytree(cls, w / "cls_user_pred")  # the user's own predictions.csv in the data set
    (w / "cls_user_pred" / "predictions.csv").write_text("volume,label,class\nsynth_000,1,a\n")


def _design_family_inputs(w: Path, deep: dict) -> None:
    """Search spaces of two design families with one mistake each, data sets declaring one class
    and two classes, and experiments with a bad objective or more folds than a class allows."""
    when_deep = {name: {**spec, "when": {"design": "deep"}} for name, spec in deep.items()}
    families = {"design": {"choice": ["deep", "features"]}, **when_deep,
                "model": {"choice": ["logistic_regression", "random_forest"],
                          "when": {"design": "features"}}}  # fmt: skip
    bad_spaces = {
        "design": {"design": {"choice": ["deep", "tabular"]}, **when_deep},
        "model": {**families, "model": {"choice": ["logistic_regression", "svm"],
                                        "when": {"design": "features"}}},
        "encoder_nowhen": {**families, "encoder": deep["encoder"]},
        "rf_under_logreg": {**families, "rf_trees": {"int": [50, 100],
                                                     "when": {"model": "logistic_regression"}}},
    }  # fmt: skip
    for key, parameters in bad_spaces.items():
        _yaml(w / f"space_cls_{key}.yaml", {"parameters": parameters})
        _class_experiment(w, f"cls_space_{key}", "cls", f"space_cls_{key}.yaml")
    single = w / "cls_single_class"  # declares myotube only; its manual rows are myotubes
    shutil.copytree(w / "cls", single)
    info = yaml.safe_load((single / "dataset.yaml").read_text())
    info["classes"] = [c for c in info["classes"] if c["name"] == "myotube"]
    _yaml(single / "dataset.yaml", info)
    lines = (single / "annotations.csv").read_text().splitlines()
    kept = [line for line in lines[1:] if line.split(",")[2] == "myotube"]
    (single / "annotations.csv").write_text("\n".join([lines[0], *kept]) + "\n")
    _class_experiment(w, "cls_single_balanced", "cls_single_class", objective="balanced_accuracy")
    _class_experiment(w, "cls_objective_f1", "cls", objective="f1")
    two = w / "cls_two_classes"  # every instance annotated, as myotube or other (3 each)
    shutil.copytree(w / "cls", two)
    info = yaml.safe_load((two / "dataset.yaml").read_text())
    info["classes"] = [c for c in info["classes"] if c["name"] in ("myotube", "other")]
    _yaml(two / "dataset.yaml", info)
    rows = [line.split(",") for line in lines[1:] if line.split(",")[3] == "manual"]
    relabelled = [",".join([*r[:2], ("myotube", "other")[i % 2], *r[3:]])
                  for i, r in enumerate(rows)]  # fmt: skip
    (two / "annotations.csv").write_text("\n".join([lines[0], *relabelled]) + "\n")
    _class_experiment(w, "cls_ten_folds", "cls_two_classes", training={"folds": 10})


def _classification_study(root: Path) -> None:
    """A finished classification study's files: its trial's checkpoint (a one-channel classifier
    trained for an epoch), best.yaml, experiment.yaml, study.yaml and its MLflow run id."""
    from aop.classification.train import ClassifierConfig, train_classifier

    classes = ["myotube", "schwann", "debris", "other"]  # the myotube preset's
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2, 3], 4)
    crops = rng.normal(size=(16, 1, 4, 8, 8)).astype(np.float32) + labels[:, None, None, None, None]
    config = ClassifierConfig(encoder="test_resnet", max_epochs=1, batch_size=8, head_width=8,
                              head_depth=1)  # fmt: skip
    result = train_classifier(config, crops, labels, out_dir=root.parent / "cls_training",
                              class_names=classes)
    trial = root / "tune" / "random" / "t0" / "checkpoint_000000"
    trial.mkdir(parents=True)
    shutil.copy(result.checkpoint_path, trial / "best.ckpt")
    (root / MARKER).write_text("{}\n")
    (root / "mlflow_run_id").write_text("0123456789abcdef0123456789abcdef\n")
    _yaml(root / "study.yaml", {"kind": "classification", "metric": "val_accuracy", "mode": "max",
                                "metrics": ["val_accuracy"]})  # fmt: skip
    _yaml(root / "best.yaml", {"kind": "classification", "search": "random", "trial_id": "t0",
                               "params": {"encoder": "test_resnet", "preprocessing": "mask"},
                               "test": {"class_names": classes}})  # fmt: skip
    _yaml(root / "experiment.yaml", {"kind": "classification", "crops": {"size": [4, 8, 8]}})


def _segmentation_study(root: Path) -> None:
    """A study folder whose MLflow parent run holds a segmentation pipeline (classical)."""
    from aop.pipeline_model import log_pipeline_model
    from aop.tracking import StudyTracker

    params = {"erode_dilate": 0, "open_close": 0, "merge_continuity": 0.0,
              "merge_smoothness": 0.0, "merge_area": 0.0, "split_sigma": 0.0,
              "split_threshold": 0.0}  # fmt: skip
    best = {"search": "gp", "trial_id": "t1", "model": "classical", "params": params,
            "ipq": 0.7, "sq": 0.8, "rq": 0.9, "iq": 1.0, "per_volume": {}, "duration_s": 1.0,
            "node": "n", "iteration": 0}  # fmt: skip
    tracker = StudyTracker(root, experiment_name="aop-segmentation")
    tracker.start({"name": "hostile", "models": [{"name": "classical"}]},
                  {"erode_dilate": {"low": -1, "high": 1}, "models": ["classical"]})  # fmt: skip
    log_pipeline_model(tracker, best, spacing=(1.0, 1.0, 1.0))


def _files(root: Path) -> dict[str, tuple[str, int]]:
    """Relative path -> (sha256 or 'dir', mode) of every entry under ``root`` (itself included)."""
    if not root.exists():
        return {}
    entries = [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]
    out = {}
    for path in entries:
        digest = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        out[str(path.relative_to(root.parent))] = (digest, path.stat().st_mode)
    return out


D, R, V, S, T = "output", "resources", "validation", "study", "oneline"
ONE = "synth --n-volumes 1 --shape 8 24 24"

CASES = [
    # --- output: never destroy what aop did not create --------------------------------------
    (D, "synth-into-user-folder", f"{ONE} --out {{W}}/user_dir", 2,
     r"user_dir: folder holds files aop did not write \(notes.txt", ["user_dir"], [], {}),
    (D, "synth-into-user-folder-overwrite", f"{ONE} --out {{W}}/user_dir --overwrite", 2,
     r"holds files aop did not write", ["user_dir"], [], {}),
    (D, "synth-into-current-folder", f"{ONE} --out .", 2,
     r"current folder", ["user_dir"], [], {"cwd": "user_dir"}),
    (D, "synth-over-earlier-dataset", f"{ONE} --out {{W}}/ds", 2,
     r"ds: holds an earlier aop output; pass --overwrite", ["ds"], [], {}),
    (D, "synth-onto-a-file", f"{ONE} --out {{W}}/user.txt", 2,
     r"user.txt: exists and is a file, not a folder", ["user.txt"], [], {}),
    (D, "synth-below-a-file", f"{ONE} --out {{W}}/user.txt/sub", 2,
     r"user.txt is a file, not a folder", ["user.txt"], [], {}),
    (D, "synth-into-read-only-folder", f"{ONE} --out /sys/aop_hostile_ds", 2,
     r"/sys/aop_hostile_ds: cannot write", [], ["/sys/aop_hostile_ds"], {}),
    (D, "train-unet-into-user-folder", "train-unet --data {W}/ds --out {W}/user_dir --max-steps 1",
     2, r"holds files aop did not write", ["user_dir", "ds"], [], {}),
    (D, "train-unet-into-its-input", "train-unet --data {W}/ds --out {W}/ds --max-steps 1", 2,
     r"output is one of the inputs", ["ds"], [], {}),
    (D, "train-unet-around-its-input", "train-unet --data {W}/ds --out {W} --max-steps 1", 2,
     r"output folder holds the input", ["ds", "user_dir"], [], {}),
    (D, "postprocess-onto-its-input", "postprocess {W}/pred.tif {W}/image.tif --out {W}/pred.tif",
     2, r"pred.tif: output is one of the inputs", ["pred.tif"], [], {}),
    (D, "postprocess-onto-its-image", "postprocess {W}/pred.tif {W}/image.tif --out {W}/image.tif",
     2, r"image.tif: output is one of the inputs", ["image.tif"], [], {}),
    (D, "postprocess-onto-user-tiff", "postprocess {W}/pred.tif {W}/image.tif --out {W}/user.tif",
     2, r"user.tif: file exists and was not written by aop", ["user.tif"], [], {}),
    (D, "postprocess-onto-user-npy", "postprocess {W}/pred.tif {W}/image.tif --out {W}/user.npy",
     2, r"user.npy: file exists and was not written by aop", ["user.npy"], [], {}),
    (D, "postprocess-onto-user-zarr",
     "postprocess {W}/pred.tif {W}/image.tif --out {W}/user.zarr --overwrite", 2,
     r"user.zarr: folder holds files aop did not write", ["user.zarr"], [], {}),
    (D, "postprocess-onto-a-folder", "postprocess {W}/pred.tif {W}/image.tif --out {W}/user_dir",
     2, r"user_dir: exists and is a folder", ["user_dir"], [], {}),
    (D, "postprocess-over-earlier-output",
     "postprocess {W}/pred.tif {W}/image.tif --out {W}/earlier_out.tif", 2,
     r"earlier_out.tif: holds an earlier aop output; pass --overwrite", ["earlier_out.tif"], [],
     {}),
    (D, "postprocess-features-onto-user-csv",
     "postprocess {W}/pred.tif {W}/image.tif --out {W}/new.tif --features {W}/user.csv", 2,
     r"user.csv: file exists and was not written by aop", ["user.csv"], ["new.tif"], {}),
    (D, "postprocess-into-read-only-folder",
     "postprocess {W}/pred.tif {W}/image.tif --out /sys/aop_hostile/out.tif", 2,
     r"cannot write", [], ["/sys/aop_hostile"], {}),
    (D, "predict-cache-in-user-folder",
     "predict --models classical --data {W}/ds --cache {W}/user_dir", 2,
     r"user_dir: folder holds files aop did not write", ["user_dir"], [], {}),
    (D, "search-into-user-folder", "search {W}/user_study.yaml", 2,
     r"user_dir: folder holds files aop did not write", ["user_dir"], [], {}),
    (D, "search-into-its-own-folder", "search {W}/self_study.yaml", 2,
     r"holds the input|holds the current folder|holds files aop did not write", ["good.yaml"],
     [], {}),
    (D, "search-over-earlier-study", "search {W}/old.yaml", 2,
     r"old_study: holds an earlier aop output; pass --overwrite \(or continue it with aop resume",
     ["old_study"], [], {}),
    (D, "search-overwrite-with-a-bad-config", "search {W}/old_wide.yaml --overwrite", 2,
     r"parameters.erode_dilate.int.1: 50 is outside", ["old_study"], [], {}),
    (D, "demo-into-user-folder", "demo --out {W}/user_dir --budget 1", 2,
     r"holds files aop did not write", ["user_dir"], [], {}),
    (D, "segment-model-uri-without-a-store",
     "segment runs:/0123456789abcdef0123456789abcdef/pipeline --data {W}/ds --out {W}/seg_uri", 2,
     r"runs:/0123456789abcdef0123456789abcdef/pipeline: no MLflow tracking store to look it up "
     r"in \(sqlite:///.*user_dir/mlflow.db, MLflow's default, does not exist",
     ["user_dir", "ds"], ["seg_uri"], {"cwd": "user_dir"}),
    (D, "classify-model-uri-without-a-store",
     "classify runs:/0123456789abcdef0123456789abcdef/classifier --data {W}/cls", 2,
     r"runs:/0123456789abcdef0123456789abcdef/classifier: no MLflow tracking store to look it "
     r"up in \(sqlite:///.*user_dir/mlflow.db", ["user_dir", "cls"], [], {"cwd": "user_dir"}),
    (D, "instances-onto-current-folder", "instances {W}/ds --out . --overwrite", 2,
     r"\.: exists and is a folder; give a file name", ["user_dir", "ds"], [], {"cwd": "user_dir"}),
    (D, "instances-onto-user-folder", "instances {W}/ds --out {W}/user_dir --overwrite", 2,
     r"user_dir: exists and is a folder; give a file name", ["user_dir", "ds"], [], {}),
    (D, "instances-onto-user-csv", "instances {W}/ds --out {W}/user.csv --csv --overwrite", 2,
     r"user.csv: file exists and was not written by aop", ["user.csv", "ds"], [], {}),
    (D, "instances-onto-its-input-labels",
     "instances {W}/ds --out {W}/ds/labels/synth_000.tif --overwrite", 2,
     r"labels/synth_000.tif: output is one of the inputs", ["ds"], [], {}),
    (D, "instances-into-its-input-labels",
     "instances {W}/ds --out {W}/ds/labels/features.parquet", 2,
     r"features.parquet: inside the input data set's labels/ folder", ["ds"],
     ["ds/labels/features.parquet"], {}),
    (D, "analyze-into-user-folder", "analyze {W}/cls --out {W}/user_dir", 2,
     r"user_dir: folder holds files aop did not write \(notes.txt", ["user_dir", "cls"],
     ["cls/analysis"], {}),
    (D, "analyze-into-user-folder-overwrite", "analyze {W}/cls --out {W}/user_dir --overwrite",
     2, r"user_dir: folder holds files aop did not write", ["user_dir", "cls"], ["cls/analysis"],
     {}),
    (D, "analyze-into-its-input-labels", "analyze {W}/cls --out {W}/cls/labels --overwrite", 2,
     r"cls/labels: output is one of the inputs", ["cls"], ["cls/analysis"], {}),
    (D, "analyze-into-current-folder", "analyze {W}/cls --out . --overwrite", 2,
     r"\.: output folder holds the current folder", ["user_dir", "cls"], ["cls/analysis"],
     {"cwd": "user_dir"}),
    (D, "classify-over-user-predictions", "classify {W}/cls_study --data {W}/cls_user_pred", 2,
     r"cls_user_pred/predictions.csv: file exists and was not written by aop classify",
     ["cls_user_pred", "cls_study"], [], {}),
    (D, "segment-into-user-project", "segment {W}/seg_study --data {W}/ds --out {W}/user_proj",
     2, r"user_proj: folder holds files aop did not write \(dataset.yaml, labels\)",
     ["user_proj", "ds", "seg_study"], [], {}),
    (D, "segment-into-another-aop-output",
     "segment {W}/seg_study --data {W}/ds --out {W}/cls", 2,
     r"cls: holds another aop output \(a dataset\), not a segmentation", ["cls", "ds"], [], {}),
    (D, "segment-into-current-folder", "segment {W}/seg_study --data {W}/ds --out .", 2,
     r"\.: output folder holds the current folder", ["user_dir", "ds"], [], {"cwd": "user_dir"}),
    (D, "segment-around-its-input", "segment {W}/seg_study --data {W}/ds --out {W}", 2,
     r"output folder holds the input", ["ds", "seg_study", "user_dir"], [], {}),
    # --- resources: refuse impossible work before starting it -------------------------------
    (R, "synth-allocation-bomb", "synth --out {W}/bomb --shape 10000 10000 10000", 2,
     r"needs about 28\.0 TB of memory, more than the .* available", [], ["bomb"], {}),
    (R, "synth-over-memory-limit", f"{ONE} --out {{W}}/limited", 2,
     r"simulating a volume of shape \[8, 24, 24\] needs about .* more than the 1\.0 kB",
     [], ["limited"], {"AOP_MEMORY_LIMIT": "1K"}),
    (R, "synth-bad-memory-limit", f"{ONE} --out {{W}}/limited", 2,
     r"AOP_MEMORY_LIMIT='lots': expected bytes", [], ["limited"], {"AOP_MEMORY_LIMIT": "lots"}),
    (R, "postprocess-over-memory-limit",
     "postprocess {W}/pred.tif {W}/image.tif --out {W}/pp.tif", 2,
     r"post-processing a volume of shape \[8, 24, 24\] needs about 645\.1 kB",
     ["pred.tif"], ["pp.tif"], {"AOP_MEMORY_LIMIT": "100K"}),
    (R, "predict-over-memory-limit",
     "predict --models classical --data {W}/ds --cache {W}/cache_limited --workers 1", 2,
     r"predicting .*ds with 1 worker\(s\) needs about 184\.3 kB", ["ds"], [],
     {"AOP_MEMORY_LIMIT": "10K"}),
    (R, "search-huge-synth", "search {W}/huge.yaml", 2,
     r"needs about 3\.5 TB of memory", [], ["studies/huge"], {}),
    (R, "search-dead-tracking-server", "search {W}/deadserver.yaml", 2,
     r"tracking URI http://127\.0\.0\.1:\d+: MLflow server not reachable", [],
     ["studies/deadserver"], {}),
    (R, "search-dead-tracking-option", "search {W}/good.yaml --tracking-uri http://127.0.0.1:1",
     2, r"MLflow server not reachable", [], ["studies/good"], {}),
    (R, "adapt-dead-tracking-server",
     "adapt --synthetic {W}/ds --real {W}/ds --out {W}/adapted --patch 16,16 "
     "--tracking-uri http://127.0.0.1:9", 2,
     r"tracking URI http://127\.0\.0\.1:9: MLflow server not reachable", ["ds"],
     ["adapted", "adapted.training"], {}),
    (R, "segment-zero-workers",
     "segment {W}/seg_study --data {W}/ds --out {W}/seg_out --workers 0", 2,
     r"--workers must be at least 1, got 0", ["seg_study", "ds"], ["seg_out"], {}),
    (R, "segment-negative-gpus",
     "segment {W}/seg_study --data {W}/ds --out {W}/seg_out --gpus-per-worker -1", 2,
     r"--gpus-per-worker must be >= 0, got -1", ["seg_study", "ds"], ["seg_out"], {}),
    (R, "classify-zero-workers", "classify {W}/cls_study --data {W}/cls --workers 0", 2,
     r"--workers must be at least 1, got 0", ["cls_study", "cls"], [], {}),
    (R, "cluster-negative-gpu", "cluster --gpu -1", 2, r"--gpu must be >= 0, got -1", [], [], {}),
    (R, "cluster-zero-cpus", "cluster --cpus 0 --concurrency 0", 2,
     r"--cpus must be > 0 .*got 0", [], [], {}),
    (R, "cluster-zero-concurrency", "cluster --concurrency 0", 2,
     r"--concurrency must be at least 1, got 0", [], [], {}),
    (R, "demo-zero-unet-steps", "demo --out {W}/demo_zero --unet-steps 0", 2,
     r"--unet-steps must be at least 1, got 0", [], ["demo_zero"], {}),
    # --- validation: every config error before any work or output ---------------------------
    (V, "search-range-outside-table-iii", "search {W}/wide.yaml", 2,
     r"space_wide.yaml: parameters.erode_dilate.int.1: 50 is outside \[-10, 10\]", [],
     ["studies/wide"], {}),
    (V, "search-space-unknown-model", "search {W}/models.yaml", 2,
     r"parameters.model: 'nonexistent' is not a model of the experiment", [], ["studies/models"],
     {}),
    (V, "search-space-reversed-range", "search {W}/reversed.yaml", 2,
     r"parameters.split_sigma: low \(0.9\) must be < high", [], ["studies/reversed"], {}),
    (V, "search-unknown-synth-option", "search {W}/synthopt.yaml", 2,
     r"data.synth: .*bogus_option", [], ["studies/synthopt"], {}),
    (V, "search-missing-benchmark", "search {W}/nobench.yaml", 2,
     r"data.benchmark: .*missing_bench: folder not found", [], ["studies/nobench"], {}),
    (V, "search-model-without-weights", "search {W}/noweights.yaml", 2,
     r"models.0 \(unet3d\): model 'unet3d': no model package given", [], ["studies/noweights"],
     {}),
    (V, "search-zero-budget", "search {W}/good.yaml --budget 0", 2,
     r"--budget must be at least 1", [], ["studies/good"], {}),
    (V, "synth-negative-seed", f"{ONE} --out {{W}}/neg --seed -1", 2,
     r"--seed must be non-negative", [], ["neg"], {}),
    (V, "postprocess-out-of-range", "postprocess {W}/pred.tif {W}/image.tif --out {W}/r.tif "
     "--erode-dilate 11", 2, r"--erode-dilate: 11 is outside \[-10, 10\]", [], ["r.tif"], {}),
    (V, "search-key-written-twice", "search {W}/dupkey.yaml", 2,
     r"dupkey.yaml: key 'name' appears twice \(line \d+\)", ["dupkey.yaml"], ["studies/dupkey"],
     {}),
    (V, "search-nan-in-benchmark", "search {W}/nanbench.yaml", 2,
     r"images/v.tif: image has non-finite values \(NaN or inf\)", ["nan_bench"],
     ["studies/nanbench"], {}),
    (V, "search-class-missing-data", "search {W}/cls_missing.yaml", 2,
     r"data.dataset: .*cls_missing: data-set folder not found", [], ["studies/cls_missing"], {}),
    (V, "search-class-no-annotations", "search {W}/cls_no_table.yaml", 2,
     r"cls_no_table/annotations.csv: file not found", ["cls_no_table"], ["studies/cls_no_table"],
     {}),
    (V, "search-class-unknown-volume", "search {W}/cls_ghost_volume.yaml", 2,
     r"cls_ghost_volume/annotations.csv line \d+: unknown volume 'ghost'", ["cls_ghost_volume"],
     ["studies/cls_ghost_volume"], {}),
    (V, "search-class-undeclared-class", "search {W}/cls_undeclared.yaml", 2,
     r"cls_undeclared/annotations.csv line \d+: undeclared class 'banana'", ["cls_undeclared"],
     ["studies/cls_undeclared"], {}),
    (V, "search-class-duplicate-manual-row", "search {W}/cls_dup_manual.yaml", 2,
     r"cls_dup_manual/annotations.csv line \d+: duplicate manual annotation of synth_000",
     ["cls_dup_manual"], ["studies/cls_dup_manual"], {}),
    (V, "search-class-non-numeric-label", "search {W}/cls_bad_label.yaml", 2,
     r"cls_bad_label/annotations.csv line \d+: label must be a positive integer, got 'abc'",
     ["cls_bad_label"], ["studies/cls_bad_label"], {}),
    (V, "search-class-unannotated-class", "search {W}/cls_one_class.yaml", 2,
     r"cls_one_class/annotations.csv: no manual annotation of class '\w+'", ["cls_one_class"],
     ["studies/cls_one_class"], {}),
    (V, "search-class-unknown-head", "search {W}/cls_space_head.yaml", 2,
     r"space_cls_head.yaml: parameters.head: 'banana': Input should be 'slice' or 'volume'", [],
     ["studies/cls_space_head"], {}),
    (V, "search-class-zero-learning-rate", "search {W}/cls_space_lr.yaml", 2,
     r"space_cls_lr.yaml: parameters.lr: 0.0: Input should be greater than 0", [],
     ["studies/cls_space_lr"], {}),
    (V, "search-class-zero-head-depth", "search {W}/cls_space_head_depth.yaml", 2,
     r"parameters.head_depth: 0: Input should be greater than or equal to 1", [],
     ["studies/cls_space_head_depth"], {}),
    (V, "search-class-unknown-preprocessing", "search {W}/cls_space_preprocessing.yaml", 2,
     r"parameters.preprocessing: 'blur': Input should be 'mask' or 'distance'", [],
     ["studies/cls_space_preprocessing"], {}),
    (V, "search-class-split-fractions", "search {W}/cls_fractions.yaml", 2,
     r"cls_fractions.yaml: training: val_fraction \+ test_fraction must be below 1 .*0.7 \+ 0.6",
     [], ["studies/cls_fractions"], {}),
    (V, "search-class-unknown-design-family", "search {W}/cls_space_design.yaml", 2,
     r"space_cls_design.yaml: parameters.design: unknown design family 'tabular' \(known: "
     r"deep, features\)", [], ["studies/cls_space_design"], {}),
    (V, "search-class-unknown-feature-model", "search {W}/cls_space_model.yaml", 2,
     r"space_cls_model.yaml: parameters.model: unknown model 'svm' \(known: "
     r"logistic_regression, random_forest, hist_gradient_boosting\)", [],
     ["studies/cls_space_model"], {}),
    (V, "search-class-deep-parameter-in-feature-designs",
     "search {W}/cls_space_encoder_nowhen.yaml", 2,
     r"space_cls_encoder_nowhen.yaml: parameters.encoder: a parameter of the deep design, active "
     r"when design is 'features'.*\(add when: \{design: deep\}\)", [],
     ["studies/cls_space_encoder_nowhen"], {}),
    (V, "search-class-forest-parameter-under-another-model",
     "search {W}/cls_space_rf_under_logreg.yaml", 2,
     r"space_cls_rf_under_logreg.yaml: parameters.rf_trees: a parameter of model "
     r"'random_forest', active when design is 'features' and model is 'logistic_regression' "
     r"\(add when: \{model: random_forest\}\)", [], ["studies/cls_space_rf_under_logreg"], {}),
    (V, "search-class-balanced-accuracy-of-one-class", "search {W}/cls_single_balanced.yaml", 2,
     r"objective: balanced_accuracy needs at least 2 classes; .*cls_single_class/dataset.yaml "
     r"declares 1", ["cls_single_class"], ["studies/cls_single_balanced"], {}),
    (V, "search-class-unknown-objective", "search {W}/cls_objective_f1.yaml", 2,
     r"cls_objective_f1.yaml: objective: 'f1': Input should be 'accuracy' or "
     r"'balanced_accuracy'", [],
     ["studies/cls_objective_f1"], {}),
    (V, "search-class-more-folds-than-the-rarest-class", "search {W}/cls_ten_folds.yaml", 2,
     r"training.folds: 10 folds need at least 10 manual labels of every class outside the test "
     r"split; class 'myotube' has 3 \(of 3\)", ["cls_two_classes"], ["studies/cls_ten_folds"],
     {}),
    (V, "analyze-duplicate-manual-row", "analyze {W}/cls_dup_manual", 2,
     r"cls_dup_manual/annotations.csv line \d+: duplicate manual annotation of synth_000",
     ["cls_dup_manual"], [], {}),
    (V, "analyze-undeclared-class", "analyze {W}/cls_undeclared", 2,
     r"cls_undeclared/annotations.csv line \d+: undeclared class 'banana'", ["cls_undeclared"],
     [], {}),
    (V, "annotate-classes-differ-by-case", "annotate {W}/ds --classes myotube,Myotube", 2,
     r"classes.1.name 'Myotube' differs from the class 'myotube' only by case", ["ds"], [], {}),
    (V, "annotate-empty-token-off-loopback",
     "annotate {W}/ds --classes a,b --host 0.0.0.0 --token=", 2,
     r"token '': empty; .*required on 0.0.0.0, which is not loopback", ["ds"], [], {}),
    (V, "classify-other-channel-count", "classify {W}/cls_study --data {W}/cls", 2,
     r"cls/images/synth_000.tif: 3 channel\(s\), but the classifier takes 1",
     ["cls_study", "cls"], [], {}),
    (V, "instances-unknown-extension", "instances {W}/ds --out {W}/feat.xlsx", 2,
     r"feat.xlsx: unknown table format '.xlsx'", ["ds"], ["feat.xlsx"], {}),
    (V, "instances-csv-named-parquet", "instances {W}/ds --out {W}/feat.parquet --csv", 2,
     r"feat.parquet: the extension does not match the format written, CSV", ["ds"],
     ["feat.parquet"], {}),
    (V, "spread-fractional-component-count", "spread {W}/cls --n-components 2.5", 2,
     r"--n-components: expected a fraction .* or a whole number of components .*got 2.5",
     ["cls"], [], {}),
    (V, "synth-one-voxel", "synth --out {W}/tiny --shape 1 1 1", 2,
     r"--shape \[1, 1, 1\]: too small to hold an object: .*at least \[8, 8, 8\] voxels", [],
     ["tiny"], {}),
    (V, "synth-one-slice", "synth --out {W}/tiny --shape 1 64 64", 2,
     r"--shape \[1, 64, 64\]: too small to hold an object", [], ["tiny"], {}),
    # --- study: relocatable studies, report on incomplete studies ---------------------------
    (S, "resume-not-a-study", "resume {W}/user_dir", 2,
     r"user_dir/experiment.yaml: not a study folder", ["user_dir"], [], {}),
    (S, "resume-missing-folder", "resume {W}/no_such_study", 2,
     r"no_such_study: study folder not found", [], ["no_such_study"], {}),
    (S, "report-no-trials", "report {W}/old_study", 2,
     r"no trial records: the study failed or has not finished", ["old_study"], [], {}),
    (S, "report-on-a-data-set", "report {W}/ds", 2,
     r"ds: not a study folder \(no study.yaml", ["ds"], [], {}),
    (S, "segment-a-classification-study",
     "segment {W}/cls_study --data {W}/ds --out {W}/seg_out", 2,
     r"cls_study: a classification study \(its study.yaml says kind: classification\), not a "
     r"segmentation study", ["cls_study", "ds"], ["seg_out"], {}),
    # --- oneline: one line, never a traceback ------------------------------------------------
    (T, "search-binary-yaml", "search {W}/binary.yaml", 2,
     r"binary.yaml: not a text file", ["binary.yaml"], [], {}),
    (T, "search-latin1-yaml", "search {W}/latin1.yaml", 2,
     r"latin1.yaml: not a text file \(not UTF-8", [], [], {}),
    (T, "search-folder-as-yaml", "search {W}/user_dir", 2,
     r"user_dir: is a folder, not a YAML file", ["user_dir"], [], {}),
    (T, "resume-binary-experiment", "resume {W}/broken_study", 2,
     r"broken_study/experiment.yaml: not a text file", ["broken_study"], [], {}),
    (T, "models-binary-config", "models --config {W}/binary.yaml", 2,
     r"binary.yaml: not a text file", [], [], {}),
    (T, "predict-binary-config", "predict --data {W}/ds --config {W}/binary.yaml", 2,
     r"binary.yaml: not a text file", ["ds"], [], {}),
    (T, "info-binary-dataset-yaml", "info {W}/binary_ds", 2,
     r"binary_ds/dataset.yaml: not a text file", ["binary_ds"], [], {}),
    (T, "info-on-a-file", "info {W}/user.txt", 2,
     r"user.txt: data-set folder not found", ["user.txt"], [], {}),
    (T, "info-boolean-labels", "info {W}/bool_ds", 2,
     r"labels/v.tif: labels are a boolean mask, not instance labels", ["bool_ds"], [], {}),
    (T, "score-boolean-labels", "score {W}/mask.tif {W}/pred.tif", 2,
     r"mask.tif: labels are a boolean mask", ["mask.tif"], [], {}),
    (T, "postprocess-boolean-labels", "postprocess {W}/mask.tif {W}/image.tif --out {W}/m.tif", 2,
     r"mask.tif: labels are a boolean mask", ["mask.tif"], ["m.tif"], {}),
    (T, "postprocess-missing-pred", "postprocess {W}/nope.tif {W}/image.tif --out {W}/n.tif", 2,
     r"nope.tif: file not found", [], ["n.tif"], {}),
    (T, "train-unet-missing-data", "train-unet --data {W}/nope --out {W}/unet_new", 2,
     r"nope: data-set folder not found", [], ["unet_new"], {}),
    (T, "score-corrupt-volume", "score {W}/user.txt {W}/pred.tif", 2,
     r"user.txt: unknown volume format", [], [], {}),
    (T, "search-class-binary-annotations", "search {W}/cls_binary.yaml", 2,
     r"cls_binary/annotations.csv: not a text file", ["cls_binary"], ["studies/cls_binary"], {}),
    (T, "segment-garbage-address",
     "segment {W}/seg_study --data {W}/ds --out {W}/seg_out --address garbage:::", 2,
     r"Ray address 'garbage:::': expected HOST:PORT", ["seg_study", "ds"], ["seg_out"], {}),
    (T, "classify-garbage-address", "classify {W}/cls_study --data {W}/cls --address h:99999", 2,
     r"Ray address 'h:99999': expected HOST:PORT", ["cls_study", "cls"], [], {}),
]  # fmt: skip


#: Each row refuses within this many seconds (in-process; Ray alone takes longer to start).
ROW_SECONDS = 20.0


def _ray_running() -> bool:
    """Whether this process has a Ray session (without importing Ray for the question)."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


def _invoke(argv, cwd=None):
    runner = CliRunner()
    old = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        return runner.invoke(app, argv, terminal_width=200)
    finally:
        os.chdir(old)


@pytest.mark.parametrize(
    ("argv", "code", "pattern", "guarded", "absent", "env"),
    [pytest.param(*case[2:], id=f"{case[0]}:{case[1]}") for case in CASES],
)
def test_hostile_input(workspace, monkeypatch, argv, code, pattern, guarded, absent, env):
    env = dict(env)
    cwd = workspace / env.pop("cwd") if "cwd" in env else workspace
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AOP_DEBUG", raising=False)
    guarded_paths = [workspace / g for g in guarded]
    before = {p: _files(p) for p in guarded_paths}
    args = [a.replace("{W}", str(workspace)) for a in argv.split()]
    ray_before = _ray_running()
    started = time.perf_counter()
    result = _invoke(args, cwd=cwd)
    seconds = time.perf_counter() - started
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    # found before any work: no Ray started, and seconds rather than the minutes of a study
    assert ray_before or not _ray_running(), "the command started Ray before refusing"
    assert seconds < ROW_SECONDS, f"{seconds:.1f} s to refuse"
    assert "Traceback" not in result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert re.search(pattern, lines[0]), lines[0]
    for path in guarded_paths:
        assert _files(path) == before[path], f"{path} changed"
    for name in absent:
        assert not (workspace / name).exists(), f"{name} was created"
    leftovers = [p.name for p in workspace.iterdir() if ".aop-tmp-" in p.name]
    assert leftovers == []


def test_the_suite_covers_every_class_and_command():
    counts: dict[str, int] = {}
    for case in CASES:
        counts[case[0]] = counts.get(case[0], 0) + 1
    assert len(CASES) >= 40 and set(counts) == {D, R, V, S, T}
    commands = {case[2].split()[0] for case in CASES}
    assert {"synth", "train-unet", "postprocess", "predict", "search", "resume", "report",
            "models", "info", "score", "demo", "segment", "classify", "analyze", "annotate",
            "instances", "spread", "cluster", "adapt"} <= commands  # fmt: skip


def test_segment_refuses_more_gpus_than_a_node_has_before_any_output(workspace):
    """A GPU request no node holds would leave every actor pending: one error line once Ray is
    up, and no output folder. Ray starts here, so the command runs as a process of its own (the
    lines before the error are Ray's own start-up log)."""
    import subprocess

    out = workspace / "seg_gpu_out"
    argv = ["segment", str(workspace / "seg_study"), "--data", str(workspace / "ds"),
            "--out", str(out), "--gpus-per-worker", "64", "--workers", "1"]  # fmt: skip
    done = subprocess.run([sys.executable, "-c", "from aop.cli import main; main()", *argv],
                          capture_output=True, text=True, timeout=120, cwd=workspace)  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2, done.stderr
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and re.search(
        r"error: a segmentation worker with gpus_per_worker 64 asks for 64 GPUs on one node, but "
        r"no node of the cluster .*has that many", errors[0]
    ), done.stderr
    ray_log = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+\s+(INFO|WARNING) \w+\.py:\d+ -- ")
    assert all(ray_log.match(line) for line in lines if line not in errors), done.stderr
    assert "Traceback" not in done.stderr and not out.exists()


def test_a_class_name_with_a_newline_is_refused_and_nothing_is_written(workspace):
    before = _files(workspace / "ds")
    result = _invoke(["annotate", str(workspace / "ds"), "--classes", "myotube,sch\nwann"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "classes.1.name 'sch\\nwann' holds a control character" in lines[0]
    assert _files(workspace / "ds") == before


@pytest.mark.parametrize(
    "address", ["garbage:::", "::", ":6379", "head", "head:0", "head:65536", "a b:6379",
                "x" * 300 + ":6379", "http://head:6379", "ray://:10001"],
)  # fmt: skip
def test_a_malformed_ray_address_is_one_line_before_any_work(address):
    from aop.errors import AopError
    from aop.ray_cluster import check_address, parse_address

    with pytest.raises(AopError, match=r"Ray address .*: expected HOST:PORT"):
        parse_address(address)
    with pytest.raises(AopError, match=r"expected HOST:PORT"):
        check_address(address)
    check_address(None)
    check_address("auto")
    assert parse_address("[::1]:6379") == ("::1", 6379)
    assert parse_address("head-1.cluster.local:6379") == ("head-1.cluster.local", 6379)


# ------------------------------------------------------------------------------------------------
# Output policy: what is allowed, atomicity, stale temporaries
# ------------------------------------------------------------------------------------------------


def test_overwrite_replaces_only_aop_output(tmp_path, tmp_path_factory):
    out = tmp_path / "ds"
    result = _invoke(["synth", "--out", str(out), "--n-volumes", "1", "--shape", "8", "24", "24"])
    assert result.exit_code == 0, result.output
    assert is_aop_output(out) and (out / MARKER).is_file()
    # one z-slice (too thin to simulate objects in) reads back as a 3D volume, image and labels
    one = np.zeros((1, 24, 24), np.uint16)
    sliced = write_dataset(tmp_path_factory.mktemp("slice") / "s", [("s", one, one)],
                           DatasetInfo("s"))  # fmt: skip
    assert read_volume(sliced / "images" / "s.tif")[0].shape == (1, 24, 24)
    assert read_volume(sliced / "labels" / "s.tif")[0].shape == (1, 24, 24)
    first = (out / "dataset.yaml").read_text()
    argv = ["synth", "--out", str(out), "--n-volumes", "2", "--shape", "8", "24", "24"]
    assert _invoke(argv).exit_code == 2  # without --overwrite: refused, unchanged
    assert (out / "dataset.yaml").read_text() == first
    assert _invoke([*argv, "--overwrite"]).exit_code == 0
    assert sorted(p.name for p in (out / "images").iterdir()) == ["synth_000.tif", "synth_001.tif"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary left beside it
    # an empty folder is fine to write into (nothing to lose)
    (tmp_path / "empty").mkdir()
    assert _invoke(["synth", "--out", str(tmp_path / "empty"), *argv[3:]]).exit_code == 0


def test_postprocess_overwrite_keeps_a_normal_file_mode(workspace, tmp_path):
    out = tmp_path / "fixed.tif"
    pp = ["postprocess", str(workspace / "pred.tif"), str(workspace / "image.tif"), "--out"]
    assert _invoke([*pp, str(out)]).exit_code == 0
    assert is_aop_output(out)
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    assert _invoke([*pp, str(out), "--erode-dilate", "1", "--overwrite"]).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fixed.tif"]


def test_a_failed_write_leaves_nothing_and_stale_temporaries_are_cleaned(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic_output(target, kind="folder") as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
    # what a SIGKILLed aop leaves: a temporary of a process that no longer runs on this host
    stale = tmp_path / f".out.aop-tmp-{socket.gethostname()}-999999999-abc123"
    stale.mkdir()
    (stale / "images").mkdir()
    foreign = tmp_path / ".out.aop-tmp-otherhost-12-abc"  # maybe alive on another node: kept
    foreign.mkdir()
    user_hidden = tmp_path / ".out.backup"  # not aop's naming: kept
    user_hidden.mkdir()
    with atomic_output(target, kind="folder") as tmp:
        (tmp / "done.txt").write_text("done")
    assert not stale.exists() and foreign.exists() and user_hidden.exists()
    assert (target / "done.txt").read_text() == "done"


def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    if os.system(f"mount -t tmpfs -o size=64k tmpfs {mount} 2>/dev/null") != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        argv = ["synth", "--out", str(mount / "ds"), "--n-volumes", "1"]
        argv += ["--shape", "16", "64", "64"]
        result = _invoke(argv)
        assert result.exit_code == 2, result.output
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "no space left on the device" in lines[0], result.output
        assert list(mount.iterdir()) == []
    finally:
        os.system(f"umount -l {mount}")


def test_prepare_output_refuses_inputs_and_their_parents(tmp_path):
    data = tmp_path / "in.tif"
    data.write_text("x")
    for path, kind in ((data, "file"), (tmp_path, "folder")):
        with pytest.raises(Exception, match="input"):
            prepare_output(path, inputs=[data], kind=kind)
    link = tmp_path / "link.tif"
    link.symlink_to(data)
    with pytest.raises(Exception, match="one of the inputs"):
        prepare_output(link, inputs=[data])


# ------------------------------------------------------------------------------------------------
# Studies: the folder given wins; relative study_dir is relative to the experiment file
# ------------------------------------------------------------------------------------------------


def test_relative_study_dir_is_relative_to_the_experiment_file(tmp_path, monkeypatch):
    from aop.tuning.kinds import load_experiment

    project = tmp_path / "project"
    (project / "experiments").mkdir(parents=True)
    path = _yaml(project / "experiments" / "e.yaml", _experiment("../studies/e"))
    elsewhere = tmp_path / "elsewhere"  # outside the repository and the project
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    (elsewhere / "studies" / "e").mkdir(parents=True)  # a decoy beside the current folder
    exp = load_experiment(Path("..") / "project" / "experiments" / "e.yaml")
    assert exp.study_dir == (project / "studies" / "e").resolve()
    assert exp.cache_dir == (project / "studies" / "e" / "predictions").resolve()
    assert load_experiment(path).study_dir == exp.study_dir


def test_resume_uses_the_folder_given_not_the_stored_study_dir(tmp_path):
    from aop.tuning.kinds import parse_experiment
    from aop.tuning.study import load_study_experiment, save_experiment

    original = tmp_path / "original"
    raw = _experiment(str(original))
    raw["tracking"] = {"tracking_uri": f"sqlite:///{original}/mlflow.db", "experiment": "x"}
    raw["storage"]["cache_dir"] = str(original / "predictions")
    exp = parse_experiment(raw, base=tmp_path)
    original.mkdir()
    save_experiment(exp)
    moved = tmp_path / "moved"
    shutil.copytree(original, moved)
    shutil.rmtree(original)
    again = load_study_experiment(moved)
    assert again.study_dir == moved.resolve()
    assert again.cache_dir == moved.resolve() / "predictions"
    assert again.tracking_uri == f"sqlite:///{moved.resolve()}/mlflow.db"
    assert not original.exists()


def test_a_moved_study_writes_its_mlflow_artifacts_in_its_new_folder(tmp_path):
    """The study's own SQLite store moves its absolute artifact locations with the folder."""
    from mlflow import MlflowClient

    from aop.tracking import StudyTracker
    from aop.tuning.kinds import parse_experiment
    from aop.tuning.study import load_study_experiment, save_experiment

    original = tmp_path / "original"
    raw = _experiment(str(original))
    raw["tracking"] = {"tracking_uri": f"sqlite:///{original}/mlflow.db"}  # the study's own store
    exp = parse_experiment(raw, base=tmp_path)
    original.mkdir()
    save_experiment(exp)
    tracker = StudyTracker(original, exp.tracking_uri, experiment_name="moving")
    parent = tracker.start({"name": "m"}, {})
    note = original / "note.txt"
    note.write_text("before the move\n")
    tracker.client.log_artifact(parent, str(note))
    assert (original / "mlartifacts").is_dir()
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(str(original), str(moved))

    again = load_study_experiment(moved)  # aop resume / aop report open the study like this
    client = MlflowClient(again.tracking_uri)
    run = client.get_run(parent)
    assert run.info.artifact_uri.startswith((moved.resolve() / "mlartifacts").as_uri() + "/")
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location == (moved.resolve() / "mlartifacts").as_uri()
    later = moved / "later.txt"
    later.write_text("after the move\n")
    client.log_artifact(parent, str(later))
    listed = {a.path for a in client.list_artifacts(parent)}
    assert {"note.txt", "later.txt"} <= listed
    assert (moved / "mlartifacts" / run.info.run_id / "artifacts" / "later.txt").is_file()
    assert not original.exists()  # nothing written to the old place
    assert load_study_experiment(moved).study_dir == moved.resolve()  # a second open: no change


def test_a_moved_project_takes_its_one_store_along(tmp_path):
    """Two studies of one project share the store beside its experiment files; the project moved
    as a whole resumes into the moved store, with its artifact locations moved too."""
    from mlflow import MlflowClient

    from aop.tracking import StudyTracker
    from aop.tuning.kinds import parse_experiment
    from aop.tuning.study import load_study_experiment, save_experiment

    project = tmp_path / "project"
    (project / "experiments").mkdir(parents=True)
    parents = {}
    for name in ("a", "b"):
        exp = parse_experiment(_experiment(f"../studies/{name}"), base=project / "experiments")
        assert exp.tracking_uri == f"sqlite:///{project / 'experiments' / 'mlflow.db'}"
        exp.study_dir.mkdir(parents=True)
        save_experiment(exp)
        tracker = StudyTracker(exp.study_dir, exp.tracking_uri, experiment_name="aop-test")
        parents[name] = tracker.start({"name": name}, {})
        note = exp.study_dir / "note.txt"
        note.write_text(f"study {name}\n")
        tracker.client.log_artifact(parents[name], str(note))
    store = project / "experiments"
    assert (store / "mlartifacts").is_dir()
    assert not (project / "studies" / "a" / "mlartifacts").exists()
    moved = tmp_path / "elsewhere" / "project"
    moved.parent.mkdir()
    shutil.move(str(project), str(moved))

    for name in ("a", "b"):
        again = load_study_experiment(moved / "studies" / name)
        assert again.tracking_uri == f"sqlite:///{moved.resolve() / 'experiments' / 'mlflow.db'}"
        run = MlflowClient(again.tracking_uri).get_run(parents[name])
        location = (moved.resolve() / "experiments" / "mlartifacts").as_uri()
        assert run.info.artifact_uri.startswith(location + "/")
        listed = {a.path for a in MlflowClient(again.tracking_uri).list_artifacts(run.info.run_id)}
        assert "note.txt" in listed  # read from the moved folder
    assert not project.exists()  # nothing written to the old place


def _study_with_records(root: Path, n_gp: int, torn: bool = False) -> Path:
    from aop.analysis.records import append_record

    root.mkdir()
    (root / MARKER).write_text("{}\n")
    _yaml(root / "experiment.yaml", _experiment(str(root), search={"searcher": "gp", "budget": 4}))
    _yaml(root / "study.yaml", {"kind": "segmentation", "metric": "ipq", "mode": "max",
                                "metrics": ["ipq", "sq", "rq", "iq"], "main_search": "gp",
                                "pooled": ["baseline"], "group": "model", "budgets": {"gp": 4}})
    zeros = {"erode_dilate": 0, "open_close": 0, "merge_continuity": 0.0, "merge_smoothness": 0.0,
             "merge_area": 0.0, "split_sigma": 0.0, "split_threshold": 0.0}  # fmt: skip
    for i in range(n_gp):
        append_record(root / "results" / "gp.jsonl", {
            "search": "gp", "trial_id": f"t{i}", "model": "classical", "params": zeros,
            "ipq": 0.5 + i / 10, "sq": 0.8, "rq": 0.7, "iq": 1.0,
        })  # fmt: skip
    if torn:
        with open(root / "results" / "gp.jsonl", "a") as handle:
            handle.write('{"search": "gp", "trial_id": "t9", "mod')
    return root


def test_report_says_a_study_is_incomplete_and_counts_a_torn_line(tmp_path):
    study = _study_with_records(tmp_path / "s", 2, torn=True)
    result = _invoke(["report", str(study)])
    assert result.exit_code == 0, result.output
    assert "search gp: 2 of 4 trials finished" in result.output
    assert "no best.yaml (the study has not finished)" in result.output
    assert "results/gp.jsonl: last line is cut off" in result.output
    assert "Study incomplete" in result.output and "Best configuration" not in result.output
    data = json.loads(_invoke(["report", str(study), "--json"]).output)
    assert data["complete"] is False and len(data["problems"]) == 3
    assert data["trials"] == {"gp": 2}


# ------------------------------------------------------------------------------------------------
# Tracebacks on request only
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["--debug", "AOP_DEBUG"])
def test_debug_shows_the_traceback(workspace, monkeypatch, how):
    argv = ["search", str(workspace / "binary.yaml")]
    if how == "AOP_DEBUG":
        monkeypatch.setenv("AOP_DEBUG", "1")
    else:
        argv = ["--debug", *argv]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 1
    assert "not a text file" in str(result.exception)
    assert type(result.exception).__name__ == "AopError"


@pytest.mark.parametrize("argv", [["--help"], ["search", "--help"], ["demo", "--help"],
                                  ["--version"]])
def test_help_and_version_exit_0_without_an_error_line(argv):
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "from aop.cli import main; main()", *argv],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "error:" not in done.stderr and "aop bug" not in done.stderr
    assert ("Usage" in done.stdout) or done.stdout.startswith("aop ")


def test_a_usage_error_is_typers_message_and_exit_2():
    result = _invoke(["search", "--no-such-option"])
    assert result.exit_code == 2
    assert "No such option" in result.output and "aop bug" not in result.output


def test_instances_overwrite_replaces_only_its_own_marked_table(workspace, tmp_path):
    out = tmp_path / "features.parquet"
    argv = ["instances", str(workspace / "ds"), "--out", str(out)]
    assert _invoke(argv).exit_code == 0
    assert is_aop_output(out)  # the Parquet schema carries aop's mark
    first = out.read_bytes()
    refused = _invoke(argv)
    assert refused.exit_code == 2
    assert "features.parquet: exists, an earlier aop table; pass --overwrite" in refused.output
    assert out.read_bytes() == first
    assert _invoke([*argv, "--overwrite"]).exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.parquet"]


def test_analyze_replaces_only_its_own_analysis_folder(workspace, tmp_path):
    mine = tmp_path / "mystats"
    mine.mkdir()
    (mine / "summary.csv").write_text("the user's own summary\n")
    before = _files(mine)
    refused = _invoke(["analyze", str(workspace / "cls"), "--out", str(mine), "--overwrite"])
    assert refused.exit_code == 2
    assert "mystats: folder holds files aop did not write (summary.csv)" in refused.output
    assert _files(mine) == before
    out = tmp_path / "stats"
    argv = ["analyze", str(workspace / "cls"), "--out", str(out)]
    assert _invoke(argv).exit_code == 0
    first = _files(out)
    again = _invoke(argv)
    assert again.exit_code == 2
    assert "stats: holds an earlier aop analysis; pass --overwrite" in again.output
    assert _files(out) == first
    assert _invoke([*argv, "--overwrite"]).exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "class_counts.csv", "class_counts.png", "instance_volumes.csv", "summary.csv",
        "volume_distributions.png",
    ]  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mystats", "stats"]


def test_classify_recognises_only_its_own_predictions_table(tmp_path):
    from aop.classify import is_predictions_table

    table = tmp_path / "predictions.csv"
    table.write_text("volume,label,class,probability,p_a,p_b\nv,1,a,0.9,0.9,0.1\n")
    assert is_predictions_table(table)
    for text in ("volume,label,class\n", "volume,label,class,probability\n",
                 "volume,label,class,probability,score\n", "my notes\n"):
        table.write_text(text)
        assert not is_predictions_table(table), text
    table.write_bytes(b"\xff\xfe")
    assert not is_predictions_table(table)
    assert not is_predictions_table(tmp_path / "missing.csv")
