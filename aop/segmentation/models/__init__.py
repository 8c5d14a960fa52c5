"""The segmentation model zoo: adapters behind one interface, and their registry.

>>> from aop.segmentation.models import build_model
>>> model = build_model("classical", sigma=1.5)
>>> labels = model.predict(image, spacing=(2.0, 0.5, 0.5))  # doctest: +SKIP

Adapters (declared in the entry-point group ``aop.segmentation_models`` of aop's
``pyproject.toml``; libraries and networks load lazily):

- ``classical``: smoothing, Otsu threshold, distance-transform watershed (no weights).
- ``stardist2d`` / ``stardist3d``: StarDist models, 2D ones per slice plus slice stitching.
- ``cellpose``: CellposeSAM in 3D or per slice with stitching.
- ``bioimageio``: any BioImage.IO model package (e.g. PlantSeg UNets), tiled with a halo.
- ``unet3d``: aop's own small 3D UNet (trained by ``aop train-unet``), a BioImage.IO package.

Adding a model is one class with ``name``, ``Settings``, ``predict`` (and ``_load_network``,
``weight_files``, ``weights_path`` when it has weights), declared as an entry point of that group by
the distribution that ships it; ``@register_model`` adds a class defined at run time.
"""

# the built-ins register on import too, so they are there even when aop runs from a source tree
# whose installed metadata predates the entry-point group
from aop.segmentation.models import (  # noqa: F401
    bioimageio,
    cellpose,
    classical,
    stardist,
)
from aop.segmentation.models.base import (
    ENTRY_POINT_GROUP,
    ModelSpec,
    SegmentationModel,
    available_models,
    build_model,
    model_class,
    register_model,
)

__all__ = [
    "ENTRY_POINT_GROUP",
    "ModelSpec",
    "SegmentationModel",
    "available_models",
    "build_model",
    "model_class",
    "register_model",
]
