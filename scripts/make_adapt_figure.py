"""Write ``docs/images/adapt.png``: real, synthetic and adapted volumes, like the paper's Fig. 3.

Columns: a) the real volume (StarDist's 3D sample), b) a synthetic benchmark volume, c) the same
volume after CycleGAN adaptation, with the benchmark's label outlines in red (they must still fit
the nuclei). With ``--plain WORK`` a column before c) shows the same volume adapted in that other
work folder (e.g. the paper's CycleGAN, without aop's label loss). Top row: the middle z slice;
bottom row: an x-z section at its physical aspect ratio (z runs down). The data sets come from
``benchmarks/adapt_bench.py``::

    .venv/bin/python benchmarks/adapt_bench.py                 # writes studies/adapt_bench/
    .venv/bin/python scripts/make_adapt_figure.py [--work studies/adapt_bench] [--out PATH] \
        [--plain OTHER_WORK]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from aop.errors import AopError  # noqa: E402
from aop.io import load_dataset  # noqa: E402


def contrast(image: np.ndarray) -> dict[str, float]:
    low, high = np.percentile(image, [1.0, 99.8])
    return {"vmin": float(low), "vmax": float(high if high > low else low + 1)}


def outline(axis: plt.Axes, labels: np.ndarray, aspect: float | str = "equal") -> None:
    """Draw the boundaries of ``labels`` in red over an image axis."""
    from skimage.segmentation import find_boundaries

    edges = find_boundaries(labels, mode="inner")
    overlay = np.zeros((*labels.shape, 4), np.float32)
    overlay[edges] = (1.0, 0.15, 0.1, 0.9)
    axis.imshow(overlay, aspect=aspect, interpolation="nearest")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("studies/adapt_bench"))
    parser.add_argument("--out", type=Path, default=Path("docs/images/adapt.png"))
    parser.add_argument("--volume", type=int, default=0, help="benchmark volume to show")
    parser.add_argument("--plain", type=Path, default=None,
                        help="a second adapt_bench work folder, shown before --work's adaptation")
    parser.add_argument("--plain-title", default="c) CycleGAN, no label loss")
    parser.add_argument("--title", default="synthetic after CycleGAN")
    args = parser.parse_args()
    folders = {key: args.work / key for key in ("real", "synthetic", "adapted")}
    if args.plain is not None:
        folders = {"real": folders["real"], "synthetic": folders["synthetic"],
                   "plain": args.plain / "adapted", "adapted": folders["adapted"]}
    for folder in folders.values():
        if not (folder / "dataset.yaml").is_file():
            raise SystemExit(
                f"{folder}: not found; run benchmarks/adapt_bench.py --work {args.work} first"
            )
    try:
        sets = {key: load_dataset(folder) for key, folder in folders.items()}
    except AopError as exc:
        raise SystemExit(str(exc)) from None
    name = sets["synthetic"].names[args.volume]
    volumes = {
        "real": sets["real"].image(sets["real"].names[0]),
        "synthetic": sets["synthetic"].image(name),
        "adapted": sets["adapted"].image(name),
    }
    titles = {
        "real": "a) real (StarDist 3D sample)",
        "synthetic": "b) synthetic",
        "adapted": f"{'d' if args.plain else 'c'}) {args.title}",
    }
    if args.plain is not None:
        if sets["plain"].names != sets["synthetic"].names:
            raise SystemExit(f"{folders['plain']}: adapts another benchmark than {args.work}")
        volumes = {**dict(list(volumes.items())[:2]), "plain": sets["plain"].image(name),
                   "adapted": volumes["adapted"]}
        titles["plain"] = args.plain_title
    labels = sets["synthetic"].labels(name)
    fig, axes = plt.subplots(
        2, len(volumes), figsize=(4 * len(volumes), 6.2),
        gridspec_kw={"height_ratios": [1.3, 1]}, squeeze=False,
    )  # fmt: skip
    for column, (key, volume) in enumerate(volumes.items()):
        spacing = sets[key].info.voxel_size
        volume = volume[0] if volume.ndim == 4 else volume
        axes[0, column].imshow(volume[volume.shape[0] // 2], cmap="gray", **contrast(volume))
        axes[0, column].set_title(titles[key])
        section = volume[:, volume.shape[1] // 2, :]
        axes[1, column].imshow(
            section, cmap="gray", aspect=spacing[0] / spacing[2], **contrast(volume)
        )
        axes[1, column].set_title("x-z section", fontsize=9)
        if key in ("plain", "adapted"):  # the labels the adapted volume is benchmarked against
            outline(axes[0, column], labels[labels.shape[0] // 2])
            outline(axes[1, column], labels[:, labels.shape[1] // 2, :], spacing[0] / spacing[2])
        for axis in axes[:, column]:
            axis.set_xticks([])
            axis.set_yticks([])
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
