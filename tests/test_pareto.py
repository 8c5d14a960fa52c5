"""Studies with several objectives: Pareto fronts, hypervolume, searchers, reports and picks.

The engine parts run a toy kind with a second metric (``cost``, which grows where the toy score
is best); a tiny classifier study measures latency and is applied with ``aop classify --pick``,
and a tiny segmentation study trades IPQ against seconds per volume and is applied with
``aop segment --trial``.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import toy_kind
import yaml
from driver_helpers import kill_search_when, resume
from mlflow_helpers import study_tracker
from ray import cloudpickle, tune
from typer.testing import CliRunner

from aop.analysis.pareto import (
    dominates,
    hypervolume,
    hypervolume_history,
    objective_bounds,
    pareto_front,
    pick_trial,
)
from aop.analysis.report import chosen_trial, load_report
from aop.cli import app
from aop.errors import AopError
from aop.tuning.kinds import Prepared, get_kind, load_experiment, register_kind
from aop.tuning.searchers import make_searcher
from aop.tuning.space import parse_space
from aop.tuning.study import _topup_factory, run_study

SCORE_COST = [{"metric": "score", "mode": "max"}, {"metric": "cost", "mode": "min"}]
ENCODER_COST = {"a": 0.1, "b": 0.6, "c": 0.3}


def toy_cost(config: dict) -> float:
    """The toy's second objective: encoder b and attention, the best scores, cost the most."""
    return ENCODER_COST[config["encoder"]] + 0.2 * config["layers"] + 0.4 * (
        config["head"] == "attention")  # fmt: skip


def pareto_toy_trial(config: dict, delay: float = 0.0) -> None:
    time.sleep(delay)
    score = toy_kind.toy_score(config)
    tune.report({"score": score, "loss": 1.0 - score, "cost": toy_cost(config), "node": "toy"})


@register_kind
class ParetoToyKind(toy_kind.ToyKind):
    """The toy kind whose trials also report ``cost``, an objective its experiments may name."""

    name = "toy_pareto"
    objective_metrics = ("score", "loss", "cost")

    def prepare(self, exp: toy_kind.ToyExperiment) -> Prepared:
        trainable = tune.with_parameters(pareto_toy_trial, delay=exp.toy.delay)
        return Prepared(trainable=tune.with_resources(trainable, {"cpu": 1}))


cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/


# ------------------------------------------------------------------------------------------------
# Fronts, picks and hypervolume, against independent references
# ------------------------------------------------------------------------------------------------


def brute_force_front(values: list[tuple[float, ...]], modes: list[str]) -> set[int]:
    """Indices of the points that no other point beats: every objective compared in its mode."""

    def better_or_equal(a: float, b: float, mode: str) -> bool:
        return a >= b if mode == "max" else a <= b

    front = set()
    for i, p in enumerate(values):
        beaten = any(
            all(better_or_equal(q[k], p[k], m) for k, m in enumerate(modes)) and q != p
            for j, q in enumerate(values) if j != i
        )  # fmt: skip
        if not beaten:
            front.add(i)
    return front


def _records(values: list[tuple[float, ...]], names: list[str]) -> list[dict]:
    return [
        {"search": "s", "trial_id": f"t{i}", "iteration": i, "params": {},
         "metrics": dict(zip(names, v, strict=True))}
        for i, v in enumerate(values)
    ]  # fmt: skip


@pytest.mark.parametrize("modes", [["max", "min"], ["min", "min"], ["max", "max", "min"]])
@pytest.mark.parametrize("seed", range(6))
def test_the_front_is_the_brute_force_front_and_optunas(modes, seed):
    rng = np.random.default_rng(seed)
    # few distinct values: ties in one objective and equal points are frequent
    values = [tuple(float(v) for v in rng.integers(0, 5, len(modes))) for _ in range(40)]
    names = [f"m{k}" for k in range(len(modes))]
    objectives = [{"metric": n, "mode": m} for n, m in zip(names, modes, strict=True)]
    front = pareto_front(_records(values, names), objectives)
    assert {int(r["trial_id"][1:]) for r in front} == brute_force_front(values, modes)

    study = optuna.create_study(directions=[{"max": "maximize", "min": "minimize"}[m]
                                            for m in modes])  # fmt: skip
    for v in values:
        study.add_trial(optuna.trial.create_trial(values=list(v), params={}, distributions={}))
    assert {r["trial_id"] for r in front} == {f"t{t.number}" for t in study.best_trials}

    signs = [-1 if m == "max" else 1 for m in modes]
    costs = [tuple(s * r["metrics"][n] for s, n in zip(signs, names, strict=True)) for r in front]
    assert costs == sorted(costs)  # best first by the first objective, ties by the next
    pick = pick_trial(_records(values, names), objectives)
    assert pick["trial_id"] == front[0]["trial_id"]


def test_records_without_every_objective_are_left_out_and_dominance_is_strict():
    records = _records([(0.9, 5.0), (0.9, 5.0), (0.5, 1.0)], ["acc", "ms"])
    records.append({**records[0], "trial_id": "no-ms", "metrics": {"acc": 1.0}})
    objectives = [("acc", "max"), ("ms", "min")]
    assert [r["trial_id"] for r in pareto_front(records, objectives)] == ["t0", "t1", "t2"]
    assert not dominates((1.0, 2.0), (1.0, 2.0)) and dominates((1.0, 1.0), (1.0, 2.0))


def test_pick_rules_and_their_errors():
    values = [(0.90, 9.0), (0.89, 4.0), (0.885, 2.0), (0.70, 0.5), (0.89, 4.0)]
    records = _records(values, ["acc", "ms"])
    objectives = [{"metric": "acc", "mode": "max"}, {"metric": "ms", "mode": "min"}]
    assert pick_trial(records, objectives)["trial_id"] == "t0"
    assert pick_trial(records, objectives, "fastest-within", 0.0)["trial_id"] == "t0"
    assert pick_trial(records, objectives, "fastest-within", 0.01)["trial_id"] == "t1"  # 1st tie
    assert pick_trial(records, objectives, "fastest-within", 0.015)["trial_id"] == "t2"
    assert pick_trial(records, objectives, "fastest-within", 1.0)["trial_id"] == "t3"
    minimised = [{"metric": "ms", "mode": "min"}, {"metric": "acc", "mode": "max"}]
    assert pick_trial(records, minimised, "fastest-within", 2.0)["trial_id"] == "t2"
    for rule, tolerance, message in [
        ("slowest", 0.1, r"pick: unknown rule 'slowest' \(known: fastest-within\)"),
        ("fastest-within", -0.1, r"the tolerance must be a number >= 0, got -0.1"),
        ("fastest-within", math.nan, r"the tolerance must be a number >= 0, got nan"),
    ]:
        with pytest.raises(AopError, match=message):
            pick_trial(records, objectives, rule, tolerance)
    with pytest.raises(AopError, match=r"needs a second objective; the study has one \(acc\)"):
        pick_trial(records, objectives[:1], "fastest-within", 0.1)
    with pytest.raises(AopError, match=r"no trial has every objective \(acc, loss\)"):
        pick_trial(records, [("acc", "max"), ("loss", "min")])


@pytest.mark.parametrize("modes", [["max", "min"], ["min", "max", "min"]])
def test_hypervolume_history_is_optunas_on_the_scaled_box(modes):
    """The scaled history times the box's volume is Optuna's hypervolume history (its public
    plot) with the reference point mapped back to the objectives' units."""
    rng = np.random.default_rng(3)
    names = [f"m{k}" for k in range(len(modes))]
    values = [tuple(float(v) for v in rng.random(len(modes))) for _ in range(25)]
    records = _records(values, names)
    objectives = list(zip(names, modes, strict=True))
    ours = hypervolume_history(records, objectives)

    best, worst = objective_bounds(records, objectives)
    spans = [w - b for b, w in zip(best, worst, strict=True)]
    reference = [
        -(b + 1.1 * s) if m == "max" else b + 1.1 * s
        for b, s, m in zip(best, spans, modes, strict=True)
    ]  # fmt: skip
    study = optuna.create_study(directions=[{"max": "maximize", "min": "minimize"}[m]
                                            for m in modes])  # fmt: skip
    for v in values:
        study.add_trial(optuna.trial.create_trial(values=list(v), params={}, distributions={}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        axes = optuna.visualization.matplotlib.plot_hypervolume_history(study, reference)
    theirs = axes.lines[0].get_ydata() / math.prod(spans)
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)
    assert ours == sorted(ours) and ours[-1] <= 1.1 ** len(modes)
    # a point dominating the whole box scores the whole box
    assert hypervolume([(0.0,) * len(modes)], [1.1] * len(modes)) == pytest.approx(
        1.1 ** len(modes))


# ------------------------------------------------------------------------------------------------
# Experiment files: objectives checked when they load
# ------------------------------------------------------------------------------------------------


def _experiment(tmp_path: Path, searcher: str, budget: int, **extra) -> Path:
    space = tmp_path / "toy_space.yaml"
    space.write_text(yaml.safe_dump(toy_kind.SPACE, sort_keys=False))
    raw = {
        "name": f"pareto-{searcher}", "kind": "toy_pareto",
        "search": {"searcher": searcher, "budget": budget, "seed": 1, "concurrency": 2},
        "search_space": str(space), "storage": {"study_dir": str(tmp_path / "study")},
        "comparison": {"random": False}, "ray": {"num_cpus": 2}, "objectives": SCORE_COST,
        **extra,
    }  # fmt: skip
    path = tmp_path / "pareto.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_objectives_are_checked_when_the_experiment_loads(tmp_path):
    exp = load_experiment(_experiment(tmp_path, "nsga2", 4))
    from aop.tuning.kinds import study_kind

    kind = study_kind(exp)
    assert kind.multi_objective and (kind.metric, kind.mode) == ("score", "max")
    assert kind.metrics == ("score", "cost", "loss")
    assert kind.meta(exp)["objectives"] == SCORE_COST
    assert not get_kind("toy_pareto").multi_objective  # a fresh instance: the kind's one
    single = load_experiment(_experiment(tmp_path, "tpe", 4, objectives=[SCORE_COST[1]]))
    kind = study_kind(single)
    assert (kind.metric, kind.mode, kind.multi_objective) == ("cost", "min", False)
    assert "objectives" not in kind.meta(single)

    raw = yaml.safe_load(_experiment(tmp_path, "gp", 4).read_text())
    for change, message in [
        ({"search": {"searcher": "tpe"}}, r"bad.yaml: search.searcher: 'tpe' optimises one "
         r"objective; a study with several objectives needs one of gp, nsga2, random, smac$"),
        ({"objectives": [SCORE_COST[0], {"metric": "costs", "mode": "min"}]},
         r"bad.yaml: objectives.1.metric: 'costs' is not a metric of a toy_pareto trial "
         r"\(known: score, loss, cost\)$"),
        ({"objectives": [SCORE_COST[0], SCORE_COST[0]]},
         r"bad.yaml: objectives: 'score' is listed twice$"),
        ({"objectives": [{"metric": "score", "mode": "maximise"}]},
         r"bad.yaml: objectives.0.mode: 'maximise': Input should be 'max' or 'min'$"),
        ({"objectives": [{"metric": "score"}]}, r"bad.yaml: objectives.0.mode: Field required"),
        ({"objectives": []}, r"bad.yaml: objectives: List should have at least 1 item"),
        ({"search": {"searcher": "gp", "warm_start": [str(tmp_path)]}},
         r"bad.yaml: search.warm_start: a study with several objectives cannot be warm-started"),
    ]:
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**raw, **change}))
        with pytest.raises(AopError, match=message) as caught:
            load_experiment(tmp_path / "bad.yaml")
        assert "\n" not in str(caught.value)


def test_a_single_objective_searcher_stops_aop_search_before_any_work(tmp_path):
    path = _experiment(tmp_path, "tpe", 4)
    result = CliRunner().invoke(app, ["search", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "search.searcher: 'tpe' optimises one objective" in lines[0]
    assert not (tmp_path / "study").exists()


def test_classification_and_segmentation_declare_their_objective_metrics(tmp_path):
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(CLASSIFIER_SPACE, sort_keys=False))
    raw = {
        "name": "cls", "kind": "classification", "data": {"dataset": str(tmp_path / "data")},
        "search_space": str(tmp_path / "space.yaml"), "search": {"searcher": "smac"},
        "storage": {"study_dir": str(tmp_path / "study")}, "objectives": ACCURACY_LATENCY,
    }  # fmt: skip
    (tmp_path / "cls.yaml").write_text(yaml.safe_dump(raw))
    assert load_experiment(tmp_path / "cls.yaml").objectives[1].metric == "latency_ms"
    for change, message in [
        ({"objectives": [ACCURACY_LATENCY[0], {"metric": "latency", "mode": "min"}]},
         r"objectives.1.metric: 'latency' is not a metric of a classification trial \(known: "
         r"val_accuracy, val_balanced_accuracy, latency_ms\)$"),
        ({"objectives": [{"metric": "val_balanced_accuracy", "mode": "max"}, ACCURACY_LATENCY[1]]},
         r"objectives.0.metric: val_balanced_accuracy, but objective: accuracy keeps each "
         r"training's best val_accuracy epoch; set objective: balanced_accuracy$"),
    ]:
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**raw, **change}))
        with pytest.raises(AopError, match=message):
            load_experiment(tmp_path / "bad.yaml")
    balanced = {**raw, "objective": "balanced_accuracy",
                "objectives": [{"metric": "val_balanced_accuracy", "mode": "max"},
                               ACCURACY_LATENCY[1]]}  # fmt: skip
    (tmp_path / "balanced.yaml").write_text(yaml.safe_dump(balanced))
    assert load_experiment(tmp_path / "balanced.yaml").objective == "balanced_accuracy"

    segmentation = {
        "name": "seg", "data": {"synth": {"n_volumes": 1, "shape": [8, 32, 32]}},
        "models": [{"name": "classical"}], "search_space": str(tmp_path / "seg_space.yaml"),
        "storage": {"study_dir": str(tmp_path / "seg")}, "objectives": IPQ_SECONDS,
    }  # fmt: skip
    (tmp_path / "seg_space.yaml").write_text(yaml.safe_dump(SEGMENTATION_SPACE))
    (tmp_path / "seg.yaml").write_text(yaml.safe_dump(segmentation))
    assert [o.metric for o in load_experiment(tmp_path / "seg.yaml").objectives] == [
        "ipq", "seconds_per_volume"]
    segmentation["objectives"] = [IPQ_SECONDS[0], {"metric": "latency_ms", "mode": "min"}]
    (tmp_path / "seg.yaml").write_text(yaml.safe_dump(segmentation))
    with pytest.raises(AopError, match=r"'latency_ms' is not a metric of a segmentation trial "
                       r"\(known: ipq, sq, rq, iq, seconds_per_volume\)"):
        load_experiment(tmp_path / "seg.yaml")


# ------------------------------------------------------------------------------------------------
# Searchers: every objective reaches the library
# ------------------------------------------------------------------------------------------------


def _toy_values(config: dict) -> list[float]:
    return [toy_kind.toy_score(config), toy_cost(config)]


@pytest.mark.parametrize("name", ["gp", "nsga2", "random", "smac"])
def test_every_multi_objective_searcher_learns_every_objective(name):
    space = parse_space(toy_kind.SPACE)
    searcher = make_searcher(name, space, metric=["score", "cost"], mode=["max", "min"], seed=2,
                             n_startup_trials=3).searcher  # fmt: skip
    told = {"encoder": "b", "head": "attention", "lr": 1e-2, "layers": 3}
    if name != "nsga2":  # NSGA-II's generations hold its own trials (no warm start)
        searcher.add_evaluated_point(told, _toy_values(told))
    configs = []
    for index in range(6):
        config = searcher.suggest(f"t{index}")
        configs.append(config)
        score, cost = _toy_values(config)
        searcher.on_trial_complete(f"t{index}", {"score": score, "cost": cost})
    if name != "nsga2":  # a genetic algorithm may breed a configuration it had already
        assert len({tuple(sorted(c.items())) for c in configs}) == 6
    if name == "smac":
        costs = [value.cost for value in searcher.runhistory.values()]
        expected = [[-v[0], v[1]] for v in map(_toy_values, [told, *configs])]
        np.testing.assert_allclose(sorted(costs), sorted(expected))
    else:
        study = searcher._ot_study
        assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
        values = [t.values for t in study.trials if t.values is not None]
        expected = [_toy_values(c) for c in ([] if name == "nsga2" else [told]) + configs]
        np.testing.assert_allclose(values, expected)
    with pytest.raises(AopError, match=r"'tpe' optimises one objective"):
        make_searcher("tpe", space, metric=["score", "cost"], mode=["max", "min"])


def test_a_topup_searcher_is_told_every_objective_of_the_finished_trials(tmp_path):
    exp = load_experiment(_experiment(tmp_path, "smac", 4))
    from aop.tuning.kinds import study_kind

    kind = study_kind(exp)
    space = kind.search_space(exp)
    configs = [{"encoder": e, "head": "mlp", "lr": 1e-3, "layers": 1, "width": 64} for e in "abc"]
    done = [{"search": "smac", "trial_id": f"t{i}", "params": c,
             "metrics": {"score": v[0], "cost": v[1], "loss": 1 - v[0]}}
            for i, (c, v) in enumerate((c, _toy_values(c)) for c in configs)]  # fmt: skip
    done.append({**done[0], "trial_id": "no-cost", "metrics": {"score": 0.9}})  # not told
    for name in ("smac", "gp"):
        searcher = _topup_factory(exp, kind, space, name, starts=[])(done, 1).searcher
        if name == "smac":
            costs = sorted(value.cost for value in searcher.runhistory.values())
            np.testing.assert_allclose(costs, sorted([[-r["metrics"]["score"], r["metrics"]["cost"]]
                                                      for r in done[:3]]))  # fmt: skip
        else:
            values = sorted(t.values for t in searcher._ot_study.trials)
            np.testing.assert_allclose(values, sorted([[r["metrics"]["score"], r["metrics"]["cost"]]
                                                       for r in done[:3]]))  # fmt: skip


# ------------------------------------------------------------------------------------------------
# The engine: a toy study per searcher, its records, best.yaml, report, table, plots, MLflow
# ------------------------------------------------------------------------------------------------


def _check_study(study_dir: Path, main: str, budget: int) -> dict:
    """The records, best.yaml, study.yaml, table, plots and MLflow run of a toy Pareto study."""
    records = [r for recs in load_report(study_dir).records.values() for r in recs
               if r["search"] == main]  # fmt: skip
    assert len(records) == budget
    assert len({tuple(sorted(r["params"].items())) for r in records}) == budget
    for record in records:
        assert record["metrics"]["score"] == pytest.approx(toy_kind.toy_score(record["params"]))
        assert record["metrics"]["cost"] == pytest.approx(toy_cost(record["params"]))
    values = [(r["metrics"]["score"], r["metrics"]["cost"]) for r in records]
    front = {records[i]["trial_id"] for i in brute_force_front(values, ["max", "min"])}
    best = yaml.safe_load((study_dir / "best.yaml").read_text())
    assert set(best["pareto"]) == front and len(best["pareto"]) == len(front)
    assert best["objectives"] == SCORE_COST
    top = max(records, key=lambda r: (r["metrics"]["score"], -r["metrics"]["cost"]))
    assert best["trial_id"] == top["trial_id"] and best["trial_id"] == best["pareto"][0]
    meta = yaml.safe_load((study_dir / "study.yaml").read_text())
    assert meta["objectives"] == SCORE_COST and meta["metrics"] == ["score", "cost", "loss"]

    table = pd.read_csv(study_dir / "tables" / "pareto.csv", dtype={"trial_id": str})
    assert list(table["trial_id"]) == best["pareto"]
    assert list(table.columns[:4]) == ["search", "trial_id", "score", "cost"]
    assert (table["score"].diff().dropna() <= 0).all()  # best score first
    assert {"encoder", "head", "lr", "layers"} <= set(table.columns)
    for name in ("pareto.png", "convergence.png"):
        assert (study_dir / "plots" / name).stat().st_size > 10_000

    tracker = study_tracker(study_dir, "aop-toy_pareto")
    assert len(tracker.child_runs(main)) == budget
    parent = tracker.client.get_run(tracker.parent_run_id)
    logged = {a.path for folder in ("plots", "tables")
              for a in tracker.client.list_artifacts(parent.info.run_id, folder)}  # fmt: skip
    assert {"plots/pareto.png", "plots/convergence.png", "tables/pareto.csv"} <= logged
    assert "objectives score (max), cost (min)" in parent.data.tags["mlflow.note.content"]
    return best


@pytest.fixture(scope="module")
def gp_study(local_ray, tmp_path_factory):
    """A toy Pareto study: random search, then the multi-objective GP."""
    tmp_path = tmp_path_factory.mktemp("pareto-gp")
    exp = load_experiment(_experiment(tmp_path, "gp", 10, comparison={"random": True,
                                                                      "random_budget": 6}))
    run_study(exp, verbose=-1)
    return exp.study_dir


def test_the_multi_objective_gp_study_writes_its_front(gp_study):
    _check_study(gp_study, "gp", 10)
    random = [r for r in load_report(gp_study).records["random"]]
    assert len(random) == 6 and all("cost" in r["metrics"] for r in random)


@pytest.mark.parametrize("searcher", ["nsga2", "smac", "random"])
def test_every_multi_objective_searcher_runs_a_study(local_ray, tmp_path, searcher):
    exp = load_experiment(_experiment(tmp_path, searcher, 8))
    result = run_study(exp, verbose=-1)
    assert list(result.records) == [searcher]
    _check_study(exp.study_dir, searcher, 8)
    if searcher != "random":  # model-based searchers start at the start point
        first = min(result.records[searcher], key=lambda r: r["iteration"])
        assert first["params"] == {**toy_kind.SPACE["start"]["default"], "width": 64}


def test_aop_report_shows_the_pareto_front(gp_study):
    result = CliRunner().invoke(app, ["report", str(gp_study)])
    assert result.exit_code == 0, result.output
    best = yaml.safe_load((gp_study / "best.yaml").read_text())
    text = " ".join(result.output.split())
    assert f"Pareto front of search gp: {len(best['pareto'])} of 10 trials" in text
    assert "SCORE (max)" in text and "COST (min)" in text
    assert all(trial in text for trial in best["pareto"])
    report = load_report(gp_study).to_dict()
    assert [row["trial_id"] for row in report["pareto"]] == best["pareto"]
    assert report["objectives"] == SCORE_COST

    plotted = CliRunner().invoke(app, ["report", str(gp_study), "--plots"])
    assert plotted.exit_code == 0, plotted.output
    assert (gp_study / "plots" / "pareto.png").is_file()

    chosen = chosen_trial(gp_study, pick="fastest-within", tolerance=0.2)
    records = load_report(gp_study).records["gp"]
    assert chosen["trial_id"] == pick_trial(records, SCORE_COST, "fastest-within", 0.2)["trial_id"]
    assert chosen["trial_id"] in best["pareto"]
    assert chosen_trial(gp_study, trial=records[3]["trial_id"]) == records[3]
    for kwargs, message in [
        ({"trial": "nope"}, r"no trial 'nope' \(trials of searches random \(6\), gp \(10\)\)"),
        ({"pick": "slowest", "tolerance": 0.1}, r"pick: unknown rule 'slowest'"),
        ({}, r"choose a trial by a pick rule or by its id"),
    ]:
        with pytest.raises(AopError, match=message):
            chosen_trial(gp_study, **kwargs)


def _finished(path: Path) -> list[dict]:
    lines = path.read_text().split("\n") if path.is_file() else []
    return [json.loads(line) for line in lines[:-1] if line.strip()]  # complete lines only


def test_a_killed_multi_objective_study_resumes_to_its_exact_budget(tmp_path):
    budget = 6
    experiment = _experiment(tmp_path, "smac", budget, toy={"delay": 0.6})
    study = tmp_path / "study"
    results = study / "results" / "smac.jsonl"
    kill_search_when(experiment, lambda: len(_finished(results)), 3, module="test_pareto")
    before = _finished(results)
    assert 3 <= len(before) < budget, "the study was not interrupted"

    done = resume(study, module="test_pareto")
    assert done.returncode == 0, done.stderr[-2000:]
    after = _finished(results)
    ids = [r["trial_id"] for r in after]
    assert len(after) == budget and len(set(ids)) == budget
    assert all("cost" in r["metrics"] for r in after)
    assert len({tuple(sorted(r["params"].items())) for r in after}) == budget
    best = yaml.safe_load((study / "best.yaml").read_text())
    values = [(r["metrics"]["score"], r["metrics"]["cost"]) for r in after]
    assert set(best["pareto"]) == {ids[i] for i in brute_force_front(values, ["max", "min"])}
    assert (study / "plots" / "pareto.png").is_file()


# ------------------------------------------------------------------------------------------------
# The classifier study: latency of every design, the baseline's, aop classify --pick / --trial
# ------------------------------------------------------------------------------------------------

CLASSIFIER_SPACE = {
    "parameters": {
        "design": {"choice": ["deep", "features"]},
        "encoder": {"choice": ["test_resnet"], "when": {"design": "deep"}},
        "head": {"choice": ["slice", "volume"], "when": {"design": "deep"}},
        "pretraining": {"choice": ["none"], "when": {"design": "deep"}},
        "preprocessing": {"choice": ["mask"], "when": {"design": "deep"}},
        "lr": {"float": [1.0e-3, 1.0e-2], "log": True, "when": {"design": "deep"}},
        "model": {"choice": ["logistic_regression", "random_forest"],
                  "when": {"design": "features"}},
        "logreg_c": {"float": [1.0e-2, 1.0e2], "log": True,
                     "when": {"model": "logistic_regression"}},
        "rf_trees": {"int": [20, 80], "log": True, "when": {"model": "random_forest"}},
    },
    "start": {"default": [
        {"design": "deep", "encoder": "test_resnet", "head": "slice", "pretraining": "none",
         "preprocessing": "mask", "lr": 3.0e-3},
        {"design": "features", "model": "logistic_regression", "logreg_c": 1.0},
        {"design": "features", "model": "random_forest", "rf_trees": 40},
    ]},
}  # fmt: skip
ACCURACY_LATENCY = [{"metric": "val_accuracy", "mode": "max"},
                    {"metric": "latency_ms", "mode": "min"}]  # fmt: skip


@pytest.fixture(scope="module")
def class_data(tmp_path_factory):
    """A synthetic Myotube data set with classes; the truth copied as manual annotations."""
    from class_helpers import truth_annotated_dataset

    root = tmp_path_factory.mktemp("pareto-cls") / "data"
    return truth_annotated_dataset(root, (16, 80, 80), 2, 5)


@pytest.mark.slow
def test_a_classifier_study_trades_accuracy_against_latency_and_classify_picks(
    local_ray, class_data, tmp_path
):
    from aop.classify import classifier_source

    (tmp_path / "space.yaml").write_text(yaml.safe_dump(CLASSIFIER_SPACE, sort_keys=False))
    raw = {
        "name": "cls-pareto", "kind": "classification", "data": {"dataset": str(class_data)},
        "crops": {"size": [6, 16, 16]},
        "training": {"max_epochs": 1, "patience": 1, "batch_size": 8, "head_width": 8,
                     "head_depth": 1, "val_fraction": 0.3, "test_fraction": 0.2, "folds": 1},
        "search": {"searcher": "nsga2", "budget": 5, "concurrency": 2, "seed": 0},
        "search_space": str(tmp_path / "space.yaml"),
        "storage": {"study_dir": str(tmp_path / "study")}, "comparison": {"random": False},
        "ray": {"num_cpus": 2}, "objectives": ACCURACY_LATENCY,
    }  # fmt: skip
    (tmp_path / "cls.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    exp = load_experiment(tmp_path / "cls.yaml")
    result = run_study(exp, verbose=-1)
    study = exp.study_dir
    records = result.records["nsga2"]
    assert len(records) == 5
    designs = {r["params"]["design"] for r in records}
    assert designs == {"deep", "features"}  # the start points: both families
    for record in records:
        assert 0 < record["metrics"]["latency_ms"] < 10_000
        assert 0 <= record["metrics"]["val_accuracy"] <= 1
    best = yaml.safe_load((study / "best.yaml").read_text())
    values = [(r["metrics"]["val_accuracy"], r["metrics"]["latency_ms"]) for r in records]
    front = {records[i]["trial_id"] for i in brute_force_front(values, ["max", "min"])}
    assert set(best["pareto"]) == front
    assert best["reference"]["scores"]["latency_ms"] > 0  # the baseline's latency, as a trial's
    assert best["scores"]["latency_ms"] > 0
    for name in ("pareto.png", "convergence.png", "fig6_designs.png"):
        assert (study / "plots" / name).is_file()
    assert list(pd.read_csv(study / "tables" / "pareto.csv", dtype={"trial_id": str})[
        "trial_id"]) == best["pareto"]  # fmt: skip

    runner = CliRunner()
    data = tmp_path / "data"
    shutil.copytree(class_data, data)
    expected = pick_trial(records, ACCURACY_LATENCY, "fastest-within", 0.02)
    command = ["classify", str(study), "--data", str(data), "--pick", "fastest-within", "0.02"]
    output = runner.invoke(app, command)
    assert output.exit_code == 0, output.output
    assert f"trial {expected['trial_id']} of search nsga2" in output.output
    assert (data / "predictions.csv").is_file()
    source = classifier_source(study, expected)
    assert expected["trial_id"] in str(source.checkpoint)
    assert source.design == expected["params"]["design"]

    other = next(r for r in records if r["trial_id"] != best["trial_id"])
    output = runner.invoke(app, ["classify", str(study), "--data", str(data), "--trial",
                                 other["trial_id"]])  # fmt: skip
    assert output.exit_code == 0, output.output
    assert f"trial {other['trial_id']} of search nsga2" in output.output
    assert other["trial_id"] in str(classifier_source(study, other).checkpoint)

    for arguments, message in [
        (["--pick", "slowest", "0.1"], "pick: unknown rule 'slowest'"),
        (["--pick", "fastest-within", "x"], "--pick fastest-within x: the tolerance must be a"),
        (["--pick", "fastest-within", "-1"], "the tolerance must be a number >= 0, got -1"),
        (["--trial", "nope"], "no trial 'nope'"),
        (["--trial", other["trial_id"], "--pick", "fastest-within", "0.1"],
         "--pick and --trial: give one of them"),
    ]:
        output = runner.invoke(app, ["classify", str(study), "--data", str(data), *arguments])
        lines = [line for line in output.output.splitlines() if line.strip()]
        assert output.exit_code == 2 and len(lines) == 1 and message in lines[0], output.output


# ------------------------------------------------------------------------------------------------
# The segmentation study: IPQ against seconds per volume, aop segment --trial / --pick
# ------------------------------------------------------------------------------------------------

SEGMENTATION_SPACE = {"parameters": {"erode_dilate": {"int": [-2, 2]},
                                     "open_close": {"int": [0, 2]}}}  # fmt: skip
IPQ_SECONDS = [{"metric": "ipq", "mode": "max"}, {"metric": "seconds_per_volume", "mode": "min"}]


@pytest.mark.slow
def test_a_segmentation_study_trades_ipq_against_seconds_and_segment_applies_a_trial(
    local_ray, tmp_path
):
    from aop.io import load_dataset, read_volume
    from aop.segmentation.models import build_model
    from aop.segmentation.params import typed_params
    from aop.segmentation.postprocess import postprocess

    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SEGMENTATION_SPACE))
    raw = {
        "name": "seg-pareto", "data": {"synth": {"n_volumes": 2, "shape": [12, 40, 40]}},
        "models": [{"name": "classical"}], "search_space": str(tmp_path / "space.yaml"),
        "search": {"searcher": "random", "budget": 5, "seed": 0},
        "storage": {"study_dir": str(tmp_path / "study")}, "ray": {"num_cpus": 2},
        "objectives": IPQ_SECONDS,
    }  # fmt: skip
    (tmp_path / "seg.yaml").write_text(yaml.safe_dump(raw))
    exp = load_experiment(tmp_path / "seg.yaml")
    result = run_study(exp, verbose=-1)
    study = exp.study_dir
    records = result.records["random"]
    assert len(records) == 5 and len(result.records["baseline"]) == 1
    for record in [*records, *result.records["baseline"]]:
        seconds = record["metrics"]["seconds_per_volume"]
        per_volume = [v["seconds_per_volume"] for v in record["per_volume"].values()]
        assert 0 < seconds < 60 and len(per_volume) == 2
        assert seconds == pytest.approx(float(np.mean(per_volume)))
    best = yaml.safe_load((study / "best.yaml").read_text())
    values = [(r["metrics"]["ipq"], r["metrics"]["seconds_per_volume"]) for r in records]
    assert set(best["pareto"]) == {records[i]["trial_id"]
                                   for i in brute_force_front(values, ["max", "min"])}
    assert best["scores"]["seconds_per_volume"] > 0
    for name in ("pareto.png", "convergence.png", "comparison.png"):
        assert (study / "plots" / name).is_file()
    assert (study / "tables" / "pareto.csv").is_file()

    bench = study / "benchmark"
    chosen = min(records, key=lambda r: r["metrics"]["ipq"])  # rarely the study's pick
    out = tmp_path / "out"
    command = ["segment", str(study), "--data", str(bench), "--out", str(out), "--trial",
               chosen["trial_id"], "--workers", "1"]  # fmt: skip
    output = CliRunner().invoke(app, command)
    assert output.exit_code == 0, output.output
    assert (study / "pipelines" / "random" / chosen["trial_id"] / "MLmodel").is_file()
    segmented = load_dataset(out, require_labels=True)
    model, spacing = build_model("classical"), tuple(load_dataset(bench).info.voxel_size)
    for name in segmented.names:
        image, _ = read_volume(bench / "images" / f"{name}.tif")
        expected = postprocess(model.predict(image, spacing), image.astype(np.float32),
                               typed_params(chosen["params"]), spacing=spacing)  # fmt: skip
        np.testing.assert_array_equal(segmented.labels(name), expected)

    picked = pick_trial(records, IPQ_SECONDS, "fastest-within", 0.05)
    output = CliRunner().invoke(app, ["segment", str(study), "--data", str(bench), "--out",
                                      str(tmp_path / "out2"), "--pick", "fastest-within", "0.05"])
    assert output.exit_code == 0, output.output
    assert f"trial {picked['trial_id']} of search random" in output.output
    assert (study / "pipelines" / "random" / picked["trial_id"] / "MLmodel").is_file()

