"""The ``bioimageio`` adapter on tiny packages written here, run through bioimageio.core."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch
import yaml

from aop.errors import AopError
from aop.segmentation.bioimageio_package import write_model_package
from aop.segmentation.models import build_model

SPACING = (1.0, 0.5, 0.5)
CONV_KWARGS = {"in_channels": 1, "out_channels": 2, "kernel_size": 3, "padding": 1}


def _conv(weights=None) -> torch.nn.Conv3d:
    torch.manual_seed(0)
    net = torch.nn.Conv3d(**CONV_KWARGS)
    if weights is not None:
        with torch.no_grad():
            net.weight.zero_()
            net.weight[:, 0, 1, 1, 1] = torch.tensor(weights[0])
            net.bias[:] = torch.tensor(weights[1])
    return net.eval()


def _package(folder, net=None, overwrite=False):
    return write_model_package(
        folder, net if net is not None else _conv(), callable_name="Conv3d",
        import_from="torch.nn", kwargs=CONV_KWARGS, name="tiny conv", description="one conv",
        voxel_size=SPACING, min_shape=(8, 8, 8), step=(1, 1, 1), halo=(2, 2, 2),
        overwrite=overwrite,
    )


def _reference(net, image):
    """sigmoid(net(scale_range(image))) computed with plain numpy and torch."""
    low, high = np.percentile(image, [1.0, 99.8])
    scaled = ((image - low) / (high - low + 1e-6)).astype(np.float32)
    with torch.no_grad():
        return torch.sigmoid(net(torch.from_numpy(scaled[None, None])))[0].numpy()


INNER = (slice(None), slice(1, -1), slice(1, -1), slice(1, -1))  # the padded border differs


def test_written_package_passes_bioimageio_core_test_model(tmp_path):
    from bioimageio.core import test_model

    package = _package(tmp_path / "tiny")
    summary = test_model(package / "rdf.yaml")
    failed = [d.name for d in summary.details if d.status != "passed"]
    assert summary.status == "passed", failed
    rdf = yaml.safe_load((package / "rdf.yaml").read_text())
    assert rdf["format_version"].startswith("0.5")
    assert [a.get("halo") for a in rdf["outputs"][0]["axes"][2:]] == [2, 2, 2]


def test_tiled_equals_whole_and_matches_the_network(tmp_path):
    net = _conv()
    package = _package(tmp_path / "tiny", net)
    image = np.random.default_rng(0).random((12, 30, 26)).astype(np.float32)
    whole = build_model("bioimageio", model=str(package)).probabilities(image, SPACING)
    assert whole.shape == (2, 12, 30, 26) and whole.dtype == np.float32
    tiled = build_model("bioimageio", model=str(package / "rdf.yaml"), tile_shape=(8, 12, 10))
    np.testing.assert_allclose(tiled.probabilities(image, SPACING), whole, atol=1e-5)
    # a larger halo reads more real context and gives the same result for a 3x3x3 network
    wide = build_model("bioimageio", model=str(package), tile_shape=(10, 14, 14), halo=(3, 3, 3))
    np.testing.assert_allclose(wide.probabilities(image, SPACING), whole, atol=1e-5)
    np.testing.assert_allclose(whole[INNER], _reference(net, image)[INNER], atol=1e-5)
    # a tile bigger than the volume along z is padded at the far end, not rejected
    tall = build_model("bioimageio", model=str(package), tile_shape=(16, 12, 12))
    np.testing.assert_allclose(tall.probabilities(image, SPACING)[INNER], whole[INNER], atol=1e-5)
    with pytest.raises(AopError, match="leaves nothing inside a halo"):
        build_model(
            "bioimageio", model=str(package), tile_shape=(8, 8, 8), halo=(2, 4, 2)
        ).probabilities(image, SPACING)


def test_rescales_to_the_training_voxel_size_and_back(tmp_path):
    package = _package(tmp_path / "tiny")
    image = np.random.default_rng(1).random((12, 30, 26)).astype(np.float32)
    model = build_model("bioimageio", model=str(package))
    assert model.voxel_size() == SPACING
    same = model.probabilities(image, SPACING)
    coarse = model.probabilities(image, (2.0, 1.0, 1.0))  # resampled x2, predicted, back
    assert coarse.shape == same.shape and not np.allclose(coarse, same)
    fixed = build_model("bioimageio", model=str(package), rescale=False)
    np.testing.assert_allclose(fixed.probabilities(image, (2.0, 1.0, 1.0)), same, atol=1e-6)


def test_zip_package_gives_the_same_output(tmp_path):
    from bioimageio.spec import save_bioimageio_package

    package = _package(tmp_path / "tiny")
    archive = save_bioimageio_package(package / "rdf.yaml", output_path=tmp_path / "tiny.zip")
    image = np.random.default_rng(2).random((10, 20, 20)).astype(np.float32)
    from_zip = build_model("bioimageio", model=str(archive))
    np.testing.assert_allclose(
        from_zip.probabilities(image, SPACING),
        build_model("bioimageio", model=str(package)).probabilities(image, SPACING),
        atol=1e-6,
    )
    assert list(from_zip.identity()["weights"]) == ["tiny.zip"]


ARCH = '''import torch


class TinyNet(torch.nn.Module):
    """One 3x3x3 convolution, 1 channel in, 2 out."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(1, 2, kernel_size=3, padding=1)

    def forward(self, x):
        return self.conv(x)
'''


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _package_v04(folder, net):
    """A format-0.4 package as PlantSeg published them: architecture file + TorchScript."""
    folder.mkdir()
    (folder / "tiny_arch.py").write_text(ARCH)
    torch.save({f"conv.{k}": v for k, v in net.state_dict().items()}, folder / "weights.pt")
    torch.jit.trace(net, torch.zeros(1, 1, 8, 8, 8)).save(str(folder / "weights.torchscript"))
    image = np.random.default_rng(0).random((1, 1, 8, 8, 8), dtype=np.float32)
    np.save(folder / "test_input.npy", image)
    np.save(folder / "test_output.npy", _reference(net, image[0, 0])[None])
    (folder / "README.md").write_text("# tiny 0.4 package\n")
    rdf = {
        "format_version": "0.4.10",
        "type": "model",
        "name": "tiny plantseg style",
        "description": "a 0.4 package with an architecture file",
        "authors": [{"name": "aop"}],
        "cite": [{"text": "U-Net", "doi": "10.1007/978-3-319-24574-4_28"}],
        "license": "BSD-3-Clause",
        "documentation": "README.md",
        "timestamp": "2024-01-01T00:00:00",
        "test_inputs": ["test_input.npy"],
        "test_outputs": ["test_output.npy"],
        "inputs": [{
            "name": "raw", "axes": "bczyx", "data_type": "float32",
            "data_range": [float("-inf"), float("inf")],
            "shape": {"min": [1, 1, 8, 8, 8], "step": [0, 0, 1, 1, 1]},
            "preprocessing": [{"name": "scale_range", "kwargs": {
                "mode": "per_sample", "axes": "zyx", "min_percentile": 1.0,
                "max_percentile": 99.8}}],
        }],
        "outputs": [{
            "name": "probabilities", "axes": "bczyx", "data_type": "float32",
            "data_range": [0.0, 1.0], "halo": [0, 0, 2, 2, 2],
            "shape": {"reference_tensor": "raw", "scale": [1, 0, 1, 1, 1],
                      "offset": [0, 1, 0, 0, 0]},
            "postprocessing": [{"name": "sigmoid"}],
        }],
        "weights": {
            "pytorch_state_dict": {
                "source": "weights.pt", "sha256": _sha(folder / "weights.pt"),
                "architecture": "tiny_arch.py:TinyNet",
                "architecture_sha256": _sha(folder / "tiny_arch.py"),
            },
            "torchscript": {
                "source": "weights.torchscript", "sha256": _sha(folder / "weights.torchscript"),
            },
        },
    }
    (folder / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
    return folder


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_format_04_package_with_architecture_file_and_torchscript(tmp_path):
    net = _conv()
    package = _package_v04(tmp_path / "v04", net)
    image = np.random.default_rng(3).random((12, 20, 18)).astype(np.float32)
    reference = _reference(net, image)
    outputs = {}
    for fmt in ("pytorch_state_dict", "torchscript"):
        model = build_model(
            "bioimageio", model=str(package), weights_format=fmt, tile_shape=(8, 10, 10),
            model_voxel_size=SPACING,
        )
        assert model.halo() == (2, 2, 2)  # 0.4 halo carried over by the conversion to 0.5
        outputs[fmt] = model.probabilities(image, SPACING)
        np.testing.assert_allclose(outputs[fmt][INNER], reference[INNER], atol=1e-5)
    np.testing.assert_allclose(outputs["torchscript"], outputs["pytorch_state_dict"], atol=1e-5)
    # no unit in a 0.4 package: without model_voxel_size the volume is not resampled
    assert build_model("bioimageio", model=str(package)).voxel_size() is None


def test_foreground_to_instances(tmp_path):
    from aop.metrics import ipq

    # foreground = sigmoid(40 * (x - 0.5)) on the scaled image, no boundary channel
    package = _package(tmp_path / "fg", _conv(weights=([40.0, 0.0], [-20.0, 0.0])))
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
    with pytest.raises(AopError, match="'gasp_beta' needs a boundary channel"):
        build_model(
            "bioimageio", model=str(package), boundary_channel=None, gasp_beta=0.5
        ).predict(image, SPACING)


def test_stacked_watershed_and_agglomeration(tmp_path):
    from aop.metrics import ipq

    # channel 0 = foreground (the boxes), channel 1 = boundary: high on the background
    package = _package(tmp_path / "bnd", _conv(weights=([40.0, -40.0], [-20.0, 20.0])))
    image = np.zeros((16, 32, 32), dtype=np.float32)
    image[4:12, 4:14, 4:14] = 1.0
    image[4:12, 18:28, 16:28] = 1.0
    truth = (image > 0) * (1 + (np.indices(image.shape)[1] > 15))
    settings = {"model": str(package), "foreground_channel": 0, "boundary_channel": 1}
    stacked = build_model("bioimageio", **settings, stacked=True, min_size=5).predict(
        image, SPACING
    )
    assert stacked.max() > 2  # one label per box and slice
    joined = build_model(
        "bioimageio", **settings, stacked=True, min_size=5, gasp_beta=0.5, gasp_min_size=20
    ).predict(image, SPACING)
    assert joined.max() == 2 and ipq(truth, joined).ipq > 0.9


def test_model_ships_to_workers_without_its_network(tmp_path):
    import pickle

    package = _package(tmp_path / "tiny")
    model = build_model("bioimageio", model=str(package))
    image = np.random.default_rng(4).random((10, 16, 16)).astype(np.float32)
    before = model.probabilities(image, SPACING)
    state = pickle.dumps(model)
    assert len(state) < 10_000  # no network, no description inside
    np.testing.assert_allclose(pickle.loads(state).probabilities(image, SPACING), before)
    identity = model.identity()
    shutil.copy(package / "rdf.yaml", tmp_path / "rdf.bak")
    _package(package, _conv(weights=([1.0, 1.0], [0.0, 0.0])), overwrite=True)  # same folder
    assert build_model("bioimageio", model=str(package)).identity() != identity


def test_missing_and_broken_packages_name_the_path(tmp_path, monkeypatch):
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
    with pytest.raises(AopError, match=str(tmp_path / "none.zip")):
        build_model("bioimageio", model=str(tmp_path / "none.zip"))
    package = _package(tmp_path / "pkg")
    weights = (package / "weights.pt").read_bytes()
    (package / "weights.pt").unlink()
    with pytest.raises(AopError, match=f"put them at {package / 'weights.pt'}"):
        build_model("bioimageio", model=str(package))
    (package / "weights.pt").write_bytes(weights[:-1] + b"x")  # corrupted: SHA-256 mismatch
    with pytest.raises(AopError, match=f"{package / 'rdf.yaml'}: not a valid .*SHA256 mismatch"):
        build_model("bioimageio", model=str(package))
    (package / "rdf.yaml").write_text("inputs: [unclosed\n")
    with pytest.raises(AopError, match="rdf.yaml: not valid YAML"):
        build_model("bioimageio", model=str(package))
