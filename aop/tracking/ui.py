"""The MLflow UI on a project's store, opened on a study's trials (``aop ui``).

A study logs into its project's SQLite store (see :mod:`aop.config`); :func:`serve_store` starts
``mlflow server`` on it, on a free port of 127.0.0.1, and waits until it answers. The address of a
study's trials is :meth:`aop.tracking.StudyTracker.trials_url`: the shared view the tracker saved
on the experiment when the study started (a flat table of its child runs with their metrics and
parameters), which MLflow's UI opens from the URL in any browser, without clicks.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import IO

from aop.errors import AopError
from aop.tracking.client import wait_for_server

__all__ = ["serve_store", "store_path", "study_addresses"]

_SQLITE = "sqlite:///"


def store_path(tracking_uri: str) -> Path:
    """The file of a local SQLite store; another URI (a server) is one :class:`AopError` line."""
    if not tracking_uri.startswith(_SQLITE):
        raise AopError(
            f"{tracking_uri}: not a local store; its MLflow server shows the runs already (open "
            "its address in a browser)"
        )
    path = Path(tracking_uri.removeprefix(_SQLITE))
    if not path.is_file():
        raise AopError(f"{path}: no MLflow store here yet (a study creates it when it starts)")
    return path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_store(
    tracking_uri: str, *, port: int = 0, log: IO[str] | None = None, timeout_s: float = 120.0
) -> tuple[subprocess.Popen, str]:
    """Start ``mlflow server`` on a local store and wait until it answers.

    Parameters
    ----------
    tracking_uri : str
        ``sqlite:///PATH/mlflow.db``.
    port : int
        The port on 127.0.0.1 (0: a free one).
    log : file, optional
        Where the server's own output goes (default: nowhere).
    timeout_s : float
        How long to wait for the server.

    Returns
    -------
    (subprocess.Popen, str)
        The server process (stop it with ``terminate()``) and its address.
    """
    store_path(tracking_uri)
    port = port or _free_port()
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", tracking_uri,
               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    if not wait_for_server(url, process, timeout_s):
        process.kill()
        raise AopError(f"MLflow UI on {tracking_uri}: the server did not start within "
                       f"{timeout_s:.0f} s (is port {port} free?)")  # fmt: skip
    return process, url


def study_addresses(tracking_uri: str, base_url: str) -> dict[str, str]:
    """``{study folder: address of its trials}`` for every study that logged into the store.

    A study is a parent run tagged ``aop.study_dir``; its address opens the shared view its
    tracker saved (:meth:`aop.tracking.StudyTracker.trials_url`).
    """
    from mlflow import MlflowClient

    from aop.tracking.client import SHARED_VIEW_TAG

    client = MlflowClient(tracking_uri)
    base = base_url.rstrip("/")
    found: dict[str, str] = {}
    for experiment in client.search_experiments():
        shared = {k.removeprefix(SHARED_VIEW_TAG) for k in experiment.tags
                  if k.startswith(SHARED_VIEW_TAG)}  # fmt: skip
        for run in client.search_runs([experiment.experiment_id], "tags.`aop.study_dir` != ''"):
            query = f"?viewStateShareKey={run.info.run_id}" if run.info.run_id in shared else ""
            found[run.data.tags["aop.study_dir"]] = (
                f"{base}/#/experiments/{experiment.experiment_id}/runs{query}"
            )
    return found
