"""The one search-space format of every study kind, and its Ray Tune domains.

A search space maps parameter names to searched domains or constants, plus named start points:
configurations a searcher evaluates first. In a search-space file (YAML) each parameter is one of::

    encoder: {choice: [resnet18, resnet101]}       # categorical
    head_layers: {int: [1, 3]}                     # integer, both bounds included
    batch: {int: [8, 64], log: true}               # integer on a log scale
    dropout: {float: [0.0, 0.5]}                   # uniform float
    lr: {float: [1.0e-5, 1.0e-2], log: true}       # log-uniform float
    head_width: 256                                # a constant (fixed parameter)

and the file may name start points::

    start:
      default: {encoder: resnet18, head_layers: 1, lr: 1.0e-3}

Parsing imports no Ray: a study kind validates its file when the experiment loads, before Ray
starts. :meth:`SearchSpace.domains` gives the searched parameters as Ray Tune domains
(``tune.choice``, ``tune.randint``, ``tune.lograndint``, ``tune.uniform``, ``tune.loguniform``);
Ray Tune converts them for each search library (Optuna, hyperopt, SMAC).

Example
-------
>>> space = parse_space({"parameters": {"a": {"choice": ["x", "y"]}, "b": {"int": [0, 3]}}})
>>> space.searched, space.fixed
(['a', 'b'], {})
>>> space.contains({"a": "x", "b": 3})
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aop.config import read_yaml
from aop.errors import AopError, validation_message

Scalar = bool | int | float | str


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def describe(self) -> dict[str, Any]:
        """The parameter as written in a search-space file."""
        return self.model_dump(mode="json", exclude_defaults=True)


class ChoiceSpec(_Spec):
    """A categorical parameter."""

    choice: Annotated[list[Scalar], Field(min_length=1)]

    @model_validator(mode="after")
    def _distinct(self) -> ChoiceSpec:
        if len(set(map(repr, self.choice))) != len(self.choice):
            raise ValueError("choices must be distinct")
        return self

    def contains(self, value: Any) -> bool:
        return any(value == c and type(value) is type(c) for c in self.choice) or (
            value in self.choice
        )

    def domain(self) -> Any:
        from ray import tune

        return tune.choice(list(self.choice))


class IntSpec(_Spec):
    """An integer in ``[low, high]`` (both included), optionally on a log scale."""

    int: tuple[int, int]
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntSpec:
        low, high = self.int
        if low > high:
            raise ValueError(f"low ({low}) must be <= high ({high})")
        if self.log and low < 1:
            raise ValueError(f"a log scale needs low >= 1, got {low}")
        return self

    def contains(self, value: Any) -> bool:
        low, high = self.int
        return _number(value) and float(value).is_integer() and low <= value <= high

    def domain(self) -> Any:
        from ray import tune

        low, high = self.int
        # Tune's integer domains exclude the upper bound
        return (tune.lograndint if self.log else tune.randint)(low, high + 1)


class FloatSpec(_Spec):
    """A float in ``[low, high]``, uniform or log-uniform."""

    float: tuple[float, float]
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatSpec:
        low, high = self.float
        if not (math.isfinite(low) and math.isfinite(high)) or not low < high:
            raise ValueError(f"low ({low}) must be < high ({high}), both finite")
        if self.log and low <= 0:
            raise ValueError(f"a log scale needs low > 0, got {low}")
        return self

    def contains(self, value: Any) -> bool:
        low, high = self.float
        return _number(value) and low <= value <= high

    def domain(self) -> Any:
        from ray import tune

        low, high = self.float
        return (tune.loguniform if self.log else tune.uniform)(low, high)


Parameter = ChoiceSpec | IntSpec | FloatSpec
_SPECS: dict[str, type[_Spec]] = {"choice": ChoiceSpec, "int": IntSpec, "float": FloatSpec}


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class SearchSpace:
    """Searched parameters, fixed parameters (constants) and named start points.

    Attributes
    ----------
    parameters : dict
        ``{name: ChoiceSpec | IntSpec | FloatSpec | constant}`` in file order.
    start_points : dict
        ``{name: [configuration, ...]}``: named lists of configurations (searched parameters
        only) a searcher evaluates first.
    """

    parameters: dict[str, Any] = field(default_factory=dict)
    start_points: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def searched(self) -> list[str]:
        """Names of the searched parameters."""
        return [n for n, v in self.parameters.items() if isinstance(v, _Spec)]

    @property
    def fixed(self) -> dict[str, Any]:
        """The constants."""
        return {n: v for n, v in self.parameters.items() if not isinstance(v, _Spec)}

    def choices(self, name: str, default: Any = None) -> list[Any]:
        """The values a categorical (or fixed) parameter takes; ``[default]`` when it is absent."""
        value = self.parameters.get(name, default)
        return list(value.choice) if isinstance(value, ChoiceSpec) else [value]

    def domains(self) -> dict[str, Any]:
        """The searched parameters as Ray Tune domains (what a searcher receives)."""
        return {n: v.domain() for n, v in self.parameters.items() if isinstance(v, _Spec)}

    def ranges(self) -> dict[str, tuple[float, float]]:
        """``{name: (low, high)}`` of the searched numeric parameters (plots span them)."""
        return {
            name: (spec.int if isinstance(spec, IntSpec) else spec.float)
            for name, spec in self.parameters.items()
            if isinstance(spec, IntSpec | FloatSpec)
        }

    def contains(self, config: Mapping[str, Any]) -> bool:
        """Whether ``config`` sets every searched parameter to a value of its domain."""
        return all(
            name in config and spec.contains(config[name])
            for name, spec in self.parameters.items()
            if isinstance(spec, _Spec)
        )

    def start(self, name: str) -> list[dict[str, Any]]:
        """The start points called ``name`` (an empty list when the space has none)."""
        return [dict(p) for p in self.start_points.get(name, [])]

    def describe(self) -> dict[str, Any]:
        """A plain mapping for logs and MLflow params: the parameters as a file writes them."""
        return {
            name: value.describe() if isinstance(value, _Spec) else value
            for name, value in self.parameters.items()
        }


def parse_parameter(raw: Any, where: str) -> Parameter | Scalar | None:
    """One parameter of a search-space file as a spec or a constant (see the module docstring)."""
    if isinstance(raw, Mapping):
        kinds = [k for k in raw if k in _SPECS]
        if len(kinds) != 1:
            allowed = ", ".join(_SPECS)
            raise AopError(f"{where}: give exactly one of {allowed} (or a constant value)")
        try:
            return _SPECS[kinds[0]].model_validate(dict(raw))  # type: ignore[return-value]
        except ValidationError as exc:
            sep = "." if exc.errors()[0]["loc"] else ": "
            raise AopError(f"{where}{sep}{validation_message(exc, first=True)}") from None
    if isinstance(raw, Scalar) or raw is None:
        return raw
    raise AopError(f"{where}: expected a constant or one of {', '.join(_SPECS)}")


def parse_space(
    raw: Any, source: str = "<search space>", allowed: Mapping[str, str] | None = None
) -> SearchSpace:
    """Validate a search-space mapping ``{parameters: {...}, start: {...}}``.

    Parameters
    ----------
    raw : mapping
        The file's content.
    source : str
        File name used in error messages.
    allowed : mapping, optional
        ``{parameter: description}`` a study kind accepts; any other name is an error naming it.

    Returns
    -------
    SearchSpace
    """
    if not isinstance(raw, Mapping):
        raise AopError(f"{source}: expected a mapping with 'parameters' (and optional 'start')")
    unknown = sorted(set(raw) - {"parameters", "start"})
    if unknown:
        raise AopError(f"{source}: {unknown[0]}: unknown key (allowed: parameters, start)")
    params = raw.get("parameters")
    if not isinstance(params, Mapping) or not params:
        raise AopError(f"{source}: parameters: must be a non-empty mapping of parameter names")
    parameters: dict[str, Any] = {}
    for name, spec in params.items():
        if allowed is not None and name not in allowed:
            raise AopError(
                f"{source}: parameters.{name}: unknown parameter (allowed: {', '.join(allowed)})"
            )
        parameters[str(name)] = parse_parameter(spec, f"{source}: parameters.{name}")
    space = SearchSpace(parameters=parameters)
    starts = raw.get("start") or {}
    if not isinstance(starts, Mapping):
        raise AopError(f"{source}: start: must map names to configurations")
    for name, points in starts.items():
        points = [points] if isinstance(points, Mapping) else points
        if not isinstance(points, list) or not all(isinstance(p, Mapping) for p in points):
            raise AopError(f"{source}: start.{name}: must be a configuration or a list of them")
        space.start_points[str(name)] = [
            check_point(space, point, f"{source}: start.{name}.{index}")
            for index, point in enumerate(points)
        ]
    return space


def check_point(space: SearchSpace, point: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A configuration's searched parameters, each checked against its domain.

    Fixed parameters may be given (with any value equal to the constant); an unknown or missing
    parameter, or a value outside its domain, is an :class:`AopError` naming ``where``.
    """
    for key in point:
        if key not in space.parameters:
            raise AopError(f"{where}.{key}: unknown parameter")
    for key, spec in space.parameters.items():
        if not isinstance(spec, _Spec):
            continue
        if key not in point:
            raise AopError(f"{where}: missing {key!r}")
        if not spec.contains(point[key]):
            raise AopError(f"{where}.{key}: {point[key]!r} is outside {spec.describe()}")
    return {k: point[k] for k in space.searched}


def load_space_file(path: Any, allowed: Mapping[str, str] | None = None) -> SearchSpace:
    """Read and validate a search-space file (:func:`parse_space`)."""
    return parse_space(read_yaml(path), source=str(path), allowed=allowed)
