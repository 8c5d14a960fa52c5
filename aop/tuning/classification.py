"""The classification study kind: encoder, head, pretraining and preprocessing, validation accuracy.

A trial is one Lightning training (:func:`aop.classification.train.train_classifier`) of the
configuration it is given, on instance crops of a segmented data set with a class table
(``annotations.csv``: ``manual`` rows train and validate, ``spread`` rows are the pseudo-labels of
the ``semi`` pretraining). Crops are computed once per preprocessing method and reach the trials
through Ray's object store. The trial itself is :mod:`aop.tuning.classification_trial`.

After the searches the kind logs the best classifier with ``mlflow.pytorch.log_model`` (signature
and input example) and registers it, and draws the paper's results: Fig. 6 (mean validation
accuracy per encoder x (head, preprocessing), and encoder x pretraining), Table IV (instances per
second at batch 1 and 32 per encoder, on this device), the Pearson correlation between encoder
parameter count and validation accuracy, and the best trial's confusion matrix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from pydantic import Field, ValidationError, model_validator

from aop.config import BaseExperiment, StrictModel, resolve_input
from aop.errors import AopError, error_message
from aop.tuning.kinds import Prepared, StudyKind
from aop.tuning.space import ChoiceSpec, FloatSpec, IntSpec, SearchSpace, load_space_file

if TYPE_CHECKING:
    import pandas as pd

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


class ClassDataConfig(StrictModel):
    """The segmented data set whose instances are classified."""

    dataset: Path


class CropConfig(StrictModel):
    """Instance crops (:func:`aop.instances.crops.instance_crops`)."""

    size: tuple[int, int, int] = (8, 32, 32)
    target_spacing: tuple[float, float, float] | None = None
    sigma: Annotated[float, Field(gt=0)] = 2.0

    @model_validator(mode="after")
    def _big_enough(self) -> CropConfig:
        if min(self.size) < 4:
            raise ValueError(f"size: every side must be at least 4, got {list(self.size)}")
        return self


class TrainingConfig(StrictModel):
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

    @model_validator(mode="after")
    def _room_to_train(self) -> TrainingConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(
                f"val_fraction + test_fraction must be below 1 (the rest trains), got "
                f"{self.val_fraction} + {self.test_fraction}"
            )
        return self


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
        super().resolve_paths(base)
        self.data.dataset = resolve_input(self.data.dataset, base)
        self.weights = {k: resolve_input(v, base) for k, v in self.weights.items()}


# ------------------------------------------------------------------------------------------------
# Data: crops of the labelled instances, once per preprocessing method
# ------------------------------------------------------------------------------------------------


def class_rows(
    root: Path, table: pd.DataFrame, classes: Sequence[str]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The manual rows and the pseudo-labels of a class table, checked for a classifier study.

    Parameters
    ----------
    root : Path
        The data set (named in the messages).
    table : pandas.DataFrame
        Its ``annotations.csv`` (:func:`aop.instances.annotations.read_annotations`).
    classes : sequence of str
        The declared classes; rows of other classes (``bad_segmentation``) are left out.

    Returns
    -------
    manual, pseudo : pandas.DataFrame
        The ``manual`` rows, and the ``spread`` rows of instances without a manual row.

    Raises
    ------
    AopError
        Fewer than two classes, or a class with fewer than two manual annotations (one for
        training, one for validation).
    """
    if len(classes) < 2:
        raise AopError(f"{root}/dataset.yaml: classes: a classification study needs >= 2 classes")
    known = table["class"].isin(list(classes))
    manual = table[(table["source"] == "manual") & known]
    spread = table[(table["source"] == "spread") & known]
    manual_keys = set(zip(manual["volume"], manual["label"], strict=True))
    unlabelled = np.array(
        [(v, int(lab)) not in manual_keys
         for v, lab in zip(spread["volume"], spread["label"], strict=True)], dtype=bool
    )
    counts = {name: int((manual["class"] == name).sum()) for name in classes}
    missing = [name for name in classes if counts[name] == 0]
    if missing:
        raise AopError(f"{root}/annotations.csv: no manual annotation of class {missing[0]!r}")
    few = [name for name in classes if counts[name] < 2]
    if few:
        raise AopError(
            f"{root}/annotations.csv: class {few[0]!r} has 1 manual annotation; at least 2 are "
            "needed to split it into training and validation"
        )
    return manual, spread.loc[unlabelled]


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
    manual, pseudo = class_rows(root, read_annotations(root), classes)
    index = {name: i for i, name in enumerate(classes)}
    out: dict[str, Any] = {"classes": classes}
    for name, rows in (("manual", manual), ("pseudo", pseudo)):
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
    return out


# ------------------------------------------------------------------------------------------------
# The kind
# ------------------------------------------------------------------------------------------------


def _values(spec: Any) -> list[Any]:
    """The values of a parameter to check: each choice, both bounds of a range, a constant."""
    if isinstance(spec, ChoiceSpec):
        return list(spec.choice)
    if isinstance(spec, IntSpec):
        return list(spec.int)
    if isinstance(spec, FloatSpec):
        return list(spec.float)
    return [spec]


def _check_value(name: str, value: Any, where: str) -> None:
    """Refuse a value of parameter ``name`` that a trial's classifier does not accept."""
    from aop.classification.train import ClassifierConfig

    try:
        ClassifierConfig.model_validate({name: value})
    except ValidationError as exc:
        raise AopError(f"{where}: {value!r}: {error_message(exc.errors()[0])}") from None


class ClassificationKind(StudyKind[ClassificationExperiment]):
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

    def search_space(self, exp: ClassificationExperiment) -> SearchSpace:
        return load_space_file(exp.search_space, allowed=PARAMETERS)

    def check(self, exp: ClassificationExperiment, source: str) -> None:
        """Every value of the space, and every weights file a ``full`` trial would need.

        Each choice, each bound of a range and each constant is checked against what a trial's
        classifier accepts (:class:`aop.classification.train.ClassifierConfig`: the encoder,
        head, pretraining and preprocessing names, ``lr > 0``, the head's depth and width), so
        that a value no trial could train is one line now, not a failed trial later.
        """
        from aop.classification.encoders import check_pretrained_weights

        space = self.search_space(exp)
        for name, spec in space.parameters.items():
            for value in _values(spec):
                _check_value(name, value, f"{exp.search_space}: parameters.{name}")
        encoders = space.choices("encoder", "resnet18")
        for key in exp.weights:
            if key not in encoders:
                raise AopError(f"{source}: weights.{key}: not an encoder of the search space")
        # only `full` loads ImageNet weights; `semi` starts from random weights like `none`
        # (aop.classification.train: its first stage trains on the pseudo-labelled set)
        if "full" in set(space.choices("pretraining", "none")):
            for name in encoders:
                try:
                    check_pretrained_weights(str(name), exp.weights.get(str(name)))
                except AopError as exc:
                    raise AopError(f"{source}: weights.{name}: {exc}") from None

    def preflight(self, exp: ClassificationExperiment, check_models: bool = True) -> None:
        """Before any output: the data set, its classes and every row of ``annotations.csv``.

        The table is read once with :func:`aop.instances.annotations.read_annotations`, which
        checks every row against the data set (volume, label, declared class, source, a second
        manual row of one instance); then every class needs two manual annotations, and
        pretraining ``semi`` needs pseudo-labels.
        """
        from aop.instances.annotations import ANNOTATIONS_FILE, read_annotations, read_classes
        from aop.io import load_dataset

        root = exp.data.dataset
        if not root.is_dir():
            raise AopError(f"data.dataset: {root}: data-set folder not found")
        load_dataset(root, require_labels=True, validate=False)
        classes = [c.name for c in read_classes(root)]
        if not (root / ANNOTATIONS_FILE).is_file():
            raise AopError(
                f"{root / ANNOTATIONS_FILE}: file not found (a classification study learns from "
                "manual annotations: annotate the instances first, e.g. with aop annotate)"
            )
        _, pseudo = class_rows(root, read_annotations(root), classes)
        semi = "semi" in self.search_space(exp).choices("pretraining", "none")
        if semi and pseudo.empty:
            raise AopError(
                f"{root / ANNOTATIONS_FILE}: pretraining 'semi' needs pseudo-labels "
                "(source=spread rows): run aop spread first"
            )

    def prepare(self, exp: ClassificationExperiment) -> Prepared:
        import ray
        from ray import tune

        from aop.tuning.classification_trial import classification_trial

        space = self.search_space(exp)
        methods = [str(m) for m in space.choices("preprocessing", "mask")]
        bundle = load_class_data(exp, methods)  # checked by preflight, before any output
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
        from ray import tune

        start = (space.start("default") or [{}])[0]
        out: dict[str, Any] = dict(space.fixed)
        for name, domain in space.domains().items():
            categories = getattr(domain, "categories", None)
            out[name] = tune.grid_search(list(categories)) if categories else start.get(
                name, domain.sample())
        return out

    def trial_artifacts(self, record: Mapping[str, Any], folder: Path) -> list[Path]:
        """The trial's confusion matrix on its test split."""
        from aop.classification.figures import plot_confusion

        test = record.get("test")
        if not isinstance(test, Mapping) or not test.get("confusion_matrix"):
            return []
        path = plot_confusion(test, folder / "confusion.png")
        return [path] if path is not None else []

    def best_summary(self, best: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "params": dict(best["params"]),
            "scores": dict(best["metrics"]),
            "test": best.get("test", {}),
        }

    def finish(
        self,
        exp: ClassificationExperiment,
        records: Mapping[str, Sequence[dict[str, Any]]],
        best: dict[str, Any],
        prepared: Prepared,
        tracker: Any,
    ) -> list[Path]:
        from aop.classification.figures import write_classifier_results
        from aop.tuning.classification_trial import best_checkpoint, log_classifier_model

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
