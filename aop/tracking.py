"""MLflow tracking of a segmentation study: one parent run per study, one child run per trial.

What the MLflow UI shows for a study:

- the **parent run** (name: the study folder's name) with tags ``aop.version``, ``aop.git_commit``
  (when aop runs from a git checkout), ``dataset.fingerprint`` and ``aop.study_dir``; params: the
  experiment config flattened (``config.<key>``) and the search space flattened (``space.<key>``);
  artifacts: ``experiment.yaml``, ``search_space.yaml``, ``best.yaml``, ``plots/*.png`` and the
  best pipeline as an MLflow pyfunc model (``pipeline``, see :mod:`aop.pipeline_model`);
  metrics: ``best_ipq``, ``best_sq``, ``best_rq``, ``best_iq`` and, per search, ``<search>/ipq``
  with the trial's iteration as step;
- one **child run** per finished trial (tag ``mlflow.parentRunId``, tags ``trial_id``, ``search``,
  ``model``, ``node``, ``iteration``); params: the seven post-processing parameters and ``model``;
  metrics: ``ipq sq rq iq`` (means over volumes), ``ipq/<volume>`` etc., ``duration_s``.

All logging happens in the driver process (SQLite stores lock under many concurrent writers): Ray
Tune trials report their scores and :class:`TrialLoggingCallback` logs them. Child runs are keyed
by (search, trial_id): a resumed study, a re-run callback or a second
:meth:`StudyTracker.log_trial` of the same record adds no child run. The parent run id is kept in
``STUDY_DIR/mlflow_run_id`` so that a resumed study logs into the same parent.

The default store is ``sqlite:///STUDY_DIR/mlflow.db`` with artifacts in ``STUDY_DIR/mlartifacts``;
pass ``tracking_uri`` (e.g. ``http://host:5000``) to log to an MLflow server instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from ray.tune import Callback

from aop.analysis.records import METRICS, validate_record
from aop.errors import AopError
from aop.pipeline_model import SegmentationPipelineModel

RUN_ID_FILE = "mlflow_run_id"
DEFAULT_EXPERIMENT = "aop-segmentation"
_MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
_BATCH = 100  # MLflow's limit on params/tags per log_batch call

__all__ = [
    "DEFAULT_EXPERIMENT",
    "RUN_ID_FILE",
    "SegmentationPipelineModel",
    "StudyTracker",
    "TrialLoggingCallback",
    "dataset_fingerprint",
    "default_tracking_uri",
    "flatten",
    "record_from_result",
]


def default_tracking_uri(study_dir: str | os.PathLike) -> str:
    """The default MLflow store of a study: ``sqlite:///<absolute study dir>/mlflow.db``."""
    return f"sqlite:///{Path(study_dir).resolve() / 'mlflow.db'}"


def _is_local_store(tracking_uri: str) -> bool:
    return tracking_uri.startswith(("sqlite:", "file:", "/", "mysql", "postgresql", "mssql"))


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """Flatten nested mappings and lists into ``{"a.b.0": "text"}`` MLflow params.

    Keys are joined with dots (list items by index); characters MLflow does not allow in a key
    become ``_``; values are strings cut to MLflow's 6000-character limit.
    """
    out: dict[str, str] = {}
    if isinstance(value, Mapping):
        items = [(str(k), v) for k, v in value.items()]
    elif isinstance(value, list | tuple) and any(isinstance(v, Mapping | list) for v in value):
        items = [(str(i), v) for i, v in enumerate(value)]
    else:
        text = json.dumps(value) if isinstance(value, list | tuple) else str(value)
        return {prefix or "value": text[:_MAX_PARAM_LENGTH]}
    for key, item in items:
        out.update(flatten(item, f"{prefix}.{key}" if prefix else key))
    return {_safe_key(k): v for k, v in out.items()}


def _safe_key(key: str) -> str:
    return re.sub(r"[^\w\-. /]", "_", key)[:250]


def dataset_fingerprint(root: str | os.PathLike) -> str:
    """SHA-256 (16 hex digits) of a data set's files: manifest and volumes, names and bytes."""
    root = Path(root)
    if not root.is_dir():
        raise AopError(f"{root}: data-set folder not found")
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):  # noqa: B023
                digest.update(chunk)
    return digest.hexdigest()[:16]


def _git_commit() -> str | None:
    package_dir = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(package_dir), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _parameter_keys() -> tuple[str, ...]:
    from aop.segmentation.params import PARAMETER_RANGES

    return tuple(PARAMETER_RANGES)


def record_from_result(
    search: str,
    trial_id: str,
    config: Mapping[str, Any],
    result: Mapping[str, Any],
    iteration: int = -1,
) -> dict[str, Any]:
    """Build a trial record from a Ray Tune trial's config and last reported result.

    Parameters
    ----------
    search : str
        Name of the search.
    trial_id : str
        The Tune trial id.
    config : mapping
        The trial's config: ``model`` and the seven parameters, at the top level or under
        ``params``.
    result : mapping
        The last result: ``ipq sq rq iq``, per-volume ``ipq/<volume>`` (etc.), optional ``model``,
        ``node``, ``duration_s`` (else Tune's ``time_total_s``) and ``iteration``.
    iteration : int
        Position of the trial in its search, used when neither the result has an ``iteration``
        nor the trial id ends in Tune's ``_<index>``.

    Returns
    -------
    dict
        A validated trial record (see :mod:`aop.analysis.records`).
    """
    keys = _parameter_keys()
    source = config.get("params") if isinstance(config.get("params"), Mapping) else config
    params = {key: source[key] for key in keys if key in source}
    per_volume: dict[str, dict[str, float]] = {}
    for name, value in result.items():
        metric, _, volume = str(name).partition("/")
        if metric in METRICS and volume:
            per_volume.setdefault(volume, {})[metric] = value
    duration = result.get("duration_s", result.get("time_total_s"))
    record = {
        "search": search,
        "trial_id": str(trial_id),
        "model": result.get("model") or config.get("model"),
        "params": params,
        **{metric: result.get(metric) for metric in METRICS},
        "per_volume": per_volume,
        "duration_s": duration,
        "node": result.get("node") or result.get("hostname") or "",
        "iteration": int(result.get("iteration", _trial_index(str(trial_id), iteration))),
    }
    return validate_record(record, f"trial {trial_id} of search {search!r}")


def _trial_index(trial_id: str, default: int) -> int:
    """Tune's trial ids are ``<run>_<index>``: the index is the trial's position in its search."""
    tail = trial_id.rsplit("_", 1)[-1]
    return int(tail) if "_" in trial_id and tail.isdigit() else default


class StudyTracker:
    """Logs one study to MLflow: a parent run and one child run per trial.

    Parameters
    ----------
    study_dir : path-like
        The study folder; holds ``mlflow_run_id`` and, by default, the store ``mlflow.db``.
    tracking_uri : str, optional
        MLflow tracking URI; default :func:`default_tracking_uri`.
    experiment_name : str
        MLflow experiment the parent run belongs to (created when missing).

    Notes
    -----
    The tracker uses :class:`mlflow.MlflowClient` with an explicit URI, never MLflow's global
    active run, and pickles without its client, so it can travel with a Ray Tune callback.
    """

    def __init__(
        self,
        study_dir: str | os.PathLike,
        tracking_uri: str | None = None,
        experiment_name: str = DEFAULT_EXPERIMENT,
    ) -> None:
        self.study_dir = Path(study_dir).resolve()
        self.tracking_uri = tracking_uri or default_tracking_uri(self.study_dir)
        self.experiment_name = experiment_name
        self.parent_run_id: str | None = None
        self.experiment_id: str | None = None
        self._client: MlflowClient | None = None
        self._logged: set[tuple[str, str]] | None = None

    # -- plumbing ---------------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_client"] = None
        state["_logged"] = None
        return state

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
            stored = self._stored_run_id()
            if stored is None:
                raise AopError(f"{self.study_dir}: the study has no MLflow run yet (call start)")
            self.parent_run_id = stored
            self.experiment_id = self.client.get_run(stored).info.experiment_id
        return self.parent_run_id

    def _stored_run_id(self) -> str | None:
        path = self.study_dir / RUN_ID_FILE
        if not path.exists():
            return None
        run_id = path.read_text(encoding="utf-8").strip()
        if not re.fullmatch(r"[0-9a-f]{32}", run_id):
            raise AopError(f"{path}: not an MLflow run id: {run_id[:40]!r}")
        return run_id

    def _experiment(self) -> str:
        experiment = self.client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            location = None
            if _is_local_store(self.tracking_uri):
                location = (self.study_dir / "mlartifacts").as_uri()
            return self.client.create_experiment(self.experiment_name, artifact_location=location)
        if experiment.lifecycle_stage == "deleted":
            self.client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id

    def _log_batch(
        self,
        run_id: str,
        params: Mapping[str, str] = (),
        metrics: Iterable[Metric] = (),
        tags: Mapping[str, str] = (),
    ) -> None:
        params_list = [Param(k, str(v)) for k, v in dict(params).items()]
        tags_list = [RunTag(k, str(v)) for k, v in dict(tags).items()]
        metrics_list = list(metrics)
        for start in range(0, len(params_list), _BATCH):
            self.client.log_batch(run_id, params=params_list[start : start + _BATCH])
        for start in range(0, len(tags_list), _BATCH):
            self.client.log_batch(run_id, tags=tags_list[start : start + _BATCH])
        for start in range(0, len(metrics_list), 10 * _BATCH):
            self.client.log_batch(run_id, metrics=metrics_list[start : start + 10 * _BATCH])

    def _terminate(self, run_id: str, end_time: int | None = None) -> None:
        """Mark a run finished without MLflow's two "View run at" lines per run on stdout."""
        with contextlib.redirect_stdout(io.StringIO()):
            self.client.set_terminated(
                run_id, status=RunStatus.to_string(RunStatus.FINISHED), end_time=end_time
            )

    # -- the parent run ---------------------------------------------------------------------------

    def start(
        self,
        config: Mapping[str, Any],
        search_space: Mapping[str, Any],
        dataset_fingerprint: str | None = None,
    ) -> str:
        """Create the study's parent run, or reopen the one named in ``STUDY_DIR/mlflow_run_id``.

        Parameters
        ----------
        config : mapping
            The validated experiment config; logged as ``config.*`` params.
        search_space : mapping
            The search space; logged as ``space.*`` params and as ``search_space.yaml``.
        dataset_fingerprint : str, optional
            Identifies the benchmark data set (see :func:`dataset_fingerprint`).

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
            if run is not None and run.info.lifecycle_stage == "deleted":
                run = None
        if run is None:
            self.experiment_id = self._experiment()
            run = self.client.create_run(
                self.experiment_id,
                run_name=self.study_dir.name,
                tags={"aop.study_dir": str(self.study_dir)},
            )
            _atomic_write(self.study_dir / RUN_ID_FILE, run.info.run_id + "\n")
        else:
            self.experiment_id = run.info.experiment_id
            if run.info.status != "RUNNING":
                self.client.update_run(run.info.run_id, status="RUNNING")
        self.parent_run_id = run.info.run_id

        tags = {"aop.version": __version__}
        commit = _git_commit()
        if commit:
            tags["aop.git_commit"] = commit
        if dataset_fingerprint:
            tags["dataset.fingerprint"] = dataset_fingerprint
        params = {**flatten(dict(config), "config"), **flatten(dict(search_space), "space")}
        existing = run.data.params
        params = {k: v for k, v in params.items() if k not in existing}
        self._log_batch(self.parent_run_id, params=params, tags=tags)

        experiment_file = self.study_dir / "experiment.yaml"
        if experiment_file.is_file():
            self.client.log_artifact(self.parent_run_id, str(experiment_file))
        with tempfile.TemporaryDirectory() as tmp:
            space_file = Path(tmp) / "search_space.yaml"
            space_file.write_text(yaml.safe_dump(_plain(search_space), sort_keys=False))
            self.client.log_artifact(self.parent_run_id, str(space_file))
        return self.parent_run_id

    def finish(
        self,
        best: Mapping[str, Any],
        artifacts: Iterable[str | os.PathLike] = (),
        log_pipeline: bool = True,
        spacing: tuple[float, float, float] | None = None,
        model_spec: Any = None,
    ) -> None:
        """Log the best configuration and the study's artifacts, and mark the parent run finished.

        Parameters
        ----------
        best : mapping
            The best trial record: metrics ``best_ipq`` etc. (step = number of child runs, so a
            resumed study adds a point), tags ``best.search``, ``best.trial_id``, ``best.model``,
            ``best.<parameter>``.
        artifacts : iterable of path
            Files to log (``best.yaml``, plots...). A file inside the study folder keeps its
            relative folder (``plots/x.png`` -> artifact ``plots/x.png``); others land at the root.
        log_pipeline : bool
            Also log the best pipeline as the pyfunc model ``pipeline``
            (:meth:`log_pipeline_model`). A failure there is a warning and the tag
            ``pipeline.error``, never a lost study.
        spacing : tuple of 3 floats, optional
            Default voxel size of the pipeline model.
        model_spec : ModelSpec or mapping, optional
            Registry name and settings of the best model (the record's ``model`` is the study's
            model id); default: the record's ``model`` as registry name, no settings.
        """
        run_id = self._require_parent()
        best = validate_record(best, "best configuration")
        step = len(self._logged_keys())
        timestamp = _now_ms()
        metrics = [Metric(f"best_{m}", best[m], timestamp, step) for m in METRICS]
        tags = {
            "best.search": best["search"],
            "best.trial_id": best["trial_id"],
            "best.model": best["model"],
            **{f"best.{k}": _param_text(k, v) for k, v in best["params"].items()},
        }
        self._log_batch(run_id, metrics=metrics, tags=tags)
        for path in artifacts:
            path = Path(path).resolve()
            if not path.is_file():
                raise AopError(f"{path}: artifact not found")
            folder = None
            if path.is_relative_to(self.study_dir):
                relative = path.parent.relative_to(self.study_dir)
                folder = None if str(relative) == "." else relative.as_posix()
            self.client.log_artifact(run_id, str(path), folder)
        if log_pipeline:
            try:
                self.log_pipeline_model(best, spacing=spacing, model_spec=model_spec)
            except Exception as exc:  # noqa: BLE001  (a finished study must not be lost)
                message = f"{type(exc).__name__}: {exc}"[:_MAX_PARAM_LENGTH]
                warnings.warn(f"pipeline model not logged: {message}", stacklevel=2)
                self.client.set_tag(run_id, "pipeline.error", message)
        self._terminate(run_id)

    def log_pipeline_model(
        self,
        best: Mapping[str, Any],
        spacing: tuple[float, float, float] | None = None,
        model_spec: Any = None,
        name: str = "pipeline",
    ) -> str:
        """Log the best model + post-processing as an MLflow pyfunc model on the parent run.

        Parameters
        ----------
        best : mapping
            A trial record (``model`` and ``params`` are used).
        spacing : tuple of 3 floats, optional
            Default voxel size (z, y, x); ``predict(volume, params={"spacing": [...]})`` overrides.
        model_spec : ModelSpec or mapping, optional
            Registry ``name`` and ``settings`` of the segmentation model; default the record's
            ``model`` with no settings. The adapter's ``weight_files()`` are packed into the
            MLflow model, so a model found by name in its library's cache runs elsewhere too.
        name : str
            Name of the logged model.

        Returns
        -------
        str
            The model URI, ``runs:/<parent run id>/<name>``; load it with
            ``mlflow.pyfunc.load_model(uri)``.
        """
        run_id = self._require_parent()
        from mlflow.models.signature import ModelSignature
        from mlflow.types.schema import ParamSchema, ParamSpec

        default_spacing = [float(s) for s in spacing or (1.0, 1.0, 1.0)]
        signature = ModelSignature(
            inputs=None,
            outputs=None,
            params=ParamSchema([ParamSpec("spacing", "double", default_spacing, (-1,))]),
        )
        with (
            SegmentationPipelineModel.packed(best, spacing, model_spec) as (python_model, files),
            _tracking_uri(self.tracking_uri),
            mlflow.start_run(run_id=run_id, nested=True),
        ):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                mlflow.pyfunc.log_model(
                    name=name,
                    python_model=python_model,
                    artifacts=files or None,
                    signature=signature,
                    pip_requirements=_pip_requirements(),
                )
        # mlflow.start_run(run_id=...) ends the run when the block closes: reopen it
        self.client.update_run(run_id, status="RUNNING")
        return f"runs:/{run_id}/{name}"

    # -- child runs -------------------------------------------------------------------------------

    def _logged_keys(self) -> set[tuple[str, str]]:
        """(search, trial_id) of the finished child runs; half-written ones are deleted."""
        if self._logged is None:
            parent = self._require_parent()
            logged: set[tuple[str, str]] = set()
            token = None
            while True:
                page = self.client.search_runs(
                    [self.experiment_id],
                    filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}'",
                    max_results=1000,
                    page_token=token,
                )
                for run in page:
                    key = (run.data.tags.get("search", ""), run.data.tags.get("trial_id", ""))
                    if run.info.status == "FINISHED":
                        logged.add(key)
                    else:  # created but never completed (the driver stopped mid-way)
                        self.client.delete_run(run.info.run_id)
                token = page.token
                if not token:
                    break
            self._logged = logged
        return self._logged

    def logged_trials(self, search: str | None = None) -> set[str]:
        """Trial ids that have a child run (of one search, or of all)."""
        return {t for s, t in self._logged_keys() if search is None or s == search}

    def log_trial(self, record: Mapping[str, Any]) -> str | None:
        """Log one trial record as a child run, unless its (search, trial_id) is already logged.

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
        key = (record["search"], record["trial_id"])
        logged = self._logged_keys()
        if key in logged:
            return None
        end = _now_ms()
        duration = record["duration_s"]
        start = end - int(1000 * duration) if math.isfinite(duration) else end
        tags = {
            MLFLOW_PARENT_RUN_ID: parent,
            "search": record["search"],
            "trial_id": record["trial_id"],
            "model": record["model"],
            "node": record["node"],
            "iteration": str(record["iteration"]),
        }
        run = self.client.create_run(
            self.experiment_id,
            start_time=start,
            tags=tags,
            run_name=f"{record['search']}-{record['trial_id']}",
        )
        params = {k: _param_text(k, v) for k, v in record["params"].items()}
        params["model"] = record["model"]
        metrics = [Metric(m, record[m], end, 0) for m in METRICS]
        for volume, scores in record["per_volume"].items():
            metrics += [Metric(_safe_key(f"{m}/{volume}"), v, end, 0) for m, v in scores.items()]
        if math.isfinite(duration):
            metrics.append(Metric("duration_s", duration, end, 0))
        self._log_batch(run.info.run_id, params=params, metrics=metrics)
        self._terminate(run.info.run_id, end_time=end)
        step = max(record["iteration"], 0)
        self.client.log_batch(
            parent, metrics=[Metric(_safe_key(f"{record['search']}/ipq"), record["ipq"], end, step)]
        )
        logged.add(key)
        return run.info.run_id

    def callback(self, search: str) -> TrialLoggingCallback:
        """A Ray Tune callback that logs every completed trial of ``search`` as a child run."""
        self._require_parent()
        return TrialLoggingCallback(self, search)

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
                dropped += 1
        return dropped

    def child_runs(self, search: str | None = None) -> list[Any]:
        """The child runs of the study (of one search, or all), as :class:`mlflow.entities.Run`."""
        parent = self._require_parent()
        query = f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}'"
        if search is not None:
            query += f" and tags.search = '{search}'"
        return list(self.client.search_runs([self.experiment_id], query, max_results=50000))


class TrialLoggingCallback(Callback):
    """Ray Tune callback: each completed trial becomes one MLflow child run of the study.

    Runs in the Tune driver. The trial record is built by :func:`record_from_result` from the
    trial's config and last result; :meth:`StudyTracker.log_trial` skips trials already logged, so
    restoring an experiment never duplicates child runs.

    Parameters
    ----------
    tracker : StudyTracker
        A tracker whose parent run exists (after :meth:`StudyTracker.start`).
    search : str
        Name of the search ("random", "gp", ...).
    """

    def __init__(self, tracker: StudyTracker, search: str) -> None:
        self.tracker = tracker
        self.search = search
        self._completed = 0

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        result = trial.last_result or {}
        if "ipq" not in result:
            return  # a trial that never reported a score
        record = record_from_result(
            self.search, trial.trial_id, trial.config, result, iteration=self._completed
        )
        self._completed += 1
        self.tracker.log_trial(record)


# -- helpers --------------------------------------------------------------------------------------


def _now_ms() -> int:
    return int(time.time() * 1000)


def _param_text(key: str, value: float) -> str:
    """A parameter as its search space types it: ``-1`` for a radius, ``0.0`` for a weight."""
    from aop.segmentation.params import PARAMETER_RANGES

    kind = PARAMETER_RANGES.get(key, (float,))[0]
    if kind is int and float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _pip_requirements() -> list[str]:
    from aop import __version__

    return [f"aop=={__version__}"]


@contextlib.contextmanager
def _tracking_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at ``uri`` for the block, then restore the previous URI."""
    before = mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else None
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)  # None unsets it again
