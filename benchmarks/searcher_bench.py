"""Search algorithms side by side: random, tpe, gp and smac on two landscapes, same seeds.

Drives each Ray Tune searcher's ``suggest`` / ``on_trial_complete`` loop directly (no Tuner, no
trial processes), so only the search algorithms differ:

``random``  Optuna ``RandomSampler`` through Ray's ``OptunaSearch``
``tpe``     hyperopt's TPE through Ray's ``HyperOptSearch``
``gp``      Optuna ``GPSampler`` through ``OptunaSearch`` (as in ``aop.tuning.searchers``)
``smac``    ``aop.tuning.smac_search.SMACSearch`` (random forest + expected improvement)

Landscapes:

``categorical``  shaped like the classifier study: 6 encoders x 2 heads x 3 pretraining
                 strategies x 2 preprocessings, a deterministic table of accuracies with main
                 effects and pairwise interactions (noise-free lookup). Optimum: the table's max.
``segmentation`` the segmentation space (model choice + the seven post-processing parameters)
                 on cached predictions of a tiny synthetic benchmark: the ``classical`` model and
                 a damaged copy of the truth as the two models; objective mean IPQ
                 (``aop.tuning.segmentation_trial.score_volume``). Optimum: the best value any
                 searcher found in this run (the true optimum is unknown).

For each searcher it prints the median number of trials to reach 99 % of the optimum (over the
seeds; ``>T`` when fewer than half the seeds reach it) and the median (and min) best value within
15 and within 40 trials::

    .venv/bin/python benchmarks/searcher_bench.py [--seeds 10] [--trials 40] [--landscape both]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

import numpy as np  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402

SEARCHERS = ("random", "tpe", "gp", "smac")
N_STARTUP = 10
ENCODERS = ["resnet18", "resnet50", "efficientnet_b0", "convnext_tiny", "vit_small", "cellpose_sam"]
HEADS = ["slice", "volume"]
PRETRAINING = ["none", "imagenet", "self_supervised"]
PREPROCESSING = ["mask", "distance"]


def make_searcher(name: str, space: dict[str, Any], seed: int) -> Searcher:
    """One of :data:`SEARCHERS`, maximising ``score``, seeded."""
    if name in ("random", "gp"):
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        if name == "random":
            sampler = optuna.samplers.RandomSampler(seed=seed)
        else:
            sampler = optuna.samplers.GPSampler(
                seed=seed,
                n_startup_trials=N_STARTUP,
                deterministic_objective=False,
                independent_sampler=optuna.samplers.RandomSampler(seed=seed),
                warn_independent_sampling=False,
            )
        return OptunaSearch(space=space, metric="score", mode="max", sampler=sampler)
    if name == "tpe":
        from ray.tune.search.hyperopt import HyperOptSearch

        return HyperOptSearch(
            space=space,
            metric="score",
            mode="max",
            n_initial_points=N_STARTUP,
            random_state_seed=seed,
        )
    if name == "smac":
        from aop.tuning.smac_search import SMACSearch

        return SMACSearch(space, metric="score", mode="max", seed=seed, n_initial_points=N_STARTUP)
    raise ValueError(name)


def run(searcher: Searcher, objective: Callable[[dict], float], trials: int) -> list[float]:
    """The objective values of ``trials`` sequential suggestions."""
    values = []
    for i in range(trials):
        config = searcher.suggest(f"t{i}")
        if config is None or config == Searcher.FINISHED:
            break
        value = float(objective(config))
        searcher.on_trial_complete(f"t{i}", {"score": value})
        values.append(value)
    return values


# ------------------------------------------------------------------------------------------------
# Landscapes
# ------------------------------------------------------------------------------------------------


def categorical_landscape(seed: int = 2026) -> tuple[dict[str, Any], Callable, float]:
    """Space, objective and optimum of the classifier-shaped table (fixed, noise-free)."""
    rng = np.random.default_rng(seed)
    shape = (len(ENCODERS), len(HEADS), len(PRETRAINING), len(PREPROCESSING))
    encoder = rng.normal(0, 0.06, shape[0])
    head = np.array([0.0, 0.02])
    pretraining = np.array([-0.05, 0.02, 0.03])
    prep = np.array([0.0, 0.01])
    table = 0.70 + (
        encoder[:, None, None, None]
        + head[None, :, None, None]
        + pretraining[None, None, :, None]
        + prep[None, None, None, :]
        + rng.normal(0, 0.04, shape[:2])[:, :, None, None]  # encoder x head
        + rng.normal(0, 0.04, (shape[0], shape[2]))[:, None, :, None]  # encoder x pretraining
        + rng.normal(0, 0.02, (shape[2], shape[3]))[None, None, :, :]  # pretraining x prep
    )
    table = np.clip(table, 0.05, 0.99)
    space = {
        "encoder": tune.choice(ENCODERS),
        "head": tune.choice(HEADS),
        "pretraining": tune.choice(PRETRAINING),
        "preprocessing": tune.choice(PREPROCESSING),
        "epochs": 20,
    }

    def objective(config: dict) -> float:
        return float(
            table[
                ENCODERS.index(config["encoder"]),
                HEADS.index(config["head"]),
                PRETRAINING.index(config["pretraining"]),
                PREPROCESSING.index(config["preprocessing"]),
            ]
        )

    return space, objective, float(table.max())


def segmentation_landscape() -> tuple[dict[str, Any], Callable]:
    """Space and objective (mean IPQ) on cached predictions of a tiny synthetic benchmark."""
    from aop.segmentation.models import build_model
    from aop.segmentation.params import PARAMETER_RANGES
    from aop.synth import simulate
    from aop.synth.damage import damage_labels
    from aop.tuning.segmentation_trial import score_volume

    spacing = (2.0, 1.0, 1.0)
    volumes = []
    classical = build_model("classical")
    for seed in range(2):
        image, labels = simulate((16, 40, 40), spacing, seed=seed, n_objects=8)
        damaged = damage_labels(labels, "shrink", fraction=0.6, amount=2.0, seed=seed)
        damaged = damage_labels(damaged, "merge", fraction=0.4, seed=seed, spacing=spacing)
        predictions = {"classical": classical.predict(image, spacing), "damaged": damaged}
        volumes.append((image, labels, predictions))
    space: dict[str, Any] = {"model": tune.choice(["classical", "damaged"])}
    for name, (kind, low, high) in PARAMETER_RANGES.items():
        if kind is int:
            space[name] = tune.randint(int(low), int(high) + 1)
        else:
            space[name] = tune.uniform(low, high)
    names = list(PARAMETER_RANGES)

    def objective(config: dict) -> float:
        params = {n: config[n] for n in names}
        scores = [
            score_volume(pred[config["model"]], labels, image, params, spacing)["ipq"]
            for image, labels, pred in volumes
        ]
        return float(np.mean(scores))

    return space, objective


# ------------------------------------------------------------------------------------------------
# Table
# ------------------------------------------------------------------------------------------------


def trials_to_reach(values: list[float], target: float) -> float:
    """1-based index of the first value >= target (inf if none)."""
    for i, value in enumerate(values):
        if value >= target:
            return float(i + 1)
    return float("inf")


def bench(name: str, space, objective, seeds: int, trials: int) -> dict[str, list[list[float]]]:
    runs: dict[str, list[list[float]]] = {}
    for searcher in SEARCHERS:
        start = time.perf_counter()
        runs[searcher] = [
            run(make_searcher(searcher, space, seed), objective, trials) for seed in range(seeds)
        ]
        print(f"  [{name}] {searcher}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return runs


def print_table(title: str, runs: dict[str, list[list[float]]], optimum: float, trials: int):
    print(f"\n{title}: optimum {optimum:.4f}, target 99 % = {0.99 * optimum:.4f}")
    budgets = [b for b in (15, 40) if b <= trials] or [trials]
    head = f"{'searcher':<8} {'median trials to 99 %':>22} {'reached':>8}"
    for b in budgets:
        head += f" {f'best@{b} median':>15} {f'best@{b} min':>12}"
    print(head)
    for searcher, per_seed in runs.items():
        reach = [trials_to_reach(v, 0.99 * optimum) for v in per_seed]
        median = float(np.median(reach))
        shown = f"{median:.1f}" if np.isfinite(median) else f">{trials}"
        row = f"{searcher:<8} {shown:>22} {sum(np.isfinite(reach)):>4}/{len(reach):<3}"
        for b in budgets:
            best = [max(v[:b]) for v in per_seed]
            row += f" {np.median(best):>15.4f} {min(best):>12.4f}"
        print(row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument(
        "--landscape", choices=("categorical", "segmentation", "both"), default="both"
    )
    args = parser.parse_args()
    print(
        "command: .venv/bin/python benchmarks/searcher_bench.py "
        f"--seeds {args.seeds} --trials {args.trials} --landscape {args.landscape}"
    )
    print(f"seeds 0..{args.seeds - 1}, {args.trials} sequential trials per run")
    if args.landscape in ("categorical", "both"):
        space, objective, optimum = categorical_landscape()
        runs = bench("categorical", space, objective, args.seeds, args.trials)
        print_table("(a) categorical 6x2x3x2 (optimum = table max)", runs, optimum, args.trials)
    if args.landscape in ("segmentation", "both"):
        space, objective = segmentation_landscape()
        runs = bench("segmentation", space, objective, args.seeds, args.trials)
        optimum = max(max(v) for per_seed in runs.values() for v in per_seed)
        print_table(
            "(b) segmentation space on cached predictions, mean IPQ "
            "(optimum = best value any searcher found)",
            runs,
            optimum,
            args.trials,
        )


if __name__ == "__main__":
    main()
