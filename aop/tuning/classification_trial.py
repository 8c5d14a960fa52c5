"""The classification trial: one classifier design, scored on the study's splits, reported to Tune.

A **deep** design trains with Lightning once per validation fold of the study's
:class:`~aop.classification.evaluation.DesignSplits` (one fold: one training). Every validation
epoch is reported (:class:`TuneReport`): the objective is the trial's estimate so far (the finished
folds and the current fold's best epoch, weighted by their validation sizes), with a Tune checkpoint
of the Lightning state, so a trial killed mid-training continues from its last epoch, in its fold,
after ``aop resume``. The last report gives the scores of the out-of-fold predictions of all folds
together, the per-fold scores (``folds``, for the paired comparison with the baseline), and the
test-split metrics of the best fold's model, which is the trial's model (``best.ckpt``).

A **features** design fits a scikit-learn pipeline on the instance features
(:func:`aop.classification.tabular.evaluate_design`: the same folds, refitted on every label
outside the test split for the test scores) in seconds and reports once, with the pipeline
refitted on every manual label (:data:`FEATURE_MODEL_FILE`) in its checkpoint: the model
``aop classify`` applies.

A study with a ``latency_ms`` objective (``training["measure_latency"]``) has each trial measure
its own model once, at its end, on the device it ran on: milliseconds per instance at batch 32
(:func:`aop.classification.inference.latency_ms`, a batch of its validation instances).

- deep (:func:`deep_latency_ms`): the forward pass of the trial's model (the best fold's) on 32
  of that fold's validation crops, in float16 autocast on a GPU as the study trains. Cropping is
  not timed: every deep design crops alike.
- features (:func:`feature_latency_ms`): computing an instance's features, which the kind timed
  once per study for every instance of the labelled volumes (``aop instances``' features,
  the whole table divided by its instances), plus the fitted pipeline's ``predict_proba`` on 32
  validation rows. A feature design's cost is mostly its features, the same for every model.

:func:`best_checkpoint` finds a trial's model file again after the study;
:func:`log_classifier_model` and :func:`log_feature_model` log it to MLflow.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from ray import tune

PROGRESS_FILE = "progress.json"
BEST_FILE = "best_epoch.ckpt"  # in each epoch's Tune checkpoint; the final report's is best.ckpt
FOLD_BEST_FILE = "best_fold.ckpt"  # the best finished fold's model, beside them
FEATURE_MODEL_FILE = "model.joblib"  # a feature design's fitted pipeline, in its checkpoint


class TuneReport(L.Callback):
    """Reports each validation epoch to Ray Tune with a checkpoint.

    Each Tune checkpoint holds ``last.ckpt`` (the state to resume from), ``progress.json``,
    ``BEST_FILE`` (the weights of the stage's best epoch so far, so that a training resumed on
    another node, or after the interrupted run's folder was removed, still ends with its best
    epoch) and, from the second fold on, ``FOLD_BEST_FILE``.

    Parameters
    ----------
    work : str
        The trial's scratch folder (holds ``BEST_FILE`` and ``FOLD_BEST_FILE``).
    monitor : str
        ``val_acc`` or ``val_bal_acc``: what makes an epoch the best.
    n_val : int
        Validation instances of this fold (weights its estimate against the finished folds).
    epochs, stage_best, fold, done, current
        The state of a restored trial: epochs over every fold and stage, the best monitored
        score per stage of this fold, this fold's index, the finished folds' results, and this
        fold's best epoch so far (``score``, ``accuracy``, ``balanced_accuracy``).
    """

    def __init__(
        self, work: str, monitor: str = "val_acc", n_val: int = 1, epochs: int = 0,
        stage_best: dict[str, float] | None = None, fold: int = 0,
        done: Sequence[Mapping[str, Any]] = (), current: Mapping[str, float] | None = None,
    ) -> None:  # fmt: skip
        self.monitor = monitor
        self.n_val = n_val
        self.epochs = epochs
        self.stage_best = dict(stage_best or {})
        self.fold = fold
        self.done = [dict(d) for d in done]
        self.current = dict(current or {"score": -1.0, "accuracy": 0.0, "balanced_accuracy": 0.0})
        self.best_file = os.path.join(work, BEST_FILE)
        self.fold_best_file = os.path.join(work, FOLD_BEST_FILE)

    def estimate(self) -> dict[str, float]:
        """The trial's validation scores so far: finished folds and this fold's best epoch."""
        parts = [(d["n"], d["accuracy"], d["balanced_accuracy"]) for d in self.done]
        parts.append((self.n_val, self.current["accuracy"], self.current["balanced_accuracy"]))
        total = sum(n for n, _, _ in parts)
        return {
            "val_accuracy": sum(n * a for n, a, _ in parts) / total,
            "val_balanced_accuracy": sum(n * b for n, _, b in parts) / total,
        }

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get("val_acc")
        if value is None:
            return
        accuracy = float(value)
        balanced = float(trainer.callback_metrics.get("val_bal_acc", value))
        self.epochs += 1
        score = balanced if self.monitor == "val_bal_acc" else accuracy
        stage = str(pl_module.hparams.get("stage", "train"))
        if stage not in self.stage_best or score > self.stage_best[stage]:
            # strictly better, as ModelCheckpoint decides: a tie keeps the earlier epoch
            self.stage_best[stage] = score
            trainer.save_checkpoint(self.best_file, weights_only=True)
        if score > self.current["score"]:
            self.current = {"score": score, "accuracy": accuracy, "balanced_accuracy": balanced}
        with tempfile.TemporaryDirectory() as tmp:
            trainer.save_checkpoint(os.path.join(tmp, "last.ckpt"))
            shutil.copy(self.best_file, os.path.join(tmp, BEST_FILE))
            if os.path.isfile(self.fold_best_file):
                shutil.copy(self.fold_best_file, os.path.join(tmp, FOLD_BEST_FILE))
            with open(os.path.join(tmp, PROGRESS_FILE), "w") as handle:
                json.dump({"epochs": self.epochs, "stage": stage, "stage_best": self.stage_best,
                           "fold": self.fold, "done": self.done, "current": self.current},
                          handle)  # fmt: skip
            tune.report(
                {**self.estimate(), "val_accuracy_epoch": accuracy,
                 "val_balanced_accuracy_epoch": balanced, "epoch": self.epochs, "stage": stage,
                 "fold": self.fold},
                checkpoint=tune.Checkpoint.from_directory(tmp),
            )  # fmt: skip


def classification_trial(
    config: dict[str, Any],
    data: Any,
    training: dict[str, Any],
    weights: dict[str, str],
    gpu: float = 0.0,
    tracking: dict[str, str] | None = None,
) -> None:
    """Ray Tune function trainable: one classifier design (``config["design"]``, default deep).

    ``data`` holds the manual labels' crops, features, classes and the study's splits
    (:func:`aop.tuning.classification.load_class_data`); ``training`` the experiment's training
    settings with its ``objective`` and ``seed``. ``tracking`` (the study's folder, tracking URI
    and MLflow experiment) lets a deep trial log its per-epoch curves with Lightning's MLflow
    logger into its own child run (:mod:`aop.tracking.trial_logger`).
    """
    import ray

    bundle = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    if config.get("design", "deep") == "features":
        _fit_features_and_report(config, bundle, training)
        return
    from aop.classification.train import ClassifierConfig

    fields = {k: v for k, v in config.items() if k in ClassifierConfig.model_fields}
    settings = {k: v for k, v in training.items() if k in ClassifierConfig.model_fields}
    cfg = ClassifierConfig(
        **{**settings, **fields}, weights=weights.get(str(config.get("encoder")))
    )
    with tempfile.TemporaryDirectory(prefix="aop-trial-") as work:
        _train_and_report(cfg, bundle, training, gpu, work, tracking)


def _fit_features_and_report(
    config: Mapping[str, Any], bundle: Mapping[str, Any], training: Mapping[str, Any]
) -> None:
    """A feature design: fit, score on the study's splits, report once with the fitted model."""
    from aop.classification.tabular import (
        FEATURE_MODELS,
        evaluate_design,
        make_model,
        save_model,
    )
    from aop.ray_cluster import node_name

    model = str(config.get("model", "logistic_regression"))
    params = {k: v for k, v in config.items() if k in FEATURE_MODELS[model]}
    weights = training.get("class_weights")
    class_weight = dict(enumerate(weights)) if isinstance(weights, list) else weights
    seed = int(training.get("seed", 0))
    features, labels = bundle["features"]["X"], bundle["manual"]["y"]
    result = evaluate_design(
        lambda: make_model(model, params, class_weight=class_weight, seed=seed),
        features, labels, bundle["splits"], bundle["classes"],
    )  # fmt: skip
    # the scores are those of the model fitted without the test split; the model the trial
    # keeps (and aop classify applies) is refitted on every manual label, a fifth more data on
    # a small set, in a fraction of a second
    final = make_model(model, params, class_weight=class_weight, seed=seed).fit(features, labels)
    latency = {}
    if training.get("measure_latency"):
        latency["latency_ms"] = feature_latency_ms(
            final, features, bundle["splits"].folds[0][1], bundle["features"]["ms_per_instance"]
        )
    with tempfile.TemporaryDirectory() as tmp:
        save_model(final, os.path.join(tmp, FEATURE_MODEL_FILE))
        tune.report(
            {**result.to_metrics(), **latency, "test": result.test, "node": node_name(),
             "final": True,
             "folds": {"accuracy": list(result.fold_accuracy),
                       "balanced_accuracy": list(result.fold_balanced_accuracy)}},
            checkpoint=tune.Checkpoint.from_directory(tmp),
        )  # fmt: skip


def _restored(work: str) -> tuple[dict[str, Any], str | None, tuple[str, float] | None]:
    """A killed trial's progress, its ``last.ckpt`` and its best epoch, from Tune's checkpoint."""
    progress: dict[str, Any] = {"epochs": 0, "fold": 0, "done": [], "stage_best": {}}
    checkpoint = tune.get_checkpoint()
    if checkpoint is None:
        return progress, None, None
    local = checkpoint.to_directory(os.path.join(work, "restored"))
    if not os.path.isfile(os.path.join(local, "last.ckpt")):
        return progress, None, None
    with open(os.path.join(local, PROGRESS_FILE)) as handle:
        progress |= json.load(handle)
    if os.path.isfile(os.path.join(local, FOLD_BEST_FILE)):
        shutil.copy(os.path.join(local, FOLD_BEST_FILE), os.path.join(work, FOLD_BEST_FILE))
    resume_best = None
    stage = progress.get("stage")
    if os.path.isfile(os.path.join(local, BEST_FILE)) and stage in progress["stage_best"]:
        # the callback goes on from this file (and may replace it); the restored checkpoint
        # folder keeps the interrupted run's own copy for train_classifier
        shutil.copy(os.path.join(local, BEST_FILE), os.path.join(work, BEST_FILE))
        resume_best = (os.path.join(local, BEST_FILE), float(progress["stage_best"][stage]))
    return progress, os.path.join(local, "last.ckpt"), resume_best


def _train_and_report(
    cfg: Any,
    bundle: dict[str, Any],
    training: dict[str, Any],
    gpu: float,
    work: str,
    tracking: dict[str, str] | None = None,
) -> None:
    """A deep design's trainings, one per fold, in the scratch folder ``work``; then the report."""
    from aop.classification.evaluation import classification_metrics
    from aop.classification.train import train_classifier
    from aop.ray_cluster import node_name
    from aop.tracking.trial_logger import open_trial_logger

    manual, pseudo, splits = bundle["manual"], bundle["pseudo"], bundle["splits"]
    crops, labels, classes = manual["crops"][cfg.preprocessing], manual["y"], bundle["classes"]
    progress, resume, resume_best = _restored(work)
    monitor = "val_bal_acc" if training.get("objective") == "balanced_accuracy" else "val_acc"
    epochs, done = int(progress["epochs"]), list(progress["done"])
    context = tune.get_context()
    reporters: list[TuneReport] = []  # the current fold's, whose epoch count steps the curves
    logger = open_trial_logger(
        tracking, context.get_experiment_name(), context.get_trial_id(), node_name(),
        step=lambda: reporters[-1].epochs if reporters else epochs,
    )  # fmt: skip
    fold_best = os.path.join(work, FOLD_BEST_FILE)
    for fold in range(len(done), len(splits.folds)):
        train, val = splits.folds[fold]
        same = fold == int(progress["fold"]) and resume is not None
        reporter = TuneReport(
            work, monitor, len(val), epochs, progress["stage_best"] if same else None, fold, done,
            progress.get("current") if same else None,
        )  # fmt: skip
        reporters.append(reporter)
        result = train_classifier(
            cfg, crops, labels, out_dir=os.path.join(work, f"fold{fold}"),
            split=(train, val, splits.test),
            pseudo=(pseudo["crops"][cfg.preprocessing], pseudo["y"])
            if cfg.pretraining == "semi" else None,
            class_names=classes, callbacks=[reporter], logger=logger,
            resume_from=resume if same else None, resume_best=resume_best if same else None,
            accelerator="gpu" if gpu > 0 else "cpu",
        )  # fmt: skip
        epochs = reporter.epochs
        accuracy, balanced = float(result.val_accuracy), float(result.val_balanced_accuracy)
        score = balanced if monitor == "val_bal_acc" else accuracy
        if not done or score > max(d["score"] for d in done):  # the earlier fold on a tie
            shutil.copy(result.checkpoint_path, fold_best)
        done.append({"fold": fold, "n": len(val), "accuracy": accuracy,
                     "balanced_accuracy": balanced, "score": score, "test": result.test,
                     "val_pred": [int(p) for p in result.val_pred]})  # fmt: skip
    val_index = np.concatenate([splits.folds[d["fold"]][1] for d in done])
    pooled = classification_metrics(
        labels[val_index], np.concatenate([d["val_pred"] for d in done]), classes
    )
    best = max(done, key=lambda d: d["score"])  # max keeps the first of equal scores
    test = best["test"]
    latency = {}
    if training.get("measure_latency"):  # the trial's model: the best fold's, on its validation
        val = splits.folds[best["fold"]][1]
        latency["latency_ms"] = deep_latency_ms(fold_best, crops[val], on_gpu=gpu > 0)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(fold_best, os.path.join(tmp, "best.ckpt"))
        tune.report(
            {
                "val_accuracy": pooled["accuracy"],
                "val_balanced_accuracy": pooled["balanced_accuracy"],
                "test_accuracy": float(test.get("accuracy", float("nan"))),
                "test_balanced_accuracy": float(test.get("balanced_accuracy", float("nan"))),
                "epoch": epochs,
                "test": test,
                "folds": {"accuracy": [d["accuracy"] for d in done],
                          "balanced_accuracy": [d["balanced_accuracy"] for d in done]},
                "node": node_name(),
                "final": True,
                **latency,
            },
            checkpoint=tune.Checkpoint.from_directory(tmp),
        )  # fmt: skip


def deep_latency_ms(checkpoint: str | os.PathLike, crops: np.ndarray, on_gpu: bool) -> float:
    """Milliseconds per instance of a trained classifier on a batch of 32 of ``crops``.

    Parameters
    ----------
    checkpoint : path-like
        The Lightning checkpoint of a :class:`aop.classification.module.CropClassifier`.
    crops : numpy.ndarray
        Validation crops ``(N, C, Z, Y, X)``, cycled to fill the batch.
    on_gpu : bool
        Time on the GPU (float16 autocast, as the study trains there) when CUDA is usable;
        else on the CPU.
    """
    import torch

    from aop.classification.inference import batch_of, latency_ms
    from aop.classification.module import CropClassifier

    device = torch.device("cuda" if on_gpu and torch.cuda.is_available() else "cpu")
    model = CropClassifier.load_from_checkpoint(str(checkpoint), map_location=device).eval()
    batch = torch.as_tensor(np.ascontiguousarray(crops[batch_of(len(crops))]),
                            dtype=torch.float32, device=device)  # fmt: skip
    cuda = device.type == "cuda"

    def forward() -> None:
        with torch.inference_mode(), torch.autocast(device.type, torch.float16, enabled=cuda):
            model(batch)

    return latency_ms(forward, len(batch),
                      synchronize=(lambda: torch.cuda.synchronize(device)) if cuda else None)


def feature_latency_ms(
    model: Any, features: Any, rows: np.ndarray, feature_ms_per_instance: float
) -> float:
    """Milliseconds per instance of a feature design: its features, then ``predict_proba``.

    Parameters
    ----------
    model
        The fitted scikit-learn pipeline.
    features : pandas.DataFrame
        The instance features of the manual labels (the study's feature matrix).
    rows : numpy.ndarray
        Validation rows, cycled to a batch of 32.
    feature_ms_per_instance : float
        The time to compute one instance's features (timed once per study by the kind).
    """
    from aop.classification.inference import batch_of, latency_ms

    batch = features.iloc[np.asarray(rows)[batch_of(len(rows))]]
    return float(feature_ms_per_instance) + latency_ms(lambda: model.predict_proba(batch))


def best_checkpoint(
    study_dir: Path,
    record: Mapping[str, Any],
    storage: str | None = None,
    filename: str = "best.ckpt",
) -> Path | None:
    """The model file (``best.ckpt``, or a feature design's ``filename``) of a trial's last report.

    Parameters
    ----------
    study_dir : Path
        The study folder.
    record : mapping
        The trial's record (``search`` and ``trial_id``).
    storage : str, optional
        The study's ``storage.tune_storage`` URI (``s3://...``, ``file:///shared/tune``): the
        trial folder is there, and its ``best.ckpt`` is copied to
        ``STUDY_DIR/checkpoints/SEARCH/TRIAL/best.ckpt`` (once). ``None``: ``STUDY_DIR/tune``.
    filename : str
        The file to find in the trial's checkpoints (:data:`FEATURE_MODEL_FILE` for a feature
        design).

    Returns
    -------
    Path or None
        ``None`` when the trial saved no such file.
    """
    from aop.tuning.study import tune_experiments

    study_dir = Path(study_dir)
    if storage is None:
        tune = study_dir / "tune"
        for experiment in tune_experiments(record["search"], lambda n: (tune / n).is_dir()):
            trial = tune / experiment / record["trial_id"]
            found = sorted(trial.glob(f"checkpoint_*/{filename}"))
            if found:
                return found[-1]
        return None
    import pyarrow.fs

    from aop.tuning.storage import tune_storage

    local = study_dir / "checkpoints" / record["search"] / record["trial_id"] / filename
    if local.is_file():
        return local
    filesystem, root = tune_storage(storage, study_dir / "tune")

    def exists(path: str) -> bool:
        return filesystem.get_file_info(path).type == pyarrow.fs.FileType.Directory

    experiments = tune_experiments(record["search"], lambda n: exists(f"{root}/{n}"))
    trial_dir = next(
        (d for e in experiments if exists(d := f"{root}/{e}/{record['trial_id']}")),
        f"{root}/{record['search']}/{record['trial_id']}",
    )
    entries = filesystem.get_file_info(pyarrow.fs.FileSelector(trial_dir, allow_not_found=True))
    names = sorted(e.base_name for e in entries if e.type == pyarrow.fs.FileType.Directory
                   and e.base_name.startswith("checkpoint_"))
    for name in reversed(names):
        remote = f"{trial_dir}/{name}/{filename}"
        if filesystem.get_file_info(remote).type != pyarrow.fs.FileType.File:
            continue
        from aop.outputs import atomic_output

        local.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(local, check=False) as tmp:
            pyarrow.fs.copy_files(remote, str(tmp), source_filesystem=filesystem,
                                  destination_filesystem=pyarrow.fs.LocalFileSystem())
        return local
    return None


def log_classifier_model(
    tracker: Any,
    checkpoint: Path,
    crop_shape: Sequence[int],
    registered_name: str,
    metadata: Mapping[str, Any] | None = None,
) -> str:
    """Log a trial's best checkpoint with ``mlflow.pytorch.log_model`` and register it.

    ``metadata`` (crop size, preprocessing, classes) lets ``aop classify MODEL_URI`` crop as the
    study did.
    """
    import mlflow
    import torch
    from mlflow.models import infer_signature

    from aop.classification.module import CropClassifier
    from aop.tracking.client import model_requirements

    model = CropClassifier.load_from_checkpoint(str(checkpoint), map_location="cpu").eval()
    example = np.zeros((1, *crop_shape), dtype=np.float32)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, output)
    with tracker.parent_run() as run_id:
        mlflow.pytorch.log_model(
            model, name="classifier", signature=signature, input_example=example,
            registered_model_name=registered_name, metadata=dict(metadata or {}),
            # the whole module (eval mode, any batch size; aop.classification must be importable
            # where it loads), not a torch.export graph traced at one batch size
            serialization_format="pickle",
            pip_requirements=model_requirements("torch", "lightning", "timm", "cloudpickle"),
        )
    return f"runs:/{run_id}/classifier"


def log_feature_model(
    tracker: Any,
    path: Path,
    example: Any,
    registered_name: str,
    metadata: Mapping[str, Any],
) -> str:
    """Log a feature design's fitted pipeline with ``mlflow.sklearn.log_model`` and register it.

    Its input is a table of instance features (``example``: a few rows, whose column names the
    signature keeps); ``metadata`` (``design: features``, the feature columns, the classes) lets
    ``aop classify MODEL_URI`` compute the same features.
    """
    import mlflow
    from mlflow.models import infer_signature

    from aop.classification.tabular import TRUSTED_TYPES, load_model
    from aop.tracking.client import model_requirements

    model = load_model(path)
    signature = infer_signature(example, model.predict_proba(example))
    with tracker.parent_run() as run_id:
        mlflow.sklearn.log_model(
            model, name="classifier", signature=signature, input_example=example,
            registered_model_name=registered_name, metadata=dict(metadata),
            # skops: loading runs no code; the trees' classes are named as trusted
            serialization_format="skops", skops_trusted_types=TRUSTED_TYPES,
            pyfunc_predict_fn="predict_proba",
            pip_requirements=model_requirements("scikit-learn", "skops", "pandas"),
        )  # fmt: skip
    return f"runs:/{run_id}/classifier"
