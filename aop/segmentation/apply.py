"""Apply a study's best pipeline (its MLflow pyfunc model) to every volume of a data set (Ray Data).

One Ray Data row per volume (its name and file path); a pool of actors each loads the MLflow model
once (:class:`PipelineWorker`), reads its volumes itself (tifffile or Zarr through
:func:`aop.io.read_volume`, so the driver never holds a volume) and writes ``labels/NAME.tif``
into the output data set atomically. A rerun skips the volumes whose labels are already written,
so an interrupted run continues where it stopped. On a GPU cluster each actor takes
``gpus_per_worker`` GPUs.

The output data set has ``labels/``, a ``dataset.yaml`` copied from the input (with the
provenance of the segmentation added) and ``images/`` as links to the input images (copies where
the file system has no links), so ``aop instances OUT`` works on it directly. The output folder
carries aop's marker (kind ``segmented data set``): a missing or empty folder is claimed, a folder
so marked is continued, anything else (a user's files, another aop output, an input, a folder
holding the input or the current folder) is refused before any work (:func:`check_output`). Ray
and MLflow are imported inside the functions; nothing here is imported by the core.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from aop.errors import AopError
from aop.outputs import MARKER, atomic_file, claim_folder, prepare_output

__all__ = ["PipelineWorker", "apply_pipeline", "check_output", "resolve_model"]

PIPELINE_NAME = "pipeline"
OUTPUT_KIND = "segmented data set"
ACTOR_START_TIMEOUT_S = 600


def resolve_model(source: str | os.PathLike) -> tuple[str, str | None]:
    """The model URI and tracking URI of ``source``: a study folder or an MLflow model URI.

    A study folder (it holds ``mlflow_run_id``) gives ``runs:/<parent run>/pipeline`` in the
    study's tracking store: the ``tracking.tracking_uri`` its ``experiment.yaml`` saved (an MLflow
    server given with ``--tracking-uri``), else its own SQLite store, wherever the folder is now.
    Anything else is taken as a model URI (``runs:/``, ``models:/``, a local model folder) in the
    current tracking URI.

    Raises
    ------
    AopError
        For a folder that is neither a study nor an MLflow model, or a study of another kind
        than segmentation (its ``study.yaml`` says which).
    """
    from aop.tracking import RUN_ID_FILE, is_model_uri

    path = Path(source)
    if path.is_dir():
        if (path / RUN_ID_FILE).is_file():
            _check_segmentation_study(path)
            run_id = (path / RUN_ID_FILE).read_text(encoding="utf-8").strip()
            return f"runs:/{run_id}/{PIPELINE_NAME}", _study_tracking_uri(path)
        if (path / "MLmodel").is_file():
            return str(path.resolve()), None
        raise AopError(f"{path}: neither a study folder ({RUN_ID_FILE}) nor an MLflow model")
    text = str(source)
    if is_model_uri(text):
        return text, None
    raise AopError(f"{source}: no such study folder or model URI")


def _check_segmentation_study(study: Path) -> None:
    """Refuse a study folder whose ``study.yaml`` names another kind: it logged no pipeline."""
    from aop.config import read_yaml

    meta = study / "study.yaml"
    if not meta.is_file():
        return  # a study of an aop without study.yaml: the pipeline lookup says more
    raw = read_yaml(meta)
    kind = raw.get("kind") if isinstance(raw, dict) else None
    if kind is not None and kind != "segmentation":
        raise AopError(
            f"{study}: a {kind} study (its study.yaml says kind: {kind}), not a segmentation "
            "study: it holds no segmentation pipeline to apply"
        )


def _study_tracking_uri(study: Path) -> str:
    """The tracking store a study logged to (see :func:`resolve_model`)."""
    from aop.tracking import default_tracking_uri
    from aop.tracking.relocate import moved_study_store

    saved = study / "experiment.yaml"
    raw: Any = {}
    if saved.is_file():
        try:
            raw = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise AopError(f"{saved}: not readable YAML ({exc})") from None
    uri = ((raw.get("tracking") or {}) if isinstance(raw, dict) else {}).get("tracking_uri")
    stored = ((raw.get("storage") or {}).get("study_dir")) if isinstance(raw, dict) else None
    new = study.resolve()
    uri = moved_study_store(str(uri) if uri else None, Path(stored) if stored else new, new)
    return uri or default_tracking_uri(new)


class PipelineWorker:
    """Ray Data actor: holds the pipeline model; (name, path) rows in, (name, node) rows out."""

    def __init__(
        self,
        model_uri: str,
        tracking_uri: str | None,
        labels_dir: str,
        spacing: tuple[float, float, float],
    ) -> None:
        import mlflow

        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        self.model = mlflow.pyfunc.load_model(model_uri)
        self.labels_dir = Path(labels_dir)
        self.spacing = [float(s) for s in spacing]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import ray

        from aop.io import read_volume, write_volume

        names = []
        for name, path in zip(batch["name"], batch["path"], strict=True):
            image, _ = read_volume(str(path))
            labels = self.model.predict(image, params={"spacing": self.spacing})
            write_volume(self.labels_dir / f"{name}.tif", np.asarray(labels), tuple(self.spacing))
            names.append(str(name))
        node = ray.get_runtime_context().get_node_id()
        return {"name": np.asarray(names), "node": np.asarray([node] * len(names))}


def _marker_kind(folder: Path) -> str | None:
    """The kind recorded in ``folder``'s aop marker (None: no readable marker)."""
    try:
        raw = yaml.safe_load((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    kind = raw.get("kind") if isinstance(raw, dict) else None
    return str(kind) if kind is not None else None


def check_output(
    out: str | os.PathLike, data: str | os.PathLike, source: str | os.PathLike | None = None
) -> Path:
    """Check, before any work, that ``out`` may receive the segmentation of ``data``.

    A missing or empty folder, or one an earlier ``aop segment`` wrote (its marker says
    ``segmented data set``; its finished volumes are kept and skipped), is accepted.

    Raises
    ------
    AopError
        One line: ``out`` is the input data set or the study folder, holds one of them or the
        current folder, is a file, holds files aop did not write, or is another aop output.
    """
    shown = Path(out)
    inputs = [Path(data)]
    if source is not None and Path(source).exists():
        inputs.append(Path(source))
    if shown.resolve() == Path(data).resolve():
        raise AopError(f"{shown}: the output must be another folder than the input data set")
    # the input checks; overwrite=True because aop's own segmentation is continued, not replaced
    target = prepare_output(shown, inputs=inputs, kind="folder", overwrite=True)
    if target.is_dir() and any(target.iterdir()):
        kind = _marker_kind(target)
        if kind is None:
            names = ", ".join(sorted(p.name for p in target.iterdir())[:3])
            raise AopError(f"{shown}: folder holds files aop did not write ({names}); choose a "
                           "new or empty folder")  # fmt: skip
        if kind != OUTPUT_KIND:
            raise AopError(f"{shown}: holds another aop output (a {kind}), not a segmentation; "
                           "choose a new or empty folder")  # fmt: skip
    return target


def _prepare_output(dataset: Any, out: Path, model_uri: str) -> None:
    """Claim the output folder; create its ``dataset.yaml`` and ``images/`` links (once)."""
    claim_folder(out, OUTPUT_KIND)
    (out / "labels").mkdir(exist_ok=True)
    images = out / "images"
    images.mkdir(exist_ok=True)
    for entry in dataset.entries:
        target = images / entry.image_path.name
        if target.exists() or target.is_symlink():
            continue
        try:
            target.symlink_to(entry.image_path.resolve())
        except OSError:
            shutil.copy2(entry.image_path, target)
    info = out / "dataset.yaml"
    if not info.exists():
        raw = dataset.info.to_dict()  # voxel size, channel names, classes
        raw["name"] = out.name
        raw["provenance"] = {
            "segmented_from": str(dataset.root.resolve()),
            "pipeline": model_uri,
            "source_provenance": raw["provenance"],
        }
        with atomic_file(info) as tmp:
            tmp.write_text(yaml.safe_dump(raw, sort_keys=False))


def apply_pipeline(
    source: str | os.PathLike,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    address: str | None = None,
    num_workers: int | None = None,
    gpus_per_worker: float = 0.0,
    on_volume: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """Segment every volume of ``data`` with the pipeline of ``source`` into the data set ``out``.

    Parameters
    ----------
    source : str or path-like
        A study folder or an MLflow model URI (:func:`resolve_model`).
    data : str or path-like
        The input data set (``images/``; its voxel size is passed to the pipeline).
    out : str or path-like
        The output data set; ``labels/NAME.tif`` already there are kept and skipped.
    address : str, optional
        Ray cluster address (see :func:`aop.ray_cluster.connect`); None starts a local Ray. A Ray
        already started in this process is used as it is.
    num_workers : int, optional
        Actors holding the model (default: one per GPU with ``gpus_per_worker``, else one per
        CPU; at most one per volume); also the CPUs of a local Ray.
    gpus_per_worker : float
        GPUs each actor takes.
    on_volume : callable, optional
        Called with each volume's name once its labels are written (progress).

    Returns
    -------
    dict of str to str
        Volume name -> id of the Ray node that segmented it, for the volumes done in this run.

    Raises
    ------
    AopError
        For a missing data set, study or model, ``num_workers`` below 1, a negative
        ``gpus_per_worker`` or more GPUs per worker than a node of the cluster has, or a Ray
        address that is malformed or cannot be joined; each before the output is created.
    """
    import ray

    from aop.io import load_dataset
    from aop.ray_cluster import check_address, check_resources, connect

    if num_workers is not None and num_workers < 1:
        raise AopError(f"num_workers must be at least 1, got {num_workers}")
    if gpus_per_worker < 0:
        raise AopError(f"gpus_per_worker must be non-negative, got {gpus_per_worker}")
    check_address(address)
    model_uri, tracking_uri = resolve_model(source)
    dataset = load_dataset(data, validate=False)
    out = Path(out)
    check_output(out, dataset.root, source)
    _load_check(model_uri, tracking_uri)
    labels_dir = (out / "labels").resolve()
    done = {p.name for p in labels_dir.iterdir()} if labels_dir.is_dir() else set()
    rows = [
        {"name": e.name, "path": str(e.image_path.resolve())}
        for e in dataset.entries
        if f"{e.name}.tif" not in done
    ]
    if not rows:  # every volume's labels written: the output was prepared by an earlier run
        return {}
    # join (or start) Ray before the output is created: a cluster that cannot be joined is one
    # line, and leaves no output folder behind
    connect(address, num_cpus=num_workers)
    if gpus_per_worker > 0:  # an actor no node can hold would wait forever
        check_resources(
            {"CPU": 1, "GPU": gpus_per_worker}, 1,
            what=f"a segmentation worker with gpus_per_worker {gpus_per_worker:g}",
        )  # fmt: skip
    _prepare_output(dataset, out, model_uri)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S  # every actor holds the model before work
    resources = ray.cluster_resources()
    if gpus_per_worker > 0:
        default = max(1, int(resources.get("GPU", 0) // gpus_per_worker))
    else:
        default = int(resources.get("CPU", 1))
    workers = max(1, min(num_workers or default, len(rows)))
    spacing = tuple(float(s) for s in dataset.info.voxel_size)
    segmented = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        PipelineWorker,
        fn_constructor_kwargs={
            "model_uri": model_uri,
            "tracking_uri": tracking_uri,
            "labels_dir": str(labels_dir),
            "spacing": spacing,
        },
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),  # a fixed pool of model holders
        num_gpus=gpus_per_worker,
        num_cpus=1,
    )
    nodes: dict[str, str] = {}
    for row in segmented.iter_rows():
        nodes[str(row["name"])] = str(row["node"])
        if on_volume is not None:
            on_volume(str(row["name"]))
    return nodes


def _load_check(model_uri: str, tracking_uri: str | None) -> None:
    """Fail in the driver, in one line, when the model cannot be found (before any worker).

    A ``runs:/`` or ``models:/`` URI is looked up in a tracking store: without one given (a
    study's, or ``MLFLOW_TRACKING_URI``), MLflow's default is an SQLite file in the current
    folder, which looking the model up would create; where that file does not exist the model
    cannot be in it, so it is refused without creating the file.
    """
    import mlflow

    from aop.tracking.client import require_model_store

    if tracking_uri is None:
        require_model_store(model_uri)
    previous = mlflow.get_tracking_uri()
    try:
        if tracking_uri:
            mlflow.set_tracking_uri(tracking_uri)
        mlflow.models.get_model_info(model_uri)
    except Exception as exc:  # noqa: BLE001  (MLflow raises many types for a missing model)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AopError(f"{model_uri}: cannot load the pipeline model ({reason})") from None
    finally:
        mlflow.set_tracking_uri(previous)
