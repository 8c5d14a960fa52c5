"""aop's own unet3d: trained briefly by ``aop train-unet``, run through the bioimageio adapter."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from aop.cli import app
from aop.io import DatasetInfo, write_dataset
from aop.metrics import ipq
from aop.segmentation.models import build_model

SPACING = (1.0, 0.5, 0.5)


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
