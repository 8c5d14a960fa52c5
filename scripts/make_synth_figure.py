"""Write ``docs/images/synth.png``: synthetic volumes beside their labels.

One row per preset (``myotube``, ``core_shell``): maximum projection along z of the image and of
the labels (random colours), then the middle z slice of both, and an x-z section of the image
shown at its physical aspect ratio (z runs down; blur and sampling are coarser along z).

    .venv/bin/python scripts/make_synth_figure.py [--out docs/images/synth.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

from aop.synth import preset_params, simulate  # noqa: E402

ROWS = [
    ("myotube", (48, 256, 256), 1),
    ("core_shell", (64, 448, 448), 2),
]


def label_colours(n: int, seed: int = 0) -> ListedColormap:
    """Black for background, then ``n`` random bright colours."""
    rng = np.random.default_rng(seed)
    colours = rng.uniform(0.25, 1.0, size=(n + 1, 3))
    colours[0] = 0.0
    return ListedColormap(colours)


def contrast(image: np.ndarray) -> dict[str, float]:
    low, high = np.percentile(image, [1.0, 99.8])
    return {"vmin": float(low), "vmax": float(high)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/synth.png"))
    args = parser.parse_args()

    fig, axes = plt.subplots(len(ROWS), 5, figsize=(17, 3.6 * len(ROWS)),
                             gridspec_kw={"width_ratios": [1, 1, 1, 1, 1]})  # fmt: skip
    for row, (preset, shape, seed) in zip(axes, ROWS, strict=True):
        params = preset_params(preset)
        image, labels = simulate(shape, params=params, seed=seed)
        cmap = label_colours(int(labels.max()))
        middle = shape[0] // 2
        image_mip = image.max(axis=0)
        panels = [
            (image_mip, "gray", contrast(image_mip), "image, max projection"),
            (labels.max(axis=0), cmap, {"interpolation": "nearest"}, "labels, max projection"),
            (image[middle], "gray", contrast(image[middle]), f"image, slice z={middle}"),
            (labels[middle], cmap, {"interpolation": "nearest"}, f"labels, slice z={middle}"),
        ]
        for ax, (data, colours, style, title) in zip(row, panels, strict=False):
            ax.imshow(data, cmap=colours, **style)
            ax.set_title(title, fontsize=10)
        # x-z section through the middle row at physical aspect ratio, about as tall as wide
        spacing_z, _, spacing_x = params.spacing
        width = min(shape[2], int(shape[0] * spacing_z / spacing_x))
        start = (shape[2] - width) // 2
        section = image[:, shape[1] // 2, start : start + width]
        row[4].imshow(section, cmap="gray", aspect=spacing_z / spacing_x, **contrast(section))
        row[4].set_title("image, x-z section", fontsize=10)
        row[0].set_ylabel(f"{preset}\n{'x'.join(map(str, shape))}, {int(labels.max())} objects")
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=72)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} kB)")


if __name__ == "__main__":
    main()
