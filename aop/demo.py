"""The embedded default end to end: what ``aop demo`` and ``make demo`` run.

Local Ray, an SQLite MLflow store in the study folder and a synthetic benchmark: the segmentation
study of ``experiments/demo.yaml`` (synthesis, a small 3D UNet trained on separate synthetic
volumes, predictions, baseline, random search and Bayesian optimisation).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from aop.config import PROJECT_ROOT, Experiment, load_experiment

DEMO_EXPERIMENT = PROJECT_ROOT / "experiments" / "demo.yaml"


def train_demo_unets(
    exp: Experiment, unet_steps: int, quiet: bool, echo: Callable[[str], object]
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
            echo(f"[bold]2/4[/] training the 3D UNet ({unet_steps} steps): {package}")
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


def run_demo(
    out: str | Path,
    *,
    budget: int | None = None,
    unet_steps: int = 150,
    quiet: bool = False,
    echo: Callable[[str], object] = print,
) -> Path:
    """Run the demo study into ``out`` and return the study folder.

    Parameters
    ----------
    out : path-like
        The study folder.
    budget : int, optional
        Trials of the Bayesian search (default: the demo file's).
    unet_steps : int
        Training steps of the demo's 3D UNet.
    quiet : bool
        No Ray Tune progress table and no training progress bar.
    echo : callable
        Prints one progress line (rich markup allowed).
    """
    from aop.outputs import claim_folder
    from aop.tuning.benchmark import ensure_benchmark
    from aop.tuning.study import check_study, run_study

    exp = load_experiment(DEMO_EXPERIMENT)
    exp.storage.study_dir = Path(out).resolve()
    if budget is not None:
        exp.search.budget = budget
    check_study(exp, check_models=False)  # the demo's unet3d is trained below
    claim_folder(exp.study_dir, "study")
    echo(f"[bold]1/4[/] synthetic benchmark -> {exp.study_dir / 'benchmark'}")
    ensure_benchmark(exp)
    train_demo_unets(exp, unet_steps, quiet, echo)
    echo("[bold]3/4[/] predictions, baseline, random search and Bayesian optimisation")
    result = run_study(exp, verbose=0 if quiet else 1)
    echo("[bold]4/4[/] done; study folder: " + str(result.study_dir))
    return result.study_dir
