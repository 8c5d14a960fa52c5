"""The product's premise: each post-processing category repairs the error it is meant for.

Ground truth comes from the synthetic benchmark (:func:`aop.synth.simulate`); a seeded damage
generator introduces one kind of error; the matching category must raise IPQ against the ground
truth, and the identity must leave it where it was.
"""

from __future__ import annotations

import numpy as np
import pytest

from aop.errors import AopError
from aop.metrics import ipq
from aop.segmentation.postprocess import PostprocessParams, postprocess
from aop.synth import simulate
from aop.synth.damage import damage_labels

ZEROS = PostprocessParams.zeros().to_dict()
SPACING = (2.0, 1.0, 1.0)


@pytest.fixture(scope="module")
def benchmark():
    image, labels = simulate(
        (24, 96, 96), spacing=SPACING, seed=3, n_objects=40, touching_fraction=0.5
    )
    return image, labels


@pytest.mark.parametrize(
    ("kind", "repair"),
    [
        ("shrink", {"erode_dilate": 2}),
        ("grow", {"erode_dilate": -2}),
        ("split", {"merge_smoothness": 0.6}),
        ("split", {"merge_continuity": 0.3, "merge_smoothness": 0.3}),
        ("merge", {"split_sigma": 0.2, "split_threshold": 0.95}),
    ],
)
def test_matching_category_raises_ipq(benchmark, kind, repair):
    image, truth = benchmark
    damaged = damage_labels(truth, kind, fraction=1.0, amount=2, seed=1, spacing=SPACING)
    before = ipq(truth, damaged).ipq
    unchanged = ipq(truth, postprocess(damaged, image, ZEROS, SPACING)).ipq
    after = ipq(truth, postprocess(damaged, image, {**ZEROS, **repair}, SPACING)).ipq
    assert unchanged == pytest.approx(before)
    assert before < 0.8
    assert after > before + 0.05, (kind, repair, before, after)


def test_wrong_category_does_not_repair(benchmark):
    image, truth = benchmark
    shrunk = damage_labels(truth, "shrink", amount=2, seed=1, spacing=SPACING)
    before = ipq(truth, shrunk).ipq
    eroded = postprocess(shrunk, image, {**ZEROS, "erode_dilate": -1}, SPACING)
    assert ipq(truth, eroded).ipq <= before


def test_damage_is_seeded_and_does_what_it_says(benchmark):
    _, truth = benchmark
    n = int(truth.max())
    fg = truth > 0
    shrunk = damage_labels(truth, "shrink", fraction=0.5, amount=1, seed=4, spacing=SPACING)
    np.testing.assert_array_equal(
        shrunk, damage_labels(truth, "shrink", fraction=0.5, amount=1, seed=4, spacing=SPACING)
    )
    assert shrunk.max() == n and np.all(fg[shrunk > 0]) and (shrunk > 0).sum() < fg.sum()
    grown = damage_labels(truth, "grow", fraction=0.5, amount=1, seed=4, spacing=SPACING)
    assert grown.max() == n and np.all(grown[fg] > 0) and (grown > 0).sum() > fg.sum()
    split = damage_labels(truth, "split", fraction=0.5, seed=4)
    assert split.max() == n + round(0.5 * n)
    np.testing.assert_array_equal(split > 0, fg)
    merged = damage_labels(truth, "merge", fraction=0.5, seed=4)
    assert n - round(0.5 * n) // 2 <= merged.max() < n
    np.testing.assert_array_equal(merged > 0, fg)
    with pytest.raises(AopError, match="unknown 'blur'"):
        damage_labels(truth, "blur")
    with pytest.raises(AopError, match="fraction"):
        damage_labels(truth, "split", fraction=1.5)
