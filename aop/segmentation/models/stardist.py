"""``stardist2d`` and ``stardist3d``: StarDist models loaded from their folders.

A StarDist model folder holds ``config.json``, ``weights_best.h5`` (or ``weights_last.h5``) and
optionally ``thresholds.json``. Registered 2D models such as ``2D_versatile_fluo`` are looked up
where StarDist's own ``from_pretrained`` unpacks them, ``$KERAS_HOME/models/StarDist2D/NAME/``
(``KERAS_HOME`` defaults to ``~/.keras``); nothing is downloaded. The folder is loaded with
StarDist's own ``StarDist2D(None, name=..., basedir=...)``.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from aop.config import StrictModel
from aop.segmentation.instances import stitch_slices
from aop.segmentation.models.base import (
    SegmentationModel,
    Spacing,
    as_labels,
    missing_weights,
    register_model,
    single_channel,
)

WEIGHT_NAMES = ("weights_best.h5", "weights_last.h5")


class StarDistSettings(StrictModel):
    """Settings shared by the StarDist adapters."""

    model: str = Field(
        "2D_versatile_fluo", description="Registered model name or path to a model folder."
    )
    channel: int = Field(0, ge=0, description="Channel of a (C, Z, Y, X) image to segment.")
    percentiles: tuple[float, float] = Field(
        (1.0, 99.8), description="Percentile normalisation (csbdeep normalize) low, high."
    )
    prob_thresh: float | None = Field(
        None, ge=0, le=1, description="Probability threshold (None: the model's thresholds.json)."
    )
    nms_thresh: float | None = Field(
        None, ge=0, le=1, description="NMS threshold (None: the model's thresholds.json)."
    )


class StarDist2DSettings(StarDistSettings):
    """Settings of ``stardist2d``."""

    stitch_threshold: float = Field(
        0.5,
        ge=0,
        lt=1,
        description="Link 2D instances of consecutive slices when |a&b|/min(|a|,|b|) exceeds it.",
    )


class StarDist3DSettings(StarDistSettings):
    """Settings of ``stardist3d`` (``model`` must be a folder)."""

    model: str = Field(..., description="Path to a StarDist3D model folder.")


def prepare_tensorflow() -> None:
    """Import ``triton`` (PyTorch's compiler backend) before TensorFlow loads.

    With tensorflow-cpu 2.21 and torch 2.14 in one process, importing ``triton`` after TensorFlow
    crashes the interpreter (segmentation fault); the other order works. Call this before anything
    imports ``stardist.models`` or ``tensorflow``.
    """
    if "tensorflow" not in sys.modules and importlib.util.find_spec("triton") is not None:
        import triton  # noqa: F401


def keras_models_dir() -> Path:
    """Where StarDist's ``from_pretrained`` keeps unpacked registered models."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


class _StarDistBase(SegmentationModel):
    extra = "stardist"
    requires = ("stardist", "csbdeep", "tensorflow")
    uses_gpu = True
    weights_setting = "model"
    kind: ClassVar[str]

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.folder = self._resolve_folder(self.settings.model)

    def _resolve_folder(self, model: str) -> Path:
        as_path = Path(model).expanduser()
        looks_like_path = os.sep in model or model.startswith(".") or as_path.exists()
        folder = as_path if looks_like_path else keras_models_dir() / self.kind / model
        how = (
            "a StarDist model folder with config.json and weights_best.h5; point setting "
            "'model' to it"
            if looks_like_path
            else f"unpack StarDist's {model}.zip there, or point setting 'model' to a model "
            "folder; KERAS_HOME moves the ~/.keras root"
        )
        if not (folder / "config.json").is_file():
            raise missing_weights(self.name, folder / "config.json", how)
        if not any((folder / w).is_file() for w in WEIGHT_NAMES):
            raise missing_weights(self.name, folder / WEIGHT_NAMES[0], how)
        return folder

    def weight_files(self) -> list[Path]:
        names = ("config.json", *WEIGHT_NAMES, "thresholds.json")
        return [self.folder / n for n in names if (self.folder / n).is_file()]

    def weights_path(self) -> Path:
        return self.folder

    def _load_network(self) -> Any:
        """StarDist's own model class, loaded from the folder (``StarDist2D`` or ``StarDist3D``)."""
        prepare_tensorflow()
        from stardist import models

        cls = getattr(models, self.kind)
        return cls(None, name=self.folder.name, basedir=str(self.folder.parent))

    def _normalized(self, image: np.ndarray) -> np.ndarray:
        from csbdeep.utils import normalize

        volume = single_channel(image, self.settings.channel, self.name)
        low, high = self.settings.percentiles
        return normalize(volume, low, high, axis=(0, 1, 2)).astype(np.float32)

    def _thresholds(self) -> dict[str, float]:
        """The thresholds set, overriding the model's ``thresholds.json``."""
        chosen = {"prob_thresh": self.settings.prob_thresh, "nms_thresh": self.settings.nms_thresh}
        return {name: value for name, value in chosen.items() if value is not None}


@register_model
class StarDist2DModel(_StarDistBase):
    """StarDist2D applied slice by slice; 2D instances joined into 3D ones by overlap.

    Weights: ``$KERAS_HOME/models/StarDist2D/2D_versatile_fluo/`` (``config.json``,
    ``weights_best.h5``, ``thresholds.json``) or any model folder given as setting ``model``.
    """

    name = "stardist2d"
    Settings = StarDist2DSettings
    kind = "StarDist2D"

    def predict(self, image: np.ndarray, spacing: Spacing) -> np.ndarray:
        volume = self._normalized(image)
        net = self.network
        slices = np.zeros(volume.shape, dtype=np.int32)
        for z, plane in enumerate(volume):
            labels, _ = net.predict_instances(plane, show_tile_progress=False, **self._thresholds())
            slices[z] = labels
        return stitch_slices(slices, self.settings.stitch_threshold)


@register_model
class StarDist3DModel(_StarDistBase):
    """A StarDist3D model folder applied to the whole volume."""

    name = "stardist3d"
    Settings = StarDist3DSettings
    kind = "StarDist3D"

    def predict(self, image: np.ndarray, spacing: Spacing) -> np.ndarray:
        labels, _ = self.network.predict_instances(
            self._normalized(image), show_tile_progress=False, **self._thresholds()
        )
        return as_labels(labels)
