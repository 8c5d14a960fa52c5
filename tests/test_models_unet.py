"""BioImage.IO adapter (a tiny package written here) and aop's own unet3d, trained briefly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from aop.cli import app
from aop.errors import AopError
from aop.io import DatasetInfo, write_dataset
from aop.metrics import ipq
from aop.segmentation.bioimageio_package import write_model_package
from aop.segmentation.models import build_model

SPACING = (1.0, 0.5, 0.5)


def _package(folder, weights=None):
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, kernel_size=3, padding=1)
    if weights is not None:
        with torch.no_grad():
            net.weight.zero_()
            net.weight[:, 0, 1, 1, 1] = torch.tensor(weights[0])
            net.bias[:] = torch.tensor(weights[1])
    kwargs = {"in_channels": 1, "out_channels": 2, "kernel_size": 3, "padding": 1}
    return write_model_package(
        folder, net, callable_name="Conv3d", import_from="torch.nn", kwargs=kwargs,
        name="tiny conv", description="one 3x3x3 convolution", voxel_size=SPACING,
        min_shape=(8, 8, 8), step=(1, 1, 1), halo=(2, 2, 2),
    )


def test_bioimageio_tiled_equals_untiled_and_rescales(tmp_path):
    package = _package(tmp_path / "tiny")
    assert (package / "rdf.yaml").is_file() and (package / "weights.pt").is_file()
    image = np.random.default_rng(0).random((12, 30, 26)).astype(np.float32)
    whole = build_model("bioimageio", model=str(package)).probabilities(image, SPACING)
    tiled = build_model("bioimageio", model=str(package / "rdf.yaml"), tile_shape=(8, 12, 10))
    assert whole.shape == (2, 12, 30, 26)
    np.testing.assert_allclose(tiled.probabilities(image, SPACING), whole, atol=1e-5)
    # the network itself, on the scaled volume with the package's sigmoid
    net = build_model("bioimageio", model=str(package)).network()
    low, high = np.percentile(image, [1.0, 99.8])
    scaled = torch.from_numpy(((image - low) / (high - low + 1e-6)).astype(np.float32)[None, None])
    reference = torch.sigmoid(net(scaled))[0].detach().numpy()
    inner = (slice(None), slice(1, -1), slice(1, -1), slice(1, -1))  # mirrored border differs
    np.testing.assert_allclose(whole[inner], reference[inner], atol=1e-5)
    # a coarser volume is resampled to the training grid and back
    coarse = build_model("bioimageio", model=str(package)).probabilities(image, (2.0, 1.0, 1.0))
    assert coarse.shape == whole.shape and not np.allclose(coarse, whole)


def test_bioimageio_foreground_to_instances(tmp_path):
    # foreground = sigmoid(40 * (x - 0.5)) on the scaled image, no boundary channel
    package = _package(tmp_path / "fg", weights=([40.0, 0.0], [-20.0, 0.0]))
    image = np.zeros((16, 32, 32), dtype=np.float32)
    image[4:12, 4:14, 4:14] = 1.0
    image[4:12, 18:28, 16:28] = 1.0
    model = build_model(
        "bioimageio", model=str(package), boundary_channel=None, min_size=10, alpha=0.0
    )
    labels = model.predict(image, SPACING)
    assert labels.dtype == np.uint32 and labels.max() == 2
    truth = (image > 0) * (1 + (np.indices(image.shape)[1] > 15))
    assert ipq(truth, labels).ipq > 0.9
    with pytest.raises(AopError, match="output channel 5"):
        build_model("bioimageio", model=str(package), boundary_channel=5).predict(image, SPACING)


def test_missing_packages_name_the_path(tmp_path, monkeypatch):
    monkeypatch.delenv("AOP_BIOIMAGEIO_MODEL", raising=False)
    monkeypatch.delenv("AOP_UNET3D_MODEL", raising=False)
    with pytest.raises(AopError, match="no model package given.*AOP_BIOIMAGEIO_MODEL"):
        build_model("bioimageio")
    with pytest.raises(AopError, match="aop train-unet.*AOP_UNET3D_MODEL"):
        build_model("unet3d")
    missing = tmp_path / "nowhere"
    with pytest.raises(AopError, match=f"weights not found: put them at {missing / 'rdf.yaml'}"):
        build_model("unet3d", model=str(missing))
    monkeypatch.setenv("AOP_UNET3D_MODEL", str(missing))
    with pytest.raises(AopError, match=str(missing / "rdf.yaml")):
        build_model("unet3d")
    package = _package(tmp_path / "pkg")
    (package / "weights.pt").unlink()
    with pytest.raises(AopError, match=str(package / "weights.pt")):
        build_model("bioimageio", model=str(package))


def _synthetic(seed: int):
    from aop.synth import simulate

    return simulate((24, 64, 64), SPACING, seed=seed, density=0.3, touching_fraction=0.5)


@pytest.fixture(scope="session")
def trained_unet(tmp_path_factory):
    """``aop train-unet`` on three synthetic volumes for a short, fixed budget."""
    root = tmp_path_factory.mktemp("unet")
    volumes = [(f"v{i}", *_synthetic(i)) for i in range(3)]
    data = write_dataset(root / "bench", volumes, DatasetInfo("bench", SPACING))
    torch.set_num_threads(2)
    result = CliRunner().invoke(
        app, ["train-unet", "--data", str(data), "--out", str(root / "unet"), "--max-steps", "80"]
    )
    assert result.exit_code == 0, result.output
    return root / "unet"


@pytest.mark.slow
def test_unet3d_beats_classical_on_held_out_volume(trained_unet):
    image, gt = _synthetic(100)
    unet = build_model("unet3d", model=str(trained_unet)).predict(image, SPACING)
    classical = build_model("classical").predict(image, SPACING)
    unet_score, classical_score = ipq(gt, unet).ipq, ipq(gt, classical).ipq
    print(f"held-out synthetic volume: unet3d {unet_score:.3f}, classical {classical_score:.3f}")
    assert unet_score > classical_score
    assert unet_score > 0.5


@pytest.mark.slow
def test_unet3d_on_real_stardist_sample(trained_unet, nuclei_3d):
    image, gt = nuclei_3d
    labels = build_model("unet3d", model=str(trained_unet)).predict(image, (2.0, 1.0, 1.0))
    print(f"unet3d on StarDist 3D sample: score {ipq(gt, labels).ipq:.3f}")
    assert labels.shape == gt.shape and labels.max() >= 1


def test_train_unet_rejects_bad_input(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["train-unet", "--data", str(tmp_path / "x"), "--out", "o"])
    assert result.exit_code == 2 and "data-set folder not found" in result.output
    result = runner.invoke(
        app, ["train-unet", "--data", str(tmp_path), "--out", "o", "--max-steps", "0"]
    )
    assert result.exit_code == 2 and "--max-steps" in result.output
