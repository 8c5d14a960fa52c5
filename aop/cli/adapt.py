"""``aop adapt``: CycleGAN domain adaptation of a synthetic benchmark to real volumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
import yaml

from aop.cli.app import app, console, err_console, print_line
from aop.errors import AopError


def _settings_values(config: Path | None, settings: list[str]) -> dict[str, object]:
    values: dict[str, object] = {}
    if config is not None:
        from aop.config import read_yaml

        raw = read_yaml(config) or {}
        if not isinstance(raw, dict):
            raise AopError(f"{config}: expected a mapping of adaptation settings")
        values.update(raw)
    for item in settings:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise AopError(f"--setting {item!r}: expected KEY=VALUE")
        values[key.strip().replace("-", "_")] = yaml.safe_load(text)
    return values


@app.command()
def adapt(
    synthetic: Annotated[Path, typer.Option(help="Synthetic benchmark (images/, labels/).")],
    real: Annotated[
        Path, typer.Option(help="Real volumes: a data set or a folder of volume files.")
    ],
    out: Annotated[Path, typer.Option(help="Adapted data set to write.")],
    mode: Annotated[
        str | None, typer.Option(help="2d (slices with context, default) or 3d.")
    ] = None,
    patch: Annotated[
        str | None, typer.Option(help="Crop and tile: 'Y,X' in 2D (48,48), 'Z,Y,X' in 3D.")
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs at constant learning rate (100).")
    ] = None,
    epochs_decay: Annotated[int | None, typer.Option(help="Epochs of linear decay (100).")] = None,
    steps_per_epoch: Annotated[int | None, typer.Option(help="Steps per epoch (100).")] = None,
    setting: Annotated[
        list[str] | None,
        typer.Option("--setting", "-s", help="Any other setting as KEY=VALUE, e.g. ngf=32."),
    ] = None,
    config: Annotated[Path | None, typer.Option(help="YAML file of adaptation settings.")] = None,
    work: Annotated[
        Path | None, typer.Option(help="Checkpoints and MLflow store (default: OUT.training).")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume/--restart", help="Resume from the last checkpoint.")
    ] = True,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow URI (default: sqlite in the work folder).")
    ] = None,
    tracking: Annotated[
        bool, typer.Option("--tracking/--no-tracking", help="Log losses and panels to MLflow.")
    ] = True,
    gap: Annotated[
        bool, typer.Option("--gap/--no-gap", help="Measure the domain gap before and after.")
    ] = True,
    gap_steps: Annotated[
        int, typer.Option(min=1, help="Training steps of the domain classifier.")
    ] = 200,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier adapted benchmark at --out.")
    ] = False,
) -> None:
    """Adapt a synthetic benchmark to real volumes with a CycleGAN; labels are kept."""
    from aop.adapt.config import parse_settings
    from aop.adapt.train import adapt_dataset
    from aop.resources import check_tracking_uri

    values = _settings_values(config, setting or [])
    given = {"mode": mode, "epochs": epochs, "epochs_decay": epochs_decay,
             "steps_per_epoch": steps_per_epoch}  # fmt: skip
    values.update({key: value for key, value in given.items() if value is not None})
    if patch is not None:
        try:
            values["patch"] = [int(p) for p in patch.split(",")]
        except ValueError:
            raise AopError(f"--patch {patch!r}: expected integers such as 48,48") from None
    settings = parse_settings(values, "adaptation settings")
    work_dir = work if work is not None else out.with_name(out.name + ".training")
    uri = None
    if tracking:
        uri = tracking_uri or f"sqlite:///{(work_dir / 'mlflow.db').resolve()}"
        check_tracking_uri(uri)  # an MLflow server that does not answer: seconds, no folder
        work_dir.mkdir(parents=True, exist_ok=True)
    root = adapt_dataset(
        synthetic, real, out, settings, work_dir=work_dir, resume=resume, tracking_uri=uri,
        progress=not quiet, echo=print_line, overwrite=overwrite, overwrite_hint="--overwrite",
    )  # fmt: skip
    console.print(f"wrote the adapted benchmark to {root}")
    if not gap:
        return
    from aop.adapt.gap import gap_report

    err_console.print("measuring the domain gap (raw and adapted against real)")
    report = gap_report(real, synthetic, root, seed=settings.seed, steps=gap_steps)
    from aop.outputs import atomic_file

    with atomic_file(work_dir / "gap.json") as tmp:  # whole or not at all
        tmp.write_text(json.dumps(report, indent=2))
    console.print("measure                   synthetic   adapted   (against real)")
    synthetic_gap, adapted_gap = report["synthetic"], report["adapted"]
    real_share = synthetic_gap["real_foreground_fraction"]
    for key, label in (
        ("classifier_accuracy", "domain classifier acc."),
        ("intensity_distance", "intensity Wasserstein"),
        ("spectrum_distance", "power spectrum dist."),
        ("label_ipq", "label IPQ (classical)"),
        ("label_correlation", "label correlation"),
        ("foreground_fraction", f"foreground (real {real_share:.2f})"),
    ):
        console.print(f"{label:<25} {synthetic_gap[key]:>9.3f} {adapted_gap[key]:>9.3f}")
