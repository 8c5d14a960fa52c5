"""Volume fidelity: a segmentation study under ASHA, successive halving over the volumes.

Real Ray, a real MLflow SQLite store and real post-processing and IPQ on a tiny synthetic
benchmark of five nuclei volumes, predicted once by the classical model into a shared cache.
With a grace period of one volume and a reduction factor of 2 the rungs are at 1, 2 and 4
volumes: a trial below the median of the trials recorded at a rung stops there. The same
gp study without a scheduler is the reference: its first ten trials (the start point and the
searcher's random startup) are the same configurations as the ASHA study's, so that every
volume a stopped trial scored can be compared with the score of a trial that scored them all.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from mlflow_helpers import study_tracker
from ray import cloudpickle, tune
from typer.testing import CliRunner

from aop.cli import app
from aop.errors import AopError
from aop.synth import preset_params
from aop.synth.dataset import write_synthetic_dataset
from aop.tuning.kinds import load_experiment
from aop.tuning.segmentation_trial import make_trainable, put_benchmark, score_volumes
from aop.tuning.study import run_study

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/

N_VOLUMES = 5
VOLUMES = [f"synth_{i:03d}" for i in range(N_VOLUMES)]
RUNGS = (1, 2, 4)  # grace period 1, reduction factor 2, five volumes
BUDGET = 10
ASHA = {"name": "asha", "grace_period": 1, "reduction_factor": 2}


def _experiment(project: Path, name: str, *, scheduler: Any = None,
                data: dict | None = None) -> Path:  # fmt: skip
    """A gp segmentation study of the shared benchmark in ``project``; its folder is
    ``project/name``."""
    search: dict[str, Any] = {"searcher": "gp", "budget": BUDGET, "seed": 4, "concurrency": 1}
    if scheduler is not None:
        search["scheduler"] = scheduler
    raw = {
        "name": name,
        "data": data or {"benchmark": str(project / "benchmark")},
        "models": [{"name": "classical"}],
        "search": search,
        "storage": {"study_dir": name, "cache_dir": str(project / "predictions")},
        "tracking": {"tracking_uri": f"sqlite:///{project / 'mlflow.db'}", "experiment": name},
        "comparison": {"random": False},
        "ray": {"num_cpus": 2},
    }
    path = project / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _volumes(record: dict) -> int:
    """The volumes a record's trial was scored on: where it stopped, else all of them."""
    return int((record.get("stopped_at") or {}).get("volumes", N_VOLUMES))


def _params(record: dict) -> tuple:
    return tuple(sorted(record["params"].items()))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fidelity")
    write_synthetic_dataset(folder / "benchmark", preset_params("nuclei"), (16, 40, 40),
                            N_VOLUMES, seed=7, preset="nuclei")  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def asha_study(project, local_ray) -> dict:
    result = run_study(load_experiment(_experiment(project, "asha", scheduler=ASHA)), verbose=-1)
    return {"dir": project / "asha", "records": result.records, "best": result.best}


@pytest.fixture(scope="module")
def fifo_study(project, local_ray) -> dict:
    result = run_study(load_experiment(_experiment(project, "fifo")), verbose=-1)
    return {"dir": project / "fifo", "records": result.records, "best": result.best}


def test_asha_stops_trials_at_a_rung_with_the_scores_of_their_first_volumes(asha_study):
    records = asha_study["records"]["gp"]
    assert len(records) == BUDGET and len({r["trial_id"] for r in records}) == BUDGET
    stopped = [r for r in records if r.get("stopped_at")]
    assert len(stopped) >= 2, "ASHA stopped fewer than two of ten trials"
    assert len(stopped) < BUDGET
    for record in records:
        k = _volumes(record)
        if record.get("stopped_at"):
            assert record["stopped_at"] == {"volumes": k} and k in RUNGS
            assert k < N_VOLUMES
        # the record keeps how many volumes it was scored on, and exactly the first k of them
        assert record["volumes"] == k
        assert list(record["per_volume"]) == VOLUMES[:k]
        for metric in ("ipq", "sq", "rq", "iq"):
            mean = np.mean([record["per_volume"][v][metric] for v in VOLUMES[:k]])
            assert math.isclose(record["metrics"][metric], mean, rel_tol=1e-12, abs_tol=1e-12)
        assert record["seconds_per_volume"] > 0
        assert set(record["volume_nodes"]) == set(VOLUMES[:k])
    # fewer volumes scored in all than ten trials of five volumes
    assert sum(_volumes(r) for r in records) < BUDGET * N_VOLUMES
    # the comparison runs every trial to its end, per volume like the main search
    (baseline,) = asha_study["records"]["baseline"]
    assert not baseline.get("stopped_at") and baseline["volumes"] == N_VOLUMES
    assert list(baseline["per_volume"]) == VOLUMES


def test_the_best_trial_was_scored_on_every_volume(asha_study):
    records = asha_study["records"]["gp"]
    ended = [r for r in records if not r.get("stopped_at")]
    best = yaml.safe_load((asha_study["dir"] / "best.yaml").read_text())
    top = max(ended, key=lambda r: r["metrics"]["ipq"])
    assert best["trial_id"] == top["trial_id"] == asha_study["best"]["trial_id"]
    assert sorted(best["per_volume"]) == VOLUMES
    mean = np.mean([best["per_volume"][v]["ipq"] for v in VOLUMES])
    assert math.isclose(best["scores"]["ipq"], mean, rel_tol=1e-12)
    assert math.isclose(best["scores"]["ipq"], top["metrics"]["ipq"])
    meta = yaml.safe_load((asha_study["dir"] / "study.yaml").read_text())
    assert meta["scheduler"] == {"name": "asha", "grace_period": 1, "reduction_factor": 2.0,
                                 "search": "gp", "fidelity": "volumes"}  # fmt: skip
    assert (asha_study["dir"] / "plots" / "convergence.png").is_file()


def test_fidelity_does_not_change_what_a_volume_scores(asha_study, fifo_study):
    fifo = {_params(r): r for r in fifo_study["records"]["gp"]}
    for record in fifo.values():  # without a scheduler: one report, every volume
        assert "volumes" not in record and "stopped_at" not in record
        assert list(record["per_volume"]) == VOLUMES
    # the start point and the random startup are the same configurations in both studies
    same = [r for r in asha_study["records"]["gp"] if _params(r) in fifo]
    assert len(same) == BUDGET
    assert any(r.get("stopped_at") for r in same)
    for record in same:
        full = fifo[_params(record)]
        for volume in VOLUMES[: _volumes(record)]:
            assert record["per_volume"][volume] == full["per_volume"][volume]
        if not record.get("stopped_at"):
            assert record["metrics"] == full["metrics"]
    (asha_base,) = asha_study["records"]["baseline"]
    (fifo_base,) = fifo_study["records"]["baseline"]
    assert asha_base["per_volume"] == fifo_base["per_volume"]


def test_stopped_trials_log_the_volumes_they_scored_to_mlflow(asha_study):
    records = {r["trial_id"]: r for r in asha_study["records"]["gp"]}
    runs = study_tracker(asha_study["dir"], "asha").child_runs("gp")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(records)
    for run in runs:
        record = records[run.data.tags["trial_id"]]
        k = _volumes(record)
        logged = {key.split("/", 1)[1] for key in run.data.metrics if key.startswith("ipq/")}
        assert logged == set(VOLUMES[:k])
        assert run.info.status == "FINISHED"
        if record.get("stopped_at"):
            assert run.data.tags["stopped_at_volumes"] == f"{k:g}"
        assert math.isclose(run.data.metrics["ipq"], record["metrics"]["ipq"])


def test_the_report_pairs_volumes_of_the_best_trial_scored_on_every_volume(asha_study):
    study = asha_study["dir"]
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(study), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    summary = {row["search"]: row for row in data["comparison"]["summary"]}
    assert summary["gp"]["trial_id"] == asha_study["best"]["trial_id"]
    assert summary["gp"]["n"] == N_VOLUMES
    tests = [t for t in data["comparison"]["tests"] if {t["search_a"], t["search_b"]} ==
             {"gp", "baseline"}]  # fmt: skip
    assert tests and all(t["n_pairs"] == N_VOLUMES and t["n_volumes"] == N_VOLUMES
                         for t in tests)  # fmt: skip
    n_stopped = sum(1 for r in asha_study["records"]["gp"] if r.get("stopped_at"))
    assert data["scheduler"]["stopped"] == {"baseline": 0, "gp": n_stopped}
    text = runner.invoke(app, ["report", str(study)], terminal_width=200)
    assert text.exit_code == 0, text.output
    assert f"stopped {n_stopped} of {BUDGET} trials of gp early" in text.output


class _Reports(tune.Callback):
    """Every result each trial reported, in order."""

    def __init__(self) -> None:
        self.results: list[dict] = []

    def on_trial_result(self, iteration, trials, trial, result, **info):  # type: ignore[override]
        self.results.append(dict(result))


def _reports(refs, tmp_path: Path, fidelity: bool) -> list[dict]:
    """The reports of one trial of the classical model with erode_dilate 1, two bundles."""
    reports = _Reports()
    config = {"model": "classical", "erode_dilate": 1}
    tuner = tune.Tuner(
        make_trainable(refs, volume_tasks=2, fidelity=fidelity),
        param_space=config,
        tune_config=tune.TuneConfig(num_samples=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path), callbacks=[reports], verbose=0,
                                  name=f"fidelity-{fidelity}"),  # fmt: skip
    )
    tuner.fit()
    return reports.results


@pytest.fixture(scope="module")
def refs(project, local_ray):
    from aop.io import load_dataset
    from aop.segmentation.models import ModelSpec, build_model

    dataset = load_dataset(project / "benchmark", require_labels=True)
    model = build_model(ModelSpec(name="classical"))
    spacing = tuple(dataset.info.voxel_size)
    predictions = {v: model.predict(dataset.image(v), spacing) for v in dataset.names}
    return put_benchmark({"classical": predictions},
                         {v: dataset.labels(v) for v in dataset.names},
                         {v: dataset.image(v) for v in dataset.names})  # fmt: skip


def test_a_trial_with_fidelity_reports_after_each_volume_in_order(refs, tmp_path):
    single = _reports(refs, tmp_path, fidelity=False)
    assert len(single) == 1
    (one,) = single
    assert "volumes" not in one and not one.get("final")
    steps = _reports(refs, tmp_path, fidelity=True)
    assert [r["volumes"] for r in steps] == list(range(1, N_VOLUMES + 1))
    assert [bool(r.get("final")) for r in steps] == [False] * (N_VOLUMES - 1) + [True]
    for k, report in enumerate(steps, start=1):
        scored = {key.split("/", 1)[1] for key in report if key.startswith("ipq/")}
        assert scored == set(VOLUMES[:k])
        assert set(report["volume_nodes"]) == set(VOLUMES[:k])
        for metric in ("ipq", "sq", "rq", "iq"):
            values = [report[f"{metric}/{v}"] for v in VOLUMES[:k]]
            assert math.isclose(report[metric], float(np.mean(values)), rel_tol=1e-12)
        seconds = [report[f"seconds_per_volume/{v}"] for v in VOLUMES[:k]]
        assert math.isclose(report["seconds_per_volume"], float(np.mean(seconds)))
    last = steps[-1]
    # the last report holds everything the one report of a trial without fidelity holds
    assert set(one) - {"final", "volumes"} <= set(last)
    for key in one:
        if key.split("/")[0] in ("ipq", "sq", "rq", "iq"):
            assert last[key] == one[key]


def _marking_scorer(prediction, labels, image, params, spacing):
    """A scorer that marks each volume it starts (a file named by the volume) and takes 0.5 s."""
    folder = Path(params["marks"])
    (folder / f"{int(prediction.flat[0])}").write_text("started")
    time.sleep(0.5)
    return {"ipq": 1.0, "sq": 1.0, "rq": 1.0, "iq": 1.0}


def test_a_stopped_scoring_started_no_volume_beyond_its_window(local_ray, tmp_path):
    arrays = {f"v{i}": np.full((2, 2, 2), i, dtype=np.int32) for i in range(6)}
    bench = put_benchmark({"m": arrays}, arrays, arrays)
    scored = score_volumes(bench, "m", {"marks": str(tmp_path)}, scorer=_marking_scorer,
                           in_flight=2)  # fmt: skip
    first = next(scored)
    assert list(first["per_volume"]) == ["v0"]
    scored.close()  # a trial stopped after its first volume
    time.sleep(1.5)  # long enough for any other task to start
    # the second volume of the window may have started before it was cancelled; no other did
    assert {p.name for p in tmp_path.iterdir()} - {"1"} == {"0"}
    for mark in tmp_path.iterdir():
        mark.unlink()
    # without a window every volume is scored, in benchmark order
    every = list(score_volumes(bench, "m", {"marks": str(tmp_path)}, scorer=_marking_scorer))
    assert [list(s["per_volume"]) for s in every] == [list(arrays)[: k + 1] for k in range(6)]


def test_no_volume_past_the_next_rung_starts_before_the_trial_goes_on(local_ray, tmp_path):
    """Every volume at once (a trial holding as many bundles as volumes), rungs at 1 and 3
    volumes: a trial stopped at a rung started no volume past it."""
    from aop.tuning.schedulers import rung_counts

    arrays = {f"v{i}": np.full((2, 2, 2), i, dtype=np.int32) for i in range(6)}
    bench = put_benchmark({"m": arrays}, arrays, arrays)
    stops = rung_counts(1, 3, len(arrays))
    assert stops == [1, 3]
    scored = score_volumes(bench, "m", {"marks": str(tmp_path)}, scorer=_marking_scorer,
                           stops=stops)  # fmt: skip
    assert list(next(scored)["per_volume"]) == ["v0"]
    time.sleep(1.5)  # long enough for any other task to start
    assert {p.name for p in tmp_path.iterdir()} == {"0"}  # stopped here: nothing else ran
    # going on past the first rung starts the volumes up to the second one, all at once
    assert [list(next(scored)["per_volume"]) for _ in range(2)] == [["v0", "v1"],
                                                                     ["v0", "v1", "v2"]]
    scored.close()  # stopped at the second rung
    time.sleep(1.5)
    assert {p.name for p in tmp_path.iterdir()} == {"0", "1", "2"}


def test_a_grace_period_at_the_number_of_volumes_is_one_line_before_any_output(project):
    late = _experiment(project, "late", scheduler={"name": "asha", "grace_period": N_VOLUMES})
    with pytest.raises(AopError, match=r"^search.scheduler.grace_period: 5 volumes leaves no "
                                       r"rung: the benchmark has 5 volumes"):  # fmt: skip
        run_study(load_experiment(late), verbose=-1)
    assert not (project / "late").exists()
    synth = _experiment(project, "late-synth", scheduler={"name": "asha", "grace_period": 3},
                        data={"synth": {"n_volumes": 2, "shape": [16, 40, 40]}})  # fmt: skip
    with pytest.raises(AopError, match=r"grace_period: 3 volumes leaves no rung: the benchmark "
                                       r"has 2 volumes"):  # fmt: skip
        run_study(load_experiment(synth), verbose=-1)
    assert not (project / "late-synth").exists()
