"""The classification-stage commands: ``aop analyze``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from aop.cli.app import (
    AddressOption,
    PickOption,
    TrialOption,
    app,
    at_least_one,
    console,
    library_output,
    study_trial,
)
from aop.errors import AopError


@app.command()
def analyze(
    data: Annotated[
        Path, typer.Argument(help="Classified data set (labels/, dataset.yaml, annotations.csv).")
    ],
    out: Annotated[Path | None, typer.Option(help="Output folder (default DATA/analysis).")] = None,
    sources: Annotated[
        str, typer.Option(help="Sources that decide an instance's class, first wins (comma list).")
    ] = "manual,predicted,truth,spread",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier analysis aop wrote there.")
    ] = False,
) -> None:
    """Class counts per volume, instance volumes per class in µm³ and a summary (CSV + PNG)."""
    from aop.analysis.classes import (
        class_analysis,
        prepare_analysis_folder,
        write_class_analysis,
    )

    order = [s.strip() for s in sources.split(",") if s.strip()]
    out_dir = out if out is not None else data / "analysis"
    # the data set and its parts are inputs: the analysis may be none of them and hold none
    inputs = [data, *(data / name for name in ("images", "labels", "dataset.yaml",
                                               "annotations.csv"))]  # fmt: skip
    prepare_analysis_folder(out_dir, inputs=inputs, overwrite=overwrite,
                            overwrite_hint="--overwrite")  # fmt: skip
    result = class_analysis(data, sources=order)
    paths = write_class_analysis(result, out_dir, inputs=inputs, overwrite=overwrite)
    table = Table(title=f"{data}: {len(result.instances)} instances")
    for column in ("class", "instances", "fraction", "mean µm³", "median µm³"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for row in result.summary.itertuples(index=False):
        table.add_row(
            row[0], str(row.instances), f"{row.fraction:.3f}", f"{row.mean_um3:.1f}",
            f"{row.median_um3:.1f}",
        )
    console.print(table)
    console.print(f"wrote {len(paths)} files to {out_dir}")


@app.command()
def classify(
    source: Annotated[
        str, typer.Argument(help="Classification study folder, or an MLflow model URI.")
    ],
    data: Annotated[Path, typer.Option(help="Segmented data set (images/, labels/).")],
    address: AddressOption = None,
    workers: Annotated[int, typer.Option(help="Actors holding the model.")] = 1,
    gpus_per_worker: Annotated[float, typer.Option(help="GPUs per actor (0: CPU).")] = 0.0,
    pick: PickOption = None,
    trial: TrialOption = None,
) -> None:
    """Classify every instance: source=predicted rows in annotations.csv, predictions.csv."""
    from aop.classify import classify_dataset

    at_least_one("--workers", workers)
    if gpus_per_worker < 0:
        raise AopError(f"--gpus-per-worker must be >= 0, got {gpus_per_worker:g}")
    chosen = study_trial(source, pick, trial)
    with library_output("classify"):
        count = classify_dataset(
            source, data, address=address, workers=workers, gpus_per_worker=gpus_per_worker,
            trial=chosen,
        )
    console.print(f"classified {count} instances; wrote {data / 'annotations.csv'} and "
                  f"{data / 'predictions.csv'}")
