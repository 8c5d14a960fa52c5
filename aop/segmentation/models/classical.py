"""``classical``: Gaussian smoothing, Otsu threshold and a distance-transform watershed."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from aop.config import StrictModel
from aop.segmentation.instances import distance_watershed, sigma_voxels
from aop.segmentation.models.base import (
    SegmentationModel,
    Spacing,
    register_model,
    single_channel,
)


class ClassicalSettings(StrictModel):
    """Settings of the ``classical`` model."""

    channel: int = Field(0, ge=0, description="Channel of a (C, Z, Y, X) image to segment.")
    sigma: float = Field(1.0, ge=0, description="Smoothing width, voxels of the finest axis.")
    threshold: Literal["otsu"] | float = Field(
        "otsu", description="'otsu' or a fixed threshold on the smoothed image."
    )
    seed_height: float = Field(
        0.5, gt=0, description="Minimum height of distance maxima that seed instances (um)."
    )
    sigma_seeds: float = Field(1.0, ge=0, description="Smoothing of the distance map, voxels.")
    min_size: int = Field(20, ge=0, description="Smallest kept instance, voxels.")


@register_model
class ClassicalModel(SegmentationModel):
    """Foreground by Otsu's threshold on a smoothed image, split by a distance-transform watershed.

    Needs no weights and no optional library; always available.
    """

    name = "classical"
    Settings = ClassicalSettings

    def predict(self, image: np.ndarray, spacing: Spacing) -> np.ndarray:
        s = self.settings
        volume = single_channel(image, s.channel, self.name)
        if s.sigma > 0:
            volume = ndi.gaussian_filter(volume, sigma_voxels(s.sigma, spacing))
        if volume.max() <= volume.min():
            return np.zeros(volume.shape, dtype=np.uint32)
        level = threshold_otsu(volume) if s.threshold == "otsu" else float(s.threshold)
        foreground = volume > level
        return distance_watershed(
            foreground.astype(np.float32),
            None,
            spacing,
            threshold=0.5,
            sigma_seeds=s.sigma_seeds,
            seed_height=s.seed_height,
            alpha=0.0,
            min_size=s.min_size,
        )
