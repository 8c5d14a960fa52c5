"""Experiment files: reading YAML, the sections every study kind shares, path resolution.

This module imports nothing of aop but its exception type, so that any layer may use it. An
experiment file (YAML) has these sections for every study kind::

    name: demo
    kind: segmentation                     # the study kind (default segmentation)
    search: {searcher: gp, budget: 120, seed: 0, concurrency: 2,
             resources: {cpus: 1, gpu: 0.0}, max_failures: 2, warm_start: []}
    search_space: search_spaces/segmentation.yaml
    tracking: {tracking_uri: null, experiment: null}
    storage: {study_dir: studies/demo, cache_dir: null, tune_storage: null}
    comparison: {baseline: true, random: true, random_budget: null, grid: false}
    ray: {address: null, num_cpus: null}
    objectives: null                       # or [{metric: ipq, mode: max}, ...]: a Pareto front

and the kind adds its own (a segmentation study: ``data`` and ``models``; see its kind module).
:func:`aop.tuning.kinds.load_experiment` reads a file into its kind's model.

Every validation error is an :class:`aop.errors.AopError` whose one-line message names the file and
the dotted field, e.g. ``experiments/x.yaml: search.budget: Input should be greater than 0``.
Relative paths in an experiment file: outputs (``storage.study_dir``, ``storage.cache_dir``) are
relative to the experiment file's folder, always; inputs (a benchmark, the search space, model
weights) are looked for in the experiment file's folder first, then the current directory, then
the project root (where ``search_spaces/`` lives): :func:`resolve_input`. A
``search.warm_start`` entry is an input too: an earlier study folder resolved the same way, or an
MLflow study URI (``runs:/PARENT_RUN_ID``, ``experiments:/NAME_OR_ID``) kept as written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from aop.errors import AopError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: The MLflow URIs a ``search.warm_start`` entry may be: a study's parent run, or every study of
#: an MLflow experiment.
WARM_START_SCHEMES = ("runs:/", "experiments:/")
#: The study kind of an experiment file without ``kind``.
DEFAULT_KIND = "segmentation"


class StrictModel(BaseModel):
    """A pydantic model that refuses unknown fields (a misspelt key is an error, not ignored)."""

    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------------------------
# YAML
# ------------------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names one key twice (YAML leaves it open)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file; a missing, unreadable, binary or bad file is one :class:`AopError` line.

    A key written twice in one mapping is refused (naming the key and its line), since one of the
    two values would be silently lost.
    """
    path = Path(path)
    if path.is_dir():
        raise AopError(f"{path}: is a folder, not a YAML file")
    if not path.is_file():
        raise AopError(f"{path}: file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise AopError(f"{path}: not a text file (not UTF-8; expected YAML)") from None
    except OSError as exc:
        raise AopError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    if "\x00" in text:
        raise AopError(f"{path}: not a text file (binary data; expected YAML)")
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506  (a safe loader)
    except yaml.constructor.ConstructorError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise AopError(f"{path}: {exc.problem}{where}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise AopError(f"{path}: not valid YAML{where}") from None


def resolve_input(path: Path, base: Path) -> Path:
    """Resolve a relative input path: experiment folder, then current directory, then project root.

    A path found in none of them resolves against ``base`` (so the error names that place).
    """
    path = path.expanduser()
    if path.is_absolute():
        return path
    for root in (base, Path.cwd(), PROJECT_ROOT):
        if (root / path).exists():
            return (root / path).resolve()
    return (base / path).resolve()


# ------------------------------------------------------------------------------------------------
# The sections every kind has
# ------------------------------------------------------------------------------------------------


class ResourcesConfig(StrictModel):
    """Resources reserved per trial."""

    cpus: Annotated[float, Field(gt=0)] = 1.0
    gpu: Annotated[float, Field(ge=0)] = 0.0


class SchedulerConfig(StrictModel):
    """Early stopping of the main search's poor trials (``search.scheduler``).

    ``fifo`` runs every trial to its end. ``asha`` is Ray Tune's asynchronous successive halving
    (:mod:`aop.tuning.schedulers`): a trial that reaches a rung (``grace_period``, then
    ``grace_period * reduction_factor``, ...) below the best ``1 / reduction_factor`` of the
    trials recorded there stops. The unit is the study kind's fidelity: epochs of a classifier
    trial, volumes of a segmentation trial. ``search.scheduler: asha`` is short for
    ``{name: asha}``.
    """

    name: Literal["fifo", "asha"] = "fifo"
    grace_period: Annotated[int, Field(gt=0)] = 1
    reduction_factor: Annotated[float, Field(gt=1)] = 3.0

    @model_validator(mode="before")
    @classmethod
    def _name_alone(cls, value: Any) -> Any:
        """``scheduler: asha`` as ``scheduler: {name: asha}``."""
        return {"name": value} if isinstance(value, str) else value


class SearchConfig(StrictModel):
    """The main search: searcher name, budget (trials), seed, concurrency and resources.

    ``warm_start`` lists earlier studies whose finished trials the main searcher is told before
    its first suggestion (:mod:`aop.tuning.warm_start`): study folders, or MLflow URIs
    ``runs:/PARENT_RUN_ID`` (one study's parent run) and ``experiments:/NAME_OR_ID`` (every
    study in an MLflow experiment).
    """

    searcher: str = "gp"
    budget: Annotated[int, Field(gt=0)] = 120
    seed: int = 0
    concurrency: Annotated[int, Field(gt=0)] = 1
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    max_failures: Annotated[int, Field(ge=0)] = 2
    warm_start: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)

    @field_validator("warm_start")
    @classmethod
    def _study_entries(cls, entries: list[str]) -> list[str]:
        """Each entry once; a URI is ``runs:/ID`` or ``experiments:/NAME_OR_ID``."""
        for index, entry in enumerate(entries):
            if entry in entries[:index]:
                raise ValueError(f"{entry!r} is listed twice")
            if entry.startswith(WARM_START_SCHEMES):
                if not entry.split(":/", 1)[1].strip("/"):
                    raise ValueError(f"{entry!r} names no run or experiment")
            elif "://" in entry or entry.startswith("models:/"):
                raise ValueError(
                    f"{entry!r} is neither a study folder nor an MLflow study URI "
                    "(runs:/PARENT_RUN_ID, experiments:/NAME_OR_ID)"
                )
        return entries


class TrackingConfig(StrictModel):
    """MLflow: tracking URI and experiment name.

    The tracking URI defaults to ``MLFLOW_TRACKING_URI`` when set, else to the project's store
    ``sqlite:///PROJECT/mlflow.db``, where PROJECT is the experiment file's folder: every study
    started from one folder of experiment files logs into one store, each kind into its own MLflow
    experiment (default ``aop-<kind>``).
    """

    tracking_uri: str | None = None
    experiment: Annotated[str, Field(min_length=1)] | None = None


class StorageConfig(StrictModel):
    """Where the study lives; a kind's cache (if it has one) defaults to a folder inside it.

    ``tune_storage`` puts Ray Tune's experiments (trial state, searcher state, what ``aop resume``
    reads) at a URI that pyarrow opens (``s3://bucket/path``, ``gs://...``, ``file:///shared``);
    default ``STUDY_DIR/tune``.
    """

    study_dir: Path
    cache_dir: Path | None = None
    tune_storage: str | None = None


class ComparisonConfig(StrictModel):
    """The reference searches: the kind's baseline and grid (if it has them), random search."""

    baseline: bool = True
    random: bool = True
    random_budget: Annotated[int, Field(gt=0)] | None = None
    grid: bool = False


class ObjectiveConfig(StrictModel):
    """One objective of a study: a metric its trials report, maximised or minimised."""

    metric: Annotated[str, Field(min_length=1)]
    mode: Literal["max", "min"]


class RayConfig(StrictModel):
    """Ray cluster: ``None`` starts a local one; ``auto`` or ``HOST:PORT`` joins one."""

    address: str | None = None
    num_cpus: Annotated[int, Field(gt=0)] | None = None


class BaseExperiment(StrictModel):
    """The fields every study kind's experiment file has.

    A kind's experiment model subclasses this one, adds its own sections and sets the default of
    ``search_space``.
    """

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")]
    kind: Annotated[str, Field(min_length=1)] = DEFAULT_KIND
    search: SearchConfig = Field(default_factory=SearchConfig)
    search_space: Path
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    storage: StorageConfig
    comparison: ComparisonConfig = Field(default_factory=ComparisonConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    objectives: Annotated[list[ObjectiveConfig], Field(min_length=1)] | None = Field(
        None,
        description="What the searchers optimise: one or several metrics the kind's trials "
        "report, each max or min; several make a multi-objective study (a Pareto front). "
        "Default: the kind's single objective.",
    )
    _project: Path | None = PrivateAttr(default=None)

    @field_validator("objectives")
    @classmethod
    def _distinct_objectives(
        cls, objectives: list[ObjectiveConfig] | None
    ) -> list[ObjectiveConfig] | None:
        """Each metric once."""
        names = [o.metric for o in objectives or []]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise ValueError(f"{name!r} is listed twice")
        return objectives

    @property
    def study_dir(self) -> Path:
        return self.storage.study_dir

    @property
    def project_dir(self) -> Path:
        """The folder of the experiment file (the study folder when it was built otherwise)."""
        return self._project or self.storage.study_dir.resolve()

    @property
    def tracking_uri(self) -> str:
        """``tracking.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the project's store."""
        uri = self.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        return uri or f"sqlite:///{self.project_dir / 'mlflow.db'}"

    @property
    def random_budget(self) -> int:
        return self.comparison.random_budget or self.search.budget

    def to_yaml_dict(self) -> dict[str, Any]:
        """A plain mapping that :func:`aop.tuning.kinds.parse_experiment` reads back equal.

        The tracking URI is written out, so that a study read from its own folder logs into the
        store it started with.
        """
        data = self.model_dump(mode="json")
        data["tracking"]["tracking_uri"] = self.tracking_uri
        return data

    def resolve_paths(self, base: Path) -> None:
        """Resolve relative paths (see the module docstring) in place.

        Inputs (the search space) are looked for; outputs (the study folder, a cache) are
        relative to the experiment file's folder, never searched for.
        """
        self._project = base.resolve()
        self.search_space = resolve_input(self.search_space, base)
        self.search.warm_start = [
            entry if is_warm_start_uri(entry) else str(resolve_input(Path(entry), base))
            for entry in self.search.warm_start
        ]
        self.storage.study_dir = (base / self.storage.study_dir.expanduser()).resolve()
        if self.storage.cache_dir is not None:
            self.storage.cache_dir = (base / self.storage.cache_dir.expanduser()).resolve()

    def move_study(self, old: Path, new: Path) -> None:
        """Point paths inside the study folder ``old`` at the moved folder ``new`` (in place).

        A kind whose experiment has further paths that may live in the study folder extends
        this (see :func:`aop.tuning.study.load_study_experiment`).
        """
        self.storage.study_dir = new
        self.storage.cache_dir = moved_path(self.storage.cache_dir, old, new)

    def input_paths(self) -> list[Path]:
        """The study's input files and folders, which its outputs may never replace."""
        folders = [Path(e) for e in self.search.warm_start if not is_warm_start_uri(e)]
        return [self.search_space, *folders]


def is_warm_start_uri(entry: str) -> bool:
    """Whether a ``search.warm_start`` entry is an MLflow study URI rather than a folder.

    >>> is_warm_start_uri("runs:/0123abcd"), is_warm_start_uri("studies/demo")
    (True, False)
    """
    return entry.startswith(WARM_START_SCHEMES)


def moved_path(value: Path | None, old: Path, new: Path) -> Path | None:
    """``value`` re-rooted from folder ``old`` to ``new`` when it lies inside ``old``."""
    if value is not None and (value == old or old in value.parents):
        return new / value.relative_to(old)
    return value
