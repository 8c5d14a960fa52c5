"""Speed of the synthetic benchmark: one paper-scale Myotube volume (90x1024x1024, ~11,146 nuclei)
should take under 2 minutes on one core.

Run single-threaded::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/synth_bench.py            # half and paper size
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/synth_bench.py --quick    # half size only

For each size it prints the seconds per stage (placement, rasterisation, image), objects/s,
voxels/s, the ratio of the 2-minute target to the measured time (> 1 meets it), and the ratio to a
reference measured in the same run: one Gaussian blur of a float32 volume of that size with the
preset's PSF, a cost any image simulation pays at least once.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from aop.synth import preset_params, touching_fraction  # noqa: E402
from aop.synth.layout import place_objects  # noqa: E402
from aop.synth.render import rasterize, render_image  # noqa: E402
from aop.synth.simulate import object_brightness  # noqa: E402

TARGET_SECONDS = 120.0
PAPER_SHAPE = (90, 1024, 1024)


def reference_blur(shape: tuple[int, int, int], sigma: np.ndarray) -> float:
    volume = np.random.default_rng(0).random(shape, dtype=np.float32)
    start = time.perf_counter()
    ndi.gaussian_filter(volume, sigma, output=volume, truncate=3.0)
    return time.perf_counter() - start


def run(shape: tuple[int, int, int], seed: int = 0) -> None:
    params = preset_params("myotube")
    rng = np.random.default_rng(seed)
    times = {}
    start = time.perf_counter()
    placement = place_objects(shape, params, rng)
    times["placement"] = time.perf_counter() - start
    start = time.perf_counter()
    labels, kept = rasterize(placement.blobs, shape, params.spacing, params.min_voxels)
    times["rasterisation"] = time.perf_counter() - start
    start = time.perf_counter()
    brightness = object_brightness(placement.populations[kept], params, rng)
    render_image(labels, brightness, params, rng)
    times["image"] = time.perf_counter() - start
    total = sum(times.values())
    n_objects = int(labels.max())
    voxels = int(np.prod(shape))
    blur = reference_blur(shape, np.asarray(params.psf_sigma) / np.asarray(params.spacing))
    stages = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in times.items())
    print(f"myotube {'x'.join(map(str, shape))}: {n_objects} nuclei "
          f"(touching fraction {touching_fraction(labels):.2f})")  # fmt: skip
    print(f"  total {total:.1f} s ({stages})")
    print(f"  {n_objects / total:,.0f} objects/s, {voxels / total / 1e6:.2f} Mvoxels/s")
    print(f"  reference blur {blur:.1f} s; simulation = {total / blur:.1f} x reference blur")
    scaled = total * np.prod(PAPER_SHAPE) / voxels
    note = "" if shape == PAPER_SHAPE else f" (time scaled by voxels to paper size: {scaled:.1f} s)"
    print(f"  target {TARGET_SECONDS:.0f} s per paper-scale volume: ratio target/measured "
          f"{TARGET_SECONDS / scaled:.2f}{note}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the half-size volume")
    args = parser.parse_args()
    print(f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}")
    run((45, 512, 512))
    if not args.quick:
        run(PAPER_SHAPE)


if __name__ == "__main__":
    main()
