"""Segmented instances matched to ground-truth instances, and their classes taken from the truth.

A segmentation does not reproduce the truth's label ids, so a truth class table (``source=truth``
rows of a synthetic data set) says nothing about the segmented instances until each segmented
instance is matched to the truth instance it overlaps most. :func:`simulate_annotation` uses the
match to stand in for a person annotating a fraction of the instances (the embedded demo does).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from aop.errors import AopError


def match_instances(segmented: np.ndarray, truth: np.ndarray) -> pd.DataFrame:
    """For every segmented instance, the truth instance it overlaps most.

    Parameters
    ----------
    segmented, truth : ndarray of int
        Label images of the same shape (0 is background).

    Returns
    -------
    DataFrame
        ``label`` (segmented id), ``truth_label`` (0 when it overlaps no truth instance),
        ``overlap`` (voxels shared with that truth instance) and ``voxels`` (its size), sorted by
        ``label``.

    Examples
    --------
    >>> seg = np.array([[1, 1, 0, 2]]); truth = np.array([[5, 7, 7, 0]])
    >>> match_instances(seg, truth)[["label", "truth_label", "overlap"]].values.tolist()
    [[1, 5, 1], [2, 0, 0]]
    """
    segmented = np.asarray(segmented)
    truth = np.asarray(truth)
    if segmented.shape != truth.shape:
        raise AopError(f"segmented shape {segmented.shape} differs from truth shape {truth.shape}")
    inside = segmented > 0
    seg = segmented[inside].astype(np.int64)
    tru = truth[inside].astype(np.int64)
    if seg.size == 0:
        return pd.DataFrame({"label": [], "truth_label": [], "overlap": [], "voxels": []},
                            dtype=np.int64)
    voxels = pd.Series(seg).value_counts().sort_index()
    pairs = pd.DataFrame({"label": seg[tru > 0], "truth_label": tru[tru > 0]})
    counts = pairs.value_counts().rename("overlap").reset_index()
    # the largest overlap first; ties go to the smaller truth id
    counts = counts.sort_values(["label", "overlap", "truth_label"],
                                ascending=[True, False, True])
    best = counts.drop_duplicates("label").set_index("label")
    out = pd.DataFrame({"label": voxels.index.to_numpy(), "voxels": voxels.to_numpy()})
    out["truth_label"] = best["truth_label"].reindex(out["label"]).fillna(0).to_numpy(np.int64)
    out["overlap"] = best["overlap"].reindex(out["label"]).fillna(0).to_numpy(np.int64)
    return out[["label", "truth_label", "overlap", "voxels"]].reset_index(drop=True)


def truth_classes(
    segmented_dir: str | os.PathLike, truth_dir: str | os.PathLike
) -> pd.DataFrame:
    """The truth class of every segmented instance of a data set (matched by largest overlap).

    Parameters
    ----------
    segmented_dir : path-like
        The segmented data set (``labels/`` of the same volumes).
    truth_dir : path-like
        The data set with true labels and ``source=truth`` rows in ``annotations.csv``.

    Returns
    -------
    DataFrame
        ``volume``, ``label``, ``truth_label``, ``class``; instances that overlap no truth
        instance (false positives) are left out.
    """
    from aop.instances.annotations import read_annotations
    from aop.io import load_dataset

    segmented = load_dataset(segmented_dir, require_labels=True)
    truth = load_dataset(truth_dir, require_labels=True)
    table = read_annotations(truth_dir)
    table = table[table["source"] == "truth"]
    if table.empty:
        raise AopError(f"{Path(truth_dir) / 'annotations.csv'}: no source=truth rows")
    classes = {(str(v), int(lab)): c
               for v, lab, c in zip(table["volume"], table["label"], table["class"], strict=True)}
    frames = []
    for name in segmented.names:
        if name not in truth.names:
            raise AopError(f"{truth_dir}: no volume {name!r} (segmented in {segmented_dir})")
        match = match_instances(segmented.labels(name), truth.labels(name))
        match = match[match["truth_label"] > 0].assign(volume=name)
        match["class"] = [classes.get((name, int(t))) for t in match["truth_label"]]
        frames.append(match[match["class"].notna()])
    columns = ["volume", "label", "truth_label", "class"]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def simulate_annotation(
    segmented_dir: str | os.PathLike,
    truth_dir: str | os.PathLike,
    fraction: float,
    *,
    seed: int = 0,
    annotator: str = "demo: truth",
) -> pd.DataFrame:
    """Write ``source=manual`` rows for a random fraction of the segmented instances, from truth.

    This stands in for a person annotating (``aop annotate``): each chosen instance gets the
    class of the truth instance it overlaps most, with ``annotator`` saying where it came from.
    Earlier rows of that annotator are replaced; other manual rows are kept. At least two instances
    per class are taken when the segmentation found them (a class needs two to be split
    into training and validation).

    Returns
    -------
    DataFrame
        The rows written (``volume``, ``label``, ``class``).
    """
    from aop.instances.annotations import (
        append_annotations,
        read_annotations,
        remove_annotations,
    )

    if not 0 < fraction <= 1:
        raise AopError(f"fraction: must be in (0, 1], got {fraction}")
    matched = truth_classes(segmented_dir, truth_dir)
    rng = np.random.default_rng(seed)
    chosen = []
    for _, group in matched.groupby("class", sort=True):
        n = min(len(group), max(2, int(round(fraction * len(group)))))
        chosen.append(group.iloc[np.sort(rng.choice(len(group), n, replace=False))])
    rows = (pd.concat(chosen) if chosen else matched).sort_values(["volume", "label"])
    rows = rows[["volume", "label", "class"]].reset_index(drop=True)
    old = read_annotations(segmented_dir)
    mine = old[(old["source"] == "manual") & (old["annotator"] == annotator)]
    if len(mine):
        keys = zip(mine["volume"], mine["label"], strict=True)
        remove_annotations(segmented_dir, keys, source="manual")
    append_annotations(segmented_dir, rows.assign(source="manual", annotator=annotator))
    return rows
