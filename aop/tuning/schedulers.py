"""Early stopping of poor trials: Ray Tune's ASHA, its state kept in the study folder.

A study's ``search.scheduler: {name: asha, grace_period, reduction_factor}`` stops the main
search's trials that fall behind, on the kind's **fidelity** (:class:`Fidelity`): the result key
that counts a trial's progress (``epoch`` of a classifier trial, ``volumes`` of a segmentation
trial) and the most a trial can reach. The rungs sit at ``grace_period``,
``grace_period * reduction_factor``, ... up to that maximum; a trial reaching a rung below the
best ``1 / reduction_factor`` of the trials recorded there stops (one bracket, asynchronous:
no trial waits for another).

- **The searcher learns from stopped trials.** Ray Tune calls the searcher's
  ``on_trial_complete`` with a stopped trial's last result, as for a finished one.
- **A stopped trial is a finished trial.** Its record and MLflow child run hold its last result
  and ``stopped_at`` (``{fidelity: value}``, see :func:`stopped_at`); a trial marks the last
  result of its natural end with ``final: True``, so a last result without it, under a
  scheduler, is a stop. The best trial of a study is one that ran to its end
  (:func:`aop.analysis.records.best_record`).
- **A stopped trial is told on the scale of a whole trial** where the kind asks for it
  (:attr:`aop.tuning.kinds.StudyKind.scaled_stops`, the segmentation kind): the searcher
  compares every trial it is told, and a mean over the first volumes is biased by how easy
  those volumes are. :class:`aop.tuning.stops.ScaledStops` scales a stopped trial's last
  result by the trials that ran to their end; the record and MLflow keep the result as
  measured.
- **The scheduler's state survives a killed driver.** Ray Tune saves the searcher's state but
  not the scheduler's: :class:`StudyScheduler` saves its own (:meth:`TrialScheduler.save`, one
  pickle, replaced atomically) after every decision, in ``STUDY_DIR/scheduler/SEARCH.pkl``, and
  the copy that ``aop resume`` unpickles (``Tuner.restore``) loads it before its first decision,
  as does the scheduler of a top-up experiment (:func:`aop.tuning.study.run_search`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler

from aop.outputs import atomic_file
from aop.tuning.kinds import Fidelity
from aop.tuning.stops import FINAL

__all__ = ["FINAL", "StudyScheduler", "make_scheduler", "rung_counts", "state_path", "stopped_at"]

#: Folder of the schedulers' states in a study folder.
STATE_DIR = "scheduler"


def state_path(study_dir: str | os.PathLike, search: str) -> Path:
    """The scheduler state file of ``search`` in a study folder."""
    return Path(study_dir) / STATE_DIR / f"{search}.pkl"


class StudyScheduler(AsyncHyperBandScheduler):
    """Ray Tune's ASHA (one bracket) that saves its state after every decision.

    Parameters
    ----------
    path : path-like
        Where the state is saved; an existing state is loaded before the first decision.
    fidelity : Fidelity
        The time attribute and its maximum.
    metric, mode : str
        The objective.
    grace_period : int
        The first rung, in the fidelity's unit.
    reduction_factor : float
        Rung spacing and the fraction of trials kept at each rung (``1 / reduction_factor``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        fidelity: Fidelity,
        *,
        metric: str,
        mode: str,
        grace_period: int = 1,
        reduction_factor: float = 3.0,
    ) -> None:
        super().__init__(
            time_attr=fidelity.attr,
            metric=metric,
            mode=mode,
            max_t=fidelity.max_t,
            grace_period=grace_period,
            reduction_factor=reduction_factor,
            brackets=1,
            # a trial ends by itself: the scheduler only stops the ones behind at a rung
            stop_last_trials=False,
        )
        self.path = str(path)
        self.fidelity = fidelity
        self.stopped: dict[str, float] = {}
        self._loaded = False

    # -- state ------------------------------------------------------------------------------------

    def _load(self) -> None:
        """Load the saved state once (a resumed or top-up experiment's scheduler)."""
        if self._loaded:
            return
        if os.path.isfile(self.path):
            path = self.path
            self.restore(path)  # replaces every attribute with the saved ones
            self.path = path
        self._loaded = True

    def _save(self) -> None:
        with atomic_file(self.path) as tmp:
            self.save(str(tmp))

    # -- Tune's hooks -----------------------------------------------------------------------------

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._load()
        if trial.trial_id in self._trial_info:  # a restored trial keeps its rung records
            return
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._load()
        # a trial Tune restored before the state saw it joins the one bracket
        self._trial_info.setdefault(trial.trial_id, self._brackets[0])
        if result.get(FINAL):  # a trial's natural end is never a stop
            return TrialScheduler.CONTINUE
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP:
            self.stopped[trial.trial_id] = float(result[self._time_attr])
        self._save()
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._load()
        if trial.trial_id not in self._trial_info:
            return
        super().on_trial_complete(tune_controller, trial, result)
        self._save()

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._load()
        self._trial_info.pop(trial.trial_id, None)
        self._save()

    def rungs(self) -> dict[float, dict[str, float]]:
        """``{milestone: {trial_id: objective as recorded}}`` (maximised: ``min`` is negated)."""
        self._load()
        return {milestone: dict(recorded) for milestone, recorded in self._brackets[0]._rungs}


def rung_counts(grace_period: int, reduction_factor: float, max_t: int) -> list[int]:
    """The counts at which :class:`StudyScheduler` may stop a trial, below ``max_t``.

    ASHA's rungs sit at ``grace_period * reduction_factor ** k``; a trial reporting whole
    counts (epochs, volumes) meets a rung at the first count at or past it.

    >>> rung_counts(1, 3, 10), rung_counts(2, 2.5, 20)
    ([1, 3, 9], [2, 5, 13])
    """
    counts, milestone = [], float(grace_period)
    while milestone < max_t:
        counts.append(math.ceil(milestone))
        milestone *= reduction_factor
    return sorted(set(counts))


def make_scheduler(
    config: Any,
    fidelity: Fidelity | None,
    *,
    path: str | os.PathLike,
    metric: str,
    mode: str,
) -> StudyScheduler | None:
    """The scheduler of ``search.scheduler`` (``None`` for ``fifo``: every trial runs to its end).

    Raises
    ------
    AopError
        One line when the kind's trials have no fidelity, or when ``grace_period`` leaves no
        rung below the fidelity's maximum.
    """
    from aop.errors import AopError

    if config.name == "fifo":
        return None
    if fidelity is None:
        raise AopError(
            f"search.scheduler: {config.name!r}: the trials of this study kind report once; "
            "nothing to stop early (leave the scheduler out)"
        )
    if config.grace_period >= fidelity.max_t:
        raise AopError(
            f"search.scheduler.grace_period: {config.grace_period} {fidelity.unit} leaves no "
            f"rung: a trial runs {fidelity.max_t} {fidelity.unit} at most"
        )
    return StudyScheduler(
        path, fidelity, metric=metric, mode=mode, grace_period=config.grace_period,
        reduction_factor=config.reduction_factor,
    )  # fmt: skip


def stopped_at(result: Mapping[str, Any], attr: str | None) -> dict[str, int] | None:
    """``{attr: value}`` of a trial whose last result is a stop, else ``None``.

    Under a scheduler (``attr``, the fidelity), a trial that ended without reporting
    ``final: True`` was stopped at its last value of ``attr``.
    """
    if attr is None or result.get(FINAL) or attr not in result:
        return None
    return {attr: int(result[attr])}
