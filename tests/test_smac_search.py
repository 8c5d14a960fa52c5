"""SMACSearch: Tune domains to ConfigSpace, seeds, concurrency, start points, restore, a Tuner."""

from __future__ import annotations

import math
import os
import pickle
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


SPACE = {
    "model": tune.choice(["a", "b", "c"]),
    "lr": tune.loguniform(1e-4, 1e-1),
    "n": tune.randint(1, 11),
    "epochs": 5,
}


def test_every_domain_kind_converts_to_configspace():
    space = {
        "choice": tune.choice([None, [1, 2], "x"]),
        "randint": tune.randint(0, 5),
        "lograndint": tune.lograndint(1, 100),
        "qrandint": tune.qrandint(0, 10, 2),
        "qlograndint": tune.qlograndint(2, 64, 2),
        "uniform": tune.uniform(-1.0, 1.0),
        "loguniform": tune.loguniform(1e-4, 1e-1),
        "quniform": tune.quniform(0.0, 1.0, 0.25),
        "qloguniform": tune.qloguniform(0.01, 1.0, 0.01),
        "randn": tune.randn(2.0, 0.5),
        "nested": {"inner": tune.uniform(0, 1), "fixed": "keep"},
        "constant": 7,
    }
    cs, params = config_space(space)
    kinds = {p.name: (type(cs[p.name]).__name__, p.kind) for p in params}
    assert kinds == {
        "choice": ("CategoricalHyperparameter", "choice"),
        "randint": ("UniformIntegerHyperparameter", "int"),
        "lograndint": ("UniformIntegerHyperparameter", "int"),
        "qrandint": ("UniformIntegerHyperparameter", "grid"),
        "qlograndint": ("UniformIntegerHyperparameter", "grid"),
        "uniform": ("UniformFloatHyperparameter", "float"),
        "loguniform": ("UniformFloatHyperparameter", "float"),
        "quniform": ("UniformIntegerHyperparameter", "grid"),
        "qloguniform": ("UniformIntegerHyperparameter", "grid"),
        "randn": ("NormalFloatHyperparameter", "float"),
        "nested/inner": ("UniformFloatHyperparameter", "float"),
    }
    # Tune's upper bounds: randint/lograndint exclusive, quantized inclusive (grid indices)
    assert (cs["randint"].lower, cs["randint"].upper) == (0, 4)
    assert (cs["lograndint"].lower, cs["lograndint"].upper, cs["lograndint"].log) == (1, 99, True)
    assert (cs["qrandint"].lower, cs["qrandint"].upper) == (0, 5)
    qlog = cs["qlograndint"]
    assert (qlog.lower, qlog.upper, qlog.log) == (1, 32, True)
    assert (cs["quniform"].lower, cs["quniform"].upper) == (0, 4)
    assert (cs["qloguniform"].lower, cs["qloguniform"].upper) == (1, 100)
    assert cs["loguniform"].log and not cs["uniform"].log
    assert cs["randn"].mu == 2.0 and cs["randn"].sigma == 0.5
    assert (cs["randn"].lower, cs["randn"].upper) == (0.0, 4.0)

    searcher = _searcher(space, n_initial_points=8)
    seen = []
    for i in range(12):
        config = searcher.suggest(f"t{i}")
        searcher.on_trial_complete(f"t{i}", {"score": float(i % 5)})
        seen.append(config)
        assert config["constant"] == 7 and config["nested"]["fixed"] == "keep"
        assert config["choice"] in (None, [1, 2], "x")
        assert isinstance(config["randint"], int) and 0 <= config["randint"] <= 4
        assert 1 <= config["lograndint"] <= 99
        assert config["qrandint"] in range(0, 11, 2)
        assert config["qlograndint"] % 2 == 0 and 2 <= config["qlograndint"] <= 64
        assert -1.0 <= config["uniform"] <= 1.0 and 1e-4 <= config["loguniform"] <= 1e-1
        assert config["quniform"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert round(config["qloguniform"] / 0.01) == pytest.approx(config["qloguniform"] / 0.01)
        assert 0.0 <= config["randn"] <= 4.0 and 0.0 <= config["nested"]["inner"] <= 1.0
        for name, domain in space.items():
            if hasattr(domain, "is_valid") and name not in ("randn",):
                assert domain.is_valid(config[name]), (name, config[name])
    assert len({repr(sorted(c.items())) for c in seen}) == 12

    with pytest.raises(AopError, match="grid_search"):
        config_space({"a": tune.grid_search([1, 2])})
    with pytest.raises(AopError, match="sample_from"):
        config_space({"a": tune.sample_from(lambda _: 1)})
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


def test_suggestions_do_not_depend_on_the_hash_seed_of_the_process():
    """A driver restarted by aop resume (a new process, a new string hash) replays its searcher."""
    import subprocess

    script = (
        "import json, sys; sys.path.insert(0, 'tests')\n"
        "from test_smac_search import _searcher, SPACE, _loop\n"
        "print(json.dumps(_loop(_searcher(SPACE, seed=3), 8)))\n"
    )
    runs = []
    for hash_seed in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                              env={**os.environ, "PYTHONHASHSEED": hash_seed}, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(done.stdout.strip().splitlines()[-1])
    assert runs[0] == runs[1]


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
    statuses = [v.status for v in searcher._facade.runhistory.values()]
    costs = [v.cost for v in searcher._facade.runhistory.values()]
    assert statuses == [StatusType.SUCCESS, StatusType.CRASHED, StatusType.CRASHED]
    assert costs[0] == 0.25  # mode min: the metric itself is the cost
    maximiser = _searcher(SPACE, points_to_evaluate=points[:1])
    maximiser.suggest("m")
    maximiser.on_trial_complete("m", {"score": 0.25})
    assert [v.cost for v in maximiser._facade.runhistory.values()] == [-0.25]


def test_restored_searcher_continues_exactly(tmp_path):
    uninterrupted = _searcher(SPACE, seed=5)
    _loop(uninterrupted, 6)
    pending = [uninterrupted.suggest("p0"), uninterrupted.suggest("p1")]
    path = tmp_path / "searcher.pkl"
    uninterrupted.save(str(path))

    restored = SMACSearch()
    restored.restore(str(path))
    copied = pickle.loads(pickle.dumps(uninterrupted))  # how Tuner.restore gets its searcher
    for searcher in (uninterrupted, restored, copied):
        for trial_id, config in zip(("p0", "p1"), pending, strict=True):
            searcher.on_trial_complete(trial_id, {"score": _objective(config)})
    expected = _loop(uninterrupted, 4, start=10)
    assert _loop(restored, 4, start=10) == expected
    assert _loop(copied, 4, start=10) == expected

    # a log SMAC does not replay (another SMAC version): continue from the told history
    state = pickle.loads(path.read_bytes())
    entry = state["log"][0]
    state["log"][0] = (entry[0], entry[1], {**entry[2], "n": entry[2]["n"] % 10 + 1}, entry[3])
    path.write_bytes(pickle.dumps(state))
    fallback = SMACSearch()
    fallback.restore(str(path))
    told = {repr(sorted(e[2].items())) for e in state["log"] if e[0] in ("ask", "point")}
    assert len(fallback._facade.runhistory) == 8
    for trial_id, config in zip(("p0", "p1"), pending, strict=True):
        fallback.on_trial_complete(trial_id, {"score": _objective(config)})
    for config in _loop(fallback, 4, start=10):
        cs_values = {"model": "abc".index(config["model"]), "lr": config["lr"], "n": config["n"]}
        assert repr(sorted(cs_values.items())) not in told

    path.write_bytes(b"not a pickle")
    with pytest.raises(AopError, match="cannot read the SMAC searcher state"):
        SMACSearch().restore(str(path))


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
