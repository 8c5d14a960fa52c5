"""Classifier designs scored on unseen data: a study's pick against a logistic regression (#23).

Per seed ``SEED``, in ``WORK/seed_SEED``:

1. two synthetic Myotube data sets with classes, 6 volumes of 16 x 96 x 96 each
   (:func:`aop.synth.dataset.write_synthetic_dataset`): ``training`` from ``SEED`` and ``unseen``
   from ``SEED + 1000``. Their true labels stand in for the segmentation, so every instance has
   its true class (the ``source=truth`` rows the synthesiser writes);
2. simulated annotation of ``training`` (:func:`aop.instances.truth.simulate_annotation`,
   fraction 0.5, seed ``SEED``): ``source=manual`` rows, taken from its own truth rows; then label
   spreading as ``aop spread`` does (:func:`aop.demo.spread_dataset`);
3. the classifier study of ``experiments/demo_classification.yaml`` (same crops and training)
   on ``training``, with ``--budget`` trials, search seed ``SEED``, the search space ``--space``,
   no random comparison, Ray with 2 CPUs (:func:`aop.tuning.study.run_study`), in
   ``WORK/seed_SEED/study``;
4. on ``unseen``: ``aop classify STUDY --data UNSEEN`` (:func:`aop.classify.classify_dataset`)
   with the study's pick, and :func:`evaluate_trial` with the best trial of each design family
   (``deep``, ``features``: the highest ``val_accuracy`` over every search), each scored against
   the truth classes (:func:`aop.classification.evaluation.classification_metrics`). The pick is
   also classified by :func:`predict_trial`, which must agree with ``aop classify``
   (``pick_agreement``);
5. the baseline, independent of the study: a logistic regression on the standardised
   ``aop instances`` features (:func:`aop.instances.features.dataset_features`, columns
   :func:`aop.instances.spread.feature_columns`, NaN and infinities imputed with the median of
   the labelled instances), fitted on all the manual labels and scored on ``unseen``.

One line per seed and the mean over the seeds are printed; the rows go to
``WORK/classifier_designs.csv`` and, with each design's per-class scores and confusion matrix,
every trial and the study's own baseline and verdict (``best.yaml``), to
``WORK/classifier_designs.json``. Command line (on 2 CPU cores a seed takes 2 to 3 minutes at
budget 6, deep trials training once per validation fold)::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/measure_classifier_designs.py --work /tmp/measure \\
        [--seeds 1 2 3] [--budget 12] [--space search_spaces/demo_classification.yaml] [--keep]

``--keep`` reuses a seed's data sets when they were made from the same seed and shape (the study
is always run again). :func:`evaluate_trial` scores any trial of the study on ``unseen`` from the
model it saved, so a row for another design is one more entry of ``designs`` in
:func:`measure_seed`.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from aop.config import PROJECT_ROOT
from aop.errors import AopError
from aop.outputs import atomic_file, claim_folder

#: The synthetic data of one seed: preset, volume shape and volume count of each data set.
PRESET = "myotube"
SHAPE = (16, 96, 96)
N_VOLUMES = 6
#: Seed offset of the unseen data set.
UNSEEN_OFFSET = 1000
#: Share of the training instances that get a manual label (per class).
ANNOTATED_FRACTION = 0.5
EXPERIMENT = PROJECT_ROOT / "experiments" / "demo_classification.yaml"
SPACE = PROJECT_ROOT / "search_spaces" / "demo_classification.yaml"
#: The score by which the best trial of a design family is chosen.
METRIC = "val_accuracy"
#: Design families of a classifier study (the search space's ``design`` parameter).
FAMILIES = ("deep", "features")
WORK_KIND = "classifier-design measurement"


# ------------------------------------------------------------------------------------------------
# Data and annotation
# ------------------------------------------------------------------------------------------------


def _made_from(root: Path, seed: int) -> bool:
    """Whether ``root`` is a synthetic data set of this script's preset, shape, count and seed."""
    path = root / "dataset.yaml"
    if not path.is_file():
        return False
    info = yaml.safe_load(path.read_text()) or {}
    record = info.get("provenance") or {}
    volumes = sorted(p.name for p in (root / "images").glob("*.tif"))
    return (
        record.get("seed") == seed and record.get("preset") == PRESET
        and tuple(record.get("shape") or ()) == SHAPE and len(volumes) == N_VOLUMES
        and bool(info.get("classes"))
    )  # fmt: skip


def synthetic_dataset(root: Path, seed: int, keep: bool) -> Path:
    """The Myotube data set with classes of ``seed`` in ``root`` (made, or reused with ``keep``)."""
    from aop.synth import preset_params
    from aop.synth.classes import class_set
    from aop.synth.dataset import write_synthetic_dataset

    if keep and _made_from(root, seed):
        return root
    return write_synthetic_dataset(
        root, preset_params(PRESET), SHAPE, N_VOLUMES, seed=seed, preset=PRESET,
        classes=class_set(PRESET), overwrite=True,
    )  # fmt: skip


def truth_table(data: Path) -> pd.DataFrame:
    """The ``source=truth`` rows of a synthetic data set: ``volume``, ``label``, ``class``."""
    from aop.instances.annotations import read_annotations

    table = read_annotations(data)
    table = table[table["source"] == "truth"]
    if table.empty:
        raise AopError(f"{data}/annotations.csv: no source=truth rows")
    return table[["volume", "label", "class"]].reset_index(drop=True)


def annotate(training: Path, seed: int) -> dict[str, Any]:
    """Manual rows for half of each class (from the truth), then label spreading.

    The data set is its own segmentation: every instance matches its own truth instance.

    Returns
    -------
    dict
        ``manual`` (the rows written), ``spread`` (the pseudo-label rows) and
        ``spread_accuracy`` (of the pseudo-labels, against the truth).
    """
    from aop.demo import spread_dataset
    from aop.instances.truth import simulate_annotation

    manual = simulate_annotation(training, training, ANNOTATED_FRACTION, seed=seed)
    spread = spread_dataset(training)
    truth = truth_table(training)
    joined = spread.merge(truth, on=["volume", "label"], suffixes=("", "_truth"))
    accuracy = float((joined["class"] == joined["class_truth"]).mean()) if len(joined) else np.nan
    return {"manual": manual, "spread": spread, "spread_accuracy": accuracy}


# ------------------------------------------------------------------------------------------------
# The study
# ------------------------------------------------------------------------------------------------


def write_experiment(folder: Path, training: Path, seed: int, budget: int, space: Path) -> Path:
    """``FOLDER/classification.yaml``: the demo's classifier study on ``training``."""
    raw = yaml.safe_load(EXPERIMENT.read_text())
    raw["data"]["dataset"] = str(training)
    raw["search"]["budget"] = budget
    raw["search"]["seed"] = seed
    raw["search_space"] = str(space)
    raw["storage"] = {"study_dir": str(folder / "study")}
    raw["tracking"] = {"tracking_uri": f"sqlite:///{folder / 'study' / 'mlflow.db'}"}
    raw["comparison"] = {"random": False}
    raw["ray"] = {"num_cpus": 2}
    path = folder / "classification.yaml"
    with atomic_file(path) as tmp:
        tmp.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_design_study(experiment: Path) -> tuple[Path, float]:
    """Run the study of ``experiment`` afresh; returns its folder and wall time in seconds."""
    from aop.outputs import discard_output
    from aop.tuning.kinds import load_experiment
    from aop.tuning.study import run_study

    exp = load_experiment(experiment)
    discard_output(exp.study_dir)  # an earlier run's study (aop's own folder only)
    start = time.perf_counter()
    study = run_study(exp).study_dir
    return Path(study), time.perf_counter() - start


def study_records(study_dir: Path) -> list[dict[str, Any]]:
    """Every trial record of the study, over all its searches."""
    from aop.analysis.records import read_study_records

    return [r for records in read_study_records(study_dir).values() for r in records]


def pick_record(study_dir: Path) -> dict[str, Any]:
    """The record of the study's pick (the trial ``best.yaml`` names)."""
    best = yaml.safe_load((study_dir / "best.yaml").read_text())
    for record in study_records(study_dir):
        if (record["search"], record["trial_id"]) == (best["search"], str(best["trial_id"])):
            return record
    raise AopError(f"{study_dir}/results: no record of trial {best['search']}/{best['trial_id']}")


def design_family(record: Mapping[str, Any]) -> str:
    """``deep`` (a network on crops) or ``features`` (scikit-learn on instance features).

    A record without ``design`` is deep: studies without feature designs do not record it.
    """
    return str(record["params"].get("design", "deep"))


def best_of_family(study_dir: Path, family: str) -> dict[str, Any] | None:
    """The trial of ``family`` with the highest ``val_accuracy`` (the earliest on a tie)."""
    from aop.analysis.records import best_record

    trials = [r for r in study_records(study_dir)
              if design_family(r) == family and METRIC in r["metrics"]]  # fmt: skip
    return best_record(trials, METRIC, "max") if trials else None


def describe_params(params: Mapping[str, Any]) -> str:
    """A trial's params on one line: choices joined by ``/``, numbers as ``name=value``."""
    words = [str(v) for v in params.values() if isinstance(v, str)]
    numbers = [f"{k}={v:.3g}" for k, v in params.items()
               if isinstance(v, int | float) and not isinstance(v, bool)]  # fmt: skip
    return " ".join(["/".join(words), *numbers]).strip()


# ------------------------------------------------------------------------------------------------
# Scores on the unseen data set
# ------------------------------------------------------------------------------------------------


def unseen_scores(predicted: pd.DataFrame, unseen: Path) -> dict[str, Any]:
    """Accuracy, balanced accuracy and the rest of ``predicted`` against ``unseen``'s truth.

    ``predicted`` has ``volume``, ``label``, ``class``; every truth instance must be predicted.
    """
    from aop.classification.evaluation import classification_metrics
    from aop.instances.annotations import read_classes

    classes = [c.name for c in read_classes(unseen)]
    truth = truth_table(unseen)
    joined = truth.merge(predicted[["volume", "label", "class"]], on=["volume", "label"],
                         how="left", suffixes=("_truth", ""))  # fmt: skip
    missing = joined["class"].isna()
    if missing.any():
        first = joined[missing].iloc[0]
        raise AopError(f"{unseen}: instance {first['volume']}/{first['label']} not classified")
    index = {name: i for i, name in enumerate(classes)}
    return classification_metrics(
        joined["class_truth"].map(index).to_numpy(), joined["class"].map(index).to_numpy(), classes
    )


def classify_with_pick(study_dir: Path, unseen: Path, log: Path) -> tuple[pd.DataFrame, float]:
    """``aop classify STUDY --data UNSEEN``: the predicted rows it wrote, and its wall time.

    What Ray Data prints goes to the file ``log``.
    """
    from aop import console
    from aop.classify import classify_dataset
    from aop.instances.annotations import read_annotations

    start = time.perf_counter()
    with console.library_output_to(log):
        classify_dataset(study_dir, unseen)
    seconds = time.perf_counter() - start
    table = read_annotations(unseen)
    return table[table["source"] == "predicted"].reset_index(drop=True), seconds


def trial_model_file(study_dir: Path, record: Mapping[str, Any]) -> Path:
    """The model a trial saved with its last report: ``best.ckpt``, or a feature pipeline."""
    from aop.tuning.classification_trial import FEATURE_MODEL_FILE, best_checkpoint
    from aop.tuning.study import load_study_experiment

    storage = load_study_experiment(study_dir).storage.tune_storage
    name = FEATURE_MODEL_FILE if design_family(record) == "features" else "best.ckpt"
    path = best_checkpoint(study_dir, record, storage, name)
    if path is None:
        raise AopError(f"{study_dir}/tune: no {name} of trial {record['search']}/"
                       f"{record['trial_id']}")  # fmt: skip
    return path


def _deep_proba(study_dir: Path, record: Mapping[str, Any], data: Path) -> pd.DataFrame:
    """Class probabilities of every instance of ``data`` from a deep trial's ``best.ckpt``.

    The crops are the study's (its ``experiment.yaml``) with the trial's preprocessing.
    """
    from aop.classification.module import CropClassifier, predict_proba
    from aop.instances.crops import instance_crops
    from aop.io import load_dataset
    from aop.tuning.study import load_study_experiment

    crops = load_study_experiment(study_dir).crops
    method = str(record["params"].get("preprocessing", "mask"))
    checkpoint = trial_model_file(study_dir, record)
    model = CropClassifier.load_from_checkpoint(str(checkpoint), map_location="cpu").eval()
    dataset = load_dataset(data, require_labels=True)
    frames = []
    for volume in dataset.names:
        labels = dataset.labels(volume)
        if not labels.any():
            continue
        array, ids = instance_crops(
            labels, dataset.image(volume), size=crops.size, spacing=dataset.info.voxel_size,
            target_spacing=crops.target_spacing, method=method, sigma=crops.sigma,
        )  # fmt: skip
        proba = pd.DataFrame(predict_proba(model, array, device="cpu"))
        frames.append(proba.assign(volume=volume, label=np.asarray(ids, dtype=np.int64)))
    return pd.concat(frames, ignore_index=True)


def _features_proba(study_dir: Path, record: Mapping[str, Any], data: Path) -> pd.DataFrame:
    """Class probabilities of every instance of ``data`` from a feature trial's pipeline.

    The features are those ``aop instances`` computes; the pipeline picks the columns it was
    fitted on and gives one column per class index it saw.
    """
    from aop.classification.tabular import feature_matrix, load_model
    from aop.instances.features import dataset_features

    model = load_model(trial_model_file(study_dir, record))
    table = dataset_features(data)
    proba = model.predict_proba(feature_matrix(table, list(model.feature_names_in_)))
    frame = pd.DataFrame(proba, columns=[int(c) for c in model.classes_])
    return frame.assign(volume=table["volume"].to_numpy(), label=table["label"].to_numpy())


def predict_trial(study_dir: Path, record: Mapping[str, Any], data: Path) -> pd.DataFrame:
    """Classify every instance of ``data`` with one trial of the study (in this process).

    A deep trial classifies crops with its ``best.ckpt``; a feature trial classifies the instance
    features with its fitted pipeline. The classes are those of the study's data set, in the
    order its trials learned them (class indices).

    Returns
    -------
    DataFrame
        ``volume``, ``label``, ``class``, ``probability``.
    """
    from aop.instances.annotations import read_classes
    from aop.tuning.study import load_study_experiment

    classes = [c.name for c in read_classes(load_study_experiment(study_dir).data.dataset)]
    family = design_family(record)
    if family not in ("deep", "features"):
        raise AopError(f"trial {record['search']}/{record['trial_id']}: unknown design {family!r}")
    proba = (_features_proba if family == "features" else _deep_proba)(study_dir, record, data)
    index = [c for c in proba.columns if isinstance(c, int)]
    values = proba[index].to_numpy()
    best = np.asarray(index)[values.argmax(axis=1)]
    return pd.DataFrame({
        "volume": proba["volume"].astype(str), "label": proba["label"].astype(np.int64),
        "class": [classes[i] for i in best], "probability": values.max(axis=1),
    })  # fmt: skip


def evaluate_trial(study_dir: Path, record: Mapping[str, Any], unseen: Path) -> dict[str, Any]:
    """The scores on ``unseen`` of one trial of the study (not necessarily its pick).

    Parameters
    ----------
    study_dir : Path
        The finished classification study.
    record : mapping
        The trial's record (:func:`aop.analysis.records.read_study_records`).
    unseen : Path
        A data set with ``source=truth`` rows for every instance.

    Returns
    -------
    dict
        :func:`aop.classification.evaluation.classification_metrics` of its predictions.
    """
    return unseen_scores(predict_trial(study_dir, record, unseen), unseen)


def agreement(a: pd.DataFrame, b: pd.DataFrame) -> float:
    """Share of the instances of ``a`` that ``b`` puts in the same class."""
    joined = a.merge(b, on=["volume", "label"], suffixes=("_a", "_b"))
    return float((joined["class_a"] == joined["class_b"]).sum() / max(len(a), 1))


def logistic_baseline(training: Path, unseen: Path) -> dict[str, Any]:
    """Logistic regression on the standardised instance features, fitted on the manual labels.

    scikit-learn's defaults (C=1, no class weights). Infinite values count as missing; missing
    values get the median of the manually labelled instances.
    """
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from aop.instances.annotations import read_annotations
    from aop.instances.features import dataset_features
    from aop.instances.spread import feature_columns

    table = read_annotations(training)
    manual = table[table["source"] == "manual"][["volume", "label", "class"]]
    features = dataset_features(training)
    columns = feature_columns(features)
    features = features.merge(manual, on=["volume", "label"])

    def matrix(frame: pd.DataFrame) -> np.ndarray:
        values = frame[columns].to_numpy(dtype=float, copy=True)
        values[~np.isfinite(values)] = np.nan
        return values

    model = make_pipeline(
        SimpleImputer(strategy="median"), StandardScaler(), LogisticRegression(max_iter=5000)
    )
    model.fit(matrix(features), features["class"].to_numpy())
    test = dataset_features(unseen)
    predicted = test[["volume", "label"]].assign(**{"class": model.predict(matrix(test))})
    return unseen_scores(predicted, unseen)


# ------------------------------------------------------------------------------------------------
# One seed, the table
# ------------------------------------------------------------------------------------------------


def measure_seed(work: Path, seed: int, budget: int, space: Path, keep: bool) -> dict[str, Any]:
    """Every measurement of one seed: the table row plus each design's full scores."""
    import ray

    from aop.instances.annotations import read_classes

    folder = claim_folder(work / f"seed_{seed}", WORK_KIND)
    start = time.perf_counter()
    training = synthetic_dataset(folder / "training", seed, keep)
    unseen = synthetic_dataset(folder / "unseen", seed + UNSEEN_OFFSET, keep)
    classes = [c.name for c in read_classes(training)]
    labels = annotate(training, seed)
    counts = labels["manual"]["class"].value_counts()
    manual = {name: int(counts.get(name, 0)) for name in classes}
    truth_counts = truth_table(unseen)["class"].value_counts()
    unseen_counts = {name: int(truth_counts.get(name, 0)) for name in classes}
    print(f"seed {seed}: {len(labels['manual'])} manual labels "
          f"({', '.join(f'{k} {v}' for k, v in manual.items())}); {len(labels['spread'])} spread "
          f"(accuracy {labels['spread_accuracy']:.3f}); unseen {sum(unseen_counts.values())} "
          f"instances ({', '.join(f'{k} {v}' for k, v in unseen_counts.items())}); data "
          f"{time.perf_counter() - start:.0f} s", flush=True)  # fmt: skip
    logreg = logistic_baseline(training, unseen)
    print(f"seed {seed}: logistic regression on unseen: accuracy {logreg['accuracy']:.3f}, "
          f"balanced {logreg['balanced_accuracy']:.3f}", flush=True)  # fmt: skip

    experiment = write_experiment(folder, training, seed, budget, space)
    study, study_s = run_design_study(experiment)
    records = study_records(study)
    pick = pick_record(study)
    predicted, classify_s = classify_with_pick(study, unseen, folder / "classify.log")
    ray.shutdown()
    pick_scores = unseen_scores(predicted, unseen)
    # the pick once more through predict_trial: it must give aop classify's predictions
    pick_agreement = agreement(predicted, predict_trial(study, pick, unseen))
    designs = {"pick": (pick, pick_scores)}
    for family in FAMILIES:
        best = best_of_family(study, family)
        designs[family] = (best, evaluate_trial(study, best, unseen) if best else None)
    reference = (yaml.safe_load((study / "best.yaml").read_text()) or {}).get("reference") or {}
    for name, (record, scores) in designs.items():
        if record is not None and scores is not None:
            print(f"seed {seed}: {name}: {record['search']}/{record['trial_id']} "
                  f"{describe_params(record['params'])}: val {record['metrics'][METRIC]:.3f}, "
                  f"unseen accuracy {scores['accuracy']:.3f}, balanced "
                  f"{scores['balanced_accuracy']:.3f}", flush=True)  # fmt: skip
    print(f"seed {seed}: study {len(records)} trials in {study_s:.0f} s; "
          f"{reference.get('verdict', 'no reference in best.yaml')}", flush=True)  # fmt: skip

    total = sum(unseen_counts.values())
    row: dict[str, Any] = {
        "seed": seed,
        "n_manual": len(labels["manual"]),
        **{f"manual_{name}": n for name, n in manual.items()},
        "spread_accuracy": labels["spread_accuracy"],
        "n_unseen": total,
        "unseen_majority": max(unseen_counts.values()) / max(total, 1),
        "n_trials": len(records),
        **{f"n_{family}": sum(design_family(r) == family for r in records)
           for family in FAMILIES},  # fmt: skip
        "pick_design": design_family(pick),
        "pick_test_accuracy": pick["metrics"].get("test_accuracy", np.nan),
        "pick_agreement": pick_agreement,
    }
    for name, (record, scores) in designs.items():
        row.update(design_fields(name, record, scores))
    row.update({
        "study_baseline_val_accuracy": (reference.get("scores") or {}).get(METRIC, np.nan),
        "logreg_accuracy": logreg["accuracy"],
        "logreg_balanced_accuracy": logreg["balanced_accuracy"],
        "study_s": study_s,
        "classify_s": classify_s,
        "total_s": time.perf_counter() - start,
    })  # fmt: skip
    details = {
        "seed": seed,
        "unseen_counts": unseen_counts,
        "trials": [{"trial": f"{r['search']}/{r['trial_id']}", "params": r["params"],
                    "metrics": r["metrics"]} for r in records],  # fmt: skip
        **{name: scores for name, (_, scores) in designs.items()},
        "logistic_regression": logreg,
        "study_reference": reference,
    }
    return {"row": row, "details": details}


def design_fields(
    name: str, record: Mapping[str, Any] | None, scores: Mapping[str, Any] | None
) -> dict[str, Any]:
    """A design's columns of the table (empty when the study has no trial of it)."""
    found = record is not None and scores is not None
    return {
        f"{name}_trial": f"{record['search']}/{record['trial_id']}" if found else "",
        f"{name}_params": describe_params(record["params"]) if found else "",
        f"{name}_val_accuracy": record["metrics"][METRIC] if found else np.nan,
        f"{name}_accuracy": scores["accuracy"] if found else np.nan,
        f"{name}_balanced_accuracy": scores["balanced_accuracy"] if found else np.nan,
    }


#: Printed columns: (header, row field, format).
TABLE = (
    ("seed", "seed", "{}"),
    ("manual", "n_manual", "{:g}"),
    ("per class", "manual_counts", "{}"),
    ("pick", "pick_params", "{}"),
    ("pick val", "pick_val_accuracy", "{:.3f}"),
    ("pick acc", "pick_accuracy", "{:.3f}"),
    ("pick bal", "pick_balanced_accuracy", "{:.3f}"),
    ("deep val", "deep_val_accuracy", "{:.3f}"),
    ("deep acc", "deep_accuracy", "{:.3f}"),
    ("deep bal", "deep_balanced_accuracy", "{:.3f}"),
    ("feat val", "features_val_accuracy", "{:.3f}"),
    ("feat acc", "features_accuracy", "{:.3f}"),
    ("feat bal", "features_balanced_accuracy", "{:.3f}"),
    ("LR acc", "logreg_accuracy", "{:.3f}"),
    ("LR bal", "logreg_balanced_accuracy", "{:.3f}"),
    ("study s", "study_s", "{:.0f}"),
)


def mean_row(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The mean over the seeds of every numeric field (text fields left empty)."""
    out: dict[str, Any] = {}
    for key in rows[0]:
        values = [r[key] for r in rows]
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        finite = [v for v in values if numeric and np.isfinite(v)]
        out[key] = float(np.mean(finite)) if finite and key != "seed" else ""
    out["seed"] = "mean"
    return out


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows and their mean as a Markdown table."""

    def cell(row: Mapping[str, Any], field: str, fmt: str) -> str:
        if field == "manual_counts":
            counts = [str(round(v)) if isinstance(v, int | float) else ""
                      for k, v in row.items() if k.startswith("manual_")]  # fmt: skip
            return "/".join(counts) if all(counts) else ""
        value = row.get(field, "")
        return fmt.format(value) if value != "" else ""

    lines = ["| " + " | ".join(h for h, _, _ in TABLE) + " |",
             "|" + "|".join("---" for _ in TABLE) + "|"]  # fmt: skip
    for row in [*rows, mean_row(rows)]:
        lines.append("| " + " | ".join(cell(row, f, fmt) for _, f, fmt in TABLE) + " |")
    return "\n".join(lines)


def write_results(work: Path, rows: Sequence[Mapping[str, Any]], details: list[Any]) -> None:
    """``WORK/classifier_designs.csv`` (the rows and their mean) and ``.json`` (with details)."""
    every = [*rows, mean_row(rows)]
    with atomic_file(work / "classifier_designs.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(every)
    with atomic_file(work / "classifier_designs.json") as tmp:
        text = json.dumps(_json_ready({"rows": every, "details": details}), indent=1,
                          allow_nan=False, default=str)  # fmt: skip
        tmp.write_text(text)


def _json_ready(value: Any) -> Any:
    """``value`` with every NaN or infinity as None (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, float | np.floating) and not np.isfinite(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for data and studies")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--budget", type=int, default=12, help="trials of each study")
    parser.add_argument("--space", type=Path, default=SPACE, help="search space file")
    parser.add_argument("--keep", action="store_true", help="reuse a seed's data sets")
    args = parser.parse_args(argv)
    space = args.space.resolve()
    if not space.is_file():
        raise SystemExit(f"--space: {args.space}: file not found")
    if args.budget < 1:
        raise SystemExit(f"--budget: must be at least 1, got {args.budget}")
    if min(args.seeds) < 0:
        raise SystemExit(f"--seeds: must be non-negative, got {min(args.seeds)}")
    try:
        work = claim_folder(args.work, WORK_KIND)
        rows, details = [], []
        for seed in args.seeds:
            measured = measure_seed(work, seed, args.budget, space, args.keep)
            rows.append(measured["row"])
            details.append(measured["details"])
            write_results(work, rows, details)  # after every seed: a later failure keeps these
    except AopError as error:
        raise SystemExit(f"error: {error}") from None
    print()
    print(format_table(rows))
    print(f"\nrows: {work / 'classifier_designs.csv'}, {work / 'classifier_designs.json'}")


if __name__ == "__main__":
    main()
