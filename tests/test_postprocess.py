"""Post-processing engine: parameters, identities, and morphology against a scipy ball reference."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import ndimage as ndi

from aop.errors import AopError
from aop.segmentation.postprocess import (
    PARAMETER_RANGES,
    PostprocessParams,
    ball,
    close_mask,
    dilate_mask,
    erode_dilate,
    erode_mask,
    merge_instances,
    open_close,
    open_mask,
    postprocess,
    relabel_consecutive,
    split_instances,
)

ZEROS = PostprocessParams.zeros().to_dict()
ROOT = Path(__file__).resolve().parents[1]


def params(**values: float) -> dict:
    return {**ZEROS, **values}


def reference_ball(radius: int, spacing: tuple[float, ...]) -> np.ndarray:
    """Explicit structuring element: offsets of physical length <= radius (finest-axis units)."""
    unit = np.asarray(spacing, float) / min(spacing)
    half = [int(radius // u) for u in unit]
    offsets = np.indices([2 * h + 1 for h in half]).reshape(len(half), -1).T - np.asarray(half)
    inside = ((offsets * unit) ** 2).sum(axis=1) <= radius**2 * (1 + 1e-9)
    element = np.zeros([2 * h + 1 for h in half], bool)
    element[tuple((offsets[inside] + np.asarray(half)).T)] = True
    return element


def random_instances(shape: tuple[int, ...], seed: int, n: int = 12) -> np.ndarray:
    """Blobby foreground cut into instances by nearest random seed (touching and separate ones)."""
    rng = np.random.default_rng(seed)
    foreground = ndi.gaussian_filter(rng.random(shape), 2.0) > 0.5
    seeds = np.zeros(shape, np.int32)
    points = tuple(rng.integers(0, s, n) for s in shape)
    seeds[points] = np.arange(1, n + 1) * 7  # non-consecutive label values
    index = ndi.distance_transform_edt(seeds == 0, return_distances=False, return_indices=True)
    return np.where(foreground, seeds[tuple(index)], 0)


def nearest_instance_reference(labels: np.ndarray, spacing: tuple[float, ...]):
    """Per instance, one full-volume distance transform; returns (nearest label, unique?)."""
    values = np.unique(labels[labels > 0])
    distances = np.stack(
        [ndi.distance_transform_edt(labels != v, sampling=spacing) for v in values]
    )
    order = np.sort(distances, axis=0)
    unique = order[1] > order[0] + 1e-6 if len(values) > 1 else np.ones(labels.shape, bool)
    return values[np.argmin(distances, axis=0)], unique


# -------------------------------------------------------------------------------------------------
# Parameters
# -------------------------------------------------------------------------------------------------


def test_parameter_ranges_match_table_iii_and_the_search_space_file():
    assert PARAMETER_RANGES == {
        "erode_dilate": (int, -10, 10),
        "open_close": (int, -5, 5),
        "merge_continuity": (float, 0.0, 1.0),
        "merge_smoothness": (float, 0.0, 1.0),
        "merge_area": (float, 0.0, 1.0),
        "split_sigma": (float, 0.0, 1.0),
        "split_threshold": (float, 0.0, 1.0),
    }
    space = yaml.safe_load((ROOT / "search_spaces" / "segmentation.yaml").read_text())
    for name, spec in space["parameters"].items():
        kind, low, high = PARAMETER_RANGES[name]
        assert spec == {kind.__name__: [low, high]}
    assert set(space["parameters"]) == set(PARAMETER_RANGES)


def test_params_round_trip_and_immutability():
    values = params(erode_dilate=-3, open_close=2, merge_area=0.25, split_threshold=0.7)
    p = PostprocessParams.from_mapping(values)
    assert p.to_dict() == values
    assert PostprocessParams.from_mapping(p.to_dict()) == p
    assert PostprocessParams.zeros().to_dict() == dict.fromkeys(PARAMETER_RANGES, 0)
    with pytest.raises(ValueError):
        p.erode_dilate = 1  # frozen
    # numpy scalars, as search libraries hand them out, are accepted
    values = params(erode_dilate=np.int64(2), merge_area=np.float32(0.5))
    p2 = PostprocessParams.from_mapping(values)
    assert p2.erode_dilate == 2 and p2.merge_area == 0.5


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"erode_dilate": 11}, "'erode_dilate' = 11"),
        ({"open_close": -6}, "'open_close' = -6"),
        ({"erode_dilate": 1.5}, "'erode_dilate' = 1.5"),
        ({"merge_area": 1.01}, "'merge_area' = 1.01"),
        ({"split_sigma": -0.1}, "'split_sigma' = -0.1"),
        ({"split_threshold": float("nan")}, "'split_threshold' = nan"),
        ({"merge_continuity": True}, "'merge_continuity' = True"),
        ({"merge_smoothness": "high"}, "'merge_smoothness' = 'high'"),
        ({"splitting": 0.5}, "unknown post-processing parameter 'splitting'"),
    ],
)
def test_bad_parameters_name_the_key(change, fragment):
    with pytest.raises(AopError) as info:
        PostprocessParams.from_mapping(params(**change))
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=fragment.split("'")[1]):
        postprocess(np.ones((4, 4), int), None, params(**change))


def test_missing_parameter_names_the_key():
    values = dict(ZEROS)
    del values["merge_area"]
    with pytest.raises(AopError, match="'merge_area' is missing"):
        postprocess(np.ones((4, 4), int), None, values)


@pytest.mark.parametrize(
    ("labels", "image", "spacing", "fragment"),
    [
        (np.ones(4, int), None, None, "2D or 3D"),
        (np.full((4, 4), -1), None, None, "labels must be non-negative, found -1"),
        (np.full((4, 4), 0.5), None, None, "non-integral"),
        (np.ones((4, 4), int), np.ones((4, 5)), None, "shape (4, 5)"),
        (np.ones((4, 4), int), None, (1.0, 0.0), "positive"),
        (np.ones((4, 4, 4), int), None, (1.0, 1.0), "expected 3 values"),
    ],
)
def test_bad_inputs_are_one_line_errors(labels, image, spacing, fragment):
    with pytest.raises(AopError, match=re.escape(fragment)):
        postprocess(labels, image, ZEROS, spacing)


# -------------------------------------------------------------------------------------------------
# Identity
# -------------------------------------------------------------------------------------------------


def test_all_zero_is_the_identity_up_to_relabelling(nuclei_3d):
    image, labels = nuclei_3d
    labels = labels.astype(np.int64) * 3 + 5 * (labels > 0)  # arbitrary, non-consecutive values
    out = postprocess(labels, image, ZEROS, spacing=(2.0, 1.0, 1.0))
    expected, _ = relabel_consecutive(labels)
    np.testing.assert_array_equal(out, expected)
    assert out.max() == len(np.unique(labels)) - 1


def test_zero_category_is_skipped_exactly(nuclei_3d):
    image, labels = nuclei_3d
    spacing = (2.0, 1.0, 1.0)
    morph_only = postprocess(labels, image, params(erode_dilate=-1, open_close=1), spacing)
    direct = open_close(erode_dilate(labels, -1, spacing), 1, spacing)
    np.testing.assert_array_equal(morph_only, relabel_consecutive(direct)[0])
    merge_only = postprocess(labels, image, params(merge_smoothness=0.7), spacing)
    np.testing.assert_array_equal(merge_only, merge_instances(labels, image, 0, 0.7, 0, spacing))
    # split_sigma alone does nothing: theta_St = 0 skips splitting
    sigma_only = postprocess(labels, image, params(split_sigma=1.0), spacing)
    np.testing.assert_array_equal(sigma_only, relabel_consecutive(labels)[0])
    split_only = postprocess(labels, image, params(split_sigma=0.2, split_threshold=0.8), spacing)
    np.testing.assert_array_equal(split_only, split_instances(labels, 0.2, 0.8, spacing))


def test_every_category_on_real_nuclei_keeps_labels_consistent(nuclei_3d):
    image, labels = nuclei_3d
    values = params(
        erode_dilate=1,
        open_close=-1,
        merge_continuity=0.4,
        merge_smoothness=0.4,
        merge_area=0.4,
        split_sigma=0.3,
        split_threshold=0.8,
    )
    out = postprocess(labels, image, values, spacing=(2.0, 1.0, 1.0))
    assert out.max() < len(np.unique(labels)) - 1  # these weights merge many touching nuclei
    assert out.dtype == np.int32 and out.shape == labels.shape
    present = np.unique(out)
    np.testing.assert_array_equal(present, np.arange(len(present)))  # consecutive 0..N
    # merging and splitting relabel but never move the foreground that morphology left
    spacing = (2.0, 1.0, 1.0)
    morphology = open_close(erode_dilate(labels, 1, spacing), -1, spacing)
    np.testing.assert_array_equal(out > 0, morphology > 0)
    # merging only joins touching instances: every output label lies within one merged group
    merged = merge_instances(morphology, image, 0.4, 0.4, 0.4, spacing)
    pairs = np.unique(np.stack([merged.ravel(), out.ravel()]), axis=1)
    assert len(np.unique(pairs[1])) == pairs.shape[1]  # each output label has one merged parent


# -------------------------------------------------------------------------------------------------
# Morphology against scipy with an explicit ball
# -------------------------------------------------------------------------------------------------

SPACINGS = [(1.0, 1.0, 1.0), (2.5, 1.0, 1.0), (0.2837, 0.1268, 0.1268)]


@pytest.mark.parametrize("spacing", SPACINGS)
def test_erosion_and_dilation_equal_the_ball_reference(spacing):
    labels = random_instances((18, 30, 30), seed=1)
    foreground = labels > 0
    nearest, unique = nearest_instance_reference(labels, spacing)
    for radius in range(-10, 11):
        out = erode_dilate(labels, radius, spacing)
        if radius == 0:
            np.testing.assert_array_equal(out, labels)
            continue
        element = reference_ball(abs(radius), spacing)
        if radius < 0:
            kept = ndi.binary_erosion(foreground, element, border_value=1)
            np.testing.assert_array_equal(out, np.where(kept, labels, 0), err_msg=str(radius))
            continue
        grown = ndi.binary_dilation(foreground, element, border_value=0)
        np.testing.assert_array_equal(out > 0, grown, err_msg=str(radius))
        np.testing.assert_array_equal(out[foreground], labels[foreground])  # never overwrites
        new = grown & ~foreground & unique
        np.testing.assert_array_equal(out[new], nearest[new], err_msg=str(radius))


@pytest.mark.parametrize("spacing", SPACINGS)
def test_opening_and_closing_equal_the_ball_reference(spacing):
    labels = random_instances((18, 30, 30), seed=2)
    foreground = labels > 0
    nearest, unique = nearest_instance_reference(labels, spacing)
    for radius in range(-5, 6):
        out = open_close(labels, radius, spacing)
        if radius == 0:
            np.testing.assert_array_equal(out, labels)
            continue
        element = reference_ball(abs(radius), spacing)
        if radius < 0:
            eroded = ndi.binary_erosion(foreground, element, border_value=1)
            opened = ndi.binary_dilation(eroded, element, border_value=0)
            np.testing.assert_array_equal(out, np.where(opened, labels, 0), err_msg=str(radius))
            continue
        dilated = ndi.binary_dilation(foreground, element, border_value=0)
        closed = ndi.binary_erosion(dilated, element, border_value=1)
        np.testing.assert_array_equal(out > 0, closed, err_msg=str(radius))
        np.testing.assert_array_equal(out[foreground], labels[foreground])  # never overwrites
        new = closed & ~foreground & unique
        assert new.any()
        np.testing.assert_array_equal(out[new], nearest[new], err_msg=str(radius))


@pytest.mark.parametrize("spacing", SPACINGS[1:])
def test_binary_mask_operations_equal_the_ball_reference(spacing):
    mask = random_instances((16, 28, 28), seed=4) > 0
    for radius in (1, 3, 5):
        element = reference_ball(radius, spacing)
        eroded = ndi.binary_erosion(mask, element, border_value=1)
        dilated = ndi.binary_dilation(mask, element)
        np.testing.assert_array_equal(erode_mask(mask, radius, spacing), eroded)
        np.testing.assert_array_equal(dilate_mask(mask, radius, spacing), dilated)
        np.testing.assert_array_equal(
            open_mask(mask, radius, spacing), ndi.binary_dilation(eroded, element)
        )
        np.testing.assert_array_equal(
            close_mask(mask, radius, spacing),
            ndi.binary_erosion(dilated, element, border_value=1),
        )
        np.testing.assert_array_equal(ball(radius, spacing), element)


def test_morphology_in_2d_and_border_is_not_background():
    labels = np.zeros((12, 12), int)
    labels[:, :5] = 4  # touches the left border
    eroded = erode_dilate(labels, -2)
    assert eroded[:, :3].all() and not eroded[:, 3:].any()  # eats in only from the right
    dilated = erode_dilate(labels, 3)
    assert (dilated[:, :8] == 4).all() and not dilated[:, 8:].any()


def test_equidistant_voxels_go_to_the_smallest_label():
    labels = np.zeros((3, 9), int)
    labels[1, 2] = 8
    labels[1, 6] = 3  # voxel (1, 4) is 2 from both
    out = erode_dilate(labels, 2)
    assert out[1, 4] == 3 and out[1, 3] == 8 and out[1, 5] == 3
    assert (out[:, 2] == 8).all() and (out[:, 6] == 3).all()


def test_a_vanished_instance_is_gone():
    labels = np.zeros((15, 15, 15), int)
    labels[2:13, 2:8, 2:13] = 1
    labels[6, 11, 6] = 2  # a single voxel, separate
    out = erode_dilate(labels, -1)
    assert set(np.unique(out)) == {0, 1}
    assert set(np.unique(open_close(labels, -1))) == {0, 1}
    assert postprocess(labels, None, params(erode_dilate=-1)).max() == 1


def test_closing_fills_a_gap_between_fragments_without_overwriting():
    labels = np.zeros((20, 20, 30), int)
    labels[5:15, 5:15, 3:14] = 1
    labels[5:15, 5:15, 16:27] = 2  # a two-voxel gap between them
    out = open_close(labels, 2)
    np.testing.assert_array_equal(out[labels > 0], labels[labels > 0])
    assert (out[7:13, 7:13, 14] == 1).all() and (out[7:13, 7:13, 15] == 2).all()
