"""Warm start against cold start: trials a segmentation study needs to reach the cold best.

For each seed ``s``: a source study on the synthetic benchmark of seed ``A = 1000 + s`` (gp,
``--source-budget`` trials), then, on the benchmark of seed ``B = 2000 + s`` (other volumes of
the same kind, as the next batch of an experiment would be), two studies with the same searcher
(gp), search seed and budget: one warm-started from the source (``search.warm_start``), one
cold. Each is a whole study through :func:`aop.tuning.study.run_study` (Ray Tune, MLflow), with
the ``classical`` model only and no comparison searches.

For each seed it prints the cold study's final best IPQ, the trials the cold study needed to
reach it and the trials the warm study needed to reach it (``>N`` when it did not within its
budget), then the medians over the seeds and their ratio warm / cold (the goal: 0.5 or less)::

    .venv/bin/python benchmarks/warm_start_bench.py [--seeds 5] [--budget 20] \\
        [--source-budget 30] [--volumes 3] [--no-start-point]

Every study first evaluates the segmentation kind's start point ``zeros`` (no post-processing),
the warm one too. When that start point is the cold study's final best, both need one trial:
``--no-start-point`` gives all three studies a search space without it (Table III with
``start: {zeros: []}``), so that the count measures what the searchers find.
"""

from __future__ import annotations

import argparse
import math
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

SHAPE = [20, 48, 48]


def study(project: Path, name: str, data_seed: int, search_seed: int, budget: int,
          volumes: int, warm_start: list[str] | None = None,
          start_point: bool = True) -> list[dict[str, Any]]:  # fmt: skip
    """Run one segmentation study in ``project/name``; its gp records in trial order."""
    space = "search_spaces/segmentation.yaml"
    if not start_point:
        raw = read_yaml(PROJECT_ROOT / space)
        (project / "space.yaml").write_text(yaml.safe_dump({**raw, "start": {"zeros": []}}))
        space = str(project / "space.yaml")
    exp = parse_experiment(
        {
            "name": name,
            "data": {"synth": {"n_volumes": volumes, "shape": SHAPE, "seed": data_seed,
                               "preset": "nuclei", "options": {"touching_fraction": 0.5}}},
            "models": [{"name": "classical"}],
            "search": {"searcher": "gp", "budget": budget, "seed": search_seed,
                       "concurrency": 1, "warm_start": warm_start or []},
            "search_space": space,
            "storage": {"study_dir": name},
            "comparison": {"baseline": False, "random": False},
            "ray": {"num_cpus": 2},
        },  # fmt: skip
        source=f"{name}.yaml",
        base=project,
    )
    records = run_study(exp, verbose=-1).records["gp"]
    return sorted(records, key=lambda r: r["iteration"])


def trials_to_reach(records: list[dict[str, Any]], target: float) -> int | None:
    """The number of trials until the running best IPQ reaches ``target`` (None: never)."""
    for count, record in enumerate(records, start=1):
        if record["metrics"]["ipq"] >= target - 1e-12:
            return count
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--budget", type=int, default=20)
    parser.add_argument("--source-budget", type=int, default=30)
    parser.add_argument("--volumes", type=int, default=3)
    parser.add_argument("--no-start-point", dest="start_point", action="store_false",
                        help="search spaces without the start point zeros")  # fmt: skip
    args = parser.parse_args()
    print(
        "command: .venv/bin/python benchmarks/warm_start_bench.py "
        f"--seeds {args.seeds} --budget {args.budget} --source-budget {args.source_budget} "
        f"--volumes {args.volumes}" + ("" if args.start_point else " --no-start-point")
    )
    print(f"synthetic nuclei benchmarks of {args.volumes} volumes {SHAPE}, model classical, "
          f"searcher gp, concurrency 1; source {args.source_budget} trials, warm and cold "
          f"{args.budget} trials each; start point zeros: "
          f"{'evaluated first' if args.start_point else 'none'}")  # fmt: skip
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    header = (f"{'seed':>4} {'A':>5} {'B':>5} {'cold best':>9} {'warm best':>9} "
              f"{'cold needs':>10} {'warm needs':>10} {'s':>5}")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory(prefix="aop-warm-bench-") as tmp:
        print(header)
        for seed in range(args.seeds):
            start = time.perf_counter()
            project = Path(tmp) / f"seed{seed}"
            project.mkdir()
            a, b = 1000 + seed, 2000 + seed
            run = {"volumes": args.volumes, "start_point": args.start_point}
            study(project, "source", a, seed, args.source_budget, **run)
            warm = study(project, "warm", b, seed, args.budget, warm_start=["source"], **run)
            cold = study(project, "cold", b, seed, args.budget, **run)
            best = max(r["metrics"]["ipq"] for r in cold)
            cold_needs = trials_to_reach(cold, best)
            warm_needs = trials_to_reach(warm, best)
            warm_best = max(r["metrics"]["ipq"] for r in warm)
            rows.append((cold_needs, warm_needs))
            shown = str(warm_needs) if warm_needs is not None else f">{args.budget}"
            print(f"{seed:>4} {a:>5} {b:>5} {best:>9.4f} {warm_best:>9.4f} {cold_needs:>10} "
                  f"{shown:>10} {time.perf_counter() - start:>5.0f}", flush=True)  # fmt: skip
    # a warm study that never reached the cold best counts as one trial past its budget
    cold_median = statistics.median(c for c, _ in rows)
    warm_median = statistics.median(w if w is not None else args.budget + 1 for _, w in rows)
    reached = sum(w is not None for _, w in rows)
    ratio = warm_median / cold_median if cold_median else math.nan
    print(f"median trials to reach the cold study's final best over {args.seeds} seeds: "
          f"cold {cold_median:g}, warm {warm_median:g} (warm reached it in {reached} of "
          f"{args.seeds}); warm / cold = {ratio:.2f} (goal <= 0.5)")  # fmt: skip


if __name__ == "__main__":
    main()
