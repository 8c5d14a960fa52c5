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

Conditions. A searched parameter may carry ``when: {PARENT: VALUE or [VALUES], ...}``::

    design: {choice: [deep, features]}
    encoder: {choice: [a, b], when: {design: deep}}
    model: {choice: [logistic_regression, random_forest], when: {design: features}}
    logreg_c: {float: [1.0e-3, 100.0], log: true, when: {model: logistic_regression}}

A parent is a ``choice`` parameter or a constant written earlier in the file, and each value one
of its choices (or the constant). A parameter is *active* in a configuration when every one of
its conditions holds and its parents are active (``logreg_c`` needs ``model``, which needs
``design``); an inactive parameter has no value. Constants have no condition. A configuration
(a suggestion, a start point, a trial record) holds the active parameters only:
:meth:`SearchSpace.active` restricts one to them, :meth:`SearchSpace.contains` ignores inactive
ones, and a start point that sets an inactive parameter is an error naming it. Comparisons of
values are by choice: ``1`` and ``True`` are two choices of ``[1, True]``.

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
>>> space = parse_space({"parameters": {
...     "design": {"choice": ["deep", "features"]},
...     "encoder": {"choice": ["a", "b"], "when": {"design": "deep"}},
...     "c": {"float": [0.1, 10.0], "log": True, "when": {"design": "features"}}}})
>>> space.conditions
{'encoder': {'design': ('deep',)}, 'c': {'design': ('features',)}}
>>> space.active({"design": "features", "encoder": "a", "c": 1.0})
{'design': 'features', 'c': 1.0}
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
        return self.index(value) is not None

    def index(self, value: Any) -> int | None:
        """The position of ``value`` among the choices (one of its own type first), or None."""
        same = (i for i, c in enumerate(self.choice) if type(c) is type(value) and c == value)
        equal = (i for i, c in enumerate(self.choice) if c == value)
        return next(same, next(equal, None))

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
        ``{name: [configuration, ...]}``: named lists of configurations (active searched
        parameters only) a searcher evaluates first.
    conditions : dict
        ``{name: {parent: (value, ...)}}``: a searched parameter is active when each parent is
        active and has one of its values (see the module docstring); a parameter without an
        entry has no condition.
    """

    parameters: dict[str, Any] = field(default_factory=dict)
    start_points: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    conditions: dict[str, dict[str, tuple[Any, ...]]] = field(default_factory=dict)

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

    @property
    def has_conditions(self) -> bool:
        """Whether some parameter has a condition."""
        return bool(self.conditions)

    def contains(self, config: Mapping[str, Any]) -> bool:
        """Whether ``config`` sets every active searched parameter to a value of its domain.

        Inactive parameters are ignored, present or not.
        """
        inactive = self._inactive(config)
        return all(
            name in config and spec.contains(config[name])
            for name, spec in self.parameters.items()
            if isinstance(spec, _Spec) and name not in inactive
        )

    def active(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """``config`` restricted to the space's fixed and active searched parameters, in order.

        Keys that are not parameters of the space are left out too.
        """
        inactive = self._inactive(config)
        return {n: config[n] for n in self.parameters if n in config and n not in inactive}

    def is_active(self, name: str, config: Mapping[str, Any]) -> bool:
        """Whether the parameter ``name`` has a value in ``config`` (its conditions hold)."""
        if name not in self.parameters:
            raise KeyError(name)
        return name not in self._inactive(config)

    def _inactive(self, config: Mapping[str, Any]) -> dict[str, str]:
        """``{name: why}`` of the parameters inactive in ``config``: why names the first
        condition that fails, through inactive parents (``"design is 'deep'"``)."""
        why: dict[str, str] = {}
        if not self.conditions:
            return why
        done: set[str] = set()

        def visit(name: str) -> None:
            if name in done:
                return
            done.add(name)
            for parent, values in self.conditions.get(name, {}).items():
                visit(parent)
                if parent in why:
                    why[name] = why[parent]
                    return
                failed = self._fails(parent, values, config)
                if failed:
                    why[name] = failed
                    return

        for name in self.parameters:
            visit(name)
        return why

    def _fails(self, parent: str, values: tuple[Any, ...], config: Mapping[str, Any]) -> str:
        """Why ``parent``'s value in ``config`` is none of ``values`` ("" when it is one)."""
        spec = self.parameters.get(parent)
        if not isinstance(spec, _Spec):  # a constant: its value, whatever the config says
            return "" if any(spec == v for v in values) else f"{parent} is {spec!r}"
        if parent not in config:
            return f"{parent} is not set"
        value = config[parent]
        index = spec.index(value) if isinstance(spec, ChoiceSpec) else None
        if index is None or not any(spec.index(v) == index for v in values):
            return f"{parent} is {value!r}"
        return ""

    def start(self, name: str) -> list[dict[str, Any]]:
        """The start points called ``name`` (an empty list when the space has none)."""
        return [dict(p) for p in self.start_points.get(name, [])]

    def describe(self) -> dict[str, Any]:
        """A plain mapping for logs and MLflow params: the parameters as a file writes them."""
        described = {}
        for name, value in self.parameters.items():
            described[name] = value.describe() if isinstance(value, _Spec) else value
            if name in self.conditions:
                described[name]["when"] = {
                    parent: values[0] if len(values) == 1 else list(values)
                    for parent, values in self.conditions[name].items()
                }
        return described


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
    conditions: dict[str, dict[str, tuple[Any, ...]]] = {}
    names = [str(name) for name in params]
    for name, spec in params.items():
        where = f"{source}: parameters.{name}"
        if allowed is not None and name not in allowed:
            raise AopError(f"{where}: unknown parameter (allowed: {', '.join(allowed)})")
        when = None
        if isinstance(spec, Mapping) and "when" in spec:
            spec = {k: v for k, v in spec.items() if k != "when"}
            when = params[name]["when"]
        parsed = parse_parameter(spec, where)
        if when is not None:
            if not isinstance(parsed, _Spec):
                raise AopError(f"{where}.when: a constant has no condition")
            conditions[str(name)] = _parse_condition(
                when, str(name), parameters, names, f"{where}.when"
            )
        parameters[str(name)] = parsed
    space = SearchSpace(parameters=parameters, conditions=conditions)
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


def _parse_condition(
    raw: Any, name: str, earlier: Mapping[str, Any], names: Sequence[str], where: str
) -> dict[str, tuple[Any, ...]]:
    """A parameter's ``when``: ``{parent: (value, ...)}``, each value one of the parent's choices.

    Parameters
    ----------
    raw : mapping
        ``{PARENT: VALUE or [VALUE, ...]}`` as written in the file.
    name : str
        The parameter that has the condition.
    earlier : mapping
        The parameters written before this one (``{name: spec or constant}``).
    names : sequence of str
        Every parameter of the file, to tell a parent written later from an unknown one.
    where : str
        ``FILE: parameters.NAME.when``, the start of every error line.

    Returns
    -------
    dict
        The values as the parent's own choice objects (``1`` and ``True`` stay apart).
    """
    if not isinstance(raw, Mapping) or not raw:
        raise AopError(f"{where}: must map earlier parameters to a value or a list of values")
    condition: dict[str, tuple[Any, ...]] = {}
    for parent, wanted in raw.items():
        at, parent = f"{where}.{parent}", str(parent)
        if parent == name:
            raise AopError(f"{at}: a parameter cannot be its own condition")
        if parent not in earlier:
            place = f"written after {name}" if parent in names else "unknown parameter"
            raise AopError(f"{at}: {place} (a condition names a parameter written earlier)")
        spec = earlier[parent]
        if isinstance(spec, IntSpec | FloatSpec):
            raise AopError(
                f"{at}: a condition names a choice parameter or a constant, not {spec.describe()}"
            )
        values = list(wanted) if isinstance(wanted, list | tuple) else [wanted]
        if not values:
            raise AopError(f"{at}: give a value or a non-empty list of values")
        chosen: list[Any] = []
        for value in values:
            if isinstance(spec, ChoiceSpec):
                index = spec.index(value)
                if index is None:
                    raise AopError(f"{at}: {value!r} is not one of its choices {spec.choice}")
                value = spec.choice[index]
            elif value != spec:
                raise AopError(f"{at}: {value!r} is not its value {spec!r} (a constant)")
            if not any(type(c) is type(value) and c == value for c in chosen):
                chosen.append(value)
        condition[parent] = tuple(chosen)
    return condition


def check_point(space: SearchSpace, point: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A configuration's active searched parameters, each checked against its domain.

    Fixed parameters may be given (with any value equal to the constant); an unknown parameter,
    a missing active one, an inactive one that is given (``inactive: design is 'deep'``) or a
    value outside its domain is an :class:`AopError` naming ``where``.
    """
    for key in point:
        if key not in space.parameters:
            raise AopError(f"{where}.{key}: unknown parameter")
    inactive = space._inactive(point)
    for key, spec in space.parameters.items():
        if not isinstance(spec, _Spec):
            continue
        if key in inactive:
            if key in point:
                raise AopError(f"{where}.{key}: inactive: {inactive[key]}")
            continue
        if key not in point:
            raise AopError(f"{where}: missing {key!r}")
        if not spec.contains(point[key]):
            raise AopError(f"{where}.{key}: {point[key]!r} is outside {spec.describe()}")
    return {k: point[k] for k in space.searched if k not in inactive}


def load_space_file(path: Any, allowed: Mapping[str, str] | None = None) -> SearchSpace:
    """Read and validate a search-space file (:func:`parse_space`)."""
    return parse_space(read_yaml(path), source=str(path), allowed=allowed)
