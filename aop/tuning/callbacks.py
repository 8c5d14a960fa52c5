"""Driver-side Ray Tune callbacks: one trial record per finished trial, to disk and to MLflow.

:func:`trial_record` is the only place a trial record is built (:mod:`aop.analysis.records` has
the format). :class:`StudyCallback` appends it to ``results/SEARCH.jsonl`` and hands it to the
MLflow tracker (a child run), both from the Tune driver, so the SQLite store sees one writer.
After a search, :func:`prune_orphans` drops the records and child runs of trials that the
restored Tune run does not know (see there).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ray.tune import Callback

from aop.analysis.records import append_record, read_records, validate_record
from aop.outputs import atomic_file, is_disk_full
from aop.tuning.schedulers import stopped_at


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _json_safe(value: Any) -> Any:
    """A JSON value with non-finite numbers as None (records are JSON without NaN)."""
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if hasattr(value, "tolist"):  # NumPy arrays and scalars
        return _json_safe(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def trial_record(
    search: str,
    trial_id: str,
    config: Mapping[str, Any],
    result: Mapping[str, Any],
    metrics: Sequence[str],
    iteration: int = -1,
    extras: Sequence[str] = (),
    curves: Mapping[str, Sequence[Sequence[float]]] | None = None,
    fidelity: str | None = None,
) -> dict[str, Any]:
    """The trial record of one finished trial.

    Parameters
    ----------
    search : str
        Name of the search.
    trial_id : str
        The Tune trial id.
    config : mapping
        The trial's configuration (searched parameters and constants; nested values are left
        out).
    result : mapping
        The trial's last reported result: the ``metrics``, optional per-volume values
        ``<metric>/<volume>``, ``duration_s`` (else Tune's ``time_total_s``) and ``node``.
    metrics : sequence of str
        The study kind's recorded metrics.
    iteration : int
        Position of the trial in its search.
    extras : sequence of str
        Further result keys the kind keeps in its records as they are (e.g. ``volume_nodes``).
    curves : mapping, optional
        ``{metric: [[step, value], ...]}``: the history of metrics reported repeatedly.
    fidelity : str, optional
        Under an early-stopping scheduler, the result key of the kind's fidelity: a last
        result without ``final: True`` is a stop, recorded as ``stopped_at``
        (:func:`aop.tuning.schedulers.stopped_at`).

    Returns
    -------
    dict
        A validated record (see :mod:`aop.analysis.records`).
    """
    wanted = set(metrics)
    per_volume: dict[str, dict[str, float]] = {}
    for key, value in result.items():
        metric, _, volume = str(key).partition("/")
        if volume and metric in wanted and _finite(value):
            per_volume.setdefault(volume, {})[metric] = float(value)
    record = {
        "search": search,
        "trial_id": str(trial_id),
        "params": {k: v for k, v in config.items() if isinstance(v, str | bool | int | float)},
        "metrics": {m: result[m] for m in metrics if _finite(result.get(m))},
        "per_volume": per_volume,
        "duration_s": result.get("duration_s", result.get("time_total_s")),
        "node": str(result.get("node") or result.get("hostname") or ""),
        "iteration": int(iteration),
        **{key: _json_safe(result[key]) for key in extras if key in result},
    }
    stop = stopped_at(result, fidelity)
    if stop is not None:
        record["stopped_at"] = stop
    if curves:
        record["curves"] = {m: [[int(a), float(b)] for a, b in v] for m, v in curves.items()}
    return validate_record(record, f"trial {trial_id} of search {search!r}")


class StudyCallback(Callback):
    """Record every finished trial of one search: a line in ``results/NAME.jsonl``, then ``sink``.

    A trial already in the file (a trial re-run after a resume) is not recorded twice. A trial
    whose last result lacks the objective (it never reported) is skipped.

    Parameters
    ----------
    path : path-like
        The search's ``.jsonl`` file.
    search : str
        Search name.
    metric : str
        The objective; a result without it is not a finished trial.
    metrics : sequence of str
        The metrics recorded.
    sink : callable, optional
        Called with each new record (e.g. :meth:`aop.tracking.StudyTracker.log_trial`).
    extras : sequence of str
        Result keys kept in the records as they are (see :func:`trial_record`).
    curves : sequence of str
        Metrics whose every reported value is kept, one step per report (training curves).
    fidelity : str, optional
        The fidelity of the search's early-stopping scheduler (see :func:`trial_record`).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        search: str,
        metric: str,
        metrics: Sequence[str],
        sink: Callable[[dict[str, Any]], Any] | None = None,
        extras: Sequence[str] = (),
        curves: Sequence[str] = (),
        fidelity: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.fidelity = fidelity
        self.search = search
        self.metric = metric
        self.metrics = tuple(metrics)
        self.extras = tuple(extras)
        self.curves = tuple(curves)
        self.sink = sink
        self._seen: set[str] = set()
        self._history: dict[str, dict[str, list[list[float]]]] = {}

    def setup(self, **info: Any) -> None:
        self._seen = {r["trial_id"] for r in self.records()}

    def records(self) -> list[dict[str, Any]]:
        return read_records(self.path) if self.path.is_file() else []

    def on_trial_result(self, iteration, trials, trial, result, **info):  # type: ignore[override]
        if not self.curves:
            return
        history = self._history.setdefault(trial.trial_id, {})
        step = int(result.get("training_iteration", len(history.get(self.metric, [])) + 1))
        for name in self.curves:
            if _finite(result.get(name)):
                history.setdefault(name, []).append([step, float(result[name])])

    def on_trial_complete(self, iteration, trials, trial, **info):  # type: ignore[override]
        result = trial.last_result or {}
        if trial.trial_id in self._seen or self.metric not in result:
            return
        position = next((i for i, t in enumerate(trials) if t.trial_id == trial.trial_id), -1)
        self._add(trial.trial_id, trial.config, result, position)

    def recover(self, grid: Any) -> None:
        """Record the finished trials of Tune's result grid that have no record yet.

        A trial whose completion Tune saved while writing its record failed (a full disk stops
        the study there) is terminated in Tune's state: a restored run never reports it again.
        Its record is rebuilt from its last result (without its curve).
        """
        self._seen |= {r["trial_id"] for r in self.records()}
        for position, result in enumerate(grid):
            metrics = result.metrics or {}
            trial_id = metrics.get("trial_id")
            new = trial_id and trial_id not in self._seen and self.metric in metrics
            if new and result.error is None:
                self._add(str(trial_id), result.config or {}, metrics, position)

    def _add(self, trial_id: str, config: Any, result: Mapping[str, Any], position: int) -> None:
        record = trial_record(
            self.search, trial_id, config, result, self.metrics, position, self.extras,
            self._history.pop(trial_id, None), getattr(self, "fidelity", None),
        )
        append_record(self.path, record)
        self._seen.add(trial_id)
        if self.sink is None:
            return
        try:
            # MLflow's client already waits and retries while a server is away; if it stays
            # away, the record is safe on disk and the end of the study (or aop resume) logs it
            self.sink(record)
        except Exception as exc:  # noqa: BLE001  (a lost tracking server must not stop a study)
            forget = getattr(getattr(self.sink, "__self__", None), "forget_logged", None)
            if forget is not None:
                forget()  # re-read which trials are logged (and clean half-written runs)
            if is_disk_full(exc):
                reason, when = "no space left on the device", "there is space again"
            else:
                reason, when = type(exc).__name__, "the tracking server answers again"
            warnings.warn(
                f"MLflow: trial {trial_id} of {self.search} not logged yet ({reason}); "
                f"it is logged when {when} (at the end of the study or by aop resume)",
                stacklevel=2,
            )


def prune_orphans(path: Path, trial_ids: set[str], tracker: Any = None, search: str = "") -> int:
    """Keep only the records (and MLflow child runs) of trials that Ray Tune's state knows.

    A trial that finished just before the driver was killed, but after Tune last saved its
    experiment state, is unknown to the restored run: the restored searcher suggests the same
    configuration again under a new trial id. Its orphaned record is dropped (the file is
    rewritten atomically) and so is its child run, so every search has exactly its budget.

    Returns
    -------
    int
        Records dropped.
    """
    records = read_records(path) if path.is_file() else []
    kept = [r for r in records if r["trial_id"] in trial_ids]
    if len(kept) != len(records):
        with atomic_file(path) as tmp:
            for record in kept:
                append_record(tmp, record)
    if tracker is not None:
        tracker.prune_trials(search, {r["trial_id"] for r in kept})
    return len(records) - len(kept)
