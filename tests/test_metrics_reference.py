"""Metrics against independent implementations and as properties over random label volumes.

- A brute-force IPQ / PQ / SEG written straight from the definitions, one mask per instance.
- ``stardist.matching.matching`` (TP, FP, FN, PQ, AP) on StarDist's real annotated 3D sample.
- ``py-ctcmetrics`` (the Cell Tracking Challenge SEG) on the same sample.
- Hypothesis: relabelling invariance (including huge uint64 labels), factors in [0, 1],
  IPQ == PQ without split annotations, in 2D and 3D.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import ndimage as ndi

from aop.metrics import (
    average_precision,
    evaluate,
    ipq,
    overlap_table,
    panoptic_quality,
    seg,
)

# --------------------------------------------------------------------------------------------------
# Brute-force references: one boolean mask per instance, no shared code with aop.metrics
# --------------------------------------------------------------------------------------------------


def _labels(a: np.ndarray) -> list[int]:
    return [int(v) for v in np.unique(a) if v != 0]


def ipq_reference(gt: np.ndarray, pred: np.ndarray, tau: float = 0.5) -> dict:
    gt_ids, pred_ids = _labels(gt), _labels(pred)
    owner = {}
    for p in pred_ids:
        p_mask = pred == p
        best, best_count = None, 0
        for g in gt_ids:  # ascending: a tie keeps the smaller label
            count = int(np.sum(p_mask & (gt == g)))
            if count > best_count:
                best, best_count = g, count
        if best is not None and best_count / p_mask.sum() > 0.5:
            owner[p] = best
    tp_ious, fragments_of_tp, extra = [], 0, 0
    for g in gt_ids:
        fragments = [p for p, o in owner.items() if o == g]
        extra += max(0, len(fragments) - 1)
        if not fragments:
            continue
        union_of_fragments = np.isin(pred, fragments)
        g_mask = gt == g
        iou = np.sum(union_of_fragments & g_mask) / np.sum(union_of_fragments | g_mask)
        if iou > tau:
            tp_ious.append(iou)
            fragments_of_tp += len(fragments)
    tp = len(tp_ious)
    fp, fn = len(pred_ids) - fragments_of_tp, len(gt_ids) - tp
    if not gt_ids and not pred_ids:
        sq = rq = 1.0
    else:
        sq = sum(tp_ious) / tp if tp else 0.0
        rq = tp / (tp + fp / 2 + fn / 2)
    iq = len(gt_ids) / (len(gt_ids) + extra) if gt_ids else 1.0
    return {"ipq": sq * rq * iq, "sq": sq, "rq": rq, "iq": iq, "tp": tp, "fp": fp, "fn": fn,
            "extra_fragments": extra}  # fmt: skip


def pq_reference(gt: np.ndarray, pred: np.ndarray, tau: float = 0.5) -> dict:
    """One-to-one PQ for tau >= 0.5, where every pair with IoU > tau is a match."""
    ious = []
    for g in _labels(gt):
        for p in _labels(pred):
            a, b = gt == g, pred == p
            iou = np.sum(a & b) / np.sum(a | b)
            if iou > tau:
                ious.append(iou)
    tp = len(ious)
    fp, fn = len(_labels(pred)) - tp, len(_labels(gt)) - tp
    if tp + fp + fn == 0:
        return {"pq": 1.0, "tp": 0, "fp": 0, "fn": 0}
    return {"pq": sum(ious) / (tp + fp / 2 + fn / 2), "tp": tp, "fp": fp, "fn": fn}


def seg_reference(gt: np.ndarray, pred: np.ndarray) -> float:
    scores = []
    for g in _labels(gt):
        r = gt == g
        values, counts = np.unique(pred[r], return_counts=True)
        score = 0.0
        for v, c in zip(values, counts, strict=True):
            if v != 0 and c > r.sum() / 2:
                s = pred == v
                score = np.sum(r & s) / np.sum(r | s)
        scores.append(score)
    if not scores:
        return 1.0 if not _labels(pred) else 0.0
    return float(np.mean(scores))


# --------------------------------------------------------------------------------------------------
# Random label volumes
# --------------------------------------------------------------------------------------------------

SHAPES = hnp.array_shapes(min_dims=2, max_dims=3, min_side=1, max_side=9)


@st.composite
def label_pairs(draw, max_label: int = 6):
    """A random gt and a prediction that copies it (relabelled) except in a random region."""
    shape = draw(SHAPES)
    gt = draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, max_label)))
    noise = draw(hnp.arrays(np.uint8, shape, elements=st.integers(0, max_label)))
    keep = draw(hnp.arrays(np.bool_, shape))
    permutation = np.r_[0, 1 + np.asarray(draw(st.permutations(range(max_label))))]
    pred = np.where(keep, permutation[gt], noise).astype(np.uint8)
    return gt, pred


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
THRESHOLDS = st.sampled_from([0.5, 0.6, 0.75, 0.9])


@SETTINGS
@given(pair=label_pairs(), tau=THRESHOLDS)
def test_ipq_pq_seg_match_brute_force_references(pair, tau):
    gt, pred = pair
    result = ipq(gt, pred, iou_threshold=tau)
    expected = ipq_reference(gt, pred, tau)
    for key in ("tp", "fp", "fn", "extra_fragments"):
        assert getattr(result, key) == expected[key], key
    for key in ("ipq", "sq", "rq", "iq"):
        assert getattr(result, key) == pytest.approx(expected[key], abs=1e-12), key
    standard = panoptic_quality(gt, pred, iou_threshold=tau)
    expected_pq = pq_reference(gt, pred, tau)
    assert (standard.tp, standard.fp, standard.fn) == (
        expected_pq["tp"], expected_pq["fp"], expected_pq["fn"])  # fmt: skip
    assert standard.pq == pytest.approx(expected_pq["pq"], abs=1e-12)
    assert seg(gt, pred) == pytest.approx(seg_reference(gt, pred), abs=1e-12)


@st.composite
def bijection(draw, labels: np.ndarray):
    """Distinct random label values, up to 2**64 - 1, for the non-zero labels of ``labels``."""
    ids = _labels(labels)
    values = draw(st.lists(st.integers(1, 2**64 - 1), min_size=len(ids), max_size=len(ids),
                           unique=True))  # fmt: skip
    out = np.zeros(labels.shape, np.uint64)
    for old, new in zip(ids, values, strict=True):
        out[labels == old] = new
    return out


@SETTINGS
@given(data=st.data(), pair=label_pairs(), tau=THRESHOLDS)
def test_scores_are_invariant_to_relabelling(data, pair, tau):
    gt, pred = pair
    before = evaluate(gt, pred, iou_threshold=tau)
    after = evaluate(data.draw(bijection(gt)), data.draw(bijection(pred)), iou_threshold=tau)
    assert after == pytest.approx(before, abs=1e-12)


@SETTINGS
@given(
    pair=label_pairs(),
    tau=st.floats(0.0, 1.0),
    weights=st.tuples(*[st.floats(0.0, 1.0)] * 3),
)
def test_factors_lie_in_the_unit_interval(pair, tau, weights):
    result = ipq(*pair, iou_threshold=tau, weights=weights)
    for value in (result.ipq, result.sq, result.rq, result.iq):
        assert 0.0 <= value <= 1.0
    assert result.ipq <= min(result.sq, result.rq, result.iq) + 1e-12
    assert result.tp + result.fn == result.n_gt
    assert 0 <= result.fp <= result.n_pred
    scores = evaluate(*pair, iou_threshold=tau)
    for key in ("pq", "ap", "map", "seg"):
        assert 0.0 <= scores[key] <= 1.0


@SETTINGS
@given(pair=label_pairs(), tau=THRESHOLDS)
def test_ipq_equals_pq_without_split_annotations(pair, tau):
    gt, pred = pair
    result = ipq(gt, pred, iou_threshold=tau)
    standard = panoptic_quality(gt, pred, iou_threshold=tau)
    if result.extra_fragments == 0:
        assert (result.tp, result.fp, result.fn) == (standard.tp, standard.fp, standard.fn)
        assert result.sq == pytest.approx(standard.sq, abs=1e-12)
        assert result.ipq == pytest.approx(standard.pq, abs=1e-12)
        assert result.iq == 1.0
    else:
        assert result.iq < 1.0


def test_ipq_equals_pq_on_3d_blobs_without_splits():
    """The same property on a deterministic 3D case with real blobs (dilated / eroded objects)."""
    rng = np.random.default_rng(3)
    gt = np.zeros((12, 40, 40), np.uint16)
    centres = rng.integers(4, 36, size=(12, 3))
    centres[:, 0] = rng.integers(2, 10, size=12)
    for i, (z, y, x) in enumerate(centres, start=1):
        zz, yy, xx = np.ogrid[:12, :40, :40]
        gt[((zz - z) / 2) ** 2 + ((yy - y) / 5) ** 2 + ((xx - x) / 5) ** 2 <= 1] = i
    pred = ndi.grey_dilation(gt, size=(1, 3, 3))
    result = ipq(gt, pred)
    assert result.extra_fragments == 0
    assert result.ipq == pytest.approx(panoptic_quality(gt, pred).pq, abs=1e-12)


# --------------------------------------------------------------------------------------------------
# StarDist and the Cell Tracking Challenge on a real annotated 3D sample
# --------------------------------------------------------------------------------------------------


def perturb(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A plausible prediction: eroded, dilated, shifted, dropped and split nuclei, and extras."""
    rng = np.random.default_rng(seed)
    out = np.zeros(labels.shape, np.uint32)
    next_label = 1000
    for i, lab in enumerate(_labels(labels)):
        mask = labels == lab
        action = i % 6
        if action == 1:
            mask = ndi.binary_erosion(mask)
        elif action == 2:
            mask = ndi.binary_dilation(mask) & ((labels == 0) | mask)
        elif action == 3:
            continue  # missed nucleus
        elif action == 4:
            mask = np.roll(mask, int(rng.integers(1, 4)), axis=2)
        if action == 5:  # split along y through the centre
            y_centre = int(np.round(np.nonzero(mask)[1].mean()))
            upper = mask.copy()
            upper[:, y_centre:, :] = False
            out[mask & ~upper] = next_label
            out[upper] = next_label + 1
            next_label += 2
        else:
            out[mask] = next_label
            next_label += 1
    for z, y, x in rng.integers((2, 5, 5), np.array(labels.shape) - (2, 5, 5), size=(5, 3)):
        ball = np.zeros(labels.shape, bool)
        ball[z - 1 : z + 2, y - 3 : y + 4, x - 3 : x + 4] = True
        out[ball & (labels == 0) & (out == 0)] = next_label
        next_label += 1
    return out


@pytest.fixture(scope="module")
def nuclei_pair(nuclei_3d):
    _, labels = nuclei_3d
    return labels, perturb(labels)


@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.5, 0.55, 0.7, 0.9])
def test_pq_and_ap_agree_with_stardist_matching(nuclei_pair, threshold):
    from stardist.matching import matching

    gt, pred = nuclei_pair
    # stardist counts IoU >= t, we count IoU > t: the comparison is valid when no pair ties.
    assert not np.any(overlap_table(gt, pred).pair_iou() == threshold)
    reference = matching(gt, pred, thresh=threshold)  # IoUs in float32: compare to 1e-6
    ours = panoptic_quality(gt, pred, iou_threshold=threshold)
    assert (ours.tp, ours.fp, ours.fn) == (reference.tp, reference.fp, reference.fn)
    assert ours.pq == pytest.approx(reference.panoptic_quality, abs=1e-6)
    assert ours.sq == pytest.approx(reference.mean_matched_score, abs=1e-6)
    ap = average_precision(gt, pred, thresholds=(threshold,))
    assert ap.ap[0] == pytest.approx(reference.accuracy, abs=1e-6)
    assert 0 < ours.tp < ours.n_gt  # a real mix of matches and misses


def test_ipq_on_the_real_sample_matches_brute_force(nuclei_pair):
    gt, pred = nuclei_pair
    result = ipq(gt, pred)
    expected = ipq_reference(gt, pred)
    assert result.extra_fragments == expected["extra_fragments"] > 0
    assert (result.tp, result.fp, result.fn) == (expected["tp"], expected["fp"], expected["fn"])
    assert result.ipq == pytest.approx(expected["ipq"], abs=1e-12)
    assert result.ipq < panoptic_quality(gt, pred).pq or result.iq < 1.0


def test_seg_agrees_with_py_ctcmetrics(nuclei_pair, tmp_path):
    import tifffile
    from ctc_metrics.metrics.technical.seg import seg as ctc_seg
    from ctc_metrics.utils.representations import match

    gt, pred = nuclei_pair
    tifffile.imwrite(tmp_path / "man_seg000.tif", gt.astype(np.uint32))
    tifffile.imwrite(tmp_path / "mask000.tif", pred.astype(np.uint32))
    labels_ref, _, _, _, ious = match(f"{tmp_path}/man_seg000.tif", f"{tmp_path}/mask000.tif")
    expected = ctc_seg([labels_ref], [ious])
    assert 0.3 < expected < 0.95
    assert seg(gt, pred) == pytest.approx(expected, abs=1e-9)
