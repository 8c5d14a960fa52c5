"""``cellpose``: CellposeSAM in 3D or per slice with stitching.

Weights by name (``cpsam_v2``, ``cpsam``) are looked up in ``$CELLPOSE_LOCAL_MODELS_PATH`` (default
``~/.cellpose/models``), the folder Cellpose's own model hub downloads into, and passed to Cellpose
as a file path so nothing is downloaded; a file path works too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from aop.config import StrictModel
from aop.segmentation.models.base import (
    SegmentationModel,
    Spacing,
    as_labels,
    missing_weights,
    register_model,
    single_channel,
)

NAMED = ("cpsam_v2", "cpsam")


class CellposeSettings(StrictModel):
    """Settings of the ``cellpose`` model."""

    model: str = Field("cpsam_v2", description="Model name in CELLPOSE_LOCAL_MODELS_PATH or file.")
    channel: int = Field(0, ge=0, description="Channel of a (C, Z, Y, X) image to segment.")
    mode: Literal["3d", "stitch"] = Field(
        "3d", description="'3d': do_3D with anisotropy from the voxel size; 'stitch': 2D + stitch."
    )
    stitch_threshold: float = Field(0.5, gt=0, lt=1, description="IoU to stitch slices (2D).")
    diameter: float | None = Field(None, gt=0, description="Object diameter in pixels (None).")
    flow_threshold: float = Field(0.4, ge=0)
    cellprob_threshold: float = Field(0.0)
    min_size: int = Field(15, ge=0)
    batch_size: int = Field(8, ge=1)


def models_dir() -> Path:
    """Where Cellpose keeps named models (``CELLPOSE_LOCAL_MODELS_PATH``)."""
    env = os.environ.get("CELLPOSE_LOCAL_MODELS_PATH")
    return Path(env) if env else Path.home() / ".cellpose" / "models"


@register_model
class CellposeModel(SegmentationModel):
    """CellposeSAM (305 M parameters) through ``cellpose.models.CellposeModel``.

    Weights: ``$CELLPOSE_LOCAL_MODELS_PATH/cpsam_v2`` (or ``cpsam``), or a weights file given as
    setting ``model``.
    """

    name = "cellpose"
    Settings = CellposeSettings
    extra = "cellpose"
    requires = ("cellpose", "torch")
    uses_gpu = True
    weights_setting = "model"

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        model = self.settings.model
        by_name = os.sep not in model and not Path(model).expanduser().exists()
        self.weights = (models_dir() / model) if by_name else Path(model).expanduser()
        if not self.weights.is_file():
            how = (
                f"Cellpose's {model} file; set CELLPOSE_LOCAL_MODELS_PATH to its folder or point "
                "setting 'model' to the file"
                if by_name
                else "a Cellpose weights file named by setting 'model'"
            )
            raise missing_weights(self.name, self.weights, how)

    def weight_files(self) -> list[Path]:
        return [self.weights]

    def weights_path(self) -> Path:
        return self.weights

    def _load_network(self) -> Any:
        """Cellpose's ``CellposeModel`` on the weights file (on a GPU when there is one)."""
        import torch
        from cellpose import models

        return models.CellposeModel(
            gpu=torch.cuda.is_available(), pretrained_model=str(self.weights)
        )

    def predict(self, image: np.ndarray, spacing: Spacing) -> np.ndarray:
        s = self.settings
        volume = single_channel(image, s.channel, self.name)
        options: dict[str, Any] = {
            "diameter": s.diameter,
            "flow_threshold": s.flow_threshold,
            "cellprob_threshold": s.cellprob_threshold,
            "min_size": s.min_size,
            "batch_size": s.batch_size,
            "z_axis": 0,
            "channel_axis": None,
        }
        if s.mode == "3d":
            options.update(do_3D=True, anisotropy=float(spacing[0]) / float(min(spacing[1:])))
        else:
            options.update(do_3D=False, stitch_threshold=s.stitch_threshold)
        masks = self.network.eval(volume, **options)[0]
        return as_labels(np.asarray(masks).reshape(volume.shape))
