"""aop.adapt: CycleGAN training, resume, tiled translation, gap measures, aop adapt."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from aop.adapt.config import AdaptSettings
from aop.adapt.data import UnpairedCrops
from aop.adapt.gap import (
    collapse_warning,
    density_warning,
    domain_classifier_accuracy,
    foreground_fraction,
    intensity_distance,
    label_correlation,
    spectrum_distance,
)
from aop.adapt.model import CycleGAN, label_loss
from aop.adapt.train import train_cyclegan
from aop.adapt.translate import translate_volume
from aop.cli import app
from aop.io import DatasetInfo, load_dataset, write_dataset, write_volume

SPACING = (2.0, 1.0, 1.0)
TINY = {"ngf": 4, "ndf": 4, "n_blocks": 1, "d_layers": 2, "pool_size": 2, "batch_size": 2}
TINY_CLI = [f"--setting={k}={v}" for k, v in TINY.items()]
QUICK = {"steps": 80, "n_train": 256, "n_test": 128, "seed": 1}


@pytest.fixture(autouse=True, scope="module")
def _threads():
    torch.set_num_threads(1)  # tiny networks: a second thread only adds synchronisation


def _params(module: CycleGAN) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _volumes(seed: int, n: int, shape=(12, 32, 32)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, size=(1, *shape)).astype(np.float32) for _ in range(n)]


@pytest.mark.parametrize(
    ("mode", "patch"), [("2d", (16, 16)), ("3d", (8, 16, 16))], ids=["2d", "3d"]
)
def test_one_training_step_moves_every_network(tmp_path, mode, patch):
    settings = AdaptSettings(
        mode=mode, patch=patch, epochs=1, epochs_decay=0, steps_per_epoch=1, lambda_label=1.0,
        **TINY,
    )  # fmt: skip
    L.seed_everything(settings.seed, verbose=False)
    before = _params(CycleGAN(settings.model_dump(mode="json")))
    synthetic = _volumes(0, 2)
    masks = [v[0] > 0.5 for v in synthetic]  # the label loss runs too
    module = train_cyclegan(
        synthetic, _volumes(1, 1), settings, tmp_path, progress=False, masks=masks
    )
    assert module.trainer.logged_metrics["loss_label_epoch"] > 0
    after = _params(module)
    for prefix in ("generator_ab", "generator_ba", "discriminator_a", "discriminator_b"):
        changed = [
            not torch.equal(before[k], after[k])
            for k in before
            if k.startswith(prefix) and k.endswith("weight")
        ]
        assert changed and all(changed), prefix
    width = 3 if mode == "2d" else 1  # 2D: a slice and one neighbour on each side
    x = torch.zeros(1, width, *patch)
    assert module.generator_ab(x).shape == x.shape
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.parametrize("augment", ["flip", "dihedral"])
@pytest.mark.parametrize(("mode", "patch"), [("2d", (16, 16)), ("3d", (8, 16, 16))])
def test_label_masks_are_cut_like_the_synthetic_crops(mode, patch, augment):
    settings = AdaptSettings(mode=mode, patch=patch, steps_per_epoch=6, context=1,
                             augment=augment)  # fmt: skip
    synthetic = _volumes(2, 2)
    masks = [v > 0.2 for v in synthetic]
    crops = UnpairedCrops(synthetic, _volumes(3, 1), settings, masks)
    plain = UnpairedCrops(synthetic, _volumes(3, 1), settings)
    for index in range(len(crops)):
        image, real, mask = crops[index]
        assert torch.equal(mask.bool(), image > 0.2) and mask.shape == image.shape
        assert torch.equal(image, plain[index][0]) and torch.equal(real, plain[index][1])
    adapted = torch.stack([crops[i][2] for i in range(4)]).float() * 2 - 1  # the mask: corr 1
    assert float(label_loss(adapted, adapted > 0, 0.6)) == 0.0
    assert float(label_loss(-adapted, adapted > 0, 0.6)) == pytest.approx(1.6)


@pytest.mark.parametrize(("augment", "count"), [("flip", 2), ("dihedral", 8)])
def test_crop_augmentation_draws_the_symmetries_of_the_yx_plane(augment, count):
    """A real volume whose one crop position is fixed (volume = patch) comes back in exactly the
    2 (x flips) or 8 (yx dihedral group) orientations of that crop."""
    real = np.arange(4 * 16 * 16, dtype=np.float32).reshape(1, 4, 16, 16)
    settings = AdaptSettings(mode="3d", patch=(4, 16, 16), steps_per_epoch=200, augment=augment)
    crops = UnpairedCrops(_volumes(2, 1, (4, 16, 16)), [real], settings)
    seen = {crops[i][1].numpy().tobytes() for i in range(len(crops))}
    base = real[0]
    group = {np.ascontiguousarray(np.rot90(f, k, axes=(-2, -1))).tobytes()
             for f in (base, base[..., ::-1]) for k in range(4)}  # fmt: skip
    assert len(seen) == count and seen <= group


class _Record(L.Callback):
    def __init__(self):
        self.values = []

    def on_train_epoch_end(self, trainer, module):
        self.values.append(float(trainer.callback_metrics["label_corr_epoch"]))


def _expected_stop(values: list[float], drop: float, patience: int = 2) -> tuple[int, int] | None:
    """(stop epoch, best epoch) of the guard's rule on a label_corr history, 1-based."""
    best, best_epoch, low = -np.inf, 0, 0
    for epoch, value in enumerate(values, start=1):
        if value > best:
            best, best_epoch, low = value, epoch, 0
            continue
        low = low + 1 if value < best - drop else 0
        if low >= patience:
            return epoch, best_epoch
    return None


def test_collapse_guard_stops_and_returns_the_best_networks(tmp_path, nuclei_volumes):
    from aop.adapt.data import normalize

    plain = AdaptSettings(patch=(16, 16), epochs=6, epochs_decay=0, steps_per_epoch=3,
                          collapse_drop=None, checkpoint_every=1, **TINY)  # fmt: skip
    synthetic = [normalize(v[None])[0] for v in nuclei_volumes]
    masks = [v > np.percentile(v, 75) for v in nuclei_volumes]
    real = synthetic[::-1]
    record = _Record()
    full = train_cyclegan(synthetic, real, plain, tmp_path / "plain", progress=False,
                          masks=masks, callbacks=[record])  # fmt: skip
    assert full.collapse is None and len(record.values) == 6  # without the guard: all epochs
    settings = plain.model_copy(update={"collapse_drop": 0.001})
    expected = _expected_stop(record.values, 0.001)
    assert expected is not None and expected[0] < 6  # the premise (seeded, deterministic)
    stop, best = expected
    again = _Record()
    module = train_cyclegan(synthetic, real, settings, tmp_path / "guarded", progress=False,
                            masks=masks, callbacks=[again])  # fmt: skip
    assert again.values == pytest.approx(record.values[:stop], abs=1e-6)  # then it stopped
    checkpoints = tmp_path / "guarded" / "checkpoints"
    marker = json.loads((checkpoints / "collapsed.json").read_text())
    assert module.collapse == marker
    assert marker["epoch"] == stop and marker["best_epoch"] == best
    assert marker["best_label_corr"] == pytest.approx(max(record.values[:stop]), abs=1e-4)
    saved = torch.load(checkpoints / "best.ckpt", weights_only=False)
    assert saved["epoch"] + 1 == best
    ours = module.state_dict()
    assert all(torch.equal(v, ours[k]) for k, v in saved["state_dict"].items())
    assert not all(torch.equal(v, ours[k]) for k, v in full.state_dict().items())
    # a resume finds the training finished and returns the same best networks
    third = _Record()
    resumed = train_cyclegan(synthetic, real, settings, tmp_path / "guarded", progress=False,
                             masks=masks, callbacks=[third])  # fmt: skip
    assert third.values == [] and resumed.collapse == marker
    assert all(torch.equal(v, ours[k]) for k, v in resumed.state_dict().items())
    # with the guard turned off, a resume trains on from the stop to the last epoch
    fourth = _Record()
    rest = train_cyclegan(synthetic, real, plain, tmp_path / "guarded", progress=False,
                          masks=masks, callbacks=[fourth])  # fmt: skip
    assert rest.collapse is None and len(fourth.values) == 6 - stop


def test_collapse_guard_state_survives_an_interruption(tmp_path, nuclei_volumes):
    """Interrupted after epoch 1 and resumed, the guard remembers epoch 1's best."""
    from aop.adapt.data import normalize

    settings = AdaptSettings(patch=(16, 16), epochs=2, epochs_decay=0, steps_per_epoch=2,
                             checkpoint_every=1, **TINY)  # fmt: skip
    synthetic = [normalize(v[None])[0] for v in nuclei_volumes]
    masks = [v > np.percentile(v, 75) for v in nuclei_volumes]
    with pytest.raises(RuntimeError, match="interrupted"):
        train_cyclegan(synthetic, synthetic[::-1], settings, tmp_path, progress=False,
                       masks=masks, callbacks=[_Interrupt()])  # fmt: skip
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["callbacks"]
    guard = next(v for k, v in state.items() if "CollapseGuard" in k)
    assert guard["best_epoch"] == 1 and np.isfinite(guard["best_value"])


class _Interrupt(L.Callback):
    def on_train_epoch_end(self, trainer, module):
        if trainer.current_epoch == 0:
            raise RuntimeError("interrupted")


def test_resume_from_checkpoint_equals_uninterrupted_training(tmp_path):
    settings = AdaptSettings(
        patch=(16, 16), epochs=1, epochs_decay=1, steps_per_epoch=2, checkpoint_every=1, **TINY
    )
    synthetic, real = _volumes(2, 2), _volumes(3, 1)
    straight = _params(
        train_cyclegan(synthetic, real, settings, tmp_path / "a", progress=False)
    )
    with pytest.raises(RuntimeError, match="interrupted"):
        train_cyclegan(
            synthetic, real, settings, tmp_path / "b", progress=False, callbacks=[_Interrupt()]
        )
    saved = torch.load(tmp_path / "b/checkpoints/last.ckpt", weights_only=False)
    assert saved["epoch"] == 0 and len(saved["image_pools"][0]["images"]) == 2
    resumed = _params(train_cyclegan(synthetic, real, settings, tmp_path / "b", progress=False))
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], msg=key)


@pytest.mark.parametrize(
    ("mode", "patch", "shape"),
    [("2d", (16, 16), (5, 32, 48)), ("3d", (8, 16, 16), (16, 32, 32))],
    ids=["2d", "3d"],
)
def test_tiled_translation_equals_translation_of_each_tile(mode, patch, shape):
    settings = AdaptSettings(mode=mode, patch=patch, **TINY)
    torch.manual_seed(0)
    module = CycleGAN(settings.model_dump(mode="json")).eval()
    volume = np.random.default_rng(0).uniform(-1, 1, (1, *shape)).astype(np.float32)
    tiled = translate_volume(module, volume, overlap=0.0, mode="constant", device="cpu")
    assert tiled.shape == volume.shape
    from aop.adapt.data import context_stack

    grid = [range(0, s, p) for s, p in zip(shape[-len(patch) :], patch, strict=True)]
    with torch.no_grad():
        for corner in np.stack(np.meshgrid(*grid, indexing="ij"), -1).reshape(-1, len(patch)):
            window = tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True))
            if mode == "3d":
                tile = torch.from_numpy(volume[(slice(None), *window)][None].copy())
                expected = module.generator_ab(tile)[0].numpy()
                got = tiled[(slice(None), *window)]
            else:  # every slice of the tile, with its context slices as channels
                stack = context_stack(volume, 1)[(slice(None), slice(None), *window)]
                expected = module.generator_ab(torch.from_numpy(stack.copy()))[:, [1]].numpy()
                expected = expected.swapaxes(0, 1)
                got = tiled[(slice(None), slice(None), *window)]
            np.testing.assert_allclose(got, expected, atol=1e-5)
    # with overlapping Gaussian-blended tiles, a volume of one tile is the whole-volume output
    single = volume[..., : patch[-2], : patch[-1]] if mode == "2d" else volume[:, :8, :16, :16]
    blended = translate_volume(module, single, device="cpu")
    np.testing.assert_allclose(
        blended, translate_volume(module, single, overlap=0.0, device="cpu"), atol=1e-5
    )


# --------------------------------------------------------------------------------------------------
# Gap measures with known answers
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nuclei_volumes():
    from aop.synth import simulate

    return [simulate((12, 40, 40), SPACING, seed=s, density=0.3)[0] for s in range(2)]


def test_domain_classifier_identical_sets_near_chance(nuclei_volumes):
    accuracy = domain_classifier_accuracy(nuclei_volumes, nuclei_volumes, **QUICK)
    assert 0.38 <= accuracy <= 0.62, accuracy


def test_domain_classifier_shifted_copy_near_one(nuclei_volumes):
    shifted = [v + 0.5 * (v.max() - v.min()) for v in nuclei_volumes]
    joint = domain_classifier_accuracy(nuclei_volumes, shifted, normalize="joint", **QUICK)
    assert joint >= 0.95, joint
    # each volume scaled by its own percentiles: an offset is no gap
    own = domain_classifier_accuracy(nuclei_volumes, shifted, **QUICK)
    assert 0.35 <= own <= 0.65, own


def test_intensity_and_spectrum_distances(nuclei_volumes):
    from scipy.ndimage import gaussian_filter

    assert intensity_distance(nuclei_volumes, nuclei_volumes) == 0.0
    assert spectrum_distance(nuclei_volumes, nuclei_volumes) == 0.0
    shifted = [v + 100 for v in nuclei_volumes]
    assert intensity_distance(nuclei_volumes, shifted) < 1e-3  # per-volume scaling removes it
    assert intensity_distance(nuclei_volumes, shifted, normalize="joint") > 0.2
    blurred = [gaussian_filter(v, 2.0) for v in nuclei_volumes]
    assert spectrum_distance(nuclei_volumes, blurred) > 0.3  # decades lost at high frequency
    noisier = [v + np.random.default_rng(0).normal(0, 30, v.shape) for v in nuclei_volumes]
    assert spectrum_distance(nuclei_volumes, noisier) > 0.2


def test_foreground_fraction_reads_the_labelled_share():
    from stardist.data import test_image_nuclei_3d

    from aop.synth import simulate

    image, labels = test_image_nuclei_3d(return_mask=True)
    assert abs(foreground_fraction([image]) - (np.asarray(labels) > 0).mean()) < 0.03
    for density in (0.1, 0.3):
        image, labels = simulate((12, 40, 40), SPACING, seed=3, density=density)
        assert abs(foreground_fraction([image]) - (labels > 0).mean()) < 0.03, density
    assert foreground_fraction([np.zeros((4, 8, 8))]) == 0.0


def test_label_correlation_and_collapse_warning(nuclei_volumes):
    from stardist.data import test_image_nuclei_3d

    image, labels = test_image_nuclei_3d(return_mask=True)
    assert 0.6 < label_correlation([image], [labels]) < 0.72  # a real volume and its annotation
    masks = [v > np.percentile(v, 80) for v in nuclei_volumes]
    assert label_correlation(nuclei_volumes, masks) > 0.5
    inverted = [-v for v in nuclei_volumes]
    assert label_correlation(inverted, masks) == pytest.approx(-label_correlation(nuclei_volumes,
                                                                                  masks))
    assert collapse_warning(0.65) is None
    line = collapse_warning(0.09)
    assert line is not None and "correlate only 0.09" in line and "label_corr" in line


def test_density_warning_names_both_shares():
    assert density_warning(0.30, 0.38) is None
    line = density_warning(0.12, 0.38)
    assert line is not None and "12% foreground" in line and "about 38%" in line
    assert "paints nuclei" in line and "density with overlap" in line and "\n" not in line
    assert "erases benchmark nuclei" in (density_warning(0.5, 0.2) or "")


# --------------------------------------------------------------------------------------------------
# aop adapt
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A 2-volume synthetic benchmark, and a folder with one unlabelled "real" uint16 volume of
    another look (dim nuclei on a bright background, larger voxels in x and y)."""
    from aop.synth import simulate

    root = tmp_path_factory.mktemp("adapt")
    volumes = [(f"v{i}", *simulate((12, 40, 40), SPACING, seed=i, density=0.3)) for i in range(2)]
    bench = write_dataset(root / "bench", volumes, DatasetInfo("bench", SPACING))
    (root / "real").mkdir()
    real, _ = simulate((12, 32, 32), (2.0, 1.25, 1.25), seed=9, background=150.0, intensity=100.0,
                       texture=0.8, gaussian_noise=10.0)  # fmt: skip
    write_volume(root / "real" / "nuclei.tif", real.astype(np.uint16), (2.0, 1.25, 1.25))
    return root, bench, root / "real"


@pytest.fixture(scope="module")
def adapted_run(tiny_data):
    root, bench, real = tiny_data
    out = root / "adapted"
    args = ["adapt", "--synthetic", str(bench), "--real", str(real), "--out", str(out),
            "--patch", "16,16", "--epochs", "1", "--epochs-decay", "1", "--steps-per-epoch", "2",
            "--setting", "panel_every=1", *TINY_CLI, "--gap-steps", "20", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return out, result.output


def test_aop_adapt_writes_adapted_benchmark_with_same_labels(tiny_data, adapted_run):
    _, bench, real = tiny_data
    out, output = adapted_run
    source, adapted = load_dataset(bench), load_dataset(out, require_labels=True)
    assert adapted.names == source.names
    for name in source.names:
        np.testing.assert_array_equal(adapted.labels(name), source.labels(name))
        image = adapted.image(name)
        assert image.shape == source.image(name).shape and image.dtype == np.float32
        assert not np.allclose(image, source.image(name))
    info = yaml.safe_load((out / "dataset.yaml").read_text())
    provenance = info["provenance"]
    assert provenance["generator"] == "aop.adapt" and info["voxel_size"] == list(SPACING)
    assert provenance["settings"]["ngf"] == 4 and provenance["settings"]["lambda_cycle"] == 10.0
    assert provenance["real_volumes"] == [str(real / "nuclei.tif")]
    assert provenance["real_resampling"] == [1.0, 1.25, 1.25]  # to the benchmark's voxel size
    assert provenance["synthetic_provenance"] == {}
    lo, hi = provenance["real_intensity_range"]  # adapted images are in the real data's units
    from scipy.ndimage import zoom

    from aop.io import read_volume

    volume = read_volume(real / "nuclei.tif")[0].astype(np.float32)
    resampled = zoom(volume, (1, 1.25, 1.25), order=1)
    np.testing.assert_allclose([lo, hi], np.percentile(resampled, [1.0, 99.8]), rtol=0.01)
    for line in ("domain classifier acc.", "label IPQ (classical)", "foreground (real "):
        assert line in output
    assert -1.0 <= provenance["label_correlation"] <= 1.0
    shares = provenance["foreground_fraction"]
    bench_share = np.mean([(source.labels(n) > 0).mean() for n in source.names])
    assert shares["benchmark"] == pytest.approx(bench_share)
    assert shares["real"] == pytest.approx(foreground_fraction([resampled]))
    assert shares["benchmark"] > 1.6 * shares["real"]  # the tiny benchmark is the denser set
    assert "warning: the benchmark is 16% foreground" in output
    gap = json.loads((out.with_name("adapted.training") / "gap.json").read_text())
    assert set(gap) == {"synthetic", "adapted"}
    assert all(0.0 <= m["classifier_accuracy"] <= 1.0 for m in gap.values())


def test_aop_adapt_logs_losses_and_panels_to_mlflow(adapted_run):
    from mlflow.tracking import MlflowClient

    out, _ = adapted_run
    work = out.with_name("adapted.training")
    run_id = json.loads((work / "mlflow_run.json").read_text())["run_id"]
    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    history = client.get_metric_history(run_id, "loss_cycle_epoch")
    assert len(history) == 2 and all(np.isfinite(m.value) for m in history)
    corr = client.get_metric_history(run_id, "label_corr_epoch")  # the collapse monitor
    assert len(corr) == 2 and all(-1.0 <= m.value <= 1.0 for m in corr)
    panels = [a.path for a in client.list_artifacts(run_id, "panels")]
    assert panels == ["panels/epoch_0001.png", "panels/epoch_0002.png"]
    assert sorted(p.name for p in (work / "mlartifacts" / run_id).glob("artifacts/panels/*")) == [
        "epoch_0001.png",
        "epoch_0002.png",
    ]  # beside the checkpoints, not in the working directory
    run = client.get_run(run_id)
    assert run.data.params["lambda_cycle"] == "10.0"
    tags = client.get_experiment(run.info.experiment_id).tags
    assert tags["mlflow.experimentKind"] == "custom_model_development"


def _invoke(*args: str):
    return CliRunner().invoke(app, ["adapt", *args, "--quiet", "--no-gap", "--no-tracking"])


def test_aop_adapt_bad_input_one_line(tiny_data, adapted_run, tmp_path):
    root, bench, real = tiny_data
    base = ["--synthetic", str(bench), "--out", str(tmp_path / "o"), *TINY_CLI]
    two = tmp_path / "two"
    two.mkdir()
    np.save(two / "a.npy", np.zeros((2, 12, 40, 40), np.float32))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--real", str(two)], "different channel counts (2 in"),
        (["--real", str(empty)], "no volumes"),
        (["--real", str(real), "--patch", "64,64"], "smaller than the patch (64, 64)"),
        (["--real", str(real), "--setting", "colour=1"], "colour: unknown field"),
        (["--real", str(real), "--patch", "15,16"], "multiples of 4"),
        (
            ["--real", str(real), "--work", str(adapted_run[0].with_name("adapted.training")),
             "--patch", "16,16", "--setting", "ngf=8"],
            "checkpoint from another configuration (ngf=4",
        ),
    ]  # fmt: skip
    for extra, message in cases:
        result = _invoke(*base, *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output, (extra, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "o").exists()
    # a folder that aop adapt did not write is never replaced
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    result = _invoke("--synthetic", str(bench), "--real", str(real), "--out",
                     str(tmp_path / "mine"), "--patch", "16,16", *TINY_CLI)  # fmt: skip
    assert result.exit_code == 2 and "not written by aop adapt" in result.output
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    # an earlier adapted benchmark is replaced only with --overwrite, refused before training
    out = adapted_run[0]
    again = ["--synthetic", str(bench), "--real", str(real), "--out", str(out), "--patch", "16,16",
             "--epochs", "1", "--epochs-decay", "1", "--steps-per-epoch", "2", *TINY_CLI]
    before = (out / "dataset.yaml").stat().st_mtime_ns
    result = _invoke(*again)
    assert result.exit_code == 2, result.output
    assert result.output.strip() == (
        f"error: {out}: holds an earlier adapted benchmark; pass --overwrite to replace it")
    assert (out / "dataset.yaml").stat().st_mtime_ns == before
    result = _invoke(*again, "--overwrite")  # the finished training resumes: only translation
    assert result.exit_code == 0, result.output
    assert (out / "dataset.yaml").stat().st_mtime_ns != before


def test_experiment_data_adapt_runs_once_and_is_cached(tiny_data, adapted_run, tmp_path):
    from aop.tuning.kinds import parse_experiment
    from aop.tuning.segmentation import ensure_benchmark

    _, _, real = tiny_data
    store = adapted_run[0].with_name("adapted.training") / "mlflow.db"  # an initialised store
    raw = {
        "name": "adapted",
        "data": {
            "synth": {"n_volumes": 1, "shape": [12, 32, 32], "seed": 3},
            "adapt": {"real": str(real), "patch": [16, 16], "epochs": 1, "epochs_decay": 0,
                      "steps_per_epoch": 1, **TINY},
        },  # fmt: skip
        "models": [{"name": "classical"}],
        "storage": {"study_dir": str(tmp_path / "study")},
        "tracking": {"tracking_uri": f"sqlite:///{store}"},
    }
    exp = parse_experiment(raw)
    dataset = ensure_benchmark(exp)
    assert dataset.root.parent == tmp_path / "study" / "adapted"
    assert dataset.info.provenance["generator"] == "aop.adapt"
    simulated = load_dataset(tmp_path / "study" / "benchmark")
    assert tuple(simulated.info.voxel_size) == (2.0, 1.25, 1.25)  # the real voxel size
    stamp = (dataset.root / "dataset.yaml").stat().st_mtime_ns
    assert ensure_benchmark(exp).root == dataset.root
    assert (dataset.root / "dataset.yaml").stat().st_mtime_ns == stamp
    with pytest.raises(Exception, match="data.adapt.ngf"):
        parse_experiment({**raw, "data": {**raw["data"], "adapt": {"real": str(real), "ngf": 0}}})
