"""The content-addressed prediction cache: hits, misses, corruption, atomic entries."""

from __future__ import annotations

import numpy as np
import pytest

from aop.errors import AopError
from aop.segmentation.cache import PredictionCache, volume_hash
from aop.segmentation.models import SegmentationModel, build_model


class CountingModel(SegmentationModel):
    """Thresholds the image and counts its calls (not registered)."""

    name = "counting"

    def __init__(self, **settings):
        super().__init__(**settings)
        self.calls = 0

    def predict(self, image, spacing):
        self.calls += 1
        return (image > image.mean()).astype(np.uint32)


@pytest.fixture
def image():
    return np.random.default_rng(0).random((6, 16, 16)).astype(np.float32)


def test_hit_does_not_predict_again(tmp_path, image):
    cache = PredictionCache(tmp_path / "cache")
    model = CountingModel()
    first = cache.get_or_predict(model, image, (1.0, 1.0, 1.0))
    second = cache.get_or_predict(model, image, (1.0, 1.0, 1.0))
    assert model.calls == 1
    np.testing.assert_array_equal(first, second)
    assert first.sum() == int((image > image.mean()).sum())
    # a fresh cache object on the same folder (another process) also hits
    other = CountingModel()
    PredictionCache(tmp_path / "cache").get_or_predict(other, image, (1.0, 1.0, 1.0))
    assert other.calls == 0


def test_key_changes_with_content_settings_spacing(tmp_path, image):
    cache = PredictionCache(tmp_path)
    model = build_model("classical")
    key = cache.key(model, image)
    assert key == cache.key(build_model("classical"), image.copy())
    changed = image.copy()
    changed[0, 0, 0] += 1
    assert cache.key(model, changed) != key
    assert cache.key(model, image.astype(np.float64)) != key
    assert cache.key(model, image.reshape(6, 8, 32)) != key
    assert cache.key(build_model("classical", sigma=2.0), image) != key
    assert cache.key(model, image, (2.0, 1.0, 1.0)) != cache.key(model, image, (1.0, 1.0, 1.0))
    assert volume_hash(image) == volume_hash(image.copy())


def test_miss_then_put_then_get(tmp_path, image):
    cache = PredictionCache(tmp_path)
    model = CountingModel()
    assert cache.get(model, image) is None
    labels = np.arange(image.size, dtype=np.uint32).reshape(image.shape)
    path = cache.put(model, image, labels)
    assert path == cache.path_for(cache.key(model, image))
    assert path.suffix == ".npz" and path.parent.parent == tmp_path
    np.testing.assert_array_equal(cache.get(model, image), labels)
    np.testing.assert_array_equal(PredictionCache.load(path), labels)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


def test_corrupt_entry_is_detected_and_recomputed(tmp_path, image):
    cache = PredictionCache(tmp_path)
    model = CountingModel()
    spacing = (1.0, 1.0, 1.0)
    expected, path = cache.fetch(model, image, spacing)
    # overwrite the stored labels with different ones but keep the old checksum
    with np.load(path) as entry:
        members = {k: entry[k] for k in entry.files}
    members["labels"] = members["labels"] + 1
    np.savez_compressed(path, **members)
    with pytest.raises(AopError, match="checksum mismatch"):
        PredictionCache.load(path)
    assert cache.get(model, image, spacing) is None
    again = cache.get_or_predict(model, image, spacing)
    assert model.calls == 2
    np.testing.assert_array_equal(again, expected)
    # a truncated file is corrupt too
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(AopError, match="corrupt cache entry"):
        PredictionCache.load(path)
    np.testing.assert_array_equal(cache.get_or_predict(model, image, spacing), expected)
    assert model.calls == 3
