"""The classification trial: one Lightning training of one classifier design, reported to Ray Tune.

A trial reports every validation epoch (``val_accuracy`` is the best so far, the objective) with a
Tune checkpoint of the Lightning state (:class:`TuneReport`), so a trial killed mid-training
continues from its last epoch after ``aop resume``. Its last report adds the test-split metrics of
its best checkpoint. :func:`best_checkpoint` finds that checkpoint again after the study, and
:func:`log_classifier_model` logs it to MLflow.
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


class TuneReport(L.Callback):
    """Reports each validation epoch to Ray Tune with a checkpoint.

    Each Tune checkpoint holds ``last.ckpt`` (the state to resume from), ``progress.json`` and
    ``BEST_FILE``, the weights of the stage's best epoch so far: a training resumed on another
    node, or after the interrupted run's folder was removed, still ends with its best epoch.

    Parameters
    ----------
    work : str
        The trial's scratch folder (holds ``BEST_FILE``).
    epochs, best, stage_best
        The counts of a restored trial, so the epochs of a resumed training go on from where the
        killed one stopped (``epochs`` counts over both trainings of ``semi``).
    """

    def __init__(
        self, work: str, epochs: int = 0, best: float = 0.0,
        stage_best: dict[str, float] | None = None,
    ) -> None:  # fmt: skip
        self.best = best
        self.epochs = epochs
        self.stage_best = dict(stage_best or {})
        self.best_file = os.path.join(work, BEST_FILE)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get("val_acc")
        if value is None:
            return
        self.epochs += 1
        accuracy = float(value)
        self.best = max(self.best, accuracy)
        stage = str(pl_module.hparams.get("stage", "train"))
        if stage not in self.stage_best or accuracy > self.stage_best[stage]:
            # strictly better, as ModelCheckpoint decides: a tie keeps the earlier epoch
            self.stage_best[stage] = accuracy
            trainer.save_checkpoint(self.best_file, weights_only=True)
        with tempfile.TemporaryDirectory() as tmp:
            trainer.save_checkpoint(os.path.join(tmp, "last.ckpt"))
            shutil.copy(self.best_file, os.path.join(tmp, BEST_FILE))
            with open(os.path.join(tmp, PROGRESS_FILE), "w") as handle:
                json.dump({"epochs": self.epochs, "best": self.best, "stage": stage,
                           "stage_best": self.stage_best}, handle)
            tune.report(
                {"val_accuracy": self.best, "val_accuracy_epoch": accuracy,
                 "epoch": self.epochs, "stage": stage},
                checkpoint=tune.Checkpoint.from_directory(tmp),
            )


def classification_trial(
    config: dict[str, Any],
    data: Any,
    training: dict[str, Any],
    weights: dict[str, str],
    gpu: float = 0.0,
    tracking: dict[str, str] | None = None,
) -> None:
    """Ray Tune function trainable: one Lightning training of one classifier configuration.

    ``tracking`` (the study's folder, tracking URI and MLflow experiment) lets the trial log its
    per-epoch curves with Lightning's MLflow logger into its own child run
    (:mod:`aop.tracking.trial_logger`).
    """
    import ray

    from aop.classification.train import ClassifierConfig

    bundle = ray.get(data) if isinstance(data, ray.ObjectRef) else data
    fields = {k: v for k, v in config.items() if k in ClassifierConfig.model_fields}
    settings = {k: v for k, v in training.items() if k in ClassifierConfig.model_fields}
    cfg = ClassifierConfig(
        **{**settings, **fields}, weights=weights.get(str(config.get("encoder")))
    )
    method = cfg.preprocessing
    with tempfile.TemporaryDirectory(prefix="aop-trial-") as work:
        _train_and_report(cfg, bundle, training, method, gpu, work, tracking)


def _train_and_report(
    cfg: Any,
    bundle: dict[str, Any],
    training: dict[str, Any],
    method: str,
    gpu: float,
    work: str,
    tracking: dict[str, str] | None = None,
) -> None:
    """One training in the trial's scratch folder ``work``, resumed from Tune's checkpoint."""
    from aop.classification.data import SplitConfig
    from aop.classification.train import train_classifier
    from aop.ray_cluster import node_name

    manual, pseudo = bundle["manual"], bundle["pseudo"]
    resume, resume_best, progress = None, None, {"epochs": 0, "best": 0.0}
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a trial killed mid-training: continue from its last epoch
        local = checkpoint.to_directory(os.path.join(work, "restored"))
        if os.path.isfile(os.path.join(local, "last.ckpt")):
            resume = os.path.join(local, "last.ckpt")
            with open(os.path.join(local, PROGRESS_FILE)) as handle:
                progress = json.load(handle)
            stage = progress.get("stage")
            if os.path.isfile(os.path.join(local, BEST_FILE)) and stage in progress.get(
                "stage_best", {}
            ):
                # the callback goes on from this file (and may replace it); the restored
                # checkpoint folder keeps the interrupted run's own copy for train_classifier
                shutil.copy(os.path.join(local, BEST_FILE), os.path.join(work, BEST_FILE))
                resume_best = (os.path.join(local, BEST_FILE), float(progress["stage_best"][stage]))
    reporter = TuneReport(
        work, int(progress["epochs"]), float(progress["best"]), progress.get("stage_best")
    )
    from aop.tracking.trial_logger import open_trial_logger

    context = tune.get_context()
    logger = open_trial_logger(
        tracking, context.get_experiment_name(), context.get_trial_id(), node_name(),
        step=lambda: reporter.epochs,
    )  # fmt: skip
    result = train_classifier(
        cfg,
        manual["crops"][method],
        manual["y"],
        out_dir=work,
        split=SplitConfig(
            val_fraction=training["val_fraction"], test_fraction=training["test_fraction"],
            seed=cfg.seed,
        ),
        pseudo=(pseudo["crops"][method], pseudo["y"]) if cfg.pretraining == "semi" else None,
        class_names=bundle["classes"],
        callbacks=[reporter],
        logger=logger,
        resume_from=resume,
        resume_best=resume_best,
        accelerator="gpu" if gpu > 0 else "cpu",
    )
    test = result.test
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(result.checkpoint_path, os.path.join(tmp, "best.ckpt"))
        tune.report(
            {
                "val_accuracy": float(result.val_accuracy),
                "test_accuracy": float(test.get("accuracy", float("nan"))),
                "epoch": reporter.epochs,
                "test": test,
                "node": node_name(),
                "final": True,
            },
            checkpoint=tune.Checkpoint.from_directory(tmp),
        )


def best_checkpoint(
    study_dir: Path, record: Mapping[str, Any], storage: str | None = None
) -> Path | None:
    """The ``best.ckpt`` a trial saved with its last report, as a local file.

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

    Returns
    -------
    Path or None
        ``None`` when the trial saved no ``best.ckpt``.
    """
    from aop.tuning.study import tune_experiments

    study_dir = Path(study_dir)
    if storage is None:
        tune = study_dir / "tune"
        for experiment in tune_experiments(record["search"], lambda n: (tune / n).is_dir()):
            found = sorted((tune / experiment / record["trial_id"]).glob("checkpoint_*/best.ckpt"))
            if found:
                return found[-1]
        return None
    import pyarrow.fs

    from aop.tuning.storage import tune_storage

    local = study_dir / "checkpoints" / record["search"] / record["trial_id"] / "best.ckpt"
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
        remote = f"{trial_dir}/{name}/best.ckpt"
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
