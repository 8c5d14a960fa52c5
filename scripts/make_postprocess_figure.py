"""Draw docs/images/postprocess.png: what each post-processing parameter does to one prediction.

A synthetic benchmark volume gets a damaged prediction (some objects split, some touching pairs
merged); the panels show one slice of that prediction and the result of each category
applied alone, with the instance count and IPQ against the ground truth in the title.

Run: ``.venv/bin/python scripts/make_postprocess_figure.py [--out docs/images/postprocess.png]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402

from aop.metrics import ipq  # noqa: E402
from aop.segmentation.postprocess import PostprocessParams, postprocess  # noqa: E402
from aop.synth import simulate  # noqa: E402
from aop.synth.damage import damage_labels  # noqa: E402

SPACING = (2.0, 1.0, 1.0)
PANELS = [
    ("erode  θED = -2", {"erode_dilate": -2}),
    ("dilate  θED = +2", {"erode_dilate": 2}),
    ("open  θCO = -3", {"open_close": -3}),
    ("close  θCO = +3", {"open_close": 3}),
    ("merge  θMc = θMs = 0.3", {"merge_continuity": 0.3, "merge_smoothness": 0.3}),
    ("split  θSσ = 0.2, θSt = 0.95", {"split_sigma": 0.2, "split_threshold": 0.95}),
]


def overlay(image: np.ndarray, labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """Grey image with each instance tinted by its colour and its outline drawn."""
    grey = (image - image.min()) / max(float(np.ptp(image)), 1e-9)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    colour = palette[labels % len(palette)]
    inside = labels > 0
    rgb[inside] = 0.45 * rgb[inside] + 0.55 * colour[inside]
    rgb[find_boundaries(labels, mode="inner")] = (1.0, 1.0, 1.0)
    return rgb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images/postprocess.png"))
    args = parser.parse_args()

    image, truth = simulate(
        (24, 112, 112), spacing=SPACING, seed=5, n_objects=50, touching_fraction=0.7,
        radius_range=(6.0, 9.0),
    )
    pred = damage_labels(truth, "split", fraction=0.25, seed=1)
    pred = damage_labels(pred, "merge", fraction=0.4, seed=2)
    zeros = PostprocessParams.zeros().to_dict()
    # the slice through most instances
    middle = int(np.argmax([len(np.unique(plane)) for plane in pred]))
    palette = np.random.default_rng(0).uniform(0.25, 1.0, size=(64, 3))
    palette[0] = 0

    results = [("prediction (input)", postprocess(pred, image, zeros, SPACING))]
    results += [(title, postprocess(pred, image, {**zeros, **p}, SPACING)) for title, p in PANELS]
    fig, axes = plt.subplots(2, 4, figsize=(12, 7.0))
    axes = axes.ravel()
    axes[0].imshow(overlay(image[middle], truth[middle], palette), interpolation="nearest")
    axes[0].set_title(f"ground truth ({int(truth.max())})", fontsize=10)
    for ax, (title, labels) in zip(axes[1:], results, strict=True):
        ax.imshow(overlay(image[middle], labels[middle], palette), interpolation="nearest")
        score = ipq(truth, labels).ipq
        ax.set_title(f"{title}\n{int(labels.max())} instances, IPQ {score:.2f}", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    fig.suptitle("aop post-processing: each category alone on a damaged prediction "
                 "(one slice of a synthetic 24x112x112 volume)", fontsize=11)
    fig.tight_layout(h_pad=2.0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} kB)")


if __name__ == "__main__":
    main()
