"""Predict every volume of a data set with every model once, with Ray Data, into the cache.

One Ray Data row per volume (its name and file path; the worker reads it with tifffile through
:func:`aop.io.read_volume`). Each model runs in a pool of actors (``map_batches`` with a callable
class, one volume per batch), so a network loads once per actor and the rows are sharded across
the nodes of a cluster. A worker first looks the volume up in the
:class:`~aop.segmentation.cache.PredictionCache`; a hit never loads or runs the model.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aop.errors import AopError
from aop.io import Dataset
from aop.segmentation.models import ModelSpec, build_model

__all__ = ["CachedPredictor", "predict_dataset"]


class CachedPredictor:
    """Ray Data actor: (name, path) rows in, (name, model, cache entry path, hit) rows out."""

    def __init__(
        self, spec: dict[str, Any], cache_root: str, spacing: tuple[float, float, float]
    ) -> None:
        from aop.segmentation.cache import PredictionCache

        self.model = build_model(ModelSpec(**spec))
        self.cache = PredictionCache(cache_root)
        self.spacing = spacing

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from aop.io import read_volume

        names, paths, hits = [], [], []
        for name, path in zip(batch["name"], batch["path"], strict=True):
            image, _ = read_volume(str(path))
            key = self.cache.key(self.model, image, self.spacing)
            hit = self.cache._get(key) is not None
            if not hit:
                labels = self.model.predict(image, self.spacing)
                self.cache._put(key, labels, self.model.identity())
            names.append(str(name))
            paths.append(str(self.cache.path_for(key)))
            hits.append(hit)
        return {
            "name": np.asarray(names),
            "model": np.asarray([self.model.name] * len(names)),
            "entry": np.asarray(paths),
            "hit": np.asarray(hits),
        }


# the two-hex-digit shard folders of a prediction cache written before caches were marked
CACHE_LAYOUT = tuple(f"{i:02x}" for i in range(256))


def _as_spec(model: ModelSpec | str | dict) -> ModelSpec:
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, dict):
        return ModelSpec(**model)
    return ModelSpec(name=model)


def predict_dataset(
    dataset: Dataset,
    models: Sequence[ModelSpec | str] | Mapping[str, ModelSpec | str],
    cache_root: str | os.PathLike,
    *,
    address: str | None = None,
    num_workers: int | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Path]]:
    """Predict every volume with every model (once) and return the cache entries.

    Parameters
    ----------
    dataset : aop.io.Dataset
        The volumes (their voxel size comes from ``dataset.info.voxel_size``).
    models : sequence of ModelSpec or str, or mapping of str to ModelSpec
        Models by spec or registry name; a mapping gives each model its own key (several
        settings of one adapter, e.g. two BioImage.IO packages, need one).
    cache_root : path
        :class:`~aop.segmentation.cache.PredictionCache` folder (shared storage on a cluster).
    address : str, optional
        Ray cluster address; None starts (or reuses) a local Ray.
    num_workers : int, optional
        Actors per model (default: one per available CPU, at most one per volume; with GPUs, one
        per GPU for models that use one).
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        Model key (its name for a sequence) -> volume name -> cache entry path (load with
        :meth:`PredictionCache.load <aop.segmentation.cache.PredictionCache.load>`).

    Raises
    ------
    AopError
        For unknown models, invalid settings or missing weights (checked before any work starts).
    """
    import ray

    if isinstance(models, Mapping):
        keyed = {str(key): _as_spec(m) for key, m in models.items()}
    else:
        keyed = {}
        for m in models:
            spec = _as_spec(m)
            if spec.name in keyed:
                raise AopError(
                    f"model {spec.name!r} is listed twice: give each entry its own key (an 'id' "
                    "in a models file)"
                )
            keyed[spec.name] = spec
    for spec in keyed.values():
        build_model(spec)  # fail fast: names, settings, libraries and weights
    from aop.outputs import claim_folder
    from aop.resources import check_prediction_memory

    cache_root = claim_folder(cache_root, "prediction cache", recognise=CACHE_LAYOUT)
    check_prediction_memory(dataset, num_workers)
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=num_workers, log_to_driver=False, include_dashboard=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    rows = [{"name": e.name, "path": str(e.image_path.resolve())} for e in dataset.entries]
    spacing = tuple(float(s) for s in dataset.info.voxel_size)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    results: dict[str, dict[str, Path]] = {}
    total = len(rows) * len(keyed)
    with _Progress(progress, total) as bar:
        for key, spec in keyed.items():
            cls = type(build_model(spec))
            use_gpu = gpus > 0 and cls.uses_gpu
            workers = num_workers or (gpus if use_gpu else cpus)
            workers = max(1, min(workers, len(rows)))
            data = ray.data.from_items(rows, override_num_blocks=len(rows))
            predicted = data.map_batches(
                CachedPredictor,
                fn_constructor_kwargs={
                    "spec": spec.model_dump(),
                    "cache_root": str(cache_root),
                    "spacing": spacing,
                },
                batch_size=1,
                concurrency=workers,
                num_gpus=1 if use_gpu else 0,
                num_cpus=1,
            )
            entries: dict[str, Path] = {}
            for row in predicted.iter_rows():
                entries[str(row["name"])] = Path(str(row["entry"]))
                bar.advance(f"{key}: {row['name']}")
            results[key] = {name: entries[name] for name in dataset.names}
    return results


class _Progress:
    """A rich progress bar, or nothing."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.progress import Progress

            self.progress = Progress()
            self.progress.__enter__()
            self.task = self.progress.add_task("predicting", total=self.total)
        return self

    def advance(self, description: str) -> None:
        if self.enabled:
            self.progress.update(self.task, advance=1, description=description)

    def __exit__(self, *exc: object) -> None:
        if self.enabled:
            self.progress.__exit__(*exc)  # type: ignore[arg-type]
