"""Multi-objective search: hypervolume after 20 trials, multi-objective GP against random search.

Each run is a whole aop segmentation study (``aop.tuning.study.run_study``: Ray Tune trials,
records, MLflow) with two objectives, ``ipq`` (max) and ``seconds_per_volume`` (min, the trial's
post-processing and scoring time per volume), on a tiny synthetic nuclei benchmark (3 volumes of
24x64x64, predicted once by the ``classical`` model into a shared cache) over the whole Table III
space (``search_spaces/segmentation.yaml``). For every seed the ``gp`` study (``GPSampler``, log
expected hypervolume improvement, after its start point and random startup trials) and the
``random`` study run one after the other on the same machine, one trial at a time, so that both see
the same load when they time their trials.

The hypervolume after ``--trials`` trials (:func:`aop.analysis.pareto.hypervolume_history`) scales
each objective to [0, 1] between the best and worst value of that seed's trials of both studies and
puts the reference point at 1.1 in each, so the two studies of a seed compare on one box (1.21 would
be one trial best in both).

``gp`` evaluates the kind's start point first (every post-processing step off), as in every aop
study, and ``random`` has none. That point is both accurate and fast here, so a third arm,
``random+start``, is the gp study's start-point trial followed by the random study's first
``--trials`` - 1 trials: it tells what the GP's own suggestions add beyond the start point.

Prints one row per seed, the mean, median, min and max of each arm, the mean of the per-seed ratio
of gp to each other arm and the seeds gp wins; writes the rows to ``OUT/pareto_bench.json``::

    .venv/bin/python benchmarks/pareto_bench.py [--seeds 5] [--trials 20] [--out WORK]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

import numpy as np  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = [{"metric": "ipq", "mode": "max"}, {"metric": "seconds_per_volume", "mode": "min"}]
SEARCHERS = ("gp", "random")
ARMS = (*SEARCHERS, "random+start")


def make_benchmark(folder: Path) -> Path:
    """The tiny synthetic nuclei benchmark every study of the run scores on."""
    from aop.synth import preset_params
    from aop.synth.dataset import write_synthetic_dataset

    root = folder / "benchmark"
    write_synthetic_dataset(root, preset_params("nuclei"), (24, 64, 64), 3, seed=0,
                            preset="nuclei")  # fmt: skip
    return root


def run_one(folder: Path, benchmark: Path, searcher: str, seed: int, trials: int) -> list[dict]:
    """One segmentation study with two objectives; returns its main search's trial records."""
    from aop.tuning.kinds import load_experiment
    from aop.tuning.study import run_study

    raw = {
        "name": f"pareto-{searcher}-{seed}",
        "data": {"benchmark": str(benchmark)},
        "models": [{"name": "classical"}],
        "search_space": str(ROOT / "search_spaces" / "segmentation.yaml"),
        "search": {"searcher": searcher, "budget": trials, "seed": seed, "concurrency": 1},
        "storage": {"study_dir": str(folder / f"{searcher}-{seed}"),
                    "cache_dir": str(folder / "predictions")},
        "comparison": {"baseline": False, "random": False},
        "objectives": OBJECTIVES,
    }  # fmt: skip
    path = folder / f"{searcher}-{seed}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return run_study(load_experiment(path), verbose=-1).records[searcher]


def arms(runs: dict[str, list[dict]], trials: int) -> dict[str, list[dict]]:
    """The first ``trials`` trials of each study, and ``random+start`` (see the docstring)."""
    first = {name: sorted(records, key=lambda r: r["iteration"])[:trials]
             for name, records in runs.items()}  # fmt: skip
    start = {**first["gp"][0], "iteration": 0}
    shifted = [{**r, "iteration": r["iteration"] + 1} for r in first["random"][: trials - 1]]
    return {**first, "random+start": [start, *shifted]}


def final_hypervolumes(trials_by_arm: dict[str, list[dict]]) -> dict[str, float]:
    """Each arm's hypervolume after its trials, on the bounds of all of them."""
    from aop.analysis.pareto import hypervolume_history, objective_bounds

    every = [r for records in trials_by_arm.values() for r in records]
    bounds = objective_bounds(every, OBJECTIVES)
    return {name: hypervolume_history(records, OBJECTIVES, bounds)[-1]
            for name, records in trials_by_arm.items()}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="folder of the JSON (default: a "
                        "temporary folder, removed)")  # fmt: skip
    args = parser.parse_args()
    print(f"command: .venv/bin/python benchmarks/pareto_bench.py --seeds {args.seeds} "
          f"--trials {args.trials}")  # fmt: skip
    import ray

    from aop.analysis.pareto import pareto_front

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="aop-pareto-bench-") as tmp:
        folder = Path(tmp)
        benchmark = make_benchmark(folder)
        for seed in range(args.seeds):
            runs, seconds = {}, {}
            for searcher in SEARCHERS:
                start = time.perf_counter()
                runs[searcher] = run_one(folder, benchmark, searcher, seed, args.trials)
                seconds[searcher] = time.perf_counter() - start
            trials_by_arm = arms(runs, args.trials)
            volumes = final_hypervolumes(trials_by_arm)
            fronts = {name: len(pareto_front(recs, OBJECTIVES)) for name, recs in runs.items()}
            row = {"seed": seed, **{f"hv_{n}": volumes[n] for n in ARMS},
                   **{f"front_{n}": fronts[n] for n in SEARCHERS},
                   **{f"best_ipq_{n}": max(r["metrics"]["ipq"] for r in runs[n])
                      for n in SEARCHERS},
                   **{f"seconds_{n}": seconds[n] for n in SEARCHERS}}  # fmt: skip
            rows.append(row)
            print(f"seed {seed}: hypervolume gp {volumes['gp']:.4f}, random "
                  f"{volumes['random']:.4f}, random+start {volumes['random+start']:.4f} (front "
                  f"{fronts['gp']} / {fronts['random']} trials; {seconds['gp']:.0f} s / "
                  f"{seconds['random']:.0f} s)", flush=True)  # fmt: skip
    ray.shutdown()
    values = {name: np.array([r[f"hv_{name}"] for r in rows]) for name in ARMS}
    print(f"\nhypervolume after {args.trials} trials, {args.seeds} seeds (reference 1.1 per "
          "scaled objective; maximum 1.21):")
    print(f"{'arm':<13} {'mean':>8} {'median':>8} {'min':>8} {'max':>8}")
    for name, hv in values.items():
        print(f"{name:<13} {hv.mean():>8.4f} {np.median(hv):>8.4f} {hv.min():>8.4f} "
              f"{hv.max():>8.4f}")  # fmt: skip
    gp = values["gp"]
    for other in ("random", "random+start"):
        ratio = gp / values[other]
        print(f"gp / {other} per seed: mean {ratio.mean():.3f}, median {np.median(ratio):.3f}; "
              f"gp higher on {int((gp > values[other]).sum())} of {args.seeds} seeds")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "pareto_bench.json").write_text(json.dumps(rows, indent=2))
        print(f"rows: {args.out / 'pareto_bench.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
