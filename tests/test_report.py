"""``aop report STUDY_DIR``: tables, JSON and one-line errors for broken study folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from scipy import stats
from typer.testing import CliRunner

from aop.analysis import append_record
from aop.cli import app

VOLUMES = ("a", "b", "c", "d")


def record(search, trial_id, model, ipq, **params):
    per_volume = {
        volume: {"ipq": x, "sq": 0.9, "rq": x + 0.05, "iq": 1.0}
        for volume, x in zip(VOLUMES, ipq, strict=True)
    }
    return {
        "search": search, "trial_id": trial_id, "model": model,
        "params": {"erode_dilate": 0, "open_close": 0, "merge_continuity": 0.0,
                   "merge_smoothness": 0.0, "merge_area": 0.0, "split_sigma": 0.0,
                   "split_threshold": 0.0, **params},
        "ipq": float(np.mean(ipq)), "sq": 0.9, "rq": float(np.mean(ipq)) + 0.05, "iq": 1.0,
        "per_volume": per_volume, "duration_s": 2.0, "node": "node-1", "iteration": 0,
    }


BASELINE = [[0.30, 0.35, 0.40, 0.32], [0.20, 0.22, 0.25, 0.21]]
RANDOM = [0.45, 0.50, 0.42, 0.47]
GP = [0.61, 0.66, 0.58, 0.70]


@pytest.fixture()
def study(tmp_path):
    results = tmp_path / "study" / "results"
    for i, (model, ipq) in enumerate(zip(("unet", "classical"), BASELINE, strict=True)):
        append_record(results / "baseline.jsonl", record("baseline", f"b{i}", model, ipq))
    append_record(results / "random.jsonl", record("random", "r0", "classical", RANDOM,
                                                   erode_dilate=3))
    append_record(results / "random.jsonl", record("random", "r1", "unet", [0.1] * 4))
    append_record(results / "gp.jsonl", record("gp", "g0", "unet", GP, erode_dilate=-1,
                                               split_threshold=0.125))
    meta = {"kind": "segmentation", "metric": "ipq", "mode": "max",
            "metrics": ["ipq", "sq", "rq", "iq"], "main_search": "gp", "pooled": ["baseline"],
            "group": "model"}  # fmt: skip
    (tmp_path / "study" / "study.yaml").write_text(yaml.safe_dump(meta))
    return tmp_path / "study"


def invoke(*args):
    return CliRunner().invoke(app, ["report", *map(str, args)], terminal_width=120)


def test_report_prints_comparison_best_and_mlflow_command(study):
    result = invoke(study)
    assert result.exit_code == 0, result.output
    out = result.output
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("│ ")}
    # the baseline is the mean of both models without post-processing
    assert f"{np.mean(BASELINE):.3f}" in rows["baseline"] and "0.281" in rows["baseline"]
    assert f"{np.mean(RANDOM):.3f}" in rows["random"] and "classical" in rows["random"]
    assert f"{np.mean(GP):.3f}" in rows["gp"] and "unet" in rows["gp"]
    test = stats.ttest_rel(GP, RANDOM)
    low, high = test.confidence_interval(0.95)
    # four volumes: the difference and its interval, the p-value marked not meaningful
    assert f"+{np.mean(GP) - np.mean(RANDOM):.3f}  p={test.pvalue:.2g} n.m." in out
    assert f"[{low:+.3f}, {high:+.3f}]" in out
    assert "with 4 volume(s) a paired t-test is not meaningful (it needs at least 5)" in out
    assert "Best configuration (search gp, trial g0; from results)" in out
    assert "split_threshold" in out and "0.125" in out
    assert f"aop ui {study}" in out


def test_report_json_matches_the_analysis(study):
    (study / "best.yaml").write_text(yaml.safe_dump({
        "search": "gp", "trial_id": "g0", "model": "unet",
        "params": {"erode_dilate": -1}, "scores": {"ipq": 0.6375},
    }))
    (study / "experiment.yaml").write_text(yaml.safe_dump(
        {"name": "x", "tracking": {"tracking_uri": "http://127.0.0.1:5000"}}
    ))
    result = invoke(study, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["trials"] == {"baseline": 2, "random": 2, "gp": 1}
    summary = {row["search"]: row for row in data["comparison"]["summary"]}
    assert summary["gp"]["ipq"] == pytest.approx(np.mean(GP))
    assert summary["random"]["p_ipq"] == pytest.approx(stats.ttest_rel(RANDOM, GP).pvalue)
    pooled = np.ravel(BASELINE)
    expected = stats.ttest_rel(pooled, np.tile(GP, 2)).pvalue
    assert summary["baseline"]["p_ipq"] == pytest.approx(expected)
    assert summary["baseline"]["n"] == 8 and summary["gp"]["p_ipq"] is None
    assert data["best_source"] == "best.yaml" and data["best"]["params"] == {"erode_dilate": -1}
    assert data["mlflow_ui"] == "open http://127.0.0.1:5000 in a browser"


def test_report_plots_option_draws_into_the_study(study):
    result = invoke(study, "--plots")
    assert result.exit_code == 0, result.output
    pngs = sorted(p.name for p in (study / "plots").glob("*.png"))
    assert pngs[:2] == ["comparison.png", "contour_erode_dilate_split_threshold.png"] or (
        pngs[:2] == ["comparison.png", "contour_split_threshold_erode_dilate.png"]
    )
    assert "convergence.png" in pngs and "Plots:" in result.output


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda s: s / "nope", "study folder not found"),
        (lambda s: [p.unlink() for p in (s / "results").glob("*")] and s, "no trial records"),
        (lambda s: (s / "results" / "gp.jsonl").write_text('{"search": "gp"}\n') and s,
         "results/gp.jsonl line 1: missing field 'trial_id'"),
        (lambda s: (s / "results" / "gp.jsonl").write_text("{oops\n") and s,
         "results/gp.jsonl line 1: not valid JSON"),
        (lambda s: (s / "best.yaml").write_text("model: [unclosed\n") and s,
         "best.yaml: not valid YAML"),
        (lambda s: (s / "best.yaml").write_text("model: unet\n") and s,
         "best.yaml: missing field 'params'"),
    ],
    ids=["missing", "empty", "field", "json", "yaml", "best-field"],
)
def test_report_on_a_broken_study_is_one_error_line(study, breakage, message):
    target = breakage(study)
    result = invoke(target)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
