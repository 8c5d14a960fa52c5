"""Volume fidelity: compute and final best IPQ of ASHA over volumes against full scoring.

Each run is a whole aop segmentation study (``aop.tuning.study.run_study``: Ray Tune trials,
records, MLflow) on a synthetic nuclei benchmark of ten volumes (``--shape``, default 48x128x128,
predicted once by the ``classical`` model into a shared cache) over the whole Table III space
(``search_spaces/segmentation.yaml``), with the same searcher (``gp``), seed and budget in both
arms:

``full``
    ``search.scheduler: fifo``: every trial is scored on all ten volumes.
``fidelity``
    ``search.scheduler: {name: asha, grace_period: 1, reduction_factor: 3}``: successive halving
    over the volumes. A trial reports after each volume in benchmark order; the rungs are at 1,
    3 and 9 volumes, and a trial goes on past a rung only while it is in the best third of the
    trials recorded there. Grace period 1: one volume is a tenth of a trial's cost, and the
    volumes are draws of one simulator, so one volume already tells the configurations that
    post-processing ruins (IPQ near 0) from the rest. Reduction factor 3: aop's default, the
    usual choice for successive halving (Li et al., Hyperband and ASHA; Ray Tune's own default is
    4); on ten volumes it leaves three rungs below the end, where 2 would spend four rungs and
    more volumes on each trial. ``--grace-period`` and ``--reduction-factor`` change both.
    The searcher is told a stopped trial's mean over its first volumes scaled to all ten by the
    trials that ran to their end (:class:`aop.tuning.stops.ScaledStops`).

For every seed both studies run one after the other on the same machine (the first arm
alternating between seeds), two trials at a time (``search.concurrency: 2`` on two cores): each
trial then holds one volume task, scores one volume at a time, and a trial stopped at a rung has
no other volume in flight, so no work of a stopped trial is left uncounted.

Measured per arm: **core-seconds**, the sum over the main search's trials of the scorer's
seconds per volume (post-processing and scoring, timed in the volume task) times the volumes the
trial scored times the CPUs of a volume task (1); the records hold each trial's mean
``seconds_per_volume`` and its ``volumes`` (or its ``per_volume``). **Wall seconds** of the whole
study (Ray Tune's trial start-up, MLflow logging and the searcher included). **Best IPQ**: the
study's final best (``best.yaml``), a trial scored on every volume in both arms.

``gp`` evaluates the kind's start point first (every post-processing step off). On this
benchmark the classical model's prediction is best left as it is, and a trial that leads the
trials recorded at its rungs is never stopped: the rows say whether each arm's best is that
start point, in which case the best-IPQ comparison shows that fidelity keeps the best, not that
it finds as good a configuration as full scoring does where post-processing helps.
``--no-start-point`` gives both arms Table III without that start point (``start: {zeros:
[]}``), so that each arm's best is what its search found.

Prints one row per seed, then the mean of each arm, the compute ratio full / fidelity (per seed,
its mean, and the ratio of the totals) and the best-IPQ difference fidelity - full; writes the
rows to ``OUT/volume_fidelity_bench.json``::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/volume_fidelity_bench.py [--seeds 5]
        [--trials 40] [--shape 48 128 128] [--no-start-point] [--out WORK]
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
N_VOLUMES = 10
CONCURRENCY = 2
CPUS_PER_VOLUME = 1.0
ARMS = {
    "full": {"name": "fifo"},
    "fidelity": {"name": "asha", "grace_period": 1, "reduction_factor": 3},
}


def make_benchmark(folder: Path, shape: tuple[int, int, int]) -> Path:
    """The synthetic nuclei benchmark of ten volumes that every study of the run scores on."""
    from aop.synth import preset_params
    from aop.synth.dataset import write_synthetic_dataset

    root = folder / "benchmark"
    write_synthetic_dataset(root, preset_params("nuclei"), shape, N_VOLUMES, seed=0,
                            preset="nuclei")  # fmt: skip
    return root


def search_space(folder: Path, start_point: bool) -> Path:
    """Table III, or (``--no-start-point``) Table III without its start point ``zeros``."""
    table = ROOT / "search_spaces" / "segmentation.yaml"
    if start_point:
        return table
    path = folder / "space_no_start.yaml"
    raw = yaml.safe_load(table.read_text())
    path.write_text(yaml.safe_dump({**raw, "start": {"zeros": []}}, sort_keys=False))
    return path


def run_one(folder: Path, benchmark: Path, arm: str, seed: int, trials: int,
            start_point: bool = True, scheduler: dict | None = None) -> dict[str, Any]:  # fmt: skip
    """One gp segmentation study of ``arm``; its main search's records, best and wall time."""
    from aop.tuning.kinds import load_experiment
    from aop.tuning.study import run_study

    raw = {
        "name": f"fidelity-{arm}-{seed}",
        "data": {"benchmark": str(benchmark)},
        "models": [{"name": "classical"}],
        "search_space": str(search_space(folder, start_point)),
        "search": {"searcher": "gp", "budget": trials, "seed": seed,
                   "concurrency": CONCURRENCY, "resources": {"cpus": CPUS_PER_VOLUME},
                   "scheduler": scheduler or ARMS[arm]},
        "storage": {"study_dir": str(folder / f"{arm}-{seed}"),
                    "cache_dir": str(folder / "predictions")},
        "comparison": {"baseline": False, "random": False},
    }  # fmt: skip
    path = folder / f"{arm}-{seed}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    start = time.perf_counter()
    result = run_study(load_experiment(path), verbose=-1)
    return {"records": result.records["gp"], "best": result.best,
            "wall_s": time.perf_counter() - start}  # fmt: skip


def volumes_scored(record: dict[str, Any]) -> int:
    """The volumes a trial was scored on (``volumes`` under fidelity, else its per-volume)."""
    return int(record.get("volumes") or len(record["per_volume"]))


def core_seconds(records: list[dict[str, Any]]) -> float:
    """Scorer core-seconds of a search: seconds per volume x volumes scored x CPUs per task."""
    return float(sum(r["seconds_per_volume"] * volumes_scored(r) * CPUS_PER_VOLUME
                     for r in records))  # fmt: skip


def summarise(run: dict[str, Any]) -> dict[str, Any]:
    records = run["records"]
    return {
        "core_s": core_seconds(records),
        "wall_s": run["wall_s"],
        "best_ipq": float(run["best"]["metrics"]["ipq"]),
        "best_volumes": len(run["best"]["per_volume"]),
        # every post-processing step off: the start point that gp evaluates first
        "best_is_start": all(v == 0 for k, v in run["best"]["params"].items() if k != "model"),
        "volumes": sum(volumes_scored(r) for r in records),
        "stopped": sum(1 for r in records if r.get("stopped_at")),
        "trials": len(records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--shape", type=int, nargs=3, default=(48, 128, 128))
    parser.add_argument("--grace-period", type=int, default=1)
    parser.add_argument("--reduction-factor", type=float, default=3.0)
    parser.add_argument("--no-start-point", dest="start_point", action="store_false",
                        help="Table III without its start point zeros: the searcher must find "
                        "the best, so the best-IPQ comparison measures the search")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="folder of the JSON (default: a "
                        "temporary folder, removed)")  # fmt: skip
    args = parser.parse_args()
    shape = tuple(args.shape)
    print(f"command: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} .venv/bin/python "
          f"benchmarks/volume_fidelity_bench.py --seeds {args.seeds} --trials {args.trials} "
          f"--shape {' '.join(map(str, shape))} --grace-period {args.grace_period} "
          f"--reduction-factor {args.reduction_factor:g}"
          f"{'' if args.start_point else ' --no-start-point'}")  # fmt: skip
    arms = {**ARMS, "fidelity": {"name": "asha", "grace_period": args.grace_period,
                                 "reduction_factor": args.reduction_factor}}  # fmt: skip
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="aop-fidelity-bench-") as tmp:
        folder = Path(tmp)
        benchmark = make_benchmark(folder, shape)
        for seed in range(args.seeds):
            order = list(ARMS) if seed % 2 == 0 else list(reversed(ARMS))
            runs = {arm: summarise(run_one(folder, benchmark, arm, seed, args.trials,
                                           args.start_point, arms[arm]))
                    for arm in order}  # fmt: skip
            full, fid = runs["full"], runs["fidelity"]
            row = {"seed": seed, "first": order[0],
                   **{f"{key}_{arm}": value for arm, run in runs.items()
                      for key, value in run.items()}}  # fmt: skip
            rows.append(row)
            print(f"seed {seed}: core-s full {full['core_s']:.1f} / fidelity {fid['core_s']:.1f} "
                  f"({full['core_s'] / fid['core_s']:.2f}x); wall s {full['wall_s']:.0f} / "
                  f"{fid['wall_s']:.0f}; best IPQ {full['best_ipq']:.4f} / {fid['best_ipq']:.4f} "
                  f"({fid['best_ipq'] - full['best_ipq']:+.4f}, scored on {full['best_volumes']}"
                  f" / {fid['best_volumes']} volumes); volumes scored {full['volumes']} / "
                  f"{fid['volumes']}; stopped {fid['stopped']} of {fid['trials']} trials; best "
                  f"is the start point {full['best_is_start']} / {fid['best_is_start']} "
                  f"({order[0]} ran first)", flush=True)  # fmt: skip
    ray.shutdown()

    def column(key: str, arm: str) -> np.ndarray:
        return np.array([r[f"{key}_{arm}"] for r in rows], dtype=float)

    print(f"\n{args.seeds} seeds, {args.trials} trials of gp per study, {N_VOLUMES} volumes of "
          f"{'x'.join(map(str, shape))}, {CONCURRENCY} trials at a time on 2 CPUs:")
    print(f"{'arm':<9} {'core-s':>8} {'wall s':>8} {'best IPQ':>9} {'volumes':>8} {'stopped':>8} "
          f"{'best=start':>10}")
    for arm in ARMS:
        print(f"{arm:<9} {column('core_s', arm).mean():>8.1f} {column('wall_s', arm).mean():>8.1f}"
              f" {column('best_ipq', arm).mean():>9.4f} {column('volumes', arm).mean():>8.1f} "
              f"{column('stopped', arm).mean():>8.1f} "
              f"{int(column('best_is_start', arm).sum()):>5d} of {len(rows)}")  # fmt: skip
    ratio = column("core_s", "full") / column("core_s", "fidelity")
    wall = column("wall_s", "full") / column("wall_s", "fidelity")
    difference = column("best_ipq", "fidelity") - column("best_ipq", "full")
    total = column("core_s", "full").sum() / column("core_s", "fidelity").sum()
    print(f"compute ratio full / fidelity: per seed {', '.join(f'{r:.2f}' for r in ratio)}; "
          f"mean {ratio.mean():.2f}, min {ratio.min():.2f}; ratio of totals {total:.2f}")
    print(f"wall ratio full / fidelity: mean {wall.mean():.2f}, min {wall.min():.2f}")
    print(f"best IPQ fidelity - full: per seed {', '.join(f'{d:+.4f}' for d in difference)}; "
          f"mean {difference.mean():+.4f}, worst {difference.min():+.4f}")
    met = ratio.mean() >= 2.0 and abs(difference.mean()) <= 0.01
    print(f"goal (>= 2x less compute, mean best within 0.01): {'met' if met else 'not met'}")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "volume_fidelity_bench.json").write_text(json.dumps(rows, indent=2))
        print(f"rows: {args.out / 'volume_fidelity_bench.json'}", file=sys.stderr)


if __name__ == "__main__":
    main()
