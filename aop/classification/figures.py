"""Results of a classifier-design study like the paper's (Fig. 6, Table IV, the correlation).

From the trial records (``params``: design, encoder, head, pretraining, preprocessing or model;
``metrics``: the objective, ``val_accuracy`` by default) this module writes into the study folder:

- ``plots/fig6_designs.png``: the best and mean validation score of each design (an encoder of
  the deep family, a model of the feature family), the study's pick marked, and the baseline
  (logistic regression on instance features) as a dashed line;
- for the deep designs, ``plots/fig6_encoder_head_preprocessing.png``: mean validation score per
  encoder, one bar per (head, preprocessing);
- ``plots/fig6_encoder_pretraining.png``: heatmap of the mean validation accuracy, encoder x
  pretraining;
- ``plots/confusion.png``: the best trial's confusion matrix on the test split;
- ``tables/trials.csv``, ``tables/encoders.csv`` (mean accuracy and parameter count per encoder),
  ``tables/inference.csv`` (Table IV: instances per second at batch 1 and 32 on this device, for the
  encoders the study trained) and ``tables/correlation.yaml`` (Pearson r and p between the encoder
  parameter count and the mean validation accuracy).

Imports neither Ray nor MLflow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from aop.outputs import atomic_file

__all__ = [
    "design_label", "encoder_table", "plot_designs", "trials_table", "write_classifier_results",
]


def trials_table(records_by_search: Mapping[str, Sequence[Mapping[str, Any]]]) -> pd.DataFrame:
    """One row per trial: search, trial id, the configuration and the metrics."""
    return pd.DataFrame([
        {"search": search, "trial_id": record["trial_id"], **record["params"], **record["metrics"]}
        for search, records in records_by_search.items()
        for record in records
    ])


def _parameter_count(encoder: str, in_chans: int, crop_size: tuple[int, int, int]) -> int:
    from aop.classification.encoders import build_encoder

    built = build_encoder(encoder, in_chans=in_chans, crop_size=crop_size)
    return int(sum(p.numel() for p in built.parameters()))


def encoder_table(
    trials: pd.DataFrame, in_chans: int, crop_size: tuple[int, int, int]
) -> pd.DataFrame:
    """Mean and best validation accuracy and the parameter count of each encoder."""
    trials = _deep(trials)
    grouped = trials.groupby("encoder")["val_accuracy"].agg(["mean", "max", "size"])
    grouped["parameters"] = [_parameter_count(str(e), in_chans, crop_size) for e in grouped.index]
    return grouped.rename(columns={"mean": "mean_val_accuracy", "max": "best_val_accuracy",
                                   "size": "trials"}).reset_index()


def _deep(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials of deep designs (all trials of a study without a ``design`` parameter)."""
    if "design" not in trials:
        return trials
    return trials[trials["design"].fillna("deep") == "deep"]


def design_label(row: Mapping[str, Any]) -> str:
    """The design group of a trial in the figures: ``deep: ENCODER`` or ``features: MODEL``."""
    design = row.get("design")
    if isinstance(design, str) and design == "features":
        return f"features: {row.get('model', 'logistic_regression')}"
    return f"deep: {row.get('encoder', 'resnet18')}"


def plot_designs(
    trials: pd.DataFrame,
    path: Path,
    metric: str = "val_accuracy",
    reference: Mapping[str, float] | None = None,
    pick: str | None = None,
) -> Path:
    """Fig. 6 (designs): best and mean ``metric`` per design, the pick and the baseline marked."""
    labels = trials.apply(lambda r: design_label(r.to_dict()), axis=1)
    table = trials.assign(group=labels).groupby("group")[metric].agg(["max", "mean"])
    table = table.sort_values("max", ascending=False)
    figure, axes = plt.subplots(figsize=(2.0 + 1.0 * len(table), 3.8))
    x = np.arange(len(table))
    colours = ["tab:orange" if str(g).startswith("features") else "tab:blue" for g in table.index]
    axes.bar(x, table["max"].to_numpy(), 0.7, color=colours, label="best trial")
    axes.plot(x, table["mean"].to_numpy(), "k.", label="mean over trials")
    if pick is not None and pick in table.index:
        i = list(table.index).index(pick)
        axes.annotate("pick", (i, float(table["max"].iloc[i])), ha="center", va="bottom",
                      xytext=(0, 3), textcoords="offset points", fontsize=8)  # fmt: skip
    if reference is not None and metric in reference:
        axes.axhline(float(reference[metric]), color="k", linestyle="--", linewidth=1,
                     label=f"baseline {float(reference[metric]):.3f}")  # fmt: skip
    axes.set_xticks(x, [str(g) for g in table.index], rotation=25, ha="right")
    axes.set_ylim(0, 1.05)
    axes.set_ylabel(metric.replace("_", " "))
    axes.legend(fontsize=8, frameon=False, loc="lower left")
    axes.spines[["top", "right"]].set_visible(False)
    return _save(figure, path)


def _save(figure: Any, path: Path) -> Path:
    try:
        with atomic_file(path) as tmp:
            figure.savefig(tmp, dpi=150, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path


def _write(frame: pd.DataFrame, path: Path) -> Path:
    with atomic_file(path) as tmp:
        frame.to_csv(tmp, index=False)
    return path


def plot_encoder_head_preprocessing(trials: pd.DataFrame, path: Path) -> Path:
    """Fig. 6 (left): mean validation accuracy per encoder, a bar per (head, preprocessing)."""
    table = trials.groupby(["encoder", "head", "preprocessing"])["val_accuracy"].mean()
    table = table.unstack(["head", "preprocessing"])
    figure, axes = plt.subplots(figsize=(1.8 + 1.3 * len(table.index), 3.8))
    width = 0.8 / max(1, len(table.columns))
    for i, column in enumerate(table.columns):
        x = np.arange(len(table.index)) + (i - (len(table.columns) - 1) / 2) * width
        axes.bar(x, table[column].to_numpy(), width, label=f"{column[0]} / {column[1]}")
    axes.set_xticks(range(len(table.index)), [str(e) for e in table.index], rotation=20)
    axes.set_ylim(0, 1)
    axes.set_ylabel("mean validation accuracy")
    axes.legend(title="head / preprocessing", fontsize=8, frameon=False)
    axes.spines[["top", "right"]].set_visible(False)
    return _save(figure, path)


def plot_encoder_pretraining(trials: pd.DataFrame, path: Path) -> Path:
    """Fig. 6 (right): heatmap of the mean validation accuracy, encoder x pretraining."""
    table = trials.pivot_table(index="encoder", columns="pretraining", values="val_accuracy",
                               aggfunc="mean")
    figure, axes = plt.subplots(figsize=(1.6 + 1.2 * len(table.columns), 1.2 + 0.5 * len(table)))
    image = axes.imshow(table.to_numpy(), vmin=0, vmax=1, cmap="viridis", aspect="auto")
    axes.set_xticks(range(len(table.columns)), list(table.columns))
    axes.set_yticks(range(len(table.index)), list(table.index))
    for (i, j), value in np.ndenumerate(table.to_numpy()):
        if np.isfinite(value):
            axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8,
                      color="white" if value < 0.6 else "black")
    figure.colorbar(image, ax=axes, label="mean validation accuracy")
    return _save(figure, path)


def plot_confusion(test: Mapping[str, Any], path: Path) -> Path | None:
    """The confusion matrix of the test split (rows: truth, columns: prediction)."""
    matrix = np.asarray(test.get("confusion_matrix") or [], dtype=float)
    names = list(test.get("class_names") or [])
    if matrix.size == 0:
        return None
    figure, axes = plt.subplots(figsize=(1.5 + 0.7 * len(names), 1.2 + 0.7 * len(names)))
    axes.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        axes.text(j, i, f"{int(value)}", ha="center", va="center", fontsize=9)
    axes.set_xticks(range(len(names)), names, rotation=30)
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"test accuracy {test.get('accuracy', float('nan')):.3f}", fontsize=10)
    return _save(figure, path)


def write_classifier_results(
    study_dir: str | os.PathLike,
    records_by_search: Mapping[str, Sequence[Mapping[str, Any]]],
    best: Mapping[str, Any],
    crop_shape: Sequence[int] | None,
    classes: Sequence[str],
    measure_inference: bool = True,
    metric: str = "val_accuracy",
    reference: Mapping[str, float] | None = None,
) -> list[Path]:
    """Write the study's plots and tables (see the module docstring); return their paths.

    ``crop_shape`` (channels, z, y, x) is ``None`` for a study without deep designs (no encoder
    tables); ``reference`` holds the baseline's scores, drawn as a line in Fig. 6.
    """
    from scipy import stats

    study_dir = Path(study_dir)
    everything = trials_table(records_by_search)
    written = [_write(everything, study_dir / "tables" / "trials.csv")]
    if metric in everything:
        written.append(plot_designs(everything, study_dir / "plots" / "fig6_designs.png", metric,
                                    reference, design_label(dict(best["params"]))))  # fmt: skip
    confusion = plot_confusion(best.get("test") or {}, study_dir / "plots" / "confusion.png")
    if confusion is not None:
        written.append(confusion)
    trials = _deep(everything)
    if crop_shape is None or trials.empty or "encoder" not in trials:
        return written
    in_chans = int(crop_shape[0])
    crop_size = (int(crop_shape[1]), int(crop_shape[2]), int(crop_shape[3]))
    encoders = encoder_table(trials, in_chans, crop_size)
    written.append(_write(encoders, study_dir / "tables" / "encoders.csv"))
    if {"head", "preprocessing"} <= set(trials):
        written.append(plot_encoder_head_preprocessing(
            trials, study_dir / "plots" / "fig6_encoder_head_preprocessing.png"))
    if "pretraining" in trials:
        written.append(plot_encoder_pretraining(
            trials, study_dir / "plots" / "fig6_encoder_pretraining.png"))
    r = p = float("nan")
    if len(encoders) >= 3 and encoders["mean_val_accuracy"].nunique() > 1:
        result = stats.pearsonr(encoders["parameters"], encoders["mean_val_accuracy"])
        r, p = float(result.statistic), float(result.pvalue)
    correlation = {"pearson_r": r, "p_value": p, "encoders": int(len(encoders)),
                   "what": "encoder parameter count vs mean validation accuracy"}
    path = study_dir / "tables" / "correlation.yaml"
    with atomic_file(path) as tmp:
        tmp.write_text(yaml.safe_dump(correlation, sort_keys=False))
    written.append(path)
    if measure_inference:
        from aop.classification.inference import inference_speed

        rows = []
        for encoder in encoders["encoder"]:
            speed = inference_speed(
                str(encoder), head=str(best["params"].get("head", "slice")), in_chans=in_chans,
                crop_size=crop_size, num_classes=len(classes), repeats=3,
            )
            rows.append({
                "encoder": encoder, "device": speed["device"], "parameters": speed["parameters"],
                "instances_per_s_batch_1": speed["instances_per_s"][1],
                "instances_per_s_batch_32": speed["instances_per_s"][32],
            })
        written.append(_write(pd.DataFrame(rows), study_dir / "tables" / "inference.csv"))
    return written
