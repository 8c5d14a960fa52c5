"""The classifier: every encoder once, heads, exact freezing, weights, training, semi, resume."""

from __future__ import annotations

import gc
import shutil

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from aop.classification import (
    TABLE_I,
    CropClassifier,
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
from aop.classification.inference import inference_speed
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
    """Two-channel crops of three classes: a centred disc of radius 3, 8 or 13 px and brightness
    0.4, 0.7 or 1.0 in a noisy image channel, and its binary mask in the second channel (the
    ``mask`` preprocessing)."""
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
        crops[i, 0] = rng.normal(0.1, 0.1, size=(z, y, x)) + disc * brightness
        crops[i, 1] = disc
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


def test_config_forbids_unknown_keys_and_encoders():
    with pytest.raises(ValueError, match="extra"):
        ClassifierConfig(encodr="resnet18")
    with pytest.raises(ValueError, match="not a registered encoder"):
        ClassifierConfig(encoder="resnet_nine")
    with pytest.raises(ValueError, match="pretraining"):
        ClassifierConfig(pretraining="imagenet")


def test_classification_metrics_against_hand_counts():
    m = classification_metrics([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], ["a", "b", "c"])
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert m["per_class"]["c"]["recall"] == pytest.approx(2 / 3)


# -- training -------------------------------------------------------------------------------------


class Record(Callback):
    """Epochs seen and the final in-memory predictions on fixed crops."""

    def __init__(self, crops):
        self.crops = crops
        self.epochs: list[tuple[str, int]] = []
        self.final = None

    def on_train_epoch_start(self, trainer, pl_module):
        self.epochs.append((pl_module.hparams.stage, trainer.current_epoch))

    def on_train_end(self, trainer, pl_module):
        self.final = predict_proba(pl_module, self.crops)


@pytest.fixture(scope="module")
def easy():
    return easy_crops(24, seed=0, size=(2, 32, 32))


@pytest.fixture(scope="module")
def trained(easy, tmp_path_factory):
    crops, labels = easy
    recorder = Record(crops[:8])
    config = ClassifierConfig(
        encoder="test_resnet", head="slice", pretraining="none", lr=3e-3, max_epochs=10,
        patience=10, batch_size=12, seed=0, head_width=32,
    )
    out = tmp_path_factory.mktemp("train")
    result = train_classifier(
        config, crops, labels, out_dir=out, callbacks=[recorder],
        class_names=["small", "medium", "large"],
    )
    return result, recorder, out


def test_tiny_training_reaches_high_accuracy(trained):
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
