"""Study kinds: what a study optimises, with which trainable, over which search space.

The engine (:mod:`aop.tuning.study`: searchers, resume, records, MLflow logging, reports) knows no
kind. A kind is one class that declares its objective and columns and builds its trainable::

    @register_kind
    class ToyKind(StudyKind):
        name = "toy"
        metric = "score"
        metrics = ("score",)
        experiment_model = BaseExperiment

        def search_space(self, exp): return load_space_file(exp.search_space, "toy")
        def prepare(self, exp): return Prepared(trainable=toy_trial)

Kinds outside aop register through the ``aop.study_kinds`` entry-point group (``name =
"package.module:KindClass"``); the built-in ``segmentation`` kind is declared there too.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar

from aop.config import BaseExperiment, read_yaml
from aop.errors import AopError
from aop.tuning.space import SearchSpace, parse_space

ENTRY_POINT_GROUP = "aop.study_kinds"


@dataclass
class Prepared:
    """What a kind hands the engine after its expensive set-up (data in Ray's object store).

    Attributes
    ----------
    trainable
        The Ray Tune trainable, resources attached (``tune.with_resources``).
    dataset : path, optional
        The data set the study runs on: logged as the parent run's MLflow dataset input.
    context : dict
        Anything the kind's :meth:`StudyKind.finish` needs again.
    """

    trainable: Any
    dataset: Path | None = None
    context: dict[str, Any] = field(default_factory=dict)


class StudyKind(ABC):
    """One kind of study. Subclasses set the class attributes and implement two methods.

    Attributes
    ----------
    name : str
        The experiment file's ``kind``.
    metric, mode : str
        The objective each trial reports, ``"max"`` or ``"min"``.
    metrics : tuple of str
        Metric columns recorded per trial and shown in progress tables and reports, objective
        first.
    parameter_columns : tuple of str
        Parameters shown in Ray Tune's progress table.
    experiment_model : type
        The pydantic model of the kind's experiment files (a :class:`aop.config.BaseExperiment`).
    mlflow_experiment : str
        Default MLflow experiment name (``aop-<name>``).
    start_point : str or None
        Name of the search-space start points that model-based searchers evaluate first.
    pooled : tuple of str
        Comparison searches represented by all their trials (a baseline over a grid).
    record_extras : tuple of str
        Result keys kept in the trial records as they are (e.g. ``volume_nodes``).
    curves : tuple of str
        Metrics a trial reports repeatedly (per epoch): their history goes into the record
        (``curves``) and the trial's MLflow child run, one step per report.
    """

    name: ClassVar[str]
    metric: ClassVar[str]
    mode: ClassVar[str] = "max"
    metrics: ClassVar[tuple[str, ...]]
    parameter_columns: ClassVar[tuple[str, ...]] = ()
    experiment_model: ClassVar[type[BaseExperiment]] = BaseExperiment
    start_point: ClassVar[str | None] = "default"
    pooled: ClassVar[tuple[str, ...]] = ()
    record_extras: ClassVar[tuple[str, ...]] = ()
    curves: ClassVar[tuple[str, ...]] = ()

    @property
    def mlflow_experiment(self) -> str:
        return f"aop-{self.name}"

    # -- loading (no Ray needed) -----------------------------------------------------------------

    def check(self, exp: BaseExperiment, source: str) -> None:
        """Check the kind's names in a parsed experiment (called when the file loads)."""
        self.search_space(exp)

    @abstractmethod
    def search_space(self, exp: BaseExperiment) -> SearchSpace:
        """The experiment's search space, validated (one-line :class:`AopError` per error)."""

    def preflight(  # noqa: B027  (optional hook)
        self, exp: BaseExperiment, check_models: bool = True
    ) -> None:
        """Checks before any output (data present, memory, models buildable); one-line errors."""

    def baseline_space(self, exp: BaseExperiment, space: SearchSpace) -> dict[str, Any] | None:
        """The param space of the ``baseline`` comparison (a grid); None: the kind has none."""
        return None

    def grid_space(self, exp: BaseExperiment, space: SearchSpace) -> dict[str, Any] | None:
        """The param space of the ``grid`` comparison (every combination); None: none."""
        return None

    # -- running ----------------------------------------------------------------------------------

    @abstractmethod
    def prepare(self, exp: BaseExperiment) -> Prepared:
        """Expensive set-up before any trial: data, predictions, object store, the trainable."""

    def finish(
        self,
        exp: BaseExperiment,
        records: Mapping[str, Sequence[dict[str, Any]]],
        best: dict[str, Any],
        prepared: Prepared,
        tracker: Any,
    ) -> list[Path]:
        """After the searches: plots, models logged to ``tracker``; returns artifact files."""
        return []

    def best_summary(self, best: Mapping[str, Any]) -> dict[str, Any]:
        """The kind's view of the best record in ``best.yaml`` (default: params and scores)."""
        return {"params": dict(best["params"]), "scores": dict(best["metrics"])}

    def meta(self, exp: BaseExperiment) -> dict[str, Any]:
        """What ``study.yaml`` says of the study (read by reports, which import no Ray)."""
        return {
            "kind": self.name,
            "metric": self.metric,
            "mode": self.mode,
            "metrics": list(self.metrics),
            "main_search": exp.search.searcher,
            "pooled": list(self.pooled),
        }


_KINDS: dict[str, type[StudyKind]] = {}


def register_kind(cls: type[StudyKind]) -> type[StudyKind]:
    """Class decorator that registers a study kind under ``cls.name``."""
    _KINDS[cls.name] = cls
    return cls


def _load_entry_points() -> None:
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.name not in _KINDS:
            try:
                cls = entry.load()
            except Exception as exc:  # noqa: BLE001  (a broken plugin must name itself)
                raise AopError(f"study kind {entry.name!r} ({entry.value}): {exc}") from None
            _KINDS.setdefault(entry.name, cls)


def available_kinds() -> list[str]:
    """Registered study kinds (built-in and from entry points)."""
    _load_entry_points()
    return sorted(_KINDS)


def get_kind(name: str, field_name: str = "kind") -> StudyKind:
    """The study kind ``name``; an unknown name is an :class:`AopError` naming ``field_name``."""
    if name not in _KINDS:
        _load_entry_points()
    if name not in _KINDS:
        raise AopError(
            f"{field_name}: unknown study kind {name!r} (known: {', '.join(available_kinds())})"
        )
    return _KINDS[name]()


def load_space_file(
    path: str | os.PathLike, allowed: Mapping[str, str] | None = None
) -> SearchSpace:
    """Read a search-space file in the generic format (:func:`aop.tuning.space.parse_space`)."""
    path = Path(path)
    return parse_space(read_yaml(path), source=str(path), allowed=allowed)
