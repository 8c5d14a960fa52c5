"""Searchers and the segmentation study on Ray Tune, with real post-processing and IPQ."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from mlflow_helpers import study_tracker

from aop.errors import AopError
from aop.segmentation.postprocess import PARAMETER_RANGES
from aop.synth import simulate
from aop.synth.damage import damage_labels
from aop.tuning.kinds import parse_experiment
from aop.tuning.searchers import (
    available_searchers,
    make_searcher,
    optuna_distributions,
    register_searcher,
)
from aop.tuning.segmentation import parse_segmentation_space, table_iii_space
from aop.tuning.segmentation_trial import make_trainable, put_benchmark
from aop.tuning.study import run_search, run_study

ZEROS = {name: 0 for name in PARAMETER_RANGES}


def _space(models):
    return table_iii_space(list(models))


def seven(params):
    """The post-processing parameters of a record (without the model choice)."""
    return {k: v for k, v in params.items() if k != "model"}


def ipq(record):
    return record["metrics"]["ipq"]


def test_registry_and_unknown_searcher():
    assert {"gp", "tpe", "random", "smac"} <= set(available_searchers())
    with pytest.raises(AopError, match=r"search.searcher: unknown searcher 'cmaes'"):
        make_searcher("cmaes", _space(["a"]), metric="ipq")

    @register_searcher("gp-test-alias")
    def _alias(request):
        from aop.tuning.searchers import _SEARCHERS

        return _SEARCHERS["random"](request)

    searcher = make_searcher("gp-test-alias", _space(["a"]), metric="ipq")
    config = searcher.suggest("t0")
    assert set(config) == {"model", *PARAMETER_RANGES}


def test_optuna_space_matches_table_iii():
    dists = optuna_distributions(_space(["a", "b"]))
    assert list(dists["model"].choices) == ["a", "b"]
    assert (dists["erode_dilate"].low, dists["erode_dilate"].high) == (-10, 10)
    assert type(dists["erode_dilate"]).__name__ == "IntDistribution"
    assert (dists["split_sigma"].low, dists["split_sigma"].high) == (0.0, 1.0)
    narrowed = parse_segmentation_space(
        {"parameters": {"model": {"choice": ["a"]}, "open_close": {"int": [-2, 2]}}}, ["a", "b"]
    )
    dists = optuna_distributions(narrowed)
    assert set(dists) == {"model", "open_close"}
    assert (dists["open_close"].low, dists["open_close"].high) == (-2, 2)


@pytest.mark.parametrize("name", ["gp", "tpe"])
def test_first_suggestions_are_the_zero_start_of_each_model(name):
    space = _space(["a", "b"])
    searcher = make_searcher(
        name, space, metric="ipq", seed=3, concurrency=3, start_points=space.start("zeros")
    )
    first = [searcher.suggest(f"t{i}") for i in range(2)]
    assert first == space.start("zeros")
    assert first[0] == {"model": "a", **ZEROS}
    third = searcher.suggest("t2")
    assert third != first[0] and third != first[1]
    for key, (_, low, high) in PARAMETER_RANGES.items():
        assert low <= third[key] <= high
    # the concurrency limit holds back a fourth pending suggestion
    assert searcher.suggest("t3") is None


def test_random_searcher_is_seeded_and_starts_anywhere():
    a = [make_searcher("random", _space(["m"]), metric="ipq", seed=5).suggest("x")]
    b = [make_searcher("random", _space(["m"]), metric="ipq", seed=5).suggest("x")]
    assert a == b and a[0] != {"model": "m", **ZEROS}


# ------------------------------------------------------------------------------------------------
# On Ray
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shrunk_benchmark():
    """Two simulated volumes whose 'prediction' lost 2 voxels of boundary: dilation repairs it."""
    labels, images, shrunk = {}, {}, {}
    for i in range(2):
        image, gt = simulate((16, 40, 40), seed=10 + i, n_objects=6)
        name = f"v{i}"
        labels[name], images[name] = gt, image
        shrunk[name] = damage_labels(gt, "shrink", fraction=1.0, amount=2.0, seed=i)
    return {"shrunk": shrunk}, labels, images


def _two_worker_search(searcher, benchmark, study_dir, num_samples, seed, space=None):
    """A search over the shrunk benchmark with two trials at a time."""
    refs = put_benchmark(*benchmark)
    space = space if space is not None else _space(["shrunk"])
    return run_search(
        searcher,
        make_trainable(refs, volume_tasks=1),
        study_dir=study_dir,
        kind="segmentation",
        param_space={},
        num_samples=num_samples,
        searcher=make_searcher(
            searcher, space, metric="ipq", seed=seed, concurrency=2, n_startup_trials=4,
            start_points=space.start("zeros"),
        ),
        concurrency=2,
        verbose=0,
    )


def test_gp_with_two_workers_gets_no_duplicates_and_beats_its_start(
    local_ray, shrunk_benchmark, tmp_path
):
    # a narrowed space where every dilation (erode_dilate 1..4) scores 0.24-0.96 against the
    # start's 0.086, so that 8 trials beat the start whatever order the two workers finish in
    narrowed = parse_segmentation_space({"parameters": {
        "erode_dilate": {"int": [-1, 4]}, "open_close": {"int": [-1, 1]},
        "merge_area": {"float": [0.0, 1.0]},
    }}, ["shrunk"])
    records = _two_worker_search("gp", shrunk_benchmark, tmp_path, num_samples=8, seed=1,
                                 space=narrowed)
    assert len(records) == 8
    assert len({r["trial_id"] for r in records}) == 8
    configs = [tuple(sorted(r["params"].items())) for r in records]
    assert len(set(configs)) == len(configs), "parallel workers received a duplicate suggestion"
    start = [r for r in records if r["params"]["erode_dilate"] == 0
             and r["params"]["open_close"] == 0 and r["params"]["merge_area"] == 0]
    assert len(start) == 1 and start[0]["iteration"] == 0
    # every trial scored both volumes; the mean is the mean of the per-volume values
    for r in records:
        assert set(r["per_volume"]) == {"v0", "v1"}
        assert ipq(r) == pytest.approx(np.mean([v["ipq"] for v in r["per_volume"].values()]))
    best = max(records, key=ipq)
    assert ipq(best) > ipq(start[0]) + 0.1
    assert best["params"]["erode_dilate"] > 0  # dilation undoes the shrinking
    lines = (tmp_path / "results" / "gp.jsonl").read_text().splitlines()
    assert [json.loads(line)["trial_id"] for line in lines] == [r["trial_id"] for r in records]


def test_tpe_study_runs_end_to_end_from_its_zero_start(local_ray, shrunk_benchmark, tmp_path):
    records = _two_worker_search("tpe", shrunk_benchmark, tmp_path, num_samples=8, seed=2)
    assert len(records) == 8 and len({r["trial_id"] for r in records}) == 8
    for r in records:
        assert r["search"] == "tpe" and r["params"]["model"] == "shrunk"
        assert set(r["params"]) == {"model", *PARAMETER_RANGES}
        assert set(r["per_volume"]) == {"v0", "v1"}
        assert 0.0 <= ipq(r) <= 1.0
    first = min(records, key=lambda r: r["iteration"])
    assert first["iteration"] == 0 and seven(first["params"]) == ZEROS
    assert [r for r in records if seven(r["params"]) == ZEROS] == [first]
    best = max(records, key=ipq)
    assert ipq(best) >= ipq(first)
    lines = (tmp_path / "results" / "tpe.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["trial_id"] for line in lines) == sorted(
        r["trial_id"] for r in records
    )


def test_run_study_writes_the_study_folder(local_ray, tmp_path):
    exp = parse_experiment(
        {
            "name": "small",
            "data": {"synth": {"n_volumes": 2, "shape": [16, 40, 40], "seed": 2}},
            "models": [
                {"name": "classical"},
                {"name": "classical", "id": "smooth", "settings": {"sigma": 2.0}},
            ],
            "search": {"searcher": "gp", "budget": 4, "seed": 0, "concurrency": 2},
            "storage": {"study_dir": str(tmp_path / "study")},
            "comparison": {"random_budget": 2},
        },
        source="small.yaml",
        base=tmp_path,  # the project folder: its store is tmp_path/mlflow.db
    )
    result = run_study(exp, verbose=0)
    study = tmp_path / "study"
    counts = {name: len(recs) for name, recs in result.records.items()}
    assert counts == {"baseline": 2, "random": 2, "gp": 4}
    baseline_models = sorted(r["params"]["model"] for r in result.records["baseline"])
    assert baseline_models == ["classical", "smooth"]
    assert all(seven(r["params"]) == ZEROS for r in result.records["baseline"])
    gp = result.records["gp"]
    zero_starts = [
        (r["params"]["model"], r["iteration"]) for r in gp if seven(r["params"]) == ZEROS
    ]
    assert sorted(zero_starts) == [("classical", 0), ("smooth", 1)]
    assert not any(seven(r["params"]) == ZEROS for r in result.records["random"])
    for search in ("baseline", "random", "gp"):
        assert (study / "results" / f"{search}.jsonl").is_file()
        assert (study / "tune" / search).is_dir()
    best = yaml.safe_load((study / "best.yaml").read_text())
    top = max(gp, key=ipq)
    assert best["trial_id"] == top["trial_id"] and best["scores"]["ipq"] == ipq(top)
    assert best["kind"] == "segmentation" and best["model"] == top["params"]["model"]
    assert best["params"] == seven(top["params"])
    assert best["searches"]["random"]["trials"] == 2
    assert (study / "experiment.yaml").is_file()
    assert (study / "benchmark" / "dataset.yaml").is_file()
    assert (study / "plots" / "comparison.png").is_file()
    tracker = study_tracker(study, "aop-segmentation")
    assert len(tracker.child_runs()) == 8
    assert len(tracker.child_runs("gp")) == 4
