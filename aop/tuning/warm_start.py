"""Warm starts: the finished trials of earlier studies, told to a new study's searcher.

``search.warm_start`` in an experiment file lists earlier studies of the same kind and
objective, typically the same pipeline on an earlier batch of volumes::

    search:
      searcher: gp
      budget: 60
      warm_start:
        - ../studies/batch1                 # a study folder (results/*.jsonl, study.yaml)
        - runs:/0123456789abcdef0123456789abcdef   # a study's MLflow parent run
        - experiments:/aop-segmentation     # every study in an MLflow experiment

MLflow URIs are read from this experiment's tracking store (:mod:`aop.tracking.studies`).

Before Ray starts, :func:`read_warm_start` reads every source and refuses, in one line naming
the entry: a folder that is missing or no study, an unknown run or experiment, a store that
does not answer, a study of another kind, a study whose objective is another metric, and a
parameter of the source that this study's search space does not have. Every finished trial of
every search of a source (baseline and random comparisons included) is a candidate; its
parameters are typed against the space (MLflow keeps text), the inactive ones of a conditional
space are dropped, and a trial whose parameters lie outside the space (a value outside a range
or not a choice, a searched parameter it lacks, a constant of another value) is listed on the
console and skipped. A configuration given by several trials is told once, with its first
value.

The study keeps what it was told in ``STUDY_DIR/warm_start.yaml`` (sources, their parent run
ids, the told trials, the skipped ones), written before its searches start, and sums it up in
``study.yaml`` (``warm_start``: sources, trials, source_runs) for ``aop report`` and in tags of
its MLflow parent run (:meth:`WarmStart.tags`). A resumed study reads that file back instead of
its sources, so a resume needs neither the earlier study nor its store.

The engine (:func:`aop.tuning.study.run_searches`) tells the main search's searcher every trial
with ``add_evaluated_point`` before its first suggestion (and a top-up's searcher, with the
study's own finished trials); told trials are no trials of the study and do not count against
its budget. The start points are evaluated as in a cold study: a told trial was evaluated on
an earlier study's data, a start point on this study's. The comparison searches (baseline,
grid, random) are never warm-started: they measure the search from nothing. A resumed search
continues from the searcher state Ray Tune saved, which holds the told trials once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from aop import console
from aop.config import BaseExperiment, is_warm_start_uri, read_yaml
from aop.errors import AopError
from aop.outputs import atomic_file
from aop.tuning.space import ChoiceSpec, FloatSpec, IntSpec, SearchSpace, check_point

if TYPE_CHECKING:
    from aop.tuning.kinds import StudyKind

__all__ = ["WARM_START_FILE", "WarmStart", "load_warm_start", "read_warm_start"]

#: What a study was told, in its folder.
WARM_START_FILE = "warm_start.yaml"
_FIELD = "search.warm_start"


@dataclass
class WarmStart:
    """The trials of earlier studies that a study's main searcher is told.

    Attributes
    ----------
    sources : list of str
        The ``search.warm_start`` entries (study folders resolved, URIs as written).
    source_runs : list of str
        The MLflow parent run ids of the source studies, where known.
    trials : list of dict
        The told trials: ``source`` (the entry), ``search``, ``trial_id``, ``params`` (the
        active searched parameters, typed) and ``value`` (the objective).
    skipped : list of str
        One line per source trial outside the search space, saying why.
    """

    sources: list[str] = field(default_factory=list)
    source_runs: list[str] = field(default_factory=list)
    trials: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def points(self) -> list[tuple[dict[str, Any], float]]:
        """``(params, value)`` of each told trial, in order (for ``add_evaluated_point``)."""
        return [(dict(t["params"]), float(t["value"])) for t in self.trials]

    def summary(self) -> str:
        """``warm-started from N trials of SOURCES`` (``aop report``, the parent run)."""
        from aop.analysis.report import warm_start_line

        return warm_start_line({"sources": self.sources, "trials": len(self.trials)})

    def meta(self) -> dict[str, Any]:
        """The ``warm_start`` block of ``study.yaml`` (empty without sources)."""
        if not self.sources:
            return {}
        return {"sources": list(self.sources), "trials": len(self.trials),
                "source_runs": list(self.source_runs)}  # fmt: skip

    def tags(self) -> dict[str, str]:
        """Tags of the study's MLflow parent run (empty without sources)."""
        if not self.sources:
            return {}
        return {
            "aop.warm_start.sources": ", ".join(self.sources),
            "aop.warm_start.trials": str(len(self.trials)),
            "aop.warm_start.source_runs": ",".join(self.source_runs),
        }

    def save(self, study_dir: Path) -> Path | None:
        """Write ``STUDY_DIR/warm_start.yaml`` (atomically); nothing without sources."""
        if not self.sources:
            return None
        path = Path(study_dir) / WARM_START_FILE
        data = {"sources": self.sources, "source_runs": self.source_runs,
                "trials": self.trials, "skipped": self.skipped}  # fmt: skip
        with atomic_file(path) as tmp:
            tmp.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def say(self) -> None:
        """Tell the console what the searcher will be told and which trials are skipped."""
        if not self.sources:
            return
        console.say(f"aop: {self.summary()}")
        if self.skipped:
            console.say(f"aop: warm start: {len(self.skipped)} trials lie outside this study's "
                        "search space and are skipped:")  # fmt: skip
            for line in self.skipped:
                console.say(f"  {line}")


def load_warm_start(exp: BaseExperiment, kind: StudyKind, space: SearchSpace) -> WarmStart:
    """What the study is told: its ``warm_start.yaml`` when it has one for the same sources
    (a resumed study), else :func:`read_warm_start`."""
    path = exp.study_dir / WARM_START_FILE
    if exp.search.warm_start and path.is_file():
        data = read_yaml(path)
        if isinstance(data, Mapping) and data.get("sources") == list(exp.search.warm_start):
            try:
                return WarmStart(
                    sources=list(data["sources"]),
                    source_runs=[str(r) for r in data.get("source_runs") or []],
                    trials=[_saved_trial(t, space) for t in data.get("trials") or []],
                    skipped=[str(line) for line in data.get("skipped") or []],
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise AopError(f"{path}: not a warm-start file ({exc})") from None
    return read_warm_start(exp, kind, space)


def _saved_trial(trial: Any, space: SearchSpace) -> dict[str, Any]:
    params = check_point(space, trial["params"], "params")
    return {"source": str(trial["source"]), "search": str(trial["search"]),
            "trial_id": str(trial["trial_id"]), "params": params,
            "value": float(trial["value"])}  # fmt: skip


def read_warm_start(exp: BaseExperiment, kind: StudyKind, space: SearchSpace) -> WarmStart:
    """Read the sources of ``search.warm_start`` and check them against the study.

    Parameters
    ----------
    exp : BaseExperiment
        The study's experiment (sources, study folder, tracking URI).
    kind : StudyKind
        The study's kind as :func:`aop.tuning.kinds.study_kind` configures it (name, metric).
    space : SearchSpace
        The study's search space.

    Returns
    -------
    WarmStart

    Raises
    ------
    AopError
        One line naming the ``search.warm_start`` entry (see the module docstring).
    """
    warm = WarmStart(sources=list(exp.search.warm_start))
    seen: set[str] = set()
    for entry in exp.search.warm_start:
        for run_id, source_kind, metric, records in _read_source(exp, entry):
            where = f"{_FIELD}: {entry}"
            if source_kind != kind.name:
                raise AopError(f"{where}: a {source_kind or 'unknown'} study; this study is "
                               f"{kind.name}")  # fmt: skip
            if metric != kind.metric:
                raise AopError(f"{where}: its objective is {metric or 'unknown'}; this study's "
                               f"is {kind.metric}")  # fmt: skip
            if not records:
                raise AopError(f"{where}: no finished trial")
            names = {name for record in records for name in record["params"]}
            unknown = [name for name in sorted(names) if name not in space.parameters]
            if unknown:
                raise AopError(f"{where}: parameter {unknown[0]} is not in this study's search "
                               f"space")  # fmt: skip
            if run_id and run_id not in warm.source_runs:
                warm.source_runs.append(run_id)
            for record in records:
                value = record["metrics"].get(kind.metric)
                if value is None or not math.isfinite(float(value)):
                    continue
                label = f"{entry}: {record['search']} trial {record['trial_id']}"
                try:
                    params = _in_space(space, record["params"])
                except AopError as exc:
                    warm.skipped.append(f"{label}: {exc}")
                    continue
                key = repr(sorted(params.items()))
                if key in seen:
                    continue
                seen.add(key)
                warm.trials.append({"source": entry, "search": record["search"],
                                    "trial_id": record["trial_id"], "params": params,
                                    "value": float(value)})  # fmt: skip
    return warm


def _read_source(
    exp: BaseExperiment, entry: str
) -> list[tuple[str | None, str, str | None, list[dict[str, Any]]]]:
    """``(parent run id, kind, objective, records)`` of each study an entry names."""
    if is_warm_start_uri(entry):
        from aop.tracking.studies import tracked_studies

        try:
            studies = tracked_studies(exp.tracking_uri, entry, exclude_study_dir=exp.study_dir)
        except AopError as exc:
            raise AopError(f"{_FIELD}: {exc}") from None
        own = [s for s in studies if Path(s.study_dir) == exp.study_dir]
        if own:
            raise AopError(f"{_FIELD}: {entry}: the MLflow run of this study itself")
        return [(s.run_id, s.kind, s.metric, s.records) for s in studies]
    return [_read_folder(exp, entry)]


def _read_folder(
    exp: BaseExperiment, entry: str
) -> tuple[str | None, str, str | None, list[dict[str, Any]]]:
    from aop.analysis.records import read_study_records
    from aop.analysis.report import read_study_meta
    from aop.tracking import RUN_ID_FILE

    folder = Path(entry)
    where = f"{_FIELD}: {entry}"
    if folder.resolve() == exp.study_dir.resolve():
        raise AopError(f"{where}: this study's own folder")
    if not folder.is_dir():
        raise AopError(f"{where}: study folder not found")
    try:
        meta = read_study_meta(folder)
        grouped = read_study_records(folder)
    except AopError as exc:
        raise AopError(f"{_FIELD}: {exc}") from None
    run_file = folder / RUN_ID_FILE
    run_id = run_file.read_text(encoding="utf-8").strip() if run_file.is_file() else None
    records = [record for records in grouped.values() for record in records]
    return run_id or None, meta.kind, meta.metric, records


def _in_space(space: SearchSpace, given: Mapping[str, Any]) -> dict[str, Any]:
    """A source trial's active searched parameters, typed against ``space``.

    Raises
    ------
    AopError
        Why the trial lies outside the space (a value outside a range or not a choice, a
        searched parameter it lacks, a constant of another value).
    """
    typed = {name: _typed(space.parameters[name], value) for name, value in given.items()}
    for name, constant in space.fixed.items():
        if name in typed and not _same(typed[name], constant):
            raise AopError(f"{name} is {typed[name]!r}; this space fixes it at {constant!r}")
    active = space.active(typed)
    point = {name: value for name, value in active.items() if name in space.searched}
    return check_point(space, point, "params")


def _typed(spec: Any, value: Any) -> Any:
    """``value`` as the parameter's type: MLflow keeps params as text (``0.001``, ``True``)."""
    if not isinstance(value, str):
        return value
    if isinstance(spec, ChoiceSpec):
        return next((c for c in spec.choice if value in (str(c), repr(c))), value)
    if isinstance(spec, IntSpec | FloatSpec):
        try:
            number = float(value)
        except ValueError:
            return value
        if isinstance(spec, IntSpec) and number.is_integer():
            return int(number)
        return number
    if not isinstance(spec, str) and value in (str(spec), repr(spec)):
        return spec  # a constant as the space writes it
    return value


def _same(value: Any, constant: Any) -> bool:
    """Whether a trial's value is the constant (``1`` is not ``True``)."""
    return type(value) is type(constant) and value == constant or (
        isinstance(value, int | float) and not isinstance(value, bool)
        and isinstance(constant, int | float) and not isinstance(constant, bool)
        and value == constant
    )  # fmt: skip
