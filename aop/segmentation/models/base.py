"""The segmentation-model interface, its registry and the helpers adapters share.

A model adapter is one class: it subclasses :class:`SegmentationModel`, declares its ``name``, a
pydantic ``Settings`` model (unknown keys are rejected) and what it needs (``extra``, weights), and
implements :meth:`SegmentationModel.predict` (and ``_load_network`` when it has a network).

Adapters are found through the entry-point group ``aop.segmentation_models``
(:data:`ENTRY_POINT_GROUP`), where aop's own ``pyproject.toml`` declares the built-ins and any
installed distribution can add one, so a plugin adapter is found by name in every process: the
driver, Ray workers and a process that loads a logged pipeline. ``@register_model`` adds a class
defined at run time (a notebook, a test). A plugin distribution declares, in its
``pyproject.toml``::

    [project.entry-points."aop.segmentation_models"]
    mymodel = "my_package.adapter:MyModel"   # the name is MyModel.name
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from aop.config import StrictModel
from aop.errors import AopError, error_message, validation_message

Spacing = tuple[float, float, float]

ENTRY_POINT_GROUP = "aop.segmentation_models"
"""The entry-point group through which distributions declare segmentation-model adapters."""

__all__ = [
    "ENTRY_POINT_GROUP",
    "ModelSpec",
    "SegmentationModel",
    "Spacing",
    "available_models",
    "build_model",
    "file_sha256",
    "model_class",
    "register_model",
]


class ModelSpec(StrictModel):
    """How experiment files and the CLI name a model: a registry name and adapter settings."""

    name: str
    settings: dict[str, Any] = {}


class SegmentationModel(ABC):
    """A segmentation model: a (Z, Y, X) or (C, Z, Y, X) image in, (Z, Y, X) uint32 instances out.

    Subclasses set the class attributes below and implement :meth:`predict`. Construction only
    validates settings and locates weight files (missing weights raise :class:`AopError` naming the
    file and the option that points to it). The network loads lazily: :attr:`network` calls the
    adapter's ``_load_network()`` on first use and keeps the result, and pickling leaves it (and the
    attributes named in ``transient``) behind, so a model object is cheap to build, to hash into a
    cache key and to ship to a Ray worker, which loads its own copy.

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
    weights_setting : str or None
        The setting that names the weights (a file or folder, or a name the adapter resolves in
        its library's cache). A logged pipeline packs :meth:`weight_files` and points this setting
        at the packed copy of :meth:`weights_path`.
    runtime_settings : tuple of str
        Settings that cannot change the output (e.g. devices); left out of :meth:`identity`.
    transient : tuple of str
        Attributes besides the network that are not pickled (reloaded where the model runs).

    Examples
    --------
    >>> class Ones(SegmentationModel):
    ...     name = "ones"
    ...     def predict(self, image, spacing):
    ...         return np.ones(image.shape[-3:], dtype=np.uint32)
    >>> Ones().identity()
    {'name': 'ones', 'settings': {}, 'weights': {}}
    """

    name: ClassVar[str]
    Settings: ClassVar[type[BaseModel]] = StrictModel  # no settings
    extra: ClassVar[str | None] = None
    requires: ClassVar[tuple[str, ...]] = ()
    uses_gpu: ClassVar[bool] = False
    weights_setting: ClassVar[str | None] = None
    runtime_settings: ClassVar[tuple[str, ...]] = ()
    transient: ClassVar[tuple[str, ...]] = ()

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
                f"model {self.name!r}: setting {field!r} = {value!r}: {error_message(error)}"
            ) from None
        self._network: Any = None
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

    @property
    def network(self) -> Any:
        """The adapter's loaded network, loaded by ``_load_network()`` on first use and kept."""
        if getattr(self, "_network", None) is None:
            self._network = self._load_network()
        return self._network

    def _load_network(self) -> Any:
        """Load the network from the located weights (adapters with a network override this)."""
        raise AopError(f"model {self.name!r} has no network")

    def weight_files(self) -> list[Path]:
        """The files the network is loaded from, hashed into :meth:`identity`.

        They lie under the folder of :meth:`weights_path`; a logged pipeline packs them, keeping
        their paths relative to that folder.
        """
        return []

    def weights_path(self) -> Path | None:
        """The located file or folder that setting ``weights_setting`` names, if any."""
        return None

    def identity(self) -> dict[str, Any]:
        """JSON-able description that changes whenever the model's output could change.

        Name, adapter settings (but ``runtime_settings``, and the weights setting reduced to the
        name of :meth:`weights_path`, so the same files elsewhere give the same identity) and the
        SHA-256 of every weight file; the prediction cache hashes it.
        """
        if getattr(self, "_identity", None) is None:
            settings = self.settings.model_dump(mode="json")
            for key in self.runtime_settings:
                settings.pop(key, None)
            location = self.weights_path()
            if self.weights_setting is not None and location is not None:
                settings[self.weights_setting] = location.name
            self._identity = {
                "name": self.name,
                "settings": settings,
                "weights": {p.name: file_sha256(p) for p in self.weight_files()},
            }
        return json.loads(json.dumps(self._identity))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_network", *self.transient):
            if key in state:
                state[key] = None  # reloaded where the model runs
        return state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.settings.model_dump(mode='json')})"


_REGISTRY: dict[str, type[SegmentationModel]] = {}

M = TypeVar("M", bound=type[SegmentationModel])


def register_model(cls: M) -> M:
    """Class decorator: add a :class:`SegmentationModel` subclass to the registry by ``name``.

    For classes defined at run time; an installed adapter is declared as an entry point of group
    :data:`ENTRY_POINT_GROUP` instead (see the module docstring).
    """
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__name__} must set a class attribute 'name'")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise TypeError(f"model name {name!r} is already registered by {_REGISTRY[name].__name__}")
    _REGISTRY[name] = cls
    return cls


def _declared() -> dict[str, importlib.metadata.EntryPoint]:
    """The adapters declared by installed distributions (and those on ``sys.path``), by name."""
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _load_declared(ep: importlib.metadata.EntryPoint) -> type[SegmentationModel]:
    """Import a declared adapter and register it; one-line :class:`AopError` if it is broken."""
    dist = getattr(ep, "dist", None)
    where = f"segmentation model {ep.name!r} ({ep.value}"
    where += f", from {dist.name} {dist.version})" if dist is not None else ")"
    try:
        cls = ep.load()
    except Exception as exc:  # noqa: BLE001  (a broken plugin is reported, not raised as is)
        raise AopError(f"{where}: cannot be imported: {type(exc).__name__}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, SegmentationModel)):
        raise AopError(f"{where}: is not a SegmentationModel subclass")
    if getattr(cls, "name", None) != ep.name:
        raise AopError(f"{where}: the class's name is {getattr(cls, 'name', None)!r}")
    known = _REGISTRY.get(ep.name)
    if known is not None and known is not cls:
        raise AopError(f"{where}: the name is already taken by {known.__module__}.{known.__name__}")
    _REGISTRY[ep.name] = cls
    return cls


def available_models() -> dict[str, type[SegmentationModel]]:
    """All models, by name: the declared adapters and those added by :func:`register_model`.

    A declared adapter that cannot be loaded is left out with a one-line warning (building it by
    name raises the same line as :class:`AopError`).
    """
    for name, ep in _declared().items():
        if name not in _REGISTRY or _REGISTRY[name].__module__ != ep.module:
            try:
                _load_declared(ep)
            except AopError as exc:
                warnings.warn(str(exc), stacklevel=2)
    return dict(sorted(_REGISTRY.items()))


def model_class(name: str) -> type[SegmentationModel]:
    """The adapter class registered or declared under ``name``.

    Raises
    ------
    AopError
        For an unknown name, or a declared adapter that cannot be loaded.
    """
    cls = _REGISTRY.get(name)
    if cls is not None:
        return cls
    ep = _declared().get(name)
    if ep is None:
        known = ", ".join(available_models())
        raise AopError(f"unknown model {name!r} (available: {known})")
    return _load_declared(ep)


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

    Examples
    --------
    >>> build_model("classical", sigma=1.5).identity()["settings"]["sigma"]
    1.5
    """
    spec = as_spec(spec)
    return model_class(spec.name)(**{**spec.settings, **settings})


def as_spec(spec: ModelSpec | str | dict) -> ModelSpec:
    """A :class:`ModelSpec` from itself, a registered name or a ``{name, settings}`` dict."""
    if isinstance(spec, str):
        return ModelSpec(name=spec)
    if isinstance(spec, dict):
        try:
            return ModelSpec(**spec)
        except ValidationError as exc:
            raise AopError(f"model spec {spec!r}: {validation_message(exc, first=True)}") from None
    return spec


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
