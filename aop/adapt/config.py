"""Settings of the CycleGAN domain adaptation (one pydantic model, unknown keys rejected).

The defaults are those of the CycleGAN paper (Zhu et al. 2017): ResNet generators with 64 filters
(9 residual blocks for crops of 256 px and more, 6 below), 70x70 PatchGAN discriminators (three
strided layers), instance normalisation, the least-squares GAN loss, cycle weight 10, identity
weight 0.5 of it, an image pool of 50, Adam with lr 2e-4 and beta1 0.5, the learning rate constant
for ``epochs`` epochs and then decayed linearly to zero over ``epochs_decay`` epochs. Only the crop
is smaller than the paper's 256 px, since microscopy volumes are often smaller than that.

>>> from aop.adapt.config import AdaptSettings
>>> settings = AdaptSettings(mode="3d")
>>> settings.patch, settings.in_channels(1), settings.residual_blocks
((16, 48, 48), 1, 6)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aop.errors import AopError, validation_message

__all__ = ["ARCHITECTURE_FIELDS", "AdaptConfig", "AdaptSettings", "parse_settings"]

PositiveInt = Annotated[int, Field(gt=0)]

#: Fields that fix the networks' shapes (the patch sets the discriminators' strides): a checkpoint
#: trained with other values cannot resume.
ARCHITECTURE_FIELDS = ("mode", "context", "patch", "ngf", "ndf", "n_blocks", "d_layers", "norm")


class AdaptSettings(BaseModel):
    """CycleGAN training and translation settings.

    Attributes
    ----------
    mode : {"2d", "3d"}
        ``2d``: the networks see yx slices, with ``context`` neighbouring slices on each side as
        extra input channels (the output is the centre slice). ``3d``: 3D patches.
    context : int
        Neighbouring slices on each side in 2D mode (0: single slices).
    patch : tuple of int
        Training crop, (y, x) in 2D or (z, y, x) in 3D, each a multiple of 4; also the tile of
        the whole-volume translation. Default (48, 48) in 2D, (16, 48, 48) in 3D.
    overlap : float
        Overlap of neighbouring tiles in the translation, blended with Gaussian weights.
    ngf, ndf : int
        Filters of the first generator and discriminator layer.
    n_blocks : int or None
        Residual blocks of the generators; ``None``: 9 for crops of 256 px and more, else 6.
    d_layers : int
        Strided layers of the PatchGAN discriminators (3: the 70x70 PatchGAN).
    norm : {"instance", "batch"}
        Normalisation layers.
    lambda_cycle, lambda_identity : float
        Cycle-consistency weight, and the identity weight as a fraction of it.
    lambda_label, label_margin : float
        The label loss (aop's, not the paper's; 0: off): ``lambda_label`` times how far the
        Pearson correlation of an adapted crop with the benchmark's foreground mask falls
        below ``label_margin``. A generator that moves or invents nuclei lowers that
        correlation; a real volume's correlation with its own mask is about 0.65.
    collapse_drop : float or None
        aop's collapse guard (not the paper's; None: off). The epoch with the highest mean
        correlation of adapted crops with the benchmark's labels (``label_corr``) is kept; when
        ``label_corr`` stays more than ``collapse_drop`` below that best for two epochs in a
        row, training stops and the best epoch's networks translate the benchmark. Trained long
        on little real data, a CycleGAN drifts: it moves and invents nuclei, then inverts them
        (``label_corr`` from about 0.7 towards 0).
    augment : {"flip", "dihedral"}
        Random transforms of the training crops: ``flip`` (the paper's) mirrors along x;
        ``dihedral`` mirrors along y and x and transposes y and x (square patches), the eight
        symmetries of the yx plane, so a single small real volume gives the discriminators eight
        times as many distinct crops.
    pool_size : int
        Generated images kept in each discriminator's image pool (0: no pool).
    lr, beta1 : float
        Adam learning rate and first moment decay.
    epochs, epochs_decay : int
        Epochs at the constant learning rate, then epochs of linear decay to zero.
    steps_per_epoch : int
        Optimisation steps per epoch (random unpaired crops).
    batch_size : int
        Crops per step.
    checkpoint_every : int
        Epochs between checkpoints (the last epoch is always saved).
    panel_every : int
        Epochs between the real / synthetic / adapted panels logged to MLflow.
    seed : int
        Seed of weights, crops and pools.
    """

    model_config = ConfigDict(extra="forbid")

    mode: Literal["2d", "3d"] = "2d"
    context: Annotated[int, Field(ge=0, le=8)] = 1
    patch: tuple[PositiveInt, ...] | None = None
    overlap: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.25
    ngf: PositiveInt = 64
    ndf: PositiveInt = 64
    n_blocks: Annotated[int, Field(ge=0)] | None = None
    d_layers: Annotated[int, Field(ge=1, le=5)] = 3
    norm: Literal["instance", "batch"] = "instance"
    lambda_cycle: Annotated[float, Field(ge=0.0)] = 10.0
    lambda_identity: Annotated[float, Field(ge=0.0)] = 0.5
    lambda_label: Annotated[float, Field(ge=0.0)] = 0.0
    label_margin: Annotated[float, Field(gt=0.0, le=1.0)] = 0.6
    collapse_drop: Annotated[float, Field(gt=0.0, le=2.0)] | None = 0.1
    augment: Literal["flip", "dihedral"] = "flip"
    pool_size: Annotated[int, Field(ge=0)] = 50
    lr: Annotated[float, Field(gt=0.0)] = 2e-4
    beta1: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.5
    epochs: Annotated[int, Field(ge=0)] = 100
    epochs_decay: Annotated[int, Field(ge=0)] = 100
    steps_per_epoch: PositiveInt = 100
    batch_size: PositiveInt = 1
    checkpoint_every: PositiveInt = 5
    panel_every: PositiveInt = 5
    seed: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _check(self) -> AdaptSettings:
        dims = 2 if self.mode == "2d" else 3
        if self.patch is None:
            self.patch = (48, 48) if dims == 2 else (16, 48, 48)
        if len(self.patch) != dims:
            raise ValueError(
                f"patch must have {dims} entries in {self.mode} mode, got {self.patch}"
            )
        if any(p % 4 for p in self.patch):
            raise ValueError(f"patch {self.patch} must be multiples of 4 (two 2x downsamplings)")
        if self.epochs + self.epochs_decay < 1:
            raise ValueError("epochs + epochs_decay must be at least 1")
        return self

    @property
    def residual_blocks(self) -> int:
        """Residual blocks of the generators (the paper's 9 at 256 px, 6 below)."""
        if self.n_blocks is not None:
            return self.n_blocks
        return 9 if min(self.patch[-2:]) >= 256 else 6

    @property
    def spatial_dims(self) -> int:
        return 2 if self.mode == "2d" else 3

    @property
    def total_epochs(self) -> int:
        return self.epochs + self.epochs_decay

    def in_channels(self, channels: int) -> int:
        """Network input channels for images with ``channels`` channels."""
        return channels * (2 * self.context + 1) if self.mode == "2d" else channels

    def architecture(self) -> dict[str, Any]:
        """The fields a checkpoint must share to be resumed (see :data:`ARCHITECTURE_FIELDS`)."""
        values = self.model_dump(mode="json")
        return {name: values[name] for name in ARCHITECTURE_FIELDS}


class AdaptConfig(AdaptSettings):
    """``data.adapt`` of an experiment file: the real volumes plus the adaptation settings.

    Attributes
    ----------
    real : Path
        Folder of real volumes (a data set, or plain volume files); labels are not needed.
    """

    real: Path

    def settings(self) -> AdaptSettings:
        """The adaptation settings without the data location."""
        return AdaptSettings.model_validate(self.model_dump(exclude={"real"}))


def parse_settings(values: dict[str, Any], source: str = "adaptation settings") -> AdaptSettings:
    """Validate a mapping of settings; an invalid one is an :class:`AopError` naming the field.

    >>> parse_settings({"ngf": 8}).ngf
    8
    """
    try:
        return AdaptSettings.model_validate(values)
    except ValidationError as exc:
        raise AopError(f"{source}: {validation_message(exc)}") from None
