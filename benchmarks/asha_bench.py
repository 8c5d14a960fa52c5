"""ASHA against no early stopping: epochs, wall time and final best of a classifier study.

For each seed ``s`` (0, 1, ...), in a temporary folder (or ``--work``):

1. a synthetic Myotube data set with classes, ``--volumes`` volumes of ``--shape`` voxels
   (:func:`aop.synth.dataset.write_synthetic_dataset`, seed ``s``), its true labels standing in
   for the segmentation; a simulated annotation of ``--fraction`` of its instances from the truth
   (:func:`aop.instances.truth.simulate_annotation`, seed ``s``: ``source=manual`` rows), then
   label spreading as ``aop spread`` does (:func:`aop.demo.spread_dataset`: the pseudo-labels of
   ``semi`` pretraining). At least ``MIN_LABELS`` manual labels (the count is printed): with 200
   or more the study's ``training.folds: auto`` is one validation split of ``val_fraction``,
   about 78 instances of 313, so one instance weighs about 0.013 of the accuracy;
2. the classifier study of ``experiments/demo_classification.yaml`` on it, as the demo has it
   (search space ``search_spaces/demo_classification.yaml`` with its deep and feature designs,
   searcher ``smac``, concurrency 2, crops and training settings, Lightning's ``patience`` 3
   included) except ``--budget`` trials, search seed ``s``, ``training.max_epochs:
   --max-epochs``, a SQLite MLflow store in the folder, and one objective, ``val_accuracy``
   (the file's ``objectives``, if it lists several, are left out: ASHA ranks trials on one
   metric, and a study with several refuses a scheduler). Run twice, one after the other, on
   the same data and one local Ray of 2 CPUs, each a whole study through
   :func:`aop.tuning.study.run_study`: ``fifo`` (every trial runs to its end) and ``asha``
   (``search.scheduler: {name: asha, grace_period, reduction_factor}``). With two trials at a
   time the searcher's suggestions depend on which trial ends first, and under ASHA it learns
   stopped trials' scores, so the two arms' trials agree at first and part later.

Per arm it measures:

- **epochs**: the epochs trained by the deep trials, summed over the study's records. A record's
  ``metrics.epoch`` is the ``epoch`` of the trial's last report: every report of a deep trial
  carries its validation epochs so far over folds and stages
  (:class:`aop.tuning.classification_trial.TuneReport`), and the report that ends a trial that
  ran its course repeats the count, so it is the epochs that trial trained (Lightning's own
  early stopping, ``patience``, included); a stopped trial's last report is the one ASHA stopped,
  so it equals ``stopped_at.epoch``. Both are checked, and so is the trial's
  ``val_accuracy_epoch`` curve, which has one point per validation epoch. Feature trials train
  no epochs, report once and are never stopped: they count 0;
- **wall s**: the whole study (data preparation, trials, baseline, figures and model logging);
  **trials s**: the sum of the trials' own durations (two run at a time), the part early stopping
  can shorten;
- **best**: ``best.yaml``'s ``scores.val_accuracy``, the study's pick (under ASHA, a trial that
  ran to its end), and its design family;
- **stopped**: the trials ASHA stopped (records with ``stopped_at``), of the deep trials.

The goal: ASHA trains half the epochs of fifo or fewer (total over the seeds), with a mean final
best within 0.02 of fifo's. Commands of the reported runs (each 25 to 60 minutes on 2 CPU cores,
depending on what else runs there)::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/asha_bench.py --seeds 5 --budget 20 \\
        --max-epochs 12 --grace-period 2 --reduction-factor 3
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/asha_bench.py --seeds 5 --budget 30 \\
        --max-epochs 12 --grace-period 1 --reduction-factor 4 --deep-only

The first is the demo space with aop's reduction factor; the second its deep designs, where
every trial trains, with Ray Tune's own defaults (``grace_period 1``, ``reduction_factor 4``)
and a budget that lets later trials meet rungs where others are recorded.

Settings: 20 trials (of which smac gives about a third to deep designs) keep 5 seeds of both arms
in the time above. ``--max-epochs 12`` (the demo trains 8) gives a training room to go on while
it improves: a deep trial trains at most 12 epochs per stage and fold, 24 with ``semi``
pretraining's two stages, so the fidelity's maximum is 24 epochs; ``grace_period 2`` with
``reduction_factor 3`` gives the rungs 2, 6 and 18 epochs, ``grace_period 1`` with
``reduction_factor 4`` the rungs 1, 4 and 16. Lightning's ``patience`` (3 epochs without a better
validation accuracy) ends a training in both arms, often after 4 to 15 epochs: a rung past that
(18) stops nothing, and a trial that passes the last rung it meets trains until ``patience``
ends it. The estimate a deep trial reports is its best validation accuracy so far, so a rung
never judges a trial by an epoch worse than its best one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import ray  # noqa: E402
import yaml  # noqa: E402

from aop.config import PROJECT_ROOT, read_yaml  # noqa: E402
from aop.tuning.kinds import parse_experiment  # noqa: E402
from aop.tuning.study import run_study  # noqa: E402

EXPERIMENT = PROJECT_ROOT / "experiments" / "demo_classification.yaml"
SPACE = PROJECT_ROOT / "search_spaces" / "demo_classification.yaml"
PRESET = "myotube"
#: Fewest manual labels of a seed's data set.
MIN_LABELS = 300
METRIC = "val_accuracy"
EPOCH = "epoch"
ARMS = ("fifo", "asha")


def labelled_dataset(
    root: Path, seed: int, shape: tuple[int, int, int], volumes: int, fraction: float
) -> dict[str, Any]:
    """A synthetic Myotube data set with classes, annotated by simulation, then spread.

    Returns
    -------
    dict
        ``path``, ``manual`` (manual labels), ``per_class`` (``{class: count}``) and ``spread``
        (pseudo-labels).
    """
    from aop.demo import spread_dataset
    from aop.instances.truth import simulate_annotation
    from aop.synth import preset_params
    from aop.synth.classes import class_set
    from aop.synth.dataset import write_synthetic_dataset

    write_synthetic_dataset(root, preset_params(PRESET), shape, volumes, seed=seed,
                            preset=PRESET, classes=class_set(PRESET))  # fmt: skip
    manual = simulate_annotation(root, root, fraction, seed=seed)
    spread = spread_dataset(root)
    counts = manual["class"].value_counts()
    return {"path": root, "manual": len(manual), "spread": len(spread),
            "per_class": {str(k): int(v) for k, v in counts.items()}}  # fmt: skip


def experiment(project: Path, arm: str, data: Path, seed: int, args: argparse.Namespace) -> Any:
    """The demo's classifier study on ``data`` in ``project/arm``, with or without ASHA."""
    raw = read_yaml(EXPERIMENT)
    raw["name"] = f"asha_bench_{arm}"
    raw.pop("objectives", None)  # ASHA ranks trials on one metric: val_accuracy alone
    raw["data"] = {"dataset": str(data)}
    raw["training"]["max_epochs"] = args.max_epochs
    raw["search"] |= {"budget": args.budget, "seed": seed}
    if arm == "asha":
        raw["search"]["scheduler"] = {"name": "asha", "grace_period": args.grace_period,
                                      "reduction_factor": args.reduction_factor}  # fmt: skip
    raw["search_space"] = str(deep_space(project) if args.deep_only else SPACE)
    raw["storage"] = {"study_dir": arm}
    raw["tracking"] = {"tracking_uri": f"sqlite:///{project / arm / 'mlflow.db'}"}
    raw["ray"] = {"num_cpus": 2}
    return parse_experiment(raw, source=f"{arm}.yaml", base=project)


def deep_space(project: Path) -> Path:
    """The demo space's deep family alone (``design: deep`` a constant), in ``project``.

    ``--deep-only`` measures ASHA where every trial trains, as in the paper's 72-design study:
    the demo space gives about two thirds of a SMAC budget to feature designs, which train no
    epochs and are never stopped.
    """
    raw = read_yaml(SPACE)
    deep = {name: spec for name, spec in raw["parameters"].items()
            if isinstance(spec, dict) and spec.get("when") == {"design": "deep"}}  # fmt: skip
    starts = [p for p in raw["start"]["default"] if p.get("design") == "deep"]
    path = project / "space_deep.yaml"
    if not path.is_file():
        path.write_text(yaml.safe_dump({"parameters": {"design": "deep", **deep},
                                        "start": {"default": starts}}, sort_keys=False))
    return path


def trial_epochs(record: dict[str, Any]) -> int:
    """The epochs a trial trained: its last report's ``epoch`` (0 for a feature trial).

    Raises
    ------
    RuntimeError
        When the count disagrees with ``stopped_at`` or with the trial's per-epoch curve.
    """
    if record["params"].get("design", "deep") != "deep":
        return 0
    epochs = int(record["metrics"][EPOCH])
    where = f"trial {record['trial_id']}"
    stop = record.get("stopped_at")
    if stop is not None and int(stop[EPOCH]) != epochs:
        raise RuntimeError(f"{where}: stopped_at {stop} but its last report says {epochs} epochs")
    curve = (record.get("curves") or {}).get(f"{METRIC}_epoch", [])
    if len(curve) != epochs:
        raise RuntimeError(f"{where}: {epochs} epochs but {len(curve)} validation epochs reported")
    return epochs


def run_arm(project: Path, arm: str, data: Path, seed: int, args: argparse.Namespace) -> dict:
    """Run one arm's study; its epochs, times, best and stops."""
    exp = experiment(project, arm, data, seed, args)
    start = time.perf_counter()
    result = run_study(exp, verbose=-1)
    wall = time.perf_counter() - start
    records = result.records[exp.search.searcher]
    best = yaml.safe_load((result.study_dir / "best.yaml").read_text())
    deep = [r for r in records if r["params"].get("design", "deep") == "deep"]
    return {
        "epochs": sum(trial_epochs(r) for r in records),
        "wall": wall,
        "trials_s": sum(float(r.get("duration_s") or 0.0) for r in records),
        "best": float(best["scores"][METRIC]),
        "best_design": str(best["params"].get("design", "deep")),
        "stopped": sum(1 for r in records if r.get("stopped_at")),
        "deep": len(deep),
        "trials": len(records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. SEEDS-1")
    parser.add_argument("--budget", type=int, default=20, help="trials of each study")
    parser.add_argument("--max-epochs", type=int, default=12, help="training.max_epochs")
    parser.add_argument("--grace-period", type=int, default=2)
    parser.add_argument("--reduction-factor", type=float, default=3.0)
    parser.add_argument("--volumes", type=int, default=8)
    parser.add_argument("--shape", type=int, nargs=3, default=[16, 192, 192])
    parser.add_argument("--fraction", type=float, default=0.6, help="share annotated")
    parser.add_argument("--deep-only", action="store_true",
                        help="the demo space's deep designs only (see deep_space)")
    parser.add_argument("--work", type=Path, default=None,
                        help="keep the data and studies in this new folder (default: a "
                        "temporary one, removed at the end)")  # fmt: skip
    args = parser.parse_args()
    if args.work is not None and args.work.exists():
        raise SystemExit(f"--work: {args.work} exists; name a new folder")
    shape = (args.shape[0], args.shape[1], args.shape[2])
    print(
        "command: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/asha_bench.py "
        f"--seeds {args.seeds} --budget {args.budget} --max-epochs {args.max_epochs} "
        f"--grace-period {args.grace_period} --reduction-factor {args.reduction_factor:g} "
        f"--volumes {args.volumes} --shape {' '.join(map(str, shape))} "
        f"--fraction {args.fraction:g}{' --deep-only' * args.deep_only}"
    )
    print(f"synthetic {PRESET} data with classes: {args.volumes} volumes {list(shape)}, "
          f"{args.fraction:g} annotated from the truth, the rest spread; demo classifier study "
          f"(smac, concurrency 2, {SPACE.relative_to(PROJECT_ROOT)}: "
          f"{'its deep designs only' if args.deep_only else 'deep and feature designs'}), "
          f"{args.budget} trials, max_epochs {args.max_epochs}; asha: grace_period "
          f"{args.grace_period}, reduction_factor {args.reduction_factor:g}; epochs count deep "
          "trials only (feature trials train none and are never stopped)")  # fmt: skip
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    header = (f"{'seed':>4} {'labels':>6} | {'fifo ep':>7} {'asha ep':>7} | {'fifo s':>6} "
              f"{'asha s':>6} | {'fifo tr s':>9} {'asha tr s':>9} | {'fifo best':>14} "
              f"{'asha best':>14} | {'stopped':>9}")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="aop-asha-bench-") as tmp:
        for seed in range(args.seeds):
            project = (args.work or Path(tmp)) / f"seed{seed}"
            project.mkdir(parents=True)
            data = labelled_dataset(project / "data", seed, shape, args.volumes, args.fraction)
            if data["manual"] < MIN_LABELS:
                raise SystemExit(f"seed {seed}: {data['manual']} manual labels, fewer than "
                                 f"{MIN_LABELS}: raise --fraction or --volumes")  # fmt: skip
            per_class = ", ".join(f"{k} {v}" for k, v in sorted(data["per_class"].items()))
            print(f"seed {seed}: {data['manual']} manual labels ({per_class}), "
                  f"{data['spread']} spread", flush=True)  # fmt: skip
            row = {arm: run_arm(project, arm, data["path"], seed, args) for arm in ARMS}
            row["seed"], row["labels"] = seed, data["manual"]
            rows.append(row)
            fifo, asha = row["fifo"], row["asha"]
            if seed == 0:
                print(header)
            print(f"{seed:>4} {data['manual']:>6} | {fifo['epochs']:>7} {asha['epochs']:>7} | "
                  f"{fifo['wall']:>6.0f} {asha['wall']:>6.0f} | {fifo['trials_s']:>9.0f} "
                  f"{asha['trials_s']:>9.0f} | {fifo['best']:>6.3f} ({fifo['best_design']:<5}) "
                  f"{asha['best']:>6.3f} ({asha['best_design']:<5}) | "
                  f"{asha['stopped']:>2} of {asha['deep']:>2}", flush=True)  # fmt: skip
    ray.shutdown()

    def total(arm: str, key: str) -> float:
        return sum(r[arm][key] for r in rows)

    epochs = {arm: total(arm, "epochs") for arm in ARMS}
    wall = {arm: total(arm, "wall") for arm in ARMS}
    trials_s = {arm: total(arm, "trials_s") for arm in ARMS}
    mean_best = {arm: statistics.mean(r[arm]["best"] for r in rows) for arm in ARMS}
    difference = mean_best["asha"] - mean_best["fifo"]
    ratio = epochs["asha"] / epochs["fifo"] if epochs["fifo"] else float("nan")
    met = ratio <= 0.5 and difference >= -0.02
    print(f"deep trials: fifo {sum(r['fifo']['deep'] for r in rows)}, asha "
          f"{sum(r['asha']['deep'] for r in rows)}, of which asha stopped "
          f"{sum(r['asha']['stopped'] for r in rows)}")  # fmt: skip
    print(f"epochs over {args.seeds} seeds: fifo {epochs['fifo']:g}, asha {epochs['asha']:g}; "
          f"asha / fifo = {ratio:.2f} (goal <= 0.5)")  # fmt: skip
    print(f"study wall time: fifo {wall['fifo']:.0f} s, asha {wall['asha']:.0f} s; asha / fifo "
          f"= {wall['asha'] / wall['fifo']:.2f}; trials' own time: fifo {trials_s['fifo']:.0f} s, "
          f"asha {trials_s['asha']:.0f} s; asha / fifo = "
          f"{trials_s['asha'] / trials_s['fifo']:.2f}")  # fmt: skip
    print(f"mean final best {METRIC}: fifo {mean_best['fifo']:.4f}, asha {mean_best['asha']:.4f}"
          f"; asha - fifo = {difference:+.4f} (goal >= -0.02)")  # fmt: skip
    print(f"goal {'met' if met else 'not met'}")


if __name__ == "__main__":
    main()
