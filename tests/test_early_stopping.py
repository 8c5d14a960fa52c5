"""Early stopping (``search.scheduler: asha``) on the engine: stops, records, MLflow, resume.

Real Ray, real MLflow (one SQLite store per module) and the ``toy_steps`` kind
(tests/toy_kind.py): a trial reports 9 steps, its score at step ``t`` being
``toy_score * (1 - 0.5 ** t)``, so that every step ranks the configurations as the end does
and a stopped trial's last score is known exactly. The searcher's own saved state (Ray Tune's
``searcher-state-*.pkl``) and the scheduler's (``STUDY_DIR/scheduler/SEARCH.pkl``) show what
each learned.
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Any

import optuna
import pytest
import toy_kind
import yaml
from driver_helpers import kill_search_when, resume
from mlflow_helpers import study_tracker
from typer.testing import CliRunner

from aop.analysis.records import read_records
from aop.cli import app
from aop.errors import AopError
from aop.tuning.kinds import load_experiment
from aop.tuning.schedulers import state_path
from aop.tuning.study import run_study

STEPS = 9
RUNGS = (1, 3)  # grace period 1, reduction factor 3, 9 steps: a trial at step 9 has ended


def _experiment(project: Path, name: str, budget: int, *, kind: str = "toy_steps",
                toy: dict | None = None, scheduler: Any = None, **extra: Any) -> Path:  # fmt: skip
    """An experiment file of a toy kind in ``project``; its study is ``project/name``."""
    space_file = project / f"{name}_space.yaml"
    space_file.write_text(yaml.safe_dump(toy_kind.SPACE, sort_keys=False))
    search = {"searcher": "gp", "budget": budget, "seed": 3, "concurrency": 1}
    if scheduler is not None:
        search["scheduler"] = scheduler
    raw = {
        "name": name,
        "kind": kind,
        "search": search,
        "search_space": space_file.name,
        "storage": {"study_dir": name},
        "tracking": {"tracking_uri": f"sqlite:///{project / 'mlflow.db'}", "experiment": name},
        "comparison": {"random": False},
        "ray": {"num_cpus": 2},
        "toy": {"steps": STEPS, **(toy or {})} if kind.startswith("toy_steps") else (toy or {}),
        **extra,
    }
    path = project / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def _score(params: dict, step: int) -> float:
    return toy_kind.toy_score(params) * (1.0 - 0.5**step)


def _last_step(record: dict) -> int:
    return int((record.get("stopped_at") or {}).get("step", STEPS))


def _scheduler_state(study: Path, search: str = "gp") -> dict:
    with open(state_path(study, search), "rb") as handle:
        return pickle.load(handle)


def _rungs(state: dict) -> dict[float, dict[str, float]]:
    return {milestone: dict(recorded) for milestone, recorded in state["_brackets"][0]._rungs}


def _optuna_values(study: Path, search: str = "gp") -> list[float]:
    """The values of the finished trials the gp searcher holds (Ray Tune's saved state)."""
    path = sorted((study / "tune" / search).glob("searcher-state-*.pkl"))[-1]
    with open(path, "rb") as handle:
        state = pickle.load(handle)
    trials = state["_ot_study"].get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    return [t.value for t in trials]


def _told(study: Path, search: str = "gp") -> dict[str, dict[str, float]]:
    """What the ``ScaledStops`` limiter told the searcher of each stopped trial (Tune's state)."""
    path = sorted((study / "tune" / search).glob("search_gen_state-*"))[-1]
    with open(path, "rb") as handle:
        return pickle.load(handle)["name:ScaledStops"]["told"]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("early")


@pytest.fixture(scope="module")
def asha_study(project, local_ray) -> dict:
    """A 12-trial gp study of ``toy_steps`` under ASHA (grace period 1, reduction factor 3)."""
    path = _experiment(project, "asha", 12, scheduler={"name": "asha", "grace_period": 1,
                                                       "reduction_factor": 3})  # fmt: skip
    result = run_study(load_experiment(path), verbose=-1)
    return {"dir": project / "asha", "records": result.records["gp"], "best": result.best}


def test_asha_stops_poor_trials_and_the_best_ran_to_its_end(asha_study):
    records = asha_study["records"]
    assert len(records) == 12 and len({r["trial_id"] for r in records}) == 12
    stopped = [r for r in records if r.get("stopped_at")]
    assert len(stopped) >= 3, "ASHA stopped no more than two trials of twelve"
    for record in records:
        step = _last_step(record)
        assert step == STEPS or step in RUNGS, record.get("stopped_at")
        # a stopped trial's metrics are those of its last report, at the step it stopped
        assert math.isclose(record["metrics"]["score"], _score(record["params"], step))
    assert sum(_last_step(r) for r in records) < 12 * STEPS
    best = asha_study["best"]
    assert not best.get("stopped_at")
    ended = [r for r in records if not r.get("stopped_at")]
    assert math.isclose(best["metrics"]["score"], max(r["metrics"]["score"] for r in ended))
    on_disk = yaml.safe_load((asha_study["dir"] / "best.yaml").read_text())
    assert on_disk["trial_id"] == best["trial_id"]
    meta = yaml.safe_load((asha_study["dir"] / "study.yaml").read_text())
    assert meta["scheduler"] == {"name": "asha", "grace_period": 1, "reduction_factor": 3.0,
                                 "search": "gp", "fidelity": "step"}  # fmt: skip


def test_the_scheduler_state_matches_the_records_and_the_searcher_learned_every_trial(
    asha_study,
):
    records = {r["trial_id"]: r for r in asha_study["records"]}
    state = _scheduler_state(asha_study["dir"])
    assert set(state["stopped"]) == {t for t, r in records.items() if r.get("stopped_at")}
    for trial_id, step in state["stopped"].items():
        assert records[trial_id]["stopped_at"] == {"step": step}
    rungs = _rungs(state)
    assert set(rungs) == {1, 3, 9}
    # every trial was recorded at the first rung with its score there (mode max: as it is)
    assert set(rungs[1]) == set(records)
    for trial_id, value in rungs[1].items():
        assert math.isclose(value, _score(records[trial_id]["params"], 1))
    # the searcher was told every trial's last result, the stopped ones' included
    told = sorted(_optuna_values(asha_study["dir"]))
    assert len(told) == len(records)
    expected = sorted(r["metrics"]["score"] for r in records.values())
    assert all(math.isclose(a, b) for a, b in zip(told, expected, strict=True))


def test_a_kind_with_scaled_stops_tells_the_searcher_a_stopped_trial_at_its_whole_value(
    project, local_ray
):
    """``toy_steps_scaled``: every trial's score at step ``t`` is its toy score times
    ``1 - 0.5 ** t``, so the ratio over the trials that ran to their end is exact and a stopped
    trial is told the score it would have ended with; its record keeps the score it was stopped
    with."""
    path = _experiment(project, "scaled", 12, kind="toy_steps_scaled",
                       scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 3})
    result = run_study(load_experiment(path), verbose=-1)
    records = {r["trial_id"]: r for r in result.records["gp"]}
    stopped = {i: r for i, r in records.items() if r.get("stopped_at")}
    assert stopped and len(stopped) < len(records)
    told = _told(project / "scaled")
    assert sorted(told) == sorted(stopped)
    expected = []
    for trial_id, record in records.items():
        whole = _score(record["params"], STEPS)
        if trial_id not in stopped:
            assert math.isclose(record["metrics"]["score"], whole)
            expected.append(whole)
            continue
        # the record: what the trial measured; the searcher: its whole score (one trial at a
        # time: a trial ran to its end before any stop, so every ratio has a basis)
        measured = _score(record["params"], _last_step(record))
        assert math.isclose(record["metrics"]["score"], measured)
        assert told[trial_id]["basis"] >= 1 and math.isclose(told[trial_id]["last"], measured)
        assert math.isclose(told[trial_id]["told"], whole) and whole > measured
        expected.append(whole)
    values = sorted(_optuna_values(project / "scaled"))
    assert all(math.isclose(a, b) for a, b in zip(values, sorted(expected), strict=True))
    assert len(values) == len(records)


def test_stopped_trials_are_finished_mlflow_runs_tagged_with_their_stop_step(asha_study):
    records = {r["trial_id"]: r for r in asha_study["records"]}
    runs = study_tracker(asha_study["dir"], "asha").child_runs("gp")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(records)
    for run in runs:
        record = records[run.data.tags["trial_id"]]
        assert run.info.status == "FINISHED"
        if record.get("stopped_at"):
            assert run.data.tags["early_stopped"] == "true"
            assert run.data.tags["stopped_at_step"] == f"{record['stopped_at']['step']:g}"
        else:
            assert "early_stopped" not in run.data.tags
        assert math.isclose(run.data.metrics["score"], record["metrics"]["score"])


def test_the_report_says_how_many_trials_were_stopped_and_where(asha_study):
    study = asha_study["dir"]
    n_stopped = sum(1 for r in asha_study["records"] if r.get("stopped_at"))
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(study), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["scheduler"]["stopped"] == {"gp": n_stopped}
    text = runner.invoke(app, ["report", str(study)], terminal_width=200)
    assert text.exit_code == 0, text.output
    assert f"stopped {n_stopped} of 12 trials of gp early" in text.output


def test_a_scheduler_is_refused_where_it_cannot_stop_a_trial(project, local_ray):
    toy = _experiment(project, "asha-toy", 4, kind="toy", scheduler="asha")
    with pytest.raises(AopError, match=r"search.scheduler: 'asha': a toy trial reports once"):
        load_experiment(toy)
    several = _experiment(project, "asha-two", 4, scheduler="asha",
                          objectives=[{"metric": "score", "mode": "max"},
                                      {"metric": "loss", "mode": "min"}])  # fmt: skip
    with pytest.raises(AopError, match="stops trials on one metric"):
        load_experiment(several)
    unknown = _experiment(project, "asha-name", 4, scheduler={"name": "hyperband"})
    with pytest.raises(AopError, match="search.scheduler.name"):
        load_experiment(unknown)
    extra = _experiment(project, "asha-key", 4, scheduler={"name": "asha", "grace": 2})
    with pytest.raises(AopError, match="search.scheduler.grace"):
        load_experiment(extra)
    # a grace period at or past the last step leaves no rung: one line before any trial runs
    late = _experiment(project, "asha-late", 4, scheduler={"name": "asha", "grace_period": 9})
    with pytest.raises(AopError, match=r"grace_period: 9 steps leaves no rung: a trial runs "
                                       r"9 steps at most"):  # fmt: skip
        run_study(load_experiment(late), verbose=-1)
    assert not (project / "asha-late" / "results").exists()


def test_a_killed_study_under_asha_resumes_with_its_rungs_to_its_budget(project):
    budget = 10
    path = _experiment(project, "asha-killed", budget, toy={"delay": 0.08},
                       kind="toy_steps_scaled",
                       scheduler={"name": "asha", "grace_period": 1, "reduction_factor": 3},
                       )  # fmt: skip
    study = project / "asha-killed"
    results = study / "results" / "gp.jsonl"
    kill_search_when(path, lambda: len(read_records(results)) if results.is_file() else 0, 4)
    before = _rungs(_scheduler_state(study))
    assert 4 <= len(read_records(results)) < budget, "the study was not interrupted"
    assert before[1], "the scheduler saved no rung before the kill"

    done = resume(study)
    assert done.returncode == 0, done.stderr[-2000:]
    records = read_records(results)
    ids = [r["trial_id"] for r in records]
    assert len(records) == budget and len(set(ids)) == budget
    state = _scheduler_state(study)
    after = _rungs(state)
    for milestone, recorded in before.items():  # the resumed scheduler went on from its state
        for trial_id, value in recorded.items():
            if trial_id in ids:
                assert after[milestone][trial_id] == value
    # every trial Tune ran reached the first rung; one it ran past the budget (its generator
    # restored a trial behind, see run_search) has no record, and only those may lack one
    ran = {path.name for path in (study / "tune" / "gp").iterdir() if path.is_dir()}
    assert set(ids) <= set(after[1]) <= ran
    assert {t for t in state["stopped"] if t in ids} == {
        r["trial_id"] for r in records if r.get("stopped_at")}
    runs = study_tracker(study, "asha-killed").child_runs("gp")
    assert sorted(r.data.tags["trial_id"] for r in runs) == sorted(ids)
    # the searcher's limiter went on from its saved state: stopped trials told scaled
    told = _told(study)
    stopped = {r["trial_id"]: r for r in records if r.get("stopped_at")}
    assert stopped and set(stopped) & set(told)
    for trial_id in set(stopped) & set(told):
        assert math.isclose(told[trial_id]["told"], _score(stopped[trial_id]["params"], STEPS))


def test_progress_lines_say_where_a_trial_stopped_and_keep_the_best_of_ended_trials(capsys):
    from types import SimpleNamespace

    from aop.tuning.progress import SearchProgress

    # a search name of its own: the studies above registered gp's budget (set_budget)
    progress = SearchProgress("gp-lines", 3, "score", "max", fidelity="step")
    progress.setup()
    ended = SimpleNamespace(trial_id="a", last_result={"score": 0.5, "step": 9, "final": True})
    # scored on one step only: higher than the ended trial, but no best
    stopped = SimpleNamespace(trial_id="b", last_result={"score": 0.9, "step": 1})
    for trial in (ended, stopped):
        progress.on_trial_start(0, [], trial)
        progress.on_trial_complete(0, [], trial)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert lines[-2].startswith("  gp-lines 1/3: score 0.5 (trial a; best 0.5")
    assert lines[-2].endswith("new best")
    assert lines[-1].startswith("  gp-lines 2/3: score 0.9 (trial b; best 0.5")
    assert lines[-1].endswith("stopped at step 1")
    assert progress.best == 0.5 and progress.done == 2


def test_a_resumed_search_with_more_trials_than_its_budget_keeps_the_first(tmp_path, local_ray):
    """Tune's search generator restored one trial behind its experiment state creates one trial
    too many: the search keeps the first ``budget`` trials Tune created, and drops the rest."""
    from ray import tune

    from aop.tuning.searchers import make_searcher
    from aop.tuning.space import parse_space
    from aop.tuning.study import run_search

    space = parse_space(toy_kind.SPACE)

    def searcher() -> Any:
        return make_searcher("random", space, metric="score", mode="max", seed=0,
                             concurrency=1)  # fmt: skip

    def search(budget: int) -> list[dict]:
        return run_search("gp", tune.with_parameters(toy_kind.toy_trial), study_dir=tmp_path,
                          param_space=dict(space.fixed), num_samples=budget, kind="toy",
                          searcher=searcher(), verbose=-1,
                          topup=lambda done, part: searcher())  # fmt: skip

    four = search(4)
    assert len(four) == 4
    # the same Tune experiment, restored, holds 4 trials for a budget of 3
    three = search(3)
    order = sorted(four, key=lambda r: r["iteration"])  # the order Tune created them
    assert sorted(r["trial_id"] for r in three) == sorted(r["trial_id"] for r in order[:3])
    assert [r["trial_id"] for r in read_records(tmp_path / "results" / "gp.jsonl")] == [
        r["trial_id"] for r in three]
