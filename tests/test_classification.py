"""The classifier: every encoder once, heads, exact freezing, weights, training, semi, resume."""

from __future__ import annotations

import gc
import shutil
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lightning.pytorch.callbacks import Callback
from scipy import stats
from sklearn.metrics import balanced_accuracy_score
from torchmetrics.classification import MulticlassAccuracy

from aop.classification import (
    TABLE_I,
    CropClassifier,
    CropDataModule,
    SplitConfig,
    augmentation,
    available_encoders,
    build_encoder,
    build_head,
    check_pretrained_weights,
    freeze_plan,
    predict_proba,
    stratified_split,
)
from aop.classification.data import CropAugmentation
from aop.classification.inference import inference_speed
from aop.classification.module import BalancedAccuracy
from aop.classification.train import ClassifierConfig, classification_metrics, train_classifier
from aop.errors import AopError

#: Encoder parameters (millions, num_classes=0, 3 input channels) measured with timm (FIELD_NOTES).
TIMM_PARAMS_M = {
    "resnet18": 11.2,
    "resnet101": 42.5,
    "swinv2_base_window8_256": 86.9,
    "tf_efficientnetv2_l": 117.2,
    "convnext_large": 196.2,
}


def easy_crops(n_per_class: int = 20, seed: int = 0, size=(4, 32, 32)):
    """Two-channel crops of three classes, as the ``mask`` preprocessing of a two-channel image
    makes them: channel 0 the binary mask of a centred disc of radius 3, 8 or 13 px
    (``instance_crops`` replaces channel 0 by the mask), channel 1 a noisy image channel where
    the disc has brightness 0.4, 0.7 or 1.0."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_class)
    z, y, x = size
    yy, xx = np.mgrid[:y, :x]
    crops = np.zeros((len(labels), 2, z, y, x), np.float32)
    for i, cls in enumerate(labels):
        radius = (3, 8, 13)[cls] + rng.uniform(-1, 1)
        cy, cx = y / 2 + rng.uniform(-2, 2), x / 2 + rng.uniform(-2, 2)
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < radius**2
        brightness = (0.4, 0.7, 1.0)[cls] + rng.uniform(-0.05, 0.05)
        crops[i, 0] = disc
        crops[i, 1] = rng.normal(0.1, 0.1, size=(z, y, x)) + disc * brightness
    return crops, labels


# -- encoders -------------------------------------------------------------------------------------


def test_registry_lists_table_one():
    assert available_encoders()[:6] == list(TABLE_I)
    with pytest.raises(AopError, match="encoder 'no_such_net': not a registered encoder"):
        build_encoder("no_such_net", in_chans=1, crop_size=(2, 32, 32))


BIG = [pytest.param(name, marks=pytest.mark.slow) for name in TABLE_I if name != "resnet18"]


@pytest.mark.parametrize("name", ["resnet18", *BIG, "test_vit", "test_efficientnet"])
def test_every_encoder_runs_one_forward_pass(name):
    """Each encoder is built once (random init) and maps (N, C, Z, Y, X) to (N, Z, F, h, w)."""
    size = (1, 16, 16) if name == "cellpose_sam" else (2, 32, 32)
    if name == "cellpose_sam":
        pytest.importorskip("cellpose")
    torch.manual_seed(0)
    encoder = build_encoder(name, in_chans=3, crop_size=size).eval()
    with torch.inference_mode():
        maps = encoder(torch.randn(1, 3, *size))
    assert maps.shape[:3] == (1, size[0], encoder.num_features)
    assert torch.isfinite(maps).all()
    params = sum(p.numel() for p in encoder.parameters())
    if name in TIMM_PARAMS_M:
        assert params / 1e6 == pytest.approx(TIMM_PARAMS_M[name], abs=0.06)
    if name == "cellpose_sam":  # the SAM ViT-L image encoder, 305 M with Cellpose's readout
        assert maps.shape[1:] == (1, 256, 2, 2)
        assert 300e6 < params < 306e6
    del encoder, maps
    gc.collect()


def test_slices_are_encoded_independently():
    torch.manual_seed(0)
    encoder = build_encoder("test_resnet", in_chans=2, crop_size=(3, 32, 32)).eval()
    crops = torch.randn(2, 2, 3, 32, 32)
    with torch.inference_mode():
        maps = encoder(crops)
        second = encoder.forward_maps(crops[:, :, 1])
    torch.testing.assert_close(maps[:, 1], second)


# -- heads ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("head", ["slice", "volume"])
@pytest.mark.parametrize("depth", [1, 3])
def test_head_output_shapes_and_linear_layers(head, depth):
    module = build_head(head, num_features=40, num_slices=5, num_classes=4, depth=depth, width=24)
    out = module(torch.randn(3, 5, 40, 2, 2))
    assert out.shape == (3, 4)
    linear = [m for m in module.classifier if isinstance(m, torch.nn.Linear)]
    assert len(linear) == depth
    assert [m.out_features for m in linear] == [24] * (depth - 1) + [4]
    with pytest.raises(AopError, match="head 'other': unknown"):
        build_head("other", num_features=4, num_slices=1, num_classes=2)


# -- freezing -------------------------------------------------------------------------------------


def test_exactly_80_percent_of_the_encoder_is_frozen_from_the_input_side():
    torch.manual_seed(0)
    model = CropClassifier(
        "test_resnet", in_chans=2, crop_size=(2, 32, 32), num_classes=3, freeze_fraction=0.8
    )
    params = list(model.encoder.parameters())
    total = sum(p.numel() for p in params)
    target = int(np.floor(0.8 * total + 0.5))
    assert model.frozen_parameter_count() == target == model.plan.frozen
    # frozen tensors are a prefix of the parameter order (the input side)
    flags = [p.requires_grad for p in params]
    assert flags == sorted(flags)
    before = torch.cat([p.detach().flatten() for p in params]).clone()
    optimizer = model.configure_optimizers()
    crops, labels = easy_crops(4, size=(2, 32, 32))
    for _ in range(2):  # real training steps: the frozen prefix does not move
        optimizer.zero_grad()
        model.loss(model(torch.as_tensor(crops)), torch.as_tensor(labels)).backward()
        model.on_after_backward()
        optimizer.step()
    # a loss with a non-zero gradient for every scalar: exactly the other 20 % move
    optimizer.zero_grad()
    generator = torch.Generator().manual_seed(0)
    dense = sum((p * (torch.rand(p.shape, generator=generator) + 0.5)).sum() for p in params)
    dense.backward()
    model.on_after_backward()
    optimizer.step()
    after = torch.cat([p.detach().flatten() for p in params])
    changed = (after != before).numpy()
    assert not changed[:target].any()
    assert changed[target:].all()
    assert int(changed.sum()) == total - target
    assert all(p.requires_grad for p in model.head.parameters())


def test_freeze_plan_counts_scalars_not_tensors():
    net = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.Linear(10, 10))  # 110 + 110
    plan = freeze_plan(net, 0.8)
    assert plan.frozen == 176 and plan.tensors == ("0.weight", "0.bias") and plan.partial == (
        "1.weight", 66
    )
    assert freeze_plan(net, 0.0).frozen == 0 and freeze_plan(net, 1.0).partial is None


# -- weights --------------------------------------------------------------------------------------


def test_weights_file_written_here_loads_through_pretrained_cfg_overlay(tmp_path):
    import timm

    torch.manual_seed(1)
    source = timm.create_model("test_resnet", pretrained=False)  # ImageNet-shaped: 3 ch, 1000 cls
    path = tmp_path / "test_resnet_weights.pth"
    torch.save(source.state_dict(), path)
    assert check_pretrained_weights("test_resnet", path).path == path
    three = build_encoder("test_resnet", in_chans=3, crop_size=(2, 32, 32), pretrained=True,
                          weights=path)
    state = source.state_dict()
    for name, value in three.backbone.state_dict().items():
        torch.testing.assert_close(value, state[name], rtol=0, atol=0)
    # two channels: timm repeats the RGB filters cyclically and scales them by 3 / 2
    two = build_encoder("test_resnet", in_chans=2, crop_size=(2, 32, 32), pretrained=True,
                        weights=path)
    stem = next(n for n in state if state[n].ndim == 4)
    expected = state[stem][:, :2] * 3 / 2
    torch.testing.assert_close(two.backbone.state_dict()[stem], expected)
    random = build_encoder("test_resnet", in_chans=3, crop_size=(2, 32, 32))
    assert not torch.equal(random.backbone.state_dict()[stem], state[stem])


def test_missing_weights_file_says_which_file_to_put_where(tmp_path, monkeypatch):
    missing = tmp_path / "weights" / "resnet18.safetensors"
    with pytest.raises(AopError) as info:
        check_pretrained_weights("resnet18", missing)
    message = str(info.value)
    assert message == (
        f"encoder 'resnet18': pretrained weights not found: put the weights at {missing}"
    )
    with pytest.raises(AopError, match="pretrained weights not found: put the weights at"):
        build_encoder("resnet18", in_chans=1, crop_size=(2, 32, 32), pretrained=True,
                      weights=missing)
    # timm's own cache, empty here: the message names the hub id and the cache folder
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(AopError) as info:
        check_pretrained_weights("resnet18")
    assert "timm/resnet18.a1_in1k" in str(info.value) and str(tmp_path / "hub") in str(info.value)
    assert "\n" not in str(info.value)
    # CellposeSAM by name, in CELLPOSE_LOCAL_MODELS_PATH
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path / "cp"))
    where = f"put the CellposeSAM model file \\(cpsam\\) at {tmp_path}/cp/cpsam"
    with pytest.raises(AopError, match=where):
        check_pretrained_weights("cellpose_sam")
    # a full-pretraining training stops before it starts
    crops, labels = easy_crops(6, size=(2, 32, 32))
    config = ClassifierConfig(encoder="test_resnet", pretraining="full", weights=str(missing))
    with pytest.raises(AopError, match="test_resnet.*put the weights at"):
        train_classifier(config, crops, labels, out_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


# -- data -----------------------------------------------------------------------------------------


def test_stratified_split_puts_half_of_a_small_class_into_validation():
    labels = np.repeat([0, 1, 2], [100, 60, 16])
    train, val, test = stratified_split(labels, SplitConfig(val_fraction=0.2, test_fraction=0.1))
    assert len(np.intersect1d(train, val)) == len(np.intersect1d(train, test)) == 0
    assert sorted(np.concatenate([train, val, test]).tolist()) == list(range(len(labels)))
    per = {c: [int((labels[s] == c).sum()) for s in (train, val, test)] for c in range(3)}
    assert per == {0: [70, 20, 10], 1: [42, 12, 6], 2: [6, 8, 2]}
    # the paper's Core-Shell split: 48 train, 12 test, 300 validation of 360 cells
    labels = np.repeat([0, 1, 2], 120)
    train, val, test = stratified_split(
        labels, SplitConfig(val_fraction=300 / 360, test_fraction=12 / 360)
    )
    assert (len(train), len(val), len(test)) == (48, 300, 12)
    with pytest.raises(AopError, match="class 5 has 1 sample"):
        stratified_split(np.array([0, 0, 5]))


def test_augmentation_is_seeded_and_keeps_shape():
    crop = np.random.default_rng(0).normal(size=(2, 4, 16, 16)).astype(np.float32)
    a = [np.asarray(augmentation(seed=3)(crop)) for _ in range(2)]
    b = np.asarray(augmentation(seed=4)(crop))
    np.testing.assert_array_equal(a[0], a[1])
    assert a[0].shape == crop.shape and not np.array_equal(a[0], b)


def _orbit(crop: np.ndarray, z_flip: bool = False) -> list[np.ndarray]:
    """The images of ``crop (C, Z, Y, X)`` under the yx dihedral group (times the z flip), built
    with NumPy's rot90 and flips: quarter turns k = 0..3 of the plain and of the x-flipped crop."""
    out = []
    for zf in (False, True) if z_flip else (False,):
        base = crop[:, ::-1] if zf else crop
        for flipped in (base, base[..., ::-1]):
            out += [np.ascontiguousarray(np.rot90(flipped, k, axes=(2, 3))) for k in range(4)]
    return out


def _element(out: np.ndarray, orbit: list[np.ndarray], channel: int) -> int:
    """Index of the orbit element nearest to ``out`` in one channel."""
    return int(np.argmin([np.abs(out[channel] - g[channel]).sum() for g in orbit]))


@pytest.mark.parametrize(("z_flip", "count"), [(False, 8), (True, 16)])
def test_augmentation_draws_every_symmetry_equally_often_and_moves_the_mask_alike(z_flip, count):
    """Without intensity jitter every output is exactly one of the 8 (16 with the z flip)
    elements, the mask channel is the same element of the mask, and over 400 draws per element
    the counts fit a uniform distribution."""
    rng = np.random.default_rng(1)
    crop = np.zeros((2, 3, 6, 6), np.float32)
    crop[0] = rng.normal(size=(3, 6, 6))  # no symmetry: the 16 images are distinct
    crop[1, :2, 1:4, 2:5] = 1  # an asymmetric binary mask
    crop[1, 0, 1, 4] = 0
    orbit = _orbit(crop, z_flip)
    assert len({g.tobytes() for g in orbit}) == count
    augment = CropAugmentation(seed=3, z_flip=z_flip, scale=0, shift=0, noise=0)
    draws = 400 * count
    counts = np.zeros(count, int)
    for _ in range(draws):
        out = augment(crop)
        k = _element(out, orbit, channel=0)
        np.testing.assert_array_equal(out, orbit[k])  # both channels: the same element, exactly
        counts[k] += 1
    assert counts.sum() == draws and counts.min() > 0
    assert np.abs(counts - 400).max() < 4 * np.sqrt(400 * (1 - 1 / count))
    assert stats.chisquare(counts).pvalue > 1e-3
    assert crop[0].std() > 0.5 and crop[1].sum() == 17  # the input is left as it was


def test_augmentation_of_a_non_square_crop_keeps_its_shape():
    """y and x of different sizes: the four symmetries that keep the shape, equally often."""
    crop = np.random.default_rng(2).normal(size=(1, 2, 4, 6)).astype(np.float32)
    orbit = [g for g in _orbit(crop) if g.shape == crop.shape]
    assert len(orbit) == 4
    augment = CropAugmentation(seed=0, scale=0, shift=0, noise=0)
    counts = np.zeros(4, int)
    for _ in range(2000):
        out = augment(crop)
        k = _element(out, orbit, channel=0)
        np.testing.assert_array_equal(out, orbit[k])
        counts[k] += 1
    assert stats.chisquare(counts).pvalue > 1e-3


def test_intensity_jitter_changes_image_channels_only_and_relative_to_their_spread():
    """Mask channels get the symmetry only (exactly binary); an image channel gets a scale in
    [0.9, 1.1], a shift within 0.1 of its standard deviation, and noise of 0.05 of it."""
    rng = np.random.default_rng(4)
    crop = np.zeros((3, 2, 8, 8), np.float32)
    crop[0, :, 1:5, 2:7] = 1  # the mask of the mask preprocessing, channel 0: no symmetry
    crop[0, :, 1, 6] = 0
    crop[1] = 1000 + 300 * rng.normal(size=(2, 8, 8))  # raw 16-bit-like intensities
    crop[2] = rng.random((2, 8, 8))
    orbit = _orbit(crop)
    assert len({g[0].tobytes() for g in orbit}) == 8  # the mask tells the element
    sd = crop[1:].std(axis=(1, 2, 3))
    jitter = CropAugmentation(seed=5, mask_channels=[0])
    changed = 0
    for _ in range(300):
        out = jitter(crop)
        g = orbit[_element(out, orbit, channel=0)]
        np.testing.assert_array_equal(out[0], g[0])  # the mask: moved, never jittered
        assert set(np.unique(out[0]).tolist()) == {0.0, 1.0}
        changed += not np.array_equal(out[1:], g[1:])
    assert 0.8 * 300 < changed < 300  # each of three transforms with probability 1/2: 7/8
    # one transform at a time, always on, on the same symmetry element as the mask
    for name, value in (("scale", 0.1), ("shift", 0.1), ("noise", 0.05)):
        parts = {"scale": 0, "shift": 0, "noise": 0, name: value}
        augment = CropAugmentation(seed=6, mask_channels=[0], prob=1.0, **parts)
        for _ in range(50):
            out = augment(crop)
            g = orbit[_element(out, orbit, channel=0)]
            if name == "scale":
                factor = out[1:] / g[1:]
                assert np.allclose(factor, factor.flat[0], rtol=1e-5)
                assert 0.9 - 1e-6 <= factor.flat[0] <= 1.1 + 1e-6
            elif name == "shift":
                offset = (out[1:] - g[1:]).reshape(2, -1)
                ratio = offset[:, 0] / sd
                np.testing.assert_allclose(offset, offset[:, :1] * np.ones_like(offset), atol=2e-3)
                assert np.allclose(ratio, ratio[0], rtol=1e-3) and abs(ratio[0]) <= 0.1 + 1e-4
            else:
                residual = (out[1:] - g[1:]).reshape(2, -1).std(axis=1) / sd
                assert np.all(np.abs(residual - 0.05) < 0.02)
    # without a mask channel every channel is intensities: the mask stops being binary
    plain = CropAugmentation(seed=5, prob=1.0)
    assert len(np.unique(plain(crop)[0])) > 2


def test_balanced_sampler_draws_a_class_of_3_as_often_as_a_class_of_40():
    labels = np.repeat([0, 1], [40, 3])
    crops = np.zeros((43, 1, 2, 4, 4), np.float32)
    crops[:, 0, 0, 0, 0] = np.arange(43)  # which crop was drawn
    split = (np.arange(43), np.zeros(0, np.int64), np.zeros(0, np.int64))
    drawn = []
    for seed in (0, 0, 1):
        data = CropDataModule(crops, labels, split=split, batch_size=8, augment=False,
                              sampler="balanced", seed=seed)  # fmt: skip
        loader = data.train_dataloader()
        epochs = [torch.cat([b["label"] for b in loader]).numpy() for _ in range(50)]
        assert all(len(e) == 43 for e in epochs)  # the epoch keeps its length
        drawn.append(np.concatenate(epochs))
    np.testing.assert_array_equal(drawn[0], drawn[1])  # seeded
    assert not np.array_equal(drawn[0], drawn[2])
    share = drawn[0].mean()  # class 1's share of 2150 draws: 1/2, sd 0.011
    assert abs(share - 0.5) < 0.05
    # shuffle: every crop once per epoch, class 1 at its 3 of 43
    data = CropDataModule(crops, labels, split=split, batch_size=8, augment=False)
    order = torch.cat([b["crop"][:, 0, 0, 0, 0] for b in data.train_dataloader()]).numpy()
    assert sorted(order.tolist()) == list(range(43)) and order.tolist() != list(range(43))
    with pytest.raises(AopError, match="sampler: 'even' is not one of shuffle, balanced"):
        CropDataModule(crops, labels, split=split, sampler="even")
    with pytest.raises(AopError, match="mask_channel: 1 is not a channel of crops with 1"):
        CropDataModule(crops, labels, split=split, mask_channel=1)


def test_config_forbids_unknown_keys_and_encoders():
    with pytest.raises(ValueError, match="extra"):
        ClassifierConfig(encodr="resnet18")
    with pytest.raises(ValueError, match="not a registered encoder"):
        ClassifierConfig(encoder="resnet_nine")
    with pytest.raises(ValueError, match="pretraining"):
        ClassifierConfig(pretraining="imagenet")
    with pytest.raises(ValueError, match="objective"):
        ClassifierConfig(objective="f1")
    with pytest.raises(ValueError, match="sampler"):
        ClassifierConfig(sampler="oversample")
    defaults = ClassifierConfig()
    assert (defaults.objective, defaults.sampler, defaults.class_weights) == (
        "accuracy", "shuffle", None
    )
    assert defaults.augment and not defaults.augment_z_flip


def test_classification_metrics_against_hand_counts():
    m = classification_metrics([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], ["a", "b", "c"])
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_class"]["c"]["recall"] == pytest.approx(2 / 3)


def test_balanced_accuracy_metric_against_scikit_learn():
    """Mean recall over the classes present in the targets, over batches; a class predicted but
    never a target does not count (torchmetrics' macro accuracy counts it as recall 0)."""
    cases = [
        ([0, 0, 1, 1], [0, 1, 1, 1], 0.75),
        ([0, 0, 0, 1], [0, 2, 0, 1], (2 / 3 + 1) / 2),  # class 2 predicted, absent
        ([0, 0, 0, 0, 0, 0, 0, 0, 2, 2], [0] * 10, 0.5),  # class 1 absent from both
        ([2, 2, 2], [2, 0, 1], 1 / 3),
    ]
    for target, pred, expected in cases:
        metric = BalancedAccuracy(3)
        for half in (slice(0, 2), slice(2, None)):  # two batches
            metric.update(torch.tensor(pred[half]), torch.tensor(target[half]))
        value = float(metric.compute())
        reference = _sklearn_balanced_accuracy(target, pred)
        assert value == pytest.approx(reference, abs=1e-6) == pytest.approx(expected)
    macro = MulticlassAccuracy(3, average="macro")(torch.tensor([0, 2, 0, 1]),
                                                   torch.tensor([0, 0, 0, 1]))
    assert float(macro) == pytest.approx((2 / 3 + 1 + 0) / 3)  # not scikit-learn's 0.833
    with pytest.warns(UserWarning, match="called before the ``update``"):
        assert np.isnan(float(BalancedAccuracy(3).compute()))


def _sklearn_balanced_accuracy(target, pred) -> float:
    """scikit-learn's balanced accuracy, without its warning about predicted absent classes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(target, pred))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=40),
       st.integers(1, 5))  # fmt: skip
def test_balanced_accuracy_metric_matches_scikit_learn_on_any_predictions(pairs, batches):
    target, pred = (np.array(v) for v in zip(*pairs, strict=True))
    metric = BalancedAccuracy(5)
    for part in np.array_split(np.arange(len(target)), batches):
        metric.update(torch.as_tensor(pred[part]), torch.as_tensor(target[part]))
    reference = _sklearn_balanced_accuracy(target, pred)
    assert float(metric.compute()) == pytest.approx(reference, abs=1e-6)


# -- training -------------------------------------------------------------------------------------


class Record(Callback):
    """Epochs seen, the data module, the labels of every training batch, the logged validation
    scores of every epoch, and the final in-memory predictions on fixed crops."""

    def __init__(self, crops):
        self.crops = crops
        self.epochs: list[tuple[str, int]] = []
        self.final = None
        self.data = None
        self.drawn: list[int] = []
        self.scores: list[tuple[float, float]] = []

    def on_train_start(self, trainer, pl_module):
        self.data = trainer.datamodule

    def on_train_epoch_start(self, trainer, pl_module):
        self.epochs.append((pl_module.hparams.stage, trainer.current_epoch))

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.drawn += batch["label"].tolist()

    def on_validation_end(self, trainer, pl_module):
        metrics = trainer.callback_metrics
        self.scores.append((float(metrics["val_acc"]), float(metrics["val_bal_acc"])))

    def on_train_end(self, trainer, pl_module):
        self.final = predict_proba(pl_module, self.crops)


@pytest.fixture(scope="module")
def easy():
    return easy_crops(24, seed=0, size=(2, 32, 32))


@pytest.fixture(scope="module")
def trained(easy, tmp_path_factory):
    crops, labels = easy
    recorder = Record(crops[:8])
    # every slice of these crops draws the same disc: the z flip is one of their symmetries
    config = ClassifierConfig(
        encoder="test_resnet", head="slice", pretraining="none", lr=3e-3, max_epochs=10,
        patience=10, batch_size=12, seed=0, head_width=32, augment_z_flip=True,
    )
    out = tmp_path_factory.mktemp("train")
    result = train_classifier(
        config, crops, labels, out_dir=out, callbacks=[recorder],
        class_names=["small", "medium", "large"],
    )
    return result, recorder, out


def test_tiny_training_reaches_high_accuracy(trained, easy):
    result, recorder, out = trained
    assert result.split_sizes == {"train": 42, "val": 15, "test": 15, "pseudo": 0}
    assert result.val_accuracy >= 0.9
    assert result.test["accuracy"] >= 0.9
    assert set(result.test["per_class"]) == {"small", "medium", "large"}
    assert np.sum(result.test["confusion_matrix"]) == 15
    assert [s.stage for s in result.stages] == ["manual"]
    assert result.stages[0].frozen_parameters == 0
    assert result.checkpoint_path == out / "manual" / "best.ckpt"
    assert result.checkpoint_path.is_file()
    assert recorder.epochs[0] == ("manual", 0)
    # the mask preprocessing's channel 0 is left out of the intensity jitter; shuffled epochs
    assert recorder.data.mask_channel == 0 and recorder.data.sampler == "shuffle"
    assert len(recorder.drawn) == 42 * len(recorder.epochs)
    # the best epoch (by val_acc, the default objective) predicts the validation split again
    stage = result.stages[0]
    assert stage.monitor == "val_acc"
    assert result.val_accuracy == pytest.approx(stage.best_score, abs=1e-6)
    assert result.val_accuracy == pytest.approx(max(acc for acc, _ in recorder.scores), abs=1e-6)
    assert result.val_score == result.val_accuracy
    assert len(result.val_index) == len(result.val_pred) == 15
    assert result.val_proba.shape == (15, 3)
    np.testing.assert_array_equal(result.val_pred, result.val_proba.argmax(1))
    truth = easy[1][result.val_index]
    assert result.val_accuracy == pytest.approx(np.mean(result.val_pred == truth))
    assert result.val_balanced_accuracy == pytest.approx(
        _sklearn_balanced_accuracy(truth, result.val_pred)
    )
    split = np.concatenate([result.train_index, result.val_index, result.test_index])
    assert sorted(split.tolist()) == list(range(72))


class Script(Callback):
    """Replaces the network's weights by ``states[epoch]`` as each validation starts, so that
    every epoch validates (and checkpoints) a network whose predictions the test knows."""

    def __init__(self, states):
        self.states = states

    def on_validation_start(self, trainer, pl_module):
        pl_module.load_state_dict(self.states[trainer.current_epoch])


def _output_bias(state, head_bias):
    """A copy of a CropClassifier state with ``head_bias`` added to the output layer's bias."""
    state = {k: v.clone() for k, v in state.items()}
    name = [k for k in state if k.startswith("head.") and k.endswith(".bias")][-1]
    state[name] += torch.as_tensor(head_bias, dtype=state[name].dtype)
    return state


@pytest.mark.parametrize("objective", ["accuracy", "balanced_accuracy"])
def test_objective_picks_the_epoch_with_its_best_score(trained, easy, tmp_path, objective):
    """Three validated networks, built from the trained one by moving its output biases, on a
    validation split of 8 small and 2 large crops (no medium one):

    - epoch 0: everything "small": accuracy 0.8, balanced accuracy 0.5;
    - epoch 1: "large" for the 2 large crops and 6 of the 8 small ones: accuracy 0.4, balanced
      accuracy (2/8 + 1) / 2 = 0.625;
    - epoch 2: everything "medium", a class absent from validation: 0 and 0.

    The accuracy objective ends with epoch 0, the balanced one with epoch 1; both scores of the
    result are that epoch's, and the logged val_bal_acc of every epoch is scikit-learn's."""
    result, _, _ = trained
    crops, labels = easy
    base = torch.load(result.checkpoint_path, map_location="cpu", weights_only=False)
    base = base["state_dict"]
    small, large = np.flatnonzero(labels == 0), np.flatnonzero(labels == 2)
    val = np.sort(np.concatenate([small[:8], large[:2]]))
    train = np.setdiff1d(np.arange(len(labels)), np.concatenate([val, small[8:10]]))
    split = (train, val, small[8:10])
    model = CropClassifier.load_from_checkpoint(result.checkpoint_path, map_location="cpu")
    logits = np.log(predict_proba(model, crops[val]))
    # epoch 1: a bias on "large" that moves the 6 small crops most like large ones over
    margin = logits[:, 2] - logits[:, :2].max(axis=1)
    order = np.sort(margin[labels[val] == 0])
    assert (margin[labels[val] == 2] > order[-1]).all()  # the large ones stay large
    shift = float(-(order[1] + order[2]) / 2)
    states = [_output_bias(base, [100.0, 0, 0]), _output_bias(base, [0, 0, shift]),
              _output_bias(base, [0, 100.0, 0])]  # fmt: skip
    expected = [np.zeros(10, int), np.where(margin + shift > 0, 2, 0), np.ones(10, int)]
    truth = labels[val]
    scores = [(np.mean(p == truth), _sklearn_balanced_accuracy(truth, p)) for p in expected]
    assert scores == [(0.8, 0.5), (0.4, 0.625), (0.0, 0.0)]
    recorder = Record(crops[:1])
    config = ClassifierConfig(
        encoder="test_resnet", head="slice", pretraining="none", lr=3e-3, max_epochs=3,
        patience=3, batch_size=12, seed=0, head_width=32, objective=objective,
    )
    out = train_classifier(config, crops, labels, out_dir=tmp_path, split=split,
                           callbacks=[Script(states), recorder],
                           class_names=["small", "medium", "large"])  # fmt: skip
    assert [e for _, e in recorder.epochs] == [0, 1, 2]
    np.testing.assert_allclose(recorder.scores, scores, atol=1e-6)  # logged, every epoch
    best = 0 if objective == "accuracy" else 1
    np.testing.assert_array_equal(out.val_index, val)
    np.testing.assert_array_equal(out.val_pred, expected[best])
    assert (out.val_accuracy, out.val_balanced_accuracy) == pytest.approx(scores[best])
    stage = out.stages[-1]
    assert stage.monitor == {"accuracy": "val_acc", "balanced_accuracy": "val_bal_acc"}[objective]
    assert stage.best_score == pytest.approx(scores[best][best], abs=1e-6)
    assert out.val_score == pytest.approx(scores[best][best])
    assert out.checkpoint_path == tmp_path / "manual" / "best.ckpt"


def test_a_first_annotation_round_trains_with_balanced_draws(tmp_path):
    """48 labels, one class with 3: the split leaves that class 1 training crop of 28 and 2
    validation crops; the balanced sampler draws the one crop a third of the time."""
    crops, labels = easy_crops(24, seed=3, size=(2, 32, 32))
    keep = np.concatenate([np.flatnonzero(labels == 0)[:21], np.flatnonzero(labels == 1)[:24],
                           np.flatnonzero(labels == 2)[:3]])  # fmt: skip
    crops, labels = crops[keep], np.repeat([0, 1, 2], [21, 24, 3])
    recorder = Record(crops[:1])
    config = ClassifierConfig(
        encoder="test_resnet", head="slice", max_epochs=2, patience=2, batch_size=16,
        head_width=16, objective="balanced_accuracy", sampler="balanced",
    )
    result = train_classifier(config, crops, labels, out_dir=tmp_path, callbacks=[recorder])
    assert result.split_sizes == {"train": 28, "val": 11, "test": 9, "pseudo": 0}
    assert np.bincount(labels[result.train_index]).tolist() == [13, 14, 1]
    assert recorder.data.sampler == "balanced"
    drawn = np.bincount(recorder.drawn, minlength=3)
    assert drawn.sum() == 2 * 28
    assert abs(drawn[2] - 56 / 3) < 4 * np.sqrt(56 * (1 / 3) * (2 / 3))  # 1 crop, 1/3 of draws
    assert result.val_balanced_accuracy == pytest.approx(
        _sklearn_balanced_accuracy(labels[result.val_index], result.val_pred)
    )
    assert result.val_score == result.val_balanced_accuracy


def test_checkpoint_reload_gives_the_same_predictions(trained):
    result, recorder, out = trained
    last = CropClassifier.load_from_checkpoint(out / "manual" / "last.ckpt", map_location="cpu")
    np.testing.assert_allclose(predict_proba(last, recorder.crops), recorder.final, atol=1e-6)
    best = CropClassifier.load_from_checkpoint(result.checkpoint_path, map_location="cpu")
    assert best.hparams.class_names == ["small", "medium", "large"]
    assert best.hparams.encoder == "test_resnet" and "weights" not in best.hparams


def test_semi_trains_twice_then_freezes_80_percent(easy, tmp_path):
    crops, labels = easy
    rng = np.random.default_rng(5)
    pseudo_crops, pseudo_labels = easy_crops(6, seed=9, size=(2, 32, 32))
    pseudo_labels = np.where(rng.random(len(pseudo_labels)) < 0.2, 0, pseudo_labels)  # noisy
    recorder = Record(crops[:4])
    config = ClassifierConfig(
        encoder="test_resnet", head="slice", pretraining="semi", max_epochs=2, patience=2,
        batch_size=16, lr=3e-3, head_width=32,
    )
    result = train_classifier(
        config, crops, labels, out_dir=tmp_path, pseudo=(pseudo_crops, pseudo_labels),
        callbacks=[recorder],
    )
    assert [s.stage for s in result.stages] == ["semi", "manual"]
    assert [s.n_train for s in result.stages] == [42 + 18, 42]
    assert recorder.epochs == [("semi", 0), ("semi", 1), ("manual", 0), ("manual", 1)]
    semi, final = result.stages
    assert semi.frozen_parameters == 0
    assert final.frozen_parameters == int(np.floor(0.8 * final.encoder_parameters + 0.5))
    # the second training started from the first one's best weights: the frozen 80 % equal them
    first = torch.load(semi.checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    second = torch.load(final.checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    names = [n for n in first if n.startswith("encoder.") and first[n].is_floating_point()]
    flat = lambda s: torch.cat([s[n].flatten() for n in names if "running" not in n  # noqa: E731
                                and "num_batches" not in n])
    a, b = flat(first), flat(second)
    assert a.numel() == final.encoder_parameters
    assert torch.equal(a[: final.frozen_parameters], b[: final.frozen_parameters])
    assert not torch.equal(a[final.frozen_parameters :], b[final.frozen_parameters :])
    with pytest.raises(AopError, match="needs pseudo-labelled crops"):
        train_classifier(config, crops, labels, out_dir=tmp_path / "x")


def test_full_pretraining_resumes_from_its_checkpoint(easy, tmp_path):
    """`full` starts from a weights file written here; a resumed run continues at its epoch."""
    import timm

    crops, labels = easy
    torch.manual_seed(2)
    path = tmp_path / "w.pth"
    torch.save(timm.create_model("test_resnet").state_dict(), path)
    config = ClassifierConfig(encoder="test_resnet", head="volume", pretraining="full",
                              weights=str(path), max_epochs=1, patience=5, batch_size=24,
                              head_width=16)
    first = train_classifier(config, crops, labels, out_dir=tmp_path / "run")
    assert first.stages[0].epochs == 1 and first.stages[0].frozen_parameters > 0
    recorder = Record(crops[:2])
    resumed = train_classifier(
        config.model_copy(update={"max_epochs": 3}), crops, labels, out_dir=tmp_path / "run",
        resume_from=tmp_path / "run" / "manual" / "last.ckpt", callbacks=[recorder],
    )
    assert recorder.epochs == [("manual", 1), ("manual", 2)]
    assert resumed.stages[0].epochs == 3
    with pytest.raises(AopError, match="checkpoint to resume from not found"):
        train_classifier(config, crops, labels, out_dir=tmp_path / "r2",
                         resume_from=tmp_path / "nope.ckpt")


def test_a_training_resumed_elsewhere_ends_with_the_interrupted_runs_best_epoch(easy, tmp_path):
    """The restored ModelCheckpoint names the interrupted run's best file; when that folder is
    gone (another node), the best checkpoint saved beside the resume state is the result."""
    crops, labels = easy
    config = ClassifierConfig(encoder="test_resnet", head="slice", max_epochs=2, patience=5,
                              batch_size=24, head_width=8)
    first = train_classifier(config, crops, labels, out_dir=tmp_path / "run")
    saved = tmp_path / "tune_checkpoint"
    saved.mkdir()
    shutil.copy(tmp_path / "run" / "manual" / "last.ckpt", saved / "last.ckpt")
    shutil.copy(first.checkpoint_path, saved / "best_epoch.ckpt")
    shutil.rmtree(tmp_path / "run")
    with pytest.raises(AopError, match="best checkpoint .* is gone"):
        train_classifier(config, crops, labels, out_dir=tmp_path / "other",
                         resume_from=saved / "last.ckpt")
    resumed = train_classifier(  # no epoch left: the interrupted run's best is the result
        config, crops, labels, out_dir=tmp_path / "elsewhere", resume_from=saved / "last.ckpt",
        resume_best=(saved / "best_epoch.ckpt", first.val_accuracy),
    )
    assert resumed.checkpoint_path == saved / "best_epoch.ckpt"
    assert resumed.val_accuracy == pytest.approx(first.val_accuracy)
    assert resumed.test == first.test
    longer = train_classifier(  # two more epochs: the better of both runs' bests
        config.model_copy(update={"max_epochs": 4}), crops, labels, out_dir=tmp_path / "more",
        resume_from=saved / "last.ckpt",
        resume_best=(saved / "best_epoch.ckpt", first.val_accuracy),
    )
    assert longer.val_accuracy >= first.val_accuracy
    own = longer.checkpoint_path.parent == tmp_path / "more" / "manual"
    assert own == (longer.val_accuracy > first.val_accuracy)


def test_inference_speed_at_batch_1_and_32():
    speed = inference_speed("test_resnet", in_chans=2, crop_size=(2, 32, 32), repeats=2)
    assert set(speed["instances_per_s"]) == {1, 32}
    assert all(v > 0 for v in speed["instances_per_s"].values())
    assert speed["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
