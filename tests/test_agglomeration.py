"""Average-linkage agglomeration (PlantSeg's GASP) and the stacked watershed."""

from __future__ import annotations

import numpy as np
import pytest

from aop.metrics import ipq
from aop.segmentation.agglomeration import agglomerate_average, boundary_edges
from aop.segmentation.instances import distance_watershed


def _three_regions(ab: float, ac: float, bc: float) -> tuple[np.ndarray, np.ndarray]:
    """Regions 1 | 2 side by side along x, region 3 below both along y; face values given."""
    labels = np.zeros((1, 8, 8), dtype=np.int32)
    labels[0, :4, :4], labels[0, :4, 4:], labels[0, 4:, :] = 1, 2, 3
    boundary = np.zeros(labels.shape)
    boundary[0, :4, 3:5] = ab  # the two columns either side of the 1|2 face
    boundary[0, 3:5, :4] = ac
    boundary[0, 3:5, 4:] = bc
    boundary[0, 3:5, 3:5] = 0.5 * (ac + bc)  # the corner is shared; keep it between
    return labels, boundary


def test_boundary_edges_sum_the_mean_of_both_voxels_per_face():
    labels = np.array([[[1, 1, 2, 2]]])
    boundary = np.array([[[0.0, 0.2, 0.6, 0.0]]])
    pairs, sums, counts = boundary_edges(labels, boundary)
    assert pairs.tolist() == [[1, 2]] and counts.tolist() == [1]
    assert sums[0] == pytest.approx(0.4)
    labels = np.zeros((2, 3, 3), dtype=np.int32)
    labels[0], labels[1] = 1, 2  # one z-face of 9 voxel pairs
    pairs, sums, counts = boundary_edges(labels, np.full(labels.shape, 0.3))
    assert pairs.tolist() == [[1, 2]] and counts.tolist() == [9]
    assert sums[0] == pytest.approx(2.7)
    with pytest.raises(ValueError, match="differ in shape"):
        boundary_edges(labels, np.zeros((2, 3)))


def test_weak_faces_merge_and_strong_ones_stay():
    labels, boundary = _three_regions(ab=0.1, ac=0.9, bc=0.9)
    out = agglomerate_average(labels, boundary, beta=0.5)
    assert out.max() == 2
    assert len(np.unique(out[labels <= 2])) == 1 and (out[labels == 3] != out[0, 0, 0]).all()
    assert agglomerate_average(labels, boundary, beta=0.05).max() == 3
    assert agglomerate_average(labels, boundary, beta=1.0).max() == 1


def test_average_linkage_pools_the_faces_of_merged_regions():
    # 1-2 merge first (0.1); 1-3 alone (0.3) would merge next, but pooled with 2-3 (0.9) the
    # merged region's mean towards 3 is about 0.6, above beta: 3 stays apart
    labels, boundary = _three_regions(ab=0.1, ac=0.3, bc=0.9)
    out = agglomerate_average(labels, boundary, beta=0.5)
    assert out.max() == 2 and out[0, 0, 0] == out[0, 0, 7] != out[0, 7, 0]
    # one weak spot on a strong face does not merge (single linkage would)
    labels = np.zeros((1, 4, 8), dtype=np.int32)
    labels[0, :, :4], labels[0, :, 4:] = 1, 2
    boundary = np.full(labels.shape, 0.9)
    boundary[0, 0, 3:5] = 0.0
    assert agglomerate_average(labels, boundary, beta=0.5).max() == 2
    assert agglomerate_average(labels, boundary, beta=0.8).max() == 1  # mean 0.675


def test_raising_beta_never_gives_more_instances():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.repeat(rng.integers(1, 30, (4, 6, 6)), 3, axis=1), 3, axis=2)
    boundary = rng.random(labels.shape)
    betas = np.linspace(0, 1, 11)
    counts = [int(agglomerate_average(labels, boundary, beta=b).max()) for b in betas]
    assert counts == sorted(counts, reverse=True) and counts[0] > counts[-1]


def test_small_fragments_join_their_weakest_neighbour():
    labels = np.zeros((1, 6, 11), dtype=np.int32)
    labels[0, :, :4], labels[0, :, 5:9] = 1, 2
    labels[0, 2:4, 4] = 3  # a 2-voxel sliver between 1 and 2
    labels[0, 0, 10] = 4  # an isolated speck: background all round
    boundary = np.full(labels.shape, 0.9)
    boundary[0, :, 5] = 0.7  # the sliver is a little less separated from 2 than from 1
    out = agglomerate_average(labels, boundary, beta=0.5, min_size=3)
    assert out.max() == 3
    assert out[0, 2, 4] == out[0, 2, 6] != out[0, 2, 0]
    assert out[0, 0, 10] not in (0, out[0, 2, 0], out[0, 2, 6])
    assert agglomerate_average(labels, boundary, beta=0.5, min_size=0).max() == 4
    with pytest.raises(ValueError, match="beta"):
        agglomerate_average(labels, boundary, beta=1.5)


def test_stacked_watershed_then_agglomeration_rebuilds_3d_instances():
    z, y, x = np.indices((12, 40, 40))
    truth = np.zeros((12, 40, 40), dtype=np.int32)
    truth[((z - 6) / 5) ** 2 + ((y - 20) / 9) ** 2 + ((x - 11) / 9) ** 2 <= 1] = 1
    truth[((z - 6) / 5) ** 2 + ((y - 20) / 9) ** 2 + ((x - 30) / 9) ** 2 <= 1] = 2
    foreground = (truth > 0).astype(np.float32)
    # boundary map: high on each instance's surface and on the background, low inside
    from scipy import ndimage as ndi

    inner = ndi.binary_erosion(truth > 0, iterations=1) & (truth > 0)
    boundary = np.where(inner, 0.05, 0.95).astype(np.float32)
    spacing = (1.0, 1.0, 1.0)
    stacked = distance_watershed(
        foreground, boundary, spacing, stacked=True, min_size=5, seed_height=0.3
    )
    planes = [set(np.unique(stacked[k])) - {0} for k in range(stacked.shape[0])]
    assert all(not (planes[i] & planes[j]) for i in range(12) for j in range(i + 1, 12))
    assert stacked.max() > 2  # each slice labelled on its own
    joined = agglomerate_average(stacked, boundary, beta=0.5, min_size=20)
    assert joined.max() == 2 and ipq(truth, joined).ipq > 0.8
    whole = distance_watershed(foreground, boundary, spacing, min_size=5, seed_height=0.3)
    assert whole.max() == 2
