"""The study engine with a second study kind (tests/toy_kind.py): every searcher, report, resume."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import toy_kind
import yaml
from driver_helpers import TESTS, aop_command, kill_search_when, resume
from mlflow_helpers import study_tracker
from typer.testing import CliRunner

from aop.analysis.report import load_report
from aop.cli import app
from aop.errors import AopError
from aop.tuning.kinds import available_kinds, get_kind, load_experiment
from aop.tuning.space import parse_space
from aop.tuning.study import _topup_factory, load_study_experiment, run_study

AOP = aop_command()
SEARCHERS = ["random", "tpe", "gp", "smac"]


def _experiment(tmp_path: Path, searcher: str, budget: int, **extra) -> Path:
    space = tmp_path / "toy_space.yaml"
    space.write_text(yaml.safe_dump(toy_kind.SPACE, sort_keys=False))
    raw = {
        "name": f"toy-{searcher}",
        "kind": "toy",
        "search": {"searcher": searcher, "budget": budget, "seed": 1, "concurrency": 2},
        "search_space": str(space),
        "storage": {"study_dir": str(tmp_path / "study")},
        "comparison": {"random": False},
        "ray": {"num_cpus": 2},
        **extra,
    }
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")
    return [json.loads(line) for line in lines[:-1] if line.strip()]  # complete lines only


def test_the_toy_kind_is_registered_and_its_names_are_checked_on_load(tmp_path):
    assert {"segmentation", "toy"} <= set(available_kinds())
    kind = get_kind("toy")
    assert (kind.metric, kind.mode, kind.mlflow_experiment) == ("score", "max", "aop-toy")
    exp = load_experiment(_experiment(tmp_path, "gp", 4))
    space = kind.search_space(exp)
    assert space.searched == ["encoder", "head", "lr", "layers"] and space.fixed == {"width": 64}
    assert space.start("default") == [{"encoder": "a", "head": "mlp", "lr": 1e-3, "layers": 1}]

    bad_space = {**toy_kind.SPACE, "parameters": {**toy_kind.SPACE["parameters"], "depht": 3}}
    (tmp_path / "toy_space.yaml").write_text(yaml.safe_dump(bad_space, sort_keys=False))
    with pytest.raises(AopError, match=r"toy_space.yaml: parameters.depht: unknown parameter"):
        load_experiment(tmp_path / "toy.yaml")
    raw = yaml.safe_load((tmp_path / "toy.yaml").read_text())
    for field, value, message in [
        ("kind", "toyy", r"bad.yaml: kind: unknown study kind 'toyy' \(known: .*toy"),
        ("search", {"searcher": "smak"}, r"bad.yaml: search.searcher: unknown searcher 'smak'"),
        ("toy", {"delay": -1}, r"bad.yaml: toy.delay: Input should be greater than or equal"),
        ("models", [], r"bad.yaml: models: unknown field"),
    ]:
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**raw, field: value}))
        with pytest.raises(AopError, match=message):
            load_experiment(tmp_path / "bad.yaml")


def test_a_misspelled_searcher_stops_the_command_before_any_work(tmp_path):
    path = _experiment(tmp_path, "gpp", 4)
    result = CliRunner().invoke(app, ["search", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "search.searcher: unknown searcher 'gpp'" in lines[0]
    assert not (tmp_path / "study").exists()  # nothing written


@pytest.mark.parametrize("searcher", SEARCHERS)
def test_every_searcher_runs_the_toy_study_through_the_engine(local_ray, tmp_path, searcher):
    exp = load_experiment(_experiment(tmp_path, searcher, 8))
    result = run_study(exp, verbose=0)
    records = result.records[searcher]
    assert list(result.records) == [searcher] and len(records) == 8
    assert len({r["trial_id"] for r in records}) == 8
    space = parse_space(toy_kind.SPACE)
    for record in records:
        params = record["params"]
        assert space.contains(params) and params["width"] == 64
        assert isinstance(params["layers"], int) and 1e-4 <= params["lr"] <= 1e-1
        assert record["metrics"]["score"] == pytest.approx(toy_kind.toy_score(params))
        assert record["metrics"]["loss"] == pytest.approx(1 - record["metrics"]["score"])
    configs = {tuple(sorted(r["params"].items())) for r in records}
    assert len(configs) == 8, "a duplicate suggestion"
    first = min(records, key=lambda r: r["iteration"])
    if searcher != "random":
        assert first["iteration"] == 0 and first["params"] == {**space.start("default")[0],
                                                                "width": 64}
    best = yaml.safe_load((exp.study_dir / "best.yaml").read_text())
    top = max(records, key=lambda r: r["metrics"]["score"])
    assert best["kind"] == "toy" and best["search"] == searcher
    assert best["trial_id"] == top["trial_id"] and best["scores"]["score"] == pytest.approx(
        top["metrics"]["score"])
    meta = yaml.safe_load((exp.study_dir / "study.yaml").read_text())
    assert meta["metric"] == "score" and meta["metrics"] == ["score", "loss"]

    tracker = study_tracker(exp.study_dir, "aop-toy")
    runs = tracker.child_runs(searcher)
    assert len(runs) == 8
    assert {r.data.params["encoder"] for r in runs} <= {"a", "b", "c"}
    parent = tracker.client.get_run(tracker.parent_run_id)
    assert parent.data.metrics["best_score"] == pytest.approx(top["metrics"]["score"])
    assert "searcher" in parent.data.tags["mlflow.note.content"]
    experiment = tracker.client.get_experiment(parent.info.experiment_id)
    assert experiment.name == "aop-toy"

    report = load_report(exp.study_dir)  # the report reads study.yaml: no segmentation columns
    assert report.meta.metrics == ["score", "loss"] and report.comparison.reference == searcher
    assert report.best["scores"]["score"] == pytest.approx(top["metrics"]["score"])
    assert "model" not in report.best
    if searcher == "gp":
        # a restored Tune experiment that ends short of the budget (after a full disk its
        # searcher can believe it created trials the experiment never ran; here the budget
        # grew): a top-up experiment runs the rest with a searcher told the finished trials
        saved = exp.study_dir / "experiment.yaml"
        raw = yaml.safe_load(saved.read_text())
        raw["search"]["budget"] = 11
        saved.write_text(yaml.safe_dump(raw))
        again = run_study(load_study_experiment(exp.study_dir), verbose=0).records["gp"]
        assert len(again) == 11 and len({r["trial_id"] for r in again}) == 11
        assert {r["trial_id"] for r in records} <= {r["trial_id"] for r in again}
        assert len({tuple(sorted(r["params"].items())) for r in again}) == 11
        assert (exp.study_dir / "tune" / "gp.topup1").is_dir()
        assert len(tracker.child_runs("gp")) == 11
        third = run_study(load_study_experiment(exp.study_dir), verbose=0).records["gp"]
        assert sorted(r["trial_id"] for r in third) == sorted(r["trial_id"] for r in again)
        assert not (exp.study_dir / "tune" / "gp.topup2").exists()
        # the top-up's searcher: a shifted seed, told every finished trial, and the start point
        # only while no finished trial evaluated it
        kind = get_kind("toy")
        space = kind.search_space(exp)
        start = space.start("default")
        make = _topup_factory(exp, kind, space, "gp", start)
        told = make(again, 1).searcher
        assert len(told._ot_study.trials) == 11 and told._points_to_evaluate in (None, [])
        fresh = make([r for r in again if r["params"] != {**start[0], "width": 64}], 1)
        assert fresh.searcher._points_to_evaluate == start
    if searcher != "random":
        return
    # a record lost after Tune saved its trial as finished (a full disk cut the append): the
    # resume rebuilds it from Tune's state, under the same trial id, and logs nothing twice
    path = exp.study_dir / "results" / "random.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    lost = json.loads(lines[-1])
    path.write_text("".join(lines[:-1]))
    again = run_study(load_study_experiment(exp.study_dir), verbose=0).records["random"]
    assert sorted(r["trial_id"] for r in again) == sorted(r["trial_id"] for r in records)
    rebuilt = next(r for r in again if r["trial_id"] == lost["trial_id"])
    assert rebuilt["params"] == lost["params"] and rebuilt["metrics"] == lost["metrics"]
    assert len(tracker.child_runs(searcher)) == 8


@pytest.mark.slow
def test_a_killed_toy_study_resumes_to_its_exact_budget(tmp_path):
    budget = 6
    experiment = _experiment(tmp_path, "smac", budget, toy={"delay": 0.6})
    study = tmp_path / "study"
    results = study / "results" / "smac.jsonl"
    kill_search_when(experiment, lambda: len(_records(results)), 3)
    before = _records(results)
    assert 3 <= len(before) < budget, "the study was not interrupted"

    done = resume(study)
    assert done.returncode == 0, done.stderr[-2000:]
    after = _records(results)
    ids = [r["trial_id"] for r in after]
    assert len(after) == budget and len(set(ids)) == budget
    kept = [r["trial_id"] for r in before if r["trial_id"] in ids]
    assert ids[: len(kept)] == kept and len(kept) >= len(before) - 2  # two workers
    starts = [r for r in after if r["params"]["lr"] == 1e-3 and r["params"]["encoder"] == "a"
              and r["params"]["head"] == "mlp" and r["params"]["layers"] == 1]
    assert len(starts) == 1  # the start point once: the search continued, it did not restart
    configs = {tuple(sorted(r["params"].items())) for r in after}
    assert len(configs) == budget
    runs = study_tracker(study, "aop-toy").child_runs("smac")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(ids)  # no duplicate runs
    best = yaml.safe_load((study / "best.yaml").read_text())
    assert math.isclose(best["scores"]["score"], max(r["metrics"]["score"] for r in after))


def test_aop_ui_opens_a_fresh_browser_on_the_trials_of_the_study(local_ray, tmp_path, browser):
    """``aop ui STUDY`` serves the project's store and prints an address that shows the study's
    trials with their metric in a browser that never saw MLflow before (no clicks)."""
    exp = load_experiment(_experiment(tmp_path, "random", 4))
    records = run_study(exp, verbose=-1).records["random"]
    server = subprocess.Popen(
        [*AOP, "ui", str(exp.study_dir)], cwd=TESTS, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not any("#/experiments/" in x for x in lines):
            line = server.stdout.readline()
            assert line, "".join(lines)  # the command exited without an address
            lines.append(line)
        (address,) = [x.split(": ", 1)[1].strip() for x in lines if "#/experiments/" in x]
        assert str(exp.study_dir) in "".join(lines) and "viewStateShareKey=" in address
        page = browser.new_context(viewport={"width": 1400, "height": 900}).new_page()
        page.goto(address)
        names = [f"random-{r['trial_id']}" for r in records]
        page.wait_for_selector(f"text={names[0]}", timeout=60_000)
        text = page.inner_text("body")
        assert all(name in text for name in names), text[:3000]
        assert "score" in text  # the metric's column
        best = max(r["metrics"]["score"] for r in records)
        assert f"{best:.2f}"[:3] in text
        rows = page.locator("[role='row']").count()
        assert rows >= len(records)  # a flat table of the trials, not a collapsed parent run
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


#: Lines of other libraries' own formats: Ray's logging, Ray core's native lines, a worker's
#: prefix, Tune's status table, a traceback.
LIBRARY_LINE = re.compile(
    r"^\s*(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d[,.]\d+\s+(DEBUG|INFO|WARNING|ERROR)\b"
    r"|\[\d{4}-\d\d-\d\d [\d:,.]+ [EWI] \d+ \d+\]|\(\w+ pid=\d+\)|== Status ==|Trial status"
    r"|Traceback \(most recent call last\))"
)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][AB012]|\r")


def _on_a_terminal(argv: list[str], timeout: float = 300) -> tuple[int, str]:
    """Run ``argv`` with a pseudo-terminal as its standard streams; its exit code and output."""
    import pty

    master, slave = pty.openpty()
    process = subprocess.Popen(
        argv, cwd=TESTS, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
        env={**os.environ, "COLUMNS": "120", "LINES": "40", "TERM": "xterm-256color"},
    )  # fmt: skip
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:  # the terminal closed: the process ended
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return process.wait(timeout=60), b"".join(chunks).decode(errors="replace")


@pytest.mark.parametrize("terminal", [False, True], ids=["pipe", "terminal"])
def test_the_console_is_aops_and_other_libraries_write_to_the_study_log(tmp_path, terminal):
    """On a terminal a live display, in a pipe one plain line per trial: never a line of Ray's,
    Tune's or MLflow's own, which go to STUDY/logs/aop.log; a trial that raises is one line."""
    path = _experiment(tmp_path, "gp", 5, toy={"fail": "a"})  # the start point (encoder a) fails
    argv = [*AOP, "search", str(path)]
    if terminal:
        code, output = _on_a_terminal(argv)
        shown = ANSI.sub("", output)
    else:
        done = subprocess.run(argv, cwd=TESTS, capture_output=True, text=True, timeout=300)
        code, output = done.returncode, done.stdout + done.stderr
        shown = output
        assert "\x1b[" not in output  # no cursor codes in a pipe
    assert code == 0, output[-3000:]
    lines = [line for line in shown.split("\n") if line.strip()]
    assert not [line for line in lines if LIBRARY_LINE.search(line)], shown[-3000:]
    failed = [line for line in lines if "failed: " in line]  # one line per failed trial
    assert failed and all("ValueError: toy failure on encoder a" in x for x in failed)
    assert all("aop resume" in x for x in failed) and "Traceback" not in shown
    assert re.search(rf"aop: search gp: \d of 5 trials, {len(failed)} failed, best score", shown)
    if not terminal:  # one line per finished trial of the main search
        assert len(re.findall(r"^  gp \d/5: score ", shown, re.M)) >= 3
    log = tmp_path / "study" / "logs" / "aop.log"
    assert f"Log of Ray, Tune, Lightning and MLflow: {log}" in shown.replace("\n", "")
    text = log.read_text()
    assert "toy failure" in text  # Tune's own report of the failure, with its traceback
    assert LIBRARY_LINE.search(text)  # Ray's own lines are there
