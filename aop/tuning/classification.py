"""The classification study kind: encoder, head, pretraining and preprocessing, validation accuracy.

A trial is one Lightning training (:func:`aop.classification.train.train_classifier`) of the
configuration it is given, on instance crops of a segmented data set with a class table
(``annotations.csv``: ``manual`` rows train and validate, ``spread`` rows are the pseudo-labels of
the ``semi`` pretraining). Crops are computed once per preprocessing method and reach the trials
through Ray's object store. A trial reports every epoch (``val_accuracy`` is the best so far, the
objective) with a Tune checkpoint of the Lightning state, so a trial killed mid-training continues
from its last epoch after ``aop resume``. Its last report adds the test-split metrics of its best
checkpoint.

After the searches the kind logs the best classifier with ``mlflow.pytorch.log_model`` (signature
and input example) and registers it, and draws the paper's results: Fig. 6 (mean validation
accuracy per encoder x (head, preprocessing), and encoder x pretraining), Table IV (instances per
second at batch 1 and 32 per encoder, on this device), the Pearson correlation between encoder
parameter count and validation accuracy, and the best trial's confusion matrix.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from pydantic import Field, model_validator
from ray import tune

from aop.config import BaseExperiment, _Strict
from aop.errors import AopError
from aop.tuning.kinds import Prepared, StudyKind, load_space_file, register_kind
from aop.tuning.space import SearchSpace

#: Parameters a classification search space may name (all ClassifierConfig fields a trial sets).
PARAMETERS = {
    "encoder": "registered encoder or timm model name",
    "head": "slice or volume",
    "pretraining": "full, semi or none",
    "preprocessing": "mask or distance",
    "lr": "Adam learning rate",
    "head_depth": "linear layers of the head",
    "head_width": "width of the head's hidden layers",
    "batch_size": "training batch size",
}
METRICS = ("val_accuracy", "test_accuracy", "epoch")


class ClassDataConfig(_Strict):
    """The segmented data set whose instances are classified."""

    dataset: Path


class CropConfig(_Strict):
    """Instance crops (:func:`aop.instances.crops.instance_crops`)."""

    size: tuple[int, int, int] = (8, 32, 32)
    target_spacing: tuple[float, float, float] | None = None
    sigma: Annotated[float, Field(gt=0)] = 2.0

    @model_validator(mode="after")
    def _big_enough(self) -> CropConfig:
        if min(self.size) < 4:
            raise ValueError(f"size: every side must be at least 4, got {list(self.size)}")
        return self


class TrainingConfig(_Strict):
    """Training settings every trial shares (a search-space parameter overrides its field)."""

    max_epochs: Annotated[int, Field(gt=0)] = 30
    patience: Annotated[int, Field(gt=0)] = 5
    batch_size: Annotated[int, Field(gt=0)] = 16
    lr: Annotated[float, Field(gt=0, le=1)] = 1e-3
    head_depth: Annotated[int, Field(ge=1, le=8)] = 2
    head_width: Annotated[int, Field(ge=1, le=4096)] = 128
    freeze_fraction: Annotated[float, Field(ge=0, le=1)] = 0.8
    class_weights: list[float] | str | None = None
    augment: bool = True
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    test_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.2


class ClassificationExperiment(BaseExperiment):
    """A classifier-design study (``kind: classification``)."""

    data: ClassDataConfig
    crops: CropConfig = Field(default_factory=CropConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    weights: dict[str, Path] = Field(
        default_factory=dict,
        description="Local ImageNet weights per encoder, for pretraining full and semi.",
    )
    search_space: Path = Path("search_spaces/classification.yaml")

    def input_paths(self) -> list[Path]:
        return [*super().input_paths(), self.data.dataset, *self.weights.values()]

    def resolve_paths(self, base: Path) -> None:
        from aop.config import _resolve

        super().resolve_paths(base)
        self.data.dataset = _resolve(self.data.dataset, base)
        self.weights = {k: _resolve(v, base) for k, v in self.weights.items()}


# ------------------------------------------------------------------------------------------------
# Data: crops of the labelled instances, once per preprocessing method
# ------------------------------------------------------------------------------------------------


def _choices(space: SearchSpace, name: str, default: Any) -> list[Any]:
    value = space.parameters.get(name, default)
    return list(getattr(value, "categories", [value]))


def load_class_data(
    exp: ClassificationExperiment, methods: Sequence[str]
) -> dict[str, Any]:
    """Crops and class indices of the manual (and pseudo-labelled) instances of the data set.

    Returns
    -------
    dict
        ``classes`` (names), ``manual`` and ``pseudo``: ``{"keys": [(volume, label)], "y":
        ndarray, "crops": {method: ndarray (N, C, Z, Y, X)}}``.
    """
    from aop.instances.annotations import read_annotations, read_classes
    from aop.instances.crops import instance_crops
    from aop.io import load_dataset

    root = exp.data.dataset
    dataset = load_dataset(root, require_labels=True)
    classes = [c.name for c in read_classes(root)]
    if len(classes) < 2:
        raise AopError(f"{root}/dataset.yaml: classes: a classification study needs >= 2 classes")
    table = read_annotations(root)
    index = {name: i for i, name in enumerate(classes)}
    groups = {}
    for source in ("manual", "spread"):
        rows = table[(table["source"] == source) & table["class"].isin(index)]
        groups[source] = rows
    manual_keys = set(zip(groups["manual"]["volume"], groups["manual"]["label"], strict=True))
    pseudo = groups["spread"]
    unlabelled = np.array(
        [(v, int(lab)) not in manual_keys
         for v, lab in zip(pseudo["volume"], pseudo["label"], strict=True)], dtype=bool
    )
    spread = pseudo.loc[unlabelled]
    out: dict[str, Any] = {"classes": classes}
    for name, rows in (("manual", groups["manual"]), ("pseudo", spread)):
        keys, ys, crops = [], [], {m: [] for m in methods}
        for volume, part in rows.groupby("volume", sort=True):
            labels = dataset.labels(volume)
            image = dataset.image(volume)
            wanted = [int(x) for x in part["label"]]
            cls = dict(zip(part["label"].astype(int), part["class"], strict=True))
            for method in methods:
                array, ids = instance_crops(
                    labels, image, size=exp.crops.size, spacing=dataset.info.voxel_size,
                    target_spacing=exp.crops.target_spacing, method=method,
                    sigma=exp.crops.sigma, labels_subset=wanted,
                )
                crops[method].append(array)
            keys += [(volume, int(i)) for i in ids]
            ys += [index[cls[int(i)]] for i in ids]
        out[name] = {
            "keys": keys,
            "y": np.asarray(ys, dtype=np.int64),
            "crops": {m: (np.concatenate(c) if c else np.zeros((0, 1, *exp.crops.size),
                                                                 np.float32))
                      for m, c in crops.items()},
        }
    counts = np.bincount(out["manual"]["y"], minlength=len(classes))
    if (counts == 0).any():
        missing = classes[int(np.argmin(counts))]
        raise AopError(f"{root}/annotations.csv: no manual annotation of class {missing!r}")
    if (counts < 2).any():
        few = classes[int(np.argmin(counts))]
        raise AopError(f"{root}/annotations.csv: class {few!r} has 1 manual annotation; at least 2 "
                       "are needed to split it into training and validation")
    return out


# ------------------------------------------------------------------------------------------------
# The trial
# ------------------------------------------------------------------------------------------------


PROGRESS_FILE = "progress.json"
BEST_FILE = "best_epoch.ckpt"  # in each epoch's Tune checkpoint; the final report's is best.ckpt


def _tune_report_callback(
    work: str, epochs: int = 0, best: float = 0.0, stage_best: dict[str, float] | None = None
) -> Any:
    """A Lightning callback that reports each validation epoch to Ray Tune with a checkpoint.

    Each Tune checkpoint holds ``last.ckpt`` (the state to resume from), ``progress.json`` and
    ``BEST_FILE``, the weights of the stage's best epoch so far: a training resumed on another
    node, or after the interrupted run's folder was removed, still ends with its best epoch.
    ``epochs``, ``best`` and ``stage_best`` continue the counts of a restored trial, so the epochs
    of a resumed training go on from where the killed one stopped.
    """
    import shutil

    import lightning as L
    from ray.tune import Checkpoint

    class TuneReport(L.Callback):
        def __init__(self) -> None:
            self.best = best
            self.epochs = epochs  # counted over both trainings of semi, and across a resume
            self.stage_best = dict(stage_best or {})
            self.best_file = os.path.join(work, BEST_FILE)

        def on_validation_epoch_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
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
                    checkpoint=Checkpoint.from_directory(tmp),
                )

    return TuneReport()


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
    fields = {k: config[k] for k in PARAMETERS if k in config}
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
    import shutil

    from ray.tune import Checkpoint

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
    reporter = _tune_report_callback(
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
            checkpoint=Checkpoint.from_directory(tmp),
        )


# ------------------------------------------------------------------------------------------------
# The kind
# ------------------------------------------------------------------------------------------------


@register_kind
class ClassificationKind(StudyKind):
    """Classifier-design study: encoder x head x pretraining x preprocessing, val. accuracy."""

    name = "classification"
    metric = "val_accuracy"
    mode = "max"
    metrics = METRICS
    parameter_columns = ("encoder", "head", "pretraining", "preprocessing")
    experiment_model = ClassificationExperiment
    start_point = "default"
    record_extras = ("test",)
    curves = ("val_accuracy_epoch", "val_accuracy")

    def search_space(self, exp: ClassificationExperiment) -> SearchSpace:  # type: ignore[override]
        return load_space_file(exp.search_space, allowed=PARAMETERS)

    def check(self, exp: ClassificationExperiment, source: str) -> None:  # type: ignore[override]
        """Names in the space, and every weights file a ``full`` trial would need."""
        from aop.classification.encoders import check_pretrained_weights, encoder_entry

        space = self.search_space(exp)
        encoders = _choices(space, "encoder", "resnet18")
        for name in encoders:
            try:
                encoder_entry(str(name))
            except AopError as exc:
                raise AopError(f"{exp.search_space}: parameters.encoder: {exc}") from None
        for key in exp.weights:
            if key not in encoders:
                raise AopError(f"{source}: weights.{key}: not an encoder of the search space")
        # only `full` loads ImageNet weights; `semi` starts from random weights like `none`
        # (aop.classification.train: its first stage trains on the pseudo-labelled set)
        if "full" in set(_choices(space, "pretraining", "none")):
            for name in encoders:
                try:
                    check_pretrained_weights(str(name), exp.weights.get(str(name)))
                except AopError as exc:
                    raise AopError(f"{source}: weights.{name}: {exc}") from None

    def prepare(self, exp: ClassificationExperiment) -> Prepared:  # type: ignore[override]
        import ray

        space = self.search_space(exp)
        methods = [str(m) for m in _choices(space, "preprocessing", "mask")]
        bundle = load_class_data(exp, methods)
        if "semi" in _choices(space, "pretraining", "none") and len(bundle["pseudo"]["y"]) == 0:
            raise AopError(
                f"{exp.data.dataset}/annotations.csv: pretraining 'semi' needs pseudo-labels "
                "(source=spread rows): run aop spread first"
            )
        ref = ray.put(bundle)
        resources = exp.search.resources
        trainable = tune.with_parameters(
            classification_trial,
            data=ref,
            training=exp.training.model_dump(mode="json"),
            weights={k: str(v) for k, v in exp.weights.items()},
            gpu=resources.gpu,
            tracking={"study_dir": str(exp.study_dir), "tracking_uri": exp.tracking_uri,
                      "experiment": exp.tracking.experiment or self.mlflow_experiment},
        )  # fmt: skip
        request = {"cpu": resources.cpus}
        if resources.gpu:
            request["gpu"] = resources.gpu
        return Prepared(
            trainable=tune.with_resources(trainable, request),
            dataset=exp.data.dataset,
            context={"classes": bundle["classes"], "n_manual": len(bundle["manual"]["y"]),
                     "crop_shape": bundle["manual"]["crops"][methods[0]].shape[1:]},
        )

    def grid_space(self, exp: ClassificationExperiment, space: SearchSpace) -> dict[str, Any]:
        """All combinations of the categorical parameters (others at the start point)."""
        start = (space.start("default") or [{}])[0]
        out: dict[str, Any] = dict(space.fixed)
        for name, domain in space.domains().items():
            categories = getattr(domain, "categories", None)
            out[name] = tune.grid_search(list(categories)) if categories else start.get(
                name, domain.sample())
        return out

    def best_summary(self, best: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "params": dict(best["params"]),
            "scores": dict(best["metrics"]),
            "test": best.get("test", {}),
        }

    def finish(
        self,
        exp: ClassificationExperiment,  # type: ignore[override]
        records: Mapping[str, Sequence[dict[str, Any]]],
        best: dict[str, Any],
        prepared: Prepared,
        tracker: Any,
    ) -> list[Path]:
        from aop.analysis.classifier_study import write_classifier_results

        checkpoint = best_checkpoint(exp.study_dir, best, exp.storage.tune_storage)
        artifacts = write_classifier_results(
            exp.study_dir, dict(records), best, crop_shape=prepared.context["crop_shape"],
            classes=prepared.context["classes"],
        )
        if checkpoint is not None:
            metadata = {
                "crop_size": list(exp.crops.size),
                "target_spacing": list(exp.crops.target_spacing)
                if exp.crops.target_spacing else None,
                "preprocessing": str(best["params"].get("preprocessing", "mask")),
                "sigma": exp.crops.sigma,
                "classes": list(prepared.context["classes"]),
            }
            tracker.log_model_safely(
                lambda: log_classifier_model(
                    tracker, checkpoint, prepared.context["crop_shape"],
                    registered_name=f"aop-{exp.name}-classifier", metadata=metadata,
                ),
                tag="classifier",
            )
        return artifacts


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
    from aop.tracking.client import _tracking_uri, model_requirements

    model = CropClassifier.load_from_checkpoint(str(checkpoint), map_location="cpu").eval()
    example = np.zeros((1, *crop_shape), dtype=np.float32)
    with torch.no_grad():
        output = model(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, output)
    run_id = tracker.parent_run_id
    with _tracking_uri(tracker.tracking_uri), mlflow.start_run(run_id=run_id, nested=True):
        mlflow.pytorch.log_model(
            model, name="classifier", signature=signature, input_example=example,
            registered_model_name=registered_name, metadata=dict(metadata or {}),
            # the whole module (eval mode, any batch size; aop.classification must be importable
            # where it loads), not a torch.export graph traced at one batch size
            serialization_format="pickle",
            pip_requirements=model_requirements("torch", "lightning", "timm", "cloudpickle"),
        )
    tracker.client.update_run(run_id, status="RUNNING")
    return f"runs:/{run_id}/classifier"
