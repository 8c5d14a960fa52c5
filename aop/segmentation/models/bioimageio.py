"""``bioimageio`` and ``unet3d``: BioImage.IO model packages (PlantSeg UNets, aop's own UNet).

A package is a folder (or ``.zip``) with ``rdf.yaml`` and PyTorch weights. The adapter

1. rescales the volume from its voxel size to the model's training voxel size (the input axes'
   ``scale`` in the RDF, or setting ``model_voxel_size``),
2. applies the RDF's preprocessing to the whole volume (so statistics do not change per tile),
3. predicts tile by tile: each tile reads ``halo`` extra voxels of real neighbouring context on
   every side (padding only beyond the volume's own border) and the halo is cropped from the output,
4. applies the RDF's postprocessing, rescales back to the input grid, and
5. turns the foreground/boundary channels into instances with PlantSeg's distance-transform
   watershed (:func:`aop.segmentation.instances.distance_watershed`).

``bioimageio.core`` 0.11 pins ``bioimageio.spec`` 0.5.12, which cannot validate any description
under pydantic 2.14 (its file serializer passes the serialisation info where pydantic now expects
an index key). The adapter therefore reads ``rdf.yaml`` itself: format 0.5 and 0.4 tensors,
``pytorch_state_dict`` weights (architecture from an installed library or a file in the package)
or ``torchscript`` weights, and the standard operations ``scale_range``,
``zero_mean_unit_variance``, ``scale_linear``, ``clip``, ``sigmoid`` and ``binarize``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field
from scipy import ndimage as ndi

from aop.errors import AopError
from aop.segmentation.instances import distance_watershed
from aop.segmentation.models.base import (
    SegmentationModel,
    Spacing,
    missing_weights,
    register_model,
    single_channel,
)

__all__ = ["BioImageIOModel", "UNet3DModel", "predict_tiled"]


class BioImageIOSettings(BaseModel):
    """Settings of the ``bioimageio`` model."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, description="Package folder, rdf.yaml or .zip (or env AOP_BIOIMAGEIO_MODEL)."
    )
    channel: int = Field(0, ge=0, description="Channel of a (C, Z, Y, X) image to segment.")
    tile_shape: tuple[int, int, int] | None = Field(
        None, description="Tile size (z, y, x) incl. halo, rounded to valid sizes; None: whole."
    )
    halo: tuple[int, int, int] | None = Field(
        None, description="Context per side (z, y, x); None: the RDF's output halo."
    )
    rescale: bool = Field(True, description="Resample to the model's training voxel size.")
    model_voxel_size: tuple[float, float, float] | None = Field(
        None, description="Training voxel size (z, y, x) when the RDF does not record it."
    )
    foreground_channel: int | None = Field(0, description="Output channel of foreground.")
    boundary_channel: int | None = Field(1, description="Output channel of boundaries.")
    threshold: float = Field(0.5, ge=0, le=1)
    sigma_seeds: float = Field(1.0, ge=0)
    sigma_weights: float = Field(2.0, ge=0)
    seed_height: float = Field(0.5, gt=0, description="Minimum distance-maximum height (um).")
    alpha: float = Field(1.0, ge=0, le=1, description="Weight of boundaries in the relief.")
    min_size: int = Field(100, ge=0, description="Smallest kept instance, voxels.")


class Package:
    """A parsed BioImage.IO model package with a PyTorch network."""

    def __init__(self, rdf_path: Path) -> None:
        import yaml

        self.rdf_path = rdf_path
        self.root = rdf_path.parent
        try:
            self.rdf = yaml.safe_load(rdf_path.read_text())
        except yaml.YAMLError as exc:
            raise AopError(f"{rdf_path}: not valid YAML ({type(exc).__name__})") from None
        if not isinstance(self.rdf, dict) or self.rdf.get("type") != "model":
            raise AopError(f"{rdf_path}: not a BioImage.IO model description (type: model)")
        try:
            self.input = self.rdf["inputs"][0]
            self.output = self.rdf["outputs"][0]
            self.weights = self.rdf["weights"]
        except (KeyError, IndexError, TypeError):
            raise AopError(f"{rdf_path}: needs 'inputs', 'outputs' and 'weights'") from None
        self.v04 = str(self.rdf.get("format_version", "0.5")).startswith("0.4")

    # --- axes -----------------------------------------------------------------------------------
    def _axes(self, tensor: dict) -> list[dict]:
        if self.v04:  # "bczyx" strings, shape {min, step} lists, halo list
            names = {"b": "batch", "c": "channel"}
            axes = []
            shape = tensor.get("shape")
            for i, letter in enumerate(tensor["axes"]):
                axis: dict[str, Any] = {"type": names.get(letter, "space"), "id": letter}
                if isinstance(shape, dict) and "min" in shape:
                    axis["size"] = {"min": shape["min"][i], "step": shape["step"][i]}
                elif isinstance(shape, list):
                    axis["size"] = shape[i]
                if "halo" in tensor:
                    axis["halo"] = tensor["halo"][i]
                axes.append(axis)
            return axes
        return [dict(a, type=a.get("type", "space")) for a in tensor["axes"]]

    @property
    def input_axes(self) -> list[dict]:
        return self._axes(self.input)

    @property
    def output_axes(self) -> list[dict]:
        return self._axes(self.output)

    def spatial(self, axes: list[dict]) -> list[dict]:
        found = {a.get("id"): a for a in axes if a["type"] == "space"}
        if set(found) != {"z", "y", "x"}:
            raise AopError(f"{self.rdf_path}: expected 3D tensors with z, y, x axes")
        return [found["z"], found["y"], found["x"]]

    def voxel_size(self) -> tuple[float, float, float] | None:
        axes = self.spatial(self.input_axes)
        if all(a.get("unit") and a.get("scale") for a in axes):
            factor = {"nanometer": 1e-3, "millimeter": 1e3}.get(axes[0]["unit"], 1.0)
            return tuple(float(a["scale"]) * factor for a in axes)  # type: ignore[return-value]
        return None

    def halo(self) -> tuple[int, int, int]:
        return tuple(int(a.get("halo", 0)) for a in self.spatial(self.output_axes))  # type: ignore

    def valid_size(self, axis: int, at_least: int) -> int:
        """Smallest valid input size >= ``at_least`` along spatial ``axis`` (0 = z)."""
        size = self.spatial(self.input_axes)[axis].get("size", 1)
        if isinstance(size, int):
            return size
        if isinstance(size, dict) and "min" in size:
            low, step = int(size["min"]), int(size.get("step", 0))
            if at_least <= low or step == 0:
                return low
            return low + step * int(np.ceil((at_least - low) / step))
        return at_least

    # --- network --------------------------------------------------------------------------------
    def weight_file(self) -> Path:
        entry = self.weights.get("pytorch_state_dict") or self.weights.get("torchscript")
        if entry is None:
            raise AopError(f"{self.rdf_path}: no pytorch_state_dict or torchscript weights")
        return self.root / entry["source"]

    def network(self):  # type: ignore[no-untyped-def]
        import torch

        if "pytorch_state_dict" in self.weights:
            entry = self.weights["pytorch_state_dict"]
            arch = entry.get("architecture", {})
            if self.v04:
                source, _, name = str(arch).rpartition(":")
                arch = {"callable": name, "source": source, "kwargs": entry.get("kwargs", {})}
            factory = self._callable(arch)
            network = factory(**arch.get("kwargs", {}))
            state = torch.load(self.root / entry["source"], map_location="cpu", weights_only=True)
            network.load_state_dict(state)
        else:
            network = torch.jit.load(self.root / self.weights["torchscript"]["source"], "cpu")
        return network.eval()

    def _callable(self, arch: dict):  # type: ignore[no-untyped-def]
        if "import_from" in arch:
            return getattr(importlib.import_module(arch["import_from"]), arch["callable"])
        source = self.root / str(arch.get("source", ""))
        if not source.is_file():
            raise AopError(f"{self.rdf_path}: architecture file {source} not found")
        spec = importlib.util.spec_from_file_location(f"_aop_arch_{source.stem}", source)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return getattr(module, arch["callable"])

    # --- processing -----------------------------------------------------------------------------
    def preprocess(self, volume: np.ndarray) -> np.ndarray:
        return _apply_ops(volume, self.input.get("preprocessing") or [], self.rdf_path)

    def postprocess(self, volume: np.ndarray) -> np.ndarray:
        return _apply_ops(volume, self.output.get("postprocessing") or [], self.rdf_path)


def _apply_ops(volume: np.ndarray, ops: list[dict], where: Path) -> np.ndarray:
    """Apply BioImage.IO processing steps to a whole (C, Z, Y, X) volume."""
    out = volume.astype(np.float32, copy=True)
    for op in ops:
        name = op.get("id") or op.get("name")
        kw = op.get("kwargs") or {}
        eps = float(kw.get("eps", 1e-6))
        if name == "scale_range":
            low, high = np.percentile(
                out, [kw.get("min_percentile", 0.0), kw.get("max_percentile", 100.0)]
            )
            out = (out - low) / (high - low + eps)
        elif name == "zero_mean_unit_variance":
            out = (out - out.mean()) / (out.std() + eps)
        elif name == "scale_linear":
            out = out * np.asarray(kw.get("gain", 1.0)) + np.asarray(kw.get("offset", 0.0))
        elif name == "clip":
            out = np.clip(out, kw.get("min"), kw.get("max"))
        elif name == "sigmoid":
            out = 1.0 / (1.0 + np.exp(-out))
        elif name == "binarize":
            out = (out > kw.get("threshold", 0.5)).astype(np.float32)
        elif name in ("ensure_dtype", "fixed_zero_mean_unit_variance"):
            if name == "fixed_zero_mean_unit_variance":
                out = (out - np.asarray(kw["mean"])) / (np.asarray(kw["std"]) + eps)
        else:
            raise AopError(f"{where}: processing step {name!r} is not supported")
    return out.astype(np.float32, copy=False)


def predict_tiled(
    network: Any,
    volume: np.ndarray,
    block: tuple[int, int, int],
    halo: tuple[int, int, int],
) -> np.ndarray:
    """Run a 3D network over a (C, Z, Y, X) volume tile by tile with real neighbouring context.

    Every tile is ``block`` voxels (a size the network accepts); its central ``block - 2 * halo``
    voxels are kept. The context comes from the neighbouring voxels of the volume; only beyond
    the volume's own border is it mirrored. Tiles start on a grid of the kept size, the last one
    shifted back to end at the border.

    Returns
    -------
    ndarray
        (C_out, Z, Y, X) network output.
    """
    import torch

    shape = volume.shape[1:]
    inner = [b - 2 * h for b, h in zip(block, halo, strict=True)]
    if min(inner) <= 0:
        raise AopError(f"tile shape {block} leaves nothing inside a halo of {halo}")
    # pad: halo on both sides, plus up to a whole tile at the end for volumes smaller than a tile
    extra = [max(0, i - s) for i, s in zip(inner, shape, strict=True)]
    pad = [(0, 0)] + [(h, h + e) for h, e in zip(halo, extra, strict=True)]
    padded = np.pad(volume, pad, mode="reflect" if min(shape) > max(halo) else "symmetric")
    full = [s + e for s, e in zip(shape, extra, strict=True)]
    starts = [
        sorted({min(p, f - i) for p in range(0, f, i)})
        for f, i in zip(full, inner, strict=True)
    ]
    output = None
    with torch.no_grad():
        for z in starts[0]:
            for y in starts[1]:
                for x in starts[2]:
                    tile = padded[:, z : z + block[0], y : y + block[1], x : x + block[2]]
                    result = network(torch.from_numpy(np.ascontiguousarray(tile[None])))
                    result = result[0].numpy()
                    if output is None:
                        output = np.zeros((result.shape[0], *full), dtype=np.float32)
                    hz, hy, hx = halo
                    output[:, z : z + inner[0], y : y + inner[1], x : x + inner[2]] = result[
                        :, hz : hz + inner[0], hy : hy + inner[1], hx : hx + inner[2]
                    ]
    assert output is not None
    return output[:, : shape[0], : shape[1], : shape[2]]


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


@register_model
class BioImageIOModel(SegmentationModel):
    """Any BioImage.IO model package with PyTorch weights and foreground/boundary outputs.

    Weights: the package folder, ``rdf.yaml`` or ``.zip`` given as setting ``model`` or by the
    environment variable ``AOP_BIOIMAGEIO_MODEL`` (e.g. PlantSeg's ``PlantSeg_3Dnuc_platinum``
    or ``generic_confocal_3D_unet``; for a boundary-only model set ``foreground_channel=None``
    and ``boundary_channel=0``).
    """

    name = "bioimageio"
    Settings = BioImageIOSettings
    extra = None
    requires = ("torch", "yaml")
    uses_gpu = True
    env_var = "AOP_BIOIMAGEIO_MODEL"
    how_to_get = (
        "a BioImage.IO package folder with rdf.yaml, e.g. PlantSeg_3Dnuc_platinum from "
        "bioimage.io; pass setting 'model' or set AOP_BIOIMAGEIO_MODEL"
    )

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.rdf_path = self._locate(self.settings.model or os.environ.get(self.env_var))
        self.package = Package(self.rdf_path)
        if not self.package.weight_file().is_file():
            raise missing_weights(self.name, self.package.weight_file(), "named by rdf.yaml")
        self._network = None

    def _locate(self, model: str | None) -> Path:
        if not model:
            raise AopError(
                f"model {self.name!r}: no model package given: {self.how_to_get}"
            )
        path = Path(model).expanduser()
        if path.suffix == ".zip" and path.is_file():
            target = path.with_suffix("")
            if not (target / "rdf.yaml").is_file():
                with zipfile.ZipFile(path) as archive:
                    archive.extractall(target)
            path = target
        rdf = path if path.suffix in (".yaml", ".yml") else path / "rdf.yaml"
        if not rdf.is_file():
            raise missing_weights(self.name, rdf, self.how_to_get)
        return rdf

    def weight_files(self) -> list[Path]:
        return [self.rdf_path, self.package.weight_file()]

    def identity(self) -> dict[str, Any]:
        identity = super().identity()
        identity["settings"]["model"] = self.rdf_path.parent.name
        return identity

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_network"] = None
        return state

    def network(self):  # type: ignore[no-untyped-def]
        """The loaded PyTorch network (once, on first use)."""
        if self._network is None:
            self._network = self.package.network()
        return self._network

    def probabilities(self, image: np.ndarray, spacing: Spacing) -> np.ndarray:
        """The network's (C_out, Z, Y, X) output on the input grid, after post-processing."""
        s = self.settings
        volume = single_channel(image, s.channel, self.name)[None]
        model_spacing = s.model_voxel_size or self.package.voxel_size()
        shape = volume.shape[1:]
        if s.rescale and model_spacing is not None:
            scales = zip(shape, spacing, model_spacing, strict=True)
            target = tuple(max(1, round(n * sp / m)) for n, sp, m in scales)
            volume = _resample(volume, target)
        volume = self.package.preprocess(volume)
        halo = s.halo if s.halo is not None else self.package.halo()
        grid = volume.shape[1:]
        if s.tile_shape is None:
            wanted = [n + 2 * h for n, h in zip(grid, halo, strict=True)]
        else:
            wanted = list(s.tile_shape)
        block = tuple(self.package.valid_size(a, w) for a, w in enumerate(wanted))
        output = predict_tiled(self.network(), volume, block, halo)  # type: ignore[arg-type]
        output = self.package.postprocess(output)
        return _resample(output, shape)

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

        return distance_watershed(
            channel(s.foreground_channel),
            channel(s.boundary_channel),
            spacing,
            threshold=s.threshold,
            sigma_seeds=s.sigma_seeds,
            sigma_weights=s.sigma_weights,
            seed_height=s.seed_height,
            alpha=s.alpha,
            min_size=s.min_size,
        )


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
