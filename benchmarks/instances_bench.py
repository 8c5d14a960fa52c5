"""Speed of instance crops and features: a paper-scale Myotube volume (90x1024x1024, ~11,000 nuclei,
three channels) should take under 60 s on one core, and 10x less than a per-instance reference.

Run single-threaded::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/instances_bench.py            # paper size
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/instances_bench.py --quick    # 45x512x512

The volume is simulated with the ``myotube`` instance classes (DAPI, alpha-actinin, S100beta; not
timed). Timed: :func:`aop.instances.instance_features` on all channels, and
:func:`aop.instances.crops.instance_crops` of every nucleus at 8x32x32 voxels with the mask method
and with the distance method. The reference, measured in the same run, is the straightforward
per-instance approach: for each instance, one pass over the whole volume (``labels == k``) to find
its voxels, then the same features with ``regionprops`` on its box and the crop by slicing. It is
timed on a random sample of instances (``--reference-sample``) and scaled to all of them.

Times are CPU seconds of this (single-threaded) process, which on a machine shared with other work
measure one core's worth of work; wall-clock seconds are printed beside them.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from skimage.measure import marching_cubes, mesh_surface_area, regionprops  # noqa: E402

from aop.instances.crops import instance_crops  # noqa: E402
from aop.instances.features import instance_features  # noqa: E402
from aop.synth import CLASS_PRESETS, preset_params, simulate_classes  # noqa: E402

TARGET_SECONDS = 60.0
TARGET_RATIO = 10.0
PAPER_SHAPE = (90, 1024, 1024)
CROP = (8, 32, 32)


def reference_instance(labels: np.ndarray, image: np.ndarray, label: int, spacing) -> np.ndarray:
    """One instance the straightforward way: a full-volume pass, then its features and crop."""
    where = np.nonzero(labels == label)  # the per-instance pass over the whole volume
    low = [int(w.min()) for w in where]
    high = [int(w.max()) + 1 for w in where]
    box = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    mask = (labels[box] == label).astype(np.uint8)
    (prop,) = regionprops(mask, intensity_image=np.moveaxis(image[(slice(None), *box)], 0, -1),
                          spacing=spacing)  # fmt: skip
    _ = (prop.area, prop.equivalent_diameter_area, prop.inertia_tensor_eigvals, prop.solidity,
         prop.centroid, prop.intensity_mean, prop.intensity_std)  # fmt: skip
    values = image[(slice(None), *where)]
    np.percentile(values, (10, 50, 90), axis=1)
    verts, faces, _, _ = marching_cubes(np.pad(mask, 1).astype(np.float32), 0.5, spacing=spacing)
    mesh_surface_area(verts, faces)
    centre = np.round(np.mean(where, axis=1) - (np.asarray(CROP) - 1) / 2).astype(int)
    crop = np.zeros((image.shape[0], *CROP), np.float32)
    bounds = zip(centre, CROP, labels.shape, strict=True)
    src = tuple(slice(max(c, 0), min(c + n, s)) for c, n, s in bounds)
    dst = tuple(slice(s.start - c, s.stop - c) for s, c in zip(src, centre, strict=True))
    crop[(slice(None), *dst)] = image[(slice(None), *src)]
    crop[(0, *dst)] = labels[src] == label
    return crop


def run(shape: tuple[int, int, int], sample: int, seed: int = 0) -> None:
    params = preset_params("myotube")
    start = time.perf_counter()
    image, labels, _ = simulate_classes(shape, CLASS_PRESETS["myotube"], seed=seed, params=params)
    simulated = time.perf_counter() - start
    n = int(labels.max())
    name = "x".join(map(str, shape))
    print(f"myotube {name}, 3 channels: {n} nuclei (simulated in {simulated:.0f} s, not timed)")
    times, walls = {}, {}
    start, wall = time.process_time(), time.perf_counter()
    table = instance_features(labels, image, params.spacing)
    times["features"] = time.process_time() - start
    walls["features"] = time.perf_counter() - wall
    for method in ("mask", "distance"):
        start, wall = time.process_time(), time.perf_counter()
        crops, ids = instance_crops(labels, image, size=CROP, spacing=params.spacing, method=method)
        times[f"crops ({method})"] = time.process_time() - start
        walls[f"crops ({method})"] = time.perf_counter() - wall
        assert len(crops) == len(table) == n
        del crops
    rng = np.random.default_rng(seed)
    picked = rng.choice(np.arange(1, n + 1), min(sample, n), replace=False)
    start = time.process_time()
    for label in picked:
        reference_instance(labels, image, int(label), params.spacing)
    per_instance = (time.process_time() - start) / len(picked)
    reference = per_instance * n
    ours = times["features"] + times["crops (mask)"]
    stages = ", ".join(
        f"{name} {times[name]:.1f} s (wall {walls[name]:.1f} s)" for name in times
    )
    print(f"  CPU seconds: {stages}")
    print(f"  features + mask crops: {ours:.1f} s ({n / ours:,.0f} instances/s); with distance "
          f"crops instead: {times['features'] + times['crops (distance)']:.1f} s")  # fmt: skip
    print(f"  reference: {per_instance * 1e3:.0f} ms per instance over {len(picked)} instances, "
          f"{reference:.0f} s scaled to {n}: {reference / ours:.1f}x ours "
          f"(target {TARGET_RATIO:.0f}x)")  # fmt: skip
    scaled = ours * np.prod(PAPER_SHAPE) / np.prod(shape)
    note = "" if shape == PAPER_SHAPE else f" (scaled by voxels to paper size: {scaled:.1f} s)"
    print(f"  target {TARGET_SECONDS:.0f} s per paper-scale volume: ratio target/measured "
          f"{TARGET_SECONDS / scaled:.2f}{note}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a 45x512x512 volume instead")
    parser.add_argument("--reference-sample", type=int, default=40, help="instances timed")
    args = parser.parse_args()
    print(f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    run((45, 512, 512) if args.quick else PAPER_SHAPE, args.reference_sample)


if __name__ == "__main__":
    main()
