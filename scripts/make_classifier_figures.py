"""Copy a classification study's Fig. 6 plots into docs/images/ and print its results tables.

The study is any finished ``kind: classification`` study folder, e.g. the demo's
(``aop demo`` writes it to ``demo/classification``). The plots come from the study's ``plots/``
(Fig. 6: mean validation accuracy per encoder x (head, preprocessing) and encoder x
pretraining; the best trial's confusion matrix); the tables (trials, best configuration with
its test metrics, Table IV's inference times and the parameter-count correlation) are rendered
from its ``tables/`` and ``best.yaml`` as Markdown, printed and written to
``docs/images/classifier_tables.md``.

Run: ``.venv/bin/python scripts/make_classifier_figures.py demo/classification [--out docs/images]``
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import pandas as pd
import yaml

PLOTS = {
    "fig6_encoder_head_preprocessing.png": "classifier_fig6_head_preprocessing.png",
    "fig6_encoder_pretraining.png": "classifier_fig6_pretraining.png",
    "confusion.png": "classifier_confusion.png",
}


def _markdown(frame: pd.DataFrame, digits: int = 3) -> str:
    cells = frame.map(lambda v: f"{v:.{digits}f}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |",
             "|" + "|".join("---" for _ in frame.columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines)


def study_tables(study: Path) -> str:
    """The results Markdown of one study: trials, best configuration, inference, correlation."""
    trials = pd.read_csv(study / "tables" / "trials.csv")
    trials = trials.sort_values("val_accuracy", ascending=False)
    columns = [c for c in ("encoder", "head", "pretraining", "preprocessing", "lr", "epoch",
                           "val_accuracy", "test_accuracy") if c in trials]
    best = yaml.safe_load((study / "best.yaml").read_text())
    test = best.get("test", {})
    parts = [f"Trials of `{study.name}` ({len(trials)}), best validation accuracy first:", "",
             _markdown(trials[columns].reset_index(drop=True)), ""]
    per_class = test.get("per_class") or {}
    if per_class:
        rows = pd.DataFrame(per_class).T.reset_index(names="class")
        parts += ["Best configuration on the test split (per class):", "", _markdown(rows), ""]
    inference = pd.read_csv(study / "tables" / "inference.csv")
    parts += ["Inference time (Table IV), instances per second on this machine:", "",
              _markdown(inference), ""]
    correlation = study / "tables" / "correlation.yaml"
    if correlation.is_file():
        values = yaml.safe_load(correlation.read_text()) or {}
        parts += ["Parameter count vs validation accuracy: " + ", ".join(
            f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()),
            ""]
    return "\n".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="a finished classification study folder")
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    args = parser.parse_args()
    if not (args.study / "best.yaml").is_file():
        raise SystemExit(f"{args.study}/best.yaml: not a finished study")
    args.out.mkdir(parents=True, exist_ok=True)
    for name, target in PLOTS.items():
        source = args.study / "plots" / name
        if source.is_file():
            tmp = args.out / f".{target}.tmp"
            shutil.copyfile(source, tmp)
            os.replace(tmp, args.out / target)
            print(f"wrote {args.out / target}")
    text = study_tables(args.study)
    tmp = args.out / ".classifier_tables.md.tmp"
    tmp.write_text(text + "\n")
    os.replace(tmp, args.out / "classifier_tables.md")
    print(text)


if __name__ == "__main__":
    main()
