"""CycleGAN networks in 2D and 3D: ResNet generators, PatchGAN discriminators, an image pool.

The layouts follow Zhu et al. (2017): the generator is a 7x7 convolution, two stride-2
convolutions, residual blocks, two transposed convolutions and a 7x7 convolution with ``tanh``;
the discriminator is a stack of 4x4 stride-2 convolutions with leaky ReLU ending in a one-channel
map of patch scores (three strided layers: the 70x70 PatchGAN). The same code builds 2D and 3D
networks through ``spatial_dims``.

>>> import torch
>>> g = ResnetGenerator(1, 1, spatial_dims=2, ngf=8, n_blocks=1)
>>> g(torch.zeros(1, 1, 16, 16)).shape
torch.Size([1, 1, 16, 16])
"""

from __future__ import annotations

import random

import torch
from torch import nn

__all__ = ["ImagePool", "PatchDiscriminator", "ResnetGenerator"]


def _layers(spatial_dims: int, norm: str) -> tuple[type, type, type, type]:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if spatial_dims == 2:
        conv, convt, pad = nn.Conv2d, nn.ConvTranspose2d, nn.ReflectionPad2d
        normal = nn.InstanceNorm2d if norm == "instance" else nn.BatchNorm2d
    else:
        conv, convt, pad = nn.Conv3d, nn.ConvTranspose3d, nn.ReflectionPad3d
        normal = nn.InstanceNorm3d if norm == "instance" else nn.BatchNorm3d
    return conv, convt, pad, normal


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int, spatial_dims: int, norm: str) -> None:
        super().__init__()
        conv, _, pad, normal = _layers(spatial_dims, norm)
        self.body = nn.Sequential(
            pad(1), conv(channels, channels, 3), normal(channels), nn.ReLU(True),
            pad(1), conv(channels, channels, 3), normal(channels),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """ResNet generator: downsample twice, ``n_blocks`` residual blocks, upsample twice.

    Parameters
    ----------
    in_channels, out_channels : int
        Input channels (image channels times slices in 2D with context) and output channels.
    spatial_dims : {2, 3}
    ngf : int
        Filters of the first layer (doubled at each downsampling).
    n_blocks : int
        Residual blocks at the lowest resolution.
    norm : {"instance", "batch"}
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        spatial_dims: int = 2,
        ngf: int = 64,
        n_blocks: int = 9,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        conv, convt, pad, normal = _layers(spatial_dims, norm)
        layers: list[nn.Module] = [pad(3), conv(in_channels, ngf, 7), normal(ngf), nn.ReLU(True)]
        channels = ngf
        for _ in range(2):
            layers += [
                conv(channels, channels * 2, 3, stride=2, padding=1),
                normal(channels * 2),
                nn.ReLU(True),
            ]
            channels *= 2
        layers += [_ResidualBlock(channels, spatial_dims, norm) for _ in range(n_blocks)]
        for _ in range(2):
            layers += [
                convt(channels, channels // 2, 3, stride=2, padding=1, output_padding=1),
                normal(channels // 2),
                nn.ReLU(True),
            ]
            channels //= 2
        layers += [pad(3), conv(channels, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class PatchDiscriminator(nn.Module):
    """PatchGAN discriminator: a map of real/fake scores, one per receptive-field patch.

    Parameters
    ----------
    in_channels : int
    spatial_dims : {2, 3}
    ndf : int
        Filters of the first layer.
    n_layers : int
        Strided layers (3: receptive field 70 px, the paper's 70x70 PatchGAN).
    norm : {"instance", "batch"}
    input_size : tuple of int, optional
        Size of the training crops. An axis too short for the next 4x4 stride-2 convolution
        (fewer than 8 voxels left, e.g. z of an anisotropic 3D patch) keeps its size there with a
        stride-1 convolution of width 3 instead.
    """

    def __init__(
        self,
        in_channels: int,
        *,
        spatial_dims: int = 2,
        ndf: int = 64,
        n_layers: int = 3,
        norm: str = "instance",
        input_size: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        conv, _, _, normal = _layers(spatial_dims, norm)
        size = list(input_size) if input_size is not None else [256] * spatial_dims

        def layer(i: int, o: int, stride: int) -> nn.Module:
            kernel, strides = [], []
            for axis, s in enumerate(size):
                if s >= 4 * stride:  # a 4-wide kernel fits: size halves (stride 2) or loses 1
                    kernel.append(4), strides.append(stride)
                    size[axis] = s // 2 if stride == 2 else s - 1
                else:
                    kernel.append(3), strides.append(1)
            return conv(i, o, tuple(kernel), stride=tuple(strides), padding=1)

        layers: list[nn.Module] = [layer(in_channels, ndf, 2), nn.LeakyReLU(0.2, True)]
        channels = ndf
        for n in range(1, n_layers + 1):
            out = ndf * min(2**n, 8)
            layers += [
                layer(channels, out, 2 if n < n_layers else 1),
                normal(out),
                nn.LeakyReLU(0.2, True),
            ]
            channels = out
        layers.append(layer(channels, 1, 1))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class ImagePool:
    """History of generated images for the discriminator (Shrivastava et al. 2017).

    Until the pool is full every image is stored and returned; afterwards each image is, with
    probability 1/2, swapped for a random stored one (which is returned instead).

    Parameters
    ----------
    size : int
        Images kept; 0 returns the input unchanged.
    seed : int
        Seed of the swaps.

    Examples
    --------
    >>> pool = ImagePool(2)
    >>> pool.query(torch.ones(3, 1, 4, 4)).shape
    torch.Size([3, 1, 4, 4])
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        self.size = size
        self.images: list[torch.Tensor] = []
        self.rng = random.Random(seed)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif self.rng.random() < 0.5:
                index = self.rng.randrange(self.size)
                out.append(self.images[index].clone())
                self.images[index] = image.clone()
            else:
                out.append(image)
        return torch.cat(out, 0)

    def state_dict(self) -> dict:
        return {"images": [i.cpu() for i in self.images], "rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.images = list(state["images"])
        self.rng.setstate(state["rng"])
