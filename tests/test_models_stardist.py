"""StarDist adapters: a tiny StarDist2D trained here, loaded by folder, applied slice-wise."""

from __future__ import annotations

import numpy as np
import pytest

from aop.errors import AopError
from aop.segmentation.instances import stitch_slices
from aop.segmentation.models import build_model

pytest.importorskip("stardist")


@pytest.fixture(scope="session")
def tiny_stardist(tmp_path_factory):
    """A StarDist2D trained for a few steps on StarDist's real 2D nuclei sample."""
    from aop.segmentation.models.stardist import prepare_tensorflow

    prepare_tensorflow()
    import tensorflow as tf
    from csbdeep.utils import normalize
    from stardist.data import test_image_nuclei_2d
    from stardist.models import Config2D, StarDist2D

    np.random.seed(0)  # noqa: NPY002  (StarDist draws its training patches from it)
    tf.random.set_seed(0)
    image, mask = test_image_nuclei_2d(return_mask=True)
    image = normalize(image, 1, 99.8)
    config = Config2D(
        n_rays=8,
        grid=(2, 2),
        unet_n_depth=2,
        unet_n_filter_base=8,
        train_tensorboard=False,
        train_epochs=2,
        train_steps_per_epoch=5,
        train_batch_size=4,
        train_patch_size=(64, 64),
        train_learning_rate=3e-3,
        use_gpu=False,
    )
    basedir = tmp_path_factory.mktemp("stardist")
    model = StarDist2D(config, name="tiny2d", basedir=str(basedir))
    model.train([image], [mask], validation_data=([image[:64, :64]], [mask[:64, :64]]))
    return basedir / "tiny2d", image


def test_stardist2d_by_folder_predicts_slices_and_stitches(tiny_stardist):
    from csbdeep.utils import normalize

    folder, image2d = tiny_stardist
    crop = image2d[200:296, 200:296]
    volume = np.stack([crop, crop, crop])  # a nucleus stays put through z: one 3D instance each
    net = build_model("stardist2d", model=str(folder)).network()
    # a probability threshold the briefly trained network reaches (the setting StarDist tunes):
    # the top fifth of its probability map
    prob, _ = net.predict(normalize(crop, 1, 99.8))
    threshold = float(np.quantile(prob, 0.8))
    model = build_model("stardist2d", model=str(folder), prob_thresh=threshold, nms_thresh=0.3)
    labels = model.predict(volume, (1.0, 1.0, 1.0))
    assert labels.shape == volume.shape and labels.dtype == np.uint32
    per_slice = [
        net.predict_instances(normalize(plane, 1, 99.8), prob_thresh=threshold, nms_thresh=0.3)[0]
        for plane in volume
    ]
    n2d = int(per_slice[0].max())
    assert n2d >= 1
    assert labels.max() == n2d  # identical slices: every 2D instance joins its copies
    np.testing.assert_array_equal(labels, stitch_slices(np.stack(per_slice), 0.5))
    for z in range(3):
        np.testing.assert_array_equal(labels[z] > 0, per_slice[z] > 0)
    identity = model.identity()
    assert identity["settings"]["model"] == "tiny2d"
    assert set(identity["weights"]) >= {"config.json", "weights_best.h5"}


def test_stardist_missing_weights_name_the_path(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    expected = tmp_path / "keras" / "models" / "StarDist2D" / "2D_versatile_fluo" / "config.json"
    with pytest.raises(AopError, match="weights not found: put them at " + str(expected)):
        build_model("stardist2d")
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(AopError, match=str(folder / "weights_best.h5")):
        build_model("stardist2d", model=str(folder))
    with pytest.raises(AopError, match="setting 'model'"):
        build_model("stardist3d")
