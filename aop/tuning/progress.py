"""aop's own progress of a search: a live display on a terminal, plain lines in a file or pipe.

On a terminal each search is one rich progress bar: trials done of the budget, the best value so
far, the trials running and the time left. Written to a file or a CI log (no cursor codes), the
main search prints one line per finished trial and every search one line when it ends; a
comparison search (a baseline grid, random search) prints only that last line, since its trials
are in ``results/NAME.jsonl`` and MLflow. The numbers come from Ray Tune's driver callbacks, so
they are the same for every study kind.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback

from aop import console
from aop.analysis.records import read_records
from aop.tuning.schedulers import stopped_at

__all__ = ["SearchProgress", "set_budget"]

# The budget of each search as this process runs it: Ray Tune restores a search's callbacks as
# they were pickled, with the budget of its first run, and a resumed study may have raised it.
_BUDGETS: dict[str, int] = {}


def set_budget(search: str, budget: int) -> None:
    """Make every :class:`SearchProgress` of ``search`` in this process count to ``budget``."""
    _BUDGETS[search] = budget


class SearchProgress(Callback):
    """Shows the progress of one search on :data:`aop.console.out`.

    Parameters
    ----------
    search : str
        The search's name.
    budget : int
        Its trials in all (a resumed search counts those already finished).
    metric, mode : str
        The objective and its direction.
    records : path-like, optional
        The search's ``results/NAME.jsonl``: the trials it holds count as done when a run
        starts (a resumed study), and the best among them as the best so far.
    per_trial : bool
        Print a line per finished trial when the output is not a terminal (the main search).
    fidelity : str, optional
        The fidelity of the search's early-stopping scheduler: a trial it stopped counts as
        done, says where it stopped, and is never the best so far (it was scored on less).
    """

    def __init__(
        self,
        search: str,
        budget: int,
        metric: str,
        mode: str = "max",
        *,
        records: str | Path | None = None,
        per_trial: bool = True,
        fidelity: str | None = None,
    ) -> None:
        self.search, self.budget, self.metric, self.mode = search, budget, metric, mode
        self.fidelity = fidelity
        self.records = Path(records) if records is not None else None
        self.per_trial = per_trial
        self._reset()

    def _reset(self) -> None:
        """Counts as the records say (Ray Tune restores this callback as it was pickled)."""
        self.budget = _BUDGETS.get(self.search, self.budget)
        finished = read_records(self.records) if self.records and self.records.is_file() else []
        values = [r["metrics"][self.metric] for r in finished
                  if self.metric in r["metrics"] and not r.get("stopped_at")]  # fmt: skip
        self.done = len(finished)
        self.best = (max if self.mode == "max" else min)(values) if values else None
        self.running: set[str] = set()
        self.failed = 0
        self.started = time.monotonic()
        self._first_done = self.done
        self._live: Any = None
        self._task: Any = None
        self._closed = False

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_live"] = state["_task"] = None  # a live display stays in its process
        return state

    # -- what is shown -----------------------------------------------------------------------------

    def _better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def _best_text(self) -> str:
        return "-" if self.best is None else f"{self.best:.4g}"

    def _eta(self) -> str:
        finished = self.done - self._first_done
        left = max(self.budget - self.done, 0)
        if finished <= 0 or left == 0:
            return "-"
        seconds = (time.monotonic() - self.started) / finished * left
        return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(
                self._task, completed=self.done, best=self._best_text(),
                running=len(self.running), eta=self._eta(),
            )  # fmt: skip

    # -- Ray Tune's callbacks (driver side) -------------------------------------------------------

    def setup(self, **info: Any) -> None:
        self._reset()
        if not console.is_terminal():
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        self._live = Progress(
            TextColumn(f"[bold]{self.search}[/]"), BarColumn(), MofNCompleteColumn(),
            TextColumn(f"best {self.metric} {{task.fields[best]}}"),
            TextColumn("running {task.fields[running]}"), TextColumn("left {task.fields[eta]}"),
            console=console.out, transient=False,
        )  # fmt: skip
        self._task = self._live.add_task(
            self.search, total=self.budget, completed=self.done, best=self._best_text(),
            running=0, eta="-",
        )  # fmt: skip
        self._live.start()

    def on_trial_start(self, iteration, trials, trial, **info):  # type: ignore[no-untyped-def]
        self.running.add(trial.trial_id)
        self._refresh()

    def on_trial_complete(self, iteration, trials, trial, **info):  # type: ignore[no-untyped-def]
        self.running.discard(trial.trial_id)
        value = (trial.last_result or {}).get(self.metric)
        if not isinstance(value, int | float) or not math.isfinite(value):
            self._refresh()
            return
        self.done += 1
        stop = stopped_at(trial.last_result or {}, getattr(self, "fidelity", None))
        improved = stop is None and self._better(float(value))
        if improved:
            self.best = float(value)
        self._refresh()
        if self._live is None and self.per_trial:
            mark = "  new best" if improved else ""
            if stop is not None:
                mark = "  stopped at " + ", ".join(f"{k} {v}" for k, v in stop.items())
            console.say(
                f"  {self.search} {self.done}/{self.budget}: {self.metric} {value:.4g} "
                f"(trial {trial.trial_id}; best {self._best_text()}, "
                f"left {self._eta()}){mark}"
            )

    def on_trial_error(self, iteration, trials, trial, **info):  # type: ignore[no-untyped-def]
        self.running.discard(trial.trial_id)
        self.failed += 1
        self._refresh()

    def on_experiment_end(self, trials, **info):  # type: ignore[no-untyped-def]
        self.close()

    def close(self) -> None:
        """Stop the live display and print the search's closing line (once)."""
        if self._closed:
            return
        self._closed = True
        if self._live is not None:
            self._live.stop()
            self._live = None
        minutes = (time.monotonic() - self.started) / 60
        failed = f", {self.failed} failed" if self.failed else ""
        console.say(
            f"aop: search {self.search}: {self.done} of {self.budget} trials{failed}, best "
            f"{self.metric} {self._best_text()} ({minutes:.1f} min)"
        )
