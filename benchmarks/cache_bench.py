"""Prediction cache: a hit against running the model, on one synthetic volume.

Prints the time of the ``classical`` model's prediction, of a cache hit (key + load + checksum)
and their ratio, measured in the same run. Run: ``.venv/bin/python benchmarks/cache_bench.py``.
"""

from __future__ import annotations

import tempfile
import time

import numpy as np

from aop.segmentation.cache import PredictionCache
from aop.segmentation.models import build_model


def best_of(repeats: int, fn) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    from aop.synth import simulate

    spacing = (1.0, 0.5, 0.5)
    image, _ = simulate((64, 256, 256), spacing, seed=0)
    model = build_model("classical")
    with tempfile.TemporaryDirectory() as root:
        cache = PredictionCache(root)
        predict = best_of(3, lambda: model.predict(image, spacing))
        cache.get_or_predict(model, image, spacing)
        hit = best_of(5, lambda: cache.get_or_predict(model, image, spacing))
        key = best_of(5, lambda: cache.key(model, image, spacing))
        size = sum(p.stat().st_size for p in cache.root.glob("*/*.npz"))
    print(f"volume {image.shape} float32 ({image.nbytes / 1e6:.1f} MB)")
    print(f"classical predict: {predict * 1e3:8.1f} ms")
    print(f"cache key:         {key * 1e3:8.1f} ms")
    print(f"cache hit:         {hit * 1e3:8.1f} ms  ({predict / hit:.1f}x faster than predicting)")
    raw = np.prod(image.shape) * 4 / 1e3
    print(f"entry on disk:     {size / 1e3:8.1f} kB (uint32 labels in memory: {raw:.0f} kB)")


if __name__ == "__main__":
    main()
