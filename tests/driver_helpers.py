"""Run ``aop`` in a subprocess with the tests' own study kinds, and kill a search part-way.

The resume tests start ``aop search`` as a user would, SIGKILL the driver and the local Ray it
started once some trials finished (:func:`kill_search_when`), then run ``aop resume``
(:func:`resume`). ``module`` is the test module that registers the study kind (importing it
registers the kind in the subprocess too).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def aop_command(module: str = "toy_kind") -> list[str]:
    """``aop`` with ``module`` imported first (it registers the study kind)."""
    return [sys.executable, "-c", f"import {module}; from aop.cli import main; main()"]


def tests_env() -> dict[str, str]:
    """The environment with the tests' folder on ``PYTHONPATH`` (for ``module``)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get(
        "PYTHONPATH", "")])}  # fmt: skip


def kill_search_when(
    experiment: Path,
    finished: Callable[[], int],
    at_least: int,
    module: str = "toy_kind",
    timeout: float = 300.0,
) -> None:
    """Run ``aop search EXPERIMENT --quiet``; SIGKILL it and its local Ray once ``finished()``
    (the trials recorded so far) reaches ``at_least``, or when it ended by itself."""
    driver = subprocess.Popen(
        [*aop_command(module), "search", str(experiment), "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env=tests_env(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        while finished() < at_least and driver.poll() is None:
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.1)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait()


def resume(study: Path, module: str = "toy_kind") -> subprocess.CompletedProcess:
    """``aop resume STUDY --quiet``, its output captured."""
    return subprocess.run([*aop_command(module), "resume", str(study), "--quiet"],
                          capture_output=True, text=True, timeout=400, env=tests_env())  # fmt: skip
