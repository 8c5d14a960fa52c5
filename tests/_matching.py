"""Instance scoring for the model tests: IPQ from aop.metrics when present, else matched-IoU PQ."""

from __future__ import annotations

import numpy as np


def instance_score(gt: np.ndarray, pred: np.ndarray) -> float:
    """IPQ of ``pred`` against ``gt`` (PQ with one-to-one IoU > 0.5 matching as a fallback)."""
    try:
        from aop.metrics import ipq
    except ImportError:
        return _pq(gt, pred)
    return float(ipq(gt, pred).ipq)


def _pq(gt: np.ndarray, pred: np.ndarray) -> float:
    g = gt.astype(np.int64).ravel()
    p = pred.astype(np.int64).ravel()
    both = (g > 0) & (p > 0)
    pairs, inter = np.unique(g[both] * (int(p.max()) + 1) + p[both], return_counts=True)
    gl, pl = pairs // (int(p.max()) + 1), pairs % (int(p.max()) + 1)
    gsize = np.bincount(g)
    psize = np.bincount(p)
    iou = inter / (gsize[gl] + psize[pl] - inter)
    matched = iou > 0.5
    tp = int(matched.sum())
    n_gt = len(np.unique(g[g > 0]))
    n_pred = len(np.unique(p[p > 0]))
    fp, fn = n_pred - tp, n_gt - tp
    if tp == 0:
        return 1.0 if n_gt == n_pred == 0 else 0.0
    return float(iou[matched].sum() / tp * tp / (tp + fp / 2 + fn / 2))
