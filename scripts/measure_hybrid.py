"""Does a deep encoder's embedding add to the instance features? The hybrid design, measured.

For each seed of a finished ``scripts/measure_classifier_designs.py`` run (``--work DIR``), the
best deep trial of the study (by validation accuracy) is loaded, and every instance of the
training and unseen data sets is embedded by its encoder: the encoder's slice feature maps,
averaged over the slices and the map (one vector of the encoder's width per instance). Three
logistic regressions (standardised, C = 1, balanced class weights, as the study's baseline) are
fitted on the same manual labels and scored on the unseen instances:

- instance features alone (the baseline);
- the embedding alone (a linear probe of the deep design);
- both, concatenated (the hybrid design).

A hybrid that does not beat the features alone is not worth a design family of its own::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/measure_hybrid.py --work DIR --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure_classifier_designs import (  # noqa: E402
    best_of_family,
    trial_model_file,
    truth_table,
)


def embeddings(checkpoint: Path, data: Path, study_dir: Path, method: str) -> pd.DataFrame:
    """One row per instance of ``data``: ``volume``, ``label`` and the encoder's embedding."""
    import torch

    from aop.classification.module import CropClassifier
    from aop.instances.crops import instance_crops
    from aop.io import load_dataset
    from aop.tuning.study import load_study_experiment

    crops = load_study_experiment(study_dir).crops
    model = CropClassifier.load_from_checkpoint(str(checkpoint), map_location="cpu").eval()
    dataset = load_dataset(data, require_labels=True)
    frames = []
    for volume in dataset.names:
        labels = dataset.labels(volume)
        array, ids = instance_crops(
            labels, dataset.image(volume), size=crops.size, spacing=dataset.info.voxel_size,
            target_spacing=crops.target_spacing, method=method, sigma=crops.sigma,
        )  # fmt: skip
        with torch.no_grad():
            maps = model.encoder(torch.from_numpy(array))  # (N, Z, F, h, w)
        vectors = maps.mean(dim=(1, 3, 4)).numpy()
        frame = pd.DataFrame(vectors, columns=[f"emb{i}" for i in range(vectors.shape[1])])
        frames.append(frame.assign(volume=volume, label=np.asarray(ids, dtype=np.int64)))
    return pd.concat(frames, ignore_index=True)


def measure(work: Path, seed: int) -> dict[str, float]:
    """Unseen accuracy and balanced accuracy of the three logistic regressions for one seed."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    from aop.classification.tabular import feature_columns, feature_matrix, make_model
    from aop.instances.annotations import read_annotations, read_classes
    from aop.instances.features import dataset_features

    folder = work / f"seed_{seed}"
    training, unseen, study = folder / "training", folder / "unseen", folder / "study"
    classes = [c.name for c in read_classes(training)]
    record = best_of_family(study, "deep")
    if record is None:
        raise SystemExit(f"{study}: no deep trial")
    checkpoint = trial_model_file(study, record)
    method = str(record["params"].get("preprocessing", "mask"))
    table = read_annotations(training)
    manual = table[table["source"] == "manual"][["volume", "label", "class"]]
    sets = {}
    for name, data, truth in (("train", training, manual), ("unseen", unseen, truth_table(unseen))):
        features = dataset_features(data)
        joined = features.merge(embeddings(checkpoint, data, study, method),
                                on=["volume", "label"]).merge(truth, on=["volume", "label"])
        sets[name] = joined
    columns = feature_columns(sets["train"].drop(columns=[c for c in sets["train"]
                                                          if c.startswith("emb")]))  # fmt: skip
    embedded = [c for c in sets["train"] if c.startswith("emb")]
    y = sets["train"]["class"].map(classes.index).to_numpy()
    y_unseen = sets["unseen"]["class"].map(classes.index).to_numpy()
    out: dict[str, float] = {"seed": seed}
    for name, used in (("features", columns), ("embedding", embedded),
                       ("hybrid", [*columns, *embedded])):  # fmt: skip
        model = make_model("logistic_regression", {"logreg_c": 1.0}, class_weight="balanced")
        model.fit(feature_matrix(sets["train"], used), y)
        predicted = model.predict(feature_matrix(sets["unseen"], used))
        out[f"{name}_accuracy"] = float(accuracy_score(y_unseen, predicted))
        out[f"{name}_balanced"] = float(balanced_accuracy_score(y_unseen, predicted))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args(argv)
    rows = [measure(args.work, seed) for seed in args.seeds]
    frame = pd.DataFrame(rows)
    frame.loc["mean"] = frame.mean(numeric_only=True)
    print(frame.round(3).to_string())


if __name__ == "__main__":
    main()
