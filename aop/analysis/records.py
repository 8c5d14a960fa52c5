"""Trial records: the one-line-per-trial results of a study, of any study kind.

A trial record is a JSON object with these fields::

    search       name of the search that ran the trial ("baseline", "random", "gp", "smac", ...)
    trial_id     identifier of the trial, unique within its search
    params       the trial's configuration {name: number | string | bool}
    metrics      the scores the study kind records {name: number} (e.g. means over the volumes
                 of a benchmark)
    per_volume   {volume: {metric: value}}                                   (optional)
    duration_s   seconds the trial took                                      (optional)
    node         host or Ray node that ran it                                (optional)
    iteration    position of the trial in its search, counted from 0        (optional)
    stopped_at   {fidelity: value}: an early-stopping scheduler stopped the trial there, e.g.
                 {"epoch": 3}; its metrics are those of its last report      (optional)

A study folder keeps them in ``results/NAME.jsonl``, one line per finished trial of search NAME.
Records written before study kinds existed have no ``metrics``: their scores and their choice of
model stand at the top level. They are read in today's layout: every top-level number that is no
record field moves into ``metrics``, every such string into ``params``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from aop.errors import AopError

REQUIRED_FIELDS = ("search", "trial_id", "params", "metrics")
OPTIONAL_FIELDS = ("per_volume", "duration_s", "node", "iteration", "stopped_at")
RESULTS_DIR = "results"
COMPARISON_SEARCHES = ("baseline", "random", "grid")

__all__ = [
    "RESULTS_DIR",
    "append_record",
    "best_record",
    "order_searches",
    "read_records",
    "read_study_records",
    "stopped",
    "torn_last_line",
    "validate_record",
]


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AopError(f"{where}: expected a number, got {value!r}")
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise AopError(f"{where}: expected a finite number, got {value!r}")
    return value


def _param(value: Any, where: str) -> Any:
    if isinstance(value, str | bool):
        return value
    return _number(value, where) if not isinstance(value, int) else value


def _legacy(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record without ``metrics`` (scores and choices at the top level) in today's layout."""
    fields = {*REQUIRED_FIELDS, *OPTIONAL_FIELDS}
    extra = {k: v for k, v in record.items() if k not in fields}
    scores = {k: v for k, v in extra.items() if isinstance(v, int | float)
              and not isinstance(v, bool)}  # fmt: skip
    choices = {k: v for k, v in extra.items() if isinstance(v, str)}
    if not scores:
        return dict(record)
    out = {k: v for k, v in record.items() if k not in scores and k not in choices}
    params = record.get("params")
    if isinstance(params, Mapping):
        out["params"] = {**choices, **params}
    out["metrics"] = scores
    return out


def validate_record(record: Any, where: str = "trial record") -> dict[str, Any]:
    """Check one trial record and return a normalised copy.

    Parameters
    ----------
    record : mapping
        The record, as read from JSON or built by :func:`aop.tuning.callbacks.trial_record`.
    where : str
        Prefix of error messages, e.g. ``"results/gp.jsonl line 3"``.

    Returns
    -------
    dict
        A copy with metrics as floats, ``trial_id`` as a string, ``params``, ``metrics`` and
        ``per_volume`` as plain dicts, and absent optional fields filled (``per_volume={}``,
        ``duration_s=nan``, ``node=""``, ``iteration=-1``).

    Raises
    ------
    AopError
        When a required field is missing, a metric is not a finite number, or a field has the
        wrong type. The message names the field.
    """
    if not isinstance(record, Mapping):
        raise AopError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if "metrics" not in record:
        record = _legacy(record)
    for key in REQUIRED_FIELDS:
        if key not in record:
            raise AopError(f"{where}: missing field {key!r}")
    unknown = sorted(set(record) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
    out: dict[str, Any] = {key: record[key] for key in unknown}  # kept, never interpreted
    if not isinstance(record["search"], str) or not record["search"]:
        raise AopError(
            f"{where}: field 'search' must be a non-empty string, got {record['search']!r}"
        )
    out["search"] = record["search"]
    if not isinstance(record["trial_id"], str | int) or isinstance(record["trial_id"], bool):
        raise AopError(f"{where}: field 'trial_id' must be a string, got {record['trial_id']!r}")
    out["trial_id"] = str(record["trial_id"])
    for key in ("params", "metrics"):
        if not isinstance(record[key], Mapping):
            raise AopError(f"{where}: field {key!r} must be a mapping, got {record[key]!r}")
    out["params"] = {str(k): _param(v, f"{where}: params.{k}") for k, v in record["params"].items()}
    if not record["metrics"]:
        raise AopError(f"{where}: field 'metrics' is empty")
    out["metrics"] = {
        str(k): _number(v, f"{where}: metrics.{k}") for k, v in record["metrics"].items()
    }
    per_volume = record.get("per_volume") or {}
    if not isinstance(per_volume, Mapping):
        raise AopError(f"{where}: field 'per_volume' must be a mapping, got {per_volume!r}")
    out["per_volume"] = {}
    for volume, scores in per_volume.items():
        if not isinstance(scores, Mapping):
            raise AopError(f"{where}: per_volume.{volume} must be a mapping, got {scores!r}")
        out["per_volume"][str(volume)] = {
            str(m): _number(v, f"{where}: per_volume.{volume}.{m}") for m, v in scores.items()
        }
    duration = record.get("duration_s")
    out["duration_s"] = math.nan if duration is None else _number(duration, f"{where}: duration_s")
    out["node"] = str(record.get("node") or "")
    iteration = record.get("iteration", -1)
    if isinstance(iteration, bool) or not isinstance(iteration, int):
        raise AopError(f"{where}: field 'iteration' must be an integer, got {iteration!r}")
    out["iteration"] = iteration
    stopped = record.get("stopped_at")
    if stopped is not None:
        if not isinstance(stopped, Mapping) or len(stopped) != 1:
            raise AopError(
                f"{where}: field 'stopped_at' must be one {{fidelity: value}}, got {stopped!r}"
            )
        out["stopped_at"] = {}
        for key, value in stopped.items():  # a count (epochs, volumes): an int when whole
            number = _number(value, f"{where}: stopped_at.{key}")
            out["stopped_at"][str(key)] = int(number) if number.is_integer() else number
    return out


def stopped(record: Mapping[str, Any]) -> bool:
    """Whether an early-stopping scheduler stopped the trial (see ``stopped_at``)."""
    return bool(record.get("stopped_at"))


def read_records(path: str | os.PathLike, label: str | None = None) -> list[dict[str, Any]]:
    """Read and validate the trial records of one ``.jsonl`` file.

    Blank lines are skipped. A last line without its newline that does not parse is a write torn
    by an interruption and is skipped too; any other line that does not parse is an error.

    Parameters
    ----------
    path : path-like
        The ``.jsonl`` file.
    label : str, optional
        How errors name the file (default: the path).

    Returns
    -------
    list of dict
        The validated records in file order.
    """
    path = Path(path)
    label = label or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AopError(f"{label}: cannot read trial records ({exc.__class__.__name__})") from None
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines) and not text.endswith("\n"):
                break  # torn last write
            raise AopError(f"{label} line {number}: not valid JSON") from None
        records.append(validate_record(value, f"{label} line {number}"))
    return records


def torn_last_line(path: str | os.PathLike) -> bool:
    """Whether a ``.jsonl`` file ends in a line cut off by an interrupted write (not counted)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    if not text or text.endswith("\n"):
        return False
    try:
        json.loads(text.rsplit("\n", 1)[-1])
    except json.JSONDecodeError:
        return True
    return False


def order_searches(names: Iterable[str], main: str | None = None) -> list[str]:
    """Order search names: the comparisons (baseline, random, grid), the others, ``main`` last.

    Without ``main`` the remaining searches follow alphabetically.
    """
    names = set(names)
    known = [name for name in COMPARISON_SEARCHES if name in names and name != main]
    rest = sorted(names - set(known) - {main})
    return known + rest + ([main] if main in names else [])


def read_study_records(study_dir: str | os.PathLike) -> dict[str, list[dict[str, Any]]]:
    """Read every ``results/*.jsonl`` file of a study folder.

    Parameters
    ----------
    study_dir : path-like
        The study folder.

    Returns
    -------
    dict
        ``{search: [record, ...]}`` in :func:`order_searches` order. Records are grouped by their
        ``search`` field.

    Raises
    ------
    AopError
        When the folder or its ``results/`` folder is missing, holds no records, or a file is
        corrupt.
    """
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise AopError(f"{study_dir}: study folder not found")
    results = study_dir / RESULTS_DIR
    if not results.is_dir():
        raise AopError(f"{results}: no results folder (has a search run in this study?)")
    grouped: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(results.glob("*.jsonl")):
        for record in read_records(path, label=f"{RESULTS_DIR}/{path.name}"):
            grouped.setdefault(record["search"], []).append(record)
    if not grouped:
        raise AopError(f"{results}: no trial records (*.jsonl) found")
    return {name: grouped[name] for name in order_searches(grouped)}


def append_record(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Append one validated record as a JSON line, written with a single ``write`` and flushed.

    Parameters
    ----------
    path : path-like
        The ``.jsonl`` file; created with its folder when missing.
    record : mapping
        The trial record (see the module docstring).
    """
    record = validate_record(record)
    if math.isnan(record["duration_s"]):
        del record["duration_s"]  # unknown; JSON has no NaN
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def best_record(
    records: Iterable[Mapping[str, Any]], metric: str, mode: str = "max"
) -> dict[str, Any]:
    """Return the record with the best ``metric`` (``mode`` max or min); ties go to the earliest.

    Trials that an early-stopping scheduler stopped (:func:`stopped`) are scored on part of
    their fidelity (fewer epochs, fewer volumes): the best is one that ran to its end, unless
    every trial was stopped.

    Parameters
    ----------
    records : iterable of mapping
        Validated trial records.
    metric : str
        A key of the records' ``metrics``.
    mode : str
        ``"max"`` or ``"min"``.
    """
    sign = 1.0 if mode == "max" else -1.0
    records = list(records)
    best = None
    for record in [r for r in records if not stopped(r)] or records:
        if best is None or sign * record["metrics"][metric] > sign * best["metrics"][metric]:
            best = record
    if best is None:
        raise AopError("no trial records to choose the best from")
    return dict(best)
