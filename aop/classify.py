"""Classify every instance of a segmented data set with a study's best classifier (Ray Data).

``aop classify STUDY_DIR|MODEL_URI --data DIR``: each volume's instances are cropped as the study
cropped them (size, voxel size, ``mask``/``distance`` preprocessing) for a deep design, or
measured as ``aop instances`` measures them (the feature columns the model was fitted on) for a
feature design, and classified by an actor pool that holds the model (GPU actors where there are
GPUs). Every instance gets a class and its
probability, written into the data set's ``annotations.csv`` as ``source=predicted`` rows (replacing
the previous predicted rows, all or nothing; manual, spread and truth rows are kept) and, with the
probability of every class, into ``predictions.csv`` beside it. A ``predictions.csv`` there that aop
did not write (:func:`is_predictions_table`) is refused before any work.

The model comes from a classification study folder (its best trial's checkpoint and its experiment,
or another trial's: ``trial``, a record that :func:`aop.analysis.report.chosen_trial` chose, e.g.
the fastest design within 0.02 of the best accuracy of a study with several objectives) or from an
MLflow model URI (``runs:/...``, ``models:/NAME/VERSION``) logged by a study, whose metadata carries
the crop settings and class names.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from aop.errors import AopError
from aop.outputs import atomic_file


@dataclass
class ClassifierSource:
    """Where the classifier is and how its crops are made."""

    checkpoint: Path | None
    model_uri: str | None
    crop_size: tuple[int, int, int]
    target_spacing: tuple[float, float, float] | None
    method: str
    sigma: float
    classes: list[str]
    tracking_uri: str | None = None
    channels: int | None = None  # image channels the classifier takes (None: not recorded)
    design: str = "deep"  # or "features": a scikit-learn pipeline on instance features
    feature_columns: list[str] | None = None

    def metadata(self) -> dict[str, Any]:
        return {
            "crop_size": list(self.crop_size),
            "target_spacing": list(self.target_spacing) if self.target_spacing else None,
            "preprocessing": self.method,
            "sigma": self.sigma,
            "classes": list(self.classes),
        }

    def load(self) -> Any:
        if self.design == "features":
            if self.checkpoint is not None:
                from aop.classification.tabular import load_model

                return load_model(self.checkpoint)
            import mlflow.sklearn

            if self.tracking_uri:
                mlflow.set_tracking_uri(self.tracking_uri)
            return mlflow.sklearn.load_model(self.model_uri)
        if self.checkpoint is not None:
            from aop.classification.module import CropClassifier

            return CropClassifier.load_from_checkpoint(str(self.checkpoint), map_location="cpu")
        import mlflow.pytorch

        if self.tracking_uri:  # an actor on another process or node resolves models:/ there too
            mlflow.set_tracking_uri(self.tracking_uri)
        return mlflow.pytorch.load_model(self.model_uri, map_location="cpu")


def classifier_source(
    source: str | os.PathLike, trial: Mapping[str, Any] | None = None
) -> ClassifierSource:
    """A study folder's best classifier (or ``trial``'s), or an MLflow model URI with aop's
    metadata.

    ``trial`` is a trial record of the study (``search``, ``trial_id``, ``params``, ``test``):
    its model replaces the best one's.
    """
    from aop.tracking import is_model_uri

    text = str(source)
    if trial is not None and is_model_uri(text):
        raise AopError(f"{text}: a trial is chosen in a study folder, not in an MLflow model")
    if is_model_uri(text):
        import mlflow
        from mlflow.models import get_model_info

        from aop.tracking.client import require_model_store

        require_model_store(text)
        try:
            info = get_model_info(text)
        except Exception as exc:  # noqa: BLE001  (MLflow raises many kinds)
            raise AopError(f"{text}: cannot read the model ({type(exc).__name__})") from None
        meta = info.metadata or {}
        if meta.get("design") == "features":
            columns = list(meta.get("feature_columns") or [])
            return ClassifierSource(
                None, text, (4, 4, 4), None, "mask", 1.0, list(meta.get("classes") or []),
                tracking_uri=mlflow.get_tracking_uri(), channels=_feature_channels(columns),
                design="features", feature_columns=columns,
            )
        if "crop_size" not in meta:
            raise AopError(f"{text}: not a classifier logged by an aop study (no crop metadata)")
        inputs = info.signature.inputs.inputs if info.signature is not None else []
        shape = getattr(inputs[0], "shape", None) if inputs else None  # (-1, C, Z, Y, X)
        return ClassifierSource(
            None, text, tuple(meta["crop_size"]),
            tuple(meta["target_spacing"]) if meta.get("target_spacing") else None,
            meta["preprocessing"], float(meta["sigma"]), list(meta["classes"]),
            tracking_uri=mlflow.get_tracking_uri(),
            channels=int(shape[1]) if shape is not None and len(shape) == 5 else None,
        )
    from aop.tuning.classification_trial import best_checkpoint

    study = Path(source)
    best_file = study / "best.yaml"
    experiment = study / "experiment.yaml"
    if not best_file.is_file() or not experiment.is_file():
        raise AopError(f"{study}: not a finished study folder (no best.yaml or experiment.yaml)")
    best = yaml.safe_load(best_file.read_text())
    if best.get("kind") != "classification":
        raise AopError(f"{study}: a {best.get('kind', 'segmentation')} study, not a classification "
                       "study")
    if trial is not None:
        best = {**best, **{k: trial[k] for k in ("search", "trial_id", "params", "test")
                           if k in trial}}  # fmt: skip
    exp = yaml.safe_load(experiment.read_text())
    storage = (exp.get("storage") or {}).get("tune_storage")
    classes = list((best.get("test") or {}).get("class_names") or [])
    if best["params"].get("design") == "features":
        return _feature_source(study, best, storage, classes)
    checkpoint = best_checkpoint(study, best, storage)
    if checkpoint is None:
        where = storage or f"{study}/tune"
        raise AopError(f"{where}/{best['search']}/{best['trial_id']}: no best.ckpt of the "
                       f"{'chosen' if trial is not None else 'best'} trial")
    crops = exp.get("crops") or {}
    return ClassifierSource(
        checkpoint, None, tuple(crops.get("size", (8, 32, 32))),
        tuple(crops["target_spacing"]) if crops.get("target_spacing") else None,
        str(best["params"].get("preprocessing", "mask")), float(crops.get("sigma", 2.0)),
        classes, channels=_checkpoint_channels(checkpoint),
    )


def _feature_source(
    study: Path, best: dict[str, Any], storage: str | None, classes: list[str]
) -> ClassifierSource:
    """A study whose best design is a feature design: its fitted pipeline and feature columns."""
    from aop.tuning.classification_trial import FEATURE_MODEL_FILE, best_checkpoint

    path = best_checkpoint(study, best, storage, FEATURE_MODEL_FILE)
    if path is None:
        where = storage or f"{study}/tune"
        raise AopError(f"{where}/{best['search']}/{best['trial_id']}: no {FEATURE_MODEL_FILE} of "
                       "the trial")  # fmt: skip
    from aop.classification.tabular import load_model

    columns = [str(c) for c in getattr(load_model(path), "feature_names_in_", [])]
    return ClassifierSource(
        path, None, (4, 4, 4), None, "mask", 1.0, classes, channels=_feature_channels(columns),
        design="features", feature_columns=columns,
    )


def _feature_channels(columns: list[str]) -> int | None:
    """The image channels that feature columns ``ch{c}_...`` need (None: no intensity column)."""
    import re

    found = [int(m.group(1)) for c in columns if (m := re.match(r"ch(\d+)_", c))]
    return max(found) + 1 if found else None


def _checkpoint_channels(checkpoint: Path) -> int | None:
    """The input channels a classifier checkpoint was built for (its hyperparameters)."""
    import torch

    try:  # memory-mapped: the weights are not read
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False, mmap=True)
    except Exception as exc:  # noqa: BLE001  (a truncated or foreign file: many kinds)
        raise AopError(f"{checkpoint}: not a readable checkpoint ({type(exc).__name__})") from None
    channels = (saved.get("hyper_parameters") or {}).get("in_chans")
    return int(channels) if channels is not None else None


def _image_channels(dataset: Any) -> dict[str, int]:
    """Channels of every image of a data set (from the file header where it says)."""
    from aop.io import read_volume
    from aop.resources import volume_shape

    out = {}
    for entry in dataset:
        shape = volume_shape(entry.image_path) or read_volume(entry.image_path)[0].shape
        out[entry.name] = int(shape[0]) if len(shape) == 4 else 1
    return out


#: The table of every instance's class and class probabilities, beside annotations.csv.
PREDICTIONS = "predictions.csv"
_PREDICTION_COLUMNS = ["volume", "label", "class", "probability"]


def is_predictions_table(path: Path) -> bool:
    """Whether ``path`` is a ``predictions.csv`` that :func:`classify_dataset` wrote.

    A CSV cannot carry aop's mark; aop's table is recognised by its header: ``volume, label,
    class, probability`` and then one ``p_CLASS`` column per class.
    """
    if path.is_symlink() or not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8") as handle:
            header = handle.readline().rstrip("\r\n").split(",")
    except (OSError, UnicodeDecodeError):
        return False
    rest = header[len(_PREDICTION_COLUMNS) :]
    return (
        header[: len(_PREDICTION_COLUMNS)] == _PREDICTION_COLUMNS
        and bool(rest)
        and all(name.startswith("p_") for name in rest)
    )


def check_predictions_table(path: Path) -> None:
    """Refuse, before any work, a ``predictions.csv`` that aop did not write (it is replaced)."""
    if (path.exists() or path.is_symlink()) and not is_predictions_table(path):
        raise AopError(
            f"{path}: file exists and was not written by aop classify; move it away (aop writes "
            "its predictions there)"
        )


class _VolumeClassifier:
    """Ray Data actor: holds the model, classifies the instances of one volume per row."""

    def __init__(self, source: ClassifierSource, root: str, device: str) -> None:
        from aop.io import load_dataset

        self.source = source
        model = source.load()
        self.model = model.eval() if source.design == "deep" else model
        self.dataset = load_dataset(root, require_labels=True)
        self.device = device

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out: dict[str, list] = {"volume": [], "label": [], "proba": []}
        for volume in batch["volume"]:
            volume = str(volume)
            labels = self.dataset.labels(volume)
            if not labels.any():
                continue
            if self.source.design == "features":
                ids, proba = self._features_proba(labels, self.dataset.image(volume))
            else:
                ids, proba = self._crops_proba(labels, self.dataset.image(volume))
            out["volume"] += [volume] * len(ids)
            out["label"] += [int(i) for i in ids]
            out["proba"] += [np.asarray(p, dtype=np.float32) for p in proba]
        return {k: np.asarray(v) for k, v in out.items()}

    def _features_proba(self, labels: np.ndarray, image: np.ndarray) -> tuple[Any, np.ndarray]:
        """Instance features as ``aop instances`` computes them, then the pipeline's probabilities.

        The pipeline was fitted on class indices; its ``classes_`` place each column.
        """
        from aop.classification.tabular import feature_matrix
        from aop.instances.features import instance_features

        table = instance_features(labels, image, self.dataset.info.voxel_size)
        proba = self.model.predict_proba(feature_matrix(table, self.source.feature_columns))
        full = np.zeros((len(table), len(self.source.classes) or proba.shape[1]))
        full[:, np.asarray(self.model.classes_, dtype=int)] = proba
        return table["label"].to_numpy(), full

    def _crops_proba(self, labels: np.ndarray, image: np.ndarray) -> tuple[Any, np.ndarray]:
        """Crops as the study cropped them, then the network's probabilities."""
        from aop.classification.module import predict_proba
        from aop.instances.crops import instance_crops

        crops, ids = instance_crops(
            labels, image, size=self.source.crop_size, spacing=self.dataset.info.voxel_size,
            target_spacing=self.source.target_spacing, method=self.source.method,
            sigma=self.source.sigma,
        )
        return ids, predict_proba(self.model, crops, device=self.device)


def classify_dataset(
    source: str | os.PathLike,
    data: str | os.PathLike,
    *,
    address: str | None = None,
    workers: int = 1,
    gpus_per_worker: float = 0.0,
    annotator: str = "aop classify",
    progress: Callable[[str], object] | None = None,
    trial: Mapping[str, Any] | None = None,
) -> int:
    """Classify every instance of ``data``; write ``source=predicted`` rows. Returns the count.

    ``trial``: a trial record of the study ``source`` whose model classifies instead of the best
    (see :func:`classifier_source`).

    ``address`` is a Ray cluster to join (see :func:`aop.ray_cluster.connect`, which turns a
    cluster that cannot be joined into one :class:`~aop.errors.AopError` line); None starts a local
    Ray, and a Ray already started in this process is used as it is.
    """
    import ray

    from aop.instances.annotations import read_classes, replace_annotations
    from aop.io import load_dataset
    from aop.ray_cluster import check_address, check_resources, connect

    if workers < 1:
        raise AopError(f"workers: must be at least 1, got {workers}")
    if gpus_per_worker < 0:
        raise AopError(f"gpus per worker: must be >= 0, got {gpus_per_worker}")
    check_address(address)
    check_predictions_table(Path(data) / PREDICTIONS)
    classifier = classifier_source(source, trial)
    dataset = load_dataset(data, require_labels=True)
    declared = [c.name for c in read_classes(data)]
    if declared and classifier.classes and declared != classifier.classes:
        raise AopError(
            f"{data}/dataset.yaml: classes {declared} differ from the classifier's "
            f"{classifier.classes}"
        )
    if classifier.channels is not None:
        for name, count in _image_channels(dataset).items():
            if count != classifier.channels:
                image = dataset.entry(name).image_path
                raise AopError(
                    f"{image}: {count} channel(s), but the classifier takes "
                    f"{classifier.channels} (the channels of the images it was trained on)"
                )
    classes = classifier.classes or declared
    connect(address)
    if gpus_per_worker > 0:  # an actor no node can hold would wait forever
        check_resources(
            {"CPU": 1, "GPU": gpus_per_worker}, 1,
            what=f"a classifier worker with {gpus_per_worker:g} GPUs",
        )  # fmt: skip
    items = ray.data.from_items([{"volume": v} for v in dataset.names])
    device = "cuda" if gpus_per_worker > 0 else "cpu"
    results = items.map_batches(
        _VolumeClassifier,
        fn_constructor_args=(classifier, str(Path(data).resolve()), device),
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),  # a fixed pool of model holders
        num_gpus=gpus_per_worker or None,
    ).take_all()
    import pandas as pd

    rows, table = [], []
    for r in results:
        proba = np.asarray(r["proba"], dtype=float)
        name = classes[int(proba.argmax())]
        rows.append({"volume": r["volume"], "label": int(r["label"]), "class": name,
                     "source": "predicted", "annotator": annotator})
        table.append({"volume": r["volume"], "label": int(r["label"]), "class": name,
                      "probability": float(proba.max()),
                      **{f"p_{c}": float(v) for c, v in zip(classes, proba, strict=True)}})
    replace_annotations(data, rows, source="predicted")
    path = Path(data) / PREDICTIONS
    with atomic_file(path) as tmp:
        pd.DataFrame(table).sort_values(["volume", "label"]).to_csv(tmp, index=False)
    if progress is not None:
        progress(f"classified {len(rows)} instances of {len(dataset.names)} volumes")
    return len(rows)
