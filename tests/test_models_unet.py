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


def test_unet_module_restores_from_its_checkpoint_alone(tmp_path):
    """A trained ``UNetModule`` comes back from a Lightning checkpoint with identical outputs.

    The architecture is not the default one, so only the hyperparameters saved in the
    checkpoint can rebuild a network that the saved weights fit.
    """
    import lightning as L

    from aop.segmentation.unet3d import UNET_KWARGS, UNetDataModule, UNetModule

    image, labels = _synthetic(0)
    data = UNetDataModule([image], [labels], patch=(16, 32, 32), steps=3, batch_size=1, seed=0)
    architecture = {**UNET_KWARGS, "channels": [4, 8, 16]}
    L.seed_everything(0, verbose=False)
    module = UNetModule(architecture, learning_rate=1e-2, boundary_weight=2.0)
    trainer = L.Trainer(
        max_steps=3, max_epochs=1, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 3
    path = tmp_path / "unet.ckpt"
    trainer.save_checkpoint(path)

    restored = UNetModule.load_from_checkpoint(path, map_location="cpu")
    assert dict(restored.hparams) == {
        "architecture": architecture, "learning_rate": 1e-2, "boundary_weight": 2.0,
    }  # fmt: skip
    assert restored.bce.pos_weight.flatten().tolist() == [1.0, 2.0]
    x = torch.from_numpy(data.images[0][None, None, :16, :32, :32].copy())
    module.eval()
    restored.eval()
    with torch.no_grad():
        expected = module(x)
        assert torch.equal(restored(x), expected)
        L.seed_everything(0, verbose=False)
        untrained = UNetModule(architecture).eval()
        assert not torch.allclose(untrained(x), expected)  # the checkpoint holds trained weights
