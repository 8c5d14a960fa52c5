"""IPQ, PQ, AP and SEG: the spec's worked examples, empty cases, validation, the overlap table."""

from __future__ import annotations

import numpy as np
import pytest

from aop import metrics
from aop.errors import AopError
from aop.metrics import (
    average_precision,
    evaluate,
    ipq,
    ipq_from_overlaps,
    mean_scores,
    overlap_table,
    panoptic_quality,
    seg,
)


def _canvas() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((40, 60), np.uint16), np.zeros((40, 60), np.uint16)


def _perfect():
    gt, pred = _canvas()
    for i, x in enumerate((5, 20, 35), start=1):
        gt[5:15, x : x + 10] = i
        pred[5:15, x : x + 10] = 10 * i  # same objects, other label values
    return gt, pred


def _split_in_two():
    gt, pred = _canvas()
    gt[5:15, 5:15] = 1
    pred[5:15, 5:10] = 1
    pred[5:15, 10:15] = 2
    return gt, pred


def _split_in_three():
    gt, pred = _canvas()
    gt[5:15, 5:17] = 1  # 10 x 12 = 120 px
    for i in range(3):
        pred[5:15, 5 + 4 * i : 9 + 4 * i] = i + 1
    return gt, pred


def _merge():
    gt, pred = _canvas()
    gt[5:15, 5:15] = 1
    gt[5:15, 15:25] = 2
    pred[5:15, 5:25] = 1
    return gt, pred


def _hallucination_and_miss():
    gt, pred = _canvas()
    gt[5:15, 5:15] = 1
    gt[25:35, 5:15] = 2
    pred[5:15, 5:15] = 1
    pred[25:35, 40:50] = 2
    return gt, pred


def _too_small():
    gt, pred = _canvas()
    gt[5:15, 5:15] = 1
    pred[6:14, 6:14] = 1
    return gt, pred


# case, (TP, FP, FN, SQ, RQ, IQ, IPQ, standard PQ): the table of spec/IPQ.md
WORKED_EXAMPLES = {
    "perfect": (_perfect, (3, 0, 0, 1.0, 1.0, 1.0, 1.0, 1.0)),
    "split in two": (_split_in_two, (1, 0, 0, 1.0, 1.0, 0.5, 0.5, 0.0)),
    "split in three": (_split_in_three, (1, 0, 0, 1.0, 1.0, 1 / 3, 1 / 3, 0.0)),
    "merge": (_merge, (0, 1, 2, 0.0, 0.0, 1.0, 0.0, 0.0)),
    "hallucination + miss": (_hallucination_and_miss, (1, 1, 1, 1.0, 0.5, 1.0, 0.5, 0.5)),
    "too small": (_too_small, (1, 0, 0, 0.64, 1.0, 1.0, 0.64, 0.64)),
}


@pytest.mark.parametrize("case", WORKED_EXAMPLES)
def test_worked_examples_of_the_spec(case):
    make, (tp, fp, fn, sq, rq, iq, value, pq) = WORKED_EXAMPLES[case]
    gt, pred = make()
    result = ipq(gt, pred)
    assert (result.tp, result.fp, result.fn) == (tp, fp, fn)
    assert result.sq == pytest.approx(sq, abs=1e-12)
    assert result.rq == pytest.approx(rq, abs=1e-12)
    assert result.iq == pytest.approx(iq, abs=1e-12)
    assert result.ipq == pytest.approx(value, abs=1e-12)
    assert panoptic_quality(gt, pred).pq == pytest.approx(pq, abs=1e-12)
    # The same numbers in 3D: the 2D case stacked as a 4-slice volume.
    result_3d = ipq(np.stack([gt] * 4), np.stack([pred] * 4))
    assert result_3d.ipq == pytest.approx(value, abs=1e-12)


def test_split_counts_every_extra_fragment():
    gt, pred = _split_in_three()
    result = ipq(gt, pred)
    assert result.extra_fragments == 2
    assert (result.n_gt, result.n_pred) == (1, 3)
    standard = panoptic_quality(gt, pred)
    assert (standard.tp, standard.fp, standard.fn) == (0, 3, 1)


def test_weights_scale_each_factor():
    gt, pred = _hallucination_and_miss()
    result = ipq(gt, pred, weights=(0.5, 0.8, 1.0))
    assert result.ipq == pytest.approx(0.5 * 1.0 * 0.8 * 0.5 * 1.0 * 1.0)
    assert result.weights == (0.5, 0.8, 1.0)


def test_fragment_needs_more_than_half_inside_to_be_assigned():
    gt, pred = _canvas()
    gt[5:15, 5:15] = 1
    pred[5:15, 5:10] = 1  # the left half of gt 1
    pred[5:15, 10:19] = 2  # 50 px inside gt 1, 40 px outside: assigned
    result = ipq(gt, pred)
    assert (result.tp, result.fp, result.fn, result.extra_fragments) == (1, 0, 0, 1)
    assert result.sq == pytest.approx(100 / 140)
    pred[5:15, 19] = 2  # now exactly half outside: unassigned, gt 1 keeps IoU 0.5 -> FN
    result = ipq(gt, pred)
    assert (result.tp, result.fp, result.fn, result.extra_fragments) == (0, 2, 1, 0)


def test_fragment_goes_to_the_annotation_holding_most_of_it():
    gt, pred = _canvas()
    gt[0:10, 0:10] = 5
    gt[0:10, 10:20] = 9
    pred[0:10, 0:10] = 1  # exactly gt 5
    pred[0:10, 10:14] = 2  # inside gt 9
    pred[0:10, 14:20] = 3  # inside gt 9: two fragments, union == gt 9
    result = ipq(gt, pred)
    assert (result.tp, result.fp, result.fn, result.extra_fragments) == (2, 0, 0, 1)
    assert result.iq == pytest.approx(2 / 3)


def test_failed_annotation_makes_its_fragments_false_positives():
    gt, pred = _canvas()
    gt[0:20, 0:20] = 1  # 400 px
    pred[0:5, 0:10] = 1  # two 50 px fragments inside: union IoU 100/400 = 0.25
    pred[10:15, 0:10] = 2
    result = ipq(gt, pred)
    assert (result.tp, result.fp, result.fn, result.extra_fragments) == (0, 2, 1, 1)
    assert result.iq == pytest.approx(0.5)
    assert result.ipq == 0.0


def test_threshold_is_strict():
    gt, pred = _canvas()
    gt[0:10, 0:10] = 1
    pred[0:10, 0:6] = 1  # IoU 0.6 exactly
    assert ipq(gt, pred, iou_threshold=0.6).tp == 0
    assert ipq(gt, pred, iou_threshold=0.59).tp == 1
    assert panoptic_quality(gt, pred, iou_threshold=0.6).tp == 0
    assert average_precision(gt, pred, thresholds=(0.55, 0.6)).ap == (1.0, 0.0)


# --------------------------------------------------------------------------------------------------
# Empty cases
# --------------------------------------------------------------------------------------------------


def test_empty_volumes_score_perfectly():
    empty = np.zeros((4, 5, 6), np.uint8)
    result = ipq(empty, empty)
    assert (result.ipq, result.sq, result.rq, result.iq) == (1.0, 1.0, 1.0, 1.0)
    assert panoptic_quality(empty, empty).pq == 1.0
    assert average_precision(empty, empty).mean == 1.0
    assert seg(empty, empty) == 1.0


def test_no_annotations_but_predictions():
    gt = np.zeros((10, 10), np.uint8)
    pred = gt.copy()
    pred[2:4, 2:4] = 3
    result = ipq(gt, pred)
    assert (result.ipq, result.sq, result.rq, result.iq) == (0.0, 0.0, 0.0, 1.0)
    assert (result.tp, result.fp, result.fn) == (0, 1, 0)
    assert panoptic_quality(gt, pred).pq == 0.0
    assert average_precision(gt, pred).mean == 0.0
    assert seg(gt, pred) == 0.0


def test_annotations_but_no_predictions():
    pred = np.zeros((10, 10), np.uint8)
    gt = pred.copy()
    gt[2:4, 2:4] = 1
    gt[6:8, 6:8] = 2
    result = ipq(gt, pred)
    assert (result.ipq, result.sq, result.rq, result.iq) == (0.0, 0.0, 0.0, 1.0)
    assert (result.tp, result.fp, result.fn) == (0, 0, 2)
    assert seg(gt, pred) == 0.0


def test_zero_size_arrays():
    assert ipq(np.zeros((0, 5), np.uint8), np.zeros((0, 5), np.uint8)).ipq == 1.0


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gt", "pred", "message"),
    [
        (np.zeros((4, 4), int), np.zeros((4, 5), int), "pred: shape (4, 5) does not match gt"),
        (np.zeros((4, 4), int), np.zeros((2, 4, 4), int), "does not match gt shape"),
        (np.full((3, 3), -1), np.zeros((3, 3), int), "gt: labels must be non-negative, found -1"),
        (np.zeros((3, 3)), np.full((3, 3), 0.5), "pred: labels must be integers"),
        (np.zeros((3, 3)), np.full((3, 3), np.nan), "pred: labels must be finite"),
        (np.zeros((3, 3), complex), np.zeros((3, 3), int), "gt: labels must be an integer array"),
        (np.array(["a"]), np.array(["b"]), "gt: labels must be an integer array"),
        (np.zeros(5, int), np.zeros(5, int), "gt: expected a 2D or 3D label array, got 1D"),
        (np.zeros((1, 2, 2, 2), int), np.zeros((1, 2, 2, 2), int), "got 4D"),
    ],
)
def test_invalid_inputs_raise_one_clear_error(gt, pred, message):
    with pytest.raises(AopError, match="^[^\n]+$") as info:
        ipq(gt, pred)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_integral_floats_and_bools_are_labels():
    gt, pred = _too_small()
    assert ipq(gt.astype(np.float32), pred.astype(np.float64)).ipq == pytest.approx(0.64)
    assert ipq(gt.astype(bool), pred.astype(bool)).ipq == pytest.approx(0.64)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"iou_threshold": 1.5}, "iou_threshold"),
        ({"iou_threshold": -0.1}, "iou_threshold"),
        ({"iou_threshold": "high"}, "iou_threshold"),
        ({"weights": (1.0, 1.0)}, "weights"),
        ({"weights": (1.0, 1.2, 1.0)}, "weights"),
        ({"weights": (1.0, -0.1, 1.0)}, "weights"),
    ],
)
def test_invalid_parameters(kwargs, message):
    gt, pred = _perfect()
    with pytest.raises(AopError, match=message):
        ipq(gt, pred, **kwargs)


def test_invalid_ap_thresholds():
    gt, pred = _perfect()
    with pytest.raises(AopError, match="thresholds"):
        average_precision(gt, pred, thresholds=())
    with pytest.raises(AopError, match="thresholds"):
        average_precision(gt, pred, thresholds=(0.5, 2.0))


# --------------------------------------------------------------------------------------------------
# Overlap table
# --------------------------------------------------------------------------------------------------


def test_overlap_table_counts_sizes_and_intersections():
    gt = np.array([[1, 1, 0, 2], [1, 1, 0, 2], [0, 0, 0, 0]], np.uint8)
    pred = np.array([[7, 0, 0, 3], [7, 7, 3, 3], [0, 0, 3, 0]], np.uint32)
    table = overlap_table(gt, pred)
    assert table.gt_labels.tolist() == [1, 2]
    assert table.pred_labels.tolist() == [3, 7]
    assert table.gt_sizes.tolist() == [4, 2]
    assert table.pred_sizes.tolist() == [4, 3]
    pairs = {
        (int(table.gt_labels[g]), int(table.pred_labels[p])): int(c)
        for g, p, c in zip(table.gt_index, table.pred_index, table.intersections, strict=True)
    }
    assert pairs == {(1, 7): 3, (2, 3): 2}
    iou = dict(zip(pairs, table.pair_iou(), strict=True))
    assert iou[(1, 7)] == pytest.approx(3 / 4)
    assert iou[(2, 3)] == pytest.approx(2 / 4)


def _same_table(a, b):
    for name in ("gt_labels", "pred_labels", "gt_sizes", "pred_sizes"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert _pairs(a) == _pairs(b)


def _pairs(table) -> set[tuple[int, int, int]]:
    columns = (table.gt_index.tolist(), table.pred_index.tolist(), table.intersections.tolist())
    return set(zip(*columns, strict=True))


def test_all_counting_paths_agree(monkeypatch):
    """Dense bincount, renumbered dense, sparse unique and small chunks give the same table."""
    rng = np.random.default_rng(7)
    gt = rng.integers(0, 40, size=(6, 30, 30)).astype(np.uint32)
    pred = rng.integers(0, 40, size=(6, 30, 30)).astype(np.uint16)
    reference = overlap_table(gt, pred)
    assert reference.intersections.sum() == np.count_nonzero((gt > 0) & (pred > 0))
    # Huge label values force renumbering (labels > 2**32 would overflow a 32-bit shifted key).
    big = np.where(gt > 0, gt.astype(np.uint64) + np.uint64(2**62), 0).astype(np.uint64)
    big_table = overlap_table(big, pred)
    np.testing.assert_array_equal(big_table.gt_labels, reference.gt_labels + np.uint64(2**62))
    np.testing.assert_array_equal(big_table.gt_sizes, reference.gt_sizes)
    assert ipq_from_overlaps(big_table).ipq == ipq_from_overlaps(reference).ipq
    big_pred = np.where(pred > 0, pred.astype(np.uint64) * np.uint64(2**40), 0).astype(np.uint64)
    for a, b in ((gt, big_pred), (big, big_pred)):  # only pred renumbered; both renumbered
        table = overlap_table(a, b)
        np.testing.assert_array_equal(table.pred_labels, reference.pred_labels * np.uint64(2**40))
        assert _pairs(table) == _pairs(reference)
    monkeypatch.setattr(metrics, "_CHUNK", 1000)
    _same_table(overlap_table(gt, pred), reference)
    monkeypatch.setattr(metrics, "_DENSE_BINS", 100)  # sparse path in chunks of 1000 voxels
    _same_table(overlap_table(gt, pred), reference)


def test_large_uint64_labels_give_the_same_scores():
    gt, pred = _split_in_three()
    huge = np.where(pred > 0, np.uint64(2**64 - 1) - pred.astype(np.uint64), 0).astype(np.uint64)
    assert ipq(gt, huge) == ipq(gt, pred)


# --------------------------------------------------------------------------------------------------
# PQ matching below 0.5, AP, SEG, evaluate and means
# --------------------------------------------------------------------------------------------------


def test_low_threshold_matching_maximises_the_number_of_matches():
    # pred 1 overlaps gt 1 and gt 2; pred 2 overlaps only gt 1. A greedy best-IoU matching
    # would pair (gt 1, pred 1) and leave two objects unmatched; the optimum pairs both.
    gt = np.zeros((10, 40), np.uint8)
    pred = np.zeros((10, 40), np.uint8)
    gt[0:10, 0:10] = 1
    gt[0:10, 10:20] = 2
    pred[0:10, 3:14] = 1  # IoU with gt 1: 70/140 = 0.5, with gt 2: 40/170
    pred[0:10, 0:3] = 2  # IoU with gt 1: 30/100
    result = panoptic_quality(gt, pred, iou_threshold=0.2)
    assert (result.tp, result.fp, result.fn) == (2, 0, 0)
    assert result.sq == pytest.approx((40 / 170 + 30 / 100) / 2)
    assert panoptic_quality(gt, pred, iou_threshold=0.45).tp == 1


def test_average_precision_per_threshold():
    gt, pred = _too_small()  # IoU 0.64
    result = average_precision(gt, pred)
    assert result.thresholds == pytest.approx([0.5 + 0.05 * i for i in range(10)])
    assert result.ap == (1.0, 1.0, 1.0) + (0.0,) * 7
    assert result.mean == pytest.approx(0.3)
    assert result.at(0.6) == 1.0 and result.at(0.65) == 0.0
    assert (result.tp[3], result.fp[3], result.fn[3]) == (0, 1, 1)
    with pytest.raises(AopError, match="0.42"):
        result.at(0.42)


def test_seg_ignores_false_positives_and_uses_reference_coverage():
    gt, pred = _canvas()
    gt[0:10, 0:10] = 1
    gt[20:30, 0:10] = 2
    pred[0:10, 0:6] = 4  # covers 60 % of gt 1: Jaccard 0.6
    pred[20:30, 0:5] = 5  # covers exactly half of gt 2: no match
    pred[30:40, 40:50] = 6  # false positive: not penalised
    assert seg(gt, pred) == pytest.approx((0.6 + 0.0) / 2)
    # A large prediction that covers an object counts, even with IoU <= 0.5.
    big = np.zeros_like(gt)
    big[0:10, 0:30] = 1
    assert seg(gt[:, :20], big[:, :20]) == pytest.approx((100 / 200 + 0) / 2)


def test_evaluate_matches_the_individual_metrics():
    gt, pred = _hallucination_and_miss()
    scores = evaluate(gt, pred, iou_threshold=0.5)
    assert scores["ipq"] == ipq(gt, pred).ipq
    assert scores["pq"] == panoptic_quality(gt, pred).pq
    assert scores["ap"] == average_precision(gt, pred, (0.5,)).ap[0] == pytest.approx(1 / 3)
    assert scores["map"] == average_precision(gt, pred).mean
    assert scores["seg"] == seg(gt, pred) == 0.5
    assert (scores["tp"], scores["fp"], scores["fn"], scores["n_gt"]) == (1, 1, 1, 2)


def test_mean_scores_averages_volumes():
    results = [ipq(*_perfect()), ipq(*_split_in_two()), ipq(*_merge())]
    mean = mean_scores(results)
    assert mean["ipq"] == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    assert mean["iq"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    assert mean["tp"] == pytest.approx((3 + 1 + 0) / 3)
    assert "iou_threshold" not in mean and "weights" not in mean
    rows = [{"name": "a", "ipq": 0.2}, {"name": "b", "ipq": 0.4}]
    assert mean_scores(rows) == {"ipq": pytest.approx(0.3)}
    with pytest.raises(AopError, match="empty"):
        mean_scores([])
    with pytest.raises(AopError, match=r"results\[1\]: missing score 'ipq'"):
        mean_scores([{"ipq": 1.0}, {"pq": 1.0}])


def test_as_dict_is_plain_json():
    import json

    result = ipq(*_split_in_two())
    data = json.loads(json.dumps(result.as_dict()))
    assert data["ipq"] == 0.5 and data["extra_fragments"] == 1 and data["weights"] == [1, 1, 1]
    ap = average_precision(*_too_small())
    assert json.loads(json.dumps(ap.as_dict()))["ap"][:3] == [1.0, 1.0, 1.0]
