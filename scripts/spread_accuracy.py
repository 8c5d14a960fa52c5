"""Label spreading from 10 % manual labels on a synthetic class data set: accuracy on the rest.

For each seed, a random 10 % of the instances get their true class as a manual label; the rest are
labelled by :func:`aop.instances.spread.spread_labels` with its cross-validated defaults, and
compared with the truth. Also prints the best accuracy of a shallow classifier (depth-3 tree,
3-fold CV) on any single feature, against the same tree on all features::

    OMP_NUM_THREADS=1 .venv/bin/python scripts/spread_accuracy.py [--preset myotube] [--seeds 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import pandas as pd
from sklearn.model_selection import cross_val_score
from sklearn.tree import DecisionTreeClassifier

from aop.instances import read_annotations
from aop.instances.features import dataset_features
from aop.instances.spread import feature_columns, spread_labels
from aop.synth import PRESETS, class_set, preset_params
from aop.synth.dataset import write_synthetic_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="myotube")
    parser.add_argument("--volumes", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--fraction", type=float, default=0.1)
    args = parser.parse_args()
    shape = PRESETS[args.preset].default_shape
    with tempfile.TemporaryDirectory() as tmp:
        root = f"{tmp}/data"
        write_synthetic_dataset(
            root, preset_params(args.preset), shape, args.volumes, seed=0, preset=args.preset,
            classes=class_set(args.preset),
        )  # fmt: skip
        features = dataset_features(root)
        truth = read_annotations(root).set_index(["volume", "label"])["class"]
    y = truth.loc[list(zip(features["volume"], features["label"], strict=True))].to_numpy()
    counts = pd.Series(y).value_counts().to_dict()
    print(f"{args.preset}: {args.volumes} volumes of {'x'.join(map(str, shape))}, "
          f"{len(features)} instances {counts}")  # fmt: skip
    accuracies = []
    for seed in range(args.seeds):
        rng = np.random.default_rng(seed)
        picked = rng.choice(len(features), round(args.fraction * len(features)), replace=False)
        manual = pd.DataFrame({"volume": features["volume"].to_numpy()[picked],
                               "label": features["label"].to_numpy()[picked],
                               "class": y[picked], "source": "manual"})  # fmt: skip
        start = time.perf_counter()
        result = spread_labels(features, manual, seed=seed)
        rest = np.setdiff1d(np.arange(len(features)), picked)
        accuracy = float((result["class"].to_numpy()[rest] == y[rest]).mean())
        accuracies.append(accuracy)
        a = result.attrs
        print(f"  seed {seed}: {len(picked)} manual labels, accuracy on the other "
              f"{len(rest)}: {accuracy:.3f} (gamma {a['gamma']:.3g}, alpha {a['alpha']}, "
              f"CV {a['cv_accuracy']:.3f}, {time.perf_counter() - start:.1f} s)")  # fmt: skip
    print(f"  mean {np.mean(accuracies):.3f}, min {np.min(accuracies):.3f}, "
          f"max {np.max(accuracies):.3f} over {args.seeds} seeds")  # fmt: skip
    columns = feature_columns(features)
    X = features[columns].fillna(0.0).to_numpy()
    tree = DecisionTreeClassifier(max_depth=3, random_state=0)
    single = {c: cross_val_score(tree, X[:, [i]], y, cv=3).mean() for i, c in enumerate(columns)}
    best = max(single, key=single.get)
    together = cross_val_score(tree, X, y, cv=3).mean()
    print(f"  depth-3 tree: best single feature {best} {single[best]:.3f}, all features "
          f"{together:.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
