"""``SMACSearch``: SMAC3's random forest + expected improvement as a Ray Tune searcher.

SMAC3's ``HyperparameterOptimizationFacade`` recipe (a random forest surrogate on log-scaled
costs, log expected improvement maximised by local and sorted random search, a Sobol initial
design, one in five configurations drawn at random) driven through its ask/tell interface, so
that Ray Tune runs the trials.

Conventions fixed here:

- The search space is a Ray Tune param space: ``tune.choice``, ``tune.randint``,
  ``tune.lograndint``, ``tune.qrandint``, ``tune.uniform``, ``tune.loguniform``,
  ``tune.quniform``, ``tune.qloguniform``, ``tune.randn``, ``tune.qrandn`` and constants, in
  nested dicts if wanted. It is converted to a ConfigSpace space: a choice becomes a categorical
  over the option indices (so options may be any object), a quantized domain an integer over its
  grid indices (so two SMAC configurations never map to one Tune configuration), Ray's
  exclusive upper bounds become ConfigSpace's inclusive ones, and a normal domain is cut at 4
  standard deviations. Constants are passed through unchanged.
- Every trial is one evaluation (a deterministic scenario, one call per configuration), so the
  intensifier never asks for a configuration twice; pending trials count as evaluated when new
  configurations are chosen, so concurrent trials get distinct configurations.
- SMAC minimises a cost: the cost is the metric, negated for ``mode="max"``. A trial that errors,
  or ends without a finite metric, is told as ``StatusType.CRASHED``: SMAC never suggests it
  again, and the surrogate is fitted on successful trials only.
- ``points_to_evaluate`` are suggested first, in order, and told to SMAC as trials (missing
  searched keys are drawn from the space with the searcher's seed).
- The state is the searcher's settings and the log of its asks and tells. ``restore`` replays
  the log on a new SMAC instance with the same seed, which brings SMAC back to the same state,
  so the next suggestions are the ones the uninterrupted searcher would make. Should a replayed
  ask differ (another SMAC version), the restored SMAC is given the told and pending trials as
  its history instead: it continues from them and never repeats them.
- SMAC writes its scenario to disk when it starts: that happens in a temporary folder, removed
  at once; nothing else is written.
"""

from __future__ import annotations

import copy
import logging
import math
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ray.tune.search import Searcher
from ray.tune.search.sample import Categorical, Domain, Float, Integer, Normal, Quantized
from ray.tune.search.variant_generator import parse_spec_vars

from aop.errors import AopError

__all__ = ["SMACSearch", "config_space"]

logger = logging.getLogger(__name__)

_STATE_VERSION = 1
# options of SMAC's components a caller may change, with SMAC's defaults or ours (see docstring)
_OPTIONS: dict[str, Any] = {
    "retrain_after": 1,
    "n_trees": 10,
    "random_probability": 0.2,
    "challengers": 2000,
    "local_search_iterations": 10,
}
_NORMAL_CUT = 4.0
_MISSING = object()


@dataclass
class _Param:
    """One searched Tune domain and its ConfigSpace hyperparameter."""

    path: tuple
    name: str
    kind: str  # "choice" | "int" | "float" | "grid" (quantized: integer grid index k, value k * q)
    categories: list[Any] | None = None
    q: float | int | None = None
    integer: bool = False  # the Tune value is an int

    def decode(self, value: Any) -> Any:
        """The Tune value of a ConfigSpace value."""
        if self.kind == "choice":
            return self.categories[int(value)]
        if self.kind == "grid":
            out = int(value) * self.q
            return int(out) if self.integer else float(out)
        return int(value) if self.kind == "int" else float(value)

    def encode(self, value: Any, hp: Any, where: str) -> Any:
        """The ConfigSpace value of a Tune value; ``where`` names it in an error."""
        if self.kind == "choice":
            for index, option in enumerate(self.categories):
                if type(option) is type(value) and option == value:
                    return index
            for index, option in enumerate(self.categories):
                if option == value:
                    return index
            raise AopError(f"{where}: {value!r} is not one of the choices {self.categories!r}")
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise AopError(f"{where}: {value!r} is not a number")
        if self.kind == "grid":
            encoded: Any = int(round(float(value) / float(self.q)))
        elif self.kind == "int":
            encoded = int(round(float(value)))
        else:
            encoded = float(value)
        if not hp.lower <= encoded <= hp.upper:
            low, high = self.decode(hp.lower), self.decode(hp.upper)
            raise AopError(f"{where}: {value!r} is outside [{low}, {high}]")
        return encoded


def _hyperparameter(name: str, path: tuple, domain: Domain) -> tuple[_Param, Any]:
    """Convert one Tune domain to a ConfigSpace hyperparameter."""
    from ConfigSpace import (
        CategoricalHyperparameter,
        NormalFloatHyperparameter,
        NormalIntegerHyperparameter,
        UniformFloatHyperparameter,
        UniformIntegerHyperparameter,
    )

    sampler = domain.get_sampler()
    if isinstance(domain, Categorical):
        categories = list(domain.categories)
        if not categories:
            raise AopError(f"search space: {name}: tune.choice of no option")
        param = _Param(path, name, "choice", categories=categories)
        return param, CategoricalHyperparameter(name, list(range(len(categories))))
    if not isinstance(domain, (Integer, Float)):
        raise AopError(f"search space: {name}: {type(domain).__name__} domains cannot be searched")
    q = None
    if isinstance(sampler, Quantized):
        q, sampler = sampler.q, sampler.get_sampler()
    kind = type(sampler).__name__.lstrip("_")  # Uniform | LogUniform | Normal
    log = kind == "LogUniform"
    integer = isinstance(domain, Integer)
    if kind == "Normal" or isinstance(sampler, Normal):
        mean, sd = float(sampler.mean), float(sampler.sd)
        low = domain.lower if np.isfinite(domain.lower) else mean - _NORMAL_CUT * sd
        high = domain.upper if np.isfinite(domain.upper) else mean + _NORMAL_CUT * sd
        if q is not None:
            k_low, k_high = math.ceil(low / q), math.floor(high / q)
            param = _Param(path, name, "grid", q=q, integer=integer)
            return param, NormalIntegerHyperparameter(
                name, mu=mean / q, sigma=sd / q, lower=k_low, upper=k_high
            )
        if integer:
            raise AopError(f"search space: {name}: a normal integer domain needs a quantization")
        return _Param(path, name, "float"), NormalFloatHyperparameter(
            name, mu=mean, sigma=sd, lower=low, upper=high
        )
    if kind not in ("Uniform", "LogUniform"):
        raise AopError(f"search space: {name}: the {kind} sampler is not supported")
    low, high = domain.lower, domain.upper
    if q is not None:
        # the grid indices Ray's Quantized sampler draws from (upper exclusive for integers, q=1)
        k_low = math.ceil(low / q - 1e-9)
        k_high = math.floor(high / q + 1e-9) - (1 if integer and q == 1 else 0)
        if k_high < k_low:
            raise AopError(f"search space: {name}: no multiple of q={q} in [{low}, {high}]")
        param = _Param(path, name, "grid", q=q, integer=integer)
        if k_high == k_low:
            return param, CategoricalHyperparameter(name, [k_low])
        return param, UniformIntegerHyperparameter(name, k_low, k_high, log=log)
    if integer:
        high = high - 1  # Tune's randint and lograndint exclude the upper bound
        if high < low:
            raise AopError(f"search space: {name}: empty integer range [{low}, {high + 1})")
        if high == low:
            return _Param(path, name, "int"), CategoricalHyperparameter(name, [int(low)])
        return _Param(path, name, "int"), UniformIntegerHyperparameter(name, low, high, log=log)
    if not low < high:
        raise AopError(f"search space: {name}: empty range [{low}, {high}]")
    return _Param(path, name, "float"), UniformFloatHyperparameter(name, low, high, log=log)


def config_space(space: dict[str, Any], seed: int = 0) -> tuple[Any, list[_Param]]:
    """Convert a Ray Tune param space to a ConfigSpace space.

    Parameters
    ----------
    space : dict
        Tune domains and constants, possibly nested (a nested key is named ``outer/inner``).
    seed : int
        Seed of the ConfigSpace space.

    Returns
    -------
    ConfigSpace.ConfigurationSpace
        One hyperparameter per searched domain.
    list of _Param
        How each hyperparameter maps back to its Tune value.

    Raises
    ------
    AopError
        On a grid search, a ``tune.sample_from`` or an empty range (the message names the key).

    Examples
    --------
    >>> from ray import tune
    >>> cs, params = config_space({"lr": tune.loguniform(1e-4, 1e-1), "epochs": 10})
    >>> [p.name for p in params], cs["lr"].log
    (['lr'], True)
    """
    from ConfigSpace import ConfigurationSpace

    if not isinstance(space, dict):
        raise AopError(f"search space: expected a dict of Tune domains, got {type(space).__name__}")
    _, domain_vars, grid_vars = parse_spec_vars(space)
    if grid_vars:
        name = "/".join(map(str, grid_vars[0][0]))
        raise AopError(f"search space: {name}: tune.grid_search cannot be searched by SMAC")
    cs = ConfigurationSpace(seed=seed)
    params = []
    for path, domain in domain_vars:
        name = "/".join(map(str, path))
        if domain.is_function():
            raise AopError(f"search space: {name}: tune.sample_from cannot be searched by SMAC")
        param, hp = _hyperparameter(name, path, domain)
        cs.add(hp)
        params.append(param)
    return cs, params


def _assign(config: Any, path: tuple, value: Any) -> None:
    for key in path[:-1]:
        config = config[key]
    config[path[-1]] = value


def _hash_independent_local_search(maximizer: Any) -> None:
    """Make SMAC's local search start from its points in an order that is the same in every process.

    SMAC 2.4 deduplicates the local search's start points through a ``set`` of configurations,
    whose order follows Python's per-process string hash: one seed gave other suggestions under
    another ``PYTHONHASHSEED``, so a driver restarted by ``aop resume`` could not replay the
    searcher's ask log. The start points are sorted by their vector values instead.
    """
    local = getattr(maximizer, "_local_search", None)
    original = getattr(local, "_get_initial_points", None)
    if original is None:  # another SMAC layout: nothing to fix here
        return

    def initial_points(*args: Any, **kwargs: Any) -> list[Any]:
        points = original(*args, **kwargs)
        return sorted(points, key=lambda c: tuple(np.nan_to_num(c.get_array(), nan=-1.0)))

    local._get_initial_points = initial_points


class SMACSearch(Searcher):
    """SMAC3 (random forest + expected improvement) as a Ray Tune searcher.

    Parameters
    ----------
    space : dict, optional
        Ray Tune param space (domains and constants). Leave it out to take ``param_space`` from
        the ``Tuner`` (through :meth:`set_search_properties`).
    metric : str, optional
        The reported metric to optimise.
    mode : {"min", "max"}, optional
        Minimise or maximise ``metric``.
    points_to_evaluate : list of dict, optional
        Configurations suggested first, in order (missing searched keys are drawn at random).
    seed : int
        Seed of SMAC (initial design, random forest, acquisition maximiser): the same seed and
        the same results give the same suggestions.
    n_initial_points : int
        Size of SMAC's Sobol initial design, suggested before the surrogate takes over.
    **kwargs
        Options of SMAC's components: ``retrain_after`` (configurations per surrogate fit, 1),
        ``n_trees`` (10), ``random_probability`` (share of random configurations, 0.2),
        ``challengers`` (random configurations scored per ask, 2000) and
        ``local_search_iterations`` (10).

    Examples
    --------
    >>> from ray import tune
    >>> space = {"model": tune.choice(["a", "b"]), "lr": tune.loguniform(1e-4, 1e-1)}
    >>> searcher = SMACSearch(space, metric="acc", mode="max", seed=1, n_initial_points=2)
    >>> config = searcher.suggest("t1")
    >>> sorted(config)
    ['lr', 'model']
    >>> searcher.on_trial_complete("t1", {"acc": 0.5})
    """

    def __init__(
        self,
        space: dict[str, Any] | None = None,
        metric: str | None = None,
        mode: str | None = None,
        points_to_evaluate: list[dict[str, Any]] | None = None,
        seed: int = 0,
        n_initial_points: int = 10,
        **kwargs: Any,
    ) -> None:
        if mode not in (None, "min", "max"):
            raise AopError(f"SMACSearch: mode must be 'min' or 'max', got {mode!r}")
        unknown = sorted(set(kwargs) - set(_OPTIONS))
        if unknown:
            raise AopError(
                f"SMACSearch: unknown option {unknown[0]!r} (known: {', '.join(_OPTIONS)})"
            )
        if int(n_initial_points) < 0:
            raise AopError(f"SMACSearch: n_initial_points must be >= 0, got {n_initial_points}")
        super().__init__(metric=metric, mode=mode)
        self._seed = int(seed)
        self._n_initial_points = int(n_initial_points)
        self._options = {**_OPTIONS, **kwargs}
        self._points_given = [dict(p) for p in points_to_evaluate or []]
        self._space: dict[str, Any] | None = None
        self._log: list[tuple] = []  # ("ask" | "point", trial_id, values, seed) and ("tell", ...)
        self._reset_runtime()
        if space is not None:
            self._set_space(space)

    # -- construction --------------------------------------------------------------------------

    def _reset_runtime(self) -> None:
        self._facade: Any = None
        self._cs: Any = None
        self._params: list[_Param] = []
        self._points: list[dict[str, Any]] = []  # ConfigSpace values, not yet suggested
        self._pending: dict[str, Any] = {}  # trial_id -> SMAC TrialInfo
        self._seen: set[tuple] = set()
        self._finished = False

    def _set_space(self, space: dict[str, Any]) -> None:
        self._space = copy.deepcopy(space)
        self._cs, self._params = config_space(self._space, seed=self._seed)
        self._facade = self._make_facade()
        rng = np.random.RandomState(self._seed)
        self._points = [self._point_values(p, i, rng) for i, p in enumerate(self._points_given)]

    def _make_facade(self) -> Any:
        from smac import HyperparameterOptimizationFacade as HPO
        from smac import Scenario
        from smac.model.random_forest import RandomForest
        from smac.runhistory.encoder import RunHistoryLogScaledEncoder
        from smac.runhistory.enumerations import StatusType

        options = self._options
        logging.getLogger("smac").setLevel(logging.ERROR)
        with tempfile.TemporaryDirectory(prefix="aop-smac-") as tmp:
            scenario = Scenario(
                self._cs,
                name="aop",
                output_directory=Path(tmp),
                deterministic=True,
                n_trials=2**31 - 1,
                seed=self._seed,
            )
            facade = HPO(
                scenario,
                target_function=None,
                model=RandomForest(
                    self._cs,
                    log_y=True,
                    n_trees=int(options["n_trees"]),
                    ratio_features=1.0,
                    min_samples_split=2,
                    min_samples_leaf=1,
                    seed=self._seed,
                    n_jobs=1,  # joblib threads cost more than they save on small forests
                    # SMAC's default (2**20) has scikit-learn allocate a million nodes per tree
                    # (~90 ms each, most of an ask); without the cap the trees grow depth-first
                    # to the same stopping rules (pure or 2-sample leaves), 10x faster per ask
                    max_leaf_nodes=None,
                ),
                acquisition_maximizer=HPO.get_acquisition_maximizer(
                    scenario,
                    challengers=int(options["challengers"]),
                    local_search_iterations=int(options["local_search_iterations"]),
                ),
                initial_design=HPO.get_initial_design(
                    scenario, n_configs=self._n_initial_points, max_ratio=1.0
                ),
                random_design=HPO.get_random_design(
                    scenario, probability=float(options["random_probability"])
                ),
                intensifier=HPO.get_intensifier(scenario, max_config_calls=1),
                runhistory_encoder=RunHistoryLogScaledEncoder(
                    scenario, considered_states=[StatusType.SUCCESS]
                ),
                config_selector=HPO.get_config_selector(
                    scenario, retrain_after=int(options["retrain_after"])
                ),
                logging_level=False,
                overwrite=True,
            )
        _hash_independent_local_search(facade._acquisition_maximizer)
        return facade

    def _point_values(
        self, point: dict[str, Any], index: int, rng: np.random.RandomState
    ) -> dict[str, Any]:
        """ConfigSpace values of a start point; missing keys drawn with ``rng``."""
        values = {}
        for param in self._params:
            hp = self._cs[param.name]
            node: Any = point
            for key in param.path:
                if isinstance(node, dict) and key in node:
                    node = node[key]
                else:
                    node = point.get(param.name, _MISSING)  # also accept a flat "outer/inner"
                    break
            if node is _MISSING:
                values[param.name] = hp.sample_value(seed=rng)
            else:
                where = f"points_to_evaluate[{index}].{param.name}"
                values[param.name] = param.encode(node, hp, where)
        return values

    def set_search_properties(
        self, metric: str | None, mode: str | None, config: dict, **spec: Any
    ) -> bool:
        """Take the search space (and metric and mode) from the ``Tuner``.

        Returns ``False`` when the searcher already has a space (Tune then reports the clash).
        """
        if self._space is not None:
            return False
        if mode not in (None, "min", "max"):
            raise AopError(f"SMACSearch: mode must be 'min' or 'max', got {mode!r}")
        if metric:
            self._metric = metric
        if mode:
            self._mode = mode
        self._set_space(config)
        return True

    # -- ask and tell --------------------------------------------------------------------------

    def _config(self, values: dict[str, Any]) -> dict[str, Any]:
        """The Tune configuration (constants included) of ConfigSpace values."""
        config = copy.deepcopy(self._space)
        for param in self._params:
            _assign(config, param.path, param.decode(values[param.name]))
        return config

    @staticmethod
    def _key(values: dict[str, Any]) -> tuple:
        plain = {k: v.item() if hasattr(v, "item") else v for k, v in values.items()}
        return tuple(sorted((k, repr(v)) for k, v in plain.items()))

    def _trial_seed(self) -> int:
        """The seed SMAC gives every trial of this (deterministic) search."""
        for info in self._facade.runhistory.keys():
            return int(info.seed)
        return self._seed

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        """Next configuration: a start point, else SMAC's ask; ``FINISHED`` when none is left."""
        if self._space is None:
            raise AopError("SMACSearch: no search space (give space= or a Tuner param_space)")
        if not self._metric or not self._mode:
            raise AopError("SMACSearch: metric and mode must be set (metric='acc', mode='max')")
        if self._finished:
            return Searcher.FINISHED
        if self._points:
            values = self._points.pop(0)
            entry = ("point", trial_id, values, self._trial_seed())
        else:
            entry = self._ask(trial_id)
            if entry is None:
                self._finished = True
                return Searcher.FINISHED
        self._apply(entry)
        self._log.append(entry)
        return self._config(entry[2])

    def _ask(self, trial_id: str) -> tuple | None:
        from smac.main.exceptions import ConfigurationSpaceExhaustedException

        try:
            info = self._facade.ask()
        except (StopIteration, ConfigurationSpaceExhaustedException):
            return None
        self._pending[trial_id] = info
        return ("ask", trial_id, dict(info.config), int(info.seed))

    def _apply(self, entry: tuple) -> None:
        """Bring SMAC and the bookkeeping up to date with one log entry (already asked)."""
        from ConfigSpace import Configuration
        from smac.runhistory.dataclasses import TrialInfo

        action, trial_id = entry[0], entry[1]
        if action == "point":
            values, seed = entry[2], entry[3]
            info = TrialInfo(Configuration(self._cs, values=values), seed=seed)
            self._facade.runhistory.add_running_trial(info)
            self._pending[trial_id] = info
        if action in ("point", "ask"):
            key = self._key(entry[2])
            if key in self._seen:  # SMAC never asks twice for one trial (one seed per config)
                raise RuntimeError(f"SMACSearch: configuration suggested twice: {entry[2]}")
            self._seen.add(key)
        if action == "tell":
            self._tell(trial_id, entry[2])

    def _tell(self, trial_id: str, cost: float | None) -> None:
        from smac.runhistory.dataclasses import TrialValue
        from smac.runhistory.enumerations import StatusType

        info = self._pending.pop(trial_id)
        if cost is None:
            value = TrialValue(cost=float("inf"), status=StatusType.CRASHED)
        else:
            value = TrialValue(cost=float(cost), status=StatusType.SUCCESS)
        self._facade.tell(info, value, save=False)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        """Tell SMAC the trial's cost (the metric, negated for ``max``), or that it crashed."""
        if trial_id not in self._pending:
            return
        value = None if (error or not result) else result.get(self._metric)
        cost: float | None = None
        if isinstance(value, (int, float, np.integer, np.floating)) and np.isfinite(value):
            cost = -float(value) if self._mode == "max" else float(value)
        entry = ("tell", trial_id, cost)
        self._apply(entry)
        self._log.append(entry)

    # -- state ---------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """Settings and the log of asks and tells: everything :meth:`set_state` needs."""
        return {
            "version": _STATE_VERSION,
            "metric": self._metric,
            "mode": self._mode,
            "seed": self._seed,
            "n_initial_points": self._n_initial_points,
            "options": dict(self._options),
            "points": copy.deepcopy(self._points_given),
            "space": copy.deepcopy(self._space),
            "log": copy.deepcopy(self._log),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        """Rebuild SMAC and bring it to the saved state (see the module docstring)."""
        if state.get("version") != _STATE_VERSION:
            raise AopError(f"SMACSearch: unknown state version {state.get('version')!r}")
        self._metric, self._mode = state["metric"], state["mode"]
        self._seed, self._n_initial_points = state["seed"], state["n_initial_points"]
        self._options, self._points_given = dict(state["options"]), list(state["points"])
        self._log = list(state["log"])
        self._space = None
        self._reset_runtime()
        if state["space"] is None:
            return
        self._set_space(state["space"])
        if not self._replay():
            logger.warning("SMACSearch: SMAC does not replay its log; restoring from history")
            self._set_space(state["space"])
            self._load_history()

    def _replay(self) -> bool:
        """Redo every logged ask and tell on the fresh SMAC; ``False`` if an ask differs."""
        for entry in self._log:
            if entry[0] == "ask":
                again = self._ask(entry[1])
                if again is None or self._key(again[2]) != self._key(entry[2]):
                    return False
            elif entry[0] == "point":
                self._points.pop(0)
            self._apply(entry)
        return True

    def _load_history(self) -> None:
        """Give the fresh SMAC the logged trials as its history: told ones and pending ones."""
        from ConfigSpace import Configuration
        from smac.runhistory.dataclasses import TrialInfo

        for entry in self._log:
            if entry[0] in ("ask", "point"):
                if entry[0] == "point":
                    self._points.pop(0)
                info = TrialInfo(Configuration(self._cs, values=entry[2]), seed=entry[3])
                self._facade.runhistory.add_running_trial(info)
                self._pending[entry[1]] = info
                self._seen.add(self._key(entry[2]))
            else:
                self._tell(entry[1], entry[2])

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
