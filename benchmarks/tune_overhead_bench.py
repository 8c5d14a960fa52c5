"""Ray Tune overhead of the segmentation search: trials per second for trivial trials.

Runs the study's search machinery (:func:`aop.tuning.study.run_search`: seeded Optuna searcher,
concurrency limiter, trial recorder, reused actors) on a trial that does no work, with 1 and 2
concurrent workers, and prints trials/s and the 2-worker/1-worker ratio measured in the same run.
The per-trial overhead sets the floor under every search: 120 trials at 0.1 s is 12 s.

    .venv/bin/python benchmarks/tune_overhead_bench.py [--trials 40]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

import ray  # noqa: E402
from ray import tune  # noqa: E402

from aop.tuning.searchers import make_searcher  # noqa: E402
from aop.tuning.segmentation import table_iii_space  # noqa: E402
from aop.tuning.study import run_search  # noqa: E402


def trivial_trial(config: dict) -> None:
    """Report a score without doing any work."""
    tune.report({"ipq": 0.5, "sq": 0.5, "rq": 1.0, "iq": 1.0, "model": config["model"]})


def trials_per_second(n_trials: int, concurrency: int, searcher: str) -> float:
    space = table_iii_space(["a", "b"])
    with tempfile.TemporaryDirectory() as study:
        start = time.perf_counter()
        records = run_search(
            f"{searcher}_c{concurrency}",
            tune.with_resources(trivial_trial, {"cpu": 1}),
            study_dir=study,
            kind="segmentation",
            param_space={},
            num_samples=n_trials,
            searcher=make_searcher(searcher, space, metric="ipq", concurrency=concurrency),
            concurrency=concurrency,
            verbose=0,
        )
        elapsed = time.perf_counter() - start
    assert len(records) == n_trials
    return n_trials / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    trials_per_second(4, 1, "random")  # warm-up: worker start, imports
    print(f"{'searcher':<8} {'workers':>7} {'trials/s':>9} {'s/trial':>8}")
    for searcher in ("random", "gp"):
        rates = {}
        for concurrency in (1, 2):
            rates[concurrency] = trials_per_second(args.trials, concurrency, searcher)
            rate = rates[concurrency]
            print(f"{searcher:<8} {concurrency:>7} {rate:>9.2f} {1 / rate:>8.3f}")
        print(f"{searcher:<8} ratio 2 workers / 1 worker: {rates[2] / rates[1]:.2f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
