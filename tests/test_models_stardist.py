"""StarDist adapters: a tiny StarDist2D (applied slice-wise) and StarDist3D, trained here."""

from __future__ import annotations

import pickle
import random
import shutil
import time

import numpy as np
import pytest

from aop.errors import AopError
from aop.metrics import ipq
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
    net = build_model("stardist2d", model=str(folder)).network
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


@pytest.fixture(scope="session")
def tiny_stardist3d(tmp_path_factory, nuclei_3d):
    """A StarDist3D trained for a few steps on StarDist's real 3D nuclei sample.

    Returns the model folder and a probability threshold the briefly trained network reaches
    (the top fifth of its probability map; its untuned default of 0.5 finds nothing).
    """
    from aop.segmentation.models.stardist import prepare_tensorflow

    start = time.perf_counter()
    prepare_tensorflow()
    import tensorflow as tf
    from csbdeep.utils import normalize
    from stardist.models import Config3D, StarDist3D

    # Keras draws its initialiser seeds from Python's random, StarDist its patches from NumPy's
    random.seed(0)
    np.random.seed(0)  # noqa: NPY002
    tf.random.set_seed(0)
    image, mask = nuclei_3d
    image = normalize(image, 1, 99.8)
    config = Config3D(
        n_rays=32,
        grid=(1, 2, 2),
        anisotropy=(2, 1, 1),  # z voxels twice as long: the spacing the tests pass
        unet_n_depth=2,
        unet_n_filter_base=8,
        train_tensorboard=False,
        train_epochs=2,
        train_steps_per_epoch=20,
        train_batch_size=2,
        train_patch_size=(16, 32, 32),
        train_learning_rate=3e-3,
        use_gpu=False,
    )
    basedir = tmp_path_factory.mktemp("stardist3d")
    model = StarDist3D(config, name="tiny3d", basedir=str(basedir))
    # CPU training otherwise varies from run to run; the switch-off is not exported by tf.config
    from tensorflow.python.framework.config import disable_op_determinism

    tf.config.experimental.enable_op_determinism()
    try:
        validation = ([image[:16, :32, :32]], [mask[:16, :32, :32]])
        model.train([image], [mask], validation_data=validation)
    finally:
        disable_op_determinism()
    prob, _ = model.predict(image)
    threshold = float(np.quantile(prob, 0.8))
    print(f"\ntiny StarDist3D fixture: {time.perf_counter() - start:.1f} s")
    return basedir / "tiny3d", threshold


def test_stardist3d_by_folder_predicts_the_volume(tiny_stardist3d, nuclei_3d):
    from csbdeep.utils import normalize

    folder, threshold = tiny_stardist3d
    image, truth = nuclei_3d
    model = build_model("stardist3d", model=str(folder), prob_thresh=threshold, nms_thresh=0.3)
    labels = model.predict(image, (2.0, 1.0, 1.0))
    assert labels.shape == image.shape and labels.dtype == np.uint32
    n = int(labels.max())
    assert n >= 1
    np.testing.assert_array_equal(np.unique(labels), np.arange(n + 1))  # consecutive labels
    assert 0 < np.count_nonzero(labels) < labels.size
    # the adapter is StarDist's own 3D prediction on the percentile-normalised volume
    direct, _ = model.network.predict_instances(
        normalize(image.astype(np.float32), 1, 99.8), prob_thresh=threshold, nms_thresh=0.3
    )
    np.testing.assert_array_equal(labels > 0, direct > 0)
    assert n == len(np.unique(direct[direct > 0]))
    score = ipq(truth, labels)
    print(f"\ntiny StarDist3D: {n} instances, IPQ {score.ipq:.3f} (TP {score.tp}, FP {score.fp})")
    identity = model.identity()
    assert identity["name"] == "stardist3d"
    assert identity["settings"]["model"] == "tiny3d"
    assert set(identity["weights"]) >= {"config.json", "weights_best.h5"}


def test_stardist3d_identity_follows_the_weights(tiny_stardist3d, tmp_path):
    folder, _ = tiny_stardist3d
    original = build_model("stardist3d", model=str(folder)).identity()
    copy = tmp_path / "tiny3d"
    shutil.copytree(folder, copy)
    model = build_model("stardist3d", model=str(copy))
    assert model.identity() == original  # the same files: the same cache key, wherever they lie
    network = model.network
    layer = next(layer for layer in network.keras_model.layers if layer.get_weights())
    layer.set_weights([w + 0.01 for w in layer.get_weights()])
    network.keras_model.save_weights(str(copy / "weights_best.h5"))
    changed = build_model("stardist3d", model=str(copy)).identity()
    assert changed["weights"]["weights_best.h5"] != original["weights"]["weights_best.h5"]
    assert changed["weights"]["config.json"] == original["weights"]["config.json"]
    assert changed != original


def test_stardist3d_pickles_without_its_network(tiny_stardist3d, nuclei_3d):
    folder, threshold = tiny_stardist3d
    image, _ = nuclei_3d
    model = build_model("stardist3d", model=str(folder), prob_thresh=threshold, nms_thresh=0.3)
    labels = model.predict(image, (2.0, 1.0, 1.0))
    assert model._network is not None
    payload = pickle.dumps(model)
    assert len(payload) < 10_000  # settings and a path, not the network
    clone = pickle.loads(payload)
    assert clone._network is None and clone.folder == model.folder
    assert clone.identity() == model.identity()
    np.testing.assert_array_equal(clone.predict(image, (2.0, 1.0, 1.0)), labels)
    assert clone._network is not None and clone._network is not model._network
