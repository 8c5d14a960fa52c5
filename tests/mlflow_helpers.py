"""Waiting for a real ``mlflow server`` process that a test started."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from aop.tracking.client import wait_for_server


def wait_for_mlflow(
    url: str, process: subprocess.Popen, timeout: float, log: Path | None = None
) -> None:
    """Poll ``url/health`` until the server answers 200.

    Fails the test (and kills the server) when the process exits or ``timeout`` seconds pass,
    with the tail of the server's ``log`` when there is one.
    """
    if wait_for_server(url, process, timeout):
        return
    exited = process.poll() is not None
    process.kill()
    tail = log.read_text()[-3000:] if log is not None and log.is_file() else ""
    pytest.fail(f"mlflow server at {url} {'exited' if exited else 'did not start'}: {tail}")


def study_tracker(study: Path, experiment: str):  # type: ignore[no-untyped-def]
    """The tracker of a study that ran: its store as the study's ``experiment.yaml`` names it."""
    import yaml

    from aop.tracking import StudyTracker

    saved = yaml.safe_load((Path(study) / "experiment.yaml").read_text())
    return StudyTracker(study, saved["tracking"]["tracking_uri"], experiment)
