"""``bioimageio`` and ``unet3d``: BioImage.IO model packages (PlantSeg UNets, aop's own UNet).

A package is a folder, ``rdf.yaml`` or ``.zip`` in the BioImage.IO model format (0.4 or 0.5; 0.4
descriptions are converted to 0.5 on load). ``bioimageio.core`` validates it (including the weights'
SHA-256), builds the network from whichever weights format it supports and runs the package's own
pre- and post-processing. Around that, the adapter

1. rescales the volume from its voxel size to the model's training voxel size (the input axes'
   ``scale`` and ``unit`` in the description, or setting ``model_voxel_size``),
2. applies the sample-wise pre-processing to the whole volume, so percentiles and means do not
   change from tile to tile,
3. predicts block by block: each block reads ``halo`` voxels of real neighbouring context on every
   side, padded (the package's padding mode, symmetric by default) only beyond the volume's own
   border, and the halo is cropped from each output block,
4. applies the post-processing, rescales back to the input grid, and
5. turns the foreground/boundary channels into instances with PlantSeg's recipe: a
   distance-transform watershed (:func:`aop.segmentation.instances.distance_watershed`, in 3D or
   per slice with ``stacked``), optionally followed by average-linkage agglomeration on the
   boundary map (``gasp_beta``, :func:`aop.segmentation.agglomeration.agglomerate_average`).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field
from scipy import ndimage as ndi

from aop.config import StrictModel
from aop.errors import AopError
from aop.segmentation.agglomeration import agglomerate_average
from aop.segmentation.instances import distance_watershed
from aop.segmentation.models.base import (
    SegmentationModel,
    Spacing,
    missing_weights,
    register_model,
    single_channel,
)

__all__ = ["BioImageIOModel", "UNet3DModel", "load_package"]

_SPATIAL = ("z", "y", "x")
_MICROMETRES = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3, "meter": 1e6}


class BioImageIOSettings(StrictModel):
    """Settings of the ``bioimageio`` model."""

    model: str | None = Field(
        None, description="Package folder, rdf.yaml or .zip (or env AOP_BIOIMAGEIO_MODEL)."
    )
    channel: int = Field(0, ge=0, description="Channel of a (C, Z, Y, X) image to segment.")
    tile_shape: tuple[int, int, int] | None = Field(
        None, description="Block size (z, y, x) incl. halo, rounded up to a valid input size; "
        "None: the whole volume in one block."
    )
    halo: tuple[int, int, int] | None = Field(
        None, description="Context per side (z, y, x); None: the package's output halo."
    )
    rescale: bool = Field(True, description="Resample to the model's training voxel size.")
    model_voxel_size: tuple[float, float, float] | None = Field(
        None, description="Training voxel size (z, y, x) in um when the package has none."
    )
    weights_format: str | None = Field(
        None, description="Weights entry to run, e.g. 'torchscript'; None: bioimageio.core's "
        "choice."
    )
    devices: list[str] | None = Field(
        None, description="Torch devices, e.g. ['cuda:0']; None: a GPU when there is one."
    )
    foreground_channel: int | None = Field(0, description="Output channel of foreground.")
    boundary_channel: int | None = Field(1, description="Output channel of boundaries.")
    threshold: float = Field(0.5, ge=0, le=1)
    sigma_seeds: float = Field(1.0, ge=0)
    sigma_weights: float = Field(2.0, ge=0)
    seed_height: float = Field(0.5, gt=0, description="Minimum distance-maximum height (um).")
    alpha: float = Field(1.0, ge=0, le=1, description="Weight of boundaries in the relief.")
    min_size: int = Field(100, ge=0, description="Smallest kept instance, voxels.")
    stacked: bool = Field(False, description="PlantSeg's per-slice 2D watershed.")
    gasp_beta: float | None = Field(
        None, ge=0, le=1, description="Average-linkage agglomeration on the boundary map: merge "
        "while the mean boundary is below beta (PlantSeg: 0.5); None: off."
    )
    gasp_min_size: int = Field(100, ge=0, description="Agglomeration: merge smaller instances.")


def _rdf_path(source: Path) -> Path:
    return source if source.suffix in (".yaml", ".yml") else source / "rdf.yaml"


def _missing_local_weights(rdf: Path) -> Path | None:
    """The first weights file ``rdf`` names that is not on disk (remote sources are skipped)."""
    import yaml

    try:
        content = yaml.safe_load(rdf.read_text())
    except yaml.YAMLError as exc:
        raise AopError(f"{rdf}: not valid YAML ({type(exc).__name__})") from None
    weights = content.get("weights") if isinstance(content, dict) else None
    if not isinstance(weights, dict):
        raise AopError(f"{rdf}: not a BioImage.IO model description (no 'weights')")
    for entry in weights.values():
        source = str((entry or {}).get("source", ""))
        if source and "://" not in source and not (rdf.parent / source).is_file():
            return rdf.parent / source
    return None


def load_package(
    source: str | os.PathLike,
    name: str = "bioimageio",
    how: str = "a BioImage.IO package folder with rdf.yaml, or a .zip package",
) -> Any:
    """Load and validate a BioImage.IO model package with ``bioimageio.core``.

    Parameters
    ----------
    source : path
        Package folder, its ``rdf.yaml`` or a ``.zip`` package.
    name : str
        Adapter name used in error messages.
    how : str
        Where such a package comes from, for the missing-package message.

    Returns
    -------
    bioimageio.spec.model.v0_5.ModelDescr
        The description, converted to format 0.5 when the package is 0.4.

    Raises
    ------
    AopError
        When the package or a weights file is missing, or the description is invalid.
    """
    from bioimageio.spec import InvalidDescr, load_description
    from bioimageio.spec.model import v0_5
    from loguru import logger

    logger.disable("bioimageio")  # its INFO logging has one line per file hashed
    path = Path(source).expanduser()
    if path.suffix != ".zip":
        rdf = _rdf_path(path)
        if not rdf.is_file():
            raise missing_weights(name, rdf, how)
        if (missing := _missing_local_weights(rdf)) is not None:
            raise missing_weights(name, missing, f"named by {rdf}")
        path = rdf
    elif not path.is_file():
        raise missing_weights(name, path, how)
    descr = load_description(path, format_version="latest", perform_io_checks=True)
    if isinstance(descr, InvalidDescr) or not isinstance(descr, v0_5.ModelDescr):
        reason = _first_error(descr) if isinstance(descr, InvalidDescr) else descr.type
        raise AopError(f"{path}: not a valid BioImage.IO model package: {reason}")
    return descr


def _first_error(descr: Any) -> str:
    for detail in descr.validation_summary.details:
        for error in detail.errors:
            where = ".".join(str(part) for part in error.loc)
            return f"{where}: {error.msg}" if where else error.msg
    return "invalid description"


def _valid_size(size: Any, at_least: int) -> int:
    """Smallest valid size >= ``at_least`` for an input axis size of a 0.5 description."""
    from bioimageio.spec.model import v0_5

    if isinstance(size, int):
        return size
    if isinstance(size, v0_5.ParameterizedSize):
        if at_least <= size.min or size.step == 0:
            return size.min
        return size.min + size.step * math.ceil((at_least - size.min) / size.step)
    return at_least


def _resample(volume: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Linear resampling of a (C, Z, Y, X) volume to spatial ``shape``."""
    if tuple(volume.shape[1:]) == tuple(shape):
        return volume
    factors = [1.0] + [t / s for t, s in zip(shape, volume.shape[1:], strict=True)]
    out = ndi.zoom(volume, factors, order=1, grid_mode=True, mode="grid-constant")
    # zoom rounds the output size; crop or pad to exactly ``shape``
    out = out[:, : shape[0], : shape[1], : shape[2]]
    pad = [(0, 0)] + [(0, t - s) for t, s in zip(shape, out.shape[1:], strict=True)]
    return np.pad(out, pad, mode="edge")


def _as_input(volume: np.ndarray, dims: list[str]) -> np.ndarray:
    """A (Z, Y, X) volume laid out along a tensor's axes (singleton batch and channel axes)."""
    data = np.transpose(volume, [_SPATIAL.index(d) for d in dims if d in _SPATIAL])
    for position, dim in enumerate(dims):
        if dim not in _SPATIAL:
            data = np.expand_dims(data, position)
    return np.ascontiguousarray(data, dtype=np.float32)


@register_model
class BioImageIOModel(SegmentationModel):
    """Any 3D BioImage.IO model package with foreground and/or boundary outputs.

    Runs through ``bioimageio.core`` with any weights format it supports (PyTorch state dict,
    TorchScript, ONNX, ...). Weights: the package folder, ``rdf.yaml`` or ``.zip`` given as setting
    ``model`` or by the environment variable ``AOP_BIOIMAGEIO_MODEL`` (e.g. PlantSeg's
    ``PlantSeg_3Dnuc_platinum`` or ``generic_confocal_3D_unet``; for a boundary-only model set
    ``foreground_channel=None`` and ``boundary_channel=0``).
    """

    name = "bioimageio"
    Settings = BioImageIOSettings
    requires = ("torch", "bioimageio.core")
    uses_gpu = True
    weights_setting = "model"
    runtime_settings = ("devices",)
    transient = ("_descr",)  # reloaded (and re-validated) where the model runs
    env_var = "AOP_BIOIMAGEIO_MODEL"
    how_to_get = (
        "a BioImage.IO package folder with rdf.yaml, e.g. PlantSeg_3Dnuc_platinum from "
        "bioimage.io; pass setting 'model' or set AOP_BIOIMAGEIO_MODEL"
    )

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        source = self.settings.model or os.environ.get(self.env_var)
        if not source:
            raise AopError(f"model {self.name!r}: no model package given: {self.how_to_get}")
        self.source = Path(source).expanduser()
        self._descr = load_package(self.source, self.name, self.how_to_get)
        self._check_tensors(self._descr)

    def _check_tensors(self, descr: Any) -> None:
        where = f"model {self.name!r} ({self.source})"
        if len(descr.inputs) != 1:
            raise AopError(f"{where}: expected one input tensor, got {len(descr.inputs)}")
        for tensor in (descr.inputs[0], descr.outputs[0]):
            other = [str(a.id) for a in tensor.axes if a.type not in ("batch", "channel", "space")]
            if other:
                raise AopError(f"{where}: tensor {tensor.id!r} has unsupported axes {other}")
            space = {str(a.id) for a in tensor.axes if a.type == "space"}
            if space != set(_SPATIAL):
                raise AopError(
                    f"{where}: tensor {tensor.id!r} has spatial axes {sorted(space)}; a 3D "
                    "model with z, y, x is needed"
                )
        channels = [a for a in descr.inputs[0].axes if a.type == "channel"]
        if channels and channels[0].size != 1:
            raise AopError(f"{where}: the model takes {channels[0].size} input channels, not 1")

    # --- package facts ----------------------------------------------------------------------
    def description(self) -> Any:
        """The validated ``bioimageio.spec`` model description (format 0.5)."""
        if self._descr is None:
            self._descr = load_package(self.source, self.name, self.how_to_get)
        return self._descr

    def _space_axes(self, tensor: Any) -> list[Any]:
        axes = {str(a.id): a for a in tensor.axes if a.type == "space"}
        return [axes[a] for a in _SPATIAL]

    def voxel_size(self) -> tuple[float, float, float] | None:
        """The model's training voxel size (z, y, x) in micrometres, if the package has one."""
        if self.settings.model_voxel_size is not None:
            return self.settings.model_voxel_size
        axes = self._space_axes(self.description().inputs[0])
        if any(a.unit is None for a in axes):
            return None
        return tuple(  # type: ignore[return-value]
            float(a.scale) * _MICROMETRES.get(str(a.unit), 1.0) for a in axes
        )

    def halo(self) -> tuple[int, int, int]:
        """Context per side (z, y, x): setting ``halo`` or the package's output halo."""
        if self.settings.halo is not None:
            return self.settings.halo
        axes = self._space_axes(self.description().outputs[0])
        return tuple(int(getattr(a, "halo", 0)) for a in axes)  # type: ignore[return-value]

    def weight_files(self) -> list[Path]:
        """The package: the ``.zip``, or ``rdf.yaml`` and every local file it names.

        Weights, architecture sources and test tensors alike: ``bioimageio.core`` validates the
        package against all of them when it loads.
        """
        if self.source.suffix == ".zip":
            return [self.source]
        rdf = _rdf_path(self.source)
        descr = self.description()
        weights = [getattr(descr.weights, f, None) for f in type(descr.weights).model_fields]
        sources = [w.source for w in weights if w is not None]  # the weights first, then the rest
        content = descr.get_package_content(local_files_only=True)
        sources += [getattr(entry, "source", None) for entry in content.values()]
        files = [rdf]
        for source in sources:
            if source is None or "://" in str(source):
                continue
            path = rdf.parent / str(source)
            if path.is_file() and path not in files:
                files.append(path)
        return files

    def weights_path(self) -> Path:
        return self.source

    # --- prediction -------------------------------------------------------------------------
    def _load_network(self) -> Any:
        """The ``bioimageio.core`` prediction pipeline on the package's weights."""
        from bioimageio.core import create_prediction_pipeline

        return create_prediction_pipeline(
            self.description(),
            devices=self.settings.devices,
            weights_format=self.settings.weights_format,  # type: ignore[arg-type]
        )

    def probabilities(self, image: np.ndarray, spacing: Spacing) -> np.ndarray:
        """The network's (C_out, Z, Y, X) output on the input grid, after post-processing."""
        from bioimageio.core import Sample, Tensor

        s = self.settings
        volume = single_channel(image, s.channel, self.name)
        shape = volume.shape
        model_spacing = self.voxel_size()
        if s.rescale and model_spacing is not None:
            scales = zip(shape, spacing, model_spacing, strict=True)
            target = tuple(max(1, round(n * sp / m)) for n, sp, m in scales)
            volume = _resample(volume[None], target)[0]
        descr = self.description()
        pipeline = self.network
        input_descr, output_descr = descr.inputs[0], descr.outputs[0]
        dims = [str(a.id) for a in input_descr.axes]
        data = _as_input(volume, dims)
        input_id = input_descr.id
        sample = Sample(
            members={input_id: Tensor.from_numpy(data, dims=tuple(dims))}, stat={}, id="volume"
        )
        grid, halo = volume.shape, self.halo()
        sizes = {str(a.id): a.size for a in self._space_axes(input_descr)}
        if s.tile_shape is None:  # one block: the volume plus its halo, rounded up to a valid size
            wanted = [n + 2 * h for n, h in zip(grid, halo, strict=True)]
            block = [_valid_size(sizes[a], w) for a, w in zip(_SPATIAL, wanted, strict=True)]
            before = list(halo)
            after = [b - n - h for b, n, h in zip(block, grid, halo, strict=True)]
            block_halo = [0, 0, 0]
        else:
            block = [_valid_size(sizes[a], t) for a, t in zip(_SPATIAL, s.tile_shape, strict=True)]
            if any(b <= 2 * h for b, h in zip(block, halo, strict=True)):
                raise AopError(
                    f"model {self.name!r}: tile shape {tuple(block)} leaves nothing inside a "
                    f"halo of {halo}"
                )
            # a volume smaller than a block is padded to one block at its far end
            before = [0, 0, 0]
            after = [max(0, b - n) for b, n in zip(block, grid, strict=True)]
            block_halo = list(halo)
        # sample-wise statistics (percentiles, mean) come from the real voxels only
        pipeline.apply_preprocessing(sample)
        sample = sample.pad(
            {input_id: {a: (b, e) for a, b, e in zip(_SPATIAL, before, after, strict=True)}},
            mode=pipeline.pad_mode,
        )
        _, blocks = sample.split_into_blocks(
            {input_id: {**{d: 1 for d in dims}, **dict(zip(_SPATIAL, block, strict=True))}},
            halo={input_id: dict(zip(_SPATIAL, block_halo, strict=True))},
            pad_mode=pipeline.pad_mode,
        )
        output = None
        for input_block in blocks:
            predicted = pipeline.predict_sample_block(
                input_block, skip_preprocessing=True, skip_postprocessing=True
            )
            if output is None:
                output = Sample.from_blocks([predicted])
            else:
                output.set_block(predicted)
        assert output is not None
        crop = {a: slice(b, b + n) for a, b, n in zip(_SPATIAL, before, grid, strict=True)}
        output.members = {m: t[crop] for m, t in output.members.items()}
        pipeline.apply_postprocessing(output)
        result = output.members[output_descr.id].data
        if "batch" in result.dims:
            result = result.isel(batch=0)
        if "channel" not in result.dims:
            result = result.expand_dims("channel")
        result = result.transpose("channel", *_SPATIAL).to_numpy().astype(np.float32)
        return _resample(result, shape)

    def predict(self, image: np.ndarray, spacing: Spacing) -> np.ndarray:
        s = self.settings
        output = self.probabilities(image, spacing)

        def channel(index: int | None) -> np.ndarray | None:
            if index is None:
                return None
            if index >= output.shape[0]:
                raise AopError(
                    f"model {self.name!r}: output channel {index} requested but the network has "
                    f"{output.shape[0]}"
                )
            return output[index]

        boundary = channel(s.boundary_channel)
        if s.gasp_beta is not None and boundary is None:
            raise AopError(
                f"model {self.name!r}: setting 'gasp_beta' needs a boundary channel "
                "(setting 'boundary_channel')"
            )
        labels = distance_watershed(
            channel(s.foreground_channel),
            boundary,
            spacing,
            threshold=s.threshold,
            sigma_seeds=s.sigma_seeds,
            sigma_weights=s.sigma_weights,
            seed_height=s.seed_height,
            alpha=s.alpha,
            min_size=s.min_size,
            stacked=s.stacked,
        )
        if s.gasp_beta is not None:
            labels = agglomerate_average(labels, boundary, s.gasp_beta, s.gasp_min_size)
        return labels


class UNet3DSettings(BioImageIOSettings):
    """Settings of ``unet3d``: the ``bioimageio`` settings with defaults for aop's own UNet."""

    alpha: float = Field(0.5, ge=0, le=1, description="Weight of boundaries in the relief.")
    min_size: int = Field(20, ge=0, description="Smallest kept instance, voxels.")


@register_model
class UNet3DModel(BioImageIOModel):
    """aop's own small MONAI 3D UNet (foreground + boundary), trained by ``aop train-unet``.

    Weights: the package folder written by ``aop train-unet --out DIR``, given as setting
    ``model`` or by the environment variable ``AOP_UNET3D_MODEL``.
    """

    name = "unet3d"
    Settings = UNet3DSettings
    env_var = "AOP_UNET3D_MODEL"
    how_to_get = (
        "train one with 'aop train-unet --data BENCHMARK --out DIR', then pass setting "
        "'model' or set AOP_UNET3D_MODEL"
    )
