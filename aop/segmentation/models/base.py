"""The segmentation-model interface, its registry and the helpers adapters share.

A model adapter is one class: it subclasses :class:`SegmentationModel`, declares its ``name``, a
pydantic ``Settings`` model (unknown keys are rejected) and what it needs (``extra``, weights), and
implements :meth:`SegmentationModel.predict`. The one line ``@register_model`` makes it available to
:func:`build_model`, the CLI and the search space by name.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from aop.errors import AopError

Spacing = tuple[float, float, float]

__all__ = [
    "ModelSpec",
    "SegmentationModel",
    "Spacing",
    "available_models",
    "build_model",
    "file_sha256",
    "register_model",
]


class ModelSpec(BaseModel):
    """How experiment files and the CLI name a model: a registry name and adapter settings."""

    model_config = ConfigDict(extra="forbid")

    name: str
    settings: dict[str, Any] = {}


class NoSettings(BaseModel):
    """Settings of an adapter that takes none."""

    model_config = ConfigDict(extra="forbid")


class SegmentationModel(ABC):
    """A segmentation model: a (Z, Y, X) or (C, Z, Y, X) image in, (Z, Y, X) uint32 instances out.

    Subclasses set the class attributes below and implement :meth:`predict`. Construction only
    validates settings and locates weight files (missing weights raise :class:`AopError` naming the
    file and the option that points to it); networks load lazily on the first :meth:`predict`, so
    a model object is cheap to build, to hash into a cache key and to ship to a Ray worker.

    Attributes
    ----------
    name : str
        Registry name.
    Settings : type of pydantic.BaseModel
        Adapter settings; unknown keys raise :class:`AopError`.
    extra : str or None
        The ``aop`` install extra providing the adapter's libraries (``pip install aop[extra]``).
    requires : tuple of str
        Importable modules the adapter needs.
    uses_gpu : bool
        Whether the adapter can use a GPU when one is present.
    """

    name: ClassVar[str]
    Settings: ClassVar[type[BaseModel]] = NoSettings
    extra: ClassVar[str | None] = None
    requires: ClassVar[tuple[str, ...]] = ()
    uses_gpu: ClassVar[bool] = False

    def __init__(self, **settings: Any) -> None:
        try:
            self.settings = self.Settings(**settings)
        except ValidationError as exc:
            error = exc.errors()[0]
            field = ".".join(str(part) for part in error["loc"]) or "settings"
            if error["type"] == "missing":
                raise AopError(f"model {self.name!r}: setting {field!r} is required") from None
            value = error.get("input")
            raise AopError(
                f"model {self.name!r}: setting {field!r} = {value!r}: {error['msg']}"
            ) from None
        self._check_requirements()

    def _check_requirements(self) -> None:
        for module in self.requires:
            if importlib.util.find_spec(module) is None:
                hint = f"pip install 'aop[{self.extra}]'" if self.extra else f"pip install {module}"
                raise AopError(f"model {self.name!r} needs the Python package {module!r}: {hint}")

    @abstractmethod
    def predict(self, image: np.ndarray, spacing: Spacing) -> np.ndarray:
        """Segment one volume.

        Parameters
        ----------
        image : ndarray
            (Z, Y, X) or (C, Z, Y, X) intensities.
        spacing : tuple of 3 floats
            Voxel size (z, y, x) in micrometres.

        Returns
        -------
        ndarray of uint32
            (Z, Y, X) instance labels, 0 = background.
        """

    def weight_files(self) -> list[Path]:
        """The files whose content determines the network (hashed into :meth:`identity`)."""
        return []

    def identity(self) -> dict[str, Any]:
        """JSON-able description that changes whenever the model's output could change.

        Name, adapter settings and the SHA-256 of every weight file; the prediction cache hashes it.
        """
        if not hasattr(self, "_identity"):
            self._identity = {
                "name": self.name,
                "settings": self.settings.model_dump(mode="json"),
                "weights": {p.name: file_sha256(p) for p in self.weight_files()},
            }
        return json.loads(json.dumps(self._identity))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings.model_dump(mode='json')})"


_REGISTRY: dict[str, type[SegmentationModel]] = {}

M = TypeVar("M", bound=type[SegmentationModel])


def register_model(cls: M) -> M:
    """Class decorator: add a :class:`SegmentationModel` subclass to the registry by ``name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} must set a class attribute 'name'")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise TypeError(f"model name {name!r} is already registered by {_REGISTRY[name].__name__}")
    _REGISTRY[name] = cls
    return cls


def available_models() -> dict[str, type[SegmentationModel]]:
    """All registered models, by name."""
    return dict(sorted(_REGISTRY.items()))


def build_model(spec: ModelSpec | str | dict, **settings: Any) -> SegmentationModel:
    """Build a model from a spec or a name plus settings.

    Parameters
    ----------
    spec : ModelSpec, dict or str
        A spec (name and settings) or a registered name.
    **settings
        Settings that override those of ``spec``.

    Raises
    ------
    AopError
        For an unknown name, an unknown or invalid setting, a missing library or missing weights.
    """
    if isinstance(spec, str):
        spec = ModelSpec(name=spec)
    elif isinstance(spec, dict):
        try:
            spec = ModelSpec(**spec)
        except ValidationError as exc:
            raise AopError(f"model spec {spec!r}: {exc.errors()[0]['msg']}") from None
    cls = _REGISTRY.get(spec.name)
    if cls is None:
        known = ", ".join(available_models())
        raise AopError(f"unknown model {spec.name!r} (available: {known})")
    return cls(**{**spec.settings, **settings})


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file, memoised by (path, size, modification time)."""
    path = Path(path)
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if memo not in _HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        _HASHES[memo] = digest.hexdigest()
    return _HASHES[memo]


def single_channel(image: np.ndarray, channel: int = 0, model: str = "model") -> np.ndarray:
    """Return the (Z, Y, X) float32 channel ``channel`` of a (Z, Y, X) or (C, Z, Y, X) image."""
    image = np.asarray(image)
    if image.ndim == 3:
        return image.astype(np.float32, copy=False)
    if image.ndim == 4:
        if not 0 <= channel < image.shape[0]:
            raise AopError(
                f"model {model!r}: setting 'channel' = {channel} but the image has "
                f"{image.shape[0]} channels"
            )
        return image[channel].astype(np.float32, copy=False)
    raise AopError(
        f"model {model!r}: expected a (Z, Y, X) or (C, Z, Y, X) image, got shape {image.shape}"
    )


def missing_weights(model: str, path: Path, how: str) -> AopError:
    """The one-line error for a weight file or folder that is not where it should be."""
    return AopError(f"model {model!r}: weights not found: put them at {path} ({how})")


def as_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel instances to consecutive uint32 values 1..N (0 stays background)."""
    import fastremap

    labels = np.asarray(labels)
    out, _ = fastremap.renumber(labels, preserve_zero=True, in_place=False)
    return out.astype(np.uint32, copy=False)
