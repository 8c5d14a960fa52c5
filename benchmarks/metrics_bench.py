"""Speed of ``aop.metrics`` against ``stardist.matching`` and torchmetrics' ``PanopticQuality``.

Builds a packed-ball label volume (default 64 x 512 x 512, about 2,000 nuclei) and a perturbed copy
as prediction (shifted, boundary-eroded, some nuclei dropped or split, false positives, relabelled),
then times, in the same run:

- ``aop.metrics.ipq`` (overlap table + IPQ), ``aop.metrics.evaluate`` (table + IPQ, PQ, AP, SEG);
- ``stardist.matching.matching`` at IoU 0.5 (numba overlap matrix);
- ``torchmetrics.detection.PanopticQuality`` (things = {nucleus}, stuff = {background}). It is
  about three orders of magnitude slower, so it runs on the first ``--torchmetrics-slices`` z-slices
  only; its ratio compares voxels per second, and its PQ is checked against ours on that crop.

It prints voxels per second and the speed ratios, and checks that the PQ values agree
(exit status 1 when they do not). Run::

    .venv/bin/python benchmarks/metrics_bench.py [--shape 64 512 512] [--instances 2000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import fastremap  # noqa: E402
import numpy as np  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from aop.metrics import evaluate, ipq, overlap_table, panoptic_quality  # noqa: E402


def packed_balls(shape: tuple[int, int, int], n: int, seed: int = 0) -> np.ndarray:
    """Label volume of ``n`` ellipsoidal nuclei at random places (later ones overwrite earlier)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.uint32)
    # Radii (z, y, x) for anisotropic voxels; about a third of the volume is foreground.
    mean_volume = 0.35 * np.prod(shape) / n
    r_xy = (mean_volume / (4 / 3 * np.pi * 0.5)) ** (1 / 3)
    for label in range(1, n + 1):
        radii = np.array([0.5, 1.0, 1.0]) * r_xy * rng.uniform(0.8, 1.2)
        centre = rng.uniform(0, shape)
        lo = np.maximum(np.floor(centre - radii).astype(int), 0)
        hi = np.minimum(np.ceil(centre + radii).astype(int) + 1, shape)
        grids = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, centre, radii, strict=True)) <= 1
        window = labels[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
        window[inside] = label
    return labels


def perturbed_prediction(labels: np.ndarray, seed: int = 1) -> np.ndarray:
    """A plausible prediction: shifted, thinner, 5 % missed, 5 % split, false positives."""
    rng = np.random.default_rng(seed)
    pred = np.roll(labels, 1, axis=2)
    boundary = ndi.grey_erosion(pred, size=(1, 3, 3)) != ndi.grey_dilation(pred, size=(1, 3, 3))
    pred[boundary & (rng.random(pred.shape) < 0.5)] = 0
    ids = np.asarray(fastremap.unique(pred))
    ids = ids[ids > 0]
    chosen = rng.permutation(ids)[: 2 * (len(ids) // 20)]
    dropped, split = chosen[::2], chosen[1::2]
    pred = fastremap.mask(pred, dropped.tolist())
    # Split the chosen nuclei at their mean x coordinate (vectorised over all nuclei).
    x = np.broadcast_to(np.arange(pred.shape[2]), pred.shape)
    mean_x = np.bincount(pred.ravel(), weights=x.ravel()) / np.maximum(np.bincount(pred.ravel()), 1)
    offset = np.uint32(ids.max() + 1)
    is_split = np.zeros(mean_x.size, bool)
    is_split[split] = True
    right = is_split[pred] & (x > mean_x[pred])
    pred[right] += offset
    # False positives in the background.
    for z, y, x0 in rng.integers(0, np.array(pred.shape) - 6, size=(100, 3)):
        window = pred[z : z + 3, y : y + 6, x0 : x0 + 6]
        window[(window == 0) & (labels[z : z + 3, y : y + 6, x0 : x0 + 6] == 0)] = 2 * offset + z
    # Relabel with random large values.
    present = np.asarray(fastremap.unique(pred))
    present = present[present > 0]
    new = rng.choice(2**31, size=present.size, replace=False).astype(np.uint32) + 1
    return fastremap.remap(pred, dict(zip(present.tolist(), new.tolist(), strict=True)),
                           preserve_missing_labels=True)  # fmt: skip


def best_time(fn: Callable[[], Any], repeats: int) -> tuple[float, Any]:
    best, result = np.inf, None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def stardist_pq(gt: np.ndarray, pred: np.ndarray) -> float:
    from stardist.matching import matching

    return float(matching(gt, pred, thresh=0.5).panoptic_quality)


def torchmetrics_pq(gt: np.ndarray, pred: np.ndarray) -> float:
    import torch
    from torchmetrics.detection import PanopticQuality

    def encode(labels: np.ndarray) -> torch.Tensor:
        category = (labels > 0).astype(np.int64)
        return torch.from_numpy(np.stack([category, labels.astype(np.int64)], axis=-1)[None])

    metric = PanopticQuality(things={1}, stuffs={0}, return_per_class=True)
    metric.update(encode(pred), encode(gt))
    per_class = metric.compute()
    return float(per_class.reshape(-1)[metric.cat_id_to_continuous_id[1]])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(64, 512, 512))
    parser.add_argument("--instances", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torchmetrics-slices", type=int, default=2,
                        help="z-slices scored by torchmetrics (0: skip it)")  # fmt: skip
    args = parser.parse_args(argv)

    start = time.perf_counter()
    gt = packed_balls(tuple(args.shape), args.instances)
    pred = perturbed_prediction(gt)
    n_voxels = gt.size
    table = overlap_table(gt, pred)
    ties = int(np.sum(table.pair_iou() == 0.5))
    print(f"volume {tuple(args.shape)} = {n_voxels / 1e6:.1f} M voxels: {table.n_gt} annotated, "
          f"{table.n_pred} predicted instances ({time.perf_counter() - start:.1f} s to build); "
          f"pairs with IoU exactly 0.5: {ties}")  # fmt: skip

    small = np.zeros((4, 8, 8), np.uint16)
    stardist_pq(small, small)  # compile stardist's numba kernel outside the timing

    # (method, voxels scored, seconds, score)
    rows: list[tuple[str, int, float, float]] = []
    seconds, result = best_time(lambda: ipq(gt, pred), args.repeats)
    rows.append(("aop.metrics.ipq", n_voxels, seconds, result.ipq))
    ours_pq = panoptic_quality(gt, pred).pq
    seconds, scores = best_time(lambda: evaluate(gt, pred), args.repeats)
    rows.append(("aop.metrics.evaluate (IPQ+PQ+AP+SEG)", n_voxels, seconds, scores["ipq"]))
    seconds, _ = best_time(lambda: panoptic_quality(gt, pred), args.repeats)
    rows.append(("aop.metrics.panoptic_quality", n_voxels, seconds, ours_pq))
    seconds, sd_pq = best_time(lambda: stardist_pq(gt, pred), args.repeats)
    rows.append(("stardist.matching.matching", n_voxels, seconds, sd_pq))
    checks = [("stardist, full volume", sd_pq, ours_pq)]
    if args.torchmetrics_slices > 0:
        crop = slice(0, args.torchmetrics_slices)
        gt_crop, pred_crop = np.ascontiguousarray(gt[crop]), np.ascontiguousarray(pred[crop])
        seconds, tm_pq = best_time(lambda: torchmetrics_pq(gt_crop, pred_crop), 1)
        rows.append((f"torchmetrics PanopticQuality ({args.torchmetrics_slices} z)",
                     gt_crop.size, seconds, tm_pq))  # fmt: skip
        checks.append((f"torchmetrics, first {args.torchmetrics_slices} z-slices", tm_pq,
                       panoptic_quality(gt_crop, pred_crop).pq))  # fmt: skip

    reference = n_voxels / rows[0][2]
    print(f"\n{'method':44s} {'M voxels':>9s} {'seconds':>9s} {'M voxels/s':>11s} "
          f"{'ipq speed-up':>12s} {'score':>7s}")  # fmt: skip
    for name, voxels, seconds, value in rows:
        speed = voxels / seconds
        print(f"{name:44s} {voxels / 1e6:9.2f} {seconds:9.3f} {speed / 1e6:11.1f} "
              f"{reference / speed:11.1f}x {value:7.4f}")  # fmt: skip
    print(f"\nIPQ {result.ipq:.4f} (SQ {result.sq:.4f}, RQ {result.rq:.4f}, IQ {result.iq:.4f}, "
          f"{result.extra_fragments} extra fragments); standard PQ {ours_pq:.6f}")
    agree = ties == 0
    for what, theirs, ours in checks:
        ok = abs(theirs - ours) < 1e-5
        agree &= ok
        print(f"PQ {what}: theirs {theirs:.6f}, aop {ours:.6f} -> {'agree' if ok else 'DISAGREE'}")
    print("PQ values agree" if agree else "PQ values DISAGREE")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
