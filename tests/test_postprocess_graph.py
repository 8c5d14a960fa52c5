"""Merging over the adjacency graph and splitting by distance watershed."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import ndimage as ndi
from scipy.spatial import Delaunay

from aop.segmentation.postprocess import (
    adjacency_features,
    contact_graph,
    merge_instances,
    smoothness,
    split_instances,
)


def sphere(shape, center, radius):
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    return sum((g - c) ** 2 for g, c in zip(grids, center, strict=True)) <= radius**2


@pytest.fixture(scope="module")
def halves():
    """One evenly bright ball of radius 8 cut into two labels along x."""
    shape = (24, 24, 32)
    ball = sphere(shape, (12, 12, 14), 8)
    labels = np.zeros(shape, np.int32)
    labels[ball] = 3
    labels[ball & (np.arange(shape[2]) >= 14)] = 8
    image = np.where(ball, 100.0, 5.0)
    return labels, image


@pytest.fixture(scope="module")
def touching_balls():
    """Two evenly bright balls of radius 8 touching at a small patch."""
    shape = (24, 24, 44)
    first, second = sphere(shape, (12, 12, 12), 8), sphere(shape, (12, 12, 28.5), 8)
    labels = (first * 1 + second * 2).astype(np.int32)
    return labels, np.where(labels > 0, 100.0, 5.0)


def fragments(seed: int, shape=(20, 32, 32)) -> tuple[np.ndarray, np.ndarray]:
    """Blobby foreground cut into many touching fragments by nearest random seed."""
    rng = np.random.default_rng(seed)
    foreground = ndi.gaussian_filter(rng.random(shape), 2.0) > 0.48
    seeds = np.zeros(shape, np.int32)
    seeds[tuple(rng.integers(0, s, 40) for s in shape)] = np.arange(1, 41)
    index = ndi.distance_transform_edt(seeds == 0, return_distances=False, return_indices=True)
    labels = np.where(foreground, seeds[tuple(index)], 0)
    image = ndi.gaussian_filter(rng.random(shape), 1.0) * 50 + 100 * foreground
    return labels, image


# -------------------------------------------------------------------------------------------------
# Adjacency graph and features
# -------------------------------------------------------------------------------------------------


def test_contact_graph_counts_faces_like_a_brute_force_scan():
    labels, _ = fragments(3)
    pairs, faces, area, surface = contact_graph(labels)
    expected: dict[tuple[int, int], int] = {}
    boundary = np.zeros(labels.max() + 1)
    for axis in range(3):
        a = np.moveaxis(labels, axis, 0)[:-1].ravel()
        b = np.moveaxis(labels, axis, 0)[1:].ravel()
        for u, v in zip(a, b, strict=True):
            if u != v:
                boundary[u] += 1
                boundary[v] += 1
                if u and v:
                    key = (min(u, v), max(u, v))
                    expected[key] = expected.get(key, 0) + 1
    assert {(int(a), int(b)): int(f) for (a, b), f in zip(pairs, faces, strict=True)} == expected
    np.testing.assert_array_equal(area, faces)  # isotropic: area is the face count
    np.testing.assert_array_equal(surface[1:], boundary[1:])


def test_face_areas_follow_the_spacing():
    labels = np.zeros((4, 4, 4), np.int32)
    labels[:2] = 1
    labels[2:] = 2  # 16 faces across z
    pairs, faces, area, _ = contact_graph(labels, spacing=(3.0, 0.5, 1.0))
    assert pairs.tolist() == [[1, 2]] and faces.tolist() == [16]
    assert area[0] == pytest.approx(16 * 1.0 * 2.0)  # y and x sizes over the finest (0.5)


def test_halves_of_one_ball_look_like_one_object(halves):
    labels, image = halves
    table = adjacency_features(labels, image)
    assert table[["a", "b"]].values.tolist() == [[3, 8]]
    row = table.iloc[0]
    assert row.f_c == pytest.approx(1.0)
    assert row.f_s == pytest.approx(1.0)  # a digitised ball is digitally convex
    left = labels == 3
    cut = np.count_nonzero(left[:, :, :-1] & (labels[:, :, 1:] == 8))
    assert row.contact_faces == cut
    # the cut disk against the half's whole boundary; the voxel staircase makes it below 1/3
    assert 0.2 < row.f_r < 1 / 3


def test_touching_balls_have_a_neck_and_little_contact(touching_balls):
    labels, image = touching_balls
    row = adjacency_features(labels, image).iloc[0]
    assert 0.7 < row.f_s < 0.85  # two balls in their hull: 2 * (4/3) / (4/3 + 2) = 0.8
    assert row.f_r < 0.01
    assert row.f_c == pytest.approx(1.0)  # no dark gap in this image


def test_continuity_sees_a_dark_gap(touching_balls):
    labels, _ = touching_balls
    image = np.where(labels > 0, 100.0, 5.0)
    image[:, :, 19:22] = 20.0  # a dark band between the two centroids
    row = adjacency_features(labels, image).iloc[0]
    assert row.f_c == pytest.approx(0.2, abs=0.01)


def test_smoothness_counts_the_digital_convex_hull_exactly():
    rng = np.random.default_rng(7)
    for shape in [(9, 11, 7), (13, 6, 10), (25, 17), (12, 30)]:
        mask = ndi.gaussian_filter(rng.random(shape), 1.5) > 0.5
        points = np.argwhere(mask)
        grid = np.argwhere(np.ones(shape, bool))
        inside = np.count_nonzero(Delaunay(points).find_simplex(grid, tol=1e-9) >= 0)
        assert smoothness(mask) == pytest.approx(mask.sum() / inside)
    flat = np.zeros((5, 6, 7), bool)
    flat[2, 1:5, 1:3] = True
    flat[2, 1, 3:6] = True  # an L in one plane: 2D hull of the L
    assert smoothness(flat) == pytest.approx(11 / 14)  # hull rows hold 5, 4, 3 and 2 voxels


# -------------------------------------------------------------------------------------------------
# Merging decisions
# -------------------------------------------------------------------------------------------------


def test_halves_merge_through_continuity_alone_and_smoothness_alone(halves):
    labels, image = halves
    assert merge_instances(labels, image, 1.0, 0.0, 0.0).max() == 1
    assert merge_instances(labels, image, 0.0, 1.0, 0.0).max() == 1
    assert merge_instances(labels, image, 0.0, 0.0, 0.0).max() == 2
    assert merge_instances(labels, image, 0.0, 0.0, 1.0).max() == 2  # f_r ~ 0.26 < 0.5


def test_touching_balls_do_not_merge_by_area(touching_balls):
    labels, image = touching_balls
    assert merge_instances(labels, image, 0.0, 0.0, 1.0).max() == 2
    # smoothness with a weight that demands more convexity than a neck allows keeps them apart
    assert merge_instances(labels, image, 0.0, 0.6, 0.0).max() == 2
    assert merge_instances(labels, image, 0.0, 1.0, 0.0).max() == 1


def test_merging_is_transitive_and_keeps_voxels():
    labels = np.zeros((10, 10, 40), np.int32)
    for i in range(4):
        labels[2:8, 2:8, 2 + 9 * i : 11 + 9 * i] = i + 1  # a bar cut in four touching pieces
    image = np.ones(labels.shape)
    out = merge_instances(labels, image, 1.0, 0.0, 0.0)
    np.testing.assert_array_equal(out, (labels > 0).astype(np.int32))


def test_merge_needs_an_image_for_continuity(halves):
    labels, _ = halves
    with pytest.raises(ValueError, match="image"):
        merge_instances(labels, None, 0.6, 0.0, 0.0)
    assert merge_instances(labels, None, 0.0, 0.9, 0.0).max() == 1


def test_raising_any_weight_never_merges_less():
    labels, image = fragments(11)
    levels = (0.0, 0.3, 0.6, 1.0)
    results = {
        w: merge_instances(labels, image, *w) for w in itertools.product(levels, repeat=3)
    }
    counts = {w: int(r.max()) for w, r in results.items()}
    assert len(set(counts.values())) > 4  # the grid spans real differences
    for w, out in results.items():
        for axis in range(3):
            if w[axis] == levels[-1]:
                continue
            higher = list(w)
            higher[axis] = levels[levels.index(w[axis]) + 1]
            coarser = results[tuple(higher)]
            # every group at the lower weight lies inside one group at the higher weight
            pairs = np.unique(np.stack([out.ravel(), coarser.ravel()]), axis=1)
            assert len(np.unique(pairs[0])) == pairs.shape[1], (w, higher)


def test_lazy_smoothness_gives_the_same_decisions_as_the_full_table():
    labels, image = fragments(5)
    table = adjacency_features(labels, image)
    for weights in [(0.3, 0.3, 0.3), (0.0, 0.55, 0.2), (0.2, 0.4, 0.9)]:
        score = weights[0] * table.f_c + weights[1] * table.f_s + weights[2] * table.f_r
        groups = merge_instances(labels, image, *weights)
        a_group = groups[np.isin(labels, table.a)]
        assert a_group.size > 0
        for (a, b), merged in zip(table[["a", "b"]].values, score > 0.5, strict=True):
            same = np.unique(groups[labels == a])[0] == np.unique(groups[labels == b])[0]
            if merged:
                assert same, (weights, a, b)


# -------------------------------------------------------------------------------------------------
# Splitting
# -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dumbbell():
    shape = (24, 24, 56)
    ends = sphere(shape, (12, 12, 12), 8) | sphere(shape, (12, 12, 43), 8)
    z, y, x = np.ogrid[:24, :24, :56]
    neck = ((z - 12) ** 2 + (y - 12) ** 2 <= 4) & (x >= 12) & (x <= 43)
    return (ends | neck).astype(np.int32) * 5


@pytest.mark.parametrize("threshold", [0.7, 0.8, 0.9, 0.95])
def test_dumbbell_splits_into_its_two_balls(dumbbell, threshold):
    out = split_instances(dumbbell, 0.0, threshold)
    assert out.max() == 2
    np.testing.assert_array_equal(out > 0, dumbbell > 0)  # every voxel keeps a label
    assert len(np.unique(out[12, 12, 4:20])) == 1 and len(np.unique(out[12, 12, 36:52])) == 1
    assert out[12, 12, 12] != out[12, 12, 43]
    sizes = np.bincount(out.ravel())[1:]
    assert abs(int(sizes[0]) - int(sizes[1])) < 0.05 * sizes.sum()


def test_dumbbell_stays_whole_at_zero_and_with_low_thresholds(dumbbell):
    assert split_instances(dumbbell, 0.0, 0.0).max() == 1
    assert split_instances(dumbbell, 1.0, 0.0).max() == 1  # sigma alone does nothing
    assert split_instances(dumbbell, 0.0, 0.3).max() == 1  # the neck is above the marker level


def test_single_ball_never_splits():
    ball = sphere((24, 24, 24), (12, 12, 12), 8).astype(np.int32)
    for sigma in (0.0, 0.4, 1.0):
        for threshold in np.linspace(0.05, 1.0, 20):
            assert split_instances(ball, sigma, threshold).max() == 1, (sigma, threshold)


def test_split_is_per_instance_and_in_2d(dumbbell):
    # a dumbbell and a touching square in 2D: only the dumbbell splits, the square stays whole
    plane = dumbbell[12].copy()
    plane[:, 50:] = 9
    out = split_instances(plane, 0.0, 0.8)
    assert out.max() == 3
    assert len(np.unique(out[:, 50:])) == 1
    np.testing.assert_array_equal(out > 0, plane > 0)
