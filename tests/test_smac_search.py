"""SMACSearch: Tune domains to ConfigSpace, seeds, concurrency, start points, told trials,
restore, a Tuner and its restore."""

from __future__ import annotations

import json
import math
import os
import pickle
import signal
import sys

import pytest
from ray import cloudpickle, tune
from ray.tune.search import Searcher

from aop.errors import AopError
from aop.tuning.smac_search import SMACSearch, config_space

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/

FAST = {"challengers": 200, "local_search_iterations": 3}


def _searcher(space, **kwargs):
    options = {"metric": "score", "mode": "max", "seed": 0, "n_initial_points": 3, **FAST}
    options.update(kwargs)
    return SMACSearch(space, **options)


def _objective(config):
    """Smooth toy landscape over a choice, a log-float and an integer (maximum 1.0)."""
    bonus = {"a": 0.0, "b": 0.3, "c": 0.1}[config["model"]]
    return 0.7 + bonus - 0.1 * (math.log10(config["lr"]) + 2.5) ** 2 - 0.01 * (config["n"] - 6) ** 2


def _loop(searcher, n, start=0, objective=_objective):
    configs = []
    for i in range(start, start + n):
        config = searcher.suggest(f"t{i}")
        configs.append(config)
        searcher.on_trial_complete(f"t{i}", {"score": objective(config)})
    return configs


def _history(searcher):
    """SMAC's run history as ``{Tune configuration: (status, cost)}``."""
    history = {}
    for key, value in searcher.runhistory.items():
        values = searcher.runhistory.get_config(key.config_id)  # the choice: an option index
        config = {"model": "abc"[values["model"]], "lr": values["lr"], "n": values["n"]}
        history[_key(config)] = (value.status.name, value.cost)
    return history


def _key(config):
    return repr(sorted((n, v) for n, v in config.items() if n != "epochs"))


SPACE = {
    "model": tune.choice(["a", "b", "c"]),
    "lr": tune.loguniform(1e-4, 1e-1),
    "n": tune.randint(1, 11),
    "epochs": 5,
}


def test_every_domain_kind_converts_to_configspace():
    space = {
        "choice": tune.choice([1, True, "x", 2.5]),
        "randint": tune.randint(0, 5),
        "lograndint": tune.lograndint(1, 100),
        "one": tune.randint(3, 4),  # an integer range of one value (an aop {int: [3, 3]})
        "uniform": tune.uniform(-1.0, 1.0),
        "loguniform": tune.loguniform(1e-4, 1e-1),
        "constant": 7,
    }
    cs = config_space(space)
    kinds = {name: type(hp).__name__ for name, hp in cs.items()}
    assert kinds == {
        "choice": "CategoricalHyperparameter",
        "randint": "UniformIntegerHyperparameter",
        "lograndint": "UniformIntegerHyperparameter",
        "one": "CategoricalHyperparameter",
        "uniform": "UniformFloatHyperparameter",
        "loguniform": "UniformFloatHyperparameter",
    }
    assert list(cs["choice"].choices) == [0, 1, 2, 3]  # option indices: 1 and True stay apart
    # Tune's randint/lograndint exclude the upper bound, ConfigSpace includes it
    assert (cs["randint"].lower, cs["randint"].upper, cs["randint"].log) == (0, 4, False)
    assert (cs["lograndint"].lower, cs["lograndint"].upper, cs["lograndint"].log) == (1, 99, True)
    assert list(cs["one"].choices) == [3]
    assert (cs["uniform"].lower, cs["uniform"].upper) == (-1.0, 1.0)
    assert cs["loguniform"].log and not cs["uniform"].log

    searcher = _searcher(space, n_initial_points=8)
    seen = []
    for i in range(12):
        config = searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {"score": float(i % 5)})
        seen.append(config)
        assert config["constant"] == 7 and config["one"] == 3
        assert any(config["choice"] == c and type(config["choice"]) is type(c)
                   for c in (1, True, "x", 2.5))  # fmt: skip
        assert isinstance(config["randint"], int) and 0 <= config["randint"] <= 4
        assert isinstance(config["lograndint"], int) and 1 <= config["lograndint"] <= 99
        assert -1.0 <= config["uniform"] <= 1.0 and 1e-4 <= config["loguniform"] <= 1e-1
        for name, domain in space.items():
            if hasattr(domain, "is_valid"):
                assert domain.is_valid(config[name]), (name, config[name])
    assert len({repr(sorted(c.items())) for c in seen}) == 12

    unsupported = {
        "qrandint": tune.qrandint(0, 10, 2),
        "qlograndint": tune.qlograndint(2, 64, 2),
        "quniform": tune.quniform(0.0, 1.0, 0.25),
        "qloguniform": tune.qloguniform(0.01, 1.0, 0.01),
        "randn": tune.randn(2.0, 0.5),
        "qrandn": tune.qrandn(2.0, 0.5, 0.1),
        "sample_from": tune.sample_from(lambda _: 1),
        "grid_search": tune.grid_search([1, 2]),
        "nested": {"inner": tune.uniform(0, 1)},
    }
    messages = {
        "qrandint": "a Quantized Integer", "qlograndint": "a Quantized Integer",
        "quniform": "a Quantized Float", "qloguniform": "a Quantized Float",
        "randn": "a Normal Float", "qrandn": "a Quantized Float",
        "sample_from": "tune.sample_from", "grid_search": "tune.grid_search",
        "nested": "a nested dict",
    }  # fmt: skip
    for name, domain in unsupported.items():
        with pytest.raises(AopError) as caught:
            config_space({"lr": tune.uniform(0, 1), name: domain})
        message = str(caught.value)
        assert message.startswith(f"search space: {name}: {messages[name]} is not supported")
        assert "\n" not in message and "tune.loguniform" in message  # one line, what is supported
    with pytest.raises(AopError, match="unknown option 'trees'"):
        SMACSearch(SPACE, metric="score", mode="max", trees=3)
    with pytest.raises(AopError, match="mode"):
        SMACSearch(SPACE, metric="score", mode="maximum")
    with pytest.raises(AopError, match=r"points_to_evaluate\[0\].n: 11 is outside \[1, 10\]"):
        _searcher(SPACE, points_to_evaluate=[{"model": "a", "lr": 1e-3, "n": 11}])


def test_same_seed_same_suggestions_and_surrogate_improves():
    first = _loop(_searcher(SPACE, seed=3), 10)
    again = _loop(_searcher(SPACE, seed=3), 10)
    other = _loop(_searcher(SPACE, seed=4), 10)
    assert first == again
    assert first != other
    # after the 3 initial points the random forest steers towards the optimum (1.0): its
    # suggestions score better on average than the initial design's
    scores = [_objective(c) for c in first]
    assert sum(scores[3:]) / 7 > sum(scores[:3]) / 3


def test_concurrent_suggestions_are_distinct_until_the_space_is_exhausted():
    space = {"x": tune.choice(list(range(4))), "y": tune.choice(["p", "q", "r"])}
    searcher = _searcher(space, n_initial_points=2)
    pending = [searcher.suggest(f"t{i}") for i in range(8)]  # 8 asks before any result
    assert len({(c["x"], c["y"]) for c in pending}) == 8
    for i, config in enumerate(pending[:5]):
        searcher.on_trial_complete(f"t{i}", {"score": config["x"] + 0.1 * i})
    rest = []
    for i in range(8, 20):
        config = searcher.suggest(f"t{i}")
        if config == Searcher.FINISHED:
            break
        rest.append(config)
    everything = {(c["x"], c["y"]) for c in pending + rest}
    assert len(pending + rest) == 12 and len(everything) == 12  # all 4 x 3, each once
    assert searcher.suggest("t99") == Searcher.FINISHED


def test_points_first_in_order_and_failures_are_crashed_trials():
    from smac.runhistory.enumerations import StatusType

    points = [{"model": "c", "lr": 1e-2, "n": 2}, {"model": "a", "lr": 1e-3}]
    searcher = _searcher(SPACE, points_to_evaluate=points, mode="min")
    one, two, three = (searcher.suggest(f"t{i}") for i in range(3))
    assert one == {"model": "c", "lr": 1e-2, "n": 2, "epochs": 5}
    assert (two["model"], two["lr"]) == ("a", 1e-3) and 1 <= two["n"] <= 10  # n drawn
    assert three not in (one, two)
    searcher.on_trial_complete("t0", {"score": 0.25})
    searcher.on_trial_complete("t1", error=True)
    searcher.on_trial_complete("t2", {"other": 1.0})  # metric missing
    statuses = [v.status for v in searcher.runhistory.values()]
    costs = [v.cost for v in searcher.runhistory.values()]
    assert statuses == [StatusType.SUCCESS, StatusType.CRASHED, StatusType.CRASHED]
    assert costs[0] == 0.25  # mode min: the metric itself is the cost
    maximiser = _searcher(SPACE, points_to_evaluate=points[:1])
    maximiser.suggest("m")
    maximiser.on_trial_complete("m", {"score": 0.25})
    assert [v.cost for v in maximiser.runhistory.values()] == [-0.25]
    # a start point is suggested with its own values (ConfigSpace keeps 13 decimals of a float)
    precise = {"model": "b", "lr": 0.00123456789012345, "n": 3, "epochs": 5}
    assert _searcher(SPACE, points_to_evaluate=[precise]).suggest("p") == precise


def test_the_engine_builds_smac_on_every_kind_of_aop_space_and_tops_it_up():
    from aop.tuning.searchers import make_searcher
    from aop.tuning.space import parse_space

    space = parse_space({"parameters": {
        "encoder": {"choice": ["r18", "r50", 1, True]},
        "layers": {"int": [1, 3]},
        "batch": {"int": [8, 64], "log": True},
        "single": {"int": [2, 2]},
        "dropout": {"float": [0.0, 0.5]},
        "lr": {"float": [1.0e-5, 1.0e-2], "log": True},
        "width": 256,
    }})  # fmt: skip
    start = {"encoder": True, "layers": 3, "batch": 8, "single": 2, "dropout": 0.5, "lr": 1e-5}

    def searcher(starts):
        return make_searcher("smac", space, metric="score", mode="max", seed=1, concurrency=2,
                             start_points=starts, n_startup_trials=2)  # fmt: skip

    def run(searcher, n):
        configs = []
        for i in range(n):
            config = searcher.suggest(f"t{i}")
            assert space.contains(config) and "width" not in config  # the factory gives domains
            searcher.on_trial_complete(f"t{i}", {"score": config["layers"] + config["dropout"]})
            configs.append(config)
        return configs

    done = run(searcher([start]), 6)
    assert done[0] == start and type(done[0]["encoder"]) is bool  # True, not the option 1
    topup = searcher([])  # the study engine's top-up: start points evaluated, trials told
    for config in done:
        topup.add_evaluated_point(config, config["layers"] + config["dropout"])
    more = run(topup, 6)
    assert len({repr(sorted(c.items())) for c in done + more}) == 12


def test_restored_searcher_holds_the_told_trials_and_never_repeats_one(tmp_path):
    uninterrupted = _searcher(SPACE, seed=5)
    before = _loop(uninterrupted, 6)
    pending = [uninterrupted.suggest("p0"), uninterrupted.suggest("p1")]
    path = tmp_path / "searcher.pkl"
    uninterrupted.save(str(path))
    state = pickle.loads(path.read_bytes())
    assert len(json.loads(state["runhistory"])["data"]) == 8  # SMAC's own run history (JSON)
    assert sorted(state["pending"]) == ["p0", "p1"] and state["points"] == []

    restored = SMACSearch()
    restored.restore(str(path))
    copied = pickle.loads(pickle.dumps(uninterrupted))  # how Tuner.restore gets its searcher
    told = {_key(c): ("SUCCESS", -_objective(c)) for c in before}
    running = {_key(c): ("RUNNING", None) for c in pending}
    for searcher in (restored, copied):
        history = _history(searcher)
        # exactly the told trials, with their costs (mode max: the negated score), and the
        # pending ones as running
        assert {k: v for k, v in history.items() if v[0] != "RUNNING"} == told
        assert {k: (v[0], None) for k, v in history.items() if v[0] == "RUNNING"} == running

    for searcher in (uninterrupted, restored, copied):
        for trial_id, config in zip(("p0", "p1"), pending, strict=True):
            searcher.on_trial_complete(trial_id, {"score": _objective(config)})
    everything = {**told, **{_key(c): ("SUCCESS", -_objective(c)) for c in pending}}
    for searcher in (restored, copied):
        assert _history(searcher) == everything  # the pending trials were told after restore
        after = _loop(searcher, 8, start=10)
        configs = [_key(c) for c in before + pending + after]
        assert len(set(configs)) == 16  # no configuration suggested twice across the restore
        # the surrogate, fitted on the restored history, beats the initial design (3 points)
        scores = [_objective(c) for c in after]
        assert sum(scores) / len(scores) > sum(_objective(c) for c in before[:3]) / 3
        assert len(searcher.runhistory) == 16

    path.write_bytes(pickle.dumps({**state, "version": 1}))
    with pytest.raises(AopError, match="unknown state version 1"):
        SMACSearch().restore(str(path))
    path.write_bytes(b"not a pickle")
    with pytest.raises(AopError, match="cannot read the SMAC searcher state"):
        SMACSearch().restore(str(path))


def test_add_evaluated_point_gives_smac_the_history():
    from smac.runhistory.enumerations import StatusType

    points = [
        {"model": "a", "lr": 1e-3, "n": 2},
        {"model": "b", "lr": 3e-3, "n": 6},
        {"model": "c", "lr": 1e-2, "n": 9},
        {"model": "b", "lr": 1e-4, "n": 1, "epochs": 5},  # a constant is ignored
    ]
    searcher = _searcher(SPACE)
    for point in points:
        searcher.add_evaluated_point(point, _objective(point))
    searcher.add_evaluated_point({"model": "a", "lr": 0.1, "n": 10}, 0.0, error=True)
    statuses = [v.status for v in searcher.runhistory.values()]
    costs = [v.cost for v in searcher.runhistory.values()]
    assert statuses == [StatusType.SUCCESS] * 4 + [StatusType.CRASHED]
    assert costs[:4] == [-_objective(p) for p in points]  # mode max: the negated score
    told = {_key(p) for p in points} | {_key({"model": "a", "lr": 0.1, "n": 10})}
    assert set(_history(searcher)) == told
    later = _loop(searcher, 8, start=0)
    assert not told & {_key(c) for c in later}  # the next suggestions differ from them
    assert len(searcher.runhistory) == 13

    minimiser = _searcher(SPACE, mode="min")
    minimiser.add_evaluated_point(points[0], 0.25)
    assert [v.cost for v in minimiser.runhistory.values()] == [0.25]
    with pytest.raises(AopError, match=r"add_evaluated_point.n: 11 is outside \[1, 10\]$"):
        searcher.add_evaluated_point({"model": "a", "lr": 1e-3, "n": 11}, 0.5)
    with pytest.raises(AopError, match=r"add_evaluated_point.model: 'd' is not one of"):
        searcher.add_evaluated_point({"model": "d", "lr": 1e-3, "n": 1}, 0.5)
    with pytest.raises(AopError, match=r"add_evaluated_point.lr: 'fast' is outside"):
        searcher.add_evaluated_point({"model": "a", "lr": "fast", "n": 1}, 0.5)
    with pytest.raises(AopError, match="the searched parameter n is missing"):
        searcher.add_evaluated_point({"model": "a", "lr": 1e-3}, 0.5)
    with pytest.raises(AopError, match="no search space"):
        SMACSearch(metric="score", mode="max").add_evaluated_point(points[0], 0.5)


def test_a_top_up_searcher_told_the_finished_trials_does_not_suggest_them_again():
    first = _loop(_searcher(SPACE, seed=7), 8)
    assert _loop(_searcher(SPACE, seed=7), 2) == first[:2]  # untold, it would start over
    topup = _searcher(SPACE, seed=7)
    for config in first:
        topup.add_evaluated_point(config, _objective(config))
    assert len(topup.runhistory) == 8
    more = _loop(topup, 8, start=8)
    assert len({_key(c) for c in first + more}) == 16
    assert len(topup.runhistory) == 16


def test_tuner_runs_smac_search(tmp_path):
    import ray

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    cwd_before = set(os.listdir("."))

    def trainable(config):
        tune.report({"score": _objective(config), "epochs": config["epochs"]})

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            trainable,
            param_space=SPACE,  # handed to the searcher through set_search_properties
            tune_config=tune.TuneConfig(
                search_alg=SMACSearch(seed=0, n_initial_points=3, **FAST),
                metric="score",
                mode="max",
                num_samples=6,
                max_concurrent_trials=2,
            ),
            run_config=tune.RunConfig(name="smac", storage_path=str(tmp_path), verbose=0),
        )
        results = tuner.fit()
    finally:
        ray.shutdown()
    assert len(results) == 6 and not results.errors
    assert {r.metrics["epochs"] for r in results} == {5}  # constants passed through
    assert len({repr(sorted(r.config.items())) for r in results}) == 6
    assert set(os.listdir(".")) == cwd_before  # SMAC left no output folder behind


class _InterruptOnce(tune.Callback):
    """Interrupt the Tune run once, after ``n`` finished trials, as a Ctrl+C would.

    Tune's handler of SIGUSR1 saves the experiment and the searcher state, and returns. The
    marker file keeps the restored run (which unpickles this callback) from interrupting again.
    """

    def __init__(self, n: int, marker: str) -> None:
        self.n, self.marker, self.done = n, marker, 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.done += 1
        if self.done == self.n and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGUSR1)


def test_tuner_restore_continues_the_smac_search_to_its_budget(tmp_path):
    import ray

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

    def trainable(config):
        tune.report({"score": _objective(config)})

    budget, path = 8, str(tmp_path / "smac")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            trainable,
            param_space=SPACE,
            tune_config=tune.TuneConfig(
                search_alg=SMACSearch(seed=0, n_initial_points=3, **FAST),
                metric="score",
                mode="max",
                num_samples=budget,
                max_concurrent_trials=2,
            ),
            run_config=tune.RunConfig(
                name="smac",
                storage_path=str(tmp_path),
                verbose=0,
                callbacks=[_InterruptOnce(3, str(tmp_path / "interrupted"))],
            ),
        )
        first = [r for r in tuner.fit() if r.metrics and "score" in r.metrics]
        assert 3 <= len(first) < budget, "the search was not interrupted"
        saved = SMACSearch()
        saved.restore_from_dir(path)
        saved_history = _history(saved)  # at the interruption: the finished trials, told
        told = {k for k, v in saved_history.items() if v[0] == "SUCCESS"}
        assert told and told <= {_key(r.config) for r in first}
        running = [k for k, v in saved_history.items() if v[0] == "RUNNING"]
        assert len(running) == len(saved.get_state()["pending"])  # the trials Tune resumes
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, param_space=SPACE)
        results = tuner.fit()
    finally:
        ray.shutdown()
    assert len(results) == budget and not results.errors
    configs = {_key(r.config) for r in results}
    assert len(configs) == budget  # the restored searcher repeated no configuration
    assert {_key(r.config) for r in first} <= configs
    searcher = SMACSearch()
    searcher.restore_from_dir(path)  # the searcher state Tune saved at the end
    # SMAC's run history holds every trial of the budget, before and after the restore, with
    # its cost; none is left running
    assert _history(searcher) == {_key(r.config): ("SUCCESS", -r.metrics["score"]) for r in results}


# ------------------------------------------------------------------------------------------------
# Conditions: a parameter active only for some values of its parents
# ------------------------------------------------------------------------------------------------

BRANCHED = {
    "design": tune.choice(["deep", "features"]),
    "encoder": tune.choice(["small", "large"]),
    "model": tune.choice(["logreg", "forest", "boosting"]),
    "c": tune.loguniform(1e-3, 100.0),
    "trees": tune.randint(50, 501),
    "depth": tune.randint(2, 9),
    "width": 128,
}
CONDITIONS = {
    "encoder": {"design": ["deep"]},
    "model": {"design": ["features"]},
    "c": {"model": ["logreg"]},
    "trees": {"model": ["forest", "boosting"]},
    "depth": {"design": ["features"], "model": ["boosting"]},
}


def _active(config):
    """The searched parameters of a configuration's branch, written out by hand."""
    if config["design"] == "deep":
        return {"design", "encoder"}
    return {"design", "model", {"logreg": "c", "forest": "trees", "boosting": "trees"}[
        config["model"]]} | ({"depth"} if config["model"] == "boosting" else set())  # fmt: skip


def _branch_score(config):
    if config["design"] == "deep":
        return 0.5 + 0.2 * (config["encoder"] == "large")
    if config["model"] == "logreg":
        return 0.6 - 0.05 * math.log10(config["c"]) ** 2
    return 0.2 + config["trees"] / 1000 + 0.01 * config.get("depth", 0)


def _branch_key(config):
    return repr(sorted((n, v) for n, v in config.items() if n in _active(config)))


def test_conditions_become_configspace_conditions():
    cs = config_space(BRANCHED, conditions=CONDITIONS)
    written = {str(c) for c in cs.conditions}
    assert written == {
        "encoder | design == 0", "model | design == 1", "c | model == 0",
        "trees | model in {1, 2}", "(depth | design == 1 && depth | model == 2)",
    }  # fmt: skip
    kinds = {type(c).__name__ for c in cs.conditions}
    assert kinds == {"EqualsCondition", "InCondition", "AndConjunction"}
    # a condition on a constant that holds is left out; one on a bool option keeps it apart
    cs = config_space({"flag": tune.choice([1, True]), "x": tune.uniform(0, 1), "k": "on",
                       "y": tune.uniform(0, 1)},
                      conditions={"x": {"flag": [True]}, "y": {"k": "on"}})  # fmt: skip
    assert [str(c) for c in cs.conditions] == ["x | flag == 1"]
    for conditions, message in [
        ({"c": {"modle": ["logreg"]}}, "search space: c.when.modle: unknown parameter"),
        ({"c": {"trees": [60]}}, "search space: c.when.trees: a condition needs a tune.choice "
         "parent or a constant"),
        ({"c": {"model": ["svm"]}}, "search space: c.when.model: 'svm' is not one of "
         "['logreg', 'forest', 'boosting']"),
        ({"c": {"width": [64]}}, "search space: c.when.width: the constant 128 is none of [64]"),
        ({"width": {"model": ["logreg"]}}, "search space: width.when: width is not a searched "
         "parameter"),
        ({"encoder": {"model": ["logreg"]}, "model": {"encoder": ["small"]}},
         "search space: model.when: a cycle of conditions through encoder"),
    ]:  # fmt: skip
        with pytest.raises(AopError) as caught:
            config_space(BRANCHED, conditions=conditions)
        assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_a_conditional_smac_search_holds_only_active_parameters_and_restores(tmp_path):
    from smac.runhistory.enumerations import StatusType

    points = [{"design": "deep", "encoder": "large"},
              {"design": "features", "model": "boosting", "trees": 300}]  # depth drawn
    searcher = _searcher(BRANCHED, conditions=CONDITIONS, points_to_evaluate=points)
    configs = _loop(searcher, 12, objective=_branch_score)
    assert configs[0] == {**points[0], "width": 128}
    assert {k: configs[1][k] for k in ("design", "model", "trees")} == points[1]
    assert 2 <= configs[1]["depth"] <= 8
    for config in configs:
        assert set(config) == _active(config) | {"width"}
    assert len({_branch_key(c) for c in configs}) == 12
    assert len({(c["design"], c.get("model")) for c in configs}) >= 3

    # told trials: inactive parameters, absent or given, are left out of SMAC's history
    told = _searcher(BRANCHED, conditions=CONDITIONS)
    told.add_evaluated_point({"design": "deep", "encoder": "small"}, 0.5)
    told.add_evaluated_point({"design": "deep", "encoder": "large", "c": 1.0, "trees": 60}, 0.7)
    told.add_evaluated_point({"design": "features", "model": "logreg", "c": 1.0}, 0.6)
    told.add_evaluated_point({"design": "features", "model": "forest", "trees": 99}, 0.0,
                             error=True)  # fmt: skip
    history = [dict(told.runhistory.get_config(k.config_id)) for k in told.runhistory]
    assert history == [{"design": 0, "encoder": 0}, {"design": 0, "encoder": 1},
                       {"design": 1, "model": 0, "c": 1.0},
                       {"design": 1, "model": 1, "trees": 99}]  # fmt: skip
    statuses = [v.status for v in told.runhistory.values()]
    assert statuses == [StatusType.SUCCESS] * 3 + [StatusType.CRASHED]
    with pytest.raises(AopError, match="the searched parameter depth is missing"):
        told.add_evaluated_point({"design": "features", "model": "boosting", "trees": 60}, 0.5)
    more = _loop(told, 6, objective=_branch_score)
    assert all(set(c) == _active(c) | {"width"} for c in more)
    assert not {_branch_key(c) for c in more} & {
        _branch_key({"design": "deep", "encoder": "small"}),
        _branch_key({"design": "deep", "encoder": "large"}),
        _branch_key({"design": "features", "model": "logreg", "c": 1.0})}  # fmt: skip

    # save and restore: the state holds the conditions; the history its active values
    pending = searcher.suggest("p0")
    path = tmp_path / "searcher.pkl"
    searcher.save(str(path))
    state = pickle.loads(path.read_bytes())
    assert state["version"] == 3 and state["conditions"] == CONDITIONS
    assert set(state["pending"]["p0"]) == _active(pending)
    for restored in (SMACSearch(), pickle.loads(pickle.dumps(searcher))):
        if not restored.runhistory:
            restored.restore(str(path))
        assert [dict(restored.runhistory.get_config(k.config_id)) for k in restored.runhistory] \
            == [dict(searcher.runhistory.get_config(k.config_id)) for k in searcher.runhistory]
        restored.on_trial_complete("p0", {"score": _branch_score(pending)})
        after = _loop(restored, 6, start=20, objective=_branch_score)
        assert all(set(c) == _active(c) | {"width"} for c in after)
        keys = [_branch_key(c) for c in configs + [pending] + after]
        assert len(set(keys)) == 19  # no configuration suggested twice across the restore
    # a state of the version before conditions (2) still loads, as a space without conditions
    flat = _searcher(SPACE)
    _loop(flat, 3)
    old = {k: v for k, v in flat.get_state().items() if k != "conditions"}
    path.write_bytes(pickle.dumps({**old, "version": 2}))
    again = SMACSearch()
    again.restore(str(path))
    assert len(again.runhistory) == 3 and not again._cs.conditions


def test_tuner_restore_continues_a_conditional_smac_search(tmp_path):
    import ray

    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

    def trainable(config):
        if set(config) != _active(config) | {"width"}:
            raise ValueError(f"not the active parameters of its branch: {sorted(config)}")
        tune.report({"score": _branch_score(config)})

    # the searcher gets the space and the Tuner the constants (as in aop's engine): Tune merges
    # each suggestion into the param_space, where an inactive domain would stay unsampled
    budget, path, constants = 8, str(tmp_path / "smac"), {"width": 128}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            trainable,
            param_space=constants,
            tune_config=tune.TuneConfig(
                search_alg=_searcher(BRANCHED, conditions=CONDITIONS),
                num_samples=budget,
                max_concurrent_trials=2,
            ),
            run_config=tune.RunConfig(
                name="smac",
                storage_path=str(tmp_path),
                verbose=0,
                callbacks=[_InterruptOnce(3, str(tmp_path / "interrupted"))],
            ),
        )
        first = [r for r in tuner.fit() if r.metrics and "score" in r.metrics]
        assert 3 <= len(first) < budget, "the search was not interrupted"
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True,
                                   param_space=constants)  # fmt: skip
        results = tuner.fit()
    finally:
        ray.shutdown()
    assert len(results) == budget and not results.errors  # every trial had its branch's keys
    configs = {_branch_key(r.config) for r in results}
    assert len(configs) == budget and {_branch_key(r.config) for r in first} <= configs
    searcher = SMACSearch()
    searcher.restore_from_dir(path)
    assert len(searcher.runhistory) == budget
    assert {v.status.name for v in searcher.runhistory.values()} == {"SUCCESS"}
