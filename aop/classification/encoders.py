"""2D encoders applied to every z-slice of an instance crop, and where their weights come from.

An encoder turns a batch of crops ``(N, C, Z, Y, X)`` into a stack of 2D feature maps
``(N, Z, F, h, w)``: the crop's ``Z`` slices go through one 2D network as a batch of ``N * Z``
images. :class:`SliceEncoder` holds the network and always returns channels-first maps, whatever the
network's own output layout (timm's Swin returns NHWC, ViTs return tokens).

Registry
--------
:func:`register_encoder` registers a builder under a name; :func:`available_encoders` lists them.
The entries of Table I of the paper are timm models (``resnet18``, ``resnet101``,
``swinv2_base_window8_256``, ``tf_efficientnetv2_l``, ``convnext_large``), plus ``cellpose_sam``,
the image encoder of CellposeSAM. Any other timm model name (``timm.list_models()``) works as well,
built the same way as the timm entries (timm's tiny ``test_resnet``, ``test_convnext``,
``test_efficientnet`` and ``test_vit`` are what the tests train).

Channels
--------
A crop's ``C`` channels are the encoder's input channels, in order.

- timm encoders are created with ``in_chans=C``. With pretrained weights timm adapts the first
  convolution (``timm.models.adapt_input_conv``): for ``C = 1`` it sums the RGB filters; otherwise
  it repeats the RGB filters cyclically (channel ``c`` gets the filter of RGB channel ``c % 3``) and
  scales them by ``3 / C``. So a three-channel crop meets the ImageNet filters of R, G and B.
- ``cellpose_sam`` takes at most three channels: crop channel ``c`` meets CellposeSAM's input
  channel ``c`` (the first ``C`` input filters of its patch embedding, as Cellpose itself does for
  images with fewer than three channels).

Weights
-------
``pretrained=True`` loads ImageNet weights through timm's own mechanism (its Hugging Face hub cache,
``HF_HOME``; a connected cluster fills it on first use), or from a local file given as ``weights``
(passed to timm as ``pretrained_cfg_overlay=dict(file=weights)``). ``cellpose_sam`` loads a
CellposeSAM model file: ``weights`` is a file path or a Cellpose model name (``cpsam``,
``cpsam_v2``) looked up in ``$CELLPOSE_LOCAL_MODELS_PATH`` (default ``~/.cellpose/models``).
:func:`check_pretrained_weights` is the check a study runs at load time: it returns where the
weights are, or raises one :class:`~aop.errors.AopError` line saying which file to put where.

Example
-------
>>> import torch
>>> enc = build_encoder("test_resnet", in_chans=2, crop_size=(4, 32, 32))
>>> enc(torch.zeros(3, 2, 4, 32, 32)).shape[:3]
torch.Size([3, 4, 96])
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from aop.errors import AopError

__all__ = [
    "TABLE_I",
    "EncoderEntry",
    "SliceEncoder",
    "WeightsLocation",
    "available_encoders",
    "build_encoder",
    "check_pretrained_weights",
    "encoder_entry",
    "locate_pretrained_weights",
    "register_encoder",
]

#: Table I of the paper: registry name -> (abbreviation, parameters in millions as the paper gives).
TABLE_I: dict[str, tuple[str, float]] = {
    "resnet18": ("RN18", 11.7),
    "resnet101": ("RN101", 44.5),
    "swinv2_base_window8_256": ("Swin", 87.9),
    "tf_efficientnetv2_l": ("EN", 118.5),
    "convnext_large": ("CN", 197.8),
    "cellpose_sam": ("CSAM", 305.0),
}

#: Builder signature: (in_chans, crop_size (Z, Y, X), pretrained, weights) -> 2D network.
Builder = Callable[[int, tuple[int, int, int], bool, "str | os.PathLike | None"], nn.Module]


@dataclass(frozen=True)
class EncoderEntry:
    """A registered encoder: its builder and where its pretrained weights are."""

    builder: Builder
    kind: str = "timm"  # "timm" or "cellpose": how pretrained weights are found


_REGISTRY: dict[str, EncoderEntry] = {}


def register_encoder(name: str, *, kind: str = "timm") -> Callable[[Builder], Builder]:
    """Register a 2D encoder builder under ``name`` (decorator).

    The builder is called as ``builder(in_chans, crop_size, pretrained, weights)`` and returns an
    ``nn.Module`` mapping ``(B, in_chans, Y, X)`` to features (channels-first maps, NHWC maps,
    tokens or vectors: :class:`SliceEncoder` normalises them) with an attribute ``num_features``.

    Examples
    --------
    >>> @register_encoder("tiny_conv")
    ... def _tiny(in_chans, crop_size, pretrained, weights):
    ...     net = torch.nn.Conv2d(in_chans, 8, 3, stride=2)
    ...     net.num_features = 8
    ...     return net
    >>> "tiny_conv" in available_encoders()
    True
    >>> _ = _REGISTRY.pop("tiny_conv")
    """

    def decorate(builder: Builder) -> Builder:
        _REGISTRY[name] = EncoderEntry(builder, kind)
        return builder

    return decorate


def available_encoders() -> list[str]:
    """Names of the registered encoders (any other timm model name works too)."""
    return list(_REGISTRY)


def encoder_entry(name: str) -> EncoderEntry:
    """The registry entry of ``name``; a timm model name that is not registered gets a timm entry.

    Raises
    ------
    AopError
        When ``name`` is neither registered nor a timm model.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]
    import timm

    if timm.is_model(name):
        return EncoderEntry(_timm_builder(name))
    known = ", ".join(available_encoders())
    raise AopError(f"encoder {name!r}: not a registered encoder ({known}) nor a timm model name")


def _timm_builder(name: str) -> Builder:
    def build(
        in_chans: int,
        crop_size: tuple[int, int, int],
        pretrained: bool,
        weights: str | os.PathLike | None,
    ) -> nn.Module:
        import timm

        options: dict[str, Any] = {"num_classes": 0, "in_chans": in_chans, "pretrained": pretrained}
        if pretrained and weights is not None:  # a file build_encoder has found
            options["pretrained_cfg_overlay"] = {"file": str(Path(weights).expanduser())}
        # Transformers fix their token grid at creation: give them the crop's in-plane size.
        # CNNs take no img_size argument and accept any size.
        try:
            return timm.create_model(name, img_size=tuple(crop_size[1:]), **options)
        except TypeError as exc:
            if "img_size" not in str(exc):
                raise
            return timm.create_model(name, **options)

    return build


for _name in TABLE_I:
    if _name != "cellpose_sam":
        register_encoder(_name)(_timm_builder(_name))

#: Cellpose model names looked up in ``$CELLPOSE_LOCAL_MODELS_PATH``.
CELLPOSE_NAMES = ("cpsam", "cpsam_v2")


class CellposeSAMEncoder(nn.Module):
    """The image encoder of CellposeSAM (SAM ViT-L, patch 8, global attention) on any crop size.

    CellposeSAM was trained on 256 x 256 tiles (a 32 x 32 token grid). For a crop of ``Y x X``
    (multiples of 8) the absolute position embedding is interpolated bilinearly to the
    ``Y/8 x X/8`` grid; the blocks' relative position tables are interpolated by SAM itself.
    Output: the neck's feature maps ``(B, 256, Y/8, X/8)``.
    """

    def __init__(self, encoder: nn.Module, patch_size: int = 8) -> None:
        super().__init__()
        self.encoder = encoder
        self.patch_size = patch_size
        self.num_features = int(encoder.neck[-2].weight.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        proj = enc.patch_embed.proj
        x = F.conv2d(x, proj.weight[:, : x.shape[1]], proj.bias, stride=self.patch_size)
        x = x.permute(0, 2, 3, 1)
        pos = enc.pos_embed
        if pos.shape[1:3] != x.shape[1:3]:
            pos = F.interpolate(
                pos.permute(0, 3, 1, 2), size=x.shape[1:3], mode="bilinear", align_corners=False
            ).permute(0, 2, 3, 1)
        x = x + pos
        for block in enc.blocks:
            x = block(x)
        return enc.neck(x.permute(0, 3, 1, 2))


def _cellpose_weights(weights: str | os.PathLike | None) -> Path:
    from aop.segmentation.models.cellpose import models_dir

    weights = "cpsam" if weights is None else weights
    by_name = str(weights) in CELLPOSE_NAMES and not Path(weights).exists()
    return models_dir() / str(weights) if by_name else Path(weights).expanduser()


@register_encoder("cellpose_sam", kind="cellpose")
def _cellpose_sam(
    in_chans: int,
    crop_size: tuple[int, int, int],
    pretrained: bool,
    weights: str | os.PathLike | None,
) -> nn.Module:
    try:
        from cellpose.vit import CPSAM
    except ImportError as exc:
        raise AopError(
            "encoder 'cellpose_sam': needs the cellpose package (pip install 'aop[cellpose]')"
        ) from exc
    if in_chans > 3:
        raise AopError(
            f"encoder 'cellpose_sam': takes at most 3 channels, the crops have {in_chans}"
        )
    if crop_size[1] % 8 or crop_size[2] % 8:
        raise AopError(
            f"encoder 'cellpose_sam': crop size (y, x) must be multiples of 8, got {crop_size[1:]}"
        )
    net = CPSAM()
    if pretrained:  # build_encoder has checked that the file exists
        net.load_model(str(_cellpose_weights(weights)), device=torch.device("cpu"))
    return CellposeSAMEncoder(net.encoder, patch_size=net.ps)


class SliceEncoder(nn.Module):
    """A 2D network applied to every z-slice of a crop: ``(N, C, Z, Y, X) -> (N, Z, F, h, w)``.

    Parameters
    ----------
    backbone : nn.Module
        The 2D network (``num_features`` attribute; timm models have one).
    name : str
        Registry or timm name, kept for records.

    Notes
    -----
    The backbone's output is brought to channels-first maps ``(B, F, h, w)``: NHWC maps (timm's
    ``output_fmt == "NHWC"``) are permuted; tokens ``(B, L, F)`` lose their prefix (class) tokens
    and are laid out on their square grid (or as an ``L x 1`` column); vectors become ``1 x 1``
    maps.
    """

    def __init__(self, backbone: nn.Module, name: str = "") -> None:
        super().__init__()
        self.backbone = backbone
        self.name = name
        self.num_features = int(backbone.num_features)

    def forward_maps(self, images: torch.Tensor) -> torch.Tensor:
        """Feature maps ``(B, F, h, w)`` of 2D images ``(B, C, Y, X)``."""
        forward = getattr(self.backbone, "forward_features", self.backbone)
        out = forward(images)
        if out.ndim == 4:
            if str(getattr(self.backbone, "output_fmt", "NCHW")).endswith("NHWC"):
                out = out.permute(0, 3, 1, 2)
            return out
        if out.ndim == 3:
            tokens = out[:, int(getattr(self.backbone, "num_prefix_tokens", 0)) :]
            side = int(round(tokens.shape[1] ** 0.5))
            shape = (side, side) if side * side == tokens.shape[1] else (tokens.shape[1], 1)
            return tokens.transpose(1, 2).reshape(out.shape[0], out.shape[2], *shape)
        if out.ndim == 2:
            return out[:, :, None, None]
        raise ValueError(f"encoder {self.name!r}: unexpected feature shape {tuple(out.shape)}")

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """Feature maps of every slice: ``(N, C, Z, Y, X) -> (N, Z, F, h, w)``."""
        n, c, z, y, x = crops.shape
        slices = crops.permute(0, 2, 1, 3, 4).reshape(n * z, c, y, x)
        maps = self.forward_maps(slices)
        return maps.reshape(n, z, *maps.shape[1:])


def build_encoder(
    name: str,
    *,
    in_chans: int,
    crop_size: tuple[int, int, int],
    pretrained: bool = False,
    weights: str | os.PathLike | None = None,
) -> SliceEncoder:
    """Build encoder ``name`` for crops with ``in_chans`` channels of size ``crop_size``.

    Parameters
    ----------
    name : str
        A registered encoder (:func:`available_encoders`) or any timm model name.
    in_chans : int
        Channels of the crops (see the module docstring for how they map onto the network).
    crop_size : (int, int, int)
        Crop size ``(Z, Y, X)``; transformers fix their token grid to ``(Y, X)``.
    pretrained : bool
        Load pretrained weights (ImageNet for timm, CellposeSAM's own for ``cellpose_sam``);
        otherwise the network's random initialisation.
    weights : path-like, optional
        A local weights file (timm: ``pretrained_cfg_overlay=dict(file=...)``; cellpose: a model
        file or name). Only used when ``pretrained``.

    Examples
    --------
    >>> enc = build_encoder("test_convnext", in_chans=1, crop_size=(2, 32, 32))
    >>> enc.num_features
    64
    """
    entry = encoder_entry(name)
    if pretrained:
        check_pretrained_weights(name, weights, download=True)
    backbone = entry.builder(int(in_chans), tuple(int(s) for s in crop_size), pretrained, weights)
    return SliceEncoder(backbone, name=name)


@dataclass(frozen=True)
class WeightsLocation:
    """Where the pretrained weights of an encoder are, or would be.

    ``source`` is ``"file"`` (a local file), ``"hf-hub"`` (timm's Hugging Face cache), ``"url"``
    (torch hub's cache) or ``"cellpose"``; ``path`` the file (``None`` when not cached);
    ``available`` whether it is there; ``how`` one sentence saying which file to put where.
    """

    encoder: str
    source: str
    path: Path | None
    available: bool
    how: str


def locate_pretrained_weights(
    name: str, weights: str | os.PathLike | None = None
) -> WeightsLocation:
    """Find the pretrained weights of encoder ``name`` without loading or downloading them.

    Examples
    --------
    >>> loc = locate_pretrained_weights("resnet18", "/nonexistent/resnet18.pth")
    >>> loc.source, loc.available
    ('file', False)
    """
    entry = encoder_entry(name)
    if entry.kind == "cellpose":
        path = _cellpose_weights(weights)
        how = (
            f"put the CellposeSAM model file ({path.name}) at {path} "
            "(set CELLPOSE_LOCAL_MODELS_PATH to its folder, or give the file as weights)"
        )
        return WeightsLocation(name, "cellpose", path, path.is_file(), how)
    if weights is not None:
        path = Path(weights).expanduser()
        return WeightsLocation(name, "file", path, path.is_file(), f"put the weights at {path}")
    import timm

    cfg = timm.models.get_pretrained_cfg(name) if timm.is_model(name) else None
    cfg = cfg.to_dict() if cfg is not None else {}
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    if hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        files = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else []
        files = files or ["model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin"]
        for filename in files:
            cached = try_to_load_from_cache(hub_id, filename)
            if isinstance(cached, str):
                return WeightsLocation(name, "hf-hub", Path(cached), True, "")
        how = (
            f"put the {hub_id} weights ({files[0]}) in timm's Hugging Face cache "
            f"{constants.HF_HUB_CACHE} (load the encoder once where the hub can be reached) "
            "or give a local weights file as weights"
        )
        return WeightsLocation(name, "hf-hub", None, False, how)
    if url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)
        how = f"put {os.path.basename(url)} at {path} or give a local weights file as weights"
        return WeightsLocation(name, "url", path, path.is_file(), how)
    return WeightsLocation(
        name, "file", None, False, "timm ships no pretrained weights for it: give a file as weights"
    )


def check_pretrained_weights(
    name: str, weights: str | os.PathLike | None = None, *, download: bool = False
) -> WeightsLocation:
    """The location of encoder ``name``'s pretrained weights; raise when they are missing.

    A study calls this at load time for every encoder it may train with pretrained weights, so a
    missing file stops it before the first trial.

    Parameters
    ----------
    name : str
        Encoder name.
    weights : path-like, optional
        A local weights file (or a Cellpose model name for ``cellpose_sam``).
    download : bool
        For timm's hub weights that are not cached: fetch them into the cache (needs network).

    Raises
    ------
    AopError
        One line: ``encoder 'NAME': pretrained weights not found: put ... at ...``.

    Examples
    --------
    >>> try:
    ...     check_pretrained_weights("test_resnet", "/nonexistent/w.pth")
    ... except AopError as error:
    ...     print(error)
    encoder 'test_resnet': pretrained weights not found: put the weights at /nonexistent/w.pth
    """
    location = locate_pretrained_weights(name, weights)
    if location.available:
        return location
    if download and location.source == "hf-hub":
        import timm
        from huggingface_hub import hf_hub_download

        hub_id = timm.models.get_pretrained_cfg(name).hf_hub_id
        try:
            path = hf_hub_download(hub_id, "model.safetensors")
        except Exception as exc:  # noqa: BLE001  (any failure means: not available here)
            raise AopError(
                f"encoder {name!r}: pretrained weights could not be fetched "
                f"({type(exc).__name__}): {location.how}"
            ) from exc
        return WeightsLocation(name, "hf-hub", Path(path), True, "")
    raise AopError(f"encoder {name!r}: pretrained weights not found: {location.how}")
