"""Experiment files and search-space files: pydantic models, loaded with one-line errors.

An experiment file (YAML) describes one segmentation study::

    name: demo
    data:
      synth: {n_volumes: 3, shape: [24, 64, 64], seed: 0}   # or: benchmark: /path/to/benchmark
      adapt: {real: /path/to/real/volumes, epochs: 5}       # optional: CycleGAN (aop.adapt)
    models:
      - {name: classical}
      - {name: unet3d, settings: {model: models/unet3d}}
    search: {searcher: gp, budget: 120, seed: 0, concurrency: 2,
             resources: {cpus: 1, gpu: 0.0}, max_failures: 2}
    search_space: search_spaces/segmentation.yaml
    tracking: {tracking_uri: null, experiment: aop-segmentation}
    storage: {study_dir: studies/demo, cache_dir: null}
    comparison: {baseline: true, random: true, random_budget: null}
    ray: {address: null}

A search-space file lists the model choice and the seven post-processing parameters of Table III::

    models: null                      # null: every model of the experiment
    parameters:
      erode_dilate: {low: -10, high: 10}
      open_close: {low: -5, high: 5}
      merge_continuity: {low: 0.0, high: 1.0}
      merge_smoothness: {low: 0.0, high: 1.0}
      merge_area: 0.0                 # a plain value fixes the parameter
      split_sigma: {low: 0.0, high: 1.0}
      # split_threshold left out: dropped, i.e. fixed at 0 (splitting off)

Every validation error is an :class:`aop.errors.AopError` whose one-line message names the file and
the dotted field, e.g. ``experiments/x.yaml: search.budget: Input should be greater than 0``.
Relative paths in an experiment file: outputs (``storage.study_dir``, ``storage.cache_dir``) are
relative to the experiment file's folder, always; inputs (``data.benchmark``, ``search_space``,
model weights) are looked for in the experiment file's folder first, then the current directory,
then the project root (where ``search_spaces/`` lives).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aop.adapt.config import AdaptConfig
from aop.errors import AopError
from aop.segmentation.params import PARAMETER_RANGES

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SEARCH_SPACE = "search_spaces/segmentation.yaml"

def parameter_ranges() -> dict[str, tuple[type, float, float]]:
    """The searchable post-processing parameters (Table III): name -> (type, low, high)."""
    return dict(PARAMETER_RANGES)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


# ------------------------------------------------------------------------------------------------
# Search space
# ------------------------------------------------------------------------------------------------


class Range(_Strict):
    """A searched interval ``[low, high]`` (both inclusive)."""

    low: float
    high: float

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be < high ({self.high})")
        return self


class SearchSpace(_Strict):
    """The model choice plus the searched, fixed and dropped post-processing parameters.

    Attributes
    ----------
    models : list of str or None
        Model names to choose from; ``None`` means every model of the experiment.
    ranges : dict
        Searched parameters, ``name -> (type, low, high)``, all inside Table III.
    fixed : dict
        Parameters held at one value (dropped parameters are fixed at 0).
    """

    models: list[str] | None = None
    ranges: dict[str, tuple[type, float, float]] = Field(default_factory=dict)
    fixed: dict[str, float] = Field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        """All seven parameter names, searched ones first in Table III order."""
        return list(self.ranges) + list(self.fixed)

    def zeros(self) -> dict[str, float | int]:
        """The paper's start point: searched parameters at 0 (clipped into a narrowed range)."""
        point: dict[str, float | int] = {}
        for name, (kind, low, high) in self.ranges.items():
            point[name] = kind(min(max(0, low), high))
        return point

    def complete(self, values: dict[str, Any]) -> dict[str, float | int]:
        """All seven parameters: searched ``values`` plus the fixed ones, cast to their types."""
        table = parameter_ranges()
        out: dict[str, float | int] = {}
        for name, (kind, _, _) in table.items():
            value = values[name] if name in values else self.fixed[name]
            out[name] = int(round(value)) if kind is int else float(value)
        return out


def _space_error(source: str, field: str, message: str) -> AopError:
    return AopError(f"{source}: {field}: {message}")


def parse_search_space(raw: Any, source: str = "<search space>") -> SearchSpace:
    """Validate a search-space mapping (see the module docstring) against Table III.

    Parameters
    ----------
    raw : mapping
        ``{"models": [...] | None, "parameters": {name: {low, high} | value | None}}``.
    source : str
        File name used in error messages.

    Returns
    -------
    SearchSpace
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise AopError(f"{source}: expected a mapping with 'models' and 'parameters'")
    unknown = set(raw) - {"models", "parameters"}
    if unknown:
        raise _space_error(source, sorted(unknown)[0], "unknown key (allowed: models, parameters)")
    models = raw.get("models")
    if models is not None and (
        not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models)
    ):
        raise _space_error(source, "models", "must be a non-empty list of model names or null")
    params = raw.get("parameters", {}) or {}
    if not isinstance(params, dict):
        raise _space_error(source, "parameters", "must be a mapping of parameter names")
    table = parameter_ranges()
    for name in params:
        if name not in table:
            raise _space_error(
                source, f"parameters.{name}", f"unknown parameter (allowed: {', '.join(table)})"
            )
    ranges: dict[str, tuple[type, float, float]] = {}
    fixed: dict[str, float] = {}
    for name, (kind, low, high) in table.items():
        field = f"parameters.{name}"
        spec = params.get(name)
        if spec is None:
            fixed[name] = kind(0)
            continue
        if isinstance(spec, dict):
            spec = dict(spec)
            declared = spec.pop("type", None)
            if declared is not None and declared != kind.__name__:
                raise _space_error(source, f"{field}.type", f"must be {kind.__name__!r}")
            try:
                rng = Range.model_validate(spec)
            except ValidationError as exc:
                raise _space_error(source, field, _first_message(exc)) from None
            for bound in ("low", "high"):
                value = getattr(rng, bound)
                if not low <= value <= high:
                    raise _space_error(
                        source, f"{field}.{bound}", f"{value} is outside [{low}, {high}]"
                    )
                if kind is int and value != int(value):
                    raise _space_error(source, f"{field}.{bound}", f"{value} is not an integer")
            ranges[name] = (kind, kind(rng.low), kind(rng.high))
        elif isinstance(spec, (int, float)) and not isinstance(spec, bool):
            if not (math.isfinite(spec) and low <= spec <= high):
                raise _space_error(source, field, f"{spec} is outside [{low}, {high}]")
            if kind is int and spec != int(spec):
                raise _space_error(source, field, f"{spec} is not an integer")
            fixed[name] = kind(spec)
        else:
            raise _space_error(
                source, field, "must be {low, high}, a fixed number, or absent (fixed at 0)"
            )
    return SearchSpace(models=models, ranges=ranges, fixed=fixed)


def load_search_space(path: str | Path) -> SearchSpace:
    """Read and validate a search-space YAML file (see :func:`parse_search_space`)."""
    path = Path(path)
    return parse_search_space(read_yaml(path), source=str(path))


def full_search_space() -> SearchSpace:
    """Table III in full: every parameter searched over its whole range, every model."""
    return parse_search_space(
        {
            "parameters": {
                n: {"low": lo, "high": hi} for n, (_, lo, hi) in parameter_ranges().items()
            }
        }
    )


# ------------------------------------------------------------------------------------------------
# Experiment
# ------------------------------------------------------------------------------------------------


class SynthConfig(_Strict):
    """A synthetic benchmark generated by :mod:`aop.synth` into ``STUDY_DIR/benchmark``.

    ``preset`` names a parameter set of :func:`aop.synth.preset_params` and ``options`` overrides
    its simulation parameters (e.g. ``touching_fraction``, ``n_objects``).
    """

    n_volumes: Annotated[int, Field(gt=0)] = 3
    shape: tuple[Annotated[int, Field(gt=0)], ...] = (32, 64, 64)
    seed: Annotated[int, Field(ge=0)] = 0
    preset: str = "nuclei"
    options: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _three_d(self) -> SynthConfig:
        if len(self.shape) != 3:
            raise ValueError(f"shape must have 3 entries (z, y, x), got {len(self.shape)}")
        return self


class DataConfig(_Strict):
    """Either an existing benchmark folder (images/, labels/) or a synth block.

    ``adapt`` (optional) adapts that benchmark to real volumes by a CycleGAN before the study
    (:func:`aop.adapt.adapt_benchmark`, cached in ``STUDY_DIR/adapted``).
    """

    benchmark: Path | None = None
    synth: SynthConfig | None = None
    adapt: AdaptConfig | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> DataConfig:
        if (self.benchmark is None) == (self.synth is None):
            raise ValueError("give exactly one of 'benchmark' and 'synth'")
        return self


class ModelConfig(_Strict):
    """One candidate segmentation model: registry name, settings, and a unique id in the study."""

    name: Annotated[str, Field(min_length=1)]
    settings: dict[str, Any] = Field(default_factory=dict)
    id: str | None = None

    @property
    def key(self) -> str:
        """The model's name in the search space and results (``id`` if given, else ``name``)."""
        return self.id or self.name


class ResourcesConfig(_Strict):
    """Resources reserved per trial."""

    cpus: Annotated[float, Field(gt=0)] = 1.0
    gpu: Annotated[float, Field(ge=0)] = 0.0


class SearchConfig(_Strict):
    """The main search: searcher name, budget (trials), seed, concurrency and resources."""

    searcher: str = "gp"
    budget: Annotated[int, Field(gt=0)] = 120
    seed: int = 0
    concurrency: Annotated[int, Field(gt=0)] = 1
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    max_failures: Annotated[int, Field(ge=0)] = 2


class TrackingConfig(_Strict):
    """MLflow: tracking URI (default ``sqlite:///STUDY_DIR/mlflow.db``) and experiment name.

    The experiment name defaults to the study kind's (``aop-segmentation``, ``aop-classification``).
    """

    tracking_uri: str | None = None
    experiment: Annotated[str, Field(min_length=1)] | None = None


class StorageConfig(_Strict):
    """Where the study lives; the prediction cache defaults to ``STUDY_DIR/predictions``.

    ``tune_storage`` puts Ray Tune's experiments (trial state, searcher state, what ``aop resume``
    reads) at a URI that pyarrow opens (``s3://bucket/path``, ``gs://...``, ``file:///shared``);
    default ``STUDY_DIR/tune``.
    """

    study_dir: Path
    cache_dir: Path | None = None
    tune_storage: str | None = None


class ComparisonConfig(_Strict):
    """The reference searches: the kind's baseline and grid (if it has them), random search."""

    baseline: bool = True
    random: bool = True
    random_budget: Annotated[int, Field(gt=0)] | None = None
    grid: bool = False


class RayConfig(_Strict):
    """Ray cluster: ``None`` starts a local one; ``auto`` or ``ray://host:10001`` connects."""

    address: str | None = None
    num_cpus: Annotated[int, Field(gt=0)] | None = None


class BaseExperiment(_Strict):
    """The fields every study kind's experiment file has.

    A kind's experiment model subclasses this one and adds its own sections (a segmentation
    study adds ``data`` and ``models``).
    """

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")]
    kind: Annotated[str, Field(min_length=1)] = "segmentation"
    search: SearchConfig = Field(default_factory=SearchConfig)
    search_space: Path
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    storage: StorageConfig
    comparison: ComparisonConfig = Field(default_factory=ComparisonConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @property
    def study_dir(self) -> Path:
        return self.storage.study_dir

    @property
    def tracking_uri(self) -> str:
        uri = self.tracking.tracking_uri
        return uri or f"sqlite:///{(self.storage.study_dir / 'mlflow.db').resolve()}"

    @property
    def random_budget(self) -> int:
        return self.comparison.random_budget or self.search.budget

    def to_yaml_dict(self) -> dict[str, Any]:
        """A plain mapping that :func:`parse_experiment` reads back to an equal object."""
        return self.model_dump(mode="json")

    def resolve_paths(self, base: Path) -> None:
        """Resolve relative paths (see the module docstring) in place.

        Inputs (the search space) are looked for; outputs (the study folder, the prediction
        cache) are relative to the experiment file's folder, never searched for.
        """
        self.search_space = _resolve(self.search_space, base)
        self.storage.study_dir = (base / self.storage.study_dir.expanduser()).resolve()
        if self.storage.cache_dir is not None:
            self.storage.cache_dir = (base / self.storage.cache_dir.expanduser()).resolve()

    def check_names(self, source: str) -> None:
        """Check names that pydantic cannot (registries); raise a one-line :class:`AopError`."""

    def input_paths(self) -> list[Path]:
        """The study's input files and folders, which its outputs may never replace."""
        return [self.search_space]


class Experiment(BaseExperiment):
    """A validated segmentation-study experiment file."""

    data: DataConfig
    models: Annotated[list[ModelConfig], Field(min_length=1)]
    search_space: Path = Path(DEFAULT_SEARCH_SPACE)

    @model_validator(mode="after")
    def _unique_models(self) -> Experiment:
        keys = [m.key for m in self.models]
        duplicates = sorted({k for k in keys if keys.count(k) > 1})
        if duplicates:
            raise ValueError(f"model {duplicates[0]!r} listed twice; give each an 'id'")
        return self

    @property
    def model_keys(self) -> list[str]:
        """The model ids, in file order."""
        return [m.key for m in self.models]

    @property
    def cache_dir(self) -> Path:
        return self.storage.cache_dir or self.storage.study_dir / "predictions"

    def check_names(self, source: str) -> None:
        _check_model_settings(self, source)

    def input_paths(self) -> list[Path]:
        benchmark = [self.data.benchmark] if self.data.benchmark is not None else []
        real = [self.data.adapt.real] if self.data.adapt is not None else []
        return [*super().input_paths(), *benchmark, *real]

    def resolve_paths(self, base: Path) -> None:
        super().resolve_paths(base)
        if self.data.benchmark is not None:
            self.data.benchmark = _resolve(self.data.benchmark, base)
        if self.data.adapt is not None:
            self.data.adapt.real = _resolve(self.data.adapt.real, base)
        for model in self.models:
            # a relative weights path; a registered name (e.g. StarDist's 2D_versatile_fluo) stays
            value = model.settings.get("model")
            if isinstance(value, str) and "://" not in value and not Path(value).is_absolute():
                resolved = _resolve(Path(value), base)
                if resolved.exists():
                    model.settings["model"] = str(resolved)


SegmentationExperiment = Experiment


def _first_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        msg = "unknown field"
    return msg


def validation_message(exc: ValidationError) -> str:
    """A pydantic error as one line: ``field.path: message; ...`` (no file name)."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


def _validation_error(source: str, exc: ValidationError) -> AopError:
    return AopError(f"{source}: {validation_message(exc)}")


def read_yaml(path: Path) -> Any:
    """Read a YAML file; a missing, unreadable, binary or bad file is one :class:`AopError` line."""
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
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise AopError(f"{path}: not valid YAML{where}") from None


def _resolve(path: Path, base: Path) -> Path:
    """Resolve a relative path: experiment folder, then current directory, then project root."""
    path = path.expanduser()
    if path.is_absolute():
        return path
    for root in (base, Path.cwd(), PROJECT_ROOT):
        if (root / path).exists():
            return (root / path).resolve()
    return (base / path).resolve()


def _check_model_settings(exp: Experiment, source: str) -> None:
    """Validate each model's name and settings now (weights are only looked for when it runs)."""
    from aop.segmentation.models import available_models

    known = available_models()
    for index, model in enumerate(exp.models):
        cls = known.get(model.name)
        if cls is None:
            raise AopError(
                f"{source}: models.{index}.name: unknown model {model.name!r} "
                f"(available: {', '.join(known)})"
            )
        try:
            cls.Settings.model_validate(model.settings)
        except ValidationError as exc:
            raise AopError(
                f"{source}: models.{index}.settings.{validation_message(exc)}"
            ) from None


def parse_experiment(
    raw: Any, source: str = "<experiment>", base: Path | None = None
) -> BaseExperiment:
    """Validate an experiment mapping of any study kind (``kind``, default ``segmentation``).

    Every name is checked here, before any work: the kind, the searcher, the models and the
    search-space parameters; relative paths resolve against ``base`` (see module doc).
    """
    from aop.tuning.kinds import get_kind
    from aop.tuning.searchers import check_searcher

    if not isinstance(raw, dict):
        raise AopError(f"{source}: expected a mapping of experiment fields")
    kind_name = raw.get("kind", "segmentation")
    if not isinstance(kind_name, str):
        raise AopError(f"{source}: kind: must be a study kind name, got {kind_name!r}")
    kind = get_kind(kind_name, field_name=f"{source}: kind")
    try:
        exp = kind.experiment_model.model_validate(raw)
    except ValidationError as exc:
        raise _validation_error(source, exc) from None
    check_searcher(exp.search.searcher, field_name=f"{source}: search.searcher")
    exp.check_names(source)
    exp.resolve_paths(Path.cwd() if base is None else base)
    kind.check(exp, source)
    return exp


def load_experiment(path: str | Path) -> BaseExperiment:
    """Read and validate an experiment YAML file.

    Parameters
    ----------
    path : path-like
        The experiment file.

    Returns
    -------
    BaseExperiment
        The kind's experiment model (:class:`Experiment` for segmentation), with relative paths
        resolved (see the module docstring).

    Raises
    ------
    AopError
        Missing file, bad YAML, unknown or invalid field; the message names file and field.
    """
    path = Path(path)
    return parse_experiment(read_yaml(path), source=str(path), base=path.resolve().parent)


def experiment_search_space(exp: Experiment) -> SearchSpace:
    """The experiment's search space, with its model list checked against the experiment's models.

    The default file ``search_spaces/segmentation.yaml`` is Table III in full; when that file is
    not installed beside the package, the built-in full space is used.
    """
    path = exp.search_space
    if not path.is_file() and path.as_posix().endswith(DEFAULT_SEARCH_SPACE):
        space = full_search_space()
    else:
        space = load_search_space(path)
    if space.models is None:
        space.models = exp.model_keys
    else:
        for name in space.models:
            if name not in exp.model_keys:
                raise AopError(
                    f"{path}: models: {name!r} is not a model of the experiment "
                    f"({', '.join(exp.model_keys)})"
                )
    return space
