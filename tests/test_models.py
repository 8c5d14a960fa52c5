"""Model registry, settings validation, the classical model and slice stitching."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from aop.errors import AopError
from aop.metrics import ipq
from aop.segmentation.instances import distance_watershed, stitch_slices
from aop.segmentation.models import (
    ModelSpec,
    SegmentationModel,
    available_models,
    build_model,
    register_model,
)


def test_registry_lists_the_zoo():
    names = set(available_models())
    assert {"classical", "stardist2d", "stardist3d", "cellpose", "bioimageio", "unet3d"} <= names
    for name, cls in available_models().items():
        assert cls.name == name and issubclass(cls, SegmentationModel)


def test_build_model_errors_name_the_problem():
    with pytest.raises(AopError, match="unknown model 'nope'.*classical"):
        build_model("nope")
    with pytest.raises(AopError, match="model 'classical': setting 'sigmaa'"):
        build_model("classical", sigmaa=1.0)
    with pytest.raises(AopError, match="setting 'sigma' = -1"):
        build_model(ModelSpec(name="classical", settings={"sigma": -1}))
    with pytest.raises(ValueError):
        ModelSpec(name="classical", weights="x")  # extra keys are forbidden


def test_register_model_is_one_class_one_line(monkeypatch):
    from aop.segmentation.models import base

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))  # leave the real one untouched

    @register_model
    class Ones(SegmentationModel):
        name = "ones_test_model"

        def predict(self, image, spacing):
            return np.ones(image.shape[-3:], dtype=np.uint32)

    model = build_model("ones_test_model")
    assert model.predict(np.zeros((2, 3, 4)), (1, 1, 1)).sum() == 24
    assert model.identity() == {"name": "ones_test_model", "settings": {}, "weights": {}}
    assert "ones_test_model" in available_models()
    with pytest.raises(TypeError, match="already registered"):

        @register_model
        class Other(SegmentationModel):
            name = "classical"

            def predict(self, image, spacing):
                raise NotImplementedError


def balls(shape, centres, radius):
    labels = np.zeros(shape, dtype=np.uint32)
    grid = np.indices(shape)
    for i, c in enumerate(centres, start=1):
        inside = sum((g - cc) ** 2 for g, cc in zip(grid, c, strict=True)) <= radius**2
        labels[inside] = i
    return labels


def test_classical_separates_touching_balls():
    gt = balls((24, 40, 60), [(12, 20, 16), (12, 20, 31), (12, 20, 46)], 7)
    rng = np.random.default_rng(1)
    image = ndi.gaussian_filter((gt > 0).astype(np.float32), 1) + rng.normal(0, 0.05, gt.shape)
    pred = build_model("classical").predict(image.astype(np.float32), (1.0, 1.0, 1.0))
    assert pred.dtype == np.uint32 and pred.shape == gt.shape
    assert pred.max() == 3
    assert ipq(gt, pred).ipq > 0.8
    # a (C, Z, Y, X) image: the channel setting picks the channel
    two = np.stack([np.zeros_like(image), image]).astype(np.float32)
    np.testing.assert_array_equal(build_model("classical", channel=1).predict(two, (1, 1, 1)), pred)
    with pytest.raises(AopError, match="setting 'channel' = 2"):
        build_model("classical", channel=2).predict(two, (1, 1, 1))


def test_classical_on_real_stardist_sample(nuclei_3d):
    image, gt = nuclei_3d
    pred = build_model("classical").predict(image, (2.0, 1.0, 1.0))
    score = ipq(gt, pred).ipq
    print(f"classical on StarDist 3D sample: score {score:.3f}, {pred.max()} instances")
    assert score > 0.35


def test_stitch_slices_links_by_overlap():
    stack = np.zeros((4, 10, 10), dtype=np.int32)
    stack[0, 1:5, 1:5] = 7  # object A, slices 0-2, drifting
    stack[1, 2:6, 1:5] = 3
    stack[2, 2:6, 2:6] = 9
    stack[0, 6:9, 6:9] = 2  # object B in slice 0 only
    stack[3, 6:9, 6:9] = 5  # object C: no overlap with slice 2
    out = stitch_slices(stack, threshold=0.5)
    assert out.dtype == np.uint32
    a = out[0, 2, 2]
    assert a > 0 and out[1, 3, 3] == a and out[2, 3, 3] == a
    assert len({a, out[0, 7, 7], out[3, 7, 7]}) == 3
    assert out.max() == 3
    # overlap ratio 9/12 = 0.75: linked at 0.7, not at 0.8
    weak = np.zeros((2, 10, 10), dtype=np.int32)
    weak[0, 0:4, 0:3] = 1
    weak[1, 1:4, 0:4] = 1
    assert stitch_slices(weak, 0.7).max() == 1
    assert stitch_slices(weak, 0.8).max() == 2
    # one big label overlapping two small ones in the next slice joins all three
    fork = np.zeros((2, 10, 10), dtype=np.int32)
    fork[0, 0:10, 0:4] = 1
    fork[1, 0:4, 0:4] = 1
    fork[1, 6:10, 0:4] = 2
    assert stitch_slices(fork, 0.5).max() == 1
    assert stitch_slices(np.zeros((3, 4, 4), dtype=np.int32)).max() == 0
    with pytest.raises(ValueError, match="threshold"):
        stitch_slices(stack, 1.0)


def test_distance_watershed_uses_boundaries():
    gt = balls((20, 30, 44), [(10, 15, 14), (10, 15, 29)], 7)
    foreground = (gt > 0).astype(np.float32)
    from skimage.segmentation import find_boundaries

    boundary = find_boundaries(gt, mode="inner").astype(np.float32)
    labels = distance_watershed(foreground, boundary, (1, 1, 1), min_size=10)
    assert labels.max() == 2
    assert ipq(gt, labels).ipq > 0.8
    assert distance_watershed(np.zeros((4, 4, 4)), None).max() == 0
