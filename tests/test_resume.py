"""An interrupted study (driver SIGKILLed) resumes: trials kept, searcher continued."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow_helpers import study_tracker

from aop.segmentation.postprocess import PARAMETER_RANGES

BUDGET = 7
AOP = [sys.executable, "-c", "from aop.cli import main; main()"]


def _records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    lines = path.read_text().split("\n")
    return [json.loads(line) for line in lines[:-1] if line.strip()]  # complete lines only


@pytest.mark.slow
def test_killed_search_resumes_where_it_stopped(tmp_path):
    study = tmp_path / "study"
    experiment = tmp_path / "resume.yaml"
    experiment.write_text(
        yaml.safe_dump(
            {
                "name": "resume",
                "data": {"synth": {"n_volumes": 1, "shape": [12, 32, 32], "seed": 4}},
                "models": [{"name": "classical"}],
                "search": {"searcher": "gp", "budget": BUDGET, "seed": 0, "concurrency": 1},
                "storage": {"study_dir": str(study)},
                "comparison": {"baseline": False, "random": False},
                "ray": {"num_cpus": 2},
            }
        )
    )
    results = study / "results" / "gp.jsonl"
    driver = subprocess.Popen(
        [*AOP, "search", str(experiment), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while len(_records(results)) < 3 and driver.poll() is None:
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.1)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait()
    before = _records(results)
    assert 3 <= len(before) < BUDGET, "the search was not interrupted"

    done = subprocess.run(
        [*AOP, "resume", str(study), "--quiet"], capture_output=True, text=True, timeout=400
    )
    assert done.returncode == 0, done.stderr[-2000:]

    after = _records(results)
    ids = [r["trial_id"] for r in after]
    assert len(after) == BUDGET and len(set(ids)) == BUDGET
    # finished trials are kept in order; only a trial that reported after Tune last saved its
    # state can be lost (it reruns under a new id), at most one with one worker
    kept = [r["trial_id"] for r in before if r["trial_id"] in ids]
    assert ids[: len(kept)] == kept and len(kept) >= len(before) - 1
    start = {"model": "classical", **dict.fromkeys(PARAMETER_RANGES, 0)}
    zeros = [r for r in after if r["params"] == start]
    assert len(zeros) == 1 and zeros[0]["trial_id"] == before[0]["trial_id"]  # not restarted
    assert sorted(r["iteration"] for r in after) == list(range(BUDGET))
    assert len(study_tracker(study, "aop-segmentation").child_runs("gp")) == BUDGET
    best = yaml.safe_load((study / "best.yaml").read_text())
    assert best["scores"]["ipq"] == max(r["metrics"]["ipq"] for r in after)


def test_resume_of_a_folder_without_a_study_fails_cleanly(tmp_path):
    done = subprocess.run([*AOP, "resume", str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 2
    assert "not a study folder" in done.stderr and "Traceback" not in done.stderr
