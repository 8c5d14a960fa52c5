"""Volume and data-set input/output.

Volumes are NumPy arrays in (Z, Y, X) or (C, Z, Y, X) order. Supported formats:

- TIFF (``.tif``, ``.tiff``) through tifffile; the voxel size is read from OME-XML
  (``PhysicalSizeZ/Y/X``) or ImageJ metadata (``spacing`` and the X/Y resolution tags). aop writes
  OME-TIFF, which also holds 32- and 64-bit label images.
- NumPy ``.npy`` (no voxel size).
- Zarr (``.zarr``): a plain array, or an OME-Zarr image group whose first multiscale level is read
  and whose ``scale`` transformation gives the voxel size.

A data set is a folder::

    dataset.yaml        name, voxel_size [z, y, x], channel_names, optional instance classes
                        ([{name, key}], read and written by aop.instances.annotations) and
                        free-form provenance
    images/NAME.tif     one volume per file
    labels/NAME.tif     optional instance labels, matched to images by NAME

Every problem found while loading raises :class:`aop.errors.AopError` with one line naming the file
(relative to the data-set folder) and the problem. Every write goes through :mod:`aop.outputs`.
"""

from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import yaml

from aop.config import read_yaml
from aop.errors import AopError
from aop.labels import as_label_array
from aop.outputs import TIFF_SOFTWARE, atomic_output

Spacing = tuple[float, float, float]

VOLUME_SUFFIXES = (".tif", ".tiff", ".npy", ".zarr")
DATASET_FILE = "dataset.yaml"
_INFO_KEYS = ("channel_names", "classes", "name", "provenance", "voxel_size")  # sorted
_AXES = {2: "YX", 3: "ZYX", 4: "CZYX"}

__all__ = [
    "DATASET_FILE",
    "Dataset",
    "DatasetInfo",
    "Spacing",
    "VolumeEntry",
    "dataset_fingerprint",
    "find_volumes",
    "load_dataset",
    "read_volume",
    "volume_name",
    "write_dataset",
    "write_volume",
]


# --------------------------------------------------------------------------------------------------
# Single volumes
# --------------------------------------------------------------------------------------------------


def volume_name(path: str | os.PathLike) -> str:
    """Return a volume's name: its file name without the volume suffix (``a.ome.tif`` -> ``a``)."""
    name = Path(path).name
    for suffix in (".ome.tif", ".ome.tiff", ".ome.zarr", *VOLUME_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def _suffix(path: Path) -> str:
    for suffix in VOLUME_SUFFIXES:
        if path.name.lower().endswith(suffix):
            return suffix
    raise AopError(f"{path}: unknown volume format (expected one of {', '.join(VOLUME_SUFFIXES)})")


def read_volume(path: str | os.PathLike) -> tuple[np.ndarray, Spacing | None]:
    """Read a volume and its voxel size.

    Parameters
    ----------
    path : str or path-like
        A ``.tif``/``.tiff``, ``.npy`` or ``.zarr`` file or folder.

    Returns
    -------
    data : ndarray
        The voxels, in the file's axis order (``ZYX`` or ``CZYX`` for files aop writes).
    spacing : tuple of 3 floats or None
        Voxel size (z, y, x) in physical units when the file records one.

    Raises
    ------
    AopError
        When the file is missing, unreadable or of an unknown format.
    """
    path = Path(path)
    if not path.exists():
        raise AopError(f"{path}: file not found")
    suffix = _suffix(path)
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False), None
        return _read_zarr(path) if suffix == ".zarr" else _read_tiff(path)
    except AopError:
        raise
    except Exception as exc:  # corrupt or truncated files surface as many exception types
        raise AopError(f"{path}: cannot read volume ({type(exc).__name__}: {exc})") from exc


def _read_tiff(path: Path) -> tuple[np.ndarray, Spacing | None]:
    with tifffile.TiffFile(path) as tif:
        if not tif.pages:
            raise AopError(f"{path}: cannot read volume (no image data: empty or corrupt TIFF)")
        data = tif.asarray()
        if tif.ome_metadata:
            return data, _ome_xml_spacing(tif.ome_metadata)
        if tif.imagej_metadata is not None:
            return data, _imagej_spacing(tif)
        shaped = tif.shaped_metadata
        if shaped and "spacing" in shaped[0]:
            return data, tuple(float(v) for v in shaped[0]["spacing"])  # type: ignore[return-value]
        return data, None


def _ome_xml_spacing(xml: str) -> Spacing | None:
    pixels = ET.fromstring(xml).find(".//{*}Pixels")
    attributes = pixels.attrib if pixels is not None else {}
    sizes = [attributes.get(f"PhysicalSize{axis}") for axis in "ZYX"]
    if all(s is None for s in sizes):
        return None
    return tuple(1.0 if s is None else float(s) for s in sizes)  # type: ignore[return-value]


def _imagej_spacing(tif: tifffile.TiffFile) -> Spacing | None:
    meta, tags = tif.imagej_metadata, tif.pages[0].tags
    resolution = (tags.valueof(name, (1, 1)) for name in ("YResolution", "XResolution"))
    y, x = (d / n if n else 1.0 for n, d in resolution)
    if "spacing" not in meta and (y, x) == (1.0, 1.0):
        return None
    return float(meta.get("spacing", 1.0)), y, x


def _read_zarr(path: Path) -> tuple[np.ndarray, Spacing | None]:
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return np.asarray(node[...]), None
    attrs = dict(node.attrs)
    multiscales = attrs.get("ome", attrs).get("multiscales")  # OME-Zarr 0.5 nests under "ome"
    if not multiscales:
        raise AopError(f"{path}: Zarr group is not an OME-Zarr image (no 'multiscales')")
    level = multiscales[0]["datasets"][0]
    data = np.asarray(node[level["path"]][...])
    spacing = None
    for transform in level.get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            spacing = tuple(float(s) for s in transform["scale"][-3:])
    return data, spacing  # type: ignore[return-value]


def write_volume(
    path: str | os.PathLike,
    data: np.ndarray,
    spacing: Spacing | None = None,
    *,
    compression: str | None = "zlib",
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
) -> Path:
    """Write a volume atomically under the output policy of :mod:`aop.outputs`.

    Parameters
    ----------
    path : str or path-like
        Destination; the suffix picks the format (``.tif``/``.tiff`` OME-TIFF, ``.npy``, ``.zarr``
        OME-Zarr).
    data : ndarray
        ``ZYX`` or ``CZYX`` (2D ``YX`` is accepted too).
    spacing : tuple of 3 floats, optional
        Voxel size (z, y, x) stored in the file's metadata (TIFF and Zarr).
    compression : str or None
        TIFF compression codec.
    overwrite : bool
        Replace an existing volume that aop wrote.
    inputs : iterable of path-like
        Input files of the request; writing over one of them is refused.

    Returns
    -------
    Path
        The written path.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "one_slice.tif"
    >>> _ = write_volume(out, np.zeros((1, 4, 4), np.uint16))
    >>> read_volume(out)[0].shape
    (1, 4, 4)
    """
    path = Path(path)
    suffix = _suffix(path)
    data = np.asarray(data)
    if data.ndim not in _AXES:
        raise AopError(f"{path}: cannot write a {data.ndim}D array (expected YX, ZYX or CZYX)")
    with atomic_output(path, overwrite=overwrite, inputs=inputs) as tmp:
        if suffix == ".zarr":
            _write_zarr(tmp, data, spacing)
        elif suffix == ".npy":
            np.save(tmp, data)
        else:
            _write_tiff(tmp, data, spacing, _AXES[data.ndim], compression)
    return path


# OME-XML has no 64-bit integer pixel types, and readers squeeze its axes of length 1 (one z-slice
# would read back as 2D); those are written as tifffile "shaped" TIFFs, whose JSON description keeps
# the shape and carries the voxel size.
_OME_DTYPES = {"int8", "int16", "int32", "uint8", "uint16", "uint32", "float32", "float64", "bool"}


def _write_tiff(
    path: Path, data: np.ndarray, spacing: Spacing | None, axes: str, compression: str | None
) -> None:
    ome = data.dtype.name in _OME_DTYPES and (data.ndim < 3 or 1 not in data.shape)
    metadata: dict[str, Any] = {"axes": axes}
    if spacing is not None and ome:
        z, y, x = (float(s) for s in spacing)
        metadata.update(PhysicalSizeZ=z, PhysicalSizeY=y, PhysicalSizeX=x)
    elif spacing is not None:
        metadata["spacing"] = [float(s) for s in spacing]
    tifffile.imwrite(
        str(path),
        data,
        compression=compression,
        photometric="minisblack",
        software=TIFF_SOFTWARE,
        metadata=metadata,
        **({"ome": True} if ome else {"shaped": True}),
    )


def _write_zarr(path: Path, data: np.ndarray, spacing: Spacing | None) -> None:
    import zarr

    root = zarr.open_group(str(path), mode="w")
    chunks = tuple(min(s, 64) for s in data.shape)
    root.create_array("0", shape=data.shape, dtype=data.dtype, chunks=chunks)[...] = data
    scale = [1.0] * data.ndim
    if spacing is not None and data.ndim >= 3:
        scale[-3:] = [float(s) for s in spacing]
    kinds = {"C": "channel", "Z": "space", "Y": "space", "X": "space"}
    axes = [{"name": a.lower(), "type": kinds[a]} for a in _AXES[data.ndim]]
    level = {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": scale}]}
    root.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [level]}]


# --------------------------------------------------------------------------------------------------
# Data sets
# --------------------------------------------------------------------------------------------------


@dataclass
class DatasetInfo:
    """The contents of ``dataset.yaml``."""

    name: str
    voxel_size: Spacing = (1.0, 1.0, 1.0)
    channel_names: list[str] = field(default_factory=lambda: ["channel0"])
    provenance: dict[str, Any] = field(default_factory=dict)
    classes: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The YAML mapping: plain types, ``classes`` only when the data set has any."""
        out: dict[str, Any] = {
            "name": self.name,
            "voxel_size": [float(v) for v in self.voxel_size],
            "channel_names": list(self.channel_names),
        }
        if self.classes:
            out["classes"] = [{str(k): str(v) for k, v in c.items()} for c in self.classes]
        out["provenance"] = _plain(self.provenance)
        return out


@dataclass(frozen=True)
class VolumeEntry:
    """One volume of a data set: its image file and optional label file."""

    name: str
    image_path: Path
    label_path: Path | None


@dataclass
class Dataset:
    """A validated data-set folder. Volumes are read on demand."""

    root: Path
    info: DatasetInfo
    entries: list[VolumeEntry]

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[VolumeEntry]:
        return iter(self.entries)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    @property
    def has_labels(self) -> bool:
        return bool(self.entries) and all(e.label_path is not None for e in self.entries)

    def entry(self, name: str) -> VolumeEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise AopError(f"{self.root}: no volume named {name!r}")

    def image(self, name: str) -> np.ndarray:
        """The image of volume ``name`` as float32."""
        return read_volume(self.entry(name).image_path)[0].astype(np.float32, copy=False)

    def labels(self, name: str) -> np.ndarray:
        """The label volume of ``name``; raises when the volume has none."""
        entry = self.entry(name)
        if entry.label_path is None:
            raise AopError(f"{self.root}: volume {name!r} has no labels")
        return read_volume(entry.label_path)[0]


def _plain(value: Any) -> Any:
    """Convert NumPy scalars, tuples and paths to plain YAML-safe types."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return str(value) if isinstance(value, Path) else value


def find_volumes(folder: Path) -> dict[str, Path]:
    """Map volume name -> path for every volume file directly inside ``folder``."""
    if not folder.is_dir():
        return {}
    return {
        volume_name(path): path
        for path in sorted(folder.iterdir())
        if not path.name.startswith(".") and path.name.lower().endswith(VOLUME_SUFFIXES)
    }


def _read_info(root: Path) -> DatasetInfo:
    info_path = root / DATASET_FILE
    if not info_path.exists():
        return DatasetInfo(name=root.name)
    raw = read_yaml(info_path) or {}
    if not isinstance(raw, dict):
        raise AopError(f"{info_path}: expected a mapping of keys, got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(_INFO_KEYS))
    if unknown:
        raise AopError(f"{info_path}: unknown key {unknown[0]!r} (known: {', '.join(_INFO_KEYS)})")
    voxel_size = raw.get("voxel_size", [1.0, 1.0, 1.0])
    triple = isinstance(voxel_size, list | tuple) and len(voxel_size) == 3
    if not (triple and all(isinstance(v, int | float) and v > 0 for v in voxel_size)):
        raise AopError(
            f"{info_path}: voxel_size must be three positive numbers [z, y, x], got {voxel_size!r}"
        )
    channels = raw.get("channel_names", ["channel0"])
    if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
        raise AopError(f"{info_path}: channel_names must be a list of strings, got {channels!r}")
    return DatasetInfo(
        name=str(raw.get("name", root.name)),
        voxel_size=tuple(float(v) for v in voxel_size),  # type: ignore[arg-type]
        channel_names=channels,
        provenance=raw.get("provenance") or {},
        classes=list(raw.get("classes") or []),  # validated by aop.instances.annotations
    )


def load_dataset(
    root: str | os.PathLike, *, require_labels: bool = False, validate: bool = True
) -> Dataset:
    """Load and validate a data-set folder.

    Parameters
    ----------
    root : str or path-like
        The folder holding ``images/``, optional ``labels/`` and ``dataset.yaml``.
    require_labels : bool
        Every image must have a label volume.
    validate : bool
        Read every volume and check shapes, dtypes and values (otherwise only file pairing).

    Raises
    ------
    AopError
        On the first problem, naming the file relative to ``root``.
    """
    root = Path(root)
    if not root.is_dir():
        raise AopError(f"{root}: data-set folder not found")
    info = _read_info(root)
    images = find_volumes(root / "images")
    if not images:
        raise AopError(f"{root}: no volumes in images/ (expected images/NAME.tif)")
    labels = find_volumes(root / "labels")
    for name, path in labels.items():
        if name not in images:
            raise AopError(f"{path.relative_to(root)}: no image images/{name}.* for these labels")
    entries = []
    for name, image_path in images.items():
        label_path = labels.get(name)
        if require_labels and label_path is None:
            raise AopError(f"{image_path.relative_to(root)}: no labels/{name}.* for this image")
        entries.append(VolumeEntry(name, image_path, label_path))
    if validate:
        for entry in entries:
            _validate_entry(root, entry)
    return Dataset(root=root, info=info, entries=entries)


def _validate_entry(root: Path, entry: VolumeEntry) -> None:
    rel = entry.image_path.relative_to(root)
    image, _ = read_volume(entry.image_path)
    if image.dtype.kind not in "uif b":
        raise AopError(f"{rel}: image has unsupported dtype {image.dtype}")
    if image.dtype.kind == "f" and not np.all(np.isfinite(image)):
        raise AopError(f"{rel}: image has non-finite values (NaN or inf)")
    if image.ndim not in (3, 4):
        raise AopError(f"{rel}: image must be 3D (Z, Y, X) or 4D (C, Z, Y, X), got {image.shape}")
    if entry.label_path is None:
        return
    rel = entry.label_path.relative_to(root)
    labels, _ = read_volume(entry.label_path)
    as_label_array(labels, str(rel), allow_bool=False)
    if labels.shape != image.shape[-3:]:
        raise AopError(f"{rel}: shape {labels.shape} does not match image {image.shape[-3:]}")


def write_dataset(
    root: str | os.PathLike,
    volumes: Iterable[tuple[str, np.ndarray, np.ndarray | None]],
    info: DatasetInfo,
    files: dict[str, str] | None = None,
    *,
    overwrite: bool = False,
    inputs: Iterable[str | os.PathLike] = (),
    overwrite_hint: str = "overwrite=True",
) -> Path:
    """Write a data-set folder: ``images/``, ``labels/`` and ``dataset.yaml``.

    The folder is built beside ``root`` and renamed into place only when complete, under the output
    policy of :mod:`aop.outputs`, which is checked before the first volume is generated.

    Parameters
    ----------
    root : str or path-like
        Destination folder.
    volumes : iterable of (name, image, labels or None)
        Consumed lazily, so a generator can simulate one volume at a time.
    info : DatasetInfo
        Written to ``dataset.yaml``.
    files : dict of str to str, optional
        Further text files (name relative to ``root`` -> contents), written after the volumes, so
        a generator may fill the dict while it yields (for example ``annotations.csv``).
    overwrite : bool
        Replace an earlier data set written by aop.
    inputs : iterable of path-like
        Inputs of the request; the data set may not be, or hold, one of them.
    overwrite_hint : str
        How a refusal names the way to allow replacing.
    """
    with atomic_output(
        root, kind="dataset", overwrite=overwrite, inputs=inputs, overwrite_hint=overwrite_hint
    ) as tmp:
        for name, image, labels in volumes:
            image = np.asarray(image)
            if image.ndim not in (3, 4):
                raise AopError(f"{name}: image must be 3D (Z, Y, X) or 4D, got {image.shape}")
            (tmp / "images").mkdir(exist_ok=True)
            axes = _AXES[image.ndim]
            _write_tiff(tmp / "images" / f"{name}.tif", image, info.voxel_size, axes, "zlib")
            if labels is not None:
                labels = np.asarray(labels)
                if labels.dtype.kind == "b":
                    raise AopError(f"{name}: labels are a boolean mask, not instance labels")
                (tmp / "labels").mkdir(exist_ok=True)
                _write_tiff(tmp / "labels" / f"{name}.tif", labels, info.voxel_size, "ZYX", "zlib")
        (tmp / DATASET_FILE).write_text(yaml.safe_dump(info.to_dict(), sort_keys=False))
        for name, text in (files or {}).items():
            (tmp / name).write_text(text)
    return Path(root)


def dataset_fingerprint(root: str | os.PathLike) -> str:
    """SHA-256 (16 hex digits) of a data set's files: manifest and volumes, names and bytes.

    Identifies the data a study ran on (the MLflow parent run's ``dataset.fingerprint`` tag and
    dataset input digest).
    """
    root = Path(root)
    if not root.is_dir():
        raise AopError(f"{root}: data-set folder not found")
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode())
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()[:16]
