"""``aop instances`` (per-instance feature table) and ``aop spread`` (label spreading)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from aop.cli.app import (
    AddressOption,
    FeaturesOption,
    PickOption,
    TrialOption,
    app,
    at_least_one,
    console,
    library_output,
    study_trial,
    volume_progress,
)
from aop.errors import AopError

_DATA = Annotated[
    Path, typer.Argument(help="Data-set folder (images/, labels/, dataset.yaml, annotations.csv).")
]


def _features_with_progress(data: Path):  # type: ignore[no-untyped-def]
    from aop.instances.features import dataset_features
    from aop.io import load_dataset

    n_volumes = len(load_dataset(data, require_labels=True, validate=False))
    progress, advance = volume_progress("features", n_volumes, "instances")
    with progress:
        return dataset_features(data, on_volume=advance)


def dataset_inputs(data: Path) -> list[Path]:
    """A data set's folder, its entries and the files of its ``images/`` and ``labels/``: the
    inputs an output path may not be (for :func:`aop.outputs.prepare_output`)."""
    found = [data]
    for sub in (data, data / "images", data / "labels"):
        if sub.is_dir():
            found += sorted(sub.iterdir())
    return found


def write_table(frame, out: Path, as_csv: bool) -> None:  # type: ignore[no-untyped-def]
    """Write a table as Parquet (pyarrow, marked as aop's) or CSV, atomically.

    The caller checked ``out`` with :func:`aop.outputs.prepare_output`; the table is written
    under a temporary sibling name and renamed into place, so a failure leaves nothing. A
    Parquet file carries ``software: aop`` in its schema metadata, by which
    :func:`aop.outputs.is_aop_output` recognises it; a CSV file cannot carry a mark.
    """
    from aop.outputs import atomic_output, mark_parquet_metadata

    with atomic_output(out, check=False) as tmp:
        if as_csv:
            frame.to_csv(tmp, index=False)
        else:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.Table.from_pandas(frame, preserve_index=False)
            pq.write_table(table.replace_schema_metadata(mark_parquet_metadata(table.schema)), tmp)


@app.command("instances")
def instances(
    data: _DATA,
    out: Annotated[
        Path, typer.Option(help="Feature table to write (.parquet, or .csv with --csv).")
    ],
    as_csv: Annotated[bool, typer.Option("--csv", help="Write CSV instead of Parquet.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace OUT if aop wrote it.")
    ] = False,
) -> None:
    """Features of every instance of a data set: one row per (volume, label)."""
    from aop.outputs import is_aop_output, prepare_output

    if is_aop_output(out) and not overwrite:
        raise AopError(f"{out}: exists, an earlier aop table; pass --overwrite to replace it")
    # an input, a folder, a user's file or (without --overwrite) aop's own table: refused here,
    # before the features are computed
    prepare_output(out, inputs=dataset_inputs(data), overwrite=overwrite,
                   overwrite_hint="--overwrite")  # fmt: skip
    parent = out.absolute().parent.resolve()
    for sub in ("images", "labels"):
        if (data / sub).is_dir() and parent == (data / sub).resolve():
            raise AopError(f"{out}: inside the input data set's {sub}/ folder; choose another path")
    suffix = out.suffix.lower()
    if suffix not in (".parquet", ".csv"):
        raise AopError(f"{out}: unknown table format {out.suffix or '(no extension)'!r}; "
                       "name the file .parquet, or .csv with --csv")
    if as_csv != (suffix == ".csv"):
        written = "CSV (--csv)" if as_csv else "Parquet (no --csv)"
        raise AopError(f"{out}: the extension does not match the format written, {written}; "
                       "name it .csv with --csv, .parquet without")
    table = _features_with_progress(data)
    write_table(table, out, as_csv)
    n_volumes = table["volume"].nunique()
    console.print(
        f"wrote {len(table)} instances of {n_volumes} volume(s), {table.shape[1] - 2} features, "
        f"to {out}"
    )


@app.command("spread")
def spread(
    data: _DATA,
    features: FeaturesOption = None,
    gamma: Annotated[float | None, typer.Option(help="RBF kernel width (default: by CV).")] = None,
    alpha: Annotated[
        float | None, typer.Option(help="Clamping factor in (0, 1) (default: by CV).")
    ] = None,
    n_components: Annotated[
        float, typer.Option(help="PCA variance fraction (< 1) or component count.")
    ] = 0.95,
    seed: Annotated[int, typer.Option(help="Seed of the cross-validation.")] = 0,
) -> None:
    """Label spreading: pseudo-labels (source=spread) for every instance without a manual label."""
    import pandas as pd

    from aop.instances.annotations import read_annotations, replace_annotations
    from aop.instances.spread import spread_labels

    if not 0 < n_components < 1 and not (n_components >= 1 and n_components.is_integer()):
        raise AopError(
            f"--n-components: expected a fraction of the variance in (0, 1) or a whole number "
            f"of components (1, 2, ...), got {n_components:g}"
        )
    annotations = read_annotations(data)
    if features is None:
        table = _features_with_progress(data)
    else:
        if not features.is_file():
            raise AopError(f"{features}: file not found")
        try:
            reader = pd.read_csv if features.suffix.lower() == ".csv" else pd.read_parquet
            table = reader(features)
        except Exception as exc:  # pyarrow and pandas raise many types for corrupt files
            raise AopError(f"{features}: cannot read table ({type(exc).__name__})") from None
    components: float | int = n_components if n_components < 1 else int(n_components)
    result = spread_labels(
        table, annotations, gamma=gamma, alpha=alpha, n_components=components, seed=seed
    )
    manual = annotations[annotations["source"] == "manual"]
    done = set(zip(manual["volume"].astype(str), manual["label"], strict=True))
    pairs = zip(result["volume"].astype(str), result["label"], strict=True)
    keep = [(volume, int(label)) not in done for volume, label in pairs]
    rows = result.loc[keep, ["volume", "label", "class"]].assign(annotator="aop spread")
    written = replace_annotations(data, rows, "spread")
    attrs = result.attrs
    cv = "" if pd.isna(attrs["cv_accuracy"]) else f", CV accuracy {attrs['cv_accuracy']:.3f}"
    console.print(
        f"spread {len(manual)} manual labels to {written} instances "
        f"(gamma {attrs['gamma']:.4g}, alpha {attrs['alpha']:g}, {attrs['n_components']} "
        f"components{cv})"
    )
    counts = rows["class"].value_counts().sort_index()
    console.print(", ".join(f"{name}: {count}" for name, count in counts.items()))


@app.command("segment")
def segment(
    source: Annotated[
        str, typer.Argument(help="Study folder (its best pipeline) or an MLflow model URI.")
    ],
    data: Annotated[Path, typer.Option(help="Data set to segment (images/).")],
    out: Annotated[Path, typer.Option(help="Output data set (labels/ written there).")],
    address: AddressOption = None,
    workers: Annotated[int | None, typer.Option(help="Actors holding the model.")] = None,
    gpus_per_worker: Annotated[float, typer.Option(help="GPUs per actor (0: CPU only).")] = 0.0,
    pick: PickOption = None,
    trial: TrialOption = None,
) -> None:
    """Apply the best segmentation pipeline to every volume; a rerun skips finished volumes."""
    from aop.io import load_dataset
    from aop.segmentation.apply import apply_pipeline, check_output

    at_least_one("--workers", workers)
    if gpus_per_worker < 0:
        raise AopError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker:g}")
    total = len(load_dataset(data, validate=False))
    check_output(out, data, source)  # a user's folder is refused before its labels are counted
    chosen = study_trial(source, pick, trial)
    if chosen is not None:  # that trial's pipeline, saved in the study folder once
        from aop.pipeline_model import trial_pipeline

        source = str(trial_pipeline(source, chosen))
    labels = out / "labels"
    before = len(list(labels.glob("*.tif"))) if labels.is_dir() else 0
    progress, advance = volume_progress("segmenting", total, completed=before)
    with library_output("segment"), progress:
        done = apply_pipeline(
            source, data, out, address=address, num_workers=workers,
            gpus_per_worker=gpus_per_worker, on_volume=advance,
        )  # fmt: skip
    skipped = total - len(done)
    console.print(f"segmented {len(done)} volume(s) into {out / 'labels'} ({skipped} already done)")
