"""Searcher registry: one small factory per name, each returning a Ray Tune searcher.

``gp``
    Optuna ``GPSampler`` (Matern 5/2 ARD Gaussian process, log expected improvement) driven by Ray
    Tune's ``OptunaSearch``. With several trials running at once the sampler conditions on the
    running trials' parameters (q-batch log EI, Optuna's constant-liar equivalent for GPs), so
    parallel workers do not receive duplicate suggestions.
``tpe``
    Hyperopt's tree-structured Parzen estimator through ``HyperOptSearch``.
``random``
    Optuna ``RandomSampler`` through ``OptunaSearch`` (seeded, no start point).

Every searcher maximises ``ipq``, is seeded, and (except ``random``) first evaluates the paper's
start point: every searched parameter at 0, once per model. Add a searcher with::

    @register_searcher("name")
    def _make(request: SearcherRequest) -> Searcher: ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray.tune.search import ConcurrencyLimiter, Searcher

from aop.config import SearchSpace
from aop.errors import AopError

METRIC = "ipq"
MODE = "max"


@dataclass
class SearcherRequest:
    """What a searcher factory receives.

    Attributes
    ----------
    space : SearchSpace
        Searched ranges and model choice (``space.models`` must be set).
    seed : int
        Random seed of the sampler.
    start_points : list of dict
        Configurations to evaluate first, in order (model + searched parameters).
    n_startup_trials : int
        Random trials before the surrogate model takes over (model-based searchers).
    """

    space: SearchSpace
    seed: int = 0
    start_points: list[dict[str, Any]] = field(default_factory=list)
    n_startup_trials: int = 10


SearcherFactory = Callable[[SearcherRequest], Searcher]
_SEARCHERS: dict[str, SearcherFactory] = {}


def register_searcher(name: str) -> Callable[[SearcherFactory], SearcherFactory]:
    """Decorator that registers a searcher factory under ``name``."""

    def decorator(factory: SearcherFactory) -> SearcherFactory:
        _SEARCHERS[name] = factory
        return factory

    return decorator


def available_searchers() -> list[str]:
    """Registered searcher names."""
    return sorted(_SEARCHERS)


def start_points(space: SearchSpace) -> list[dict[str, Any]]:
    """The paper's start point, all searched parameters 0, once for each model."""
    return [{"model": model, **space.zeros()} for model in space.models or []]


def optuna_distributions(space: SearchSpace) -> dict[str, Any]:
    """The search space as Optuna distributions: categorical model, int and float parameters."""
    import optuna

    dists: dict[str, Any] = {"model": optuna.distributions.CategoricalDistribution(space.models)}
    for name, (kind, low, high) in space.ranges.items():
        if kind is int:
            dists[name] = optuna.distributions.IntDistribution(int(low), int(high))
        else:
            dists[name] = optuna.distributions.FloatDistribution(float(low), float(high))
    return dists


def make_searcher(
    name: str,
    space: SearchSpace,
    *,
    seed: int = 0,
    concurrency: int = 1,
    start_at_zeros: bool = True,
    n_startup_trials: int = 10,
) -> Searcher:
    """Build the searcher ``name``, limited to ``concurrency`` pending suggestions.

    Parameters
    ----------
    name : str
        A registered searcher (see :func:`available_searchers`).
    space : SearchSpace
        With ``space.models`` set.
    seed : int
        Sampler seed.
    concurrency : int
        Maximum number of trials running at once.
    start_at_zeros : bool
        Evaluate the all-zero start point of every model first.
    n_startup_trials : int
        Random trials before a model-based searcher starts modelling.

    Returns
    -------
    ray.tune.search.Searcher
    """
    if name not in _SEARCHERS:
        raise AopError(
            f"search.searcher: unknown searcher {name!r} "
            f"(known: {', '.join(available_searchers())})"
        )
    if not space.models:
        raise AopError("search space: no model to choose from")
    request = SearcherRequest(
        space=space,
        seed=seed,
        start_points=start_points(space) if start_at_zeros else [],
        n_startup_trials=n_startup_trials,
    )
    return ConcurrencyLimiter(_SEARCHERS[name](request), max_concurrent=concurrency)


def _optuna_search(request: SearcherRequest, sampler: Any) -> Searcher:
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(
        space=optuna_distributions(request.space),
        metric=METRIC,
        mode=MODE,
        sampler=sampler,
        points_to_evaluate=[dict(p) for p in request.start_points] or None,
    )


@register_searcher("gp")
def _gp(request: SearcherRequest) -> Searcher:
    import optuna

    sampler = optuna.samplers.GPSampler(
        seed=request.seed,
        n_startup_trials=request.n_startup_trials,
        deterministic_objective=False,
        independent_sampler=optuna.samplers.RandomSampler(seed=request.seed),
        warn_independent_sampling=False,
    )
    return _optuna_search(request, sampler)


@register_searcher("random")
def _random(request: SearcherRequest) -> Searcher:
    import optuna

    return _optuna_search(request, optuna.samplers.RandomSampler(seed=request.seed))


@register_searcher("tpe")
def _tpe(request: SearcherRequest) -> Searcher:
    from hyperopt import hp
    from ray.tune.search.hyperopt import HyperOptSearch

    space: dict[str, Any] = {"model": hp.choice("model", list(request.space.models or []))}
    for name, (kind, low, high) in request.space.ranges.items():
        if kind is int:
            space[name] = hp.uniformint(name, int(low), int(high))
        else:
            space[name] = hp.uniform(name, float(low), float(high))
    return HyperOptSearch(
        space=space,
        metric=METRIC,
        mode=MODE,
        points_to_evaluate=[dict(p) for p in request.start_points] or None,
        n_initial_points=request.n_startup_trials,
        random_state_seed=request.seed,
    )
