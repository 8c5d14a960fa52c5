"""``SMACSearch``: SMAC3's random forest + expected improvement as a Ray Tune searcher.

SMAC3's ``HyperparameterOptimizationFacade`` recipe (a random forest on log-scaled costs, log
expected improvement maximised by local and random search, a Sobol initial design, one in five
configurations at random), driven through SMAC's public ask/tell interface. Conventions:

- The space is a flat dict of the Tune domains aop's search spaces produce: ``tune.choice``,
  ``tune.randint`` and ``tune.lograndint`` (upper bound excluded, as in Tune), ``tune.uniform``
  and ``tune.loguniform``, and constants, passed through. Any other domain (quantized, normal,
  ``sample_from``, ``grid_search``, a nested dict) is an :class:`~aop.errors.AopError`. A choice
  is a categorical over its option indices, so options like ``1`` and ``True`` stay apart.
- A trial is one evaluation: a deterministic scenario, one call per configuration, one trial
  seed for the whole search (the first trial's, else ``seed``). SMAC never asks for a
  configuration its run history holds, told or running: concurrent trials get distinct
  configurations, and told ones are not suggested again.
- SMAC minimises a cost: the metric, negated for ``mode="max"``. A trial that errors or ends
  without a finite metric is told as ``StatusType.CRASHED``; the forest fits successful trials.
- Several objectives (``metric`` and ``mode`` lists): a trial's cost is one value per objective
  (each negated for ``max``; a crash when any is missing), and SMAC's ParEGO (``rho`` 0.05, the
  search's seed) turns the costs, normalised by the run history's bounds, into one by an
  augmented Chebyshev norm with random weights drawn anew before each fit. The random forest,
  the expected improvement and everything else stay as for one objective.
- ``points_to_evaluate`` come first, in order (missing searched keys drawn with ``seed``), as
  running trials of SMAC's run history; ``add_evaluated_point`` tells SMAC a finished trial.
- ``conditions`` (``{name: {parent: [value, ...]}}``, the format of
  :attr:`aop.tuning.space.SearchSpace.conditions`) make a parameter active only when each
  parent (a ``tune.choice``, or a constant whose value is among the parent's values) has one of
  its values: ConfigSpace's ``EqualsCondition`` or ``InCondition`` on the option indices, an
  ``AndConjunction`` for several parents. A configuration, suggestion, start point and told
  trial holds the active parameters only (inactive ones given are ignored); SMAC's random
  forest imputes the inactive ones. With conditions, give the space to the searcher and only
  the constants to the ``Tuner``: Tune merges each suggestion into its ``param_space``, where
  an inactive parameter's domain would stay unsampled.
- The state is the settings, the conditions, the start points left, the pending trials and
  SMAC's run history (the JSON ``RunHistory.save`` writes). Restoring tells a fresh SMAC the
  finished trials and registers the pending ones as running: the forest sees the history and
  no told or pending configuration is suggested again (the suggestions need not be the
  uninterrupted ones).
- SMAC's scenario and the run-history file live in temporary folders; nothing else is written.
"""

from __future__ import annotations

import copy
import logging
import math
import pickle
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ConfigSpace
import numpy as np
from ConfigSpace import Configuration, ConfigurationSpace
from ConfigSpace.exceptions import CyclicDependancyError
from ray.tune.search import Searcher
from ray.tune.search.sample import Categorical, Domain, Integer, LogUniform, Uniform
from smac import HyperparameterOptimizationFacade as HPO
from smac import Scenario
from smac.main.exceptions import ConfigurationSpaceExhaustedException
from smac.model.random_forest import RandomForest
from smac.multi_objective.parego import ParEGO
from smac.runhistory import RunHistory, StatusType, TrialInfo, TrialValue
from smac.runhistory.encoder import RunHistoryLogScaledEncoder

from aop.errors import AopError

__all__ = ["SMACSearch", "config_space"]

_STATE_VERSION = 3  # 3 adds the conditions; a version 2 state (no conditions) still loads
# SMAC's options a caller may change, with the HPO facade's values
_OPTIONS = {"retrain_after": 1, "n_trees": 10, "random_probability": 0.2, "challengers": 2000,
            "local_search_iterations": 10}  # fmt: skip
_SUPPORTED = "tune.choice, tune.randint, tune.lograndint, tune.uniform, tune.loguniform"
_NO_SPACE = "SMACSearch: no search space (give space= or a Tuner param_space)"


def config_space(
    space: dict[str, Any],
    seed: int = 0,
    conditions: Mapping[str, Mapping[str, Any]] | None = None,
) -> ConfigurationSpace:
    """Convert a Ray Tune param space to a ConfigSpace space, one hyperparameter per domain.

    A choice becomes a categorical over its option indices, an integer range includes both
    bounds (a range of one value is a categorical of one option); constants are left out.
    Another domain is an AopError naming its key. ``conditions`` become ConfigSpace conditions
    (see the module docstring and ``_option_conditions``).

    >>> from ray import tune
    >>> cs = config_space({"lr": tune.loguniform(1e-4, 1e-1), "n": tune.randint(1, 11), "e": 5})
    >>> list(cs), cs["lr"].log, (cs["n"].lower, cs["n"].upper)
    (['lr', 'n'], True, (1, 10))
    >>> cs = config_space({"m": tune.choice(["a", "b"]), "lr": tune.uniform(0, 1)},
    ...                   conditions={"lr": {"m": ["b"]}})
    >>> cs.conditions
    [lr | m == 1]
    """
    if not isinstance(space, dict):
        raise AopError(f"search space: expected a dict of Tune domains, got {type(space).__name__}")
    cs = ConfigurationSpace(seed=seed)
    for name, domain in space.items():
        if isinstance(domain, dict):
            what = "tune.grid_search" if "grid_search" in domain else "a nested dict"
            raise AopError(f"search space: {name}: {what} is not supported ({_SUPPORTED})")
        if not isinstance(domain, Domain):
            continue  # a constant
        sampler = domain.get_sampler()
        if not isinstance(sampler, Uniform | LogUniform):  # quantized, normal, sample_from
            kind = f"a {type(sampler).__name__.strip('_')} {type(domain).__name__}"
            what = "tune.sample_from" if domain.is_function() else kind
            raise AopError(f"search space: {name}: {what} is not supported ({_SUPPORTED})")
        log = isinstance(sampler, LogUniform)
        if isinstance(domain, Categorical):
            cs.add(ConfigSpace.Categorical(name, list(range(len(domain.categories)))))
        elif isinstance(domain, Integer) and domain.upper - 1 == domain.lower:
            cs.add(ConfigSpace.Categorical(name, [int(domain.lower)]))
        elif isinstance(domain, Integer):
            bounds = (int(domain.lower), int(domain.upper) - 1)
            cs.add(ConfigSpace.Integer(name, bounds, log=log))
        else:
            bounds = (float(domain.lower), float(domain.upper))
            cs.add(ConfigSpace.Float(name, bounds, log=log))
    for name, condition in _option_conditions(space, conditions or {}).items():
        clauses = [
            ConfigSpace.EqualsCondition(cs[name], cs[parent], options[0]) if len(options) == 1
            else ConfigSpace.InCondition(cs[name], cs[parent], options)
            for parent, options in condition.items()
        ]  # fmt: skip
        if clauses:
            try:
                cs.add(clauses[0] if len(clauses) == 1 else ConfigSpace.AndConjunction(*clauses))
            except CyclicDependancyError:
                parents = ", ".join(condition)
                raise AopError(f"search space: {name}.when: a cycle of conditions through "
                               f"{parents}") from None  # fmt: skip
    return cs


def _option_conditions(
    space: dict[str, Any], conditions: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, list[int]]]:
    """``{name: {parent: [option index, ...]}}``: the conditions on the parents' option indices.

    A condition on a constant holds when the constant is among its values and is left out; one
    that never holds, a parent that is not a ``tune.choice`` or a constant, a value that is not
    one of the parent's options, or a condition of a parameter that is not searched is an
    AopError naming ``name.when.parent``.
    """
    converted: dict[str, dict[str, list[int]]] = {}
    for name, condition in conditions.items():
        where = f"search space: {name}.when"
        if not isinstance(space.get(name), Domain):
            raise AopError(f"{where}: {name} is not a searched parameter")
        converted[name] = {}
        for parent, wanted in condition.items():
            at = f"{where}.{parent}"
            values = list(wanted) if isinstance(wanted, list | tuple) else [wanted]
            if parent not in space:
                raise AopError(f"{at}: unknown parameter")
            domain = space[parent]
            if not isinstance(domain, Domain):  # a constant
                if not any(value == domain for value in values):
                    raise AopError(f"{at}: the constant {domain!r} is none of {values!r}")
                continue
            if not isinstance(domain, Categorical):
                raise AopError(f"{at}: a condition needs a tune.choice parent or a constant")
            options = []
            for value in values:
                index = _option(domain.categories, value)
                if index is None:
                    raise AopError(f"{at}: {value!r} is not one of {domain.categories!r}")
                options.append(index)
            converted[name][parent] = sorted(set(options))
    return converted


def _option(options: list[Any], value: Any) -> int | None:
    """The index of ``value`` among ``options``, one of its own type first (``True``, ``1``)."""
    same = [i for i, c in enumerate(options) if type(c) is type(value) and c == value]
    found = same + [i for i, c in enumerate(options) if c == value]
    return found[0] if found else None


class SMACSearch(Searcher):
    """SMAC3 (random forest + expected improvement) as a Ray Tune searcher.

    Parameters
    ----------
    space : dict, optional
        Tune param space (see the module docstring); left out, the ``Tuner``'s ``param_space``.
    metric : str or list of str, optional
        The reported metric to optimise; a list for several objectives (ParEGO, see the module
        docstring).
    mode : {"min", "max"} or list of them, optional
        Minimise or maximise ``metric`` (one per metric of a list).
    points_to_evaluate : list of dict, optional
        Configurations suggested first, in order (missing searched keys are drawn at random).
    seed : int
        Seed of SMAC: in one process, the same seed and results give the same suggestions.
    n_initial_points : int
        Size of SMAC's Sobol initial design, suggested before the forest takes over.
    conditions : mapping, optional
        ``{name: {parent: [value, ...]}}``: when each parameter is active (see the module
        docstring).
    **options
        ``retrain_after`` (configurations per forest fit, 1), ``n_trees`` (10),
        ``random_probability`` (0.2), ``challengers`` (random configurations scored per ask,
        2000) and ``local_search_iterations`` (10).

    Examples
    --------
    >>> from ray import tune
    >>> space = {"model": tune.choice(["a", "b"]), "lr": tune.loguniform(1e-4, 1e-1)}
    >>> searcher = SMACSearch(space, metric="acc", mode="max", seed=1, n_initial_points=2)
    >>> searcher.add_evaluated_point({"model": "a", "lr": 0.01}, 0.25)
    >>> sorted(searcher.suggest("t1"))
    ['lr', 'model']
    >>> searcher.on_trial_complete("t1", {"acc": 0.5})
    >>> sorted(value.cost for value in searcher.runhistory.values())
    [-0.5, -0.25]
    """

    def __init__(
        self,
        space: dict[str, Any] | None = None,
        metric: str | list[str] | None = None,
        mode: str | list[str] | None = None,
        points_to_evaluate: list[dict[str, Any]] | None = None,
        seed: int = 0,
        n_initial_points: int = 10,
        conditions: Mapping[str, Mapping[str, Any]] | None = None,
        **options: Any,
    ) -> None:
        if set(options) - set(_OPTIONS):
            unknown = sorted(set(options) - set(_OPTIONS))[0]
            raise AopError(f"SMACSearch: unknown option {unknown!r} (known: {', '.join(_OPTIONS)})")
        if int(n_initial_points) < 0:
            raise AopError(f"SMACSearch: n_initial_points must be >= 0, got {n_initial_points}")
        super().__init__(metric=metric, mode=_checked(mode))
        self._seed, self._n_initial_points = int(seed), int(n_initial_points)
        self._options = {**_OPTIONS, **options}
        self._points = [dict(p) for p in points_to_evaluate or []]  # Tune values, not suggested
        self._conditions = _plain_conditions(conditions or {})
        self._space: dict[str, Any] | None = None
        self._facade: Any = None  # SMAC's HPO facade, once the space is known
        self._pending: dict[str, TrialInfo] = {}
        if space is not None:
            self._start(space)

    @property
    def runhistory(self) -> RunHistory | None:
        """SMAC's run history: told, crashed and running trials (``None`` before a space)."""
        return None if self._facade is None else self._facade.runhistory

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        """Take the space, metric and mode from the ``Tuner``; ``False`` if it has a space."""
        if self._space is not None:
            return False
        self._metric, self._mode = metric or self._metric, _checked(mode) or self._mode
        self._start(config)
        return True

    def _start(self, space: dict[str, Any]) -> None:
        """Build the ConfigSpace space and SMAC, and complete and check the start points."""
        self._cs = config_space(space, seed=self._seed, conditions=self._conditions)
        self._when = _option_conditions(space, self._conditions)
        self._space = copy.deepcopy(space)
        self._facade = self._make_facade()
        rng = np.random.RandomState(self._seed)
        for index, point in enumerate(self._points):
            self._values(point, f"points_to_evaluate[{index}]", fill=rng)

    def _make_facade(self) -> HPO:
        logging.getLogger("smac").setLevel(logging.ERROR)
        options, cs, seed = self._options, self._cs, self._seed
        objectives = list(self._metric) if isinstance(self._metric, list) else None
        # HPO.get_model's forest, on one thread (joblib costs more than it saves here) and
        # without SMAC's cap of 2**20 leaves, for which scikit-learn allocates a million nodes
        # per tree: the trees grow to the same stopping rules, three times faster per ask
        model = RandomForest(cs, log_y=True, n_trees=options["n_trees"], ratio_features=1.0,
                             min_samples_split=2, min_samples_leaf=1, seed=seed, n_jobs=1,
                             max_leaf_nodes=None)  # fmt: skip
        with tempfile.TemporaryDirectory(prefix="aop-smac-") as tmp:
            several = {"objectives": objectives, "crash_cost": [math.inf] * len(objectives)
                       } if objectives else {}  # fmt: skip
            scenario = Scenario(cs, name="aop", output_directory=Path(tmp), deterministic=True,
                                n_trials=2**31 - 1, seed=seed, **several)  # fmt: skip
            return HPO(
                scenario, None, model=model, logging_level=False, overwrite=True,
                acquisition_maximizer=HPO.get_acquisition_maximizer(
                    scenario, challengers=options["challengers"],
                    local_search_iterations=options["local_search_iterations"]),
                initial_design=HPO.get_initial_design(
                    scenario, n_configs=self._n_initial_points, max_ratio=1.0),
                random_design=HPO.get_random_design(
                    scenario, probability=options["random_probability"]),
                intensifier=HPO.get_intensifier(scenario, max_config_calls=1),
                runhistory_encoder=RunHistoryLogScaledEncoder(
                    scenario, considered_states=[StatusType.SUCCESS]),
                config_selector=HPO.get_config_selector(
                    scenario, retrain_after=options["retrain_after"]),
                multi_objective_algorithm=ParEGO(scenario, seed=seed) if objectives else None,
            )  # fmt: skip

    # -- Tune values, ConfigSpace values, SMAC trials ------------------------------------------

    def _config(self, values: Any) -> dict[str, Any]:
        """The Tune configuration of ConfigSpace values (and the constants)."""
        assert self._space is not None
        config = {}
        for name, domain in self._space.items():
            if not isinstance(domain, Domain):
                config[name] = copy.deepcopy(domain)
            elif name in values and isinstance(domain, Categorical):
                config[name] = domain.categories[int(values[name])]
            elif name in values:
                config[name] = (int if isinstance(domain, Integer) else float)(values[name])
        return config

    def _values(
        self, params: dict[str, Any], where: str, fill: np.random.RandomState | None = None
    ) -> dict[str, Any]:
        """The ConfigSpace values of the active parameters' Tune values (inactive ones are
        ignored); ``where`` names them in an error. With ``fill``, a missing active parameter
        is drawn with it and set in ``params``."""
        assert self._space is not None
        values: dict[str, Any] = {}
        for name, hp in self._cs.items():  # parents before children (ConfigSpace's order)
            condition = self._when.get(name, {})
            if any(values.get(parent) not in options for parent, options in condition.items()):
                continue  # inactive
            if name not in params and fill is not None:
                params[name] = self._config({name: hp.sample_value(seed=fill)})[name]
            if name not in params:
                raise AopError(f"{where}: the searched parameter {name} is missing")
            domain, value = self._space[name], params[name]
            if isinstance(domain, Categorical):  # the option of the same type first: True, 1
                options = domain.categories
                same = [i for i, c in enumerate(options) if type(c) is type(value) and c == value]
                found = same + [i for i, c in enumerate(options) if c == value]
                if not found:
                    raise AopError(f"{where}.{name}: {value!r} is not one of {options!r}")
                values[name] = found[0]
            elif _number(value):
                whole = isinstance(domain, Integer) and float(value).is_integer()
                values[name] = int(value) if whole else float(value)
            if name not in values or not hp.legal_value(values[name]):
                high = domain.upper - 1 if isinstance(domain, Integer) else domain.upper
                raise AopError(f"{where}.{name}: {value!r} is outside [{domain.lower}, {high}]")
        return values

    def _trial(self, values: Any, seed: int | None = None) -> TrialInfo:
        """A SMAC trial of ConfigSpace values, with the search's one seed unless given.

        Its configuration is read back from its vector, as SMAC's own: ConfigSpace hashes a
        configuration by its text, and ``1`` and ``np.int64(1)`` would be two configurations.
        """
        vector = Configuration(self._cs, values=dict(values)).get_array()
        if seed is None:
            seed = next((key.seed for key in self._facade.runhistory), self._seed)
        return TrialInfo(Configuration(self._cs, vector=vector), seed=seed)

    def _value(self, value: Any) -> TrialValue:
        """SMAC's trial value of a metric (a list of one per objective): its cost, or a crash
        if it is not a finite number (any of them is not)."""
        if isinstance(self._mode, list):
            values = list(value) if isinstance(value, list | tuple) else []
            if len(values) != len(self._mode) or not all(
                _number(v) and math.isfinite(v) for v in values
            ):
                return TrialValue(cost=[math.inf] * len(self._mode), status=StatusType.CRASHED)
            return TrialValue(cost=[-float(v) if m == "max" else float(v)
                                    for v, m in zip(values, self._mode, strict=True)])  # fmt: skip
        if not _number(value) or not math.isfinite(value):
            return TrialValue(cost=math.inf, status=StatusType.CRASHED)
        return TrialValue(cost=-float(value) if self._mode == "max" else float(value))

    def _result_value(self, result: Mapping[str, Any]) -> Any:
        """The metric of a result, or the list of each metric's value for several objectives."""
        if isinstance(self._metric, list):
            return [result.get(m) for m in self._metric]
        return result.get(self._metric)

    # -- ask and tell --------------------------------------------------------------------------

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """Next configuration: a start point, else SMAC's ask; ``FINISHED`` when none is left."""
        if self._space is None:
            raise AopError(_NO_SPACE)
        if not self._metric or not self._mode:
            raise AopError("SMACSearch: metric and mode must be set (metric='acc', mode='max')")
        point = self._points.pop(0) if self._points else {}
        if point:
            info = self._trial(self._values(point, "points_to_evaluate"))
            self._facade.runhistory.add_running_trial(info)
        else:
            try:
                with warnings.catch_warnings():
                    # SMAC's local search logs the mean time of its steps: NumPy warns twice
                    # about a mean of none when every start is a local optimum already
                    warnings.filterwarnings("ignore", "Mean of empty slice", RuntimeWarning)
                    warnings.filterwarnings("ignore", "invalid value encountered in scalar divide",
                                            RuntimeWarning, "numpy")  # fmt: skip
                    info = self._facade.ask()
            except (StopIteration, ConfigurationSpaceExhaustedException):
                return Searcher.FINISHED
        self._pending[trial_id] = info
        # a start point keeps its own values (ConfigSpace rounds floats to 13 decimals)
        return {**self._config(info.config), **{n: point[n] for n in point if n in info.config}}

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        """Tell SMAC the trial's cost (the metric, negated for ``max``), or that it crashed."""
        info = self._pending.pop(trial_id, None)
        if info is not None:
            value = None if error or not result else self._result_value(result)
            self._facade.tell(info, self._value(value), save=False)

    def add_evaluated_point(
        self,
        parameters: dict[str, Any],
        value: float | list[float],
        error: bool = False,
        pruned: bool = False,
        intermediate_values: list[float] | None = None,
    ) -> None:
        """Tell SMAC a trial evaluated elsewhere (Ray Tune's signature): it joins the history.

        ``parameters`` holds the Tune value of every active searched parameter (a missing or
        outside one is an AopError naming it; constants and inactive parameters are ignored),
        ``value`` its metric (a list of one per objective for several); ``error``
        tells it as crashed. A pruned trial's value is told as is; ``intermediate_values`` are
        not used.
        """
        if self._space is None:
            raise AopError(_NO_SPACE)
        info = self._trial(self._values(parameters, "SMACSearch.add_evaluated_point"))
        self._facade.tell(info, self._value(None if error else value), save=False)

    # -- state ---------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """Settings, start points left, pending trials and SMAC's run history (JSON text)."""
        history = None
        if self._facade is not None:
            with tempfile.TemporaryDirectory(prefix="aop-smac-") as tmp:
                self._facade.runhistory.save(Path(tmp) / "runhistory.json")
                history = (Path(tmp) / "runhistory.json").read_text()
        return {
            "version": _STATE_VERSION, "metric": self._metric, "mode": self._mode,
            "seed": self._seed, "n_initial_points": self._n_initial_points,
            "options": dict(self._options), "space": copy.deepcopy(self._space),
            "conditions": copy.deepcopy(self._conditions),
            "points": copy.deepcopy(self._points), "runhistory": history,
            "pending": {trial_id: dict(info.config) for trial_id, info in self._pending.items()},
        }  # fmt: skip

    def set_state(self, state: dict[str, Any]) -> None:
        """Build a fresh SMAC and tell it the saved run history (see the module docstring)."""
        if state.get("version") not in (2, _STATE_VERSION):
            raise AopError(f"SMACSearch: unknown state version {state.get('version')!r}")
        self._metric, self._mode = state["metric"], state["mode"]
        self._conditions = _plain_conditions(state.get("conditions") or {})
        self._seed, self._n_initial_points = state["seed"], state["n_initial_points"]
        self._options, self._points = dict(state["options"]), [dict(p) for p in state["points"]]
        self._space, self._facade, self._pending = None, None, {}
        if state["space"] is None:
            return
        self._start(state["space"])
        saved = RunHistory()
        with tempfile.TemporaryDirectory(prefix="aop-smac-") as tmp:
            (Path(tmp) / "runhistory.json").write_text(state["runhistory"])
            saved.load(Path(tmp) / "runhistory.json", self._cs)
        for key, value in saved.items():
            info = self._trial(saved.get_config(key.config_id), seed=key.seed)
            if value.status == StatusType.RUNNING:
                self._facade.runhistory.add_running_trial(info)
            else:
                self._facade.tell(info, value, save=False)
        for trial_id, values in state["pending"].items():  # running trials of the history
            self._pending[trial_id] = self._trial(values)

    def save(self, checkpoint_path: str) -> None:
        """Pickle :meth:`get_state` to ``checkpoint_path``."""
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.get_state(), handle)

    def restore(self, checkpoint_path: str) -> None:
        """Load a state saved by :meth:`save` and continue the search from it."""
        try:
            with open(checkpoint_path, "rb") as handle:
                state = pickle.load(handle)
        except (OSError, pickle.UnpicklingError, EOFError) as exc:
            message = f"{checkpoint_path}: cannot read the SMAC searcher state ({exc})"
            raise AopError(message) from exc
        self.set_state(state)

    def __getstate__(self) -> dict[str, Any]:
        return self.get_state()

    def __setstate__(self, state: dict[str, Any]) -> None:
        Searcher.__init__(self, metric=state["metric"], mode=state["mode"])
        self.set_state(state)


def _plain_conditions(conditions: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, list]]:
    """``{name: {parent: [value, ...]}}``: conditions as plain lists (a value alone, a tuple)."""
    return {
        str(name): {
            str(parent): list(values) if isinstance(values, list | tuple) else [values]
            for parent, values in condition.items()
        }
        for name, condition in conditions.items()
    }


def _checked(mode: str | list[str] | None) -> str | list[str] | None:
    """``mode`` (a list of them for several objectives), each ``min`` or ``max``."""
    for one in mode if isinstance(mode, list) else [mode]:
        if one not in (None, "min", "max"):
            raise AopError(f"SMACSearch: mode must be 'min' or 'max', got {one!r}")
    return list(mode) if isinstance(mode, list) else mode


def _number(value: Any) -> bool:
    """Whether ``value`` is a real number (a bool is not)."""
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(value, bool)
