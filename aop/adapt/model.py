"""The CycleGAN as a Lightning module: two generators, two PatchGAN discriminators.

Domain A is the synthetic benchmark, domain B the real data; ``generator_ab`` adapts synthetic
images. The losses are those of Zhu et al. (2017): least-squares GAN losses, cycle consistency
(L1, weight ``lambda_cycle``) and identity (L1, weight ``lambda_identity * lambda_cycle``); the
discriminators see generated images through an image pool and their loss is halved. Both Adam
optimisers keep the learning rate for ``epochs`` epochs and then decay it linearly to zero over
``epochs_decay`` epochs.

A sample may also carry the synthetic crop's foreground mask. The Pearson correlation of the
adapted crop with it is logged as ``label_corr``: it stays near a real volume's own (about 0.65)
while the adaptation keeps the nuclei where the labels are, and falls towards 0 or below when the
CycleGAN collapses (inverted nuclei, checkerboards). With ``lambda_label > 0`` the generator A→B
also pays a label loss (:func:`label_loss`), so that adaptation cannot move nuclei or invent them
where the labels have none (the CycleGAN alone does both when the two domains differ in density).

In 2D mode a sample is a slice with its neighbours as channels, and the generators map a whole
stack to a stack, so the cycle can run on the stack; translation keeps the centre slice.

>>> from aop.adapt.config import AdaptSettings
>>> module = CycleGAN(AdaptSettings(ngf=4, ndf=4, n_blocks=1, patch=(16, 16)).model_dump(), 1)
>>> module.generator_ab.model[1].in_channels
3
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from aop.adapt.config import AdaptSettings
from aop.adapt.networks import ImagePool, PatchDiscriminator, ResnetGenerator

__all__ = ["CycleGAN", "label_correlation", "label_loss"]


def label_correlation(
    adapted: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per crop, the Pearson correlation of an adapted crop (first image channel; in 2D its
    context slices) with its foreground mask, and whether the crop is informative (has both
    foreground and background; the correlation of the others is 0)."""
    a = adapted[:, : mask.shape[1]].flatten(1)
    m = mask.flatten(1).to(a.dtype)
    a = a - a.mean(1, keepdim=True)
    m = m - m.mean(1, keepdim=True)
    norm = a.norm(dim=1) * m.norm(dim=1)
    informative = m.norm(dim=1) > 0
    corr = (a * m).sum(1) / norm.clamp_min(1e-8)
    return corr * informative, informative


def label_loss(adapted: torch.Tensor, mask: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over the batch of ``max(0, margin - corr)``, ``corr`` the Pearson correlation of an
    adapted crop with its foreground mask (:func:`label_correlation`).

    Crops without both foreground and background carry no information and count 0.

    >>> mask = torch.zeros(1, 1, 8, 8); mask[..., 2:5, 2:5] = 1
    >>> float(label_loss(mask * 2 - 1, mask, 0.6)), round(float(label_loss(-mask, mask, 0.6)), 2)
    (0.0, 1.6)
    """
    return _shortfall(*label_correlation(adapted, mask), margin)


def _shortfall(corr: torch.Tensor, informative: torch.Tensor, margin: float) -> torch.Tensor:
    """The label loss from :func:`label_correlation`'s output."""
    return (torch.relu(margin - corr) * informative).mean()


class CycleGAN(L.LightningModule):
    """CycleGAN between synthetic (A) and real (B) images.

    Parameters
    ----------
    settings : dict
        :class:`~aop.adapt.config.AdaptSettings` as a plain mapping (saved with the checkpoint).
    channels : int
        Image channels of both domains.
    """

    def __init__(self, settings: dict[str, Any], channels: int = 1) -> None:
        super().__init__()
        self.save_hyperparameters()
        #: set by :func:`aop.adapt.train.train_cyclegan`: where the collapse guard stopped, or None
        self.collapse: dict[str, Any] | None = None
        self.settings = AdaptSettings.model_validate(settings)
        self.channels = channels
        s = self.settings
        width = s.in_channels(channels)
        dims = s.spatial_dims

        def generator() -> ResnetGenerator:
            return ResnetGenerator(
                width, width, spatial_dims=dims, ngf=s.ngf, n_blocks=s.residual_blocks, norm=s.norm
            )

        def discriminator() -> PatchDiscriminator:
            return PatchDiscriminator(
                width, spatial_dims=dims, ndf=s.ndf, n_layers=s.d_layers, norm=s.norm,
                input_size=tuple(s.patch),
            )  # fmt: skip

        self.generator_ab, self.generator_ba = generator(), generator()
        self.discriminator_a, self.discriminator_b = discriminator(), discriminator()
        self.pool_a = ImagePool(s.pool_size, seed=s.seed)
        self.pool_b = ImagePool(s.pool_size, seed=s.seed + 1)
        self.automatic_optimization = False
        self._init_weights()

    def _init_weights(self) -> None:
        """Normal(0, 0.02) weights, as in the reference implementation."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d | nn.ConvTranspose3d):
                nn.init.normal_(module.weight, 0.0, 0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d | nn.BatchNorm3d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def centre_channels(self) -> list[int]:
        """Output channels of the centre slice (2D) or all channels (3D)."""
        s = self.settings
        if s.mode == "3d":
            return list(range(self.channels))
        width = 2 * s.context + 1
        return [c * width + s.context for c in range(self.channels)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Adapt synthetic images to the real domain."""
        return self.generator_ab(x)

    @staticmethod
    def _gan_loss(scores: torch.Tensor, real: bool) -> torch.Tensor:
        target = torch.ones_like(scores) if real else torch.zeros_like(scores)
        return nn.functional.mse_loss(scores, target)

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> None:
        s = self.settings
        real_a, real_b = batch[0], batch[1]
        opt_g, opt_d = self.optimizers()  # type: ignore[misc]

        with self.toggled_optimizer(opt_g):  # generators; the discriminators' weights fixed
            fake_b = self.generator_ab(real_a)
            fake_a = self.generator_ba(real_b)
            rec_a = self.generator_ba(fake_b)
            rec_b = self.generator_ab(fake_a)
            loss_gan_ab = self._gan_loss(self.discriminator_b(fake_b), True)
            loss_gan_ba = self._gan_loss(self.discriminator_a(fake_a), True)
            l1 = nn.functional.l1_loss
            loss_cycle = (l1(rec_a, real_a) + l1(rec_b, real_b)) * s.lambda_cycle
            loss_identity = real_a.new_zeros(())
            if s.lambda_identity > 0:
                weight = s.lambda_identity * s.lambda_cycle
                loss_identity = (
                    l1(self.generator_ab(real_b), real_b) + l1(self.generator_ba(real_a), real_a)
                ) * weight
            loss_label = real_a.new_zeros(())
            corr = None
            if len(batch) > 2:  # the benchmark's masks: the label loss, and a collapse monitor
                corr, informative = label_correlation(fake_b, batch[2])
                if s.lambda_label > 0:
                    loss_label = s.lambda_label * _shortfall(corr, informative, s.label_margin)
                corr = corr.sum() / informative.sum().clamp_min(1)
            loss_g = loss_gan_ab + loss_gan_ba + loss_cycle + loss_identity + loss_label
            opt_g.zero_grad()
            self.manual_backward(loss_g)
            opt_g.step()

        # discriminators, on pooled generated images
        pooled_b = self.pool_b.query(fake_b.detach())
        pooled_a = self.pool_a.query(fake_a.detach())
        loss_d_b = 0.5 * (
            self._gan_loss(self.discriminator_b(real_b), True)
            + self._gan_loss(self.discriminator_b(pooled_b), False)
        )
        loss_d_a = 0.5 * (
            self._gan_loss(self.discriminator_a(real_a), True)
            + self._gan_loss(self.discriminator_a(pooled_a), False)
        )
        opt_d.zero_grad()
        self.manual_backward(loss_d_a + loss_d_b)
        opt_d.step()
        if batch_idx + 1 == self.trainer.num_training_batches:  # epoch end, before checkpoints
            for scheduler in self.lr_schedulers():  # type: ignore[union-attr]
                scheduler.step()

        metrics = {} if corr is None else {"label_corr": corr.detach()}
        self.log_dict(
            {
                **metrics,
                "loss_g": loss_g.detach(),
                "loss_g_gan": (loss_gan_ab + loss_gan_ba).detach(),
                "loss_cycle": loss_cycle.detach(),
                "loss_identity": loss_identity.detach(),
                "loss_label": loss_label.detach(),
                "loss_d": (loss_d_a + loss_d_b).detach(),
            },
            prog_bar=True,
            on_step=True,
            on_epoch=True,
            batch_size=real_a.shape[0],
        )

    def on_train_epoch_start(self) -> None:
        if hasattr(self.trainer.datamodule, "set_epoch"):
            self.trainer.datamodule.set_epoch(self.current_epoch)

    def configure_optimizers(self) -> Any:
        s = self.settings
        betas = (s.beta1, 0.999)
        generators = [*self.generator_ab.parameters(), *self.generator_ba.parameters()]
        discriminators = [*self.discriminator_a.parameters(), *self.discriminator_b.parameters()]
        opt_g = torch.optim.Adam(generators, lr=s.lr, betas=betas)
        opt_d = torch.optim.Adam(discriminators, lr=s.lr, betas=betas)

        def factor(epoch: int) -> float:
            return 1.0 - max(0, epoch + 1 - s.epochs) / float(s.epochs_decay + 1)

        schedulers = [torch.optim.lr_scheduler.LambdaLR(o, factor) for o in (opt_g, opt_d)]
        return [opt_g, opt_d], schedulers

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["image_pools"] = [self.pool_a.state_dict(), self.pool_b.state_dict()]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        pools = checkpoint.get("image_pools")
        if pools is not None:
            self.pool_a.load_state_dict(pools[0])
            self.pool_b.load_state_dict(pools[1])
