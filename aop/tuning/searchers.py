"""Searcher registry: one small factory per name, each returning a Ray Tune searcher.

``gp``
    Optuna ``GPSampler`` (Matern 5/2 ARD Gaussian process, log expected improvement) driven by Ray
    Tune's ``OptunaSearch``. With several trials running at once the sampler conditions on the
    running trials' parameters (q-batch log EI, Optuna's constant-liar equivalent for GPs), so
    parallel workers do not receive duplicate suggestions.
``tpe``
    Hyperopt's tree-structured Parzen estimator through ``HyperOptSearch``.
``smac``
    SMAC3's random forest with expected improvement (the paper's classifier BO), through
    :class:`aop.tuning.smac_search.SMACSearch`.
``random``
    Optuna ``RandomSampler`` through ``OptunaSearch`` (seeded, no start point).
``nsga2``
    Optuna ``NSGAIISampler`` (a genetic algorithm: non-dominated sorting and crowding distance)
    through ``OptunaSearch``, for studies with several objectives; its first generation of
    ``n_startup_trials`` configurations is random, like the model-based searchers' startup.
    Its generations hold its own trials only (a told trial never becomes a parent), so a warm
    start with it is refused.

A searcher receives the study's :class:`aop.tuning.space.SearchSpace` as Ray Tune domains and
Ray converts them for its library. It optimises the study kind's metric in its mode, is seeded,
and (except ``random``) first evaluates the kind's start points.

Conditional parameters (``when:`` in the space, see :mod:`aop.tuning.space`): every suggestion
holds the active parameters only, so the trainable and the trial records never see an inactive
one. A space without conditions keeps the searchers above exactly as they are.

``gp`` and ``random``
    A define-by-run function of the space (:class:`aop.tuning.conditional_search.
    ConditionalOptunaSearch`) asks Optuna for the active parameters, parents first; start
    points are enqueued trials and ``add_evaluated_point`` (top-ups) tells Optuna each trial
    with the distributions of its own parameters. ``GPSampler`` models the intersection search
    space: the parameters that every finished trial has with the same distribution (Optuna's
    ``IntersectionSearchSpace``, skipping single-valued ones). Its Gaussian process fits and
    proposes those (the unconditional parameters, e.g. ``design``) and every other parameter
    is drawn by its independent sampler, here a seeded ``RandomSampler``: the parameters of
    one branch are searched at random while the GP chooses between branches and tunes what
    all branches share.
``tpe``
    Hyperopt samples the flat space (every searched parameter, as without conditions) and the
    suggestion leaves out the inactive values (:class:`aop.tuning.conditional_search.
    ActiveHyperOptSearch`). Hyperopt's nested ``hp.choice`` spaces are a tree: a parameter
    sits under one option of one choice, so a condition on several parents or several values
    would need copies of the parameter; the flat space takes every condition as it is. TPE
    fits one density per parameter over all trials: an inactive parameter's value has no
    effect on the objective, so it adds noise to the good/bad split of that parameter, not a
    bias. A start point is completed for hyperopt with seeded draws of its inactive parameters.
``smac``
    ConfigSpace conditions (``EqualsCondition``, ``InCondition``, ``AndConjunction`` for
    several parents): SMAC's configurations, run history, start points, told trials and saved
    state hold the active parameters only, and its random forest imputes the inactive ones.

Warm starts (``search.warm_start``, :mod:`aop.tuning.warm_start`) and top-ups tell a searcher
earlier trials with ``add_evaluated_point`` before its first suggestion. Optuna's samplers count
told trials among their ``n_startup_trials``; SMAC's Sobol initial design does not, so ``smac``
draws ``n_startup_trials`` minus the told trials. ``tpe`` cannot be told trials (Ray's
``HyperOptSearch`` has no ``add_evaluated_point``) and ``random`` ignores them: a warm start with
either is refused when the experiment loads (:func:`check_warm_start`).

Several objectives (``objectives`` in the experiment file, a Pareto front): the factory
receives ``metric`` and ``mode`` as lists, and the searcher is told each finished trial's values
of every objective. A searcher registered with ``multi_objective=True`` takes them; any other
is refused when the experiment loads (:func:`check_multi_objective`).

``gp``
    ``GPSampler`` fits one Gaussian process per objective and maximises the log expected
    hypervolume improvement (Optuna 4.4 and later).
``nsga2``
    ``NSGAIISampler`` ranks each generation by non-domination, then crowding distance.
``random``
    Draws as for one objective.
``smac``
    SMAC's ParEGO: before each suggestion the normalised costs are scalarised with random
    weights (an augmented Chebyshev norm), and the random forest and expected improvement
    work on that one cost, so the surrogate stays SMAC's forest.
``tpe``
    Refused: Ray's ``HyperOptSearch`` optimises one metric.

The Optuna searchers of a multi-objective study are always the define-by-run
:class:`aop.tuning.conditional_search.ConditionalOptunaSearch` (with or without conditions):
it tells Optuna a trial of several values, which Ray's ``add_evaluated_point`` cannot.

Add a searcher with::

    @register_searcher("name")
    def _make(request: SearcherRequest) -> Searcher: ...

and ``@register_searcher("name", no_warm_start="why")`` for one that learns nothing from told
trials; ``multi_objective=True`` for one that takes lists of metrics and modes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aop.errors import AopError
from aop.tuning.space import SearchSpace

if TYPE_CHECKING:
    from ray.tune.search import Searcher


@dataclass
class SearcherRequest:
    """What a searcher factory receives.

    Attributes
    ----------
    space : SearchSpace
        The searched domains (``space.domains()``) and constants.
    metric, mode : str or list of str
        The objective reported by the trainable and ``"max"`` or ``"min"``; lists of the same
        length for several objectives (a factory registered with ``multi_objective=True``).
    seed : int
        Random seed of the sampler.
    start_points : list of dict
        Configurations to evaluate first, in order (active searched parameters).
    n_startup_trials : int
        Random trials before the surrogate model takes over (model-based searchers), told
        trials included.
    told : int
        Trials the searcher will be told (``add_evaluated_point``) before its first suggestion:
        a factory whose library does not count them among its startup trials draws that many
        fewer.
    """

    space: SearchSpace
    metric: str | list[str]
    mode: str | list[str] = "max"
    seed: int = 0
    start_points: list[dict[str, Any]] = field(default_factory=list)
    n_startup_trials: int = 10
    told: int = 0


SearcherFactory = Callable[[SearcherRequest], "Searcher"]
_SEARCHERS: dict[str, SearcherFactory] = {}
#: ``{name: why}`` of the searchers that learn nothing from told trials.
_NO_WARM_START: dict[str, str] = {}
#: The searchers that optimise several objectives.
_MULTI_OBJECTIVE: set[str] = set()


def register_searcher(
    name: str, no_warm_start: str | None = None, multi_objective: bool = False
) -> Callable[[SearcherFactory], SearcherFactory]:
    """Decorator that registers a searcher factory under ``name``.

    ``no_warm_start`` says why the searcher learns nothing from trials told with
    ``add_evaluated_point``: a warm start with it is refused (:func:`check_warm_start`).
    ``multi_objective`` says that the factory takes lists of metrics and modes (see
    :class:`SearcherRequest`); a study with several objectives refuses any other searcher.
    """

    def decorator(factory: SearcherFactory) -> SearcherFactory:
        _SEARCHERS[name] = factory
        if no_warm_start:
            _NO_WARM_START[name] = no_warm_start
        else:
            _NO_WARM_START.pop(name, None)
        if multi_objective:
            _MULTI_OBJECTIVE.add(name)
        else:
            _MULTI_OBJECTIVE.discard(name)
        return factory

    return decorator


def available_searchers() -> list[str]:
    """Registered searcher names."""
    return sorted(_SEARCHERS)


def check_searcher(name: str, field_name: str = "search.searcher") -> None:
    """Raise an :class:`AopError` naming ``field_name`` unless ``name`` is registered."""
    if name not in _SEARCHERS:
        raise AopError(
            f"{field_name}: unknown searcher {name!r} (known: {', '.join(available_searchers())})"
        )


def check_warm_start(name: str, field_name: str = "search.warm_start") -> None:
    """Raise an :class:`AopError` naming ``field_name`` when ``name`` cannot be warm-started.

    >>> check_warm_start("gp")
    >>> check_warm_start("tpe")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    aop.errors.AopError: search.warm_start: the searcher 'tpe' cannot be warm-started: ...
    """
    if name in _NO_WARM_START:
        raise AopError(
            f"{field_name}: the searcher {name!r} cannot be warm-started: {_NO_WARM_START[name]}"
        )


def check_multi_objective(name: str, field_name: str = "search.searcher") -> None:
    """Raise an :class:`AopError` naming ``field_name`` unless ``name`` takes several objectives.

    >>> check_multi_objective("nsga2")
    >>> check_multi_objective("tpe")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    aop.errors.AopError: search.searcher: 'tpe' optimises one objective; a study with several ...
    """
    if name not in _MULTI_OBJECTIVE:
        raise AopError(
            f"{field_name}: {name!r} optimises one objective; a study with several objectives "
            f"needs one of {', '.join(sorted(_MULTI_OBJECTIVE))}"
        )


def optuna_distributions(space: SearchSpace) -> dict[str, Any]:
    """The searched domains as Optuna distributions, converted by Ray Tune's ``OptunaSearch``."""
    from ray.tune.search.optuna import OptunaSearch

    return dict(OptunaSearch.convert_search_space(space.domains()))


def make_searcher(
    name: str,
    space: SearchSpace,
    *,
    metric: str | Sequence[str],
    mode: str | Sequence[str] = "max",
    seed: int = 0,
    concurrency: int = 1,
    start_points: Sequence[dict[str, Any]] = (),
    n_startup_trials: int = 10,
    told: int = 0,
    scaled_stops: str | None = None,
) -> Searcher:
    """Build the searcher ``name``, limited to ``concurrency`` pending suggestions.

    Parameters
    ----------
    name : str
        A registered searcher (see :func:`available_searchers`).
    space : SearchSpace
        At least one searched parameter.
    metric, mode : str or sequence of str
        The objective and its direction; sequences for several objectives (a searcher
        registered with ``multi_objective=True``, see :func:`check_multi_objective`).
    seed : int
        Sampler seed.
    concurrency : int
        Maximum number of trials running at once.
    start_points : sequence of dict
        Configurations to evaluate first.
    n_startup_trials : int
        Random trials before a model-based searcher starts modelling.
    told : int
        Trials that will be told before the first suggestion (see :class:`SearcherRequest`).
    scaled_stops : str, optional
        A fidelity's result key (e.g. ``volumes``): the searcher is told a trial that an
        early-stopping scheduler stopped scaled to a whole trial
        (:class:`aop.tuning.stops.ScaledStops`); default: its last result.

    Returns
    -------
    ray.tune.search.Searcher
    """
    from ray.tune.search import ConcurrencyLimiter

    check_searcher(name)
    if not space.searched:
        raise AopError("search space: no searched parameter")
    if not isinstance(metric, str):
        check_multi_objective(name)
    request = SearcherRequest(
        space=space,
        metric=metric if isinstance(metric, str) else list(metric),
        mode=mode if isinstance(mode, str) else list(mode),
        seed=seed,
        start_points=[dict(p) for p in start_points],
        n_startup_trials=n_startup_trials,
        told=told,
    )
    if scaled_stops is not None:
        if not isinstance(metric, str):
            raise AopError("scaled_stops: a scheduler stops trials of one objective only")
        from aop.tuning.stops import ScaledStops

        return ScaledStops(_SEARCHERS[name](request), concurrency, attr=scaled_stops,
                           metric=metric)  # fmt: skip
    return ConcurrencyLimiter(_SEARCHERS[name](request), max_concurrent=concurrency)


def _optuna_search(request: SearcherRequest, sampler: Any) -> Searcher:
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    # "A new study created in memory" per search: the study's records and MLflow tell the rest
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if request.space.has_conditions or isinstance(request.metric, list):
        from aop.tuning.conditional_search import ConditionalOptunaSearch

        return ConditionalOptunaSearch(
            request.space,
            metric=request.metric,
            mode=request.mode,
            sampler=sampler,
            points_to_evaluate=request.start_points or None,
        )
    return OptunaSearch(
        space=OptunaSearch.convert_search_space(request.space.domains()),
        metric=request.metric,
        mode=request.mode,
        sampler=sampler,
        points_to_evaluate=request.start_points or None,
    )


@register_searcher("gp", multi_objective=True)
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


@register_searcher(
    "random",
    no_warm_start="random search draws without regard to earlier trials; use gp or smac",
    multi_objective=True,
)
def _random(request: SearcherRequest) -> Searcher:
    import optuna

    return _optuna_search(request, optuna.samplers.RandomSampler(seed=request.seed))


@register_searcher(
    "nsga2",
    no_warm_start="NSGA-II's generations hold its own trials: told trials never become parents; "
    "use gp or smac",
    multi_objective=True,
)
def _nsga2(request: SearcherRequest) -> Searcher:
    from aop.tuning.conditional_search import PicklableNSGAIISampler

    # a generation of n_startup_trials: a study of a few dozen trials evolves a few generations
    # (Optuna's default of 50 would leave such a study in its random first generation)
    sampler = PicklableNSGAIISampler(
        population_size=max(2, request.n_startup_trials), seed=request.seed
    )
    return _optuna_search(request, sampler)


@register_searcher(
    "tpe",
    no_warm_start="Ray's HyperOptSearch cannot be told earlier trials (no add_evaluated_point); "
    "use gp or smac",
)
def _tpe(request: SearcherRequest) -> Searcher:
    from ray.tune.search.hyperopt import HyperOptSearch

    if request.space.has_conditions:
        from aop.tuning.conditional_search import ActiveHyperOptSearch

        return ActiveHyperOptSearch(
            request.space,
            metric=request.metric,
            mode=request.mode,
            points_to_evaluate=request.start_points or None,
            n_initial_points=request.n_startup_trials,
            random_state_seed=request.seed,
        )
    return HyperOptSearch(
        space=HyperOptSearch.convert_search_space(request.space.domains()),
        metric=request.metric,
        mode=request.mode,
        points_to_evaluate=request.start_points or None,
        n_initial_points=request.n_startup_trials,
        random_state_seed=request.seed,
    )


@register_searcher("smac", multi_objective=True)
def _smac(request: SearcherRequest) -> Searcher:
    from aop.tuning.smac_search import SMACSearch

    return SMACSearch(
        space=request.space.domains(),
        metric=request.metric,
        mode=request.mode,
        points_to_evaluate=request.start_points or None,
        seed=request.seed,
        # SMAC's initial design is drawn whatever its run history holds: told trials replace
        # that many of its configurations, as they count among Optuna's startup trials
        n_initial_points=max(0, request.n_startup_trials - request.told),
        conditions=_searched_conditions(request.space),
    )


def _searched_conditions(space: SearchSpace) -> dict[str, dict[str, tuple[Any, ...]]]:
    """The conditions on searched parents: one on a constant holds (the space checked its value)."""
    out = {}
    for name, condition in space.conditions.items():
        kept = {parent: values for parent, values in condition.items()
                if parent not in space.fixed}  # fmt: skip
        if kept:
            out[name] = kept
    return out
