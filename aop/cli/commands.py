"""The data-set, scoring, post-processing, model and segmentation-study commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich import box
from rich.table import Table

from aop.cli.app import (
    AddressOption,
    OverwriteOption,
    TuneQuietOption,
    VerboseOption,
    app,
    at_least_one,
    console,
    err_console,
    library_output,
    step_line,
    volume_progress,
)
from aop.errors import AopError

# Data sets --------------------------------------------------------------------------------------


@app.command()
def info(
    dataset: Annotated[
        Path, typer.Argument(help="Data-set folder (images/, labels/, dataset.yaml).")
    ],
) -> None:
    """Validate a data set and print its volumes, shapes and label counts."""
    import numpy as np

    from aop.io import load_dataset, read_volume

    ds = load_dataset(dataset)
    title = f"{ds.info.name}  voxel size (z, y, x) = {ds.info.voxel_size}"
    table = Table("volume", "shape", "dtype", "labels", "instances", title=title)
    for entry in ds:
        image, _ = read_volume(entry.image_path)
        n = "-"
        if entry.label_path is not None:
            labels, _ = read_volume(entry.label_path)
            n = str(len(np.unique(labels[labels > 0])))
        table.add_row(
            entry.name, str(image.shape), str(image.dtype), "yes" if entry.label_path else "no", n
        )
    console.print(table)


# Scoring ----------------------------------------------------------------------------------------


def _label_volumes(path: Path, role: str) -> dict[str, Path]:
    """Map volume name -> label file: one file, or a folder's (``labels/NAME.*`` or ``NAME.*``)."""
    from aop.io import find_volumes, volume_name

    if path.is_file() or (path.is_dir() and path.name.lower().endswith(".zarr")):
        return {volume_name(path): path}
    if not path.is_dir():
        raise AopError(f"{path}: {role} not found")
    volumes = find_volumes(path / "labels") or find_volumes(path)
    if not volumes:
        raise AopError(f"{path}: no label volumes in this {role} folder (labels/NAME.* or NAME.*)")
    return volumes


def _pair_volumes(gt: Path, pred: Path) -> list[tuple[str, Path, Path]]:
    gt_volumes = _label_volumes(gt, "GT")
    pred_volumes = _label_volumes(pred, "PRED")
    if gt.is_file() or pred.is_file():
        if len(gt_volumes) != 1 or len(pred_volumes) != 1:
            raise AopError(f"{pred}: GT and PRED must both be volume files or both folders")
        ((name, gt_path),) = gt_volumes.items()
        return [(name, gt_path, next(iter(pred_volumes.values())))]
    for name in gt_volumes:
        if name not in pred_volumes:
            raise AopError(
                f"{pred}: no prediction for volume {name!r} (expected labels/{name}.* or {name}.*)"
            )
    for name, path in pred_volumes.items():
        if name not in gt_volumes:
            raise AopError(f"{path}: no ground-truth volume {name!r} in {gt}")
    return [(name, gt_volumes[name], pred_volumes[name]) for name in gt_volumes]


@app.command()
def score(
    gt: Annotated[Path, typer.Argument(help="Ground-truth label volume, or a data-set folder.")],
    pred: Annotated[
        Path, typer.Argument(help="Predicted label volume, or a folder (labels/NAME.* or NAME.*).")
    ],
    iou_threshold: Annotated[
        float, typer.Option(help="IoU threshold of IPQ, PQ and AP (IoU > T).")
    ] = 0.5,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print JSON to stdout instead of a table.")
    ] = False,
) -> None:
    """Score predicted instances against ground truth: IPQ, SQ, RQ, IQ, PQ, AP, SEG per volume."""
    import json

    from rich.progress import Progress

    from aop.io import read_volume
    from aop.labels import as_label_array
    from aop.metrics import evaluate, mean_scores

    if not 0.0 <= iou_threshold <= 1.0:
        raise AopError(f"--iou-threshold: expected a number in [0, 1], got {iou_threshold}")
    pairs = _pair_volumes(gt, pred)
    rows = []
    with Progress(console=err_console, transient=True, disable=len(pairs) < 2) as progress:
        task = progress.add_task("scoring", total=len(pairs))
        for name, gt_path, pred_path in pairs:
            gt_labels, _ = read_volume(gt_path)
            pred_labels, _ = read_volume(pred_path)
            as_label_array(gt_labels, str(gt_path), allow_bool=False)
            as_label_array(pred_labels, str(pred_path), allow_bool=False)
            if gt_labels.shape != pred_labels.shape:
                raise AopError(
                    f"{pred_path}: shape {pred_labels.shape} does not match ground truth "
                    f"{gt_path} shape {gt_labels.shape}"
                )
            try:
                scores = evaluate(gt_labels, pred_labels, iou_threshold)
            except AopError as exc:
                path = gt_path if str(exc).startswith("gt:") else pred_path
                raise AopError(f"{path}: {str(exc).split(': ', 1)[-1]}") from None
            rows.append({"name": name, **scores})
            progress.advance(task)
    mean = mean_scores(rows)
    if as_json:
        report = {"iou_threshold": iou_threshold, "volumes": rows, "mean": mean}
        typer.echo(json.dumps(report, indent=2))
        return
    columns = [("IPQ", "ipq"), ("SQ", "sq"), ("RQ", "rq"), ("IQ", "iq"), ("PQ", "pq"),
               (f"AP@{iou_threshold:g}", "ap"), ("SEG", "seg")]  # fmt: skip
    # a light box and fixed-width score columns keep all of it readable in an 80-column terminal
    table = Table(title=f"Scores at IoU > {iou_threshold:g}", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("volume", no_wrap=True)
    for title, _ in columns:
        table.add_column(title, justify="right", min_width=max(5, len(title)), no_wrap=True)
    table.add_column("GT / pred", justify="right")
    for row in rows:
        counts = f"{row['n_gt']} / {row['n_pred']}"
        table.add_row(row["name"], *(f"{row[key]:.3f}" for _, key in columns), counts)
    if len(rows) > 1:
        table.add_section()
        table.add_row(
            f"mean of {len(rows)}", *(f"{mean[key]:.3f}" for _, key in columns),
            f"{mean['n_gt']:.1f} / {mean['n_pred']:.1f}", style="bold",
        )  # fmt: skip
    console.print(table)


# Synthetic benchmark ----------------------------------------------------------------------------


@app.command()
def synth(
    out: Annotated[Path, typer.Option(help="Data-set folder to write (new, empty or aop's own).")],
    n_volumes: Annotated[int, typer.Option(help="Number of volumes.")] = 3,
    shape: Annotated[
        tuple[int, int, int] | None,
        typer.Option(help="Volume shape Z Y X in voxels (default: the preset's)."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Data-set seed (non-negative).")] = 0,
    preset: Annotated[
        str, typer.Option(help="Parameter set: nuclei, packed_nuclei, myotube or core_shell.")
    ] = "nuclei",
    spacing: Annotated[
        tuple[float, float, float] | None,
        typer.Option(help="Voxel size Z Y X (default: the preset's)."),
    ] = None,
    n_objects: Annotated[
        int | None, typer.Option(help="Objects per volume (default: the preset's density).")
    ] = None,
    density: Annotated[
        float | None, typer.Option(help="Volume fraction filled by objects.")
    ] = None,
    touching_fraction: Annotated[
        float | None, typer.Option(help="Fraction of objects touching a neighbour.")
    ] = None,
    overlap: Annotated[
        float | None,
        typer.Option(help="Fraction (0-0.5) of their radii by which objects' bounding balls may "
                     "overlap: packs them densely, neighbours touch (preset packed_nuclei: 0.4)."),
    ] = None,
    layout: Annotated[str | None, typer.Option(help="uniform, spheroid or core_shell.")] = None,
    classes: Annotated[
        bool,
        typer.Option("--classes", help="Instance classes with marker channels (presets myotube, "
                     "core_shell); the truth goes to annotations.csv."),
    ] = False,
    overwrite: OverwriteOption = False,
) -> None:
    """Simulate a synthetic 3D benchmark: fluorescent objects with perfect instance labels."""

    from aop.synth import PRESETS, preset_params
    from aop.synth.classes import class_set
    from aop.synth.dataset import write_synthetic_dataset
    from aop.synth.params import check_shape_holds_an_object

    at_least_one("--n-volumes", n_volumes)
    if shape is None:
        shape = PRESETS[preset].default_shape if preset in PRESETS else (32, 128, 128)
    if min(shape) < 1:
        raise AopError(f"--shape must be three positive integers Z Y X, got {list(shape)}")
    if seed < 0:
        raise AopError(f"--seed must be non-negative, got {seed}")
    overrides = {
        "spacing": spacing, "n_objects": n_objects, "density": density,
        "touching_fraction": touching_fraction, "overlap": overlap, "layout": layout,
    }  # fmt: skip
    progress, advance = volume_progress("simulating", n_volumes, "objects")

    try:
        params = preset_params(preset, **{k: v for k, v in overrides.items() if v is not None})
        check_shape_holds_an_object(shape, params, name="--shape")
        with progress:
            root = write_synthetic_dataset(
                out, params, shape, n_volumes, seed, preset=preset, on_volume=advance,
                classes=class_set(preset) if classes else None,
                overwrite=overwrite, overwrite_hint="--overwrite",
            )  # fmt: skip
    except AopError as exc:  # name the command-line option rather than the parameter
        message = str(exc)
        for field in overrides:
            option = "--" + field.replace("_", "-")
            message = message.replace(f"simulation parameter {field!r}", option)
        raise AopError(message) from None
    console.print(f"wrote {n_volumes} volume(s) of shape {tuple(shape)} to {root}")


# Study report -----------------------------------------------------------------------------------


@app.command()
def report(
    study_dir: Annotated[Path, typer.Argument(help="Study folder (results/*.jsonl, best.yaml).")],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON instead of tables.")
    ] = False,
    plots: Annotated[
        bool, typer.Option("--plots", help="(Re)draw the comparison, convergence and contour "
                           "plots into STUDY_DIR/plots/ first.")
    ] = False,
) -> None:
    """Compare the searches of a study (means, paired t-tests) and show the best configuration."""
    import json

    from aop.analysis.plots import make_study_plots
    from aop.analysis.report import load_report, read_study_meta

    if study_dir.is_dir():  # a data set or any other folder is no study: say so first
        read_study_meta(study_dir)
    if plots:
        make_study_plots(study_dir)
    if as_json:
        typer.echo(json.dumps(load_report(study_dir).to_dict(), indent=2))
    else:
        _print_study_report(study_dir)


# Segmentation study: search, resume, demo -------------------------------------------------------


def _run_study_command(exp: Any, address: str | None, quiet: bool, verbose: bool) -> None:
    from aop.tuning.study import run_study

    if address:
        exp.ray.address = address
    result = run_study(exp, verbose=1 if verbose else -1 if quiet else 0)
    _print_study_report(result.study_dir)
    if result.log is not None:
        console.print(f"Log of Ray, Tune, Lightning and MLflow: {result.log}", highlight=False,
                      soft_wrap=True)  # fmt: skip


def _print_study_report(study_dir: Path) -> None:
    from aop.analysis.report import load_report, print_report

    print_report(load_report(study_dir), console)


@app.command()
def search(
    experiment: Annotated[
        Path, typer.Argument(help="Experiment file (YAML), e.g. experiments/demo.yaml.")
    ],
    address: Annotated[
        str | None,
        typer.Option(help="Ray cluster to join: 'auto' or ray://host:10001 "
                     "(default: the file's ray.address, else a local Ray)."),
    ] = None,
    tracking_uri: Annotated[
        str | None,
        typer.Option(help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else "
                     "PROJECT/mlflow.db beside the experiment file)."),
    ] = None,
    study_dir: Annotated[
        Path | None, typer.Option(help="Study folder (overrides storage.study_dir).")
    ] = None,
    budget: Annotated[
        int | None, typer.Option(help="Trials of the main search (overrides search.budget).")
    ] = None,
    quiet: TuneQuietOption = False,
    verbose: VerboseOption = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier study in the study folder.")
    ] = False,
) -> None:
    """Run a study (kind segmentation or classification): comparisons, then the BO (Ray Tune)."""
    from aop.outputs import discard_output, prepare_output
    from aop.tuning.kinds import load_experiment

    exp = load_experiment(experiment)
    if study_dir is not None:
        exp.storage.study_dir = study_dir.resolve()
    if budget is not None:
        at_least_one("--budget", budget)
        exp.search.budget = budget
    if tracking_uri:
        exp.tracking.tracking_uri = tracking_uri
    inputs = [experiment, *exp.input_paths()]
    prepare_output(
        exp.study_dir, inputs=inputs, overwrite=overwrite, kind="study",
        overwrite_hint="--overwrite (or continue it with aop resume)",
    )  # fmt: skip
    if overwrite:
        from aop.tuning.study import check_study

        check_study(exp)  # every other error first: the earlier study is kept on any of them
        discard_output(exp.study_dir)
    _run_study_command(exp, address, quiet, verbose)


@app.command()
def resume(
    study_dir: Annotated[Path, typer.Argument(help="Folder of an interrupted study.")],
    address: Annotated[
        str | None, typer.Option(help="Ray cluster to join ('auto', ray://host:10001).")
    ] = None,
    quiet: TuneQuietOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Continue an interrupted study: finished trials are kept, unfinished ones rerun."""
    from aop.tuning.study import load_study_experiment

    exp = load_study_experiment(study_dir)
    _run_study_command(exp, address, quiet, verbose)


# Post-processing --------------------------------------------------------------------------------


def _postprocess_values(values: dict[str, float]) -> dict[str, float]:
    """Check the seven options against their ranges; an error names the option."""
    from aop.segmentation.params import PARAMETER_RANGES

    for name, value in values.items():
        kind, low, high = PARAMETER_RANGES[name]
        option = "--" + name.replace("_", "-")
        if kind is int and value != int(value):
            raise AopError(f"{option}: {value} is not an integer")
        if not low <= value <= high:
            raise AopError(f"{option}: {value} is outside [{low}, {high}]")
    return values


@app.command()
def postprocess(
    pred: Annotated[Path, typer.Argument(help="Instance labels (TIFF, .npy, .zarr).")],
    image: Annotated[Path, typer.Argument(help="Raw intensities of the same shape.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output labels (.tif, .npy, .zarr).")],
    erode_dilate: Annotated[
        int, typer.Option(help="Ball radius: < 0 erodes, > 0 dilates the foreground [-10, 10].")
    ] = 0,
    open_close: Annotated[
        int, typer.Option(help="Ball radius: < 0 opens, > 0 closes the foreground [-5, 5].")
    ] = 0,
    merge_continuity: Annotated[
        float, typer.Option(help="Weight of contour continuity for merging [0, 1].")
    ] = 0.0,
    merge_smoothness: Annotated[
        float, typer.Option(help="Weight of connecting-surface smoothness for merging [0, 1].")
    ] = 0.0,
    merge_area: Annotated[
        float, typer.Option(help="Weight of relative contact area for merging [0, 1].")
    ] = 0.0,
    split_sigma: Annotated[
        float, typer.Option(help="Smoothing of the distance transform, sigma = 3 * value [0, 1].")
    ] = 0.0,
    split_threshold: Annotated[
        float, typer.Option(help="Marker quantile for the splitting watershed; 0 = off [0, 1].")
    ] = 0.0,
    spacing: Annotated[
        tuple[float, float, float] | None,
        typer.Option(help="Voxel size z y x (default: from the files' metadata, else 1 1 1)."),
    ] = None,
    features: Annotated[
        Path | None,
        typer.Option(help="Also write the adjacency graph of PRED with f_c, f_s, f_r as CSV."),
    ] = None,
    overwrite: OverwriteOption = False,
) -> None:
    """Apply the seven post-processing parameters to a label volume (atomic write to --out)."""
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from aop.io import read_volume, write_volume
    from aop.labels import as_label_array
    from aop.outputs import atomic_output, prepare_output
    from aop.resources import check_postprocess_memory, volume_shape
    from aop.segmentation import postprocess as engine

    values = _postprocess_values({
        "erode_dilate": erode_dilate, "open_close": open_close,
        "merge_continuity": merge_continuity, "merge_smoothness": merge_smoothness,
        "merge_area": merge_area, "split_sigma": split_sigma, "split_threshold": split_threshold,
    })  # fmt: skip
    inputs = [pred, image]
    outputs = [out, *([features] if features is not None else [])]
    for path in outputs:
        prepare_output(path, inputs=inputs, overwrite=overwrite, overwrite_hint="--overwrite")
    if features is not None and Path(features).absolute() == Path(out).absolute():
        raise AopError(f"{features}: --features and --out name the same file")
    if not pred.exists():
        raise AopError(f"{pred}: file not found")
    shape = volume_shape(pred)
    if shape is not None:
        check_postprocess_memory(shape)
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task(f"reading {pred.name}", total=3)
        labels, pred_spacing = read_volume(pred)
        intensities, image_spacing = read_volume(image)
        if intensities.shape != labels.shape:
            raise AopError(
                f"{image}: shape {intensities.shape} differs from {pred}: {labels.shape}"
            )
        voxel = tuple(spacing) if spacing is not None else (pred_spacing or image_spacing)
        if labels.ndim == 2 and voxel is not None and len(voxel) == 3:
            voxel = voxel[1:]
        as_label_array(labels, str(pred), allow_bool=False)
        prepared = engine.check_labels(labels, name=str(pred))
        progress.update(task, advance=1, description="post-processing")
        result = engine.postprocess(prepared, intensities, values, voxel)
        progress.update(task, advance=1, description=f"writing {out.name}")
        write_volume(
            out, result, spacing=pred_spacing if spacing is None else tuple(spacing),
            overwrite=overwrite, inputs=inputs,
        )  # fmt: skip
        if features is not None:
            table = engine.adjacency_features(prepared, intensities, voxel)
            with atomic_output(features, overwrite=overwrite, inputs=inputs) as tmp:
                table.to_csv(tmp, index=False)
        progress.update(task, advance=1)
    before = len(engine.relabel_consecutive(prepared)[1]) - 1
    console.print(f"{pred.name}: {before} instances -> {int(result.max())}; wrote {out}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Study folder of the demo.")] = Path("demo"),
    budget: Annotated[
        int | None, typer.Option(help="Trials of the Bayesian search (default 30).")
    ] = None,
    unet_steps: Annotated[int, typer.Option(help="Training steps of the demo's 3D UNet.")] = 150,
    quiet: TuneQuietOption = False,
    verbose: VerboseOption = False,
    skip_segmentation: Annotated[
        bool,
        typer.Option("--skip-segmentation", help="Reuse the segmentation study already in OUT."),
    ] = False,
    no_classification: Annotated[
        bool, typer.Option("--no-classification", help="Stop after the segmentation study.")
    ] = False,
    class_budget: Annotated[
        int | None, typer.Option(help="Trials of the classifier study (default 10).")
    ] = None,
) -> None:
    """Run the embedded demo end to end: segmentation study -> aop segment -> (simulated)
    annotation -> aop spread -> classifier study -> aop classify -> aop analyze."""
    from aop.demo import run_demo

    at_least_one("--budget", budget)
    at_least_one("--class-budget", class_budget)
    at_least_one("--unet-steps", unet_steps)
    run_demo(
        out, budget=budget, unet_steps=unet_steps, quiet=quiet, verbose=verbose,
        echo=step_line, segmentation=not skip_segmentation,
        classification=not no_classification, class_budget=class_budget,
    )  # fmt: skip


# Segmentation models: predict a data set into the cache, train aop's own UNet -------------------


ModelsOption = Annotated[
    str, typer.Option("--models", help="Comma-separated model names, e.g. classical,unet3d.")
]
SettingOption = Annotated[
    list[str] | None,
    typer.Option("--setting", help="Model setting MODEL.KEY=VALUE or KEY=VALUE (repeatable)."),
]
ModelsFileOption = Annotated[
    Path | None,
    typer.Option("--config", help="Experiment file or YAML list of {name, settings, id} models."),
]


@app.command()
def models(
    models: ModelsOption = "",
    setting: SettingOption = None,
    config: ModelsFileOption = None,
) -> None:
    """Check that each model can run here: libraries, settings and weights (exit 1 if not).

    Without --models or --config: every registered model with its default settings (and the
    environment variables that point to weights).
    """
    from aop.segmentation.models import available_models, build_model
    from aop.segmentation.models.specs import parse_model_specs

    if not models and config is None:
        models = ",".join(available_models())
    specs = parse_model_specs(models, setting or [], config)
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("model", no_wrap=True)
    for column in ("adapter", "status", "GPU", "weights / what is missing"):
        table.add_column(column, overflow="fold")
    ready = 0
    for key, spec in specs.items():
        try:
            model = build_model(spec)
        except AopError as exc:
            reason = str(exc).removeprefix(f"model {spec.name!r}: ")
            table.add_row(key, spec.name, "[red]not ready[/]", "", reason)
            continue
        ready += 1
        files = ", ".join(str(p) for p in model.weight_files()) or "none needed"
        gpu = "yes" if type(model).uses_gpu else "no"
        table.add_row(key, spec.name, "[green]ready[/]", gpu, files)
    console.print(table)
    console.print(f"{ready} of {len(specs)} models ready")
    if ready < len(specs):
        raise typer.Exit(1)


@app.command()
def predict(
    data: Annotated[Path, typer.Option(help="Data-set folder (images/, dataset.yaml).")],
    models: ModelsOption = "",
    cache: Annotated[
        Path, typer.Option(help="Prediction cache folder (shared storage on a cluster).")
    ] = Path("aop-cache"),
    setting: SettingOption = None,
    config: ModelsFileOption = None,
    address: AddressOption = None,
    workers: Annotated[
        int | None, typer.Option(help="Actors per model (default: one per CPU/GPU).")
    ] = None,
) -> None:
    """Predict every volume of a data set with each model once, into the prediction cache."""
    from aop.io import load_dataset
    from aop.segmentation.models.specs import parse_model_specs
    from aop.segmentation.predict import predict_dataset

    specs = parse_model_specs(models, setting or [], config)
    dataset = load_dataset(data)
    at_least_one("--workers", workers)
    with library_output("predict"):
        results = predict_dataset(dataset, specs, cache, address=address, num_workers=workers)
    title = f"predictions of {dataset.info.name} in {cache}"
    table = Table("model", "volume", "cache entry", title=title)
    for model, entries in results.items():
        for name, path in entries.items():
            table.add_row(model, name, str(path))
    console.print(table)


@app.command("train-unet")
def train_unet_command(
    data: Annotated[Path, typer.Option(help="Labelled data set (e.g. from aop synth).")],
    out: Annotated[Path, typer.Option(help="BioImage.IO package folder to write.")],
    max_steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 300,
    seed: Annotated[int, typer.Option(help="Seed of weights and crops.")] = 0,
    overwrite: OverwriteOption = False,
) -> None:
    """Train aop's small 3D UNet (foreground + boundary) and save it for the unet3d model."""
    from aop.segmentation.unet3d import train_unet

    package = train_unet(
        data, out, max_steps=max_steps, seed=seed, overwrite=overwrite, overwrite_hint="--overwrite"
    )
    console.print(f"saved {package}; use it with --models unet3d --setting model={package}")
