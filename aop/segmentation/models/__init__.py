"""The segmentation model zoo: adapters behind one interface, and their registry.

>>> from aop.segmentation.models import build_model
>>> model = build_model("classical", sigma=1.5)
>>> labels = model.predict(image, spacing=(2.0, 0.5, 0.5))  # doctest: +SKIP

Adapters (each module registers its class on import; libraries load lazily):

- ``classical``: smoothing, Otsu threshold, distance-transform watershed (no weights).
- ``stardist2d`` / ``stardist3d``: StarDist models, 2D ones per slice plus slice stitching.
- ``cellpose``: CellposeSAM in 3D or per slice with stitching.
- ``bioimageio``: any BioImage.IO model package (e.g. PlantSeg UNets), tiled with a halo.
- ``unet3d``: aop's own small 3D UNet (trained by ``aop train-unet``), a BioImage.IO package.

Adding a model is one class with ``name``, ``Settings`` and ``predict``, plus ``@register_model``.
"""

from aop.segmentation.models import (  # noqa: F401  (importing registers the adapters)
    bioimageio,
    cellpose,
    classical,
    stardist,
)
from aop.segmentation.models.base import (
    ModelSpec,
    SegmentationModel,
    available_models,
    build_model,
    register_model,
)

__all__ = ["ModelSpec", "SegmentationModel", "available_models", "build_model", "register_model"]
