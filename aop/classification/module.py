"""The instance classifier as a ``LightningModule``: a 2D slice encoder plus a head.

:class:`CropClassifier` saves its hyperparameters, so ``CropClassifier.load_from_checkpoint(path)``
rebuilds it from a checkpoint alone (the encoder is built with random initialisation and the
checkpoint's weights replace it: no weights file is needed to reload). It trains with Adam and
cross-entropy (optional class weights) and logs ``train_loss``, ``train_acc``, ``val_loss``,
``val_acc`` and ``test_acc`` (micro accuracy: the share of crops classified right), and
``val_bal_acc`` (:class:`BalancedAccuracy`, the mean recall over the classes present in the
validation split); loggers, callbacks and precision are ``Trainer`` arguments
(:mod:`aop.classification.train`).

Balanced accuracy
-----------------
``val_bal_acc`` is scikit-learn's ``balanced_accuracy_score``: the recall of every class that
occurs in the validation targets, averaged. A class absent from the targets does not count, even
when the model predicts it. torchmetrics' ``MulticlassAccuracy(average="macro")`` differs there: it
leaves out only classes neither present nor predicted, and counts a predicted but absent class as
recall 0 (targets ``[0, 0, 0, 1]``, predictions ``[0, 2, 0, 1]``: 0.556 against scikit-learn's
0.833). A small validation split can miss a rare class, so the module keeps its own counts.

Freezing
--------
``freeze_fraction`` (0.8 for the paper's ``full`` and ``semi`` pretraining) freezes exactly
``round(freeze_fraction * P)`` of the encoder's ``P`` parameters, counted in scalars (not tensors),
from the input side: the encoder's parameter tensors in ``named_parameters()`` order, which for the
registered encoders is the order of the forward pass (stem, then stage after stage). The tensors
before the boundary get ``requires_grad=False``; of the tensor that straddles the boundary the first
``k`` elements (flattened, C order) are frozen by zeroing their gradient after every backward pass.
With Adam (no weight decay) a parameter whose gradient is always zero never moves, so exactly that
many scalars stay at their initial value. :func:`freeze_plan` computes the split; batch-norm running
statistics are buffers, not parameters, and still update in training mode.

Example
-------
>>> import torch
>>> model = CropClassifier("test_resnet", in_chans=2, crop_size=(4, 32, 32), num_classes=3)
>>> model(torch.zeros(2, 2, 4, 32, 32)).shape
torch.Size([2, 3])
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from torch import nn
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy

from aop.classification.encoders import build_encoder
from aop.classification.heads import build_head

__all__ = ["BalancedAccuracy", "CropClassifier", "FreezePlan", "freeze_plan", "predict_proba"]


class BalancedAccuracy(Metric):
    """Mean recall over the classes present in the targets (scikit-learn's balanced accuracy).

    Counts, per class, the targets and the targets predicted right; both sum over batches and
    processes. NaN before any target.

    Parameters
    ----------
    num_classes : int
        Classes ``0 .. num_classes - 1``.

    Examples
    --------
    >>> metric = BalancedAccuracy(3)
    >>> metric.update(torch.tensor([0, 2, 0]), torch.tensor([0, 0, 0]))
    >>> metric.update(torch.tensor([1]), torch.tensor([1]))
    >>> round(float(metric.compute()), 4)  # (2/3 + 1) / 2; class 2 is predicted, never a target
    0.8333
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, num_classes: int, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        zeros = torch.zeros(self.num_classes, dtype=torch.long)
        self.add_state("support", default=zeros.clone(), dist_reduce_fx="sum")
        self.add_state("hits", default=zeros.clone(), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch of predicted and true class indices."""
        preds, target = preds.long().flatten(), target.long().flatten()
        self.support += torch.bincount(target, minlength=self.num_classes)
        self.hits += torch.bincount(target[preds == target], minlength=self.num_classes)

    def compute(self) -> torch.Tensor:
        """The balanced accuracy of everything added since the last reset."""
        present = self.support > 0
        if not bool(present.any()):
            return torch.tensor(float("nan"))
        recall = self.hits[present].double() / self.support[present].double()
        return recall.mean().float()


@dataclass(frozen=True)
class FreezePlan:
    """Which encoder parameters to freeze: ``frozen`` of ``total`` scalars.

    ``tensors`` are frozen whole; ``partial`` is ``(name, k)``: the first ``k`` flattened elements
    of tensor ``name`` (or ``None`` when the boundary falls between tensors).
    """

    total: int
    frozen: int
    tensors: tuple[str, ...]
    partial: tuple[str, int] | None


def freeze_plan(module: nn.Module, fraction: float) -> FreezePlan:
    """Split ``module``'s parameters at ``round(fraction * total)`` scalars from the input side.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))  # 20 + 10 scalars
    >>> plan = freeze_plan(net, 0.8)
    >>> plan.frozen, plan.tensors, plan.partial
    (24, ('0.weight', '0.bias'), ('1.weight', 4))
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"freeze_fraction must be in [0, 1], got {fraction}")
    params = list(module.named_parameters())
    total = sum(p.numel() for _, p in params)
    target = int(math.floor(fraction * total + 0.5))
    tensors: list[str] = []
    partial, count = None, 0
    for name, p in params:
        if count + p.numel() > target:
            partial = (name, target - count)
            break
        tensors.append(name)
        count += p.numel()
        if count == target:
            break
    return FreezePlan(total=total, frozen=target, tensors=tuple(tensors), partial=partial)


class CropClassifier(L.LightningModule):
    """Encoder (2D, per z-slice) + head (``slice`` or ``volume``) over instance crops.

    Parameters
    ----------
    encoder : str
        Encoder name (:func:`aop.classification.encoders.available_encoders` or a timm name).
    in_chans : int
        Channels ``C`` of the crops ``(N, C, Z, Y, X)``.
    crop_size : (int, int, int)
        ``(Z, Y, X)`` of the crops.
    num_classes : int
        Number of classes.
    head : {"slice", "volume"}
        The head (:mod:`aop.classification.heads`).
    head_depth, head_width : int
        Number of linear layers of the head and width of its hidden layers.
    lr : float
        Adam learning rate.
    class_weights : sequence of float, optional
        Cross-entropy class weights.
    freeze_fraction : float
        Fraction of the encoder's parameters frozen from the input side (see the module docstring).
    class_names : sequence of str, optional
        Kept with the model for predictions.
    stage : str
        Name of the training stage (``"semi"`` for the first stage of semi-supervised pretraining,
        ``"manual"`` otherwise); checkpoints carry it so a resumed training knows where it was.
    pretrained : bool
        Build the encoder with pretrained weights (not saved as a hyperparameter: a reload takes
        the checkpoint's weights).
    weights : path-like, optional
        Local pretrained weights file (not saved either).
    """

    def __init__(
        self,
        encoder: str,
        in_chans: int,
        crop_size: Sequence[int],
        num_classes: int,
        head: str = "slice",
        head_depth: int = 2,
        head_width: int = 128,
        lr: float = 1e-3,
        class_weights: Sequence[float] | None = None,
        freeze_fraction: float = 0.0,
        class_names: Sequence[str] | None = None,
        stage: str = "manual",
        pretrained: bool = False,
        weights: str | os.PathLike | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["pretrained", "weights"])
        crop_size = tuple(int(s) for s in crop_size)
        self.encoder = build_encoder(
            encoder, in_chans=in_chans, crop_size=crop_size, pretrained=pretrained, weights=weights
        )
        self.head = build_head(
            head,
            num_features=self.encoder.num_features,
            num_slices=crop_size[0],
            num_classes=num_classes,
            depth=head_depth,
            width=head_width,
        )
        weight = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.loss = nn.CrossEntropyLoss(weight=weight)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_bal_acc = BalancedAccuracy(num_classes)
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.plan = freeze_plan(self.encoder, freeze_fraction)
        parameters = dict(self.encoder.named_parameters())
        for name in self.plan.tensors:
            parameters[name].requires_grad_(False)
        partial = self.plan.partial
        self._partial = None if partial is None else (parameters[partial[0]], partial[1])

    def forward(self, crops: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, num_classes)`` of crops ``(N, C, Z, Y, X)``."""
        return self.head(self.encoder(crops))

    def frozen_parameter_count(self) -> int:
        """Encoder scalars that never train: whole frozen tensors plus the masked part."""
        whole = sum(p.numel() for p in self.encoder.parameters() if not p.requires_grad)
        return whole + (self._partial[1] if self._partial is not None else 0)

    def on_after_backward(self) -> None:
        if self._partial is not None:
            param, k = self._partial
            if param.grad is not None:
                param.grad.view(-1)[:k] = 0

    def _step(
        self, batch: dict[str, torch.Tensor], metric: MulticlassAccuracy, split: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss and predicted classes of a batch; logs ``{split}_loss`` and ``{split}_acc``."""
        crops, labels = batch["crop"], batch["label"].long()
        logits = self(crops)
        loss = self.loss(logits, labels)
        predictions = logits.argmax(dim=1)
        metric(predictions, labels)
        size = len(labels)
        self.log(f"{split}_loss", loss, on_step=False, on_epoch=True, batch_size=size)
        self.log(f"{split}_acc", metric, on_step=False, on_epoch=True, batch_size=size)
        return loss, predictions

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, self.train_acc, "train")[0]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        _, predictions = self._step(batch, self.val_acc, "val")
        labels = batch["label"].long()
        self.val_bal_acc(predictions, labels)
        self.log(
            "val_bal_acc", self.val_bal_acc, on_step=False, on_epoch=True, batch_size=len(labels)
        )

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, self.test_acc, "test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        trainable = [p for p in self.parameters() if p.requires_grad]
        return torch.optim.Adam(trainable, lr=self.hparams.lr)


def predict_proba(
    model: nn.Module,
    crops: np.ndarray,
    *,
    batch_size: int = 32,
    device: str | torch.device | None = None,
) -> np.ndarray:
    """Class probabilities ``(N, num_classes)`` of crops ``(N, C, Z, Y, X)``, in eval mode.

    Examples
    --------
    >>> model = CropClassifier("test_resnet", in_chans=1, crop_size=(2, 32, 32), num_classes=2)
    >>> predict_proba(model, np.zeros((3, 1, 2, 32, 32), np.float32)).shape
    (3, 2)
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(crops), batch_size):
            batch = torch.as_tensor(np.asarray(crops[start : start + batch_size], np.float32))
            out.append(torch.softmax(model(batch.to(device)).float(), dim=1).cpu().numpy())
    model.train(was_training)
    if not out:
        return np.zeros((0, model.hparams.num_classes), np.float32)
    return np.concatenate(out)
