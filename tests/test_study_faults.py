"""Faults during a study: the MLflow tracking server is killed and restarted mid-study.

A real ``mlflow server`` process (SQLite store) is SIGKILLed while ``aop search`` runs, and started
again on the same port and store. The study must finish with every trial logged once.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

AOP = [sys.executable, "-c", "from aop.cli import main; main()"]
MLFLOW = str(Path(sys.executable).with_name("mlflow"))
BUDGET = 10


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_server(store: Path, port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{store / 'server.db'}",
         "--default-artifact-root", str(store / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.poll() is None, "mlflow server exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.3)
    raise AssertionError("mlflow server did not start")


def _kill(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1] if line.strip()]


@pytest.mark.slow
def test_tracking_server_killed_and_restarted_mid_study_loses_no_trial(tmp_path):
    from mlflow import MlflowClient

    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _start_server(tmp_path, port)
    study = tmp_path / "study"
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
    env = {**os.environ, "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}
    driver = subprocess.Popen(
        [*AOP, "search", str(experiment), "--quiet", "--tracking-uri", uri],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True, env=env,
    )  # fmt: skip
    results = study / "results" / "random.jsonl"
    try:
        deadline = time.monotonic() + 300
        while len(_records(results)) < 2:
            assert driver.poll() is None, driver.stdout.read().decode()
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.05)
        _kill(server)  # the tracking server goes away mid-study ...
        time.sleep(3)
        server = _start_server(tmp_path, port)  # ... and comes back on the same store
        output, _ = driver.communicate(timeout=400)
        assert driver.returncode == 0, output.decode()[-3000:]
    finally:
        _kill(driver)
        _kill(server) if server.poll() is None else None
    server = _start_server(tmp_path, port)
    try:
        client = MlflowClient(tracking_uri=uri)
        parent = (study / "mlflow_run_id").read_text().strip()
        runs = client.search_runs(
            [client.get_run(parent).info.experiment_id],
            f"tags.`mlflow.parentRunId` = '{parent}'",
            max_results=1000,
        )
        logged = [run.data.tags["trial_id"] for run in runs]
        recorded = [r["trial_id"] for r in _records(results)]
        assert len(recorded) == BUDGET
        assert sorted(logged) == sorted(recorded)  # every trial once: none lost, none twice
        assert all(run.info.status == "FINISHED" for run in runs)
    finally:
        _kill(server)
