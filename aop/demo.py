"""The embedded default end to end: what ``aop demo`` and ``make demo`` run.

Local Ray, SQLite MLflow stores in the study folders and synthetic data, the whole pipeline:

1. the segmentation study of ``experiments/demo.yaml`` (synthesis, a small 3D UNet trained on
   separate synthetic volumes, predictions, baseline, random search and Bayesian optimisation),
   in ``OUT``;
2. 8 fresh synthetic Myotube volumes with classes (``aop synth --classes``) in
   ``OUT/classes/truth``;
3. ``aop segment`` of the best pipeline on them into ``OUT/classes/segmented``;
4. annotation, SIMULATED: a fraction of the segmented instances get the class of the truth
   instance they overlap most, as ``source=manual`` rows by annotator ``demo: truth``
   (:func:`aop.instances.truth.simulate_annotation`); a real project annotates with
   ``aop annotate``;
5. ``aop spread`` (label spreading to the other instances);
6. the classifier study of ``experiments/demo_classification.yaml`` in ``OUT/classification``;
7. ``aop classify`` of every segmented instance with the best classifier;
8. ``aop analyze`` into ``OUT/classes/segmented/analysis``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aop import console
from aop.config import PROJECT_ROOT
from aop.outputs import atomic_file
from aop.tuning.kinds import load_experiment
from aop.tuning.segmentation import SegmentationExperiment

DEMO_EXPERIMENT = PROJECT_ROOT / "experiments" / "demo.yaml"
DEMO_CLASSIFICATION = PROJECT_ROOT / "experiments" / "demo_classification.yaml"
#: The fresh volumes with classes: preset, shape, count and a seed no other demo data uses.
CLASS_VOLUMES = {"preset": "myotube", "shape": (16, 96, 96), "n_volumes": 8, "seed": 11}
#: The demo's one MLflow store, in its output folder (both studies log there).
STORE = "mlflow.db"
#: Fraction of the segmented instances whose class the simulated annotator takes from the truth.
ANNOTATED_FRACTION = 0.5


def train_demo_unets(
    exp: SegmentationExperiment, unet_steps: int, quiet: bool, echo: Callable[[str], object]
) -> None:
    """Train the experiment's ``unet3d`` models that name no weights, on fresh synthetic volumes.

    The package goes to ``STUDY_DIR/models/unet3d`` (reused when it exists) and the model's
    ``model`` setting points to it.
    """
    from aop.segmentation.unet3d import train_unet
    from aop.synth import preset_params
    from aop.synth.dataset import write_synthetic_dataset

    for model in exp.models:
        if model.name != "unet3d" or "model" in model.settings:
            continue
        package = exp.study_dir / "models" / "unet3d"
        if not (package / "rdf.yaml").is_file():
            synth = exp.data.synth
            if synth is None:
                raise ValueError("the demo's unet3d is trained on the experiment's synth settings")
            train_data = exp.study_dir / "train_data"
            echo(f"[bold]2/11[/] training the 3D UNet ({unet_steps} steps): {package}")
            write_synthetic_dataset(
                train_data,
                preset_params(synth.preset, **synth.options),
                tuple(synth.shape),
                2,
                synth.seed + 1000,
                preset=synth.preset,
                overwrite=True,  # scratch data of this demo, from an interrupted run
            )
            train_unet(
                train_data, package, max_steps=unet_steps, progress=not quiet, overwrite=True
            )
        model.settings["model"] = str(package)


def spread_dataset(data: str | Path, seed: int = 0) -> Any:
    """Label spreading on a data set, as ``aop spread DATA`` does: ``source=spread`` rows.

    Every instance without a manual label gets the spread class; returns the rows written (with
    ``attrs`` from :func:`aop.instances.spread.spread_labels`).
    """
    from aop.instances.annotations import read_annotations, replace_annotations
    from aop.instances.features import dataset_features
    from aop.instances.spread import spread_labels

    annotations = read_annotations(data)
    result = spread_labels(dataset_features(data), annotations, seed=seed)
    manual = annotations[annotations["source"] == "manual"]
    done = set(zip(manual["volume"].astype(str), manual["label"], strict=True))
    pairs = zip(result["volume"].astype(str), result["label"], strict=True)
    keep = [(volume, int(label)) not in done for volume, label in pairs]
    rows = result.loc[keep, ["volume", "label", "class"]].assign(annotator="aop spread")
    replace_annotations(data, rows, "spread")
    rows.attrs = dict(result.attrs)
    return rows


def classification_experiment(out: Path, data: Path, budget: int | None = None) -> Path:
    """Write ``OUT/classification.yaml``: the demo's classifier study on ``data``, into
    ``OUT/classification`` (``aop search`` or ``aop resume`` it again from there)."""
    import yaml

    raw = yaml.safe_load(DEMO_CLASSIFICATION.read_text())
    raw["data"]["dataset"] = str(data)
    raw["storage"]["study_dir"] = str(out / "classification")
    raw["tracking"] = {"tracking_uri": f"sqlite:///{out / STORE}"}  # one store for the demo
    raw["search_space"] = str((DEMO_CLASSIFICATION.parent / raw["search_space"]).resolve())
    if budget is not None:
        raw["search"]["budget"] = budget
    path = out / "classification.yaml"
    with atomic_file(path) as tmp:
        tmp.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_class_demo(
    out: str | Path,
    *,
    budget: int | None = None,
    quiet: bool = False,
    verbose: bool = False,
    echo: Callable[[str], object] = print,
) -> Path:
    """Steps 5 to 11 of the demo: classes on the instances the segmentation study's best pipeline
    finds, from simulated annotation to ``aop analyze``. Returns the classifier study folder.

    ``out`` holds a finished segmentation study (:func:`run_demo`); ``budget`` is the classifier
    study's trial count (default: the demo file's).
    """
    import ray

    from aop.analysis.classes import class_analysis, write_class_analysis
    from aop.classify import classify_dataset
    from aop.instances.truth import simulate_annotation
    from aop.segmentation.apply import apply_pipeline
    from aop.synth import preset_params
    from aop.synth.classes import class_set
    from aop.synth.dataset import write_synthetic_dataset
    from aop.tuning.study import run_study

    out = Path(out).resolve()
    truth = out / "classes" / "truth"
    segmented = out / "classes" / "segmented"
    spec = CLASS_VOLUMES
    if not (truth / "dataset.yaml").is_file():
        echo(f"[bold]5/11[/] {spec['n_volumes']} fresh synthetic {spec['preset']} volumes with "
             f"classes (aop synth --classes) -> {truth}")
        write_synthetic_dataset(
            truth, preset_params(str(spec["preset"])), tuple(spec["shape"]),
            int(spec["n_volumes"]), seed=int(spec["seed"]), preset=str(spec["preset"]),
            classes=class_set(str(spec["preset"])),
        )
    echo(f"[bold]6/11[/] aop segment {out} --data {truth} --out {segmented}")
    apply_pipeline(out, truth, segmented)
    ray.shutdown()
    rows = simulate_annotation(segmented, truth, ANNOTATED_FRACTION)
    counts = ", ".join(f"{k}: {v}" for k, v in rows["class"].value_counts().sort_index().items())
    echo(f"[bold]7/11[/] SIMULATED annotation: {len(rows)} segmented instances took the class of "
         f"the truth instance they overlap most, written as source=manual by annotator "
         f"'demo: truth' ({counts}); a real project annotates with aop annotate")
    spread = spread_dataset(segmented)
    echo(f"[bold]8/11[/] aop spread: {len(spread)} pseudo-labels (source=spread), CV accuracy "
         f"{spread.attrs.get('cv_accuracy', float('nan')):.3f}")
    experiment = classification_experiment(out, segmented, budget)
    echo(f"[bold]9/11[/] classifier study: aop search {experiment}")
    exp = load_experiment(experiment)
    study = run_study(exp, verbose=_verbosity(quiet, verbose)).study_dir
    ray.shutdown()
    echo(f"[bold]9/11[/] {_pick_and_baseline(study)}")
    count = classify_dataset(study, segmented)
    ray.shutdown()
    echo(f"[bold]10/11[/] aop classify {study} --data {segmented}: {count} instances "
         "(source=predicted rows, predictions.csv)")
    analysis = segmented / "analysis"
    paths = write_class_analysis(class_analysis(segmented), analysis)
    echo(f"[bold]11/11[/] aop analyze {segmented}: {len(paths)} files in {analysis}")
    return study


def _pick_and_baseline(study: Path) -> str:
    """The classifier study's pick beside its baseline, from its ``best.yaml``."""
    import yaml

    from aop.tuning.classification import design_text

    best = yaml.safe_load((study / "best.yaml").read_text())
    metric = str(yaml.safe_load((study / "study.yaml").read_text())["metric"])
    reference = best.get("reference") or {}
    baseline = (reference.get("scores") or {}).get(metric, float("nan"))
    return (f"pick: {design_text(best['params'])}, {metric} {best['scores'][metric]:.3f}; "
            f"baseline (logistic regression on instance features) {baseline:.3f}. "
            f"{reference.get('verdict', '')}").strip()  # fmt: skip


def run_demo(
    out: str | Path,
    *,
    budget: int | None = None,
    unet_steps: int = 150,
    quiet: bool = False,
    verbose: bool = False,
    echo: Callable[[str], object] = print,
    segmentation: bool = True,
    classification: bool = True,
    class_budget: int | None = None,
) -> Path:
    """Run the demo into ``out`` and return the segmentation study folder (``out``).

    Parameters
    ----------
    out : path-like
        The study folder.
    budget : int, optional
        Trials of the Bayesian search (default: the demo file's).
    unet_steps : int
        Training steps of the demo's 3D UNet.
    quiet : bool
        No progress display and no training progress bar.
    verbose : bool
        Every library's output on the console (else in ``OUT/logs/demo.log`` and each study's
        ``logs/aop.log``).
    echo : callable
        Prints one progress line (rich markup allowed).
    segmentation : bool
        Run the segmentation study (False: use the finished one already in ``out``).
    classification : bool
        Run the classification half (:func:`run_class_demo`) after it.
    class_budget : int, optional
        Trials of the classifier study (default: the demo file's).

    Examples
    --------
    >>> run_demo("demo", budget=10, class_budget=4)  # doctest: +SKIP
    """
    from aop.errors import AopError

    if segmentation and unet_steps < 1:  # before the benchmark is simulated
        raise AopError(f"unet_steps must be at least 1, got {unet_steps}")
    out = Path(out).resolve()
    with tempfile.TemporaryDirectory(prefix="aop-log-") as tmp, console.library_output_to(
        None if verbose else Path(tmp) / "demo.log"
    ) as log:
        if segmentation:
            _segmentation_demo(out, budget, unet_steps, quiet, verbose, echo, log)
        elif not (out / "best.yaml").is_file():
            raise AopError(f"{out}/best.yaml: no finished segmentation study to reuse")
        log.move_to(out / "logs" / "demo.log")
        if classification:
            run_class_demo(out, budget=class_budget, quiet=quiet, verbose=verbose, echo=echo)
    _summary(out, classification, log.path, echo)
    return out


def _verbosity(quiet: bool, verbose: bool) -> int:
    """:func:`aop.tuning.study.run_study`'s ``verbose`` for the demo's options."""
    return 1 if verbose else -1 if quiet else 0


def _summary(out: Path, classification: bool, log: Path | None, echo: Callable[[str], object]
             ) -> None:
    """The demo's last lines: each study's best result, where to read more, one ``aop ui``."""
    import yaml

    studies = [out, out / "classification"] if classification else [out]
    for study in studies:
        best = yaml.safe_load((study / "best.yaml").read_text())
        scores = "  ".join(f"{k} {v:.3f}" for k, v in best["scores"].items()
                           if isinstance(v, float))  # fmt: skip
        echo(f"{best['kind']} study {study}: best {best['search']} trial {best['trial_id']}: "
             f"{scores}; details: aop report {study}")
    if classification:
        echo(f"class analysis (aop analyze): {out / 'classes' / 'segmented' / 'analysis'}")
    if log is not None:
        echo(f"log of Ray, Tune, Lightning and MLflow: {log} (and each study's logs/aop.log)")
    echo(f"both studies' trials in the MLflow UI: aop ui {out}")


def _segmentation_demo(
    out: Path, budget: int | None, unet_steps: int, quiet: bool, verbose: bool,
    echo: Callable[[str], object], log: Any,
) -> Path:
    import ray

    from aop.outputs import claim_folder
    from aop.tuning.segmentation import ensure_benchmark
    from aop.tuning.study import check_study, run_study

    exp = load_experiment(DEMO_EXPERIMENT)
    exp.storage.study_dir = out
    exp.tracking.tracking_uri = f"sqlite:///{out / STORE}"  # one store for both studies
    if budget is not None:
        exp.search.budget = budget
    check_study(exp, check_models=False)  # the demo's unet3d is trained below
    claim_folder(exp.study_dir, "study")
    log.move_to(out / "logs" / "demo.log")
    echo(f"[bold]1/11[/] synthetic benchmark -> {exp.study_dir / 'benchmark'}")
    ensure_benchmark(exp)
    train_demo_unets(exp, unet_steps, quiet, echo)
    echo("[bold]3/11[/] predictions, baseline, random search and Bayesian optimisation")
    result = run_study(exp, verbose=_verbosity(quiet, verbose))
    ray.shutdown()
    echo("[bold]4/11[/] segmentation study done: " + str(result.study_dir))
    return result.study_dir
