"""Instance segmentation metrics: IPQ, PQ, AP at IoU thresholds and the Cell Tracking Challenge SEG.

Every metric is derived from one :class:`OverlapTable`, built by a single linear pass over the
two label volumes (a joint histogram of ``(gt, pred)`` label pairs); no metric rescans the volume
per instance. Build the table once with :func:`overlap_table` and pass it to the ``*_from_overlaps``
functions to compute several metrics on the same pair of volumes, or call :func:`ipq`,
:func:`panoptic_quality`, :func:`average_precision`, :func:`seg` or :func:`evaluate` on arrays.

Injective Panoptic Quality (IPQ) follows the project's exact definition (``spec/IPQ.md``):
each predicted instance is assigned to the annotation holding the largest part of it (ties: the
smallest label) when that part is more than half of the prediction; an annotation is a true
positive when the union of its assigned fragments has IoU > ``iou_threshold`` with it;
``IQ = |G| / (|G| + sum_g max(0, n_g - 1))`` penalises every extra fragment once, and
``IPQ = (k1 SQ) (k2 RQ) (k3 IQ)``.

Conventions this module fixes where the spec leaves room:

- In the empty case with no annotations and no predictions, SQ = RQ = IQ = 1 and
  ``IPQ = k1 k2 k3`` (1 with the default weights); PQ, every AP and SEG are 1 there too. With no
  annotations but some predictions, PQ, AP and SEG are 0 (py-ctcmetrics returns 0 for SEG in both
  cases).
- Standard PQ and AP count a match when IoU > t (strictly, like IPQ, the DSB 2018 metric and
  torchmetrics; ``stardist.matching`` counts IoU >= t). For t >= 0.5 such matches are unique; for
  t < 0.5 the one-to-one matching maximises the number of matches, then the summed IoU.
- IoU values are float64 ratios of integer voxel counts, compared with ``iou_threshold`` as
  float64: an IoU exactly equal to the threshold (such as 50/100 against 0.5) is not a match.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import fastremap
import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from aop.errors import AopError
from aop.labels import as_label_array

__all__ = [
    "DEFAULT_AP_THRESHOLDS",
    "IPQ_SCORES",
    "APResult",
    "IPQResult",
    "OverlapTable",
    "PQResult",
    "ap_from_overlaps",
    "average_precision",
    "evaluate",
    "ipq",
    "ipq_from_overlaps",
    "mean_scores",
    "overlap_table",
    "panoptic_quality",
    "pq_from_overlaps",
    "seg",
    "seg_from_overlaps",
]

DEFAULT_AP_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))

# Largest joint histogram (in bins) counted densely with np.bincount; above it, labels are first
# renumbered to consecutive values and, if still too many, pairs are counted sparsely.
_DENSE_BINS = 1 << 24
# Voxels per chunk of the linear pass (bounds the temporary 64-bit key array to 128 MiB).
_CHUNK = 1 << 24


# --------------------------------------------------------------------------------------------------
# Overlap table
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OverlapTable:
    """Sizes of all instances and the sparse intersection counts between two label volumes.

    Attributes
    ----------
    gt_labels, pred_labels : ndarray of uint64
        Sorted non-zero label values present in ``gt`` and ``pred``.
    gt_sizes, pred_sizes : ndarray of int64
        Voxel count of each label, aligned with ``gt_labels`` / ``pred_labels``.
    gt_index, pred_index : ndarray of intp
        For every overlapping (non-zero, non-zero) pair, the positions of its labels in
        ``gt_labels`` and ``pred_labels``.
    intersections : ndarray of int64
        Voxel count of each pair's intersection.
    """

    gt_labels: np.ndarray
    pred_labels: np.ndarray
    gt_sizes: np.ndarray
    pred_sizes: np.ndarray
    gt_index: np.ndarray
    pred_index: np.ndarray
    intersections: np.ndarray

    @property
    def n_gt(self) -> int:
        """Number of annotated instances."""
        return int(self.gt_labels.size)

    @property
    def n_pred(self) -> int:
        """Number of predicted instances."""
        return int(self.pred_labels.size)

    def pair_iou(self) -> np.ndarray:
        """IoU of every overlapping pair, aligned with ``intersections``."""
        union = self.gt_sizes[self.gt_index] + self.pred_sizes[self.pred_index] - self.intersections
        return self.intersections / union


def _validate_pair(gt: Any, pred: Any) -> tuple[np.ndarray, np.ndarray]:
    gt = as_label_array(gt, "gt")
    pred = as_label_array(pred, "pred")
    if gt.shape != pred.shape:
        raise AopError(f"pred: shape {pred.shape} does not match gt shape {gt.shape}")
    if gt.ndim not in (2, 3):
        raise AopError(f"gt: expected a 2D or 3D label array, got {gt.ndim}D shape {gt.shape}")
    return gt, pred


def _compact(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Renumber labels to 0..n (0 stays 0); return the new array and new -> original values."""
    renumbered, mapping = fastremap.renumber(labels, preserve_zero=True, in_place=False)
    original = np.zeros(max(mapping.values(), default=0) + 1, dtype=np.uint64)
    original[np.fromiter(mapping.values(), np.int64, len(mapping))] = np.fromiter(
        mapping.keys(), np.uint64, len(mapping)
    )
    return renumbered, original


def _joint_counts(gt: np.ndarray, pred: np.ndarray, n_gt_values: int, n_pred_values: int):
    """Count voxels per ``key = gt * n_pred_values + pred`` in chunks; return (keys, counts)."""
    flat_gt, flat_pred = gt.reshape(-1), pred.reshape(-1)
    bins = n_gt_values * n_pred_values
    dense = bins <= _DENSE_BINS
    chunk = max(_CHUNK, bins) if dense else _CHUNK
    keys = np.empty(min(chunk, flat_gt.size), dtype=np.uint64)
    total = np.zeros(bins if dense else 0, dtype=np.int64)
    found_keys, found_counts = [np.zeros(0, np.uint64)], [np.zeros(0, np.int64)]
    for start in range(0, flat_gt.size, chunk):
        g = flat_gt[start : start + chunk]
        k = keys[: g.size]
        np.multiply(g, np.uint64(n_pred_values), out=k, dtype=np.uint64, casting="unsafe")
        np.add(k, flat_pred[start : start + chunk], out=k, dtype=np.uint64, casting="unsafe")
        if dense:
            total += np.bincount(k.view(np.int64), minlength=bins)
        else:
            values, counts = fastremap.unique(k, return_counts=True)
            found_keys.append(np.asarray(values, dtype=np.uint64))
            found_counts.append(np.asarray(counts, dtype=np.int64))
    if dense:
        present = np.flatnonzero(total)
        return present.astype(np.uint64), total[present]
    unique_keys, inverse = np.unique(np.concatenate(found_keys), return_inverse=True)
    counts = np.bincount(inverse, weights=np.concatenate(found_counts)).astype(np.int64)
    return unique_keys, counts


def overlap_table(gt: Any, pred: Any) -> OverlapTable:
    """Count instance sizes and pairwise intersections of two label volumes in one pass.

    A joint 64-bit key ``gt * (max(pred) + 1) + pred`` is histogrammed over the volume, in chunks
    that bound the memory used: densely with ``np.bincount`` when the label ranges allow, else after
    renumbering both volumes to consecutive labels (``fastremap.renumber``, so labels up to 2**64
    work), sparsely with ``fastremap.unique`` when even that gives more than 2**24 key values.

    Parameters
    ----------
    gt, pred : array_like of int
        Label arrays of the same 2D or 3D shape; 0 is background. Any non-negative integer labels
        (also uint64 and integral floats).

    Returns
    -------
    OverlapTable

    Raises
    ------
    AopError
        On different shapes, negative, non-integral or non-numeric labels, or arrays that are
        not 2D or 3D.
    """
    gt, pred = _validate_pair(gt, pred)
    gt_max = int(gt.max()) if gt.size else 0
    pred_max = int(pred.max()) if pred.size else 0
    gt_original = pred_original = None
    # Renumber the volume with the larger label range first, the other one only if still needed.
    for side in sorted(("gt", "pred"), key=lambda s: -(gt_max if s == "gt" else pred_max)):
        if (gt_max + 1) * (pred_max + 1) <= _DENSE_BINS:
            break
        if side == "gt":
            gt, gt_original = _compact(gt)
            gt_max = gt_original.size - 1
        else:
            pred, pred_original = _compact(pred)
            pred_max = pred_original.size - 1
    n_pred_values = pred_max + 1
    keys, counts = _joint_counts(gt, pred, gt_max + 1, n_pred_values)
    g = keys // np.uint64(n_pred_values)
    p = keys % np.uint64(n_pred_values)
    if gt_original is not None:
        g = gt_original[g.astype(np.intp)]
    if pred_original is not None:
        p = pred_original[p.astype(np.intp)]
    return _table_from_pairs(g, p, counts)


def _table_from_pairs(g: np.ndarray, p: np.ndarray, counts: np.ndarray) -> OverlapTable:
    """Build the table from the label values and voxel counts of all present (g, p) pairs."""
    in_gt, in_pred = g > 0, p > 0
    gt_labels, gt_inverse = np.unique(g[in_gt], return_inverse=True)
    pred_labels, pred_inverse = np.unique(p[in_pred], return_inverse=True)
    gt_sizes = np.bincount(gt_inverse, weights=counts[in_gt], minlength=gt_labels.size)
    pred_sizes = np.bincount(pred_inverse, weights=counts[in_pred], minlength=pred_labels.size)
    both = in_gt & in_pred
    gt_index = np.searchsorted(gt_labels, g[both])
    pred_index = np.searchsorted(pred_labels, p[both])
    return OverlapTable(
        gt_labels=gt_labels.astype(np.uint64),
        pred_labels=pred_labels.astype(np.uint64),
        gt_sizes=np.rint(gt_sizes).astype(np.int64),
        pred_sizes=np.rint(pred_sizes).astype(np.int64),
        gt_index=gt_index.astype(np.intp),
        pred_index=pred_index.astype(np.intp),
        intersections=counts[both].astype(np.int64),
    )


# --------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------


class _AsDict:
    def as_dict(self) -> dict[str, Any]:
        """The result as a dict of plain Python numbers (and tuples), e.g. for JSON or MLflow."""
        return {k: _plain(v) for k, v in asdict(self).items()}  # type: ignore[call-overload]


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


IPQ_SCORES = ("ipq", "sq", "rq", "iq")
"""The four scores of :class:`IPQResult` that a segmentation study records, IPQ first."""


@dataclass(frozen=True)
class IPQResult(_AsDict):
    """Injective Panoptic Quality of one volume and its factors and counts.

    ``tp`` and ``fn`` count annotations, ``fp`` counts predicted instances, and
    ``extra_fragments`` is ``sum_g max(0, n_g - 1)``.
    """

    ipq: float
    sq: float
    rq: float
    iq: float
    tp: int
    fp: int
    fn: int
    extra_fragments: int
    n_gt: int
    n_pred: int
    iou_threshold: float
    weights: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class PQResult(_AsDict):
    """Standard Panoptic Quality (one-to-one matching at IoU > threshold)."""

    pq: float
    sq: float
    rq: float
    tp: int
    fp: int
    fn: int
    n_gt: int
    n_pred: int
    iou_threshold: float


@dataclass(frozen=True)
class APResult(_AsDict):
    """Average precision ``TP / (TP + FP + FN)`` per IoU threshold, and its mean."""

    thresholds: tuple[float, ...]
    ap: tuple[float, ...]
    tp: tuple[int, ...]
    fp: tuple[int, ...]
    fn: tuple[int, ...]
    mean: float

    def at(self, threshold: float) -> float:
        """The AP at one of ``thresholds``."""
        for t, value in zip(self.thresholds, self.ap, strict=True):
            if np.isclose(t, threshold, rtol=0, atol=1e-9):
                return value
        raise AopError(f"iou_threshold: {threshold} is not one of {list(self.thresholds)}")


# --------------------------------------------------------------------------------------------------
# IPQ
# --------------------------------------------------------------------------------------------------


def _check_threshold(iou_threshold: float, name: str = "iou_threshold") -> float:
    try:
        value = float(iou_threshold)
    except (TypeError, ValueError):
        raise AopError(f"{name}: expected a number in [0, 1], got {iou_threshold!r}") from None
    if not 0.0 <= value <= 1.0:
        raise AopError(f"{name}: expected a number in [0, 1], got {iou_threshold!r}")
    return value


def _check_weights(weights: Sequence[float]) -> tuple[float, float, float]:
    try:
        values = tuple(float(w) for w in weights)
    except (TypeError, ValueError):
        raise AopError(f"weights: expected three numbers in [0, 1], got {weights!r}") from None
    if len(values) != 3 or not all(0.0 <= w <= 1.0 for w in values):
        raise AopError(f"weights: expected three numbers in [0, 1], got {weights!r}")
    return values  # type: ignore[return-value]


def _assign_fragments(table: OverlapTable) -> np.ndarray:
    """The annotation index each prediction is assigned to, or -1 (spec step 2)."""
    assigned = np.full(table.n_pred, -1, dtype=np.intp)
    if table.intersections.size == 0:
        return assigned
    # Per prediction: largest intersection first, then the smallest annotation label.
    order = np.lexsort(
        (table.gt_labels[table.gt_index], -table.intersections, table.pred_index)
    )
    pred_sorted = table.pred_index[order]
    first = order[np.r_[True, pred_sorted[1:] != pred_sorted[:-1]]]
    pred, gt, inter = table.pred_index[first], table.gt_index[first], table.intersections[first]
    inside = 2 * inter > table.pred_sizes[pred]
    assigned[pred[inside]] = gt[inside]
    return assigned


def _quality(matched_iou: np.ndarray, fp: int, fn: int) -> tuple[float, float]:
    """SQ (mean IoU of the matches) and RQ ``TP / (TP + FP/2 + FN/2)``; both 1 when all are 0."""
    tp = matched_iou.size
    if tp + fp + fn == 0:
        return 1.0, 1.0
    return (float(matched_iou.sum() / tp) if tp else 0.0), tp / (tp + fp / 2 + fn / 2)


def ipq_from_overlaps(
    table: OverlapTable,
    iou_threshold: float = 0.5,
    weights: Sequence[float] = (1.0, 1.0, 1.0),
) -> IPQResult:
    """Injective Panoptic Quality from a precomputed :class:`OverlapTable`.

    See :func:`ipq` for the definition and parameters.
    """
    tau = _check_threshold(iou_threshold)
    k1, k2, k3 = _check_weights(weights)
    n_gt, n_pred = table.n_gt, table.n_pred
    assigned = _assign_fragments(table)
    is_assigned = assigned >= 0
    a = assigned[is_assigned]
    n_fragments = np.bincount(a, minlength=n_gt)
    fragment_size = np.bincount(a, weights=table.pred_sizes[is_assigned], minlength=n_gt)
    # S_g: the part of every assigned fragment that lies inside its annotation.
    pair_assigned = assigned[table.pred_index] == table.gt_index
    inside = np.bincount(
        table.gt_index[pair_assigned],
        weights=table.intersections[pair_assigned],
        minlength=n_gt,
    )
    union = table.gt_sizes + fragment_size - inside
    iou = np.divide(inside, union, out=np.zeros(n_gt), where=n_fragments > 0)
    true_positive = (n_fragments > 0) & (iou > tau)
    tp = int(true_positive.sum())
    fn = n_gt - tp
    fp = n_pred - int(n_fragments[true_positive].sum())
    extra = int(np.maximum(n_fragments - 1, 0).sum())
    sq, rq = _quality(iou[true_positive], fp, fn)
    iq = n_gt / (n_gt + extra) if n_gt else 1.0
    return IPQResult(
        ipq=(k1 * sq) * (k2 * rq) * (k3 * iq),
        sq=sq,
        rq=rq,
        iq=iq,
        tp=tp,
        fp=fp,
        fn=fn,
        extra_fragments=extra,
        n_gt=n_gt,
        n_pred=n_pred,
        iou_threshold=tau,
        weights=(k1, k2, k3),
    )


def ipq(
    gt: Any,
    pred: Any,
    iou_threshold: float = 0.5,
    weights: Sequence[float] = (1.0, 1.0, 1.0),
) -> IPQResult:
    """Injective Panoptic Quality: PQ that penalises splitting one object into fragments.

    Each predicted instance ``p`` is assigned to the annotation ``g`` holding most of its voxels
    (ties: the smallest label) when more than half of ``p`` lies in ``g``. Annotation ``g`` with
    ``n_g >= 1`` fragments is a true positive when the union of its fragments has IoU > ``tau``
    with it. Then ``SQ`` is the mean of those IoUs, ``RQ = TP / (TP + FP/2 + FN/2)`` (FP:
    predictions that are not a fragment of a true positive; FN: annotations that are not),
    ``IQ = |G| / (|G| + sum_g max(0, n_g - 1))`` and ``IPQ = (k1 SQ) (k2 RQ) (k3 IQ)``.

    Parameters
    ----------
    gt, pred : array_like of int
        Annotation and prediction label arrays of the same 2D or 3D shape; 0 is background.
    iou_threshold : float
        ``tau`` in [0, 1]; a match needs IoU strictly greater.
    weights : sequence of 3 floats
        ``(k1, k2, k3)``, each in [0, 1].

    Returns
    -------
    IPQResult

    Raises
    ------
    AopError
        On invalid arrays (see :func:`overlap_table`), threshold or weights.

    Notes
    -----
    With no annotations and no predictions SQ = RQ = IQ = 1 (IPQ = k1 k2 k3). When no annotation
    has more than one fragment, TP, FP, FN, SQ and RQ equal standard PQ's for ``tau >= 0.5`` and
    IPQ = PQ; below 0.5, PQ's one-to-one matching can pair a prediction with an annotation that
    holds less than half of it, which IPQ never assigns.

    Examples
    --------
    >>> import numpy as np
    >>> gt = np.zeros((20, 20), int); gt[5:15, 5:15] = 1
    >>> pred = np.zeros((20, 20), int); pred[5:15, 5:10] = 1; pred[5:15, 10:15] = 2
    >>> ipq(gt, pred).ipq  # one object split in two: SQ = RQ = 1, IQ = 1/2
    0.5
    """
    return ipq_from_overlaps(overlap_table(gt, pred), iou_threshold, weights)


# --------------------------------------------------------------------------------------------------
# Standard PQ and AP
# --------------------------------------------------------------------------------------------------


def _match(table: OverlapTable, iou: np.ndarray, tau: float) -> np.ndarray:
    """Indices into the table's pairs of a one-to-one matching at IoU > ``tau``."""
    candidates = np.flatnonzero(iou > tau)
    if tau >= 0.5 or candidates.size == 0:
        # IoU > 0.5 puts more than half of both instances in the intersection: unique pairs.
        return candidates
    g, p = table.gt_index[candidates], table.pred_index[candidates]
    n_gt = table.n_gt
    graph = coo_matrix(
        (np.ones(candidates.size), (g, n_gt + p)), shape=(n_gt + table.n_pred,) * 2
    )
    _, component = connected_components(graph, directed=False)
    pair_component = component[g]
    edges_per_component = np.bincount(pair_component)
    simple = edges_per_component[pair_component] == 1
    chosen = [candidates[simple]]
    for c in np.flatnonzero(edges_per_component > 1):
        members = np.flatnonzero(pair_component == c)
        rows, row_index = np.unique(g[members], return_inverse=True)
        cols, col_index = np.unique(p[members], return_inverse=True)
        # Most matches first, then the largest summed IoU (each IoU term adds less than 1/2).
        weight = np.zeros((rows.size, cols.size))
        weight[row_index, col_index] = 1.0 + iou[candidates[members]] / (2 * min(weight.shape))
        r, c_ = linear_sum_assignment(weight, maximize=True)
        lookup = np.full(weight.shape, -1, dtype=np.intp)
        lookup[row_index, col_index] = candidates[members]
        picked = lookup[r, c_]
        chosen.append(picked[picked >= 0])
    return np.sort(np.concatenate(chosen))


def pq_from_overlaps(table: OverlapTable, iou_threshold: float = 0.5) -> PQResult:
    """Standard PQ from a precomputed :class:`OverlapTable`; see :func:`panoptic_quality`."""
    tau = _check_threshold(iou_threshold)
    iou = table.pair_iou()
    matched = _match(table, iou, tau)
    tp = int(matched.size)
    fp, fn = table.n_pred - tp, table.n_gt - tp
    sq, rq = _quality(iou[matched], fp, fn)
    return PQResult(
        pq=sq * rq, sq=sq, rq=rq, tp=tp, fp=fp, fn=fn,
        n_gt=table.n_gt, n_pred=table.n_pred, iou_threshold=tau,
    )  # fmt: skip


def panoptic_quality(gt: Any, pred: Any, iou_threshold: float = 0.5) -> PQResult:
    """Standard Panoptic Quality (Kirillov et al. 2019) of one label volume.

    Annotations and predictions are matched one-to-one at IoU > ``iou_threshold``;
    ``SQ`` is the mean IoU of the matches, ``RQ = TP / (TP + FP/2 + FN/2)`` and ``PQ = SQ RQ``.

    Parameters
    ----------
    gt, pred : array_like of int
        Label arrays of the same 2D or 3D shape; 0 is background.
    iou_threshold : float
        In [0, 1]. Below 0.5 the matching maximises the number of matches, then the summed IoU.

    Returns
    -------
    PQResult
    """
    return pq_from_overlaps(overlap_table(gt, pred), iou_threshold)


def ap_from_overlaps(
    table: OverlapTable, thresholds: Iterable[float] = DEFAULT_AP_THRESHOLDS
) -> APResult:
    """Average precision per threshold from a precomputed table; see :func:`average_precision`."""
    taus = tuple(_check_threshold(t, "thresholds") for t in thresholds)
    if not taus:
        raise AopError("thresholds: expected at least one IoU threshold")
    iou = table.pair_iou()
    tps = [int(_match(table, iou, tau).size) for tau in taus]
    fps, fns = [table.n_pred - tp for tp in tps], [table.n_gt - tp for tp in tps]
    aps = [
        tp / (tp + fp + fn) if tp + fp + fn else 1.0
        for tp, fp, fn in zip(tps, fps, fns, strict=True)
    ]
    return APResult(
        thresholds=taus, ap=tuple(aps), tp=tuple(tps), fp=tuple(fps), fn=tuple(fns),
        mean=float(np.mean(aps)),
    )  # fmt: skip


def average_precision(
    gt: Any, pred: Any, thresholds: Iterable[float] = DEFAULT_AP_THRESHOLDS
) -> APResult:
    """Average precision in the StarDist / Data Science Bowl 2018 sense.

    For each IoU threshold ``t``, ``AP_t = TP / (TP + FP + FN)`` with one-to-one matches at
    IoU > ``t``; ``mean`` averages over the thresholds (by default 0.5, 0.55, ..., 0.95).

    Parameters
    ----------
    gt, pred : array_like of int
        Label arrays of the same 2D or 3D shape; 0 is background.
    thresholds : iterable of float
        IoU thresholds in [0, 1].

    Returns
    -------
    APResult
    """
    return ap_from_overlaps(overlap_table(gt, pred), thresholds)


# --------------------------------------------------------------------------------------------------
# Cell Tracking Challenge SEG
# --------------------------------------------------------------------------------------------------


def seg_from_overlaps(table: OverlapTable) -> float:
    """CTC SEG from a precomputed :class:`OverlapTable`; see :func:`seg`."""
    if table.n_gt == 0:
        return 1.0 if table.n_pred == 0 else 0.0
    covers = 2 * table.intersections > table.gt_sizes[table.gt_index]
    jaccard = table.pair_iou()[covers]
    return float(jaccard.sum() / table.n_gt)


def seg(gt: Any, pred: Any) -> float:
    """The Cell Tracking Challenge SEG measure.

    A reference object ``R`` matches the predicted object ``S`` with ``|R ∩ S| > |R| / 2`` (at most
    one can); ``SEG`` is the mean over reference objects of ``|R ∩ S| / |R ∪ S|``, 0 for unmatched
    ones. False positives are not penalised.

    Parameters
    ----------
    gt, pred : array_like of int
        Reference and predicted label arrays of the same 2D or 3D shape; 0 is background.

    Returns
    -------
    float
        In [0, 1]; 1 when both are empty, 0 when only ``gt`` is.
    """
    return seg_from_overlaps(overlap_table(gt, pred))


# --------------------------------------------------------------------------------------------------
# All metrics of one volume, and means over a data set
# --------------------------------------------------------------------------------------------------


def evaluate(
    gt: Any,
    pred: Any,
    iou_threshold: float = 0.5,
    weights: Sequence[float] = (1.0, 1.0, 1.0),
) -> dict[str, float]:
    """Every metric of one volume from a single overlap table.

    Parameters
    ----------
    gt, pred : array_like of int
        Label arrays of the same 2D or 3D shape; 0 is background.
    iou_threshold : float
        Threshold for IPQ, PQ and ``ap`` (the AP at this threshold).
    weights : sequence of 3 floats
        IPQ weights ``(k1, k2, k3)``.

    Returns
    -------
    dict
        ``ipq, sq, rq, iq, pq, ap, map, seg, tp, fp, fn, extra_fragments, n_gt, n_pred``, where
        ``sq, rq, tp, fp, fn`` are IPQ's and ``map`` is the mean AP over 0.5, 0.55, ..., 0.95.
    """
    table = overlap_table(gt, pred)
    result = ipq_from_overlaps(table, iou_threshold, weights)
    return {
        "ipq": result.ipq,
        "sq": result.sq,
        "rq": result.rq,
        "iq": result.iq,
        "pq": pq_from_overlaps(table, iou_threshold).pq,
        "ap": ap_from_overlaps(table, (iou_threshold,)).ap[0],
        "map": ap_from_overlaps(table).mean,
        "seg": seg_from_overlaps(table),
        "tp": result.tp,
        "fp": result.fp,
        "fn": result.fn,
        "extra_fragments": result.extra_fragments,
        "n_gt": result.n_gt,
        "n_pred": result.n_pred,
    }


def mean_scores(results: Iterable[IPQResult | PQResult | Mapping[str, Any]]) -> dict[str, float]:
    """Mean of every numeric score over the volumes of a data set.

    The segmentation objective is the mean per-volume IPQ. Counts (``tp``, ``n_gt``, ...) are
    averaged too (per volume).

    Parameters
    ----------
    results : iterable of IPQResult, PQResult or dict
        Per-volume results; all must have the same numeric keys (non-numeric entries such as a
        volume name, thresholds or weights are skipped).

    Returns
    -------
    dict
        Key -> mean over the volumes.
    """
    rows = [r if isinstance(r, Mapping) else asdict(r) for r in results]  # type: ignore[call-overload]
    if not rows:
        raise AopError("results: cannot average an empty list of scores")
    keys = [
        k for k, v in rows[0].items()
        if isinstance(v, int | float | np.number) and not isinstance(v, bool)
        and k not in ("iou_threshold",)
    ]  # fmt: skip
    for i, row in enumerate(rows):
        missing = [k for k in keys if k not in row]
        if missing:
            raise AopError(f"results[{i}]: missing score {missing[0]!r}")
    return {k: float(np.mean([float(row[k]) for row in rows])) for k in keys}
