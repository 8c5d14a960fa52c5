"""How a trial's reports end, and how a searcher is told a trial that a scheduler stopped.

A trial that runs to its natural end sets :data:`FINAL` in its last report; under an
early-stopping scheduler (:mod:`aop.tuning.schedulers`) a last report without it is a stop.
:class:`ScaledStops` tells the searcher such a trial on the scale of a whole trial, for the kinds
that ask for it (:attr:`aop.tuning.kinds.StudyKind.scaled_stops`).
"""

from __future__ import annotations

from ray.tune.search import ConcurrencyLimiter, Searcher

__all__ = ["FINAL", "ScaledStops"]

#: The result key a trial sets in the last result of its natural end.
FINAL = "final"


class ScaledStops(ConcurrencyLimiter):
    """A searcher's concurrency limit that tells it a stopped trial scaled to a whole trial.

    ASHA compares the trials at a rung on the same fidelity (the same first volumes), but the
    searcher compares every trial it is told with every other: a stopped trial's last result,
    the mean IPQ of its first ``k`` volumes, against finished trials' means over every volume.
    Where the first volumes are easier than the rest, the stopped trials look better to the
    searcher than finished trials that beat them at the rung, and it goes on suggesting
    configurations like them, which are stopped again. This limiter tells the searcher a
    stopped trial's objective as a ratio estimate of its whole-trial value::

        told = last * sum(final_f) / sum(value_f(k))

    over the trials ``f`` that ran to their end (``final: True``) and reported at ``k``, the
    stopped trial's fidelity (``value_f(k)``: their objective then). A trial stopped before any
    trial ended, or where those values sum to 0 or less, is told its last result. Trials that
    ran to their end are told as they are. The limiter's state (each running trial's reports,
    the two sums at each fidelity, and :attr:`told`) is saved with the search's state, so a
    resumed search scales as before.

    Parameters
    ----------
    searcher : ray.tune.search.Searcher
        The searcher (single objective: a scheduler refuses several).
    max_concurrent : int
        Suggestions pending at once.
    attr, metric : str
        The fidelity's result key and the objective.

    Attributes
    ----------
    told : dict
        ``{trial_id: {"last", "told", "basis"}}`` of each stopped trial: its last result, the
        value told, and how many finished trials the ratio was taken over.
    """

    def __init__(self, searcher: Searcher, max_concurrent: int, *, attr: str, metric: str) -> None:
        super().__init__(searcher, max_concurrent=max_concurrent)
        self.attr = attr
        self.objective = metric
        self.reports: dict[str, dict[float, float]] = {}
        #: ``{fidelity: [sum of value_f(k), sum of final_f, number of trials f]}``
        self.sums: dict[float, list[float]] = {}
        self.told: dict[str, dict[str, float]] = {}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        value, at = result.get(self.objective), result.get(self.attr)
        if value is not None and at is not None:
            self.reports.setdefault(trial_id, {})[float(at)] = float(value)
        super().on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict | None = None, error: bool = False
    ) -> None:
        reports = self.reports.pop(trial_id, {})
        if result and not error and result.get(self.objective) is not None:
            if result.get(FINAL):
                final = float(result[self.objective])
                for at, value in reports.items():
                    sums = self.sums.setdefault(at, [0.0, 0.0, 0])
                    sums[0] += value
                    sums[1] += final
                    sums[2] += 1
            elif result.get(self.attr) is not None:  # a stop
                result = {**result, self.objective: self.scaled(trial_id, result)}
        super().on_trial_complete(trial_id, result=result, error=error)

    def scaled(self, trial_id: str, result: dict) -> float:
        """The value told for a trial stopped with ``result`` (recorded in :attr:`told`)."""
        at, last = float(result[self.attr]), float(result[self.objective])
        partial, final, basis = self.sums.get(at, (0.0, 0.0, 0))
        told = last * final / partial if partial > 0 else last
        self.told[trial_id] = {"last": last, "told": told, "basis": int(basis)}
        return told
