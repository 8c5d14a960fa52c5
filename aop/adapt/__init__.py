"""CycleGAN domain adaptation of a synthetic benchmark to the user's real volumes.

- :mod:`aop.adapt.config`: :class:`AdaptSettings` (the CycleGAN paper's defaults).
- :mod:`aop.adapt.networks`, :mod:`aop.adapt.model`: generators, discriminators, the Lightning
  module; :mod:`aop.adapt.data`: loading, voxel-size matching, unpaired crops.
- :mod:`aop.adapt.translate`: tiled whole-volume translation.
- :mod:`aop.adapt.train`: training, the adapted data set, and the cached adaptation of studies.
- :mod:`aop.adapt.gap`: measures of the domain gap.

>>> from aop.adapt import AdaptSettings
>>> AdaptSettings().lambda_cycle
10.0
"""

from aop.adapt.config import AdaptConfig, AdaptSettings

__all__ = ["AdaptConfig", "AdaptSettings", "adapt_benchmark", "adapt_dataset"]


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    if name in ("adapt_benchmark", "adapt_dataset"):
        from aop.adapt import train

        return getattr(train, name)
    raise AttributeError(name)
