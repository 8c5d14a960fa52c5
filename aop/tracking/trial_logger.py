"""Lightning's MLflow logger inside a Ray Tune trial, writing the trial's curves into its child run.

A trial opens its own child run under the study's parent run when it starts
(:meth:`aop.tracking.StudyTracker.open_trial_run`, keyed by search and trial id, so a resumed
trial reopens the same run) and gives :class:`TrialCurveLogger` to the Lightning ``Trainer``,
which logs each epoch's metrics as ``curve/<name>``. When the trial ends, the driver completes
the run with the trial's record and marks it finished.

- A curve point's step is the trial's epoch (the Tune report's ``epoch``, counted over every
  training of the trial and across a resume), so curves neither restart nor overlap.
- Parameters are the driver's (the searched configuration); the logger logs no hyperparameters
  and never ends the run.
- Tracking never stops a training: a failed write is dropped with one warning, and a store this
  node cannot reach (an SQLite file on the driver's disk only) means no in-trial logger: the
  driver then logs the curves from Tune's reports.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

from lightning.pytorch.loggers import MLFlowLogger
from mlflow.entities import Metric

from aop.tracking.client import store_reachable

__all__ = ["CURVE_PREFIX", "TrialCurveLogger", "open_trial_logger", "store_reachable"]

CURVE_PREFIX = "curve/"


class TrialCurveLogger(MLFlowLogger):
    """``MLFlowLogger`` on an existing child run: curves only, stepped by ``step()``, not fatal."""

    def __init__(self, tracking_uri: str, run_id: str, step: Callable[[], int]) -> None:
        super().__init__(tracking_uri=tracking_uri, run_id=run_id, log_model=False)
        self._step = step
        self._warned = False

    def log_hyperparams(self, params: Any) -> None:  # the driver logs the trial's parameters
        return

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        epoch = int(self._step())
        points = [
            Metric(f"{CURVE_PREFIX}{name}", float(value), now, epoch)
            for name, value in metrics.items()
            if name != "epoch"  # the step already is the epoch
        ]
        if not points:
            return
        try:  # the experiment property itself may reach the server
            self.experiment.log_batch(self._run_id, metrics=points)
        except Exception as exc:  # noqa: BLE001  (a lost tracking server must not stop training)
            if not self._warned:
                self._warned = True
                warnings.warn(
                    f"MLflow: curves of run {self._run_id} not logged from epoch {epoch} "
                    f"({type(exc).__name__}); the training goes on",
                    stacklevel=2,
                )

    def finalize(self, status: str = "success") -> None:  # the driver ends the run
        return


def open_trial_logger(
    tracking: Mapping[str, Any] | None,
    search: str,
    trial_id: str,
    node: str,
    step: Callable[[], int],
) -> TrialCurveLogger | None:
    """The Lightning logger of one trial, or ``None`` where the store is out of reach.

    Parameters
    ----------
    tracking : mapping or None
        ``{"study_dir", "tracking_uri", "experiment"}`` of the study; ``None`` logs nothing.
    search, trial_id, node : str
        Identify the trial's child run.
    step : callable
        Returns the trial's current epoch (the curves' step).
    """
    if not tracking or not store_reachable(str(tracking["tracking_uri"])):
        return None
    from aop.tracking.client import StudyTracker

    try:
        tracker = StudyTracker(
            tracking["study_dir"], tracking["tracking_uri"], tracking["experiment"]
        )
        run_id = tracker.open_trial_run(search, trial_id, node)
    except Exception as exc:  # noqa: BLE001  (the driver logs the curves instead)
        warnings.warn(
            f"MLflow: trial {trial_id} of {search} cannot open its run ({type(exc).__name__}: "
            f"{str(exc)[:200]}); its curves are logged by the driver",
            stacklevel=2,
        )
        return None
    return TrialCurveLogger(str(tracking["tracking_uri"]), run_id, step)
