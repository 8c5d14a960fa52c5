"""Write a synthetic benchmark data set: several simulated volumes with labels and provenance."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from aop.errors import AopError
from aop.instances.annotations import ANNOTATIONS_FILE, COLUMNS
from aop.io import DatasetInfo, write_dataset
from aop.synth.classes import ClassSet, simulate_classes
from aop.synth.params import SimulationParams, check_shape, check_shape_holds_an_object
from aop.synth.simulate import simulate

__all__ = ["volume_seeds", "write_synthetic_dataset"]


def volume_seeds(seed: int, n_volumes: int) -> list[int]:
    """Independent per-volume seeds derived from one data-set seed."""
    state = np.random.SeedSequence(seed).generate_state(n_volumes, dtype=np.uint32)
    return [int(s) for s in state]


def write_synthetic_dataset(
    root: str | os.PathLike,
    params: SimulationParams,
    shape: tuple[int, int, int],
    n_volumes: int,
    seed: int = 0,
    *,
    preset: str | None = None,
    on_volume: Callable[[str, int], None] | None = None,
    classes: ClassSet | None = None,
    overwrite: bool = False,
    overwrite_hint: str = "overwrite=True",
) -> Path:
    """Simulate ``n_volumes`` volumes and write them as a data set (``aop.io`` layout).

    ``dataset.yaml`` records, under ``provenance``, every simulation parameter, the shape, the
    data-set seed, each volume's seed and object count, so any volume can be simulated again
    with :func:`aop.synth.simulate`. The folder appears only when complete.

    Parameters
    ----------
    root : str or path-like
        Destination folder: new, empty, or (with ``overwrite``) an earlier aop data set; see
        :mod:`aop.outputs`. Checked before anything is simulated.
    params : SimulationParams
        Parameters shared by all volumes.
    shape : (int, int, int)
        Volume shape (z, y, x).
    n_volumes : int
        Number of volumes, named ``synth_000``, ``synth_001``, ...
    seed : int
        Data-set seed; volume seeds are derived from it with :func:`volume_seeds`.
    preset : str, optional
        Preset name, recorded in the provenance.
    on_volume : callable, optional
        Called as ``on_volume(name, n_objects)`` after each volume is simulated.
    classes : ClassSet, optional
        Simulate instance classes (:func:`aop.synth.classes.simulate_classes`): the images get
        one channel per marker (C, Z, Y, X), ``dataset.yaml`` declares the classes (keys 1, 2,
        ...) and the channel names, and ``annotations.csv`` holds each instance's class with
        ``source=truth``. Without it the outputs are those of earlier versions, bit for bit.
    overwrite : bool
        Replace an earlier data set written by aop.
    overwrite_hint : str
        How a refusal names the way to allow replacing (``--overwrite`` on the command line).
    """
    shape = check_shape(shape)
    check_shape_holds_an_object(shape, params)
    if isinstance(n_volumes, bool) or not isinstance(n_volumes, int) or n_volumes < 1:
        raise AopError(f"n_volumes must be a positive integer, got {n_volumes!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise AopError(f"seed must be a non-negative integer, got {seed!r}")
    from aop.resources import check_synth_memory

    check_synth_memory(shape, n_objects=params.n_objects)
    seeds = volume_seeds(seed, n_volumes)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    names = [f"synth_{i:03d}" for i in range(n_volumes)]
    volumes_record: dict[str, dict[str, Any]] = {}
    files: dict[str, str] = {}
    truth: list[str] = []

    def generate() -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
        for name, volume_seed in zip(names, seeds, strict=True):
            if classes is None:
                image, labels = simulate(shape, seed=volume_seed, params=params)
            else:
                image, labels, ids = simulate_classes(
                    shape, classes, seed=volume_seed, params=params
                )
                truth.extend(
                    f"{name},{label},{classes.classes[k].name},truth,aop.synth,{stamp}"
                    for label, k in enumerate(ids, start=1)
                )
            n_objects = int(labels.max())
            volumes_record[name] = {"seed": volume_seed, "n_objects": n_objects}
            if on_volume is not None:
                on_volume(name, n_objects)
            yield name, image, labels
        if classes is not None:
            files[ANNOTATIONS_FILE] = "\n".join([",".join(COLUMNS), *truth]) + "\n"

    from aop import __version__

    provenance: dict[str, Any] = {
        "generator": "aop.synth.simulate" if classes is None else "aop.synth.simulate_classes",
        "aop_version": __version__,
        "preset": preset,
        "shape": list(shape),
        "seed": seed,
        "params": params.model_dump(mode="json"),
        "volumes": volumes_record,  # filled while the volumes are generated
    }
    info = DatasetInfo(
        name=Path(root).name,
        voxel_size=params.spacing,
        channel_names=["fluorescence"],
        provenance=provenance,
    )
    if classes is not None:
        if len(classes.classes) > 9:
            raise AopError("at most nine synthetic classes (keys 1..9)")
        info.channel_names = list(classes.channel_names)
        info.classes = [{"name": c.name, "key": str(i + 1)} for i, c in enumerate(classes.classes)]
        provenance["classes"] = [asdict(c) for c in classes.classes]
    return write_dataset(
        root, generate(), info, files, overwrite=overwrite, overwrite_hint=overwrite_hint
    )
