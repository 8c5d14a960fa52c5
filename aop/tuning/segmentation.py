"""The segmentation study kind: the model choice and seven post-processing parameters, IPQ.

A trial post-processes every model's cached prediction of the benchmark with one configuration and
scores it by IPQ (:mod:`aop.tuning.trainable`). The search space is Table III of the paper
(:func:`aop.config.experiment_search_space`), the start point of model-based searchers is every
parameter at 0 once per model, and the baseline comparison is that start point for every model
(no post-processing). After the searches the kind draws the paper's plots and logs the best
pipeline (model + post-processing) as an MLflow model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ray import tune

from aop.config import Experiment, SearchSpace, experiment_search_space
from aop.metrics import IPQ_SCORES
from aop.tuning import space as generic
from aop.tuning.kinds import Prepared, StudyKind, register_kind


def tune_space(space: SearchSpace) -> generic.SearchSpace:
    """A segmentation search space on Ray Tune domains, with the ``zeros`` start points.

    The model is a categorical parameter; integer ranges become ``tune.randint`` (upper bound
    included), float ranges ``tune.uniform``; fixed parameters stay constants.
    """
    parameters: dict[str, Any] = {"model": tune.choice(list(space.models or []))}
    for name, (kind, low, high) in space.ranges.items():
        if kind is int:
            parameters[name] = tune.randint(int(low), int(high) + 1)
        else:
            parameters[name] = tune.uniform(float(low), float(high))
    parameters.update(space.fixed)
    zeros = [{"model": model, **space.zeros()} for model in space.models or []]
    return generic.SearchSpace(parameters=parameters, start_points={"zeros": zeros})


@register_kind
class SegmentationKind(StudyKind):
    """Segmentation study: model + post-processing parameters, objective mean IPQ over volumes."""

    name = "segmentation"
    metric = "ipq"
    mode = "max"
    metrics = IPQ_SCORES
    parameter_columns = ("model", "erode_dilate", "open_close")
    experiment_model = Experiment
    start_point = "zeros"
    pooled = ("baseline",)
    record_extras = ("volume_nodes",)

    def search_space(self, exp: Experiment) -> generic.SearchSpace:  # type: ignore[override]
        return tune_space(experiment_search_space(exp))

    def preflight(  # type: ignore[override]
        self, exp: Experiment, check_models: bool = True
    ) -> None:
        """Before any output: synth parameters and memory, the benchmark, the cache, the models."""
        from aop.errors import AopError
        from aop.outputs import claim_folder
        from aop.resources import check_synth_memory

        synth = exp.data.synth
        if synth is not None:
            from aop.synth import preset_params

            try:
                params = preset_params(synth.preset, **synth.options)
            except AopError as exc:
                raise AopError(f"data.synth: {exc}") from None
            check_synth_memory(tuple(synth.shape), params.n_objects)
        elif exp.data.benchmark is not None and not exp.data.benchmark.is_dir():
            raise AopError(f"data.benchmark: {exp.data.benchmark}: folder not found")
        if exp.storage.cache_dir is not None:
            from aop.segmentation.predict import CACHE_LAYOUT

            claim_folder(exp.cache_dir, "prediction cache", recognise=CACHE_LAYOUT, dry_run=True)
        if not check_models:
            return
        from aop.segmentation.models import ModelSpec, build_model

        for index, model in enumerate(exp.models):
            try:
                build_model(ModelSpec(name=model.name, settings=model.settings))
            except AopError as exc:
                raise AopError(f"models.{index} ({model.key}): {exc}") from None

    def baseline_space(
        self, exp: Experiment, space: generic.SearchSpace  # type: ignore[override]
    ) -> dict[str, Any]:
        from aop.segmentation.params import PARAMETER_RANGES

        domain = space.parameters["model"]
        models = list(getattr(domain, "categories", [domain]))
        zeros = {name: kind(0) for name, (kind, _, _) in PARAMETER_RANGES.items()}
        return {"model": tune.grid_search(models), **zeros}

    def prepare(self, exp: Experiment) -> Prepared:  # type: ignore[override]
        import ray

        from aop.tuning.benchmark import benchmark_dir, load_benchmark
        from aop.tuning.trainable import make_trainable, put_benchmark

        data = load_benchmark(exp)
        refs = put_benchmark(
            data.predictions, data.labels, data.images, {v: data.spacing for v in data.labels}
        )
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        per_trial = int(cpus // (exp.search.concurrency * exp.search.resources.cpus))
        trainable = make_trainable(
            refs,
            cpus=exp.search.resources.cpus,
            gpu=exp.search.resources.gpu,
            volume_tasks=max(1, min(len(refs.volumes), per_trial)),
        )
        return Prepared(
            trainable=trainable,
            dataset=benchmark_dir(exp),
            context={"spacing": data.spacing, "refs": refs},
        )

    def best_summary(self, best: Mapping[str, Any]) -> dict[str, Any]:
        from aop.tuning.trainable import trial_params

        return {
            "model": str(best["params"]["model"]),
            "params": trial_params(best["params"]),
            "scores": {m: best["metrics"][m] for m in self.metrics},
            "per_volume": best["per_volume"],
        }

    def finish(
        self,
        exp: Experiment,  # type: ignore[override]
        records: Mapping[str, Sequence[dict[str, Any]]],
        best: dict[str, Any],
        prepared: Prepared,
        tracker: Any,
    ) -> list[Path]:
        from aop.analysis.plots import make_study_plots

        plots = make_study_plots(
            exp.study_dir, dict(records), pooled=self.pooled, main=exp.search.searcher
        )
        spec = next(m for m in exp.models if m.key == best["params"]["model"])
        tracker.log_model_safely(
            lambda: tracker.log_pipeline_model(
                best,
                spacing=prepared.context.get("spacing"),
                model_spec={"name": spec.name, "settings": spec.settings},
            )
        )
        return plots
