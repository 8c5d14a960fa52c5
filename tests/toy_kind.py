"""A toy second study kind for the engine's tests: categorical, log-scale and integer parameters.

Importing this module registers the kind ``toy``. Its trial needs no data: the score is a fixed
function of the configuration, with interactions between the parameters and its optimum at
``encoder=b, head=attention, lr=1e-2, layers=3``.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

from pydantic import Field
from ray import cloudpickle, tune

from aop.config import BaseExperiment, StrictModel
from aop.tuning.kinds import Fidelity, Prepared, StudyKind, register_kind
from aop.tuning.space import SearchSpace, load_space_file

PARAMETERS = {
    "encoder": "which encoder",
    "head": "which head",
    "lr": "learning rate (log scale)",
    "layers": "number of layers",
    "width": "layer width (fixed in the tests' space)",
}
ENCODER = {"a": 0.2, "b": 0.5, "c": 0.35}


def toy_score(config: dict) -> float:
    """The toy objective in [0, 1]: maximal at encoder b, attention head, lr 1e-2, 3 layers."""
    lr_term = math.exp(-((math.log10(config["lr"]) + 2.0) ** 2))  # 1 at lr = 1e-2
    head = 0.2 if config["head"] == "attention" else 0.1 * (config["encoder"] == "a")
    layers = 0.1 * (config["layers"] / 3) if config["head"] == "attention" else 0.03
    return ENCODER[config["encoder"]] * 0.6 + 0.2 * lr_term + head + layers


def toy_trial(config: dict, delay: float = 0.0, fail: str | None = None) -> None:
    """Ray Tune function trainable of the toy kind; a trial of encoder ``fail`` raises."""
    time.sleep(delay)
    if config["encoder"] == fail:
        raise ValueError(f"toy failure on encoder {fail}")
    score = toy_score(config)
    tune.report({"score": score, "loss": 1.0 - score, "node": "toy"})


class ToySettings(StrictModel):
    delay: float = Field(default=0.0, ge=0)
    fail: str | None = None


class ToyExperiment(BaseExperiment):
    toy: ToySettings = Field(default_factory=ToySettings)
    search_space: Path = Path("search_spaces/toy.yaml")


@register_kind
class ToyKind(StudyKind[ToyExperiment]):
    """The toy study kind: no data, no baseline, objective ``score``."""

    name = "toy"
    metric = "score"
    mode = "max"
    metrics = ("score", "loss")
    parameter_columns = ("encoder", "head", "lr", "layers")
    experiment_model = ToyExperiment
    start_point = "default"

    def search_space(self, exp: ToyExperiment) -> SearchSpace:
        return load_space_file(exp.search_space, allowed=PARAMETERS)

    def prepare(self, exp: ToyExperiment) -> Prepared:
        trainable = tune.with_parameters(toy_trial, delay=exp.toy.delay, fail=exp.toy.fail)
        return Prepared(trainable=tune.with_resources(trainable, {"cpu": 1}))


def toy_steps_trial(config: dict, steps: int = 9, delay: float = 0.0) -> None:
    """Ray Tune function trainable of the ``toy_steps`` kind: ``steps`` reports, one per step.

    The score at step ``t`` is ``toy_score * (1 - 0.5 ** t)``: it rises towards the toy score,
    and every step ranks the configurations as the last one does. The last report of a trial
    that runs to its end says ``final: True``.
    """
    score = toy_score(config)
    for step in range(1, steps + 1):
        time.sleep(delay)
        value = score * (1.0 - 0.5**step)
        tune.report({"score": value, "loss": 1.0 - value, "step": step, "node": "toy",
                     **({"final": True} if step == steps else {})})  # fmt: skip


class ToyStepsSettings(ToySettings):
    steps: int = Field(default=9, gt=1)


class ToyStepsExperiment(BaseExperiment):
    toy: ToyStepsSettings = Field(default_factory=ToyStepsSettings)
    search_space: Path = Path("search_spaces/toy.yaml")


@register_kind
class ToyStepsKind(ToyKind):
    """The toy kind reporting each of its ``toy.steps`` steps: early stopping's test kind."""

    name = "toy_steps"
    experiment_model = ToyStepsExperiment
    fidelity_attr = "step"

    def prepare(self, exp: ToyStepsExperiment) -> Prepared:
        trainable = tune.with_parameters(toy_steps_trial, steps=exp.toy.steps,
                                         delay=exp.toy.delay)  # fmt: skip
        return Prepared(trainable=tune.with_resources(trainable, {"cpu": 1}))

    def fidelity(self, exp: ToyStepsExperiment, prepared: Prepared) -> Fidelity:
        return Fidelity("step", exp.toy.steps, "steps")


SPACE = {
    "parameters": {
        "encoder": {"choice": ["a", "b", "c"]},
        "head": {"choice": ["mlp", "attention"]},
        "lr": {"float": [1.0e-4, 1.0e-1], "log": True},
        "layers": {"int": [1, 3]},
        "width": 64,
    },
    "start": {"default": {"encoder": "a", "head": "mlp", "lr": 1.0e-3, "layers": 1}},
}

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray workers cannot import tests/


@register_kind
class ToyStepsScaledKind(ToyStepsKind):
    """``toy_steps`` whose stopped trials are told to the searcher scaled to a whole trial."""

    name = "toy_steps_scaled"
    scaled_stops = True
