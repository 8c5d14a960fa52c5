"""Predict every volume of a data set with every model once, with Ray Data, into the cache.

One Ray Data row per volume (its name and file path; the worker reads it with tifffile through
:func:`aop.io.read_volume`). Each model runs in a pool of actors (``map_batches`` with a callable
class, one volume per batch), so a network loads once per actor and the rows are sharded across
the nodes of a cluster. A worker first looks the volume up in the
:class:`~aop.segmentation.cache.PredictionCache`; a hit never loads or runs the model.

Actors of a model that uses a GPU request one GPU each when the cluster has GPUs
(``gpus_per_worker`` sets a fraction, e.g. ``0.5`` for two actors per GPU); Ray sets
``CUDA_VISIBLE_DEVICES`` for them. An actor that got a GPU from Ray but finds no usable CUDA
device (a node started with logical GPUs, a CPU build of torch, a broken driver) predicts on the
CPU, and the driver warns once per model; with ``require_gpu=True`` it stops with one line.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aop.errors import AopError
from aop.io import Dataset
from aop.segmentation.models import ModelSpec, build_model, model_class
from aop.segmentation.models.base import as_spec

__all__ = ["CachedPredictor", "cuda_usable", "predict_dataset"]


def cuda_usable() -> bool:
    """Whether torch finds a CUDA device it can use in this process."""
    try:
        import torch
    except ImportError:
        return False
    try:
        return bool(torch.cuda.is_available() and torch.cuda.device_count() > 0)
    except Exception:  # noqa: BLE001  (a broken driver is no usable device)
        return False


class CachedPredictor:
    """Ray Data actor: (name, path) rows in, (name, model, cache entry path, hit) rows out.

    Rows also say where the volume ran: ``node`` (``host/node-id``), ``gpus`` (the GPU ids Ray
    assigned, comma-separated), ``cuda`` (``CUDA_VISIBLE_DEVICES``), ``note`` (why an assigned
    GPU was not used) and ``error`` (set instead of predicting when a GPU is required but unusable).
    """

    def __init__(
        self,
        spec: dict[str, Any],
        cache_root: str,
        spacing: tuple[float, float, float],
        require_gpu: bool = False,
    ) -> None:
        import ray

        from aop.segmentation.cache import PredictionCache

        self.model = build_model(ModelSpec(**spec))
        self.cache = PredictionCache(cache_root)
        self.spacing = spacing
        context = ray.get_runtime_context()
        self.node = f"{os.uname().nodename}/{context.get_node_id()[:8]}"
        self.gpus = ",".join(str(g) for g in ray.get_gpu_ids())
        self.cuda = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        self.note = self.error = ""
        wants_gpu = require_gpu and (bool(self.gpus) or type(self.model).uses_gpu)
        if (self.gpus or wants_gpu) and not cuda_usable():
            problem = (
                f"model {self.model.name!r}: no usable CUDA device on node {self.node} "
                f"(Ray assigned GPU {self.gpus or 'none'}, CUDA_VISIBLE_DEVICES={self.cuda!r})"
            )
            if wants_gpu:
                self.error = f"{problem}, and a GPU is required"
            else:
                self.note = f"{problem}; predicting on the CPU"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from aop.io import read_volume

        count = len(batch["name"])
        entries, hits = [""] * count, [False] * count
        for i, path in enumerate([] if self.error else batch["path"]):  # an error predicts nothing
            image, _ = read_volume(str(path))
            key = self.cache.key(self.model, image, self.spacing)
            hits[i] = self.cache._get(key) is not None
            if not hits[i]:
                self.cache._put(key, self.model.predict(image, self.spacing), self.model.identity())
            entries[i] = str(self.cache.path_for(key))
        same = {name: getattr(self, name) for name in ("node", "gpus", "cuda", "note", "error")}
        same["model"] = self.model.name
        return {
            "name": np.asarray([str(n) for n in batch["name"]]),
            "entry": np.asarray(entries),
            "hit": np.asarray(hits, dtype=bool),
            **{column: np.asarray([value] * count) for column, value in same.items()},
        }


# the two-hex-digit shard folders of a prediction cache written before caches were marked
CACHE_LAYOUT = tuple(f"{i:02x}" for i in range(256))


def predict_dataset(
    dataset: Dataset,
    models: Sequence[ModelSpec | str] | Mapping[str, ModelSpec | str],
    cache_root: str | os.PathLike,
    *,
    address: str | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    gpus_per_worker: float | None = None,
    require_gpu: bool = False,
    placements: list[dict[str, Any]] | None = None,
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
    gpus_per_worker : float, optional
        GPUs each actor requests (e.g. ``0.5``: two actors share a GPU). Default: 1 for a model
        that uses a GPU when the cluster has GPUs, else 0.
    require_gpu : bool
        Stop (one line) when an actor of a GPU model finds no usable CUDA device, instead of
        predicting on the CPU with a warning.
    placements : list, optional
        When given, one ``{"model", "volume", "node", "gpus", "cuda", "hit"}`` dict per
        predicted volume is appended: where it ran.

    Returns
    -------
    dict
        Model key (its name for a sequence) -> volume name -> cache entry path (load with
        :meth:`PredictionCache.load <aop.segmentation.cache.PredictionCache.load>`).

    Raises
    ------
    AopError
        For unknown models, invalid settings or missing weights (checked before any work
        starts); for a GPU request no node can hold; with ``require_gpu``, for a GPU actor
        without a usable CUDA device.
    """
    import ray
    from rich.progress import Progress

    from aop.outputs import claim_folder
    from aop.ray_cluster import check_resources, connect
    from aop.resources import check_prediction_memory

    if isinstance(models, Mapping):
        keyed = {str(key): as_spec(m) for key, m in models.items()}
    else:
        keyed = {}
        for m in models:
            spec = as_spec(m)
            if spec.name in keyed:
                raise AopError(
                    f"model {spec.name!r} is listed twice: give each entry its own key (an 'id' "
                    "in a models file)"
                )
            keyed[spec.name] = spec
    for spec in keyed.values():
        build_model(spec)  # fail fast: names, settings, libraries and weights
    cache_root = claim_folder(cache_root, "prediction cache", recognise=CACHE_LAYOUT)
    check_prediction_memory(dataset, num_workers)
    connect(address, num_cpus=num_workers)
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows = [{"name": e.name, "path": str(e.image_path.resolve())} for e in dataset.entries]
    spacing = tuple(float(s) for s in dataset.info.voxel_size)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    results: dict[str, dict[str, Path]] = {}
    with Progress(disable=not progress) as bar:
        task = bar.add_task("predicting", total=len(rows) * len(keyed))
        for key, spec in keyed.items():
            if gpus_per_worker is None:
                per_worker = 1.0 if gpus > 0 and model_class(spec.name).uses_gpu else 0.0
            else:
                per_worker = float(gpus_per_worker)
            if per_worker:
                check_resources(
                    {"CPU": 1, "GPU": per_worker}, 1, what=f"a prediction actor of {key!r}"
                )
            if num_workers:
                workers = num_workers
            elif per_worker:
                workers = max(1, int(ray.cluster_resources().get("GPU", 0) // per_worker))
            else:
                workers = cpus
            workers = max(1, min(workers, len(rows)))
            data = ray.data.from_items(rows, override_num_blocks=len(rows))
            predicted = data.map_batches(
                CachedPredictor,
                fn_constructor_kwargs={
                    "spec": spec.model_dump(),
                    "cache_root": str(cache_root),
                    "spacing": spacing,
                    "require_gpu": require_gpu,
                },
                batch_size=1,
                compute=ray.data.ActorPoolStrategy(size=workers),  # a fixed pool of model holders
                num_gpus=per_worker,
                num_cpus=1,
            )
            entries: dict[str, Path] = {}
            notes: set[str] = set()
            for row in predicted.iter_rows():
                if row["error"]:
                    raise AopError(str(row["error"]))
                if row["note"]:
                    notes.add(str(row["note"]))
                entries[str(row["name"])] = Path(str(row["entry"]))
                if placements is not None:
                    placements.append(
                        {
                            "model": key,
                            "volume": str(row["name"]),
                            **{k: str(row[k]) for k in ("node", "gpus", "cuda")},
                            "hit": bool(row["hit"]),
                        }
                    )
                bar.update(task, advance=1, description=f"{key}: {row['name']}")
            if notes:
                warnings.warn(sorted(notes)[0] + f" ({len(notes)} actor(s))", stacklevel=2)
            results[key] = {name: entries[name] for name in dataset.names}
    return results

