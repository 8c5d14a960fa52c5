"""The classification study kind: which classifier design names the user's classes best.

Two design families share one search space (``design``, a conditional parameter):

- ``deep``: one Lightning training (:func:`aop.classification.train.train_classifier`) of an
  encoder, head, pretraining and preprocessing (the paper's 72 designs) on instance crops;
- ``features``: a scikit-learn model (``model``: logistic regression, random forest or histogram
  gradient boosting, each with its own hyperparameters) on aop's instance features, the table
  ``aop instances`` writes (:mod:`aop.classification.tabular`).

Every design is scored on the same indices of the manual labels (``annotations.csv``: ``manual``
rows; ``spread`` rows are the pseudo-labels of ``semi`` pretraining), drawn once per study by
:func:`aop.classification.evaluation.design_splits`: a held-out test split and, on a small set
(``training.folds: auto``, under 200 labels), 5 stratified validation folds, so that one split of
a dozen instances does not decide the design. The objective is the validation accuracy or, with
``objective: balanced_accuracy``, the balanced accuracy (both are always reported).

Every study also fits a **baseline** once, on the same splits: logistic regression on the
standardised instance features. ``best.yaml``, ``aop report``, Fig. 6 and the MLflow parent run
show it beside the study's pick, with a paired comparison over the validation folds, and say in
one line when the best deep design loses to it.

With ``objectives`` naming ``latency_ms`` (e.g. ``[{metric: val_accuracy, mode: max}, {metric:
latency_ms, mode: min}]``, a Pareto front of accuracy against inference time) every trial measures
its own milliseconds per instance at batch 32 once, at its end
(:mod:`aop.tuning.classification_trial` says how for each family), and so does the baseline.

Crops are computed once per preprocessing method and features once per volume, and reach the
trials through Ray's object store. The trial is :mod:`aop.tuning.classification_trial`. After the
searches the kind logs the best classifier (``mlflow.pytorch`` for a deep design, ``mlflow.sklearn``
for a feature design; registered either way) and draws the paper's results: Fig. 6, Table IV
(instances per second per encoder, on this device), the Pearson correlation between encoder
parameter count and validation accuracy, and the best trial's confusion matrix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from pydantic import Field, ValidationError, model_validator

from aop.config import BaseExperiment, StrictModel, resolve_input
from aop.errors import AopError, error_message
from aop.tuning.kinds import Fidelity, Prepared, StudyKind
from aop.tuning.space import ChoiceSpec, FloatSpec, IntSpec, SearchSpace, load_space_file

if TYPE_CHECKING:
    import pandas as pd

#: Parameters of the deep design family (all ClassifierConfig fields a trial sets).
DEEP_PARAMETERS = {
    "encoder": "registered encoder or timm model name",
    "head": "slice or volume",
    "pretraining": "full, semi or none",
    "preprocessing": "mask or distance",
    "lr": "Adam learning rate",
    "head_depth": "linear layers of the head",
    "head_width": "width of the head's hidden layers",
    "batch_size": "training batch size",
}
#: The design families, and the parameter that picks a feature design's model.
DESIGNS = ("deep", "features")
DESIGN_PARAMETERS = {
    "design": "design family: deep (an encoder on crops) or features (a model on features)",
    "model": "feature design: logistic_regression, random_forest or hist_gradient_boosting",
}
METRICS = ("val_accuracy", "val_balanced_accuracy", "test_accuracy", "test_balanced_accuracy",
           "epoch")  # fmt: skip
OBJECTIVES = {"accuracy": "val_accuracy", "balanced_accuracy": "val_balanced_accuracy"}
#: Milliseconds per instance at batch 32 (an objective of ``objectives``, measured on request).
LATENCY = "latency_ms"


def parameters() -> dict[str, str]:
    """Every parameter a classification search space may name, with what it is."""
    from aop.classification.tabular import FEATURE_MODELS

    out = {**DESIGN_PARAMETERS, **DEEP_PARAMETERS}
    for model, params in FEATURE_MODELS.items():
        out |= {name: f"{model}: {text}" for name, text in params.items()}
    return out


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
    class_weights: list[float] | Literal["balanced"] | None = Field(
        "balanced",
        description="Class weights of the loss (deep) and of the feature models: balanced "
        "(inverse class frequency in the training split), one weight per class, or null.",
    )
    augment: bool = True
    val_fraction: Annotated[float, Field(gt=0, lt=1)] = 0.2
    test_fraction: Annotated[float, Field(ge=0, lt=1)] = 0.2
    folds: Annotated[int, Field(ge=1, le=20)] | Literal["auto"] = Field(
        "auto",
        description="Validation folds of every design: 1 (one split of val_fraction), k >= 2 "
        "(stratified k-fold), or auto (5 under 200 manual labels, capped by the rarest class; "
        "else 1).",
    )

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
    objective: Literal["accuracy", "balanced_accuracy"] = Field(
        "accuracy",
        description="What the searchers maximise: validation accuracy, or balanced accuracy "
        "(mean per-class recall) for imbalanced classes. Both are always reported.",
    )

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
    exp: ClassificationExperiment, methods: Sequence[str], features: bool = True
) -> dict[str, Any]:
    """Crops, instance features and class indices of the manual (and pseudo-labelled) instances.

    Parameters
    ----------
    exp : ClassificationExperiment
        The data set, crop settings.
    methods : sequence of str
        The preprocessing methods to crop with (none: no crops, for a study of feature designs).
    features : bool
        Compute the instance features of the manual instances
        (:func:`aop.instances.features.instance_features` on each volume, as ``aop instances``
        does; every instance of the volume enters the nearest-neighbour distances).

    Returns
    -------
    dict
        ``classes`` (names), ``manual`` and ``pseudo``: ``{"keys": [(volume, label)], "y":
        ndarray, "crops": {method: ndarray (N, C, Z, Y, X)}}``; ``manual`` also has
        ``features`` (a DataFrame, one row per key) and ``feature_ms_per_instance`` (the time
        to compute the features of one instance: every volume's table, timed, over its
        instances) when ``features`` is set.
    """
    import time

    import pandas as pd

    from aop.instances.annotations import read_annotations, read_classes
    from aop.instances.crops import instance_crops
    from aop.instances.features import instance_features
    from aop.io import load_dataset

    root = exp.data.dataset
    dataset = load_dataset(root, require_labels=True)
    classes = [c.name for c in read_classes(root)]
    manual, pseudo = class_rows(root, read_annotations(root), classes)
    index = {name: i for i, name in enumerate(classes)}
    out: dict[str, Any] = {"classes": classes}
    feature_seconds, measured = 0.0, 0
    for name, rows in (("manual", manual), ("pseudo", pseudo)):
        keys, ys, tables = [], [], []
        crops: dict[str, list[np.ndarray]] = {m: [] for m in methods}
        for volume, part in rows.groupby("volume", sort=True):
            labels = dataset.labels(volume)
            image = dataset.image(volume)
            wanted = sorted(int(x) for x in part["label"])
            cls = dict(zip(part["label"].astype(int), part["class"], strict=True))
            ids = wanted
            for method in methods:
                array, ids = instance_crops(
                    labels, image, size=exp.crops.size, spacing=dataset.info.voxel_size,
                    target_spacing=exp.crops.target_spacing, method=method,
                    sigma=exp.crops.sigma, labels_subset=wanted,
                )
                crops[method].append(array)
            ids = [int(i) for i in ids]
            if features and name == "manual":
                start = time.perf_counter()
                table = instance_features(labels, image, dataset.info.voxel_size)
                feature_seconds += time.perf_counter() - start
                measured += len(table)
                tables.append(table.set_index("label").loc[ids].reset_index())
            keys += [(volume, i) for i in ids]
            ys += [index[cls[i]] for i in ids]
        out[name] = {
            "keys": keys,
            "y": np.asarray(ys, dtype=np.int64),
            "crops": {m: (np.concatenate(c) if c else np.zeros((0, 1, *exp.crops.size),
                                                                 np.float32))
                      for m, c in crops.items()},
        }
        if features and name == "manual":
            out[name]["features"] = pd.concat(tables, ignore_index=True)
            out[name]["feature_ms_per_instance"] = 1000.0 * feature_seconds / max(measured, 1)
    return out


def study_folds(exp: ClassificationExperiment, labels: np.ndarray) -> int:
    """The validation folds of the study: ``training.folds``, or :func:`auto_folds` for auto."""
    from aop.classification.evaluation import auto_folds

    folds = exp.training.folds
    return auto_folds(labels, exp.training.test_fraction) if folds == "auto" else int(folds)


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

    if name in DEEP_PARAMETERS:
        try:
            ClassifierConfig.model_validate({name: value})
        except ValidationError as exc:
            raise AopError(f"{where}: {value!r}: {error_message(exc.errors()[0])}") from None
    elif name not in DESIGN_PARAMETERS:
        from aop.classification.tabular import make_model, model_of_parameter

        try:
            make_model(str(model_of_parameter(name)), {name: value})
        except AopError as exc:
            raise AopError(f"{where}: {exc}") from None


def _owners() -> dict[str, tuple[str, str | None]]:
    """``{parameter: (design, model or None)}``: the family each parameter belongs to."""
    from aop.classification.tabular import FEATURE_MODELS

    owners: dict[str, tuple[str, str | None]] = {p: ("deep", None) for p in DEEP_PARAMETERS}
    owners["model"] = ("features", None)
    for model, params in FEATURE_MODELS.items():
        owners |= {p: ("features", model) for p in params}
    return owners


def check_families(space: SearchSpace, source: str) -> None:
    """Refuse an unknown design or model, and a parameter active in another family's designs.

    Every combination of the space's ``design`` and ``model`` values is tried: a parameter of
    the deep family must be inactive whenever ``design`` is not ``deep`` (its ``when``), a
    model's parameter whenever ``model`` is another model.
    """
    from aop.classification.tabular import FEATURE_MODELS

    designs = [str(d) for d in space.choices("design", "deep")]
    for design in designs:
        if design not in DESIGNS:
            raise AopError(f"{source}: parameters.design: unknown design family {design!r} "
                           f"(known: {', '.join(DESIGNS)})")  # fmt: skip
    models = [str(m) for m in space.choices("model", None)] if "model" in space.parameters else []
    for model in models:
        if model not in FEATURE_MODELS:
            raise AopError(f"{source}: parameters.model: unknown model {model!r} (known: "
                           f"{', '.join(FEATURE_MODELS)})")  # fmt: skip
    combos = [
        {**space.fixed, "design": d, **({"model": m} if m is not None else {})}
        for d in designs for m in (models or [None])
    ]  # fmt: skip
    for name, (family, model) in _owners().items():
        if name not in space.parameters:
            continue
        owner = f"model {model!r}" if model else f"the {family} design"
        if family not in designs:
            raise AopError(f"{source}: parameters.{name}: a parameter of {owner}, but the "
                           f"space's design is never {family!r}")  # fmt: skip
        if model is not None and model not in models:
            raise AopError(f"{source}: parameters.{name}: a parameter of {owner}, which the "
                           "space's model never is")  # fmt: skip
        for combo in combos:
            if name in space.searched and not space.is_active(name, combo):
                continue
            wrong_design = combo["design"] != family
            if wrong_design or (model is not None and combo.get("model") != model):
                fix = f"design: {family}" if wrong_design else f"model: {model}"
                where = f"design is {combo['design']!r}" + (
                    f" and model is {combo['model']!r}" if "model" in combo else "")
                raise AopError(f"{source}: parameters.{name}: a parameter of {owner}, active "
                               f"when {where} (add when: {{{fix}}})")  # fmt: skip


def _sklearn_class_weight(weights: list[float] | str | None) -> Any:
    """``training.class_weights`` as scikit-learn takes it."""
    if isinstance(weights, list):
        return dict(enumerate(weights))
    return weights


class ClassificationKind(StudyKind[ClassificationExperiment]):
    """Classifier-design study: deep designs and feature designs, validation (balanced) accuracy."""

    name = "classification"
    metric = "val_accuracy"
    mode = "max"
    metrics = METRICS
    parameter_columns = ("design", "encoder", "model", "head", "pretraining", "preprocessing")
    experiment_model = ClassificationExperiment
    start_point = "default"
    record_extras = ("test", "folds")
    curves = ("val_accuracy_epoch", "val_accuracy")
    objective_metrics = ("val_accuracy", "val_balanced_accuracy", LATENCY)
    fidelity_attr = "epoch"

    def for_experiment(self, exp: ClassificationExperiment) -> ClassificationKind:
        """The objective of ``exp`` (accuracy or balanced accuracy) first; ``design`` groups."""
        metric = OBJECTIVES[exp.objective]
        self.metric = metric
        self.metrics = (metric, *(m for m in METRICS if m != metric))
        self.curves = (f"{metric}_epoch", metric)
        if "design" in self.search_space(exp).parameters:
            self.group = "design"
        return self

    def search_space(self, exp: ClassificationExperiment) -> SearchSpace:
        return load_space_file(exp.search_space, allowed=parameters())

    def check(self, exp: ClassificationExperiment, source: str) -> None:
        """The design families, every value of the space, every weights file ``full`` needs.

        Each choice, each bound of a range and each constant is checked against what a trial
        accepts (deep: :class:`aop.classification.train.ClassifierConfig`; features:
        :func:`aop.classification.tabular.make_model`), so that a value no trial could train
        is one line now, not a failed trial later.
        """
        from aop.classification.encoders import check_pretrained_weights

        chosen = OBJECTIVES[exp.objective]
        for index, objective in enumerate(exp.objectives or []):
            if objective.metric in OBJECTIVES.values() and objective.metric != chosen and not any(
                o.metric == chosen for o in exp.objectives or []
            ):
                raise AopError(
                    f"{source}: objectives.{index}.metric: {objective.metric}, but objective: "
                    f"{exp.objective} keeps each training's best {chosen} epoch; set objective: "
                    f"{objective.metric.removeprefix('val_')}"
                )
        space = self.search_space(exp)
        check_families(space, str(exp.search_space))
        for name, spec in space.parameters.items():
            for value in _values(spec):
                _check_value(name, value, f"{exp.search_space}: parameters.{name}")
        deep = "deep" in space.choices("design", "deep")
        encoders = space.choices("encoder", "resnet18") if deep else []
        for key in exp.weights:
            if key not in encoders:
                raise AopError(f"{source}: weights.{key}: not an encoder of the search space")
        # only `full` loads ImageNet weights; `semi` starts from random weights like `none`
        # (aop.classification.train: its first stage trains on the pseudo-labelled set)
        if deep and "full" in set(space.choices("pretraining", "none")):
            for name in encoders:
                try:
                    check_pretrained_weights(str(name), exp.weights.get(str(name)))
                except AopError as exc:
                    raise AopError(f"{source}: weights.{name}: {exc}") from None

    def preflight(self, exp: ClassificationExperiment, check_models: bool = True) -> None:
        """Before any output: the data set, its classes, every row of ``annotations.csv``, folds.

        The table is read once with :func:`aop.instances.annotations.read_annotations`, which
        checks every row against the data set (volume, label, declared class, source, a second
        manual row of one instance); then every class needs two manual annotations, pretraining
        ``semi`` needs pseudo-labels, and the validation folds must fit the rarest class.
        """
        from aop.classification.evaluation import design_splits
        from aop.instances.annotations import ANNOTATIONS_FILE, read_annotations, read_classes
        from aop.io import load_dataset

        root = exp.data.dataset
        if not root.is_dir():
            raise AopError(f"data.dataset: {root}: data-set folder not found")
        load_dataset(root, require_labels=True, validate=False)
        classes = [c.name for c in read_classes(root)]
        if exp.objective == "balanced_accuracy" and len(classes) < 2:
            raise AopError(
                f"objective: balanced_accuracy needs at least 2 classes; {root}/dataset.yaml "
                f"declares {len(classes)}"
            )
        if not (root / ANNOTATIONS_FILE).is_file():
            raise AopError(
                f"{root / ANNOTATIONS_FILE}: file not found (a classification study learns from "
                "manual annotations: annotate the instances first, e.g. with aop annotate)"
            )
        weights = exp.training.class_weights
        if isinstance(weights, list) and len(weights) != len(classes):
            raise AopError(f"training.class_weights: {len(weights)} weights for the "
                           f"{len(classes)} classes of {root}/dataset.yaml")  # fmt: skip
        manual, pseudo = class_rows(root, read_annotations(root), classes)
        space = self.search_space(exp)
        deep = "deep" in space.choices("design", "deep")
        semi = deep and "semi" in space.choices("pretraining", "none")
        if semi and pseudo.empty:
            raise AopError(
                f"{root / ANNOTATIONS_FILE}: pretraining 'semi' needs pseudo-labels "
                "(source=spread rows): run aop spread first"
            )
        labels = manual["class"].map({c: i for i, c in enumerate(classes)}).to_numpy()
        design_splits(
            labels, folds=study_folds(exp, labels), val_fraction=exp.training.val_fraction,
            test_fraction=exp.training.test_fraction, seed=exp.search.seed, class_names=classes,
        )  # fmt: skip

    def prepare(self, exp: ClassificationExperiment) -> Prepared:
        import ray
        from ray import tune

        from aop.classification.evaluation import design_splits
        from aop.classification.tabular import (
            baseline_model,
            evaluate_design,
            feature_columns,
            feature_matrix,
        )
        from aop.tuning.classification_trial import classification_trial, feature_latency_ms

        space = self.search_space(exp)
        deep = "deep" in space.choices("design", "deep")
        methods = [str(m) for m in space.choices("preprocessing", "mask")] if deep else []
        bundle = load_class_data(exp, methods)  # checked by preflight, before any output
        classes, y = bundle["classes"], bundle["manual"]["y"]
        bundle["splits"] = design_splits(
            y, folds=study_folds(exp, y), val_fraction=exp.training.val_fraction,
            test_fraction=exp.training.test_fraction, seed=exp.search.seed, class_names=classes,
        )  # fmt: skip
        table = bundle["manual"].pop("features")
        columns = feature_columns(table)
        features = feature_matrix(table, columns)
        bundle["features"] = {"columns": columns, "X": features,
                              "ms_per_instance": bundle["manual"].pop("feature_ms_per_instance")}
        class_weight = _sklearn_class_weight(exp.training.class_weights)
        baseline = evaluate_design(
            lambda: baseline_model(seed=exp.search.seed, class_weight=class_weight),
            features, y, bundle["splits"], classes,
        )  # fmt: skip
        baseline_scores = baseline.to_metrics()
        measure_latency = any(o.metric == LATENCY for o in self.objectives)
        if measure_latency:  # as a feature trial measures itself: refitted on every label
            fitted = baseline_model(seed=exp.search.seed, class_weight=class_weight)
            baseline_scores[LATENCY] = feature_latency_ms(
                fitted.fit(features, y), features, bundle["splits"].folds[0][1],
                bundle["features"]["ms_per_instance"],
            )  # fmt: skip
        ref = ray.put(bundle)
        resources = exp.search.resources
        trainable = tune.with_parameters(
            classification_trial,
            data=ref,
            training={**exp.training.model_dump(mode="json"), "objective": exp.objective,
                      "seed": exp.search.seed, "measure_latency": measure_latency},
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
            context={
                "classes": classes, "n_manual": len(y),
                "crop_shape": bundle["manual"]["crops"][methods[0]].shape[1:] if deep else None,
                "columns": columns, "example": features.head(3),
                "folds": len(bundle["splits"].folds),
                "baseline": {"scores": baseline_scores, "folds": {
                    "accuracy": list(baseline.fold_accuracy),
                    "balanced_accuracy": list(baseline.fold_balanced_accuracy)}},
            },
        )

    def fidelity(self, exp: ClassificationExperiment, prepared: Prepared) -> Fidelity:
        """Epochs, over every fold and stage of a deep trial (``search.scheduler``).

        A deep trial reports each validation epoch with ``epoch``, its epochs so far over its
        folds (and, for ``semi``, both stages), and its estimate so far as the objective
        (:class:`aop.tuning.classification_trial.TuneReport`): the rungs compare trials after
        the same number of epochs. At most ``max_epochs`` (the largest the space allows) per
        stage and fold. A feature trial reports once, without ``epoch``: it is never stopped.
        """
        space = self.search_space(exp)
        spec = space.parameters.get("max_epochs", exp.training.max_epochs)
        epochs = max(int(v) for v in _values(spec))
        stages = 2 if "semi" in space.choices("pretraining", "none") else 1
        return Fidelity("epoch", epochs * stages * int(prepared.context["folds"]), "epochs")

    def grid_space(self, exp: ClassificationExperiment, space: SearchSpace) -> dict[str, Any]:
        """All combinations of the categorical parameters (others at the start point).

        A space with conditional parameters (several design families) has no grid: Ray Tune's
        grid is the product of every parameter, which would repeat each design once per value
        of the other families' parameters.
        """
        from ray import tune

        if space.has_conditions:
            raise AopError(f"{exp.search_space}: comparison.grid: a grid over a space with "
                           "conditional parameters (when:) is not supported; set grid: false")
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
            **({"folds": best["folds"]} if best.get("folds") else {}),
        }

    def reference(
        self,
        exp: ClassificationExperiment,
        prepared: Prepared,
        records: Mapping[str, Sequence[dict[str, Any]]],
        best: Mapping[str, Any],
    ) -> dict[str, Any] | None:
        """The logistic-regression baseline, its paired comparison with the pick, the verdict."""
        from aop.classification.evaluation import paired_comparison

        baseline = prepared.context["baseline"]
        key = self.metric.removeprefix("val_")
        ours = (best.get("folds") or {}).get(key) or []
        theirs = baseline["folds"][key]
        comparison = (paired_comparison(ours, theirs)
                      if ours and len(ours) == len(theirs) and len(ours) > 1 else {})  # fmt: skip
        return {
            "name": "logistic regression on standardised instance features (C=1, class "
                    f"weights {exp.training.class_weights or 'none'}), same splits",
            "scores": dict(baseline["scores"]),
            **({"comparison": comparison} if comparison else {}),
            "verdict": verdict(best, records, baseline["scores"], self.metric),
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
        from aop.tuning.classification_trial import (
            FEATURE_MODEL_FILE,
            best_checkpoint,
            log_classifier_model,
            log_feature_model,
        )

        context = prepared.context
        artifacts = write_classifier_results(
            exp.study_dir, dict(records), best, crop_shape=context["crop_shape"],
            classes=context["classes"], metric=self.metric,
            reference=context["baseline"]["scores"],
        )  # fmt: skip
        registered = f"aop-{exp.name}-classifier"
        if best["params"].get("design", "deep") == "features":
            path = best_checkpoint(exp.study_dir, best, exp.storage.tune_storage,
                                   FEATURE_MODEL_FILE)  # fmt: skip
            if path is not None:
                metadata = {"design": "features", "model": str(best["params"].get("model")),
                            "feature_columns": list(context["columns"]),
                            "classes": list(context["classes"])}  # fmt: skip
                tracker.log_model_safely(
                    lambda: log_feature_model(tracker, path, context["example"], registered,
                                              metadata),  # fmt: skip
                    tag="classifier",
                )
            return artifacts
        checkpoint = best_checkpoint(exp.study_dir, best, exp.storage.tune_storage)
        if checkpoint is not None:
            metadata = {
                "design": "deep",
                "crop_size": list(exp.crops.size),
                "target_spacing": list(exp.crops.target_spacing)
                if exp.crops.target_spacing else None,
                "preprocessing": str(best["params"].get("preprocessing", "mask")),
                "sigma": exp.crops.sigma,
                "classes": list(context["classes"]),
            }
            tracker.log_model_safely(
                lambda: log_classifier_model(
                    tracker, checkpoint, context["crop_shape"], registered_name=registered,
                    metadata=metadata,
                ),
                tag="classifier",
            )
        return artifacts


def design_text(params: Mapping[str, Any]) -> str:
    """A design in a few words: ``features: random_forest`` or ``deep: resnet18, slice, mask``."""
    if params.get("design", "deep") == "features":
        return f"features: {params.get('model', 'logistic_regression')}"
    parts = [str(params[k]) for k in ("encoder", "head", "pretraining", "preprocessing")
             if k in params]  # fmt: skip
    return "deep: " + ", ".join(parts)


def verdict(
    best: Mapping[str, Any],
    records: Mapping[str, Sequence[Mapping[str, Any]]],
    baseline: Mapping[str, float],
    metric: str,
) -> str:
    """One line: does the pick beat the baseline, and does the best deep design lose to it?"""
    reference = float(baseline[metric])
    value = float(best["metrics"][metric])
    pick = design_text(best["params"])
    deep = [r for recs in records.values() for r in recs
            if r["params"].get("design", "deep") == "deep" and metric in r["metrics"]]  # fmt: skip
    top_deep = max(deep, key=lambda r: r["metrics"][metric], default=None)
    lines = []
    if value < reference:
        lines.append(f"The study's pick ({pick}, {metric} {value:.3f}) is below the baseline "
                     f"({reference:.3f}).")  # fmt: skip
    else:
        lines.append(f"The study's pick ({pick}, {metric} {value:.3f}) is {value - reference:+.3f}"
                     f" against the baseline ({reference:.3f}).")  # fmt: skip
    same = top_deep is not None and (top_deep["search"], top_deep["trial_id"]) == (
        best.get("search"), best.get("trial_id"))
    if top_deep is not None and not same:
        deep_value = float(top_deep["metrics"][metric])
        if deep_value < reference:
            lines.append(f"The best deep design ({design_text(top_deep['params'])}, "
                         f"{deep_value:.3f}) loses to the baseline.")  # fmt: skip
    elif same and value < reference:
        lines[-1] = (f"The best deep design ({pick}, {metric} {value:.3f}) loses to the "
                     f"baseline ({reference:.3f}).")  # fmt: skip
    return " ".join(lines)
