"""MLflow tracking of a study of any kind: one parent run per study, one child run per trial.

This module imports no Ray: the Tune callback that feeds it lives in :mod:`aop.tuning.callbacks`.

What the MLflow UI shows for a study:

- the **experiment** (by default ``aop-<study kind>``) tagged
  ``mlflow.experimentKind = custom_model_development``, so the UI opens on its runs table;
- the **parent run** (name: the study folder's name) with a description (kind, budget, best
  result), the context tags MLflow's fluent API sets (``mlflow.source.name``,
  ``mlflow.source.type``, ``mlflow.user``, and ``mlflow.source.git.commit`` when the entry point
  lies in a git repository), ``aop.version``,
  ``dataset.fingerprint`` and ``aop.study_dir``; the benchmark as a dataset input (the runs
  table's Dataset column); params: the experiment config flattened (``config.<key>``) and the
  search space flattened (``space.<key>``); artifacts: ``experiment.yaml``, ``search_space.yaml``,
  ``best.yaml``, the kind's plots and models (logged by the kind inside
  :meth:`StudyTracker.parent_run`); metrics: ``best_<metric>`` and, per search,
  ``<search>/<objective>`` with the trial's iteration as step;
- one **child run** per finished trial (tag ``mlflow.parentRunId``, tags ``trial_id``, ``search``,
  ``node``, ``iteration``, and the value of the kind's group parameter when it has one); params:
  the trial's configuration; metrics: the kind's metrics, per-volume values
  (``<metric>/<volume>``), ``duration_s``; artifacts: what the kind draws for a trial.

All logging happens in the driver process (SQLite stores lock under many concurrent writers). Child
runs are keyed by (search, trial_id): a resumed study, a re-run callback or a second
:meth:`StudyTracker.log_trial` of the same record adds no child run. The parent run id is kept in
``STUDY_DIR/mlflow_run_id`` so that a resumed study logs into the same parent.

The default store is ``sqlite:///STUDY_DIR/mlflow.db`` with artifacts in ``STUDY_DIR/mlartifacts``;
pass ``tracking_uri`` (e.g. ``http://host:5000``) to log to an MLflow server instead.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking.context.registry import resolve_tags
from mlflow.utils import get_results_from_paginated_fn
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NOTE
from mlflow.utils.time import get_current_time_millis
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

from aop import io as aop_io
from aop.analysis.records import validate_record
from aop.errors import AopError
from aop.outputs import atomic_file

RUN_ID_FILE = "mlflow_run_id"
#: The experiment tag that makes MLflow's UI open an experiment on its runs table.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
TRIAL_OPEN_TAG = "aop.trial_open"  # a child run a trial opened, until its record completes it
#: The experiment tag prefix under which MLflow's UI keeps a shared view (``?viewStateShareKey=``).
SHARED_VIEW_TAG = "mlflow.sharedViewState."
_PAGE = 1000  # runs per page of a store query
#: ``trial_artifacts(record, folder)`` writes a trial's figures into ``folder``, returns them.
TrialArtifacts = Callable[[Mapping[str, Any], Path], list[Path]]


def wait_for_server(url: str, process: subprocess.Popen | None, timeout: float) -> bool:
    """Poll ``url/health`` every 0.5 s until an MLflow server answers 200 (True), or until
    ``process`` (the server, when this program started it) exits or ``timeout`` seconds pass
    (False)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=2) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            pass
        if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def is_model_uri(text: str) -> bool:
    """Whether ``text`` names an MLflow model by URI (``runs:/``, ``models:/``, ``scheme://``)
    rather than a local path.

    >>> is_model_uri("models:/aop-classifier/3"), is_model_uri("studies/demo")
    (True, False)
    """
    return "://" in text or text.startswith(("runs:/", "models:/"))


def store_reachable(tracking_uri: str) -> bool:
    """Whether this node can write to the store: a server always, SQLite if its file is here."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///") - 1 :]).is_file()
    return True


def require_model_store(model_uri: str) -> None:
    """Refuse a ``runs:/`` or ``models:/`` URI that no store can hold, in one line.

    Without a tracking URI set, MLflow's default store is an SQLite file in the current folder,
    which a look-up would create: where that file does not exist, the model cannot be in it.
    """
    if (
        model_uri.startswith(("runs:/", "models:/"))
        and not mlflow.is_tracking_uri_set()
        and not store_reachable(mlflow.get_tracking_uri())
    ):
        raise AopError(
            f"{model_uri}: no MLflow tracking store to look it up in ({mlflow.get_tracking_uri()}, "
            "MLflow's default, does not exist; set MLFLOW_TRACKING_URI to the store that holds "
            "the run, or give the study folder)"
        )


def default_tracking_uri(study_dir: str | os.PathLike) -> str:
    """The default MLflow store of a study: ``sqlite:///<absolute study dir>/mlflow.db``."""
    return f"sqlite:///{Path(study_dir).resolve() / 'mlflow.db'}"


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings and lists into ``{"a.b.0": "text"}`` MLflow params.

    Keys are joined with dots (list items by index); characters MLflow does not allow in a key
    become ``_``; values are strings cut to MLflow's 6000-character limit.
    """
    if isinstance(value, Mapping):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, list | tuple) and any(isinstance(v, Mapping | list) for v in value):
        items = [(str(i), v) for i, v in enumerate(value)]
    else:
        text = json.dumps(value) if isinstance(value, list | tuple) else str(value)
        return {prefix or "value": text[:MAX_PARAM_VAL_LENGTH]}
    out: dict[str, str] = {}
    for key, item in items:
        out.update(flatten(item, f"{prefix}.{key}" if prefix else key))
    return {_safe_key(k): v for k, v in out.items()}


def _safe_key(key: str) -> str:
    return re.sub(r"[^\w\-. /]", "_", key)[:MAX_ENTITY_KEY_LENGTH]


def _param_text(value: Any) -> str:
    """A parameter as its type writes it: ``-1`` for an integer, ``0.0`` for a float."""
    return repr(value) if isinstance(value, float) else str(value)


class StudyTracker:
    """Logs one study to MLflow: a parent run and one child run per trial.

    Parameters
    ----------
    study_dir : path-like
        The study folder; holds ``mlflow_run_id`` and, by default, the store ``mlflow.db``.
    tracking_uri : str, optional
        MLflow tracking URI; default :func:`default_tracking_uri`.
    experiment_name : str
        MLflow experiment the parent run belongs to (created when missing, tagged so that the UI
        opens on its runs table).
    metric : str, optional
        The study's objective: the parent run's per-search metric ``<search>/<metric>``.
    group : str, optional
        A parameter whose value tags each child run (the study kind's group parameter).
    trial_artifacts : callable, optional
        Draws a trial's figures for its child run (the study kind's
        :meth:`~aop.tuning.kinds.StudyKind.trial_artifacts`).

    Notes
    -----
    The tracker uses :class:`mlflow.MlflowClient` with an explicit URI, never MLflow's global
    active run, and pickles without its client, so it can travel with a Ray Tune callback.
    """

    def __init__(
        self,
        study_dir: str | os.PathLike,
        tracking_uri: str | None = None,
        experiment_name: str | None = None,
        metric: str | None = None,
        group: str | None = None,
        trial_artifacts: TrialArtifacts | None = None,
        metrics: Sequence[str] = (),
        mode: str = "max",
    ) -> None:
        if not experiment_name:
            raise AopError("StudyTracker: experiment_name: name the MLflow experiment")
        self.study_dir = Path(study_dir).resolve()
        self.tracking_uri = tracking_uri or default_tracking_uri(self.study_dir)
        self.experiment_name = experiment_name
        self.metric = metric
        self.metrics = tuple(metrics) or ((metric,) if metric else ())
        self.mode = mode
        self.group = group
        self.trial_artifacts = trial_artifacts
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self._client: MlflowClient | None = None
        self._logged: set[tuple[str, str]] | None = None  # (search, trial_id) of finished runs
        self._open: dict[tuple[str, str], str] = {}  # child runs a trial opened, not logged yet

    # -- plumbing ---------------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_client": None, "_logged": None, "_open": {}}

    @property
    def client(self) -> MlflowClient:
        """The :class:`mlflow.MlflowClient` of ``tracking_uri`` (created on first use)."""
        if self._client is None:
            if self.tracking_uri.startswith("sqlite:"):
                self.study_dir.mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _require_parent(self) -> str:
        if self.parent_run_id is None:
            stored = self._stored_run_id() or self._parent_by_tag()
            if stored is None:
                raise AopError(f"{self.study_dir}: the study has no MLflow run yet (call start)")
            self.parent_run_id = stored
            self.experiment_id = self.client.get_run(stored).info.experiment_id
        return self.parent_run_id

    def _parent_by_tag(self) -> str | None:
        """The study's parent run found in the store (a trial on a node without the folder)."""
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            return None
        runs = self.client.search_runs(
            [experiment.experiment_id],
            f"tags.`aop.study_dir` = '{self.study_dir}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def _stored_run_id(self) -> str | None:
        path = self.study_dir / RUN_ID_FILE
        if not path.exists():
            return None
        run_id = path.read_text(encoding="utf-8").strip()
        if not re.fullmatch(r"[0-9a-f]{32}", run_id):
            raise AopError(f"{path}: not an MLflow run id: {run_id[:40]!r}")
        return run_id

    def _experiment(self) -> str:
        """The experiment's id: created (artifacts beside a SQLite store, in ``mlartifacts/``,
        or in the study folder for another database), restored when deleted, and tagged to open
        on its runs table."""
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            location = None
            if self.tracking_uri.startswith("sqlite:///"):
                location = Path(self.tracking_uri.removeprefix("sqlite:///")).parent
            elif self.tracking_uri.startswith(("file:", "/", "mysql", "postgresql", "mssql")):
                location = self.study_dir
            return self.client.create_experiment(
                self.experiment_name,
                artifact_location=(location / "mlartifacts").as_uri() if location else None,
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        if experiment.lifecycle_stage == "deleted":
            self.client.restore_experiment(experiment.experiment_id)
        if experiment.tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND:
            self.client.set_experiment_tag(
                experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
            )
        return experiment.experiment_id

    def _log_batch(
        self,
        run_id: str,
        params: Mapping[str, str] = (),
        metrics: Iterable[Metric] = (),
        tags: Mapping[str, str] = (),
    ) -> None:
        """One ``log_batch`` call (MLflow's client splits it into batches its store accepts)."""
        self.client.log_batch(
            run_id,
            metrics=list(metrics),
            params=[Param(k, str(v)) for k, v in dict(params).items()],
            tags=[RunTag(k, str(v)) for k, v in dict(tags).items()],
        )

    def _terminate(
        self, run_id: str, end_time: int | None = None, status: str = "FINISHED"
    ) -> None:
        """End a run without MLflow's two "View run at" lines per run on stdout."""
        with contextlib.redirect_stdout(io.StringIO()):
            self.client.set_terminated(run_id, status=status, end_time=end_time)

    # -- the parent run ---------------------------------------------------------------------------

    def start(
        self,
        config: Mapping[str, Any],
        search_space: Mapping[str, Any],
        dataset_fingerprint: str | None = None,
        *,
        dataset: str | os.PathLike | None = None,
        description: str | None = None,
    ) -> str:
        """Create the study's parent run, or reopen the one named in ``STUDY_DIR/mlflow_run_id``.

        Parameters
        ----------
        config : mapping
            The validated experiment config; logged as ``config.*`` params.
        search_space : mapping
            The search space as a file writes it (plain YAML values); logged as ``space.*``
            params and as ``search_space.yaml``.
        dataset_fingerprint : str, optional
            Identifies the benchmark data set (see :func:`aop.io.dataset_fingerprint`); computed
            from ``dataset`` when that is given.
        dataset : path-like, optional
            The data-set folder the study runs on: logged as the run's dataset input (name,
            fingerprint as digest, folder as source), so the runs table's Dataset column names it.
        description : str, optional
            The run's description (``mlflow.note.content``).

        Returns
        -------
        str
            The parent run id (also written to ``STUDY_DIR/mlflow_run_id``).

        Notes
        -----
        Params already logged on a reopened run keep their first value (MLflow params are
        immutable); only new keys are added.
        """
        from aop import __version__

        run = None
        stored = self._stored_run_id()
        if stored is not None:
            try:
                run = self.client.get_run(stored)
            except MlflowException:
                warnings.warn(
                    f"{self.study_dir / RUN_ID_FILE}: run {stored} is not in {self.tracking_uri}; "
                    "starting a new parent run there",
                    stacklevel=2,
                )
        if run is None or run.info.lifecycle_stage == "deleted":
            self.experiment_id = self._experiment()
            run = self.client.create_run(
                self.experiment_id,
                run_name=self.study_dir.name,
                tags={"aop.study_dir": str(self.study_dir)},
            )
            with atomic_file(self.study_dir / RUN_ID_FILE) as tmp:
                tmp.write_text(run.info.run_id + "\n", encoding="utf-8")
        else:
            self.experiment_id = run.info.experiment_id
            if run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
        run_id = self.parent_run_id = run.info.run_id

        if dataset is not None and dataset_fingerprint is None:
            dataset_fingerprint = aop_io.dataset_fingerprint(dataset)
        tags = {**resolve_tags(), "aop.version": __version__}
        if dataset_fingerprint:
            tags["dataset.fingerprint"] = dataset_fingerprint
        if description:
            tags[MLFLOW_RUN_NOTE] = description
        params = {**flatten(dict(config), "config"), **flatten(dict(search_space), "space")}
        params = {k: v for k, v in params.items() if k not in run.data.params}
        self._log_batch(run_id, params=params, tags=tags)

        experiment_file = self.study_dir / "experiment.yaml"
        if experiment_file.is_file():
            self.client.log_artifact(run_id, str(experiment_file))
        space_text = yaml.safe_dump(dict(search_space), sort_keys=False)
        self.client.log_text(run_id, space_text, "search_space.yaml")
        self._share_trials_view(run_id, list(search_space))
        if dataset is not None and dataset_fingerprint and not run.inputs.dataset_inputs:
            self._log_dataset(Path(dataset), dataset_fingerprint)
        return run_id

    def _share_trials_view(self, run_id: str, parameters: list[str]) -> None:
        """Save the view of the study's trials as a shared view of its experiment.

        MLflow's UI opens a shared view from the URL (:meth:`trials_url`): the study's child runs
        as a flat table sorted by the objective, with the metric and parameter columns shown.
        """
        quoted = [f"metrics.`{m}`" for m in self.metrics] + [f"params.`{p}`" for p in parameters]
        state = {"searchFilter": f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{run_id}'",
                 "selectedColumns": quoted}  # fmt: skip
        if self.metric:
            state |= {"orderByKey": f"metrics.`{self.metric}`", "orderByAsc": self.mode == "min"}
        self.client.set_experiment_tag(
            self.experiment_id, f"{SHARED_VIEW_TAG}{run_id}", json.dumps(state)
        )

    def trials_url(self, base_url: str) -> str:
        """The address of the study's trials in the MLflow UI served at ``base_url``."""
        run_id = self._require_parent()
        base = base_url.rstrip("/")
        return f"{base}/#/experiments/{self.experiment_id}/runs?viewStateShareKey={run_id}"

    def _log_dataset(self, root: Path, digest: str) -> None:
        """The data set as the parent run's MLflow dataset input (role ``benchmark``)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        name = root.name
        if (root / "dataset.yaml").is_file():
            data = yaml.safe_load((root / "dataset.yaml").read_text(encoding="utf-8")) or {}
            name = str(data.get("name") or name) if isinstance(data, dict) else name
        entity = Dataset(
            name=name,
            digest=digest,
            source_type="local",
            source=json.dumps({"uri": root.resolve().as_uri()}),
            profile=json.dumps({"volumes": len(list((root / "images").glob("*")))}),
        )
        self.client.log_inputs(
            self._require_parent(),
            datasets=[DatasetInput(entity, tags=[InputTag("mlflow.data.context", "benchmark")])],
        )

    def finish(
        self,
        best: Mapping[str, Any],
        artifacts: Iterable[str | os.PathLike] = (),
        *,
        metrics: Iterable[str] | None = None,
        description: str | None = None,
        reference: Mapping[str, Any] | None = None,
    ) -> None:
        """Log the best configuration and the study's artifacts, and mark the parent run finished.

        Parameters
        ----------
        best : mapping
            The best trial record: metrics ``best_<metric>`` (step = number of child runs, so a
            resumed study adds a point), tags ``best.search``, ``best.trial_id``,
            ``best.<parameter>``.
        artifacts : iterable of path
            Files to log (``best.yaml``, plots...). A file inside the study folder keeps its
            relative folder (``plots/x.png`` -> artifact ``plots/x.png``); others land at the root.
        metrics : iterable of str, optional
            The metrics logged as ``best_<metric>`` (default: all of the record's).
        description : str, optional
            The run's final description (kind, budget, best result).
        reference : mapping, optional
            The kind's reference design (a baseline, :meth:`aop.tuning.kinds.StudyKind.
            reference`): metrics ``reference_<metric>`` for each of its scores, numeric
            entries of its ``comparison`` as ``reference_<key>``, tags ``reference.name`` and
            ``reference.verdict``.
        """
        run_id = self._require_parent()
        best = validate_record(best, "best configuration")
        step = len(self._logged_keys())
        now = get_current_time_millis()
        names = best["metrics"] if metrics is None else metrics
        logged = [Metric(f"best_{m}", best["metrics"][m], now, step) for m in names
                  if m in best["metrics"]]  # a design without epochs has no `epoch`
        tags = {
            "best.search": best["search"],
            "best.trial_id": best["trial_id"],
            **{f"best.{k}": _param_text(v) for k, v in best["params"].items()},
        }
        if description:
            tags[MLFLOW_RUN_NOTE] = description
        if reference:
            numbers = {**dict(reference.get("scores") or {}),
                       **dict(reference.get("comparison") or {})}  # fmt: skip
            logged += [Metric(_safe_key(f"reference_{k}"), float(v), now, step)
                       for k, v in numbers.items()
                       if isinstance(v, int | float) and math.isfinite(v)]  # fmt: skip
            tags |= {f"reference.{k}": str(reference[k])[:MAX_PARAM_VAL_LENGTH]
                     for k in ("name", "verdict") if reference.get(k)}  # fmt: skip
        self._log_batch(run_id, metrics=logged, tags=tags)
        for path in artifacts:
            path = Path(path).resolve()
            if not path.is_file():
                raise AopError(f"{path}: artifact not found")
            folder = None
            if path.is_relative_to(self.study_dir) and path.parent != self.study_dir:
                folder = path.parent.relative_to(self.study_dir).as_posix()
            self.client.log_artifact(run_id, str(path), folder)
        self._terminate(run_id)

    def log_model_safely(self, log: Any, tag: str = "pipeline") -> Any:
        """Call ``log()`` (a model logger); a failure is a warning and the tag ``<tag>.error``.

        A finished study must not be lost because its model could not be packed.
        """
        run_id = self._require_parent()
        try:
            return log()
        except Exception as exc:  # noqa: BLE001  (a finished study must not be lost)
            message = f"{type(exc).__name__}: {exc}"[:MAX_PARAM_VAL_LENGTH]
            warnings.warn(f"{tag} model not logged: {message}", stacklevel=2)
            self.client.set_tag(run_id, f"{tag}.error", message)
            return None

    @contextlib.contextmanager
    def parent_run(self) -> Iterator[str]:
        """MLflow's fluent API inside the parent run, for a kind that logs a model into it.

        Yields the parent run id; ``mlflow.<flavor>.log_model`` inside the block logs to it. The
        run stays open afterwards (the study finishes it).
        """
        run_id = self._require_parent()
        before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
        mlflow.set_tracking_uri(self.tracking_uri)
        try:
            with mlflow.start_run(run_id=run_id, nested=True):
                yield run_id
        finally:
            mlflow.set_tracking_uri(before)  # None unsets it again
            # mlflow.start_run(run_id=...) ends the run when the block closes: reopen it
            self.client.update_run(run_id, status="RUNNING")

    # -- child runs -------------------------------------------------------------------------------

    def _logged_keys(self) -> set[tuple[str, str]]:
        """(search, trial_id) of the finished child runs; half-written ones are deleted.

        A run that a trial opened for its curves (:meth:`open_trial_run`) is kept as open: the
        trial's record completes it.
        """
        if self._logged is None:
            logged: set[tuple[str, str]] = set()
            self._open = {}
            for run in self.child_runs():
                key = (run.data.tags.get("search", ""), run.data.tags.get("trial_id", ""))
                if run.info.status == "FINISHED":
                    logged.add(key)
                elif run.data.tags.get(TRIAL_OPEN_TAG):
                    self._open[key] = run.info.run_id
                else:  # created but never completed (the driver stopped mid-way)
                    self.client.delete_run(run.info.run_id)
            self._logged = logged
        return self._logged

    def forget_logged(self) -> None:
        """Forget which trials are logged: the next call asks the store again."""
        self._logged = None

    def logged_trials(self, search: str | None = None) -> set[str]:
        """Trial ids that have a child run (of one search, or of all)."""
        return {t for s, t in self._logged_keys() if search is None or s == search}

    def open_trial_run(self, search: str, trial_id: str, node: str = "") -> str:
        """The child run a running trial logs its curves into: created, or reopened on resume.

        Called by the trial (see :mod:`aop.tracking.trial_logger`); the run is tagged
        ``aop.trial_open`` until :meth:`log_trial` completes it with the trial's record.
        """
        parent = self._require_parent()
        runs = self.child_runs(search, trial_id)
        if runs:
            if runs[0].info.status not in ("RUNNING", "FINISHED"):
                self.client.update_run(runs[0].info.run_id, status="RUNNING")
            return runs[0].info.run_id
        tags = {MLFLOW_PARENT_RUN_ID: parent, "search": search, "trial_id": trial_id,
                "node": node, TRIAL_OPEN_TAG: "true"}  # fmt: skip
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=f"{search}-{trial_id}")
        return run.info.run_id

    def close_open_runs(self, status: str = "FAILED") -> int:
        """End the child runs that trials opened and no record completed (trials in error)."""
        self.forget_logged()
        self._logged_keys()
        for run_id in self._open.values():
            self._terminate(run_id, status=status)
        closed, self._open = len(self._open), {}
        return closed

    def log_trial(self, record: Mapping[str, Any]) -> str | None:
        """Log one trial record as a child run, unless its (search, trial_id) is already logged.

        A child run the trial opened for its curves is completed instead of a new one created.

        Parameters
        ----------
        record : mapping
            A trial record (see :mod:`aop.analysis.records`).

        Returns
        -------
        str or None
            The new child run id, or None when the trial was already logged.
        """
        parent = self._require_parent()
        record = validate_record(record)
        search, trial_id = key = (record["search"], record["trial_id"])
        logged = self._logged_keys()
        if key in logged:
            return None
        end = get_current_time_millis()
        duration = record["duration_s"]
        tags = {MLFLOW_PARENT_RUN_ID: parent, "search": search, "trial_id": trial_id,
                "node": record["node"], "iteration": str(record["iteration"])}  # fmt: skip
        if self.group is not None and self.group in record["params"]:
            tags[self.group] = str(record["params"][self.group])
        for attr, value in (record.get("stopped_at") or {}).items():
            # a trial an early-stopping scheduler stopped: a finished run, tagged with where
            # (e.g. stopped_at_epoch=3), so the UI filters them (tags.early_stopped = 'true')
            tags["early_stopped"] = "true"
            tags[_safe_key(f"stopped_at_{attr}")] = f"{value:g}"
        # the run the trial opened for its curves: known since the last read of the store, or
        # opened after it
        opened = self._open.pop(key, None) or next(
            (run.info.run_id for run in self.child_runs(search, trial_id)
             if run.data.tags.get(TRIAL_OPEN_TAG) and run.info.status != "FINISHED"),
            None,
        )  # fmt: skip
        if opened is not None:
            run = self.client.get_run(opened)
        else:
            run = self.client.create_run(
                self.experiment_id,
                start_time=end - int(1000 * duration) if math.isfinite(duration) else end,
                tags=tags,
                run_name=f"{search}-{trial_id}",
            )
        params = {k: _param_text(v) for k, v in record["params"].items()
                  if k not in run.data.params}  # fmt: skip
        metrics = [Metric(m, v, end, 0) for m, v in record["metrics"].items()]
        metrics += [Metric(_safe_key(f"{m}/{volume}"), v, end, 0)
                    for volume, scores in record["per_volume"].items()
                    for m, v in scores.items()]  # fmt: skip
        if math.isfinite(duration):
            metrics.append(Metric("duration_s", duration, end, 0))
        if opened is None:  # no trial logger (store out of its reach): curves from Tune's reports
            metrics += [Metric(_safe_key(f"curve/{name}"), v, end, int(step))
                        for name, points in (record.get("curves") or {}).items()
                        for step, v in points]  # fmt: skip
        self._log_batch(run.info.run_id, params=params, metrics=metrics, tags=tags)
        if self.trial_artifacts is not None:  # the kind's figures (e.g. a confusion matrix)
            with tempfile.TemporaryDirectory(prefix="aop-trial-") as tmp:
                for path in self.trial_artifacts(record, Path(tmp)):
                    self.client.log_artifact(run.info.run_id, str(path))
        self._terminate(run.info.run_id, end_time=end)
        if self.metric in record["metrics"]:
            self.client.log_metric(
                parent, _safe_key(f"{search}/{self.metric}"), record["metrics"][self.metric],
                timestamp=end, step=max(record["iteration"], 0),
            )  # fmt: skip
        logged.add(key)
        return run.info.run_id

    def prune_trials(self, search: str, keep: Iterable[str]) -> int:
        """Delete the child runs of ``search`` whose trial id is not in ``keep``.

        For trials that reported just before a killed driver and that the restored Tune run does
        not know (it re-runs their configuration under a new trial id).

        Returns
        -------
        int
            The number of child runs deleted.
        """
        keep = {str(trial_id) for trial_id in keep}
        dropped = 0
        for run in self.child_runs(search):
            trial_id = run.data.tags.get("trial_id", "")
            if trial_id not in keep:
                self.client.delete_run(run.info.run_id)
                if self._logged is not None:
                    self._logged.discard((search, trial_id))
                self._open.pop((search, trial_id), None)
                dropped += 1
        return dropped

    def child_runs(self, search: str | None = None, trial_id: str | None = None) -> list[Run]:
        """The study's child runs (of one search, of one of its trials, or all), every page."""
        query = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{self._require_parent()}'"
        if search is not None:
            query += f" and tags.search = '{search}'"
        if trial_id is not None:
            query += f" and tags.trial_id = '{trial_id}'"

        def page(max_results: int, token: str | None) -> Any:
            return self.client.search_runs(
                [self.experiment_id], query, max_results=max_results, page_token=token
            )

        return list(get_results_from_paginated_fn(page, _PAGE))


def model_requirements(*packages: str) -> list[str]:
    """``pip_requirements`` of a logged model: aop and ``packages`` at their installed versions.

    Given explicitly, so that MLflow does not infer them by importing the model in a subprocess
    (about 10 s per logged model).
    """
    from importlib.metadata import PackageNotFoundError, version

    from aop import __version__

    pins = [f"aop=={__version__}"]
    for name in packages:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pins.append(name)
    return pins
