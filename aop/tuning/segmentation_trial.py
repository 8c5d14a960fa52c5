"""The segmentation trial: post-process cached predictions and score them with IPQ.

The benchmark arrays (each model's cached prediction per volume, the ground-truth labels and the
images) are put into Ray's object store once by :func:`put_benchmark`; trials receive only object
references (through ``tune.with_parameters``), so nothing is copied per trial. A trial scores its
volumes in parallel as Ray tasks, so a cluster is used even when the search itself is sequential.

Each volume task times its scorer call (post-processing and scoring, in the worker): a trial
reports their mean as ``seconds_per_volume`` (an objective a study may minimise against IPQ) and
each volume's as ``seconds_per_volume/<volume>``. The model's prediction is not in it: it runs
once per volume before the study, and the prediction cache does not record how long it took.

**Volume fidelity.** Under an early-stopping scheduler (``search.scheduler``, see
:mod:`aop.tuning.schedulers`) a trial is made with ``fidelity=True``
(:func:`make_trainable`): it scores the volumes in benchmark order, at most as many at once as
its placement group has bundles, and reports after each volume the scores of the volumes so far
with ``volumes`` (how many) and, after the last one, ``final: True``. A trial the scheduler stops
at a rung has only those volumes in flight, so little work is lost, and the tasks still running
are cancelled. Each volume's scores are those of a trial without fidelity: the order and the
window change when a volume is scored, never what it scores.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from ray import tune
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from aop.metrics import IPQ_SCORES
from aop.ray_cluster import node_name
from aop.segmentation.params import typed_params
from aop.tuning.schedulers import FINAL

METRICS = IPQ_SCORES
#: Seconds of post-processing and scoring per volume (see the module docstring).
SECONDS = "seconds_per_volume"
#: The result key that counts the volumes a trial has scored (its fidelity).
VOLUMES = "volumes"
Scorer = Callable[..., dict[str, float]]


@dataclass
class BenchmarkRefs:
    """Object-store references to a benchmark and the models' cached predictions.

    Attributes
    ----------
    volumes : list of str
        Volume names, in benchmark order.
    predictions : dict
        ``{model: {volume: ObjectRef of the label array}}``.
    labels, images : dict
        ``{volume: ObjectRef}`` of the ground truth and the image.
    spacing : dict
        ``{volume: (z, y, x) or None}``.
    """

    volumes: list[str]
    predictions: dict[str, dict[str, Any]]
    labels: dict[str, Any]
    images: dict[str, Any]
    spacing: dict[str, tuple[float, ...] | None]

    @property
    def models(self) -> list[str]:
        return list(self.predictions)


def put_benchmark(
    predictions: Mapping[str, Mapping[str, np.ndarray]],
    labels: Mapping[str, np.ndarray],
    images: Mapping[str, np.ndarray],
    spacing: Mapping[str, tuple[float, ...] | None] | None = None,
) -> BenchmarkRefs:
    """Put every array into the object store once and return the references.

    Parameters
    ----------
    predictions : mapping
        ``{model: {volume: labels}}``; every model must cover every volume of ``labels``.
    labels, images : mapping
        ``{volume: array}``, same shapes per volume.
    spacing : mapping, optional
        ``{volume: (z, y, x)}``.
    """
    volumes = list(labels)
    for model, per_volume in predictions.items():
        missing = [v for v in volumes if v not in per_volume]
        if missing:
            raise ValueError(f"model {model!r} has no prediction for volume {missing[0]!r}")
    spacing = spacing or {}
    return BenchmarkRefs(
        volumes=volumes,
        predictions={
            m: {v: ray.put(np.asarray(p[v])) for v in volumes} for m, p in predictions.items()
        },
        labels={v: ray.put(np.asarray(labels[v])) for v in volumes},
        images={v: ray.put(np.asarray(images[v])) for v in volumes},
        spacing={v: (tuple(spacing[v]) if spacing.get(v) else None) for v in volumes},
    )


def score_volume(
    prediction: np.ndarray,
    labels: np.ndarray,
    image: np.ndarray,
    params: Mapping[str, float],
    spacing: tuple[float, ...] | None = None,
) -> dict[str, float]:
    """Post-process one cached prediction and score it against the ground truth.

    Returns
    -------
    dict
        ``{"ipq", "sq", "rq", "iq"}`` of :func:`aop.metrics.ipq`.
    """
    from aop.metrics import ipq
    from aop.segmentation.postprocess import postprocess

    result = ipq(labels, postprocess(prediction, image, dict(params), spacing=spacing))
    return {m: float(getattr(result, m)) for m in METRICS}


@ray.remote(num_cpus=1)
def _score_volume_task(
    scorer: Scorer,
    prediction: np.ndarray,
    labels: np.ndarray,
    image: np.ndarray,
    params: dict[str, float],
    spacing: tuple[float, ...] | None,
) -> tuple[dict[str, float], str, float]:
    start = time.perf_counter()
    scores = scorer(prediction, labels, image, params, spacing)
    return scores, node_name(), time.perf_counter() - start


def _volume_bundles(cpus: float) -> list[dict[str, Any]]:
    """Task options that pin volume tasks round-robin to the bundles of the trial's group.

    Without pinning, quick tasks may all land in one bundle; pinning spreads a trial's volumes
    over its bundles (and over nodes when the group is SPREAD). Outside a placement group the
    tasks are scheduled freely.
    """
    group = ray.util.get_current_placement_group()
    if group is None:
        return [{}]
    indices = [i for i, spec in enumerate(group.bundle_specs) if spec.get("CPU", 0) >= cpus]
    return [
        {
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=group, placement_group_bundle_index=i
            )
        }
        for i in indices
    ] or [{}]


def score_volumes(
    benchmark: BenchmarkRefs,
    model: str,
    params: Mapping[str, float],
    scorer: Scorer = score_volume,
    cpus: float = 1.0,
    gpu: float = 0.0,
    in_flight: int | None = None,
    stops: Sequence[int] = (),
) -> Iterator[dict[str, Any]]:
    """Score one model with one parameter set volume by volume, in benchmark order, as Ray tasks.

    Inside a trial the tasks run in the trial's placement group (see :func:`make_trainable`),
    one bundle of ``cpus`` CPUs and ``gpu`` GPUs each, the volumes assigned to the bundles in
    turn.

    Parameters
    ----------
    benchmark : BenchmarkRefs
        The benchmark in the object store.
    model : str
        Whose cached predictions are post-processed.
    params : mapping
        The post-processing parameters.
    scorer : callable
        ``scorer(prediction, labels, image, params, spacing)`` -> scores (:func:`score_volume`).
    cpus, gpu : float
        Resources of each volume task.
    in_flight : int, optional
        The most volumes submitted and not yet yielded; ``None``: every volume at once.
    stops : sequence of int
        Volume counts after which the caller may stop (an early-stopping scheduler's rungs):
        no volume past the next such count is submitted before the caller asks for it, so a
        trial stopped at a rung started no volume it will not score.

    Yields
    ------
    dict
        After each volume, in benchmark order, the scores of the volumes so far: means
        ``ipq sq rq iq``, ``per_volume`` ``{volume: {metric: value}}``, ``volume_nodes``
        ``{volume: node}``, ``seconds`` ``{volume: seconds}`` (the scorer's time in its task:
        post-processing and scoring) and their mean ``seconds_per_volume``.

    Notes
    -----
    Closing the generator early (a trial stopped at a rung) cancels the volume tasks it
    submitted and did not yield.
    """
    if model not in benchmark.predictions:
        raise ValueError(f"unknown model {model!r} (benchmark has {benchmark.models})")
    bundles = _volume_bundles(cpus)
    volumes = benchmark.volumes
    window = len(volumes) if in_flight is None else max(1, int(in_flight))

    def submit(index: int) -> Any:
        volume = volumes[index]
        # volume i takes the bundle that volume i - window held: with a window of one volume per
        # bundle, a new task goes to the bundle whose volume was just yielded
        return _score_volume_task.options(
            num_cpus=cpus, num_gpus=gpu, **bundles[index % len(bundles)]
        ).remote(
            scorer,
            benchmark.predictions[model][volume],
            benchmark.labels[volume],
            benchmark.images[volume],
            dict(params),
            benchmark.spacing[volume],
        )

    futures: dict[str, Any] = {}
    per_volume: dict[str, dict[str, float]] = {}
    nodes: dict[str, str] = {}
    seconds: dict[str, float] = {}
    submitted = 0
    try:
        for index, volume in enumerate(volumes):
            # up to the window, and not past the next count where the caller may stop
            limit = min([len(volumes), index + window, *(c for c in stops if c > index)])
            while submitted < limit:
                futures[volumes[submitted]] = submit(submitted)
                submitted += 1
            per_volume[volume], nodes[volume], seconds[volume] = ray.get(futures.pop(volume))
            means = {m: float(np.mean([s[m] for s in per_volume.values()])) for m in METRICS}
            yield {**means, "per_volume": dict(per_volume), "volume_nodes": dict(nodes),
                   "seconds": dict(seconds),
                   "seconds_per_volume": float(np.mean(list(seconds.values())))}  # fmt: skip
    finally:
        for future in futures.values():  # submitted, never yielded: the caller stopped early
            ray.cancel(future)


def evaluate(
    benchmark: BenchmarkRefs,
    model: str,
    params: Mapping[str, float],
    scorer: Scorer = score_volume,
    cpus: float = 1.0,
    gpu: float = 0.0,
) -> dict[str, Any]:
    """Score one model with one parameter set on every volume, volumes in parallel as Ray tasks.

    Every volume is submitted at once (:func:`score_volumes` without a window).

    Returns
    -------
    dict
        The scores of every volume, as :func:`score_volumes` yields them after the last one.
    """
    scored = score_volumes(benchmark, model, params, scorer=scorer, cpus=cpus, gpu=gpu)
    return deque(scored, maxlen=1)[0]  # the scores after the last volume


def _trial_report(
    config: Mapping[str, Any], scores: Mapping[str, Any], start: float
) -> dict[str, Any]:
    """A trial's report of ``scores`` (:func:`score_volumes`), ``start`` its start time."""
    report: dict[str, Any] = {m: scores[m] for m in METRICS}
    for volume, values in scores["per_volume"].items():
        for metric, value in values.items():
            report[f"{metric}/{volume}"] = value
    report[SECONDS] = scores["seconds_per_volume"]
    report.update({f"{SECONDS}/{volume}": value for volume, value in scores["seconds"].items()})
    report.update(
        model=config["model"],
        node=node_name(),
        pid=os.getpid(),
        volume_nodes=scores["volume_nodes"],
        duration_s=time.perf_counter() - start,
    )
    return report


def segmentation_trial(
    config: dict[str, Any],
    benchmark: BenchmarkRefs,
    scorer: Scorer = score_volume,
    cpus: float = 1.0,
    gpu: float = 0.0,
    fidelity: bool = False,
    rungs: Sequence[int] = (),
) -> None:
    """Ray Tune function trainable: one post-processing configuration, scored on the benchmark.

    Reports ``ipq sq rq iq`` (means over volumes), ``ipq/<volume>`` etc., ``seconds_per_volume``
    and ``seconds_per_volume/<volume>`` (see the module docstring), ``model``, ``node``,
    ``duration_s`` and ``volume_nodes``: once, every volume scored at once; with ``fidelity``,
    after each volume in benchmark order, over the volumes so far, with ``volumes`` (how many)
    and, in the report of the last volume, ``final: True``. Under fidelity at most as many
    volumes are in flight as the trial's placement group has bundles, and none past the next
    of the scheduler's ``rungs`` (volume counts where it may stop the trial) before the trial
    has gone on past it.
    """
    start = time.perf_counter()
    params = typed_params(config)
    model = config["model"]
    if not fidelity:
        scores = evaluate(benchmark, model, params, scorer=scorer, cpus=cpus, gpu=gpu)
        tune.report(_trial_report(config, scores, start))
        return
    total = len(benchmark.volumes)
    scored = score_volumes(benchmark, model, params, scorer=scorer, cpus=cpus, gpu=gpu,
                           in_flight=len(_volume_bundles(cpus)), stops=rungs)  # fmt: skip
    # a stopped trial leaves tune.report by SystemExit: closing cancels its volumes in flight
    with closing(scored):
        for scores in scored:
            count = len(scores["per_volume"])
            report = _trial_report(config, scores, start)
            report[VOLUMES] = count
            if count == total:
                report[FINAL] = True
            tune.report(report)


def make_trainable(
    benchmark: BenchmarkRefs,
    *,
    cpus: float = 1.0,
    gpu: float = 0.0,
    volume_tasks: int = 1,
    spread: bool = False,
    scorer: Scorer = score_volume,
    trial_fn: Callable[..., None] = segmentation_trial,
    fidelity: bool = False,
    rungs: Sequence[int] = (),
) -> Any:
    """The trial function with the benchmark references bound and its resources reserved.

    A trial reserves a placement group of ``volume_tasks`` bundles of ``cpus`` CPUs and ``gpu``
    GPUs (the trial's own coordinating process needs none): up to ``volume_tasks`` volumes are
    scored at once. ``spread`` places the bundles on different nodes where possible.
    ``fidelity``: the trial reports after each volume, for an early-stopping scheduler (see
    the module docstring; ``trial_fn`` then takes a ``fidelity`` argument) and ``rungs``, the
    volume counts where the scheduler may stop it (``trial_fn`` then takes ``rungs`` too).
    """
    options: dict[str, Any] = {"fidelity": True} if fidelity else {}
    if rungs:
        options["rungs"] = tuple(rungs)
    bound = tune.with_parameters(trial_fn, benchmark=benchmark, scorer=scorer, cpus=cpus, gpu=gpu,
                                 **options)  # fmt: skip
    bundle: dict[str, float] = {"CPU": cpus}
    if gpu:
        bundle["GPU"] = gpu
    bundles = [{}] + [dict(bundle) for _ in range(max(1, volume_tasks))]
    return tune.with_resources(
        bound, tune.PlacementGroupFactory(bundles, strategy="SPREAD" if spread else "PACK")
    )

