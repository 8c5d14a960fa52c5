"""The best segmentation pipeline (model + post-processing) as an MLflow pyfunc model.

:class:`SegmentationPipelineModel` is what :func:`log_pipeline_model`
logs on a study's parent run (and :func:`save_pipeline_model` writes to a folder: the pipeline of
another trial than the best, :func:`trial_pipeline`):
``mlflow.pyfunc.load_model(uri).predict(volume)`` runs the registry segmentation model and the
found post-processing parameters on a new volume. The adapter's own
:meth:`~aop.segmentation.models.SegmentationModel.weight_files` travel with it, as the MLflow
model artifact ``weights`` (their folder layout kept), and on load the adapter's
``weights_setting`` points at the packed copy. So a model given by name and found in its
library's cache (StarDist's ``~/.keras/models``, Cellpose's models folder) runs where that cache
is absent, and so does a plugin adapter wherever its distribution is installed.

This module imports MLflow; the core (``aop.metrics``, ``aop.segmentation``, ``aop.synth``) does
not import it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from aop.errors import AopError

__all__ = [
    "SegmentationPipelineModel", "log_pipeline_model", "save_pipeline_model", "trial_pipeline",
]

WEIGHTS_ARTIFACT = "weights"
#: The name of the logged pipeline model in its run (`runs:/RUN_ID/pipeline`).
PIPELINE_NAME = "pipeline"


class SegmentationPipelineModel(mlflow.pyfunc.PythonModel):
    """The best segmentation pipeline as an MLflow pyfunc model: model + post-processing.

    ``mlflow.pyfunc.load_model(uri).predict(volume)`` segments a (Z, Y, X) or (C, Z, Y, X) volume
    with the model (:func:`aop.segmentation.models.build_model`) and applies
    :func:`aop.segmentation.postprocess.postprocess` with the found parameters; it returns uint32
    instance labels. ``params={"spacing": [z, y, x]}`` sets the voxel size of that volume.

    Parameters
    ----------
    model_name : str
        Registry name of the segmentation model.
    model_settings : mapping
        Its settings as given; the weights setting is replaced by the packed copy on load.
    params : mapping
        The seven post-processing parameters.
    spacing : tuple of 3 floats, optional
        Default voxel size.
    packed_weights : (str, str) or None
        ``(setting, name)``: on load, ``setting`` becomes ``name`` inside the artifact
        ``weights`` (see :meth:`packed`).

    Examples
    --------
    >>> with SegmentationPipelineModel.packed(record, model_spec=spec) as (model, artifacts):
    ...     mlflow.pyfunc.log_model(name="pipeline", python_model=model, artifacts=artifacts)
    ... # doctest: +SKIP
    """

    def __init__(
        self,
        model_name: str,
        model_settings: Mapping[str, Any],
        params: Mapping[str, float],
        spacing: tuple[float, float, float] | None = None,
        packed_weights: tuple[str, str] | None = None,
    ) -> None:
        self.model_name = model_name
        self.model_settings = dict(model_settings)
        self.params = dict(params)
        self.spacing = tuple(float(s) for s in spacing) if spacing is not None else None
        self.packed_weights = tuple(packed_weights) if packed_weights is not None else None
        self._model = None

    @classmethod
    @contextlib.contextmanager
    def packed(
        cls,
        record: Mapping[str, Any],
        spacing: tuple[float, float, float] | None = None,
        model_spec: Any = None,
    ) -> Iterator[tuple[SegmentationPipelineModel, dict[str, str]]]:
        """The pipeline of a trial record, and its weight files staged for MLflow.

        The segmentation model is built here (so a problem fails now, with a clear error, rather
        than at load time) and its :meth:`weight_files` are copied into a temporary folder that
        lives while the context is open: log the model inside it.

        Parameters
        ----------
        record : mapping
            A trial record (``params``; ``model`` when ``model_spec`` is not given).
        spacing : tuple of 3 floats, optional
            Default voxel size of :meth:`predict`.
        model_spec : ModelSpec or mapping, optional
            Registry ``name`` and ``settings`` of the segmentation model; default the record's
            ``model`` with no settings.

        Yields
        ------
        (SegmentationPipelineModel, dict)
            The python model and ``{artifact key: local path}`` for ``mlflow.pyfunc.log_model``
            (empty for a model without weight files).

        Raises
        ------
        AopError
            When the model cannot be built, or its weight files cannot be packed.
        """
        params = {k: v for k, v in record["params"].items() if k != "model"}
        if model_spec is None:
            model_name, settings = record.get("model") or record["params"]["model"], {}
        elif isinstance(model_spec, Mapping):
            model_name, settings = model_spec["name"], dict(model_spec.get("settings") or {})
        else:
            model_name, settings = model_spec.name, dict(model_spec.settings)
        model = cls(model_name, settings, params, spacing)
        model.build()
        adapter, model._model = model._model, None
        files = adapter.weight_files()
        if not files:
            yield model, {}
            return
        location = adapter.weights_path()
        if adapter.weights_setting is None or location is None:
            raise AopError(
                f"model {model_name!r}: has weight files but no 'weights_setting' and "
                "'weights_path()' to point at a packed copy; the pipeline cannot be packed"
            )
        root = location.parent.resolve()
        with tempfile.TemporaryDirectory(prefix="aop-pipeline-") as tmp:
            staged = Path(tmp) / WEIGHTS_ARTIFACT
            for file in files:
                relative = Path(os.path.relpath(Path(file).resolve(), root))
                if relative.parts[0] == "..":
                    raise AopError(
                        f"model {model_name!r}: weight file {file} lies outside {root}, the "
                        f"folder of {location}; the pipeline cannot pack it"
                    )
                target = staged / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(file, target)  # MLflow copies it again; no need to copy twice
                except OSError:
                    shutil.copy2(file, target)
            model.packed_weights = (adapter.weights_setting, location.name)
            yield model, {WEIGHTS_ARTIFACT: str(staged)}

    def build(self, context: Any = None) -> None:
        """Build the segmentation model (with packed paths when loaded from MLflow)."""
        from aop.segmentation.models import ModelSpec, build_model
        from aop.segmentation.params import PostprocessParams

        settings = dict(self.model_settings)
        if context is not None and self.packed_weights is not None:
            key, name = self.packed_weights
            settings[key] = str(Path(context.artifacts[WEIGHTS_ARTIFACT]) / name)
        self.params = PostprocessParams.from_mapping(self.params).to_dict()  # typed, validated
        self._model = build_model(ModelSpec(name=self.model_name, settings=settings))

    def load_context(self, context: Any) -> None:
        """MLflow hook: build the segmentation model once when the pyfunc model is loaded."""
        self.build(context)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_model"] = None
        return state

    def predict(self, context, model_input, params=None):
        """Segment one volume and post-process it; see the class docstring.

        The signature has no type hints on purpose: MLflow would turn them into an input schema.
        """
        from aop.segmentation.postprocess import postprocess

        if self._model is None:
            self.build(context)
        volume = np.asarray(model_input)
        if volume.ndim not in (3, 4):
            raise AopError(f"pipeline input: expected a (Z, Y, X) volume, got shape {volume.shape}")
        spacing = (params or {}).get("spacing") or self.spacing or (1.0, 1.0, 1.0)
        spacing = tuple(float(s) for s in spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise AopError(f"pipeline param 'spacing': expected 3 positive numbers, got {spacing}")
        labels = self._model.predict(volume, spacing)
        image = volume if volume.ndim == 3 else volume[getattr(self._model.settings, "channel", 0)]
        return np.asarray(
            postprocess(labels, image.astype(np.float32), self.params, spacing=spacing),
            dtype=np.uint32,
        )


def log_pipeline_model(
    tracker: Any,
    best: Mapping[str, Any],
    spacing: tuple[float, float, float] | None = None,
    model_spec: Any = None,
    name: str = PIPELINE_NAME,
) -> str:
    """Log the best model + post-processing as an MLflow pyfunc model on a study's parent run.

    Parameters
    ----------
    tracker : aop.tracking.StudyTracker
        The study's tracker (its parent run receives the model).
    best : mapping
        A trial record (``model`` and ``params`` are used).
    spacing : tuple of 3 floats, optional
        Default voxel size (z, y, x); ``predict(volume, params={"spacing": [...]})`` overrides.
    model_spec : ModelSpec or mapping, optional
        Registry ``name`` and ``settings`` of the segmentation model; default the record's
        ``model`` with no settings. The adapter's ``weight_files()`` are packed into the MLflow
        model, so a model found by name in its library's cache runs elsewhere too.
    name : str
        Name of the logged model.

    Returns
    -------
    str
        The model URI, ``runs:/<parent run id>/<name>``; load it with
        ``mlflow.pyfunc.load_model(uri)``.
    """
    import warnings

    from aop.tracking.client import model_requirements

    with (
        SegmentationPipelineModel.packed(best, spacing, model_spec) as (python_model, files),
        tracker.parent_run() as run_id,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", UserWarning)
        mlflow.pyfunc.log_model(
            name=name,
            python_model=python_model,
            artifacts=files or None,
            signature=_signature(spacing),
            pip_requirements=model_requirements(),
        )
    return f"runs:/{run_id}/{name}"


def save_pipeline_model(
    record: Mapping[str, Any],
    path: str | os.PathLike,
    spacing: tuple[float, float, float] | None = None,
    model_spec: Any = None,
) -> Path:
    """Write a trial's model + post-processing as an MLflow pyfunc model folder at ``path``.

    The same model as :func:`log_pipeline_model` logs (its weights packed), for a trial other
    than the study's best: ``mlflow.pyfunc.load_model(path)`` loads it. ``path`` must not exist;
    the folder appears whole or not at all (:func:`aop.outputs.atomic_output`).

    Returns
    -------
    Path
        ``path``.
    """
    import warnings

    from aop.outputs import atomic_output
    from aop.tracking.client import model_requirements

    path = Path(path)
    with (
        SegmentationPipelineModel.packed(record, spacing, model_spec) as (python_model, files),
        atomic_output(path, kind="folder", check=False, mark=False) as tmp,
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore", UserWarning)
        mlflow.pyfunc.save_model(
            path=str(tmp),
            python_model=python_model,
            artifacts=files or None,
            signature=_signature(spacing),
            pip_requirements=model_requirements(),
        )
    return path


def trial_pipeline(study: str | os.PathLike, trial: Mapping[str, Any]) -> Path:
    """The pipeline model folder of one trial of a segmentation study (written on first use).

    ``STUDY/pipelines/SEARCH/TRIAL_ID`` holds the trial's model (its entry of the study's
    ``experiment.yaml`` ``models``, weights packed) and post-processing parameters as an MLflow
    pyfunc model (:func:`save_pipeline_model`): ``aop segment`` applies it when asked for another
    trial than the study's pick (:func:`aop.analysis.report.chosen_trial`), reading it from the
    study folder as it reads a study's Ray Tune trials.

    Raises
    ------
    AopError
        A study of another kind, or whose ``experiment.yaml`` lists no model of the trial's.
    """
    import yaml

    from aop.segmentation.models.specs import ModelConfig

    study = Path(study)
    folder = study / "pipelines" / str(trial["search"]) / str(trial["trial_id"])
    if (folder / "MLmodel").is_file():
        return folder
    saved = study / "experiment.yaml"
    try:
        raw = yaml.safe_load(saved.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise AopError(f"{saved}: cannot read the study's experiment ({exc})") from None
    kind = raw.get("kind", "segmentation") if isinstance(raw, dict) else None
    if kind != "segmentation":
        raise AopError(f"{study}: a {kind} study, not a segmentation study: it has no pipelines")
    key = str(trial["params"].get("model"))
    models = [ModelConfig.model_validate(m) for m in raw.get("models") or []]
    spec = next((m for m in models if m.key == key), None)
    if spec is None:
        raise AopError(f"{saved}: models: no model {key!r} of trial {trial['trial_id']}")
    return save_pipeline_model(trial, folder, model_spec={"name": spec.name,
                                                          "settings": spec.settings})


def _signature(spacing: tuple[float, float, float] | None) -> Any:
    """The pipeline's signature: no schema, one parameter ``spacing`` (default ``spacing``)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ParamSchema, ParamSpec

    default_spacing = [float(s) for s in spacing or (1.0, 1.0, 1.0)]
    return ModelSignature(
        inputs=None,
        outputs=None,
        params=ParamSchema([ParamSpec("spacing", "double", default_spacing, (-1,))]),
    )
