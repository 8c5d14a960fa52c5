"""The segmentation trial: post-process cached predictions and score them with IPQ.

The benchmark arrays (each model's cached prediction per volume, the ground-truth labels and the
images) are put into Ray's object store once by :func:`put_benchmark`; trials receive only object
references (through ``tune.with_parameters``), so nothing is copied per trial. A trial scores its
volumes in parallel as Ray tasks, so a cluster is used even when the search itself is sequential.

Each volume task times its scorer call (post-processing and scoring, in the worker): a trial
reports their mean as ``seconds_per_volume`` (an objective a study may minimise against IPQ) and
each volume's as ``seconds_per_volume/<volume>``. The model's prediction is not in it: it runs
once per volume before the study, and the prediction cache does not record how long it took.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from ray import tune
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from aop.metrics import IPQ_SCORES
from aop.ray_cluster import node_name
from aop.segmentation.params import typed_params

METRICS = IPQ_SCORES
#: Seconds of post-processing and scoring per volume (see the module docstring).
SECONDS = "seconds_per_volume"
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


def evaluate(
    benchmark: BenchmarkRefs,
    model: str,
    params: Mapping[str, float],
    scorer: Scorer = score_volume,
    cpus: float = 1.0,
    gpu: float = 0.0,
) -> dict[str, Any]:
    """Score one model with one parameter set on every volume, volumes in parallel as Ray tasks.

    Inside a trial the tasks run in the trial's placement group (see :func:`make_trainable`),
    one bundle of ``cpus`` CPUs and ``gpu`` GPUs each.

    Returns
    -------
    dict
        Means ``ipq sq rq iq``, ``per_volume`` ``{volume: {metric: value}}``, ``volume_nodes``
        ``{volume: node}``, ``seconds`` ``{volume: seconds}`` (the scorer's time in its task:
        post-processing and scoring) and their mean ``seconds_per_volume``.
    """
    if model not in benchmark.predictions:
        raise ValueError(f"unknown model {model!r} (benchmark has {benchmark.models})")
    bundles = _volume_bundles(cpus)
    futures = {
        volume: _score_volume_task.options(
            num_cpus=cpus, num_gpus=gpu, **bundles[i % len(bundles)]
        ).remote(
            scorer,
            benchmark.predictions[model][volume],
            benchmark.labels[volume],
            benchmark.images[volume],
            dict(params),
            benchmark.spacing[volume],
        )
        for i, volume in enumerate(benchmark.volumes)
    }
    per_volume, nodes, seconds = {}, {}, {}
    for volume, future in futures.items():
        per_volume[volume], nodes[volume], seconds[volume] = ray.get(future)
    means = {m: float(np.mean([s[m] for s in per_volume.values()])) for m in METRICS}
    return {**means, "per_volume": per_volume, "volume_nodes": nodes, "seconds": seconds,
            "seconds_per_volume": float(np.mean(list(seconds.values())))}  # fmt: skip


def segmentation_trial(
    config: dict[str, Any],
    benchmark: BenchmarkRefs,
    scorer: Scorer = score_volume,
    cpus: float = 1.0,
    gpu: float = 0.0,
) -> None:
    """Ray Tune function trainable: one post-processing configuration, one report.

    Reports ``ipq sq rq iq`` (means over volumes), ``ipq/<volume>`` etc., ``seconds_per_volume``
    and ``seconds_per_volume/<volume>`` (see the module docstring), ``model``, ``node``,
    ``duration_s`` and ``volume_nodes``.
    """
    start = time.perf_counter()
    params = typed_params(config)
    scores = evaluate(benchmark, config["model"], params, scorer=scorer, cpus=cpus, gpu=gpu)
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
) -> Any:
    """The trial function with the benchmark references bound and its resources reserved.

    A trial reserves a placement group of ``volume_tasks`` bundles of ``cpus`` CPUs and ``gpu``
    GPUs (the trial's own coordinating process needs none): up to ``volume_tasks`` volumes are
    scored at once. ``spread`` places the bundles on different nodes where possible.
    """
    bound = tune.with_parameters(trial_fn, benchmark=benchmark, scorer=scorer, cpus=cpus, gpu=gpu)
    bundle: dict[str, float] = {"CPU": cpus}
    if gpu:
        bundle["GPU"] = gpu
    bundles = [{}] + [dict(bundle) for _ in range(max(1, volume_tasks))]
    return tune.with_resources(
        bound, tune.PlacementGroupFactory(bundles, strategy="SPREAD" if spread else "PACK")
    )

