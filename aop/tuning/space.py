"""Search spaces of every study kind, built on Ray Tune's own domains.

A search space is a mapping of parameter names to Ray Tune domains (``tune.choice``,
``tune.randint``, ``tune.lograndint``, ``tune.uniform``, ``tune.loguniform``) or constants, plus
named start points: configurations a searcher evaluates first. Ray Tune converts the domains for
each search library (Optuna, hyperopt, SMAC through :mod:`aop.tuning.smac_search`); aop never
translates them by hand.

In a search-space file (YAML), each parameter is one of::

    encoder: {choice: [resnet18, resnet101]}       # categorical
    head_layers: {int: [1, 3]}                     # integer, both bounds included
    batch: {int: [8, 64], log: true}               # integer on a log scale
    dropout: {float: [0.0, 0.5]}                   # uniform float
    lr: {float: [1.0e-5, 1.0e-2], log: true}       # log-uniform float
    head_width: 256                                # a constant (fixed parameter)

and the file may name start points::

    start:
      default: {encoder: resnet18, head_layers: 1, lr: 1.0e-3}

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
from ray import tune
from ray.tune.search.sample import Categorical, Domain, Float, Integer

from aop.errors import AopError

Scalar = bool | int | float | str


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ChoiceSpec(_Spec):
    """A categorical parameter."""

    choice: Annotated[list[Scalar], Field(min_length=1)]

    @model_validator(mode="after")
    def _distinct(self) -> ChoiceSpec:
        if len(set(map(repr, self.choice))) != len(self.choice):
            raise ValueError("choices must be distinct")
        return self

    def domain(self) -> Domain:
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

    def domain(self) -> Domain:
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

    def domain(self) -> Domain:
        low, high = self.float
        return (tune.loguniform if self.log else tune.uniform)(low, high)


_SPECS: dict[str, type[_Spec]] = {"choice": ChoiceSpec, "int": IntSpec, "float": FloatSpec}


@dataclass
class SearchSpace:
    """Searched parameters as Ray Tune domains, fixed parameters as constants, start points.

    Attributes
    ----------
    parameters : dict
        ``{name: Domain | constant}`` in file order.
    start_points : dict
        ``{name: [configuration, ...]}``: named lists of configurations (searched parameters
        only) a searcher evaluates first.
    """

    parameters: dict[str, Any] = field(default_factory=dict)
    start_points: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    @property
    def searched(self) -> list[str]:
        """Names of the parameters with a domain."""
        return [n for n, v in self.parameters.items() if isinstance(v, Domain)]

    @property
    def fixed(self) -> dict[str, Any]:
        """The constants."""
        return {n: v for n, v in self.parameters.items() if not isinstance(v, Domain)}

    def domains(self) -> dict[str, Domain]:
        """The searched parameters' domains (what a searcher receives)."""
        return {n: v for n, v in self.parameters.items() if isinstance(v, Domain)}

    def contains(self, config: Mapping[str, Any]) -> bool:
        """Whether ``config`` sets every searched parameter to a value of its domain."""
        for name, domain in self.domains().items():
            if name not in config or not _in_domain(domain, config[name]):
                return False
        return True

    def start(self, name: str) -> list[dict[str, Any]]:
        """The start points called ``name`` (an empty list when the space has none)."""
        return [dict(p) for p in self.start_points.get(name, [])]

    def describe(self) -> dict[str, Any]:
        """A plain mapping for logs and MLflow params: ``{name: {kind, ...} | constant}``."""
        out: dict[str, Any] = {}
        for name, value in self.parameters.items():
            out[name] = describe_domain(value) if isinstance(value, Domain) else value
        return out


def describe_domain(domain: Domain) -> dict[str, Any]:
    """``{"choice": [...]}``, ``{"int": [low, high], "log": bool}`` or ``{"float": ...}``."""
    if isinstance(domain, Categorical):
        return {"choice": list(domain.categories)}
    log = "LogUniform" in type(domain.get_sampler()).__name__
    if isinstance(domain, Integer):
        return {"int": [int(domain.lower), int(domain.upper) - 1], "log": log}
    if isinstance(domain, Float):
        return {"float": [float(domain.lower), float(domain.upper)], "log": log}
    return {"domain": type(domain).__name__}


def _in_domain(domain: Domain, value: Any) -> bool:
    if isinstance(domain, Categorical):
        return any(value == c and type(value) is type(c) for c in domain.categories) or (
            value in domain.categories
        )
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(domain, Integer):
        return float(value).is_integer() and domain.lower <= value < domain.upper
    if isinstance(domain, Float):
        return domain.lower <= value <= domain.upper
    return True


def parse_parameter(raw: Any, where: str) -> Any:
    """One parameter of a search-space file as a Tune domain or a constant (see module doc)."""
    if isinstance(raw, Mapping):
        kinds = [k for k in raw if k in _SPECS]
        if len(kinds) != 1:
            allowed = ", ".join(_SPECS)
            raise AopError(f"{where}: give exactly one of {allowed} (or a constant value)")
        try:
            spec = _SPECS[kinds[0]].model_validate(dict(raw))
        except ValidationError as exc:
            err = exc.errors()[0]
            loc = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            raise AopError(f"{where}{'.' + loc if loc else ''}: {msg}") from None
        return spec.domain()
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
    unknown = sorted(set(raw) - {"parameters", "start", "kind"})
    if unknown:
        raise AopError(f"{source}: {unknown[0]}: unknown key (allowed: parameters, start)")
    params = raw.get("parameters")
    if not isinstance(params, Mapping) or not params:
        raise AopError(f"{source}: parameters: must be a non-empty mapping of parameter names")
    parameters: dict[str, Any] = {}
    for name, spec in params.items():
        if allowed is not None and name not in allowed:
            raise AopError(
                f"{source}: parameters.{name}: unknown parameter "
                f"(allowed: {', '.join(allowed)})"
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
        checked = []
        for index, point in enumerate(points):
            point = {**{k: v for k, v in space.fixed.items() if k not in point}, **point}
            for key in point:
                if key not in parameters:
                    raise AopError(f"{source}: start.{name}.{index}.{key}: unknown parameter")
            for key, domain in space.domains().items():
                if key not in point:
                    raise AopError(f"{source}: start.{name}.{index}: missing {key!r}")
                if not _in_domain(domain, point[key]):
                    raise AopError(
                        f"{source}: start.{name}.{index}.{key}: {point[key]!r} is outside "
                        f"{describe_domain(domain)}"
                    )
            checked.append({k: point[k] for k in space.searched})
        space.start_points[str(name)] = checked
    return space
