"""BioImage.IO inference: aop's adapter (bioimageio.core blocks) against the bare network.

Writes aop's unet3d architecture (randomly initialised) as a BioImage.IO package, predicts one
synthetic volume tile by tile through the ``bioimageio`` adapter, and compares with the same number
of forward passes of the bare PyTorch network on tensors of the same block shape (plus the same
percentile scaling and sigmoid), measured in the same run. The ratio is the adapter's overhead:
validation, xarray blocks, padding and stitching. Run:
``.venv/bin/python benchmarks/bioimageio_bench.py``.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    from monai.networks.nets import UNet

    from aop.segmentation.bioimageio_package import write_model_package
    from aop.segmentation.models import build_model
    from aop.segmentation.unet3d import HALO, STEP, UNET_KWARGS
    from aop.synth import simulate

    torch.manual_seed(0)
    spacing = (1.0, 0.5, 0.5)
    image, _ = simulate((48, 192, 192), spacing, seed=0)
    tile = (40, 96, 96)
    network = UNet(**UNET_KWARGS).eval()
    with tempfile.TemporaryDirectory() as root:
        package = write_model_package(
            Path(root) / "unet", network, callable_name="UNet", import_from="monai.networks.nets",
            kwargs=UNET_KWARGS, name="benchmark unet", description="random weights",
            voxel_size=spacing, min_shape=(20, 20, 20), step=STEP, halo=HALO,
        )
        start = time.perf_counter()
        model = build_model("bioimageio", model=str(package), tile_shape=tile)
        load = time.perf_counter() - start
        model.probabilities(image[:8, :32, :32], spacing)  # warm-up: network built, torch ready
        start = time.perf_counter()
        output = model.probabilities(image, spacing)
        adapter = time.perf_counter() - start

    inner = [t - 2 * h for t, h in zip(tile, HALO, strict=True)]
    blocks = math.prod(math.ceil(n / i) for n, i in zip(image.shape, inner, strict=True))
    batch = torch.from_numpy(np.random.default_rng(0).random((1, 1, *tile), dtype=np.float32))
    with torch.no_grad():
        network(batch)  # warm-up at the block shape, as the adapter's first block had
    start = time.perf_counter()
    low, high = np.percentile(image, [1.0, 99.8])
    _ = (image - low) / (high - low + 1e-6)
    with torch.no_grad():
        for _ in range(blocks):
            torch.sigmoid(network(batch))
    bare = time.perf_counter() - start
    print(f"volume {image.shape}, tile {tile}, halo {HALO}: {blocks} blocks, output {output.shape}")
    print(f"package load + validation: {load:.2f} s")
    print(f"adapter (bioimageio.core): {adapter:.2f} s")
    print(f"bare network, same blocks: {bare:.2f} s")
    print(f"adapter / bare: {adapter / bare:.2f}")


if __name__ == "__main__":
    main()
