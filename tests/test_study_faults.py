"""Faults during a study: the tracking server goes away, the disk fills up.

- A real ``mlflow server`` process (SQLite store) is SIGKILLed while ``aop search`` runs, and
  started again on the same port and store. The study must finish with every trial logged once.
- The study folder lives on a small tmpfs that the test fills once the first trial is recorded.
  The study must stop with one line, and ``aop resume`` (after the test frees the space) must
  finish it with the exact budget, every trial logged once. Mounting needs root; elsewhere the
  test is skipped.
- Without any process: the trials an outage missed are logged once, and a dead server is refused
  in one line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow_helpers import wait_for_mlflow

AOP = [sys.executable, "-c", "from aop.cli import main; main()"]
MLFLOW = str(Path(sys.executable).with_name("mlflow"))
BUDGET = 3


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_server(store: Path, port: int, wait: bool = True) -> subprocess.Popen:
    server = subprocess.Popen(
        [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{store / 'server.db'}",
         "--default-artifact-root", str(store / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    if wait:
        wait_for_mlflow(f"http://127.0.0.1:{port}", server, 120)
    return server


@pytest.fixture(scope="module", autouse=True)
def early_server(tmp_path_factory):
    """The first tracking server of the server test, started (not waited for) when the module
    begins: its startup overlaps the disk test, which runs first."""
    store = tmp_path_factory.mktemp("server")
    port = _free_port()
    held = {"server": _start_server(store, port, wait=False)}
    yield store, port, held
    _kill(held["server"])


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1] if line.strip()]


def _fault_experiment(tmp_path: Path, study: Path) -> Path:
    experiment = tmp_path / "faults.yaml"
    experiment.write_text(yaml.safe_dump({
        "name": "faults",
        "data": {"synth": {"n_volumes": 1, "shape": [8, 32, 32], "seed": 1}},
        "models": [{"name": "classical"}],
        "search": {"searcher": "random", "budget": BUDGET, "seed": 0},
        "storage": {"study_dir": str(study)},
        "comparison": {"baseline": False, "random": False},
        "ray": {"num_cpus": 2},
    }))  # fmt: skip
    return experiment


def _wait_for_records(path: Path, count: int, driver: subprocess.Popen) -> None:
    deadline = time.monotonic() + 300
    while len(_records(path)) < count:
        assert driver.poll() is None, driver.stdout.read().decode()
        assert time.monotonic() < deadline, "no trial finished in time"
        time.sleep(0.05)


def _child_runs(uri: str, study: Path) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    parent = (study / "mlflow_run_id").read_text().strip()
    return client.search_runs(
        [client.get_run(parent).info.experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent}'",
        max_results=1000,
    )


@pytest.mark.slow
def test_a_disk_that_fills_up_mid_study_is_one_line_and_the_study_resumes(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.system(f"mount -t tmpfs -o size=48m tmpfs {disk} 2>/dev/null") != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    study = disk / "study"
    experiment = _fault_experiment(tmp_path, study)
    driver = subprocess.Popen(
        [*AOP, "search", str(experiment), "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )  # fmt: skip
    results = study / "results" / "random.jsonl"
    filler = disk / "filler"
    try:
        _wait_for_records(results, 1, driver)
        with pytest.raises(OSError, match="No space left"), filler.open("wb") as handle:
            while True:  # every byte the study has not taken yet
                handle.write(b"\0" * (1 << 16))
                handle.flush()
        _, stderr = driver.communicate(timeout=400)
        lines = [line for line in stderr.decode().splitlines() if line.startswith("error:")]
        assert driver.returncode == 2, stderr.decode()[-3000:]
        assert lines == [
            f"error: {study}: cannot write: no space left on the device; free space, then run aop "
            f"resume {study} (it continues from the last state Ray Tune saved)"
        ], stderr.decode()[-3000:]
        assert "Traceback" not in stderr.decode()
        # no half-written file left behind, Tune's state included (aop.tuning.storage)
        assert not [p.name for p in [*study.rglob(".*tmp*"), *study.rglob(".*part*")]]
        for state in (study / "tune" / "random").glob("experiment_state-*.json"):
            json.loads(state.read_text())
        assert 1 <= len(_records(results)) <= BUDGET
        filler.unlink()  # the user frees space ...
        resumed = subprocess.run(
            [*AOP, "resume", str(study), "--quiet"], capture_output=True, timeout=400
        )  # ... and continues
        assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
        recorded = [r["trial_id"] for r in _records(results)]
        # trials that finished after Tune's last saved state ran again, and their first records
        # and child runs were dropped, so nothing counts twice. When the disk took Tune's
        # searcher state but not its experiment state, the restored search ends short and a
        # top-up experiment (random.topup1) runs the rest: the budget is always reached
        assert sorted(set(recorded)) == sorted(recorded) and len(recorded) == BUDGET, (
            resumed.stdout.decode(errors="replace")[-3000:])
        store = yaml.safe_load((study / "experiment.yaml").read_text())["tracking"]["tracking_uri"]
        logged = [run.data.tags["trial_id"] for run in _child_runs(store, study)]
        assert sorted(logged) == sorted(recorded)
        assert (study / "best.yaml").is_file() and (study / "plots" / "comparison.png").is_file()
    finally:
        _kill(driver)
        os.system(f"umount -l {disk}")  # lazy: a Ray process may still hold a file there


@pytest.mark.slow
def test_tracking_server_killed_and_restarted_mid_study_loses_no_trial(tmp_path, early_server):
    store, port, held = early_server
    uri = f"http://127.0.0.1:{port}"
    server = held["server"]
    wait_for_mlflow(uri, server, 120)
    study = tmp_path / "study"
    experiment = _fault_experiment(tmp_path, study)
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    driver = subprocess.Popen(
        [*AOP, "search", str(experiment), "--quiet", "--tracking-uri", uri],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=env,
    )  # fmt: skip
    results = study / "results" / "random.jsonl"
    try:
        _wait_for_records(results, 1, driver)
        _kill(server)  # the tracking server goes away mid-study ...
        time.sleep(1)
        server = held["server"] = _start_server(store, port)  # ... back on the same store
        output, _ = driver.communicate(timeout=400)
        assert driver.returncode == 0, output.decode()[-3000:]
        runs = _child_runs(uri, study)
        logged = [run.data.tags["trial_id"] for run in runs]
        recorded = [r["trial_id"] for r in _records(results)]
        assert len(recorded) == BUDGET
        assert sorted(logged) == sorted(recorded)  # every trial once: none lost, none twice
        assert all(run.info.status == "FINISHED" for run in runs)
    finally:
        _kill(driver)
        _kill(server)


def test_trials_missing_from_mlflow_are_logged_once_and_a_dead_server_is_one_line(tmp_path):
    from aop.errors import AopError
    from aop.tracking import StudyTracker
    from aop.tuning.kinds import parse_experiment
    from aop.tuning.study import log_missing_trials

    zeros = {"erode_dilate": 0, "open_close": 0, "merge_continuity": 0.0, "merge_smoothness": 0.0,
             "merge_area": 0.0, "split_sigma": 0.0, "split_threshold": 0.0}  # fmt: skip
    records = {"random": [
        {"search": "random", "trial_id": f"t{i}", "model": "classical", "params": zeros,
         "ipq": 0.1 * i, "sq": 0.5, "rq": 0.5, "iq": 1.0} for i in range(3)
    ]}  # fmt: skip
    raw = {
        "name": "faults", "data": {"synth": {"n_volumes": 1, "shape": [8, 16, 16]}},
        "models": [{"name": "classical"}], "storage": {"study_dir": str(tmp_path / "s")},
        "tracking": {"experiment": "faults"},
    }  # fmt: skip
    exp = parse_experiment(raw, base=tmp_path)
    tracker = StudyTracker(exp.study_dir, exp.tracking_uri, "faults")
    tracker.start({}, {})
    tracker.log_trial(records["random"][0])  # logged before the server went away
    assert log_missing_trials(exp, records) == 2  # the two the outage missed
    assert log_missing_trials(exp, records) == 0  # a second resume adds nothing
    assert sorted(StudyTracker(exp.study_dir, exp.tracking_uri, "faults").logged_trials()) == [
        "t0", "t1", "t2"
    ]
    exp.tracking.tracking_uri = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(AopError, match=r"MLflow server not reachable.*run aop resume"):
        log_missing_trials(exp, records)
