"""Study kinds: what a study optimises, with which trainable, over which search space.

The engine (:mod:`aop.tuning.study`: searchers, resume, records, MLflow logging, reports) knows no
kind. A kind is one class, typed by its experiment model, that declares its objective and columns
and builds its trainable::

    class ToyExperiment(BaseExperiment):
        search_space: Path = Path("search_spaces/toy.yaml")

    class ToyKind(StudyKind[ToyExperiment]):
        name = "toy"
        metric = "score"
        metrics = ("score",)
        experiment_model = ToyExperiment

        def search_space(self, exp: ToyExperiment) -> SearchSpace:
            return load_space_file(exp.search_space)

        def prepare(self, exp: ToyExperiment) -> Prepared:
            return Prepared(trainable=toy_trial)

Kinds register through the ``aop.study_kinds`` entry-point group (``name =
"package.module:KindClass"``), where the built-in kinds are declared too; :func:`register_kind`
registers a class at run time (tests, notebooks).

This module also reads experiment files (:func:`load_experiment`): the ``kind`` field picks the
kind, whose experiment model validates the file. Loading imports no Ray; a kind module imports Ray
only inside the methods that run trials.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import ValidationError

from aop.config import DEFAULT_KIND, BaseExperiment, ObjectiveConfig, read_yaml
from aop.errors import AopError, validation_message
from aop.tuning.searchers import check_multi_objective, check_searcher, check_warm_start
from aop.tuning.space import SearchSpace

ENTRY_POINT_GROUP = "aop.study_kinds"
ExperimentT = TypeVar("ExperimentT", bound=BaseExperiment)


@dataclass(frozen=True)
class Fidelity:
    """How a study kind's trials count their progress, for early stopping (``search.scheduler``).

    Attributes
    ----------
    attr : str
        The result key, increasing with each report (e.g. ``epoch``, ``volumes``).
    max_t : int
        The most a trial can reach (the rungs stop below it).
    unit : str
        The unit in words, for messages (``epochs``, ``volumes``).
    """

    attr: str
    max_t: int
    unit: str


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


class StudyKind(ABC, Generic[ExperimentT]):
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
    start_point : str or None
        Name of the search-space start points that model-based searchers evaluate first.
    pooled : tuple of str
        Comparison searches represented by all their trials (a baseline over a grid).
    group : str or None
        The categorical parameter that reports show beside each search's best (e.g. the model).
    colours : dict
        ``{metric: colour}`` of the metric columns in the comparison plot (default: matplotlib's).
    record_extras : tuple of str
        Result keys kept in the trial records as they are.
    curves : tuple of str
        Metrics a trial reports repeatedly (per epoch): their history goes into the record
        (``curves``) and the trial's MLflow child run, one step per report.
    objective_metrics : tuple of str
        The metrics an experiment's ``objectives`` may name (default: :attr:`metrics`).
    objectives : tuple of ObjectiveConfig
        What the searchers optimise (see :meth:`with_objectives`); several make a
        multi-objective study, whose results are a Pareto front.
    fidelity_attr : str or None
        The result key that counts a trial's progress over its reports (``epoch``), on which
        ``search.scheduler`` stops poor trials early (see :meth:`fidelity`); ``None``: a trial
        reports once, and the kind refuses a scheduler.
    scaled_stops : bool
        How the searcher is told a trial that ``search.scheduler`` stopped: ``False``, its last
        result; ``True``, its last result scaled to a whole trial by the trials that ran to
        their end (:class:`aop.tuning.stops.ScaledStops`). ``True`` suits a fidelity
        whose partial objective estimates the whole trial's with a bias that every trial
        shares (the mean IPQ of the first volumes: volumes easier or harder than the rest).
    """

    name: ClassVar[str]
    metric: ClassVar[str]
    mode: ClassVar[str] = "max"
    metrics: ClassVar[tuple[str, ...]]
    parameter_columns: ClassVar[tuple[str, ...]] = ()
    experiment_model: type[ExperimentT]
    start_point: ClassVar[str | None] = "default"
    pooled: ClassVar[tuple[str, ...]] = ()
    group: ClassVar[str | None] = None
    colours: ClassVar[dict[str, str]] = {}
    record_extras: ClassVar[tuple[str, ...]] = ()
    curves: ClassVar[tuple[str, ...]] = ()
    objective_metrics: ClassVar[tuple[str, ...]] = ()
    fidelity_attr: ClassVar[str | None] = None
    scaled_stops: ClassVar[bool] = False
    _objectives: tuple[ObjectiveConfig, ...] = ()

    @property
    def objectives(self) -> tuple[ObjectiveConfig, ...]:
        """The experiment's objectives, else the kind's one: :attr:`metric` in :attr:`mode`."""
        return self._objectives or (ObjectiveConfig(metric=self.metric, mode=self.mode),)

    @property
    def multi_objective(self) -> bool:
        """Whether the searchers optimise several objectives (a Pareto front)."""
        return len(self.objectives) > 1

    @property
    def mlflow_experiment(self) -> str:
        """The default MLflow experiment name: ``aop-<name>``."""
        return f"aop-{self.name}"

    # -- loading (no Ray needed) -----------------------------------------------------------------

    def check(self, exp: ExperimentT, source: str) -> None:
        """Check the kind's names in a parsed experiment (called when the file loads)."""
        self.search_space(exp)

    @abstractmethod
    def search_space(self, exp: ExperimentT) -> SearchSpace:
        """The experiment's search space, validated (one-line :class:`AopError` per error)."""

    def preflight(self, exp: ExperimentT, check_models: bool = True) -> None:  # noqa: B027
        """Checks before any output (data present, memory, models buildable); one-line errors."""

    def baseline_space(self, exp: ExperimentT, space: SearchSpace) -> dict[str, Any] | None:
        """The param space of the ``baseline`` comparison (a grid); None: the kind has none."""
        return None

    def grid_space(self, exp: ExperimentT, space: SearchSpace) -> dict[str, Any] | None:
        """The param space of the ``grid`` comparison (every combination); None: none."""
        return None

    # -- running ----------------------------------------------------------------------------------

    @abstractmethod
    def prepare(self, exp: ExperimentT) -> Prepared:
        """Expensive set-up before any trial: data, predictions, object store, the trainable."""

    def finish(
        self,
        exp: ExperimentT,
        records: Mapping[str, Sequence[dict[str, Any]]],
        best: dict[str, Any],
        prepared: Prepared,
        tracker: Any,
    ) -> list[Path]:
        """After the searches: plots, models logged to ``tracker``; returns artifact files."""
        return []

    def reference(
        self,
        exp: ExperimentT,
        prepared: Prepared,
        records: Mapping[str, Sequence[dict[str, Any]]],
        best: Mapping[str, Any],
    ) -> dict[str, Any] | None:
        """A fixed design scored once on the study's data, shown beside the best (a baseline).

        Returns ``None`` (no reference) or a mapping with ``name`` (what it is), ``scores``
        (``{metric: value}``, the kind's metrics where it has them), optionally ``comparison``
        (how the best trial compares, e.g. a paired test) and ``verdict`` (one line saying
        whether the best beats it). The engine writes it to ``best.yaml`` as ``reference``, logs
        it on the study's MLflow parent run, and ``aop report`` shows it under the best trial.
        """
        return None

    def fidelity(self, exp: ExperimentT, prepared: Prepared) -> Fidelity | None:
        """How far a trial can go in :attr:`fidelity_attr`, once the data is prepared.

        Early stopping (``search.scheduler``, :mod:`aop.tuning.schedulers`) places its rungs
        below :attr:`Fidelity.max_t`. A kind with a fidelity has its trials report
        :attr:`fidelity_attr` with the objective in every report, and ``final: True`` in the
        last report of a trial's natural end. Default: none.
        """
        return None

    def trial_artifacts(self, record: Mapping[str, Any], folder: Path) -> list[Path]:
        """Files (figures) to attach to a trial's MLflow child run, written into ``folder``."""
        return []

    def best_summary(self, best: Mapping[str, Any]) -> dict[str, Any]:
        """The kind's view of the best record in ``best.yaml`` (default: params and scores)."""
        return {"params": dict(best["params"]), "scores": dict(best["metrics"])}

    def for_experiment(self, exp: ExperimentT) -> StudyKind[ExperimentT]:
        """This kind as ``exp`` configures it (default: unchanged).

        A kind whose objective is a choice of the experiment file sets :attr:`metric`,
        :attr:`mode` and :attr:`metrics` on the instance here; the engine reads them only from
        the instance that :func:`study_kind` returns.
        """
        return self

    def with_objectives(self, objectives: Sequence[ObjectiveConfig]) -> StudyKind[ExperimentT]:
        """This kind optimising ``objectives`` (an experiment's ``objectives``; none: unchanged).

        :attr:`metric` and :attr:`mode` become the first objective's, the one that reports,
        progress lines and ``best.yaml``'s pick rank by; :attr:`metrics` lists every objective
        first. :func:`study_kind` calls it after :meth:`for_experiment`.
        """
        if not objectives:
            return self
        self._objectives = tuple(objectives)
        self.metric, self.mode = objectives[0].metric, objectives[0].mode
        names = [o.metric for o in objectives]
        self.metrics = (*names, *(m for m in self.metrics if m not in names))
        return self

    def meta(self, exp: ExperimentT) -> dict[str, Any]:
        """What ``study.yaml`` says of the study (read by reports, which import no kind).

        A multi-objective study adds ``objectives`` (``[{metric, mode}, ...]``).
        """
        meta = {
            "kind": self.name,
            "metric": self.metric,
            "mode": self.mode,
            "metrics": list(self.metrics),
            "main_search": exp.search.searcher,
            "pooled": list(self.pooled),
            "group": self.group,
            "colours": dict(self.colours),
        }
        if self.multi_objective:
            meta["objectives"] = [o.model_dump() for o in self.objectives]
        return meta


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


def study_kind(exp: BaseExperiment) -> StudyKind:
    """The kind of ``exp``, configured by it (:meth:`StudyKind.for_experiment`, then its
    ``objectives``: :meth:`StudyKind.with_objectives`)."""
    return get_kind(exp.kind).for_experiment(exp).with_objectives(exp.objectives or ())


def check_objectives(kind: StudyKind, exp: BaseExperiment, source: str) -> None:
    """Refuse ``objectives`` that ``kind``'s trials do not report, or that the search cannot run.

    Each metric must be one of the kind's :attr:`~StudyKind.objective_metrics`. Several
    objectives need a multi-objective searcher (:func:`aop.tuning.searchers.
    check_multi_objective`), run every trial to its end (an early-stopping ``search.scheduler``
    decides on one metric) and start from nothing (``search.warm_start`` tells a searcher one
    value per earlier trial). One :class:`AopError` line each.
    """
    allowed = kind.objective_metrics or kind.metrics
    for index, objective in enumerate(exp.objectives or []):
        if objective.metric not in allowed:
            raise AopError(
                f"{source}: objectives.{index}.metric: {objective.metric!r} is not a metric "
                f"of a {kind.name} trial (known: {', '.join(allowed)})"
            )
    if len(exp.objectives or []) < 2:
        return
    check_multi_objective(exp.search.searcher, field_name=f"{source}: search.searcher")
    scheduler = exp.search.scheduler.name
    if scheduler != "fifo":
        raise AopError(
            f"{source}: search.scheduler: {scheduler!r} stops trials on one metric; a study "
            "with several objectives runs every trial to its end (leave the scheduler out)"
        )
    if exp.search.warm_start:
        raise AopError(
            f"{source}: search.warm_start: a study with several objectives cannot be "
            "warm-started (the earlier trials are told with one objective value each)"
        )


# ------------------------------------------------------------------------------------------------
# Experiment files
# ------------------------------------------------------------------------------------------------


def parse_experiment(
    raw: Any, source: str = "<experiment>", base: Path | None = None
) -> BaseExperiment:
    """Validate an experiment mapping of any study kind (``kind``, default ``DEFAULT_KIND``).

    Every name is checked here, before any work: the kind, the searcher, the ``objectives``
    (:func:`check_objectives`), that the searcher can be warm-started when
    ``search.warm_start`` lists studies, and what the kind checks
    (models, search-space parameters); relative paths resolve against ``base`` (see
    :mod:`aop.config`).
    """
    if not isinstance(raw, dict):
        raise AopError(f"{source}: expected a mapping of experiment fields")
    kind_name = raw.get("kind", DEFAULT_KIND)
    if not isinstance(kind_name, str):
        raise AopError(f"{source}: kind: must be a study kind name, got {kind_name!r}")
    kind = get_kind(kind_name, field_name=f"{source}: kind")
    try:
        exp = kind.experiment_model.model_validate(raw)
    except ValidationError as exc:
        raise AopError(f"{source}: {validation_message(exc)}") from None
    check_searcher(exp.search.searcher, field_name=f"{source}: search.searcher")
    check_objectives(kind, exp, source)
    if exp.search.scheduler.name != "fifo" and kind.fidelity_attr is None:
        raise AopError(
            f"{source}: search.scheduler: {exp.search.scheduler.name!r}: a {kind.name} trial "
            "reports once; nothing to stop early (leave the scheduler out)"
        )
    if exp.search.warm_start:
        check_warm_start(exp.search.searcher, field_name=f"{source}: search.warm_start")
    exp.resolve_paths(Path.cwd() if base is None else base)
    kind.check(exp, source)
    return exp


def load_experiment(path: str | os.PathLike) -> BaseExperiment:
    """Read and validate an experiment YAML file.

    Parameters
    ----------
    path : path-like
        The experiment file.

    Returns
    -------
    BaseExperiment
        The kind's experiment model, with relative paths resolved (see :mod:`aop.config`).

    Raises
    ------
    AopError
        Missing file, bad YAML, unknown or invalid field; the message names file and field.
    """
    path = Path(path)
    return parse_experiment(read_yaml(path), source=str(path), base=path.resolve().parent)
