"""Classifier heads over the stack of 2D slice features (paper II-C, supplementary Fig. 7).

Both heads take the encoder's output ``(N, Z, F, h, w)`` (:class:`~aop.classification.encoders.
SliceEncoder`) and return class logits ``(N, num_classes)``; both end in ``depth`` linear layers
(``depth - 1`` hidden layers of ``width`` units with ReLU and dropout, then the output layer).

- ``slice`` (:class:`SliceClassifier`): every slice's maps are averaged to one embedding, the
  ``Z`` embeddings are projected to ``attention_dim``, get a learned position embedding per slice,
  and pass one multi-head self-attention block (residual, layer norm, feed-forward); the attended
  slice embeddings are averaged over ``Z`` and go to the linear layers.
- ``volume`` (:class:`VolumeClassifier`): the maps are stacked into a volume ``(N, F, Z, h, w)``,
  reduced to ``conv_channels`` by a 1x1x1 convolution, then two 3x3x3 convolutions (batch norm,
  ReLU), global average pooling and the linear layers.

Example
-------
>>> import torch
>>> head = build_head("volume", num_features=96, num_slices=4, num_classes=3, depth=2, width=32)
>>> head(torch.zeros(5, 4, 96, 2, 2)).shape
torch.Size([5, 3])
"""

from __future__ import annotations

import torch
from torch import nn

from aop.errors import AopError

__all__ = ["HEADS", "SliceClassifier", "VolumeClassifier", "build_head", "linear_layers"]


def linear_layers(
    in_features: int, num_classes: int, depth: int, width: int, dropout: float = 0.0
) -> nn.Sequential:
    """``depth`` linear layers: ``depth - 1`` hidden ones of ``width`` units, then the output.

    Examples
    --------
    >>> layers = linear_layers(64, 3, depth=3, width=16)
    >>> [m.out_features for m in layers if isinstance(m, nn.Linear)]
    [16, 16, 3]
    """
    if depth < 1 or width < 1:
        raise AopError(f"head: depth and width must be >= 1, got depth={depth}, width={width}")
    layers: list[nn.Module] = []
    features = in_features
    for _ in range(depth - 1):
        layers += [nn.Linear(features, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        features = width
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


class SliceClassifier(nn.Module):
    """Self-attention over the stack of averaged 2D slice embeddings, then linear layers.

    Parameters
    ----------
    num_features : int
        Channels ``F`` of the encoder's maps.
    num_slices : int
        ``Z`` of the crops (one learned position embedding per slice).
    num_classes : int
        Output logits.
    depth, width : int
        Linear layers (see :func:`linear_layers`).
    attention_dim, num_heads : int
        Size and heads of the self-attention block.
    dropout : float
        Dropout in attention and the linear layers.
    """

    def __init__(
        self,
        num_features: int,
        num_slices: int,
        num_classes: int,
        depth: int = 2,
        width: int = 128,
        attention_dim: int = 128,
        num_heads: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.project = nn.Linear(num_features, attention_dim)
        self.position = nn.Parameter(torch.zeros(1, num_slices, attention_dim))
        nn.init.trunc_normal_(self.position, std=0.02)
        self.attention = nn.MultiheadAttention(
            attention_dim, num_heads, dropout=dropout, batch_first=True
        )
        self.norm1 = nn.LayerNorm(attention_dim)
        self.feed_forward = nn.Sequential(
            nn.Linear(attention_dim, 2 * attention_dim),
            nn.GELU(),
            nn.Linear(2 * attention_dim, attention_dim),
        )
        self.norm2 = nn.LayerNorm(attention_dim)
        self.classifier = linear_layers(attention_dim, num_classes, depth, width, dropout)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of slice maps ``(N, Z, F, h, w)``."""
        tokens = self.project(maps.mean(dim=(-2, -1))) + self.position
        attended, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        tokens = self.norm1(tokens + attended)
        tokens = self.norm2(tokens + self.feed_forward(tokens))
        return self.classifier(tokens.mean(dim=1))


def _conv_block(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    return [
        nn.Conv3d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    ]


class VolumeClassifier(nn.Module):
    """3D convolutions over the stack of 2D feature maps, then linear layers.

    Parameters are those of :class:`SliceClassifier` (``num_slices`` is unused: the convolutions
    take any ``Z``), with ``conv_channels``, the channels of the 3D convolutions, in place of the
    attention's; ``dropout`` acts in the linear layers.
    """

    def __init__(
        self,
        num_features: int,
        num_slices: int,
        num_classes: int,
        depth: int = 2,
        width: int = 128,
        conv_channels: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        c = conv_channels
        self.convolutions = nn.Sequential(
            *_conv_block(num_features, c, 1),
            *_conv_block(c, c, 3),
            *_conv_block(c, c, 3),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
        )
        self.classifier = linear_layers(c, num_classes, depth, width, dropout)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of slice maps ``(N, Z, F, h, w)``."""
        return self.classifier(self.convolutions(maps.transpose(1, 2)))


#: Head registry: name -> class (the search space lists these names).
HEADS: dict[str, type[nn.Module]] = {"slice": SliceClassifier, "volume": VolumeClassifier}


def build_head(
    name: str,
    *,
    num_features: int,
    num_slices: int,
    num_classes: int,
    depth: int = 2,
    width: int = 128,
) -> nn.Module:
    """The head ``name`` (``"slice"`` or ``"volume"``) for the given encoder and classes.

    Examples
    --------
    >>> head = build_head("slice", num_features=64, num_slices=3, num_classes=2, depth=1)
    >>> head(torch.zeros(2, 3, 64, 1, 1)).shape
    torch.Size([2, 2])
    """
    if name not in HEADS:
        raise AopError(f"head {name!r}: unknown (known: {', '.join(HEADS)})")
    return HEADS[name](num_features, num_slices, num_classes, depth=depth, width=width)
