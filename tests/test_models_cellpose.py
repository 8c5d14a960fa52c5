"""CellposeSAM adapter: a randomly initialised CPSAM saved here, loaded by name and by path."""

from __future__ import annotations

import numpy as np
import pytest

from aop.errors import AopError
from aop.segmentation.models import build_model

pytest.importorskip("cellpose")


@pytest.fixture(scope="session")
def cpsam_file(tmp_path_factory):
    """A CellposeSAM network with random weights, saved as Cellpose saves its models."""
    import torch
    from cellpose.vit import CPSAM

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("cellpose-models")
    CPSAM().save_model(str(folder / "cpsam_v2"))
    return folder / "cpsam_v2"


@pytest.mark.slow
def test_cellpose_by_name_runs_and_by_path_loads(cpsam_file, monkeypatch):
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(cpsam_file.parent))
    by_name = build_model("cellpose", mode="stitch")
    assert by_name.weights == cpsam_file
    image = np.random.default_rng(0).random((1, 48, 48)).astype(np.float32)
    labels = by_name.predict(image, (2.0, 1.0, 1.0))  # one 256 x 256 tile
    assert labels.shape == image.shape and labels.dtype == np.uint32
    by_path = build_model("cellpose", model=str(cpsam_file))
    network = by_path.network
    assert network.pretrained_model == str(cpsam_file)
    assert sum(p.numel() for p in network.net.parameters()) > 300e6
    assert by_path.identity()["weights"] == by_name.identity()["weights"]


def test_cellpose_missing_weights_name_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path / "models"))
    expected = tmp_path / "models" / "cpsam_v2"
    with pytest.raises(AopError, match=f"weights not found: put them at {expected} .*CELLPOSE"):
        build_model("cellpose")
    with pytest.raises(AopError, match=str(tmp_path / "mine.pt")):
        build_model("cellpose", model=str(tmp_path / "mine.pt"))
