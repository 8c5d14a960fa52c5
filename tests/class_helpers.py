"""A labelled classification data set for the classifier-study tests."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from aop.synth import preset_params
from aop.synth.classes import class_set
from aop.synth.dataset import write_synthetic_dataset


def truth_annotated_dataset(
    root: Path, shape: tuple[int, int, int], n_volumes: int, seed: int
) -> Path:
    """Synthetic Myotube volumes with classes, every truth row copied as a manual annotation."""
    write_synthetic_dataset(root, preset_params("myotube"), shape, n_volumes, seed=seed,
                            preset="myotube", classes=class_set("myotube"))  # fmt: skip
    table = pd.read_csv(root / "annotations.csv")
    manual = table.assign(source="manual", annotator="test (truth)")
    pd.concat([table, manual]).to_csv(root / "annotations.csv", index=False)
    return root


def resnet_lr_space(low: float, high: float, start: dict | list[dict]) -> dict:
    """A deep-only search space: ``test_resnet`` on masks, either head, a log-uniform ``lr``."""
    return {
        "parameters": {
            "encoder": "test_resnet",
            "head": {"choice": ["slice", "volume"]},
            "pretraining": "none",
            "preprocessing": "mask",
            "lr": {"float": [low, high], "log": True},
        },
        "start": {"default": start},
    }
