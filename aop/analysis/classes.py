"""The end of the pipeline (paper Fig. 1, step 8): class counts and instance volumes per class.

Reads a data set's class table ``DATASET/annotations.csv`` (columns ``volume, label, class, source,
annotator, time``; sources ``manual``, ``spread``, ``truth``, ``predicted``) with the reader that
owns its format (:func:`aop.instances.annotations.read_annotations`, so every row is checked as
``aop spread`` and the classifier study check it: its volume and label exist, its class is
declared, an instance has one manual row) and its instance labels ``labels/<volume>.*`` with the
data set's voxel size, and gives

- ``counts``: instances per class in each volume (one row per volume, one column per class, and
  ``total``);
- ``instances``: one row per instance: ``volume, label, class, source, voxels, volume_um3``;
- ``summary``: per class the number of instances, their share, and the mean, standard deviation,
  median, minimum and maximum instance volume in µm³.

An instance with rows from several sources gets the class of the first source in ``sources``
(default: ``manual`` first, then ``predicted`` by the classifier, then ``truth`` of synthetic data,
then ``spread`` pseudo-labels); an instance without any row is ``unclassified``. Instance volume is
its voxel count times the voxel volume ``z * y * x`` of ``dataset.yaml``'s ``voxel_size`` (µm).

:func:`write_class_analysis` writes ``class_counts.csv``, ``instance_volumes.csv``, ``summary.csv``,
``class_counts.png`` (stacked bars per volume) and ``volume_distributions.png`` (box plots per
class) into a folder of its own, built under a temporary name and renamed into place. The PNGs
carry ``Software: aop``: a folder holding exactly these five files whose ``class_counts.png``
carries the mark is aop's analysis (:func:`is_class_analysis`), which ``overwrite=True``
replaces; any other existing content is refused by :func:`aop.outputs.prepare_output`.

Example
-------
>>> result = class_analysis("data/classes")                       # doctest: +SKIP
>>> result.summary[["class", "instances", "mean_um3"]]            # doctest: +SKIP
>>> write_class_analysis(result, "data/classes/analysis")         # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from aop.errors import AopError  # noqa: E402
from aop.outputs import TIFF_SOFTWARE, atomic_output, prepare_output

__all__ = [
    "DEFAULT_SOURCES",
    "UNCLASSIFIED",
    "ClassAnalysis",
    "class_analysis",
    "is_class_analysis",
    "prepare_analysis_folder",
    "write_class_analysis",
]

#: Which source decides an instance's class when it has several rows, first wins.
DEFAULT_SOURCES = ("manual", "predicted", "truth", "spread")
#: The class of an instance without any row.
UNCLASSIFIED = "unclassified"
#: The files :func:`write_class_analysis` writes, in order.
ANALYSIS_FILES = ("class_counts.csv", "instance_volumes.csv", "summary.csv", "class_counts.png",
                  "volume_distributions.png")  # fmt: skip


@dataclass
class ClassAnalysis:
    """Class counts per volume, instance volumes and the per-class summary of a data set."""

    counts: pd.DataFrame
    instances: pd.DataFrame
    summary: pd.DataFrame
    classes: list[str]


def _instance_voxels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import fastremap

    ids, counts = fastremap.unique(labels, return_counts=True)
    keep = ids != 0
    return ids[keep].astype(np.int64), counts[keep].astype(np.int64)


def class_analysis(
    dataset_dir: str | os.PathLike, *, sources: Sequence[str] = DEFAULT_SOURCES
) -> ClassAnalysis:
    """Class counts, instance volumes in µm³ and a summary for a classified data set.

    Parameters
    ----------
    dataset_dir : path-like
        A data set (``images/``, ``labels/``, ``dataset.yaml``) with ``annotations.csv``.
    sources : sequence of str
        The sources whose rows count, in order of precedence (see the module docstring).

    Raises
    ------
    AopError
        A data set without labels, an unknown source, or a bad row of ``annotations.csv`` (see
        :func:`aop.instances.annotations.read_annotations`), naming the file and the line.
    """
    from aop.instances.annotations import read_annotations
    from aop.io import load_dataset

    root = Path(dataset_dir)
    dataset = load_dataset(root, require_labels=True, validate=False)
    unknown = [s for s in sources if s not in DEFAULT_SOURCES]
    if unknown:
        known = ", ".join(DEFAULT_SOURCES)
        raise AopError(f"sources: unknown source {unknown[0]!r} (known: {known})")
    rows = read_annotations(root)[["volume", "label", "class", "source"]]
    voxel_um3 = float(np.prod(dataset.info.voxel_size))
    tables = []
    for name in dataset.names:
        ids, voxels = _instance_voxels(dataset.labels(name))
        tables.append(pd.DataFrame({"volume": name, "label": ids, "voxels": voxels}))
    instances = pd.concat(tables, ignore_index=True)
    rank = {s: i for i, s in enumerate(sources)}
    chosen = rows[rows["source"].isin(rank)].copy()
    chosen["rank"] = chosen["source"].map(rank)
    # The first row of the best-ranked source wins (a later manual row replaces nothing).
    chosen = chosen.sort_values(["rank"], kind="stable").drop_duplicates(["volume", "label"])
    instances = instances.merge(
        chosen[["volume", "label", "class", "source"]], on=["volume", "label"], how="left"
    )
    instances["class"] = instances["class"].fillna(UNCLASSIFIED)
    instances["source"] = instances["source"].fillna("")
    instances["volume_um3"] = instances["voxels"] * voxel_um3
    instances = instances[["volume", "label", "class", "source", "voxels", "volume_um3"]]

    classes = sorted(set(instances["class"]) - {UNCLASSIFIED})
    if (instances["class"] == UNCLASSIFIED).any():
        classes.append(UNCLASSIFIED)
    counts = (
        pd.crosstab(instances["volume"], instances["class"])
        .reindex(index=dataset.names, columns=classes, fill_value=0)
        .astype("int64")
    )
    counts["total"] = counts.sum(axis=1)
    counts = counts.reset_index().rename(columns={"index": "volume"})
    counts.columns.name = None

    grouped = instances.groupby("class")["volume_um3"]
    summary = pd.DataFrame(
        {
            "class": classes,
            "instances": [int(grouped.size().get(c, 0)) for c in classes],
        }
    )
    summary["fraction"] = summary["instances"] / max(len(instances), 1)
    for column, how in (("mean_um3", "mean"), ("std_um3", "std"), ("median_um3", "median"),
                        ("min_um3", "min"), ("max_um3", "max")):
        values = grouped.agg(how)
        summary[column] = [float(values.get(c, np.nan)) for c in classes]
    return ClassAnalysis(counts=counts, instances=instances, summary=summary, classes=classes)


def _plot_counts(result: ClassAnalysis) -> plt.Figure:
    counts = result.counts.set_index("volume")[result.classes]
    figure, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(counts) + 2), 3.5))
    bottom = np.zeros(len(counts))
    colours = plt.get_cmap("tab10")
    for i, name in enumerate(result.classes):
        ax.bar(counts.index, counts[name], bottom=bottom, label=name, color=colours(i % 10))
        bottom += counts[name].to_numpy()
    ax.set_ylabel("instances")
    ax.set_title("class counts per volume")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(fontsize="small", frameon=False, bbox_to_anchor=(1.0, 1.0), loc="upper left")
    return figure


def _plot_volumes(result: ClassAnalysis) -> plt.Figure:
    figure, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(result.classes) + 2), 3.5))
    data = [
        result.instances.loc[result.instances["class"] == c, "volume_um3"].to_numpy()
        for c in result.classes
    ]
    ax.boxplot(data, showfliers=True)
    ax.set_xticks(range(1, len(result.classes) + 1), result.classes, rotation=30)
    ax.set_ylabel("instance volume (µm³)")
    ax.set_title("instance volume per class")
    return figure


def is_class_analysis(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder written by :func:`write_class_analysis` (see the module)."""
    folder = Path(path)
    if not folder.is_dir() or {p.name for p in folder.iterdir()} != set(ANALYSIS_FILES):
        return False
    try:
        from PIL import Image

        with Image.open(folder / "class_counts.png") as image:
            software = image.info.get("Software")
    except Exception:  # not a PNG, or a corrupt one: not recognisably aop's
        return False
    return software == TIFF_SOFTWARE


def prepare_analysis_folder(
    out_dir: str | os.PathLike,
    *,
    inputs: Sequence[str | os.PathLike] = (),
    overwrite: bool = False,
    overwrite_hint: str = "overwrite=True",
) -> Path:
    """Check, before any work, that the analysis may be written to ``out_dir``.

    Raises
    ------
    AopError
        One line: ``out_dir`` is an input, holds one or the current folder, holds files aop did
        not write, or holds an earlier analysis and ``overwrite`` is false.
    """
    if not is_class_analysis(out_dir):
        return prepare_output(out_dir, inputs=inputs, overwrite=overwrite, kind="folder",
                              overwrite_hint=overwrite_hint)  # fmt: skip
    target = Path(os.path.abspath(out_dir))
    if Path.cwd().is_relative_to(target):
        raise AopError(f"{out_dir}: output folder holds the current folder; choose a new folder")
    if not overwrite:
        raise AopError(
            f"{out_dir}: holds an earlier aop analysis; pass {overwrite_hint} to replace it"
        )
    return target


def write_class_analysis(
    result: ClassAnalysis,
    out_dir: str | os.PathLike,
    *,
    inputs: Sequence[str | os.PathLike] = (),
    overwrite: bool = False,
) -> list[Path]:
    """Write the tables (CSV) and the two plots (PNG) into ``out_dir``; return the paths.

    ``out_dir`` is checked by :func:`prepare_analysis_folder` (``inputs`` and ``overwrite`` as
    there) and written as a whole: built under a temporary sibling name and renamed into place.
    """
    out = Path(out_dir)
    prepare_analysis_folder(out, inputs=inputs, overwrite=overwrite)
    tables = {"class_counts.csv": result.counts, "instance_volumes.csv": result.instances,
              "summary.csv": result.summary}  # fmt: skip
    plots = {"class_counts.png": _plot_counts, "volume_distributions.png": _plot_volumes}
    with atomic_output(out, kind="folder", check=False, mark=False) as tmp:
        for name in ANALYSIS_FILES:
            if name in tables:
                tables[name].to_csv(tmp / name, index=False)
                continue
            figure = plots[name](result)
            try:
                figure.savefig(tmp / name, dpi=120, bbox_inches="tight",
                               metadata={"Software": TIFF_SOFTWARE})  # fmt: skip
            finally:
                plt.close(figure)
    return [out / name for name in ANALYSIS_FILES]
