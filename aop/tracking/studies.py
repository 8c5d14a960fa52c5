"""Earlier studies read back from MLflow: a study's parent run and its trials as records.

A study logs one parent run (tag ``aop.study_dir``, params ``config.*``) and one child run per
finished trial (tags ``search`` and ``trial_id``, the trial's configuration as params), see
:mod:`aop.tracking.client`. :func:`tracked_studies` reads them back for a URI:

``runs:/PARENT_RUN_ID``
    one study: the parent run;
``experiments:/NAME_OR_ID``
    every study in the MLflow experiment (each active run with the ``aop.study_dir`` tag and no
    parent run), oldest first.

A study's kind is its ``config.kind`` param. Its objective is the metric its parent run logs
per search (``<search>/<metric>``, one point per trial). Trial params come back as MLflow keeps
them: text (``0.001``, ``True``, ``resnet18``); the caller types them against its search space.
Only finished child runs are trials (a run a trial opened and no record completed is not).

This module names no study kind and imports no Ray.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.utils import get_results_from_paginated_fn
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from aop.errors import AopError
from aop.tracking.client import store_reachable

__all__ = ["STUDY_DIR_TAG", "TrackedStudy", "tracked_studies"]

#: The tag that marks a study's parent run, with the study folder as its value.
STUDY_DIR_TAG = "aop.study_dir"
_PAGE = 1000  # runs per page of a store query


@dataclass
class TrackedStudy:
    """One study as its MLflow parent run tells it.

    Attributes
    ----------
    run_id : str
        The parent run.
    study_dir : str
        The study folder the run was logged from (its ``aop.study_dir`` tag).
    kind : str
        The study kind (``config.kind``).
    metric : str or None
        The objective (``None`` when the run logged no trial).
    records : list of dict
        One trial record per finished child run: ``search``, ``trial_id``, ``iteration``,
        ``params`` (MLflow's text) and ``metrics`` (``{metric: value}``, the objective only).
    """

    run_id: str
    study_dir: str
    kind: str
    metric: str | None
    records: list[dict[str, Any]] = field(default_factory=list)


def tracked_studies(
    tracking_uri: str, uri: str, exclude_study_dir: str | Path | None = None
) -> list[TrackedStudy]:
    """The studies a ``runs:/`` or ``experiments:/`` URI names, read from ``tracking_uri``.

    Parameters
    ----------
    tracking_uri : str
        The MLflow store (a server, or an SQLite file, which must exist).
    uri : str
        ``runs:/PARENT_RUN_ID`` or ``experiments:/NAME_OR_ID``.
    exclude_study_dir : path-like, optional
        Studies logged from this folder are left out of an experiment (the caller's own study).

    Returns
    -------
    list of TrackedStudy

    Raises
    ------
    AopError
        One line naming ``uri``: the store does not answer or does not exist, the run or
        experiment is unknown, the run is no study's parent run, the experiment holds no study.
    """
    _check_store(tracking_uri, uri)
    client = MlflowClient(tracking_uri=tracking_uri)
    scheme, name = uri.split(":/", 1)
    name = name.strip("/")
    try:
        if scheme == "runs":
            return [_study(client, _parent_run(client, uri, name))]
        experiment = _experiment(client, uri, name)
        query = f"tags.`{STUDY_DIR_TAG}` LIKE '%'"

        def page(max_results: int, token: str | None) -> Any:
            return client.search_runs([experiment.experiment_id], query,
                                      max_results=max_results, page_token=token)  # fmt: skip

        runs = [
            run for run in get_results_from_paginated_fn(page, _PAGE)
            if MLFLOW_PARENT_RUN_ID not in run.data.tags
            and (exclude_study_dir is None
                 or run.data.tags[STUDY_DIR_TAG] != str(exclude_study_dir))
        ]  # fmt: skip
        if not runs:
            raise AopError(f"{uri}: the MLflow experiment holds no aop study (in {tracking_uri})")
        runs.sort(key=lambda run: (run.info.start_time or 0, run.info.run_id))
        return [_study(client, run) for run in runs]
    except MlflowException as exc:
        reason = str(exc.message).strip().splitlines()[0][:200]
        raise AopError(f"{uri}: cannot read it from {tracking_uri} ({reason})") from None


def _check_store(tracking_uri: str, uri: str) -> None:
    """Refuse a store that does not exist here (MLflow would create an empty one) or that
    does not answer."""
    from aop.resources import check_tracking_uri

    if tracking_uri.startswith("sqlite:///") and not store_reachable(tracking_uri):
        raise AopError(f"{uri}: the MLflow store {tracking_uri} does not exist")
    try:
        check_tracking_uri(tracking_uri)
    except AopError as exc:
        raise AopError(f"{uri}: {exc}") from None


def _parent_run(client: MlflowClient, uri: str, run_id: str) -> Run:
    if not re.fullmatch(r"[0-9a-f]{32}", run_id):
        raise AopError(f"{uri}: not an MLflow run id")
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise AopError(f"{uri}: no such run in {client.tracking_uri}") from None
    tags = run.data.tags
    if run.info.lifecycle_stage == "deleted":
        raise AopError(f"{uri}: the run is deleted")
    if MLFLOW_PARENT_RUN_ID in tags and "trial_id" in tags:
        parent = tags[MLFLOW_PARENT_RUN_ID]
        raise AopError(f"{uri}: the run of one trial; name its study's parent run: runs:/{parent}")
    if STUDY_DIR_TAG not in tags:
        raise AopError(f"{uri}: not the parent run of an aop study (no {STUDY_DIR_TAG} tag)")
    return run


def _experiment(client: MlflowClient, uri: str, name: str) -> Any:
    experiment = client.get_experiment_by_name(name)
    if experiment is None and name.isdigit():
        try:
            experiment = client.get_experiment(name)
        except MlflowException:
            experiment = None
    if experiment is None or experiment.lifecycle_stage == "deleted":
        raise AopError(f"{uri}: no such MLflow experiment in {client.tracking_uri}")
    return experiment


def _study(client: MlflowClient, run: Run) -> TrackedStudy:
    """The study of a parent run: its kind, objective and finished trials."""
    run_id = run.info.run_id
    query = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{run_id}'"

    def page(max_results: int, token: str | None) -> Any:
        return client.search_runs([run.info.experiment_id], query, max_results=max_results,
                                  page_token=token)  # fmt: skip

    children = [child for child in get_results_from_paginated_fn(page, _PAGE)
                if child.info.status == "FINISHED" and "trial_id" in child.data.tags]  # fmt: skip
    searches = {child.data.tags.get("search", "") for child in children}
    metric = _objective(run, searches)
    records = []
    for child in children:
        tags = child.data.tags
        value = child.data.metrics.get(metric) if metric is not None else None
        if value is None:
            continue
        iteration = tags.get("iteration", "")
        records.append({
            "search": tags.get("search", ""),
            "trial_id": tags["trial_id"],
            "iteration": int(iteration) if iteration.lstrip("-").isdigit() else -1,
            "params": dict(child.data.params),
            "metrics": {metric: float(value)},
        })  # fmt: skip
    records.sort(key=lambda r: (r["search"], r["iteration"], r["trial_id"]))
    return TrackedStudy(
        run_id=run_id,
        study_dir=run.data.tags.get(STUDY_DIR_TAG, ""),
        kind=run.data.params.get("config.kind", ""),
        metric=metric,
        records=records,
    )


def _objective(run: Run, searches: Sequence[str] | set[str]) -> str | None:
    """The metric the parent run logs per search (``<search>/<metric>``), or None."""
    found = {key.split("/", 1)[1] for key in run.data.metrics
             if "/" in key and key.split("/", 1)[0] in searches}  # fmt: skip
    return sorted(found)[0] if len(found) == 1 else None
