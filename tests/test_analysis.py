"""Trial records, search comparison (paired t-tests) and study plots, on hand-made records."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.image import imread
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.importance import FanovaImportanceEvaluator, get_param_importances
from scipy import stats

from aop.analysis import (
    append_record,
    best_record,
    compare_searches,
    read_records,
    read_study_records,
    significance_stars,
    validate_record,
)
from aop.analysis.plots import (
    influential_parameters,
    make_study_plots,
    plot_parameter_contour,
    records_study,
)
from aop.errors import AopError
from aop.metrics import IPQ_SCORES as METRICS
from aop.segmentation.params import PARAMETER_RANGES

#: The Fig. 4 colours a segmentation study passes: IPQ grey, SQ pink, RQ orange, IQ blue.
COLOURS = {"ipq": "#8c8c8c", "sq": "#e377c2", "rq": "#ff9f40", "iq": "#4a90d9"}
RANGES = {name: (low, high) for name, (_, low, high) in PARAMETER_RANGES.items()}
#: How a segmentation study compares its searches (its kind's metrics, pooled baseline, model).
SEGMENTATION = {"metrics": METRICS, "pooled": ("baseline",), "group": "model"}

KEYS = (
    "erode_dilate", "open_close", "merge_continuity", "merge_smoothness", "merge_area",
    "split_sigma", "split_threshold",
)


def params(**values: float) -> dict[str, float]:
    return {key: values.get(key, 0) for key in KEYS}


def record(search, trial_id, model, per_volume_ipq, iteration=-1, **param_values):
    """A record whose SQ/RQ/IQ are fixed functions of IPQ, so every metric can be checked."""
    per_volume = {
        f"v{i}": {"ipq": x, "sq": 0.5 + x / 2, "rq": x**0.5, "iq": 1 - x / 4}
        for i, x in enumerate(per_volume_ipq)
    }
    means = {m: float(np.mean([s[m] for s in per_volume.values()])) for m in METRICS}
    return {
        "search": search, "trial_id": trial_id,
        "params": {"model": model, **params(**param_values)}, "metrics": means,
        "per_volume": per_volume, "duration_s": 1.5, "node": "n1", "iteration": iteration,
    }


# -- records --------------------------------------------------------------------------------------


def test_validate_record_normalises_and_names_bad_fields():
    rec = validate_record(
        {"search": "smac", "trial_id": 7, "params": {"encoder": "resnet18", "lr": 1e-3,
         "layers": 2, "frozen": True}, "metrics": {"val_accuracy": 1}}
    )
    assert rec["trial_id"] == "7" and rec["metrics"]["val_accuracy"] == 1.0
    assert isinstance(rec["metrics"]["val_accuracy"], float)
    assert rec["params"] == {"encoder": "resnet18", "lr": 1e-3, "layers": 2, "frozen": True}
    assert rec["per_volume"] == {} and rec["iteration"] == -1 and np.isnan(rec["duration_s"])
    good = record("gp", "t", "m", [0.5])
    for broken, message in [
        ({k: v for k, v in good.items() if k != "metrics"}, "missing field 'metrics'"),
        ({**good, "metrics": {"ipq": "high"}}, "metrics.ipq: expected a number"),
        ({**good, "metrics": {"ipq": float("nan")}}, "finite"),
        ({**good, "metrics": {}}, "field 'metrics' is empty"),
        ({**good, "params": {"open_close": None}}, "params.open_close"),
        ({**good, "per_volume": {"v0": {"ipq": None}}}, "per_volume.v0.ipq"),
        ({**good, "search": ""}, "'search' must be a non-empty string"),
        ({**good, "iteration": 1.5}, "'iteration' must be an integer"),
    ]:
        with pytest.raises(AopError, match=message):
            validate_record(broken, "results/gp.jsonl line 3")
    with pytest.raises(AopError, match="results/gp.jsonl line 3: expected a JSON object"):
        validate_record([1, 2], "results/gp.jsonl line 3")


def test_records_from_before_study_kinds_read_as_segmentation_records():
    legacy = {"search": "gp", "trial_id": "t", "model": "unet", "params": {"open_close": 1},
              "ipq": 0.5, "sq": 0.8, "rq": 0.7, "iq": 0.9, "iteration": 2}
    rec = validate_record(legacy)
    assert rec["params"] == {"model": "unet", "open_close": 1}
    assert rec["metrics"] == {"ipq": 0.5, "sq": 0.8, "rq": 0.7, "iq": 0.9}
    assert "model" not in rec and "ipq" not in rec and rec["iteration"] == 2
    with pytest.raises(AopError, match="params.open_close: expected a finite number"):
        validate_record({**legacy, "params": {"open_close": float("inf")}})


def test_append_and_read_records_round_trip(tmp_path):
    path = tmp_path / "results" / "gp.jsonl"
    records = [
        record("gp", f"t{i}", "m", [0.1 * i, 0.2], iteration=i, erode_dilate=i) for i in range(3)
    ]
    for rec in records:
        append_record(path, rec)
    assert read_records(path) == [validate_record(r) for r in records]
    assert len(path.read_text().splitlines()) == 3


def test_read_records_skips_a_torn_last_line_but_not_a_corrupt_one(tmp_path):
    path = tmp_path / "gp.jsonl"
    line = json.dumps(record("gp", "a", "m", [0.5]))
    path.write_text(line + "\n" + line[:40])  # interrupted while writing the second record
    assert [r["trial_id"] for r in read_records(path)] == ["a"]
    path.write_text(line + "\n" + line[:40] + "\n" + line + "\n")
    with pytest.raises(AopError, match="gp.jsonl line 2: not valid JSON"):
        read_records(path)


def test_read_study_records_groups_and_orders_searches(tmp_path):
    for search in ("gp", "zeta", "baseline", "random"):
        append_record(tmp_path / "results" / f"{search}.jsonl", record(search, "t", "m", [0.4]))
    assert list(read_study_records(tmp_path)) == ["baseline", "random", "gp", "zeta"]
    with pytest.raises(AopError, match="study folder not found"):
        read_study_records(tmp_path / "missing")
    (tmp_path / "empty" / "results").mkdir(parents=True)
    with pytest.raises(AopError, match="no trial records"):
        read_study_records(tmp_path / "empty")


def test_best_record_takes_highest_ipq_and_first_of_ties():
    recs = [record("gp", name, "m", [ipq]) for name, ipq in [("a", 0.5), ("b", 0.7), ("c", 0.7)]]
    assert best_record(recs, "ipq")["trial_id"] == "b"
    with pytest.raises(AopError):
        best_record([], "ipq")


# -- comparison -----------------------------------------------------------------------------------


def test_paired_t_test_has_the_textbook_value():
    # differences gp - random per volume: 0.01, 0.02, 0.03, 0.04, 0.05: mean 0.03, sd 0.0158,
    # t = 0.03 / (0.0158 / sqrt 5) = 4.2426, df = 4, two-sided p = 0.01324
    random = [0.50, 0.60, 0.40, 0.70, 0.55]
    gp = [r + d for r, d in zip(random, [0.01, 0.02, 0.03, 0.04, 0.05], strict=True)]
    comparison = compare_searches({
        "random": [record("random", "r", "m", random)],
        "gp": [record("gp", "g", "m", gp)],
    }, **SEGMENTATION)
    test = comparison.tests.query("metric == 'ipq'").iloc[0]
    assert (test["search_a"], test["search_b"], test["n_pairs"]) == ("random", "gp", 5)
    assert test["statistic"] == pytest.approx(-np.sqrt(18), rel=1e-9)  # random - gp
    assert test["p_value"] == pytest.approx(0.013236, abs=2e-6)
    assert test["stars"] == "*"
    assert comparison.summary.loc["random", "p_ipq"] == pytest.approx(test["p_value"])
    assert np.isnan(comparison.summary.loc["gp", "p_ipq"])
    # every other metric equals scipy's paired test on the same per-volume values
    transforms = {"sq": lambda x: 0.5 + x / 2, "rq": np.sqrt, "iq": lambda x: 1 - x / 4}
    for metric, f in transforms.items():
        expected = stats.ttest_rel(f(np.array(random)), f(np.array(gp))).pvalue
        assert comparison.p_value("gp", "random", metric) == pytest.approx(expected, rel=1e-12)


def test_baseline_pools_every_model_and_pairs_by_volume():
    # baseline: two models without post-processing on 4 volumes; random and gp: best configuration
    baseline = [
        record("baseline", "b0", "unet", [0.30, 0.40, 0.35, 0.50]),
        record("baseline", "b1", "classical", [0.20, 0.25, 0.30, 0.20]),
    ]
    random_search = [
        record("random", "r0", "unet", [0.10, 0.10, 0.10, 0.10], erode_dilate=5),
        record("random", "r1", "classical", [0.45, 0.42, 0.50, 0.55], erode_dilate=-2),
    ]
    gp = [
        record("gp", "g0", "unet", [0.60, 0.70, 0.62, 0.71], erode_dilate=-1),
        record("gp", "g1", "unet", [0.55, 0.65, 0.60, 0.70], erode_dilate=-3),
    ]
    comparison = compare_searches(
        {"baseline": baseline, "random": random_search, "gp": gp}, **SEGMENTATION
    )
    summary = comparison.summary
    assert list(summary.index) == ["baseline", "random", "gp"] and comparison.reference == "gp"
    # the paper's baseline: mean IPQ of all models without post-processing (n_2 = 2 x 4 values)
    assert summary.loc["baseline", "ipq"] == pytest.approx(np.mean([0.30, 0.40, 0.35, 0.50,
                                                                    0.20, 0.25, 0.30, 0.20]))
    assert summary.loc["baseline", "n"] == 8 and summary.loc["baseline", "model"] == "all"
    assert (summary.loc["random", "trial_id"], summary.loc["random", "n"]) == ("r1", 4)
    assert summary.loc["gp", "trial_id"] == "g0"
    assert summary.loc["gp", "ipq"] == pytest.approx(np.mean([0.60, 0.70, 0.62, 0.71]))
    # baseline vs gp: each model's value on a volume against gp's best on the same volume
    base = np.array([0.30, 0.40, 0.35, 0.50, 0.20, 0.25, 0.30, 0.20])
    best = np.array([0.60, 0.70, 0.62, 0.71] * 2)
    expected = stats.ttest_rel(base, best)
    test = comparison.tests.query("search_a == 'baseline' and search_b == 'gp' and metric == 'ipq'")
    assert int(test["n_pairs"].iloc[0]) == 8
    assert test["statistic"].iloc[0] == pytest.approx(expected.statistic, rel=1e-12)
    assert test["p_value"].iloc[0] == pytest.approx(expected.pvalue, rel=1e-12)
    # random vs gp: best against best, one pair per volume
    expected = stats.ttest_rel([0.45, 0.42, 0.50, 0.55], [0.60, 0.70, 0.62, 0.71])
    assert comparison.p_value("random", "gp", "ipq") == pytest.approx(expected.pvalue, rel=1e-12)
    as_json = json.loads(json.dumps(comparison.to_dict()))
    assert as_json["summary"][2]["p_ipq"] is None and as_json["reference"] == "gp"


def test_comparison_without_per_volume_scores_has_means_but_no_test():
    plain = {k: v for k, v in record("gp", "g", "m", [0.6, 0.8]).items() if k != "per_volume"}
    other = {k: v for k, v in record("random", "r", "m", [0.2, 0.4]).items() if k != "per_volume"}
    comparison = compare_searches({"random": [other], "gp": [plain]}, **SEGMENTATION)
    assert comparison.summary.loc["gp", "ipq"] == pytest.approx(0.7)
    assert np.isnan(comparison.p_value("random", "gp", "ipq"))
    assert comparison.tests["n_pairs"].eq(0).all()


def test_comparison_rejects_nothing_to_compare():
    with pytest.raises(AopError, match="no trial records"):
        compare_searches({"gp": []}, **SEGMENTATION)
    with pytest.raises(AopError, match="reference search 'gp'"):
        compare_searches({"random": [record("random", "r", "m", [0.2])]}, reference="gp",
                         **SEGMENTATION)


@pytest.mark.parametrize(
    ("p", "stars"), [(0.0009, "***"), (0.001, "**"), (0.0099, "**"), (0.049, "*"), (0.05, "n.s."),
                     (float("nan"), "")],
)
def test_significance_stars(p, stars):
    assert significance_stars(p) == stars


# -- plots ----------------------------------------------------------------------------------------


def synthetic_study(tmp_path, n=40, seed=0):
    """Records where IPQ peaks at erode_dilate = -1 and falls with split_threshold."""
    rng = np.random.default_rng(seed)
    for i, model in enumerate(("unet", "classical")):
        append_record(tmp_path / "results" / "baseline.jsonl",
                      record("baseline", f"b{i}", model, [0.4, 0.5, 0.45]))
    for search in ("random", "gp"):
        for i in range(n):
            ed, st = int(rng.integers(-4, 3)), float(rng.uniform(0, 1))
            other = float(rng.uniform(0, 1))
            ipq = 0.8 - 0.03 * (ed + 1) ** 2 - 0.4 * st + rng.normal(0, 0.01, 3)
            append_record(
                tmp_path / "results" / f"{search}.jsonl",
                record(search, f"{search}{i}", "unet", np.clip(ipq, 0, 1), iteration=i,
                       erode_dilate=ed, split_threshold=st, merge_area=other),
            )
    return read_study_records(tmp_path)


def score_records(columns, scores, search="random"):
    """Records of one search with parameters ``{name: values}`` and the metric ``score``."""
    return [
        validate_record({
            "search": search, "trial_id": f"{search}{i}", "iteration": i,
            "params": {name: values[i] for name, values in columns.items()},
            "metrics": {"score": float(score)},
        })
        for i, score in enumerate(scores)
    ]


def fanova(records, params):
    study = records_study(records, "score")
    return get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=0), params=params)


def test_records_study_orders_trials_and_infers_distributions():
    records = score_records(
        {"depth": [3, 1, 2], "rate": [0.5, 0.1, 2], "solver": ["a", "b", "a"],
         "on": [True, False, True]},
        [0.2, 0.9, 0.4],
    )
    records[0]["iteration"] = -1  # no position: after the others
    records[1]["iteration"], records[2]["iteration"] = 7, 3
    study = records_study(records, "score", "min", name="random search")
    assert study.study_name == "random search" and study.direction.name == "MINIMIZE"
    assert [t.user_attrs["trial_id"] for t in study.trials] == ["random2", "random1", "random0"]
    assert [t.value for t in study.trials] == [0.4, 0.9, 0.2]
    assert study.best_value == 0.2 and study.best_params["depth"] == 3
    distributions = study.trials[0].distributions
    assert distributions["depth"] == IntDistribution(1, 3)
    assert distributions["rate"] == FloatDistribution(0.1, 2.0)
    assert study.trials[2].params["rate"] == 0.5 and study.trials[0].params["rate"] == 2.0
    assert distributions["solver"] == CategoricalDistribution(["a", "b"])
    assert distributions["on"] == CategoricalDistribution([True, False])  # not numbers
    with pytest.raises(AopError, match="mode must be 'max' or 'min', got 'up'"):
        records_study(records, "score", "up")
    with pytest.raises(AopError, match="trial random0 of search 'random' has no metric 'loss'"):
        records_study(records, "loss")


def test_parameter_importance_sees_an_optimum_inside_the_range():
    x = np.repeat(np.arange(-4, 3), 6)
    y = -((x + 1.0) ** 2)  # no linear or rank correlation to speak of, but all variance explained
    assert abs(stats.spearmanr(x, y).statistic) < 0.5
    rng = np.random.default_rng(1)
    noise = rng.uniform(size=x.size)
    columns = {"noise": noise.tolist(), "x": x.tolist(), "constant": [0] * x.size}
    importance = fanova(score_records(columns, y), ["noise", "x", "constant"])
    assert importance["x"] > 0.9
    assert importance["noise"] < 0.1
    assert importance["constant"] == 0.0  # one value explains nothing
    noisy = y + rng.normal(0, 1.0, y.size)
    assert 0.7 < fanova(score_records(columns, noisy), ["noise", "x"])["x"] < 1.0
    assert influential_parameters(score_records(columns, y), "score", count=3) == [
        "x", "noise", "constant"
    ]
    assert influential_parameters(score_records(columns, y), "score") == ["x", "noise"]


def test_influential_parameters_fall_back_to_record_order():
    columns = {"a": [1, 1, 1, 1], "kind": ["p", "q", "p", "q"], "b": [0.1, 0.2, 0.3, 0.4],
               "c": [2, 2, 2, 2]}
    records = score_records(columns, [0.1, 0.2, 0.3, 0.4])
    assert influential_parameters(records, "score") == ["b", "a"]  # only b varies; then a, c
    assert influential_parameters(records, "score", count=3) == ["b", "a", "c"]
    constant = score_records({"a": [1, 2, 3], "b": [3, 1, 2]}, [0.5, 0.5, 0.5])
    assert influential_parameters(constant, "score") == ["a", "b"]  # nothing to explain
    with pytest.raises(AopError, match="at least 2 numeric parameters, have a"):
        influential_parameters(score_records({"a": [1, 2], "kind": ["p", "q"]}, [1, 2]), "score")
    with pytest.raises(AopError, match="no trial records"):
        influential_parameters([], "score")


def test_contour_parameters_are_the_influential_ones(tmp_path):
    records = synthetic_study(tmp_path)
    assert set(influential_parameters(records["gp"], "ipq")) == {
        "erode_dilate", "split_threshold"
    }


def test_make_study_plots_writes_readable_pngs(tmp_path):
    records = synthetic_study(tmp_path)
    paths = make_study_plots(
        tmp_path, metric="ipq", mode="max", metrics=METRICS, colours=COLOURS,
        pooled=("baseline",), main="gp",
    )
    assert [p.name for p in paths[:2]] == ["comparison.png", "convergence.png"]
    assert paths[2].name in (
        "contour_erode_dilate_split_threshold.png", "contour_split_threshold_erode_dilate.png"
    )
    for path in paths:
        assert path.parent == tmp_path / "plots"
        pixels = imread(path)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 500 and pixels[..., :3].std() > 0.05
    assert not list((tmp_path / "plots").glob(".*"))  # no temporary files left behind
    # explicit parameters are honoured
    paths = make_study_plots(
        tmp_path, records, metric="ipq", metrics=METRICS, pooled=("baseline",),
        contour_parameters=("open_close", "merge_area"),
    )
    assert paths[-1].name == "contour_open_close_merge_area.png"


def test_plots_of_a_minimised_metric_follow_study_yaml(tmp_path):
    """Any metric and direction: a loss over depth and rate, least at depth 3, rate 0.2."""
    rng = np.random.default_rng(2)
    solver = ["sgd" if i % 3 else "adam" for i in range(45)]
    depth = rng.integers(1, 6, 45).tolist()
    rate, other = rng.uniform(0, 1, 45).round(3).tolist(), rng.uniform(0, 1, 45).tolist()
    loss = [
        (d - 3) ** 2 / 4 + 2 * (r - 0.2) ** 2 + (0.5 if s == "sgd" else 0.0)
        for d, r, s in zip(depth, rate, solver, strict=True)
    ]
    columns = {"solver": solver, "depth": depth, "rate": rate, "other": other}
    records = score_records(columns, loss, search="tpe")
    for record_ in records:
        metrics = {"loss": record_["metrics"]["score"], "seconds": 1.0}
        written = {k: v for k, v in record_.items() if k != "duration_s"}  # NaN: not known
        append_record(tmp_path / "results" / "tpe.jsonl", {**written, "metrics": metrics})
    (tmp_path / "study.yaml").write_text(json.dumps(
        {"kind": "toy", "metric": "loss", "mode": "min", "metrics": ["loss", "seconds"]}
    ))
    paths = make_study_plots(tmp_path)
    assert [p.name for p in paths[:2]] == ["comparison.png", "convergence.png"]
    assert paths[2].name in ("contour_depth_rate.png", "contour_rate_depth.png")
    for path in paths:
        assert imread(path)[..., :3].std() > 0.05
    figure = plot_parameter_contour(records, ("depth", "rate"), metric="score", mode="min")
    axes = figure.axes[0]
    best = min(records, key=lambda r: r["metrics"]["score"])
    assert best["params"]["solver"] == "adam"
    assert axes.collections[-1].get_offsets().tolist() == [
        [best["params"]["depth"], best["params"]["rate"]]
    ]
    assert "for solver='adam'" in axes.get_title() and "15 evaluations" in axes.get_title()
    plt.close(figure)


def test_contour_plot_marks_optimum_and_repeated_points():
    recs = [
        validate_record(record("gp", f"t{i}", "unet", [ipq], erode_dilate=ed, open_close=oc))
        for i, (ed, oc, ipq) in enumerate(
            [(0, 0, 0.5), (0, 0, 0.7), (0, 0, 0.6), (-1, 1, 0.9), (2, -1, 0.3), (1, 2, 0.4)]
        )
    ] + [validate_record(record("gp", "other", "classical", [0.95], erode_dilate=5, open_close=5))]
    figure = plot_parameter_contour(
        recs, ("open_close", "erode_dilate"), metric="ipq", fixed={"model": "unet"},
        ranges=RANGES,
    )
    axes = figure.axes[0]
    assert axes.get_xlabel() == "erode_dilate" and axes.get_ylabel() == "open_close"
    assert "6 evaluations, 4 distinct points" in axes.get_title()
    counts = [t.get_text() for t in axes.texts if t.get_color() == "red"]
    assert counts == ["3"]  # (0, 0) was evaluated three times
    optimum = axes.collections[-1].get_offsets()
    assert optimum.tolist() == [[-1.0, 1.0]]  # the best unet trial; the classical one is left out
    assert axes.get_xlim()[0] < -10 < 10 < axes.get_xlim()[1]  # the parameter's search range
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["optimum (ipq 0.900)"]
    plt.close(figure)
    # collinear points: no contour, still a plot with the points
    line = [
        validate_record(record("gp", f"l{i}", "unet", [0.1 * i], erode_dilate=i)) for i in range(4)
    ]
    figure = plot_parameter_contour(line, ("erode_dilate", "open_close"), metric="ipq")
    assert len(figure.axes[0].collections) == 2  # points and optimum
    plt.close(figure)
    with pytest.raises(AopError, match="no trial records with model='none'"):
        plot_parameter_contour(
            recs, ("erode_dilate", "open_close"), metric="ipq", fixed={"model": "none"}
        )
    with pytest.raises(AopError, match="parameter 'model' is not numeric"):
        plot_parameter_contour(recs, ("model", "open_close"), metric="ipq")


def test_few_volumes_give_an_interval_and_no_stars():
    """Two volumes, a consistent tiny gain: a small p-value that means little. The test is marked
    not meaningful (no stars) and carries the 95 % interval of the paired difference."""
    random = [0.500, 0.600]
    gp = [0.501, 0.6012]
    comparison = compare_searches(
        {"random": [record("random", "r", "m", random)], "gp": [record("gp", "g", "m", gp)]},
        **SEGMENTATION,
    )
    expected = stats.ttest_rel(gp, random)
    test = comparison.test("gp", "random", "ipq")
    assert test["n_volumes"] == 2 and not test["meaningful"] and test["stars"] == ""
    assert test["p_value"] == pytest.approx(expected.pvalue)
    assert test["difference"] == pytest.approx(0.0011)
    low, high = expected.confidence_interval(0.95)
    assert (test["ci_low"], test["ci_high"]) == (pytest.approx(low), pytest.approx(high))
    assert low < 0 < 0.0011 < high  # the interval shows that two volumes decide nothing
    assert comparison.summary.loc["random", "ci_ipq"] == (pytest.approx(low), pytest.approx(high))
    assert not comparison.summary.loc["random", "tested_ipq"]
    # the same test the other way round: the difference and the interval change sign
    back = comparison.test("random", "gp", "ipq")
    assert back["difference"] == pytest.approx(-0.0011)
    assert (back["ci_low"], back["ci_high"]) == (pytest.approx(-high), pytest.approx(-low))
