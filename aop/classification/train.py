"""One classifier training for one configuration: what a trial of the classifier study runs.

:func:`train_classifier` trains :class:`~aop.classification.module.CropClassifier` with Lightning
on crops the caller has already computed and preprocessed (``mask`` or ``distance``), with
``EarlyStopping`` and a ``ModelCheckpoint`` of the best epoch (plus ``last.ckpt``) on the
validation score the configuration's ``objective`` names (:data:`MONITORS`: ``val_acc``, the share
of validation crops classified right, or ``val_bal_acc``, the mean per-class recall, for
imbalanced classes). The best checkpoint then predicts the validation split once (its accuracy,
balanced accuracy and predictions are the result's, exactly those of the best epoch, and callers
pool the predictions of several folds) and the test split once. Callers add their own callbacks (a
Ray Tune report callback) and logger (Lightning's MLflow logger), and resume from a checkpoint
path.

Small, imbalanced label sets (a first round of annotation: a few dozen labels, a class with three)
have three options besides the objective: cross-entropy ``class_weights="balanced"``, the
``sampler="balanced"`` draw of training crops (:mod:`aop.classification.data`), and the
augmentation (the eight yx symmetries, intensity jitter of the image channels, ``augment_z_flip``
for data symmetric in z). With ``preprocessing="mask"`` channel 0 is the instance's binary mask
(:func:`aop.instances.crops.instance_crops` writes it there by default) and gets no intensity
jitter.

Batch-norm statistics
---------------------
A network validates in eval mode, with the running statistics its batch-norm layers gathered in
training (an average of the batches' statistics that moves by 10 % per step). A small set trains
a few steps per epoch (27 crops in batches of 16: 2), so for the first dozens of steps those
statistics trail the weights and the validation scores measure that lag rather than the network:
a network that classifies its training crops right validates at chance. With
``refresh_batch_norm`` (:class:`RefreshBatchNorm`) every validation starts by recomputing the
statistics from the current weights: one pass without gradients over the (unaugmented) training
crops, every batch weighted alike. The checkpoints keep the refreshed statistics, so a reloaded
network predicts as it validated.

Pretraining (paper III-B.3)
---------------------------
- ``full``: the encoder starts from its pretrained weights (ImageNet for timm encoders, Cellpose's
  own for ``cellpose_sam``), 80 % of its parameters are frozen from the input side
  (:mod:`aop.classification.module`), and it trains on the manual labels.
- ``semi``: two trainings. First the whole network (nothing frozen) trains on the semi-supervised
  set: the manual training split plus the pseudo-labelled crops from label spreading (validated on
  the manual validation split). Then a new network starts from that training's best weights, 80 % of
  the encoder frozen, and trains on the manual labels. The first training starts from random
  initialisation: the semi-supervised set *is* this option's pretraining, in place of ImageNet,
  which keeps it a distinct option from ``full`` and needs no weights file.
- ``none``: random initialisation (each network's own initialiser, as timm or Cellpose define it),
  nothing frozen, manual labels only. Not ImageNet weights: the paper trains this option
  "exclusively on the manually annotated dataset", so no knowledge from other data enters, and it
  runs where no weights file exists.

Example
-------
>>> import numpy as np, tempfile
>>> rng = np.random.default_rng(0)
>>> labels = np.repeat([0, 1], 24)
>>> crops = rng.normal(size=(48, 1, 2, 32, 32)).astype(np.float32)
>>> crops += labels[:, None, None, None, None]
>>> config = ClassifierConfig(encoder="test_resnet", max_epochs=1, batch_size=16)
>>> result = train_classifier(config, crops, labels, out_dir=tempfile.mkdtemp())
>>> 0.0 <= result.val_accuracy <= 1.0, 0.0 <= result.val_balanced_accuracy <= 1.0
(True, True)
>>> len(result.val_pred) == len(result.val_index) == result.split_sizes["val"]
True
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from aop.classification.data import CropDataModule, SplitConfig, check_crops
from aop.classification.encoders import encoder_entry
from aop.classification.evaluation import classification_metrics
from aop.classification.module import CropClassifier, predict_proba
from aop.errors import AopError

__all__ = [
    "MONITORS",
    "ClassifierConfig",
    "ClassifierResult",
    "RefreshBatchNorm",
    "StageResult",
    "classification_metrics",
    "train_classifier",
]

#: The logged validation score each ``objective`` monitors (early stopping, best checkpoint).
MONITORS = {"accuracy": "val_acc", "balanced_accuracy": "val_bal_acc"}

#: The channel :func:`aop.instances.crops.instance_crops` replaces by the mask (its default
#: ``mask_channel``), for ``preprocessing="mask"``.
MASK_CHANNEL = 0


class ClassifierConfig(BaseModel):
    """One trial's classifier configuration (the study's search space samples these fields)."""

    model_config = ConfigDict(extra="forbid")

    encoder: str = Field("resnet18", description="Registered encoder or timm model name.")
    head: Literal["slice", "volume"] = "slice"
    pretraining: Literal["full", "semi", "none"] = "none"
    preprocessing: Literal["mask", "distance"] = Field(
        "mask", description="How the caller made the crops (recorded; not applied here)."
    )
    lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate.")
    head_depth: int = Field(2, ge=1, le=8, description="Linear layers of the head.")
    head_width: int = Field(128, ge=1, le=4096, description="Width of the head's hidden layers.")
    batch_size: int = Field(16, ge=1)
    max_epochs: int = Field(30, ge=1)
    patience: int = Field(
        5, ge=1, description="Epochs without a better objective score before stopping."
    )
    freeze_fraction: float = Field(
        0.8, ge=0, le=1, description="Encoder share frozen for full and semi (the paper: 0.8)."
    )
    seed: int = 0
    weights: str | None = Field(None, description="Local pretrained weights file (full).")
    objective: Literal["accuracy", "balanced_accuracy"] = Field(
        "accuracy",
        description="Validation score for early stopping and the best epoch (val_acc or "
        "val_bal_acc).",
    )
    class_weights: list[float] | Literal["balanced"] | None = Field(
        None, description="Cross-entropy class weights, or 'balanced' (from the training split)."
    )
    sampler: Literal["shuffle", "balanced"] = Field(
        "shuffle", description="Training draw: each crop once per epoch, or classes equally often."
    )
    augment: bool = True
    augment_z_flip: bool = Field(
        False, description="Also flip z (only for objects that look the same upside down in z)."
    )
    refresh_batch_norm: bool = Field(
        True, description="Recompute batch-norm statistics on the training crops to validate."
    )

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, value: str) -> str:
        try:
            encoder_entry(value)
        except AopError as exc:
            raise ValueError(str(exc)) from None
        return value


@dataclass
class StageResult:
    """One Lightning training of a configuration (``semi`` has two).

    ``best_score`` is the best epoch's value of ``monitor`` (``val_acc`` or ``val_bal_acc``), as
    the training logged it.
    """

    stage: str
    epochs: int
    n_train: int
    monitor: str
    best_score: float
    checkpoint: Path
    frozen_parameters: int
    encoder_parameters: int


@dataclass
class ClassifierResult:
    """What :func:`train_classifier` returns.

    The best epoch is the final training's best by the configuration's objective; its checkpoint
    (``checkpoint_path``, ``CropClassifier.load_from_checkpoint`` reloads it) predicts the
    validation and test splits once, in 32-bit precision on the CPU.

    Attributes
    ----------
    val_accuracy, val_balanced_accuracy : float
        The best epoch's validation accuracy and balanced accuracy (both from its predictions,
        whichever one the objective monitored); :attr:`val_score` is the monitored one.
    test : dict
        The best epoch's scores on the test split (:func:`classification_metrics`).
    train_index, val_index, test_index : ndarray of int64
        The split of the manual labels (indices into ``labels``).
    val_pred : ndarray of int64
        The best epoch's predicted class of every validation crop, aligned with ``val_index``.
    val_proba : ndarray of float32
        Its class probabilities ``(len(val_index), num_classes)``.
    """

    config: ClassifierConfig
    val_accuracy: float
    val_balanced_accuracy: float
    test: dict[str, Any]
    checkpoint_path: Path
    stages: list[StageResult] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    split_sizes: dict[str, int] = field(default_factory=dict)
    train_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    val_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    test_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    val_pred: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    val_proba: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))

    @property
    def val_score(self) -> float:
        """The best epoch's validation score by the configuration's objective."""
        if self.config.objective == "balanced_accuracy":
            return self.val_balanced_accuracy
        return self.val_accuracy


class RefreshBatchNorm(Callback):
    """Recompute the batch-norm running statistics on the training crops as validation starts.

    Every batch-norm layer of the module (encoder and head) is reset and, in training mode with a
    cumulative average (``momentum=None``), sees the training crops of the data module
    (:meth:`~aop.classification.data.CropDataModule.training_set`, not augmented; at most
    ``max_crops`` of them, a seeded draw) in batches of nearly equal size, without gradients and
    in the trainer's precision. The layers then return to their mode and momentum. A module
    without batch norm (a vision transformer) is left as it is.

    Parameters
    ----------
    batch_size : int
        Largest batch of the pass.
    max_crops : int
        Most crops the pass sees.
    seed : int
        Seeds the draw of ``max_crops`` from a larger training set.
    """

    def __init__(self, batch_size: int, max_crops: int = 1024, seed: int = 0) -> None:
        self.batch_size = int(batch_size)
        self.max_crops = int(max_crops)
        self.seed = int(seed)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        kinds = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
        norms = [m for m in pl_module.modules() if isinstance(m, kinds) and m.track_running_stats]
        if not norms:
            return
        crops, _ = trainer.datamodule.training_set()
        if len(crops) > self.max_crops:
            rng = np.random.default_rng(self.seed)
            crops = crops[np.sort(rng.choice(len(crops), self.max_crops, replace=False))]
        batches = np.array_split(np.arange(len(crops)), -(-len(crops) // self.batch_size))
        saved = [(m, m.momentum, m.training) for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: every batch counts alike
            m.train()
        try:
            with trainer.precision_plugin.forward_context():
                for part in batches:
                    pl_module(torch.as_tensor(crops[part]).to(pl_module.device))
        finally:
            for m, momentum, training in saved:
                m.momentum = momentum
                m.train(training)


def _class_weights(config: ClassifierConfig, labels: np.ndarray, num_classes: int):  # type: ignore[no-untyped-def]
    if config.class_weights is None:
        return None
    if config.class_weights == "balanced":
        counts = np.bincount(labels, minlength=num_classes).astype(float)
        # scikit-learn's "balanced": n_samples / (n_classes * count); absent classes get 0.
        with np.errstate(divide="ignore"):
            weights = np.where(counts > 0, len(labels) / (num_classes * counts), 0.0)
        return [float(w) for w in weights]
    if len(config.class_weights) != num_classes:
        raise AopError(
            f"class_weights: {len(config.class_weights)} values for {num_classes} classes"
        )
    return [float(w) for w in config.class_weights]


def _checkpoint_stage(path: Path) -> str:
    if not path.is_file():
        raise AopError(f"{path}: checkpoint to resume from not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        return str(checkpoint["hyper_parameters"]["stage"])
    except Exception as exc:  # noqa: BLE001  (any unreadable checkpoint is the same user error)
        raise AopError(f"{path}: not a classifier checkpoint ({type(exc).__name__})") from exc


def train_classifier(
    config: ClassifierConfig,
    crops: np.ndarray,
    labels: np.ndarray,
    *,
    out_dir: str | os.PathLike,
    split: SplitConfig | tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    pseudo: tuple[np.ndarray, np.ndarray] | None = None,
    class_names: Sequence[str] | None = None,
    callbacks: Sequence[Callback] = (),
    logger: Any = None,
    resume_from: str | os.PathLike | None = None,
    resume_best: tuple[str | os.PathLike, float] | None = None,
    accelerator: str = "auto",
) -> ClassifierResult:
    """Train one configuration and evaluate its best checkpoint on the test split.

    Parameters
    ----------
    config : ClassifierConfig
        The configuration (encoder, head, pretraining, learning rate, head size, epochs, ...).
    crops : ndarray
        float32 ``(N, C, Z, Y, X)``, preprocessing already applied.
    labels : ndarray
        Manual class indices ``(N,)``.
    out_dir : path-like
        Checkpoints go to ``out_dir/<stage>/best.ckpt`` and ``last.ckpt``.
    split : SplitConfig or (train, val, test) indices, optional
        Stratified split of the manual labels (default :class:`SplitConfig` with the config's seed).
    pseudo : (crops, labels), optional
        Pseudo-labelled crops of instances without a manual label (label spreading); required by
        ``semi``. They must not include the manual validation or test instances.
    class_names : sequence of str, optional
        Names of the classes (default ``class_0``, ...).
    callbacks, logger
        Extra Lightning callbacks and a logger, passed to every ``Trainer`` (both trainings of
        ``semi``; ``pl_module.hparams.stage`` tells which).
    resume_from : path-like, optional
        A checkpoint of this training (``best.ckpt``/``last.ckpt`` or a Tune checkpoint's file):
        training continues from its epoch, in its stage.
    resume_best : (path, score), optional
        The best epoch's checkpoint of the interrupted training, and its score in the monitored
        metric (``val_acc`` or ``val_bal_acc``, :data:`MONITORS`), saved beside ``resume_from``.
        The restored ``ModelCheckpoint`` names the best file of the interrupted run's folder,
        which is gone when the training resumes elsewhere (another node, a cleaned ``/tmp``), and
        its score misses the epoch whose end saved ``resume_from``: of this file and the resumed
        run's own best, the better one is kept (the earlier one on a tie, as ``ModelCheckpoint``
        does).
    accelerator : str
        ``Trainer`` argument; on a GPU the training runs in ``"16-mixed"`` precision.

    Returns
    -------
    ClassifierResult

    Raises
    ------
    AopError
        Bad crops or labels, ``semi`` without pseudo labels, a missing weights file for ``full``,
        an unreadable checkpoint.
    """
    crops = check_crops(crops, labels, "crops")
    labels = np.asarray(labels, dtype=np.int64)
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    if class_names is None:
        class_names = [f"class_{i}" for i in range(num_classes)]
    elif len(class_names) < num_classes:
        raise AopError(f"class_names: {len(class_names)} names for label {num_classes - 1}")
    class_names, num_classes = list(class_names), len(class_names)
    if num_classes < 2:
        raise AopError(f"labels: need at least 2 classes, got {num_classes}")
    if config.pretraining == "semi":
        if pseudo is None or len(pseudo[1]) == 0:
            raise AopError("pretraining 'semi': needs pseudo-labelled crops (label spreading)")
        if np.asarray(pseudo[1]).max() >= num_classes:
            raise AopError(f"pseudo labels: class {np.asarray(pseudo[1]).max()} out of range")
    out_dir = Path(out_dir)
    L.seed_everything(config.seed, workers=True, verbose=False)
    split = split if split is not None else SplitConfig(seed=config.seed)
    loading = {
        "batch_size": config.batch_size,
        "augment": config.augment,
        "augment_z_flip": config.augment_z_flip,
        "mask_channel": MASK_CHANNEL if config.preprocessing == "mask" else None,
        "sampler": config.sampler,
        "seed": config.seed,
    }
    data = CropDataModule(crops, labels, split=split, **loading)
    weights = _class_weights(config, labels[data.train_index], num_classes)

    # (stage, pretrained encoder, frozen fraction, training data)
    plan: list[tuple[str, bool, float, CropDataModule]]
    if config.pretraining == "semi":
        semi_data = CropDataModule(
            crops, labels, split=(data.train_index, data.val_index, data.test_index),
            extra_train=pseudo, **loading,
        )
        plan = [("semi", False, 0.0, semi_data), ("manual", False, config.freeze_fraction, data)]
    else:
        full = config.pretraining == "full"
        plan = [("manual", full, config.freeze_fraction if full else 0.0, data)]

    resume = Path(resume_from) if resume_from is not None else None
    resume_stage = _checkpoint_stage(resume) if resume is not None else None
    if resume_stage is not None and resume_stage not in [s[0] for s in plan]:
        raise AopError(f"{resume}: checkpoint of stage {resume_stage!r}, not of this configuration")
    if resume_stage == "manual" and len(plan) == 2:
        plan = plan[1:]  # the semi-supervised training finished before the checkpoint was saved

    on_gpu = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    stages: list[StageResult] = []
    init_state: dict[str, torch.Tensor] | None = None
    best_path = Path()
    for stage, pretrained, freeze, stage_data in plan:
        model = CropClassifier(
            config.encoder,
            in_chans=crops.shape[1],
            crop_size=crops.shape[2:],
            num_classes=num_classes,
            head=config.head,
            head_depth=config.head_depth,
            head_width=config.head_width,
            lr=config.lr,
            class_weights=weights,
            freeze_fraction=freeze,
            class_names=class_names,
            stage=stage,
            pretrained=pretrained,
            weights=config.weights,
        )
        if init_state is not None:
            model.load_state_dict(init_state)
        # both act when validation ends, not at the training epoch's end: a training resumed
        # from a checkpoint saved as validation ended (a Tune trial's) has no val_acc there yet
        monitor = MONITORS[config.objective]
        checkpoint = ModelCheckpoint(
            dirpath=out_dir / stage, filename="best", monitor=monitor, mode="max",
            enable_version_counter=False, save_on_train_epoch_end=False,
        )
        # Lightning's save_last only refreshes last.ckpt when a best checkpoint is saved; this
        # one writes the state of every finished epoch, the one to resume from.
        last = ModelCheckpoint(
            dirpath=out_dir / stage, filename="last", enable_version_counter=False,
            save_on_train_epoch_end=False,
        )
        stopping = EarlyStopping(monitor=monitor, mode="max", patience=config.patience,
                                 check_on_train_epoch_end=False)
        refresh = [RefreshBatchNorm(config.batch_size, seed=config.seed)]
        trainer = L.Trainer(
            max_epochs=config.max_epochs,
            callbacks=[*(refresh if config.refresh_batch_norm else []), stopping, checkpoint, last,
                       *callbacks],  # fmt: skip
            logger=logger if logger is not None else False,
            accelerator=accelerator,
            precision="16-mixed" if on_gpu else "32-true",
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
        )
        ckpt_path = str(resume) if resume is not None and stage == resume_stage else None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", ".*does not have many workers.*")
            warnings.filterwarnings("ignore", ".*number of training batches.*")
            # a resume in another folder: resume_best stands in for the lost best score
            warnings.filterwarnings("ignore", ".*dirpath has changed.*")
            _quiet_lightning()
            trainer.fit(model, datamodule=stage_data, ckpt_path=ckpt_path)
        best_path = Path(checkpoint.best_model_path or last.best_model_path)
        best_score = checkpoint.best_model_score
        if ckpt_path is not None and resume_best is not None:
            own = best_path.parent.resolve() == (out_dir / stage).resolve() and best_path.is_file()
            # in float32, the precision of the logged scores: 13/15 as a float (the result's
            # val_accuracy) and as a logged float32 are the same score
            earlier = np.float32(resume_best[1])
            if not own or best_score is None or np.float32(best_score) <= earlier:
                best_path, best_score = Path(resume_best[0]), torch.tensor(resume_best[1])
        if not best_path.is_file():
            raise AopError(
                f"{resume}: the best checkpoint {best_path} of the interrupted training is gone; "
                "resume with the best epoch's file saved beside it (resume_best)"
            )
        stages.append(
            StageResult(
                stage=stage,
                epochs=int(trainer.current_epoch),
                n_train=len(stage_data.train_dataset()),
                monitor=monitor,
                best_score=float(best_score) if best_score is not None else float("nan"),
                checkpoint=best_path,
                frozen_parameters=model.frozen_parameter_count(),
                encoder_parameters=model.plan.total,
            )
        )
        init_state = torch.load(best_path, map_location="cpu", weights_only=False)["state_dict"]

    final = CropClassifier.load_from_checkpoint(best_path, map_location="cpu")
    val_proba = predict_proba(final, crops[data.val_index], batch_size=config.batch_size)
    val_pred = val_proba.argmax(1).astype(np.int64)
    val = classification_metrics(labels[data.val_index], val_pred, class_names)
    probabilities = predict_proba(final, crops[data.test_index], batch_size=config.batch_size)
    test = classification_metrics(labels[data.test_index], probabilities.argmax(1), class_names)
    return ClassifierResult(
        config=config,
        val_accuracy=val["accuracy"],
        val_balanced_accuracy=val["balanced_accuracy"],
        test=test,
        checkpoint_path=best_path,
        stages=stages,
        class_names=class_names,
        split_sizes={
            "train": len(data.train_index),
            "val": len(data.val_index),
            "test": len(data.test_index),
            "pseudo": 0 if pseudo is None else len(pseudo[1]),
        },
        train_index=data.train_index,
        val_index=data.val_index,
        test_index=data.test_index,
        val_pred=val_pred,
        val_proba=val_proba,
    )


def _quiet_lightning() -> None:
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda",
                 "lightning.fabric.utilities.seed"):
        logging.getLogger(name).setLevel(logging.WARNING)
