"""The best segmentation pipeline (model + post-processing) as an MLflow pyfunc model.

:class:`SegmentationPipelineModel` is what :meth:`aop.tracking.StudyTracker.log_pipeline_model`
logs on a study's parent run: ``mlflow.pyfunc.load_model(uri).predict(volume)`` runs the
registry segmentation model and the found post-processing parameters on a new volume. Model
settings that name an existing file or folder (the weights of ``unet3d`` or ``bioimageio``) are
packed as MLflow model artifacts, so the loaded model does not need the original paths.

This module imports MLflow; the core (``aop.metrics``, ``aop.segmentation``, ``aop.synth``) does
not import it. ``aop.tracking`` re-exports :class:`SegmentationPipelineModel`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from aop.errors import AopError

__all__ = ["SegmentationPipelineModel"]


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
        Its settings; those that name packed artifacts are replaced by the packed copies on load.
    params : mapping
        The seven post-processing parameters.
    spacing : tuple of 3 floats, optional
        Default voxel size.
    packed_settings : iterable of str
        Settings keys whose paths travel as MLflow model artifacts (key ``setting.<key>``).
    """

    def __init__(
        self,
        model_name: str,
        model_settings: Mapping[str, Any],
        params: Mapping[str, float],
        spacing: tuple[float, float, float] | None = None,
        packed_settings: Iterable[str] = (),
    ) -> None:
        self.model_name = model_name
        self.model_settings = dict(model_settings)
        self.params = dict(params)
        self.spacing = tuple(float(s) for s in spacing) if spacing is not None else None
        self.packed_settings = tuple(packed_settings)
        self._model = None

    @classmethod
    def from_record(
        cls,
        record: Mapping[str, Any],
        spacing: tuple[float, float, float] | None = None,
        model_spec: Any = None,
    ) -> tuple[SegmentationPipelineModel, dict[str, str]]:
        """Build the model of a trial record and the artifacts it needs packed.

        ``model_spec`` (a ``ModelSpec``, or a mapping with ``name`` and ``settings``) names the
        registry model; default the record's ``model`` with no settings.

        Returns
        -------
        (SegmentationPipelineModel, dict)
            The python model and ``{artifact key: local path}`` for ``mlflow.pyfunc.log_model``.
        """
        params = {k: v for k, v in record["params"].items() if k != "model"}
        if model_spec is None:
            model_name, settings = record.get("model") or record["params"]["model"], {}
        elif isinstance(model_spec, Mapping):
            model_name, settings = model_spec["name"], dict(model_spec.get("settings") or {})
        else:
            model_name, settings = model_spec.name, dict(model_spec.settings)
        artifacts = {}
        for key, value in settings.items():
            if _is_path_setting(value):
                artifacts[f"setting.{key}"] = str(Path(value).resolve())
        packed = [key.removeprefix("setting.") for key in artifacts]
        model = cls(model_name, settings, params, spacing, packed_settings=packed)
        model.build()  # fail now, with a clear error, rather than at load time
        model._model = None
        return model, artifacts

    def build(self, context: Any = None) -> None:
        """Build the segmentation model (with packed paths when loaded from MLflow)."""
        from aop.segmentation.models import ModelSpec, build_model
        from aop.segmentation.params import PostprocessParams

        settings = dict(self.model_settings)
        if context is not None:
            for key in self.packed_settings:
                settings[key] = context.artifacts[f"setting.{key}"]
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


def _is_path_setting(value: Any) -> bool:
    """A model setting that points to a file or folder (``weights/unet``, ``/abs/model.pt``)."""
    if isinstance(value, os.PathLike):
        return Path(value).exists()
    if not isinstance(value, str) or not value or ("/" not in value and os.sep not in value):
        return False
    return Path(value).exists()
