"""The domain gap of the demo-sized synthetic benchmark to StarDist's real 3D volume, before and
after CycleGAN adaptation, and the adaptation's training time.

Real domain: the image of ``stardist.data.test_image_nuclei_3d`` (31x61x57, taken at voxel size
(2, 1, 1)); its 51 annotated nuclei are used only for scoring. Synthetic domain: the demo's
benchmark (``experiments/demo.yaml``: 4 volumes of 24x64x64, preset ``nuclei``, seed 7), simulated
at the real voxel size. Run::

    .venv/bin/python benchmarks/adapt_bench.py                     # paper networks, 15-minute run
    .venv/bin/python benchmarks/adapt_bench.py --epochs 1 --steps 5 --unet-steps 20   # smoke run
    .venv/bin/python benchmarks/adapt_bench.py --ngf 32 --threads 1 --epochs 5 --steps 50 \
        --density 0.45 --overlap 0.4            # packed (docs/results/adaptation.md), ~3 min

It prints, for the raw and the adapted benchmark against the real volume: the domain classifier's
held-out accuracy (0.5: indistinguishable, 1.0: trivially different), the intensity Wasserstein
and power-spectrum distances, label preservation (IPQ of the fixed ``classical`` segmenter against
the benchmark labels), and the downstream IPQ on the real volume of aop's UNet trained on each
(the mean of ``--unet-seeds`` trainings).
The reference of the same run is the raw benchmark: every ratio compares adapted with raw.
The work folder keeps the data sets for ``scripts/make_adapt_figure.py``.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from aop.adapt.config import AdaptSettings
from aop.adapt.gap import downstream_ipq, gap_report
from aop.adapt.train import adapt_dataset
from aop.demo import DEMO_EXPERIMENT
from aop.io import DatasetInfo, write_dataset
from aop.synth import preset_params
from aop.synth.dataset import write_synthetic_dataset
from aop.tuning.kinds import load_experiment

REAL_SPACING = (2.0, 1.0, 1.0)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def prepare(
    work: Path, density: float | None, overlap: float | None
) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    from stardist.data import test_image_nuclei_3d

    image, labels = (np.asarray(a) for a in test_image_nuclei_3d(return_mask=True))
    real = work / "real"
    if not (real / "dataset.yaml").is_file():
        write_dataset(real, [("nuclei_3d", image, None)], DatasetInfo("real", REAL_SPACING))
    synth = load_experiment(DEMO_EXPERIMENT).data.synth
    bench = work / "synthetic"
    if not (bench / "dataset.yaml").is_file():
        options = {**synth.options, "spacing": REAL_SPACING}
        if density is not None:
            options["density"] = density
        if overlap is not None:
            options["overlap"] = overlap
        params = preset_params(synth.preset, **options)
        write_synthetic_dataset(
            bench, params, tuple(synth.shape), synth.n_volumes, synth.seed, preset=synth.preset
        )
    return real, bench, image, labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("studies/adapt_bench"))
    parser.add_argument("--epochs", type=int, default=6, help="constant-rate epochs (and decay)")
    parser.add_argument("--steps", type=int, default=50, help="steps per epoch")
    parser.add_argument("--ngf", type=int, default=64)
    parser.add_argument("--mode", default="2d")
    parser.add_argument("--unet-steps", type=int, default=300)
    parser.add_argument("--unet-seeds", type=int, default=3,
                        help="UNet trainings per benchmark (the downstream IPQ is their mean)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--density", type=float, default=None,
                        help="object density of the benchmark (default: the demo's, 0.15)")
    parser.add_argument("--overlap", type=float, default=None,
                        help="bounding-ball overlap of the benchmark's objects (default 0); with "
                        "density 0.45 and overlap 0.4 it is about as packed as the real volume")
    parser.add_argument("--label-weight", type=float, default=0.0,
                        help="lambda_label, the label loss (0: the paper's CycleGAN)")
    parser.add_argument("--label-margin", type=float, default=0.6)
    parser.add_argument("--augment", default="flip", help="crop transforms: flip or dihedral")
    parser.add_argument("--no-guard", action="store_true",
                        help="turn the collapse guard off (collapse_drop=None)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the CycleGAN training")
    parser.add_argument("--restart", action="store_true", help="train again from scratch")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    work = args.work
    if args.restart:
        shutil.rmtree(work / "adapted.training", ignore_errors=True)
    real, bench, image, labels = prepare(work, args.density, args.overlap)
    patch = (48, 48) if args.mode == "2d" else (16, 48, 48)
    settings = AdaptSettings(
        mode=args.mode, patch=patch, ngf=args.ngf, ndf=args.ngf, epochs=args.epochs,
        epochs_decay=args.epochs, steps_per_epoch=args.steps, checkpoint_every=1, panel_every=2,
        lambda_label=args.label_weight, label_margin=args.label_margin, seed=args.seed,
        augment=args.augment, collapse_drop=None if args.no_guard else 0.1,
    )  # fmt: skip
    adapted = work / "adapted"
    print(f"settings: {settings.model_dump(mode='json')}", flush=True)
    wall, cpu = time.perf_counter(), cpu_seconds()
    adapt_dataset(
        bench, real, adapted, settings, work_dir=work / "adapted.training",
        tracking_uri=f"sqlite:///{(work / 'mlflow.db').resolve()}", progress=False, echo=print,
        overwrite=True,  # a rerun in the same work folder resumes the training, translates again
    )  # fmt: skip
    wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
    steps = settings.total_epochs * settings.steps_per_epoch
    print(f"adaptation (training + translation): {wall:.0f} s wall, {cpu:.0f} s CPU, "
          f"{steps} steps, {wall / steps:.2f} s/step; target 900 s: ratio {900 / wall:.2f}",
          flush=True)  # fmt: skip
    report = gap_report(real, bench, adapted)
    scores = {}
    for key, folder in (("synthetic", bench), ("adapted", adapted)):
        start = time.perf_counter()
        scores[key] = [
            downstream_ipq(
                folder, image, labels, REAL_SPACING, max_steps=args.unet_steps, seed=seed
            )
            for seed in range(args.unet_seeds)
        ]
        print(f"downstream UNet ({key}): IPQ {np.round(scores[key], 3).tolist()} over "
              f"{args.unet_seeds} seeds, {time.perf_counter() - start:.0f} s", flush=True)
        report[key]["downstream_ipq"] = float(np.mean(scores[key]))
        report[key]["downstream_ipq_seeds"] = scores[key]
    print("\nmeasure (against the real volume)   raw synthetic   adapted")
    rows = [
        ("classifier_accuracy", "domain classifier accuracy"),
        ("intensity_distance", "intensity Wasserstein"),
        ("spectrum_distance", "power-spectrum distance"),
        ("label_ipq", "label preservation IPQ"),
        ("label_correlation", "correlation with the labels"),
        ("foreground_fraction", "foreground fraction (Otsu)"),
        ("downstream_ipq", "downstream UNet IPQ on real (mean)"),
    ]
    for key, label in rows:
        print(f"{label:<36}{report['synthetic'][key]:>10.3f}{report['adapted'][key]:>12.3f}")
    (work / "adapt_bench.json").write_text(
        json.dumps({"settings": settings.model_dump(mode="json"), "seconds": wall,
                    "cpu_seconds": cpu, "report": report}, indent=2)  # fmt: skip
    )
    print(f"\nreproduce: {sys.executable} benchmarks/adapt_bench.py {' '.join(sys.argv[1:])}")
    print(f"data sets: {bench} (raw), {adapted} (adapted), {real} (real); "
          f"figure: scripts/make_adapt_figure.py --work {work}")  # fmt: skip


if __name__ == "__main__":
    main()
