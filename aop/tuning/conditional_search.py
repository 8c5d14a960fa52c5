"""Ray Tune searchers over a search space with conditions (see :mod:`aop.tuning.space`).

:mod:`aop.tuning.searchers` builds these only for a space whose parameters have conditions; a
space without conditions keeps Ray Tune's own ``OptunaSearch`` and ``HyperOptSearch`` as they
are. This module imports Ray Tune, Optuna and hyperopt; :mod:`aop.tuning.searchers` imports it
when it builds a searcher, so that loading an experiment imports no Ray.

- :func:`suggest_active` is a define-by-run function of a space: it asks an Optuna trial for
  the active parameters only, in file order, so a parameter is asked for once its parents have
  values. :class:`ConditionalOptunaSearch` gives it to Ray Tune's ``OptunaSearch`` as
  ``functools.partial(suggest_active, space, distributions)``: a module-level function, so
  that the searcher pickles (``Tuner.restore``, ``OptunaSearch.save``).
- :class:`ActiveHyperOptSearch` samples hyperopt's flat space and suggests the active values.

A study with several objectives uses :class:`ConditionalOptunaSearch` whatever its space: its
:meth:`~ConditionalOptunaSearch.add_evaluated_point` tells Optuna a trial of several values
(Ray's own passes one value to ``optuna.trial.create_trial``). :class:`PicklableNSGAIISampler`
is Optuna's NSGA-II sampler that pickles, as Ray Tune's searcher state must.
"""

from __future__ import annotations

import functools
import threading
from typing import Any

import numpy as np
import optuna
from ray.tune.search.hyperopt import HyperOptSearch
from ray.tune.search.optuna import OptunaSearch

from aop.tuning.space import SearchSpace, check_point

__all__ = [
    "ActiveHyperOptSearch", "ConditionalOptunaSearch", "PicklableNSGAIISampler", "suggest_active",
]


class PicklableNSGAIISampler(optuna.samplers.NSGAIISampler):
    """Optuna's ``NSGAIISampler``, pickled without its thread lock (a fresh one on load).

    Ray Tune saves a searcher's state by pickling it (``OptunaSearch.save``), and Optuna's
    genetic-algorithm samplers hold a ``threading.Lock`` that does not pickle.
    """

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_thread_lock", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._thread_lock = threading.Lock()


def suggest_active(space: SearchSpace, distributions: dict[str, Any], trial: optuna.Trial) -> None:
    """Ask ``trial`` for the active searched parameters of ``space``, in file order.

    Parameters
    ----------
    space : SearchSpace
        The space and its conditions.
    distributions : dict
        ``{name: optuna distribution}`` of every searched parameter (what Ray Tune's
        ``OptunaSearch.convert_search_space`` makes of :meth:`SearchSpace.domains`).
    trial : optuna.Trial
        The trial (Ray Tune passes a wrapper that records each ``suggest_*`` value).
    """
    values: dict[str, Any] = {}
    for name in space.searched:
        if not space.is_active(name, values):
            continue
        dist = distributions[name]
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            values[name] = trial.suggest_categorical(name, dist.choices)
        elif isinstance(dist, optuna.distributions.IntDistribution):
            values[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step,
                                             log=dist.log)  # fmt: skip
        else:
            values[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step,
                                               log=dist.log)  # fmt: skip


class ConditionalOptunaSearch(OptunaSearch):
    """Ray Tune's ``OptunaSearch`` over a space with conditions (define-by-run).

    Each suggestion holds the active parameters only; start points (``points_to_evaluate``,
    active parameters only) are enqueued Optuna trials, whose values the define-by-run function
    receives. :meth:`add_evaluated_point` tells Optuna a trial with the distributions of its
    active parameters (Ray's own refuses a define-by-run space), with one value per objective
    for several objectives.

    Parameters
    ----------
    space : SearchSpace
        A space with conditions, or any space of a study with several objectives.
    metric, mode : str or list of str
        The objective and ``"max"`` or ``"min"``; lists for several objectives.
    sampler : optuna.samplers.BaseSampler
        The seeded sampler.
    points_to_evaluate : list of dict, optional
        Configurations to evaluate first.
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        metric: str | list[str],
        mode: str | list[str],
        sampler: Any,
        points_to_evaluate: list[dict[str, Any]] | None = None,
    ) -> None:
        self._search_space = space
        self._distributions = dict(OptunaSearch.convert_search_space(space.domains()))
        super().__init__(
            space=functools.partial(suggest_active, space, self._distributions),
            metric=metric,
            mode=mode,
            sampler=sampler,
            points_to_evaluate=points_to_evaluate,
        )

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """The next configuration: its active parameters, from the sampler or a start point."""
        if self._ot_study is not None and trial_id not in self._ot_trials:
            trial = self._ot_study.ask()
            # the sampler's model (GPSampler's fit and acquisition) runs here, not inside the
            # define-by-run call that Ray Tune times and warns about when it takes a second
            _ = trial.relative_params
            self._ot_trials[trial_id] = trial
        return super().suggest(trial_id)

    def add_evaluated_point(
        self,
        parameters: dict[str, Any],
        value: float | list[float],
        error: bool = False,
        pruned: bool = False,
        intermediate_values: list[float] | None = None,
    ) -> None:
        """Tell Optuna a trial evaluated elsewhere (Ray Tune's signature).

        ``parameters`` holds every active searched parameter (inactive ones, given or not,
        are ignored; a missing, unknown or outside one is an AopError naming it); ``value`` is
        a list of one value per objective when the search has several.
        """
        space = self._search_space
        active = space.active(parameters)
        point = {k: v for k, v in parameters.items() if k in active or k not in space.parameters}
        params = check_point(space, point, "add_evaluated_point")
        state = optuna.trial.TrialState.COMPLETE
        if error:
            state = optuna.trial.TrialState.FAIL
        elif pruned:
            state = optuna.trial.TrialState.PRUNED
        several = isinstance(value, list | tuple)
        trial = optuna.trial.create_trial(
            state=state,
            value=None if error or several else value,
            values=[float(v) for v in value] if several and not error else None,
            params=params,
            distributions={name: self._distributions[name] for name in params},
            intermediate_values=dict(enumerate(intermediate_values or [])) or None,
        )
        self._ot_study.add_trial(trial)


class ActiveHyperOptSearch(HyperOptSearch):
    """Ray Tune's ``HyperOptSearch`` on the flat space; suggestions hold the active values.

    hyperopt draws every searched parameter; :meth:`suggest` leaves out the inactive ones, so
    the trainable and the trial records see the active parameters only. A start point (active
    parameters only) is completed for hyperopt with a draw (seeded with
    ``random_state_seed``) for each inactive parameter, which the suggestion leaves out again.

    Parameters
    ----------
    space : SearchSpace
        A space with conditions.
    metric, mode : str
        The objective and ``"max"`` or ``"min"``.
    points_to_evaluate : list of dict, optional
        Configurations to evaluate first.
    n_initial_points : int
        Random trials before TPE models.
    random_state_seed : int
        Seed of hyperopt and of the draws that complete start points.
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        metric: str,
        mode: str,
        points_to_evaluate: list[dict[str, Any]] | None = None,
        n_initial_points: int = 20,
        random_state_seed: int | None = None,
    ) -> None:
        self._search_space = space
        domains = space.domains()
        rng = np.random.RandomState(random_state_seed)
        points = [
            {name: point[name] if name in point else domain.sample(random_state=rng)
             for name, domain in domains.items()}
            for point in points_to_evaluate or []
        ]  # fmt: skip
        super().__init__(
            space=HyperOptSearch.convert_search_space(domains),
            metric=metric,
            mode=mode,
            points_to_evaluate=points or None,
            n_initial_points=n_initial_points,
            random_state_seed=random_state_seed,
        )

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        """hyperopt's suggestion restricted to the active parameters."""
        config = super().suggest(trial_id)
        return self._search_space.active(config) if isinstance(config, dict) else config
