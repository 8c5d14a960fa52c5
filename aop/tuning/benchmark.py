"""The study's benchmark: synthesise or load it, predict every model once, load the predictions.

Predictions go through the content-addressed prediction cache (``STUDY_DIR/predictions`` by
default), so a resumed study or a second study on the same data predicts nothing again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aop.config import Experiment
from aop.errors import AopError
from aop.io import Dataset, load_dataset


@dataclass
class LoadedBenchmark:
    """Arrays of a benchmark with every model's prediction.

    Attributes
    ----------
    dataset : Dataset
    predictions : dict
        ``{model id: {volume: labels}}``.
    labels, images : dict
        ``{volume: array}``.
    spacing : tuple
        The data set's voxel size (z, y, x).
    """

    dataset: Dataset
    predictions: dict[str, dict[str, np.ndarray]]
    labels: dict[str, np.ndarray]
    images: dict[str, np.ndarray]
    spacing: tuple[float, float, float]


def benchmark_dir(exp: Experiment) -> Path:
    """The benchmark folder: the configured one, or ``STUDY_DIR/benchmark`` for a synth block."""
    if exp.data.benchmark is not None:
        return exp.data.benchmark
    return exp.study_dir / "benchmark"


def ensure_benchmark(exp: Experiment) -> Dataset:
    """Load the benchmark, simulating it first when the experiment has a synth block.

    With ``data.adapt`` the benchmark is simulated at the real volumes' voxel size (unless the
    synth options set ``spacing``) and the adapted benchmark is returned (cached).
    """
    root = benchmark_dir(exp)
    synth = exp.data.synth
    adapt = exp.data.adapt
    if synth is not None and not (root / "dataset.yaml").is_file():
        from aop.synth import preset_params
        from aop.synth.dataset import write_synthetic_dataset

        options = dict(synth.options)
        if adapt is not None and "spacing" not in options:
            from aop.adapt.data import voxel_size_of

            real_spacing = voxel_size_of(adapt.real, "data.adapt.real")
            if real_spacing is not None:
                options["spacing"] = real_spacing
        try:
            params = preset_params(synth.preset, **options)
        except AopError as exc:
            raise AopError(f"data.synth: {exc}") from None
        write_synthetic_dataset(
            root, params, tuple(synth.shape), synth.n_volumes, synth.seed, preset=synth.preset
        )
    elif not root.is_dir():
        raise AopError(f"data.benchmark: {root}: folder not found")
    if adapt is not None:
        from aop.adapt import adapt_benchmark

        load_dataset(root, require_labels=True)
        root = adapt_benchmark(
            root, adapt, exp.study_dir / "adapted", tracking_uri=exp.tracking_uri
        )
    return load_dataset(root, require_labels=True)


def _predict(
    dataset: Dataset, name: str, settings: dict[str, Any], cache_root: Path, address: str | None
) -> dict[str, np.ndarray]:
    """``{volume: labels}`` of one model, through the prediction cache."""
    from aop.segmentation.cache import PredictionCache
    from aop.segmentation.models import ModelSpec

    spec = ModelSpec(name=name, settings=settings)
    try:
        from aop.segmentation.predict import predict_dataset
    except ImportError:  # the Ray Data predictor is optional: predict in this process
        predict_dataset = None
    if predict_dataset is not None:
        paths = predict_dataset(dataset, [spec], cache_root, address=address)
        (per_volume,) = paths.values()
        return {volume: PredictionCache.load(path) for volume, path in per_volume.items()}
    from aop.segmentation.models import build_model

    model = build_model(spec)
    cache = PredictionCache(cache_root)
    spacing = tuple(dataset.info.voxel_size)
    return {v: cache.get_or_predict(model, dataset.image(v), spacing) for v in dataset.names}


def load_benchmark(exp: Experiment) -> LoadedBenchmark:
    """Benchmark arrays plus each model's cached prediction (predicting on a cache miss)."""
    dataset = ensure_benchmark(exp)
    predictions = {
        model.key: _predict(dataset, model.name, model.settings, exp.cache_dir, exp.ray.address)
        for model in exp.models
    }
    return LoadedBenchmark(
        dataset=dataset,
        predictions=predictions,
        labels={v: dataset.labels(v) for v in dataset.names},
        images={v: dataset.image(v) for v in dataset.names},
        spacing=tuple(float(s) for s in dataset.info.voxel_size),
    )
