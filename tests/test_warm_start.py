"""Warm starts (``search.warm_start``): earlier studies' trials told to a new study's searcher.

Real Ray, real MLflow (one SQLite store per module), the toy kind (tests/toy_kind.py) through
:func:`aop.tuning.study.run_study` and the CLI. One source study (gp, 12 trials) serves every
test; the searchers' own saved state (Ray Tune's ``searcher-state-*.pkl``) shows what they
were told.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import optuna
import pytest
import toy_kind
import yaml
from driver_helpers import kill_search_when, resume
from mlflow_helpers import study_tracker
from typer.testing import CliRunner

from aop.analysis.records import read_study_records
from aop.cli import app
from aop.errors import AopError
from aop.tuning.kinds import get_kind, load_experiment
from aop.tuning.space import parse_space
from aop.tuning.study import check_study, run_study
from aop.tuning.warm_start import WARM_START_FILE, read_warm_start

SOURCE_BUDGET = 12
SOURCE_EXPERIMENT = "warm-source"  # the source study's own MLflow experiment


def _experiment(project: Path, name: str, searcher: str, budget: int, *,
                space: dict | None = None, mlflow_experiment: str | None = None,
                toy: dict | None = None, **search: Any) -> Path:  # fmt: skip
    """An experiment file of the toy kind in ``project``; its study is ``project/name``."""
    space_file = project / f"{name}_space.yaml"
    space_file.write_text(yaml.safe_dump(space or toy_kind.SPACE, sort_keys=False))
    raw = {
        "name": name,
        "kind": "toy",
        "search": {"searcher": searcher, "budget": budget, "seed": 1, "concurrency": 2, **search},
        "search_space": space_file.name,
        "storage": {"study_dir": name},
        "tracking": {"tracking_uri": f"sqlite:///{project / 'mlflow.db'}",
                     "experiment": mlflow_experiment},  # fmt: skip
        "comparison": {"random": False},
        "ray": {"num_cpus": 2},
        "toy": toy or {},
    }
    path = project / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _space(**parameters: Any) -> dict:
    """The toy space with some parameters replaced (``None`` drops one)."""
    merged = {**toy_kind.SPACE["parameters"], **parameters}
    return {"parameters": {k: v for k, v in merged.items() if v is not None},
            "start": toy_kind.SPACE["start"]}  # fmt: skip


def _key(params: dict) -> tuple:
    return tuple(sorted((k, v) for k, v in params.items() if k != "width"))


def _searcher_state(study: Path, search: str) -> Any:
    """The searcher state Ray Tune saved last for ``search`` (unpickled): one file per run of
    the Tune experiment, named by the time that run started, so the resumed one sorts last
    (Tune rewrites every run's file at the end of a run: their modification times are equal)."""
    path = sorted((study / "tune" / search).glob("searcher-state-*.pkl"))[-1]
    with open(path, "rb") as handle:
        return pickle.load(handle)


def _optuna_history(study: Path, search: str = "gp") -> list[tuple[dict, float]]:
    """``(params, value)`` of every finished trial the gp searcher holds (told or its own)."""
    state = _searcher_state(study, search)
    trials = state["_ot_study"].get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    return [(t.params, t.value) for t in trials]


def _smac_costs(study: Path, search: str = "smac") -> list[float]:
    """The costs of the finished trials in the SMAC searcher's run history (told or its own)."""
    history = json.loads(_searcher_state(study, search)["runhistory"])
    return sorted(entry["cost"] for entry in history["data"] if entry["status"] == 1)  # SUCCESS


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")
    return [json.loads(line) for line in lines[:-1] if line.strip()]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("warm")


@pytest.fixture(scope="module")
def source(project, local_ray) -> dict[str, Any]:
    """The earlier study: gp, 12 trials, logged into its own MLflow experiment."""
    path = _experiment(project, "source", "gp", SOURCE_BUDGET, mlflow_experiment=SOURCE_EXPERIMENT)
    result = run_study(load_experiment(path), verbose=-1)
    records = result.records["gp"]
    assert len(records) == SOURCE_BUDGET
    run_id = (project / "source" / "mlflow_run_id").read_text().strip()
    return {"dir": project / "source", "records": records, "run_id": run_id}


def _distinct(records: list[dict]) -> dict[tuple, float]:
    """``{configuration: first score}`` of records (what a warm start tells, once each)."""
    told: dict[tuple, float] = {}
    for record in records:
        told.setdefault(_key(record["params"]), record["metrics"]["score"])
    return told


@pytest.mark.parametrize("searcher", ["gp", "smac"])
def test_a_warm_started_search_is_told_the_source_trials_and_runs_its_own_budget(
    project, source, searcher, capsys
):
    budget = 4
    warm = load_experiment(_experiment(project, f"warm-{searcher}", searcher, budget,
                                       warm_start=["source"]))  # fmt: skip
    cold = load_experiment(_experiment(project, f"cold-{searcher}", searcher, budget))
    assert warm.search.warm_start == [str(source["dir"])]  # resolved beside the file
    capsys.readouterr()
    warm_records = sorted(run_study(warm, verbose=0).records[searcher],
                          key=lambda r: r["iteration"])  # fmt: skip
    told = _distinct(source["records"])
    output = capsys.readouterr().out
    assert f"aop: warm-started from {len(told)} trials of {source['dir']}" in output
    cold_records = sorted(run_study(cold, verbose=-1).records[searcher],
                          key=lambda r: r["iteration"])  # fmt: skip

    # exactly the study's own budget: told trials are no trials of the study
    assert len(warm_records) == budget and len({r["trial_id"] for r in warm_records}) == budget
    assert len(read_study_records(warm.study_dir)[searcher]) == budget
    # both evaluate the start point on their own data first; then the warm searcher suggests
    # from a model of the told trials, the cold one from nothing
    start = _key(toy_kind.SPACE["start"]["default"])
    assert _key(cold_records[0]["params"]) == start == _key(warm_records[0]["params"])
    first = [_key(r["params"]) for r in warm_records[1:3]]
    assert first != [_key(r["params"]) for r in cold_records[1:3]]
    # the searcher holds the told trials and its own, each once
    own = [(_key(r["params"]), r["metrics"]["score"]) for r in warm_records]
    if searcher == "gp":
        history = [(_key(params), value) for params, value in _optuna_history(warm.study_dir)]
        assert len(history) == len(told) + budget
        assert sorted(history) == sorted([*told.items(), *own])
    else:
        # SMAC keeps one entry per configuration: the start point's own value replaces the
        # told one
        expected = sorted(-v for v in {**told, **dict(own)}.values())
        assert _smac_costs(warm.study_dir) == pytest.approx(expected)
    # the warm start is written down: warm_start.yaml, study.yaml, MLflow, aop report
    saved = yaml.safe_load((warm.study_dir / WARM_START_FILE).read_text())
    assert saved["sources"] == [str(source["dir"])] and len(saved["trials"]) == len(told)
    assert {_key(t["params"]): t["value"] for t in saved["trials"]} == told
    meta = yaml.safe_load((warm.study_dir / "study.yaml").read_text())
    assert meta["warm_start"] == {"sources": [str(source["dir"])], "trials": len(told),
                                  "source_runs": [source["run_id"]]}  # fmt: skip
    assert "warm_start" not in yaml.safe_load((cold.study_dir / "study.yaml").read_text())
    tracker = study_tracker(warm.study_dir, "aop-toy")
    assert len(tracker.child_runs(searcher)) == budget
    tags = tracker.client.get_run(tracker.parent_run_id).data.tags
    assert tags["aop.warm_start.sources"] == str(source["dir"])
    assert tags["aop.warm_start.trials"] == str(len(told))
    assert tags["aop.warm_start.source_runs"] == source["run_id"]
    assert f"warm-started from {len(told)} trials" in tags["mlflow.note.content"]
    cold_tracker = study_tracker(cold.study_dir, "aop-toy")
    assert len(cold_tracker.child_runs(searcher)) == budget
    cold_tags = cold_tracker.client.get_run(cold_tracker.parent_run_id).data.tags
    assert not any(tag.startswith("aop.warm_start") for tag in cold_tags)
    report = CliRunner().invoke(app, ["report", str(warm.study_dir)], terminal_width=200)
    assert report.exit_code == 0, report.output
    lines = [line.strip() for line in report.output.splitlines() if "warm-started" in line]
    assert lines == [f"warm-started from {len(told)} trials of {source['dir']}"]
    as_json = CliRunner().invoke(app, ["report", str(warm.study_dir), "--json"])
    assert json.loads(as_json.output)["warm_start"]["trials"] == len(told)


def test_mlflow_uris_give_the_same_trials_as_the_study_folder(project, source):
    space = parse_space(toy_kind.SPACE)
    kind = get_kind("toy")
    told = {}
    for name, entry in [("folder", "source"), ("run", f"runs:/{source['run_id']}"),
                        ("experiment", f"experiments:/{SOURCE_EXPERIMENT}")]:  # fmt: skip
        exp = load_experiment(_experiment(project, f"uri-{name}", "gp", 2, warm_start=[entry]))
        warm = read_warm_start(exp, kind, space)
        assert warm.source_runs == [source["run_id"]] and not warm.skipped
        # MLflow keeps params as text: they come back typed (a float, an int, a choice)
        told[name] = {_key(t["params"]): t["value"] for t in warm.trials}
        for trial in warm.trials:
            params = trial["params"]
            assert isinstance(params["lr"], float) and isinstance(params["layers"], int)
            assert params["encoder"] in ("a", "b", "c")
    assert told["folder"] == _distinct(source["records"])
    assert told["run"] == told["folder"] and told["experiment"] == told["folder"]


def test_source_trials_outside_the_search_space_are_listed_and_skipped(project, source, capsys):
    # a narrower space: lr from 1e-3, encoders a and b only, layers fixed at 3
    space = _space(lr={"float": [1.0e-3, 1.0e-1], "log": True}, encoder={"choice": ["a", "b"]},
                   layers=3)  # fmt: skip
    space["start"] = {"default": {"encoder": "a", "head": "mlp", "lr": 1.0e-3}}
    path = _experiment(project, "narrow", "gp", 3, space=space, warm_start=["source"])
    exp = load_experiment(path)
    inside = [r for r in source["records"]
              if r["params"]["lr"] >= 1e-3 and r["params"]["encoder"] != "c"
              and r["params"]["layers"] == 3]  # fmt: skip
    outside = [r for r in source["records"] if r not in inside]
    assert inside and outside, "the source has trials on both sides"
    capsys.readouterr()
    records = run_study(exp, verbose=-1).records["gp"]
    output = capsys.readouterr().out
    assert len(records) == 3
    listed = [line for line in output.splitlines() if line.startswith("  ") and "trial" in line]
    assert len(listed) == len(outside)
    assert f"aop: warm start: {len(outside)} trials lie outside this study's search space" in output
    for record in outside:
        (line,) = [x for x in listed if record["trial_id"] in x]
        params = record["params"]
        # the first reason: a constant of another value, then the searched ones in file order
        reason = (f"layers is {params['layers']}; this space fixes it at 3"
                  if params["layers"] != 3 else "params.encoder: 'c' is outside {'choice': "
                  "['a', 'b']}" if params["encoder"] == "c"
                  else f"params.lr: {params['lr']!r} is outside")  # fmt: skip
        assert line.startswith(f"  {source['dir']}: gp trial {record['trial_id']}: {reason}")
    told = _distinct(inside)
    history = _optuna_history(exp.study_dir)
    assert len(history) == len(told) + 3
    saved = yaml.safe_load((exp.study_dir / WARM_START_FILE).read_text())
    assert len(saved["trials"]) == len(told) and len(saved["skipped"]) == len(outside)
    meta = yaml.safe_load((exp.study_dir / "study.yaml").read_text())
    assert meta["warm_start"]["trials"] == len(told)


def _copy_with(source: Path, target: Path, **meta: Any) -> Path:
    """A copy of a study folder whose study.yaml says something else."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("tune", "mlartifacts"))
    data = yaml.safe_load((target / "study.yaml").read_text())
    (target / "study.yaml").write_text(yaml.safe_dump({**data, **meta}, sort_keys=False))
    return target


def test_every_bad_source_is_one_line_naming_it_before_any_trial(project, source, tmp_path):
    other_kind = _copy_with(source["dir"], tmp_path / "segmentation-study", kind="segmentation")
    other_metric = _copy_with(source["dir"], tmp_path / "loss-study", metric="loss")
    (tmp_path / "folder").mkdir()
    missing_store = f"sqlite:///{tmp_path / 'nowhere.db'}"
    child = study_tracker(source["dir"], SOURCE_EXPERIMENT).child_runs("gp")[0].info.run_id
    unknown_run = "0123456789abcdef0123456789abcdef"
    cases = [
        (str(tmp_path / "gone"), {}, r"search.warm_start: \S+/gone: study folder not found"),
        (str(tmp_path / "folder"), {},
         r"search.warm_start: \S+/folder: not a study folder \(no study.yaml"),
        (str(other_kind), {}, r"segmentation-study: a segmentation study; this study is toy"),
        (str(other_metric), {}, r"loss-study: its objective is loss; this study's is score"),
        ("source", {"space": _space(width=None)},
         r"search.warm_start: \S+/source: parameter width is not in this study's search space"),
        (f"runs:/{unknown_run}", {}, rf"search.warm_start: runs:/{unknown_run}: no such run in "),
        (f"runs:/{child}", {},
         rf"runs:/{child}: the run of one trial; name its study's parent run: "
         rf"runs:/{source['run_id']}"),
        ("experiments:/no-such-experiment", {},
         r"experiments:/no-such-experiment: no such MLflow experiment in sqlite:"),
        (f"runs:/{source['run_id']}", {"tracking_uri": missing_store},
         rf"runs:/{source['run_id']}: the MLflow store {re.escape(missing_store)} does not "
         "exist"),
    ]  # fmt: skip
    for index, (entry, options, message) in enumerate(cases):
        path = _experiment(project, f"bad{index}", "gp", 2, space=options.get("space"),
                           warm_start=[entry])  # fmt: skip
        exp = load_experiment(path)
        if "tracking_uri" in options:
            exp.tracking.tracking_uri = options["tracking_uri"]
        with pytest.raises(AopError, match=message) as error:
            check_study(exp)
        assert "\n" not in str(error.value)
        assert not (exp.study_dir / "tune").exists() and not (exp.study_dir / "results").exists()
    assert not Path(missing_store.removeprefix("sqlite:///")).exists()  # not created by a look-up

    # a study's own folder, and a searcher that cannot be told trials, refused when it loads
    own = _experiment(project, "own", "gp", 2, warm_start=["own"])
    with pytest.raises(AopError, match=r"search.warm_start: \S+/own: this study's own folder"):
        check_study(load_experiment(own))
    for searcher, why in [("tpe", "Ray's HyperOptSearch cannot be told earlier trials"),
                          ("random", "random search draws without regard to earlier trials")]:
        path = _experiment(project, f"no-{searcher}", searcher, 2, warm_start=["source"])
        with pytest.raises(AopError, match=rf"no-{searcher}.yaml: search.warm_start: the "
                           rf"searcher '{searcher}' cannot be warm-started: {why}"):
            load_experiment(path)  # fmt: skip
    for entries, message in [
        (["source", "source"], "'source' is listed twice"),
        (["s3://bucket/study"], "'s3://bucket/study' is neither a study folder nor an MLflow"),
    ]:
        path = _experiment(project, "bad-entry", "gp", 2, warm_start=entries)
        with pytest.raises(AopError, match=rf"bad-entry.yaml: search.warm_start: {message}"):
            load_experiment(path)
    result = CliRunner().invoke(app, ["search", str(_experiment(
        project, "cli-bad", "gp", 2, warm_start=[str(tmp_path / "gone")]))])  # fmt: skip
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0 and len(lines) == 1 and "study folder not found" in lines[0]


@pytest.mark.slow
def test_a_killed_warm_started_study_resumes_to_its_budget_told_once(project, source, tmp_path):
    budget = 6
    # a copy of the source, removed before the resume: the study keeps what it was told
    copy = shutil.copytree(source["dir"], tmp_path / "batch1",
                           ignore=shutil.ignore_patterns("tune", "mlartifacts"))  # fmt: skip
    experiment = _experiment(tmp_path, "killed", "gp", budget, warm_start=["batch1"],
                             toy={"delay": 0.6})  # fmt: skip
    study = tmp_path / "killed"
    results = study / "results" / "gp.jsonl"
    kill_search_when(experiment, lambda: len(_records(results)), 2)
    before = _records(results)
    assert 2 <= len(before) < budget, "the study was not interrupted"
    shutil.rmtree(copy)

    done = resume(study)
    assert done.returncode == 0, done.stderr[-2000:]
    after = _records(results)
    ids = [r["trial_id"] for r in after]
    assert len(after) == budget and len(set(ids)) == budget
    told = _distinct(source["records"])
    history = _optuna_history(study)
    assert len(history) == len(told) + budget  # each told trial once, each own trial once
    held = Counter(_key(params) for params, _ in history)
    assert held == Counter(list(told)) + Counter(_key(r["params"]) for r in after)
    meta = yaml.safe_load((study / "study.yaml").read_text())
    assert meta["warm_start"]["trials"] == len(told)
    assert meta["warm_start"]["sources"] == [str(copy)]
    runs = study_tracker(study, "aop-toy").child_runs("gp")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(ids)
    best = yaml.safe_load((study / "best.yaml").read_text())
    assert math.isclose(best["scores"]["score"], max(r["metrics"]["score"] for r in after))
