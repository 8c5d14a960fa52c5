"""Conditional parameters (``when:``): the file format and its errors, which parameters are
active, every searcher on Ray Tune, the trial records, a top-up and the plots of such records."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import optuna
import pytest
import toy_kind
import yaml
from mlflow_helpers import study_tracker
from optuna.importance import FanovaImportanceEvaluator, get_param_importances
from ray import cloudpickle, tune
from ray.tune.search.hyperopt import HyperOptSearch
from ray.tune.search.optuna import OptunaSearch

from aop.analysis.plots import influential_parameters, make_study_plots, records_study
from aop.errors import AopError
from aop.tuning.conditional_search import ActiveHyperOptSearch, ConditionalOptunaSearch
from aop.tuning.kinds import get_kind, load_experiment
from aop.tuning.searchers import make_searcher
from aop.tuning.space import load_space_file, parse_space
from aop.tuning.study import _topup_factory, load_study_experiment, run_search, run_study

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/

SEARCHERS = ["gp", "random", "tpe", "smac"]

#: Two designs, the second a family of models with their own parameters: a chain (``c`` needs
#: ``model``, which needs ``design``), a condition with two values (``trees``) and one with two
#: parents (``depth``).
RAW = {
    "parameters": {
        "design": {"choice": ["deep", "features"]},
        "encoder": {"choice": ["small", "large"], "when": {"design": "deep"}},
        "lr": {"float": [1.0e-4, 1.0e-1], "log": True, "when": {"design": "deep"}},
        "model": {"choice": ["logreg", "forest", "boosting"], "when": {"design": "features"}},
        "c": {"float": [1.0e-3, 100.0], "log": True, "when": {"model": "logreg"}},
        "trees": {"int": [50, 500], "when": {"model": ["forest", "boosting"]}},
        "depth": {"int": [2, 8], "when": {"design": "features", "model": "boosting"}},
        "width": 128,
    },
    "start": {
        "default": [
            {"design": "deep", "encoder": "small", "lr": 1.0e-3},
            {"design": "features", "model": "forest", "trees": 100},
        ]
    },
}

#: The searched parameters of each branch, written out by hand (no code shared with aop).
BRANCHES = {
    ("deep", None): {"design", "encoder", "lr"},
    ("features", "logreg"): {"design", "model", "c"},
    ("features", "forest"): {"design", "model", "trees"},
    ("features", "boosting"): {"design", "model", "trees", "depth"},
}


def branch_keys(config: dict) -> set[str]:
    """The searched parameters a configuration of this branch must hold, exactly."""
    return BRANCHES[(config["design"], config.get("model"))]


def score(config: dict) -> float:
    """An objective that depends on the branch: at most 0.7 (deep, large, lr 1e-2), 0.6
    (logreg, c 1), 0.8 (boosting, 500 trees, depth 8) or 0.7 (forest, 500 trees)."""
    if config["design"] == "deep":
        lr_term = 0.05 * (math.log10(config["lr"]) + 2.0) ** 2
        return 0.5 + 0.2 * (config["encoder"] == "large") - lr_term
    if config["model"] == "logreg":
        return 0.6 - 0.05 * math.log10(config["c"]) ** 2
    depth = 0.1 * config["depth"] / 8 if config["model"] == "boosting" else 0.0
    return 0.2 + config["trees"] / 1000 + depth


def branch_trial(config: dict) -> None:
    """Ray Tune function trainable: raises unless the configuration holds exactly the active
    parameters of its branch (and the constant)."""
    searched = set(config) - {"width"}
    if searched != branch_keys(config) or config["width"] != 128:
        raise ValueError(f"not the active parameters of its branch: {sorted(config)}")
    value = score(config)
    tune.report({"score": value, "loss": 1.0 - value, "node": "test"})


def _space():
    return parse_space(RAW, "conditions.yaml")


# ------------------------------------------------------------------------------------------------
# The format
# ------------------------------------------------------------------------------------------------


def test_conditions_parse_and_decide_which_parameters_are_active():
    space = _space()
    assert space.has_conditions and not parse_space(toy_kind.SPACE).has_conditions
    assert space.conditions == {
        "encoder": {"design": ("deep",)},
        "lr": {"design": ("deep",)},
        "model": {"design": ("features",)},
        "c": {"model": ("logreg",)},
        "trees": {"model": ("forest", "boosting")},
        "depth": {"design": ("features",), "model": ("boosting",)},
    }
    # domains() and searched stay the flat set of every searched parameter, in file order
    assert space.searched == ["design", "encoder", "lr", "model", "c", "trees", "depth"]
    assert list(space.domains()) == space.searched and space.fixed == {"width": 128}

    everything = {"design": "features", "encoder": "small", "lr": 1e-3, "model": "boosting",
                  "c": 1.0, "trees": 100, "depth": 4, "width": 128, "other": 1}  # fmt: skip
    assert space.active(everything) == {"design": "features", "model": "boosting",
                                        "trees": 100, "depth": 4, "width": 128}  # fmt: skip
    assert list(space.active(everything)) == ["design", "model", "trees", "depth", "width"]
    deep = {**everything, "design": "deep"}
    # the chain: model is inactive, so c, trees and depth are inactive with it
    assert space.active(deep) == {"design": "deep", "encoder": "small", "lr": 1e-3, "width": 128}
    for model, keys in [("logreg", {"c"}), ("forest", {"trees"}), ("boosting", {"trees", "depth"})]:
        config = {**everything, "model": model}
        assert set(space.active(config)) == {"design", "model", "width", *keys}
        for name in ("c", "trees", "depth"):
            assert space.is_active(name, config) == (name in keys)
    assert space.is_active("design", {}) and space.is_active("width", {})
    assert not space.is_active("encoder", {})  # its parent has no value: inactive
    with pytest.raises(KeyError):
        space.is_active("depht", everything)

    # contains: every active parameter present and in its domain; inactive ones are ignored
    assert space.contains({"design": "features", "model": "logreg", "c": 0.5})
    assert space.contains({"design": "features", "model": "logreg", "c": 0.5, "trees": -3})
    assert not space.contains({"design": "features", "model": "logreg"})  # c is missing
    assert not space.contains({"design": "features", "model": "logreg", "c": 1e3})  # outside
    assert not space.contains({"design": "deep", "encoder": "small"})  # lr is missing
    assert not space.contains({"design": "graph", "encoder": "small", "lr": 1e-3})

    # start points hold the active parameters only
    assert space.start("default") == RAW["start"]["default"]

    # describe() writes the conditions back as the file does (MLflow logs it), and parses again
    described = space.describe()
    assert described["trees"] == {"int": [50, 500], "when": {"model": ["forest", "boosting"]}}
    assert described["lr"] == {"float": [1e-4, 1e-1], "log": True, "when": {"design": "deep"}}
    assert described["design"] == {"choice": ["deep", "features"]} and described["width"] == 128
    again = parse_space({"parameters": described})
    assert again.conditions == space.conditions and again.describe() == described


def test_a_parent_is_matched_by_choice_and_a_constant_parent_always_holds():
    space = parse_space({"parameters": {
        "flag": {"choice": [1, True, "1"]},
        "a": {"int": [0, 3], "when": {"flag": True}},
        "b": {"int": [0, 3], "when": {"flag": [1, "1"]}},
        "design": "deep",
        "encoder": {"choice": ["small", "large"], "when": {"design": "deep"}},
    }})  # fmt: skip
    assert space.conditions == {"a": {"flag": (True,)}, "b": {"flag": (1, "1")},
                                "encoder": {"design": ("deep",)}}  # fmt: skip
    assert type(space.conditions["a"]["flag"][0]) is bool
    assert set(space.active({"flag": True, "a": 1, "b": 2, "encoder": "small"})) == {
        "flag", "a", "encoder"}  # fmt: skip
    assert set(space.active({"flag": 1, "a": 1, "b": 2, "encoder": "small"})) == {
        "flag", "b", "encoder"}  # fmt: skip
    assert set(space.active({"flag": "1", "a": 1, "b": 2})) == {"flag", "b"}
    # a constant parent takes its value from the space: the encoder is always searched
    assert space.is_active("encoder", {}) and space.is_active("encoder", {"design": "features"})


def _error(tmp_path: Path, parameters: dict, start: dict | None = None) -> str:
    """The one error line of a search-space file with ``parameters``."""
    path = tmp_path / "space.yaml"
    raw = {"parameters": parameters, **({"start": start} if start else {})}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(AopError) as caught:
        load_space_file(path)
    message = str(caught.value)
    assert "\n" not in message
    return message.replace(str(path), "FILE")


def test_every_bad_condition_is_one_error_line_naming_the_file_and_field(tmp_path):
    design = {"choice": ["deep", "features"]}
    cases = [
        ({"design": design, "encoder": {"choice": ["a"], "when": {"desing": "deep"}}},
         "FILE: parameters.encoder.when.desing: unknown parameter (a condition names a "
         "parameter written earlier)"),
        ({"encoder": {"choice": ["a"], "when": {"design": "deep"}}, "design": design},
         "FILE: parameters.encoder.when.design: written after encoder (a condition names a "
         "parameter written earlier)"),
        ({"design": design, "encoder": {"choice": ["a"], "when": {"design": "graph"}}},
         "FILE: parameters.encoder.when.design: 'graph' is not one of its choices "
         "['deep', 'features']"),
        ({"design": design, "encoder": {"choice": ["a"], "when": {"design": ["deep", "gnn"]}}},
         "FILE: parameters.encoder.when.design: 'gnn' is not one of its choices "
         "['deep', 'features']"),
        ({"trees": {"int": [1, 5]}, "depth": {"int": [1, 3], "when": {"trees": 3}}},
         "FILE: parameters.depth.when.trees: a condition names a choice parameter or a "
         "constant, not {'int': [1, 5]}"),
        ({"c": {"float": [0.1, 1.0]}, "d": {"int": [1, 3], "when": {"c": 0.5}}},
         "FILE: parameters.d.when.c: a condition names a choice parameter or a constant, not "
         "{'float': [0.1, 1.0]}"),
        ({"design": "deep", "encoder": {"choice": ["a"], "when": {"design": "features"}}},
         "FILE: parameters.encoder.when.design: 'features' is not its value 'deep' (a "
         "constant)"),
        ({"design": design, "encoder": {"choice": ["a"], "when": {"encoder": "a"}}},
         "FILE: parameters.encoder.when.encoder: a parameter cannot be its own condition"),
        ({"design": design, "encoder": {"choice": ["a"], "when": "deep"}},
         "FILE: parameters.encoder.when: must map earlier parameters to a value or a list of "
         "values"),
        ({"design": design, "encoder": {"choice": ["a"], "when": {"design": []}}},
         "FILE: parameters.encoder.when.design: give a value or a non-empty list of values"),
        ({"design": design, "encoder": {"when": {"design": "deep"}}},
         "FILE: parameters.encoder: give exactly one of choice, int, float (or a constant "
         "value)"),
    ]  # fmt: skip
    for parameters, message in cases:
        assert _error(tmp_path, parameters) == message
    # start points: an inactive parameter given, an active one missing, through a chain
    space = RAW["parameters"]
    starts = [
        ({"p": {"design": "deep", "encoder": "small", "lr": 1e-3, "c": 1.0}},
         "FILE: start.p.0.c: inactive: design is 'deep'"),
        ({"p": {"design": "features", "model": "forest", "trees": 60, "c": 1.0}},
         "FILE: start.p.0.c: inactive: model is 'forest'"),
        ({"p": {"design": "features", "model": "boosting", "trees": 60}},
         "FILE: start.p.0: missing 'depth'"),
        ({"p": {"design": "features", "trees": 60}}, "FILE: start.p.0: missing 'model'"),
        ({"p": {"design": "deep", "encoder": "small", "lr": 1.0}},
         "FILE: start.p.0.lr: 1.0 is outside {'float': [0.0001, 0.1], 'log': True}"),
    ]  # fmt: skip
    for start, message in starts:
        assert _error(tmp_path, space, start) == message


# ------------------------------------------------------------------------------------------------
# Searchers, without Ray Tune's loop
# ------------------------------------------------------------------------------------------------


def _ask_and_tell(searcher, n: int, start: int = 0) -> list[dict]:
    configs = []
    for i in range(start, start + n):
        config = searcher.suggest(f"t{i}")
        configs.append(config)
        searcher.on_trial_complete(f"t{i}", {"score": score(config)})
    return configs


def test_spaces_without_conditions_keep_ray_tunes_own_searchers():
    flat = parse_space(toy_kind.SPACE)
    assert type(make_searcher("gp", flat, metric="score").searcher) is OptunaSearch
    assert type(make_searcher("random", flat, metric="score").searcher) is OptunaSearch
    assert type(make_searcher("tpe", flat, metric="score").searcher) is HyperOptSearch
    space = _space()
    assert type(make_searcher("gp", space, metric="score").searcher) is ConditionalOptunaSearch
    assert type(make_searcher("tpe", space, metric="score").searcher) is ActiveHyperOptSearch


@pytest.mark.parametrize("name", SEARCHERS)
def test_each_suggestion_holds_the_active_parameters_and_the_searcher_restores(tmp_path, name):
    space = _space()
    starts = space.start("default") if name != "random" else []

    def searcher():
        return make_searcher(name, space, metric="score", seed=4, start_points=starts,
                             n_startup_trials=3)  # fmt: skip

    first = searcher()
    configs = _ask_and_tell(first, 12)
    if starts:
        assert configs[:2] == starts  # the start points first, as they are
    for config in configs:
        assert set(config) == branch_keys(config) and space.contains(config)
    assert len({(c["design"], c.get("model")) for c in configs}) >= 2
    assert _ask_and_tell(searcher(), 12) == configs  # seeded
    # what Tuner.restore does: unpickle the searcher it was given (tuner.pkl, cloudpickle),
    # restore the state the searcher saved, and continue where the search was
    path = str(tmp_path / "searcher.pkl")
    first.searcher.save(path)
    restored = cloudpickle.loads(cloudpickle.dumps(searcher()))
    restored.searcher.restore(path)
    later = _ask_and_tell(restored, 4, start=12)
    assert all(set(c) == branch_keys(c) for c in later)
    if name == "smac":  # a fresh SMAC told the history: no told configuration again
        assert len(restored.searcher.runhistory) == 16
        assert not {repr(c) for c in later} & {repr(c) for c in configs}
    else:
        assert later == _ask_and_tell(first, 4, start=12)


def test_optuna_is_told_trials_of_any_branch_and_gp_models_what_they_share():
    space = _space()
    searcher = make_searcher("gp", space, metric="score", seed=1, n_startup_trials=3).searcher
    told = [
        {"design": "deep", "encoder": "large", "lr": 1e-2},
        {"design": "features", "model": "logreg", "c": 1.0},
        # an inactive parameter given is ignored, as contains() ignores it
        {"design": "features", "model": "forest", "trees": 400, "c": 5.0, "width": 128},
        {"design": "features", "model": "boosting", "trees": 500, "depth": 8},
    ]
    for point in told:
        searcher.add_evaluated_point(point, score(point))
    searcher.add_evaluated_point({"design": "deep", "encoder": "small", "lr": 1e-3}, 0.0,
                                 error=True)  # fmt: skip
    trials = searcher._ot_study.trials
    assert [t.params for t in trials[:4]] == [space.active(p) for p in told[:2]] + [
        {"design": "features", "model": "forest", "trees": 400}, told[3]]  # fmt: skip
    assert [t.value for t in trials[:4]] == [pytest.approx(score(p)) for p in told]
    assert trials[4].state == optuna.trial.TrialState.FAIL and trials[4].value is None
    for bad, message in [
        ({"design": "features", "model": "logreg"}, "add_evaluated_point: missing 'c'"),
        ({"design": "deep", "encoder": "small", "lr": 5.0}, "add_evaluated_point.lr: 5.0 is "
         "outside"),
        ({"design": "deep", "encoder": "small", "lr": 1e-3, "depht": 3},
         "add_evaluated_point.depht: unknown parameter"),
    ]:  # fmt: skip
        with pytest.raises(AopError, match=message):
            searcher.add_evaluated_point(bad, 0.5)
    # GPSampler models the intersection search space: what every finished trial has (design;
    # width is a constant, not searched); the rest of a branch comes from its random sampler
    config = searcher.suggest("next")
    trial = searcher._ot_trials["next"]
    assert list(trial.relative_search_space) == ["design"]
    assert set(trial.relative_params) == {"design"} and config["design"] == trial.relative_params[
        "design"]  # fmt: skip
    assert set(config) == branch_keys(config)


def test_tpe_completes_its_start_points_and_suggests_the_active_values():
    space = _space()
    searcher = make_searcher("tpe", space, metric="score", seed=3,
                             start_points=space.start("default")).searcher  # fmt: skip
    # hyperopt holds a value of every parameter for the start points (drawn for inactive ones)
    docs = searcher._hpopt_trials.trials
    assert len(docs) == 2 and all(set(d["misc"]["vals"]) == set(space.searched) for d in docs)
    configs = _ask_and_tell(searcher, 10)
    assert configs[:2] == space.start("default")
    assert all(set(c) == branch_keys(c) for c in configs)


# ------------------------------------------------------------------------------------------------
# On Ray Tune, through the study engine
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SEARCHERS)
def test_every_searcher_runs_a_conditional_search_on_ray_tune(local_ray, tmp_path, name):
    space = _space()
    starts = space.start("default") if name != "random" else []
    records = run_search(
        name,
        tune.with_resources(branch_trial, {"cpu": 1}),
        study_dir=tmp_path,
        param_space=dict(space.fixed),
        num_samples=10,
        kind="toy",  # its objective (score, max) and metrics (score, loss)
        searcher=make_searcher(name, space, metric="score", seed=2, concurrency=2,
                               start_points=starts, n_startup_trials=3),  # fmt: skip
        concurrency=2,
        verbose=-1,
    )
    # every trial ran: the trainable raises on a configuration that is not its branch's
    assert len(records) == 10 and len({r["trial_id"] for r in records}) == 10
    for record in records:
        params = record["params"]
        assert set(params) == branch_keys(params) | {"width"}  # no inactive key in a record
        assert space.active(params) == params and space.contains(params)
        assert record["metrics"]["score"] == pytest.approx(score(params))
    assert len({(r["params"]["design"], r["params"].get("model")) for r in records}) >= 2
    if starts:
        ordered = sorted(records, key=lambda r: r["iteration"])
        assert [r["params"] for r in ordered[:2]] == [{**p, "width": 128} for p in starts]


#: The toy kind's space with a conditional parameter: ``layers`` counts for the attention head
#: only (:func:`toy_kind.toy_score` reads it only then).
TOY_SPACE = {
    "parameters": {
        **toy_kind.SPACE["parameters"],
        "layers": {"int": [1, 3], "when": {"head": "attention"}},
    },
    "start": {"default": {"encoder": "a", "head": "mlp", "lr": 1.0e-3}},
}


@pytest.mark.parametrize("name", ["gp", "smac"])
def test_a_conditional_toy_study_records_active_parameters_and_tops_up(local_ray, tmp_path, name):
    space_file = tmp_path / "toy_space.yaml"
    space_file.write_text(yaml.safe_dump(TOY_SPACE, sort_keys=False))
    raw = {
        "name": f"toy-{name}", "kind": "toy", "search_space": str(space_file),
        "search": {"searcher": name, "budget": 6, "seed": 1, "concurrency": 2},
        "storage": {"study_dir": str(tmp_path / "study")}, "comparison": {"random": False},
        "ray": {"num_cpus": 2},
    }  # fmt: skip
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(raw))
    exp = load_experiment(tmp_path / "toy.yaml")
    records = run_study(exp, verbose=-1).records[name]

    def check(records):
        for record in records:
            params = record["params"]
            attention = params["head"] == "attention"
            assert set(params) == {"encoder", "head", "lr", "width"} | ({"layers"} if attention
                                                                        else set())  # fmt: skip
            assert record["metrics"]["score"] == pytest.approx(toy_kind.toy_score(params))

    assert len(records) == 6
    check(records)
    first = min(records, key=lambda r: r["iteration"])
    assert first["params"] == {"encoder": "a", "head": "mlp", "lr": 1e-3, "width": 64}
    runs = study_tracker(exp.study_dir, "aop-toy").child_runs(name)
    assert len(runs) == 6
    for run in runs:  # MLflow's child runs carry the active parameters only
        assert ("layers" in run.data.params) == (run.data.params["head"] == "attention")

    # a top-up (the budget grew): a fresh searcher told every finished trial, of both branches
    saved = exp.study_dir / "experiment.yaml"
    grown = yaml.safe_load(saved.read_text())
    grown["search"]["budget"] = 9
    saved.write_text(yaml.safe_dump(grown))
    again = run_study(load_study_experiment(exp.study_dir), verbose=-1).records[name]
    assert len(again) == 9 and len({r["trial_id"] for r in again}) == 9
    assert {r["trial_id"] for r in records} <= {r["trial_id"] for r in again}
    assert (exp.study_dir / "tune" / f"{name}.topup1").is_dir()
    check(again)
    assert {r["params"]["head"] for r in again} == {"mlp", "attention"}  # both branches told
    kind = get_kind("toy")
    space = kind.search_space(exp)
    told = _topup_factory(exp, kind, space, name, space.start("default"))(again, 1).searcher
    if name == "gp":
        assert len(told._ot_study.trials) == 9  # every record told, with or without layers
        assert told._points_to_evaluate in (None, [])  # the start point was evaluated
    else:
        assert len(told.runhistory) == 9 and told.get_state()["points"] == []

    # the study's plots read records that lack the inactive parameter
    plots = make_study_plots(exp.study_dir)
    assert all(path.is_file() for path in plots)


# ------------------------------------------------------------------------------------------------
# Analysis of records without their inactive parameters
# ------------------------------------------------------------------------------------------------


def test_records_of_several_branches_make_an_optuna_study_and_an_importance_ranking():
    space = _space()
    searcher = make_searcher("random", space, metric="score", seed=0)
    records = []
    for i, config in enumerate(_ask_and_tell(searcher, 40)):
        records.append({"search": "random", "trial_id": f"t{i}", "iteration": i,
                        "params": {**config, "width": 128},
                        "metrics": {"score": score(config)}})  # fmt: skip
    study = records_study(records, "score")
    assert [t.params for t in study.trials] == [r["params"] for r in records]  # none added
    assert all(set(t.distributions) == set(t.params) for t in study.trials)
    # fANOVA over Optuna's intersection search space: the parameters every trial has
    importance = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0))
    assert set(importance) == {"design", "width"}
    assert importance["design"] > importance["width"]
    # within one branch every record holds the branch's parameters: trees is the one that
    # matters among forest's numbers (depth is never set, width is constant)
    forest = [r for r in records if r["params"].get("model") == "forest"]
    assert len(forest) >= 4
    assert influential_parameters(forest, "score", count=2) == ["trees", "width"]
