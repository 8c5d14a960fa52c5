"""Train the CycleGAN, translate a benchmark, write the adapted data set; cached for studies.

This is the driver layer: it runs the Lightning ``Trainer`` with checkpoints (resumable) and logs
losses and real / synthetic / adapted panels to MLflow through Lightning's ``MLFlowLogger``.

>>> from aop.adapt import AdaptSettings, adapt_dataset
>>> adapt_dataset("bench", "real", "bench_adapted", AdaptSettings())  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

from aop.adapt.config import AdaptConfig, AdaptSettings
from aop.adapt.data import (
    UnpairedDataModule,
    check_patch,
    denormalize,
    load_volumes,
    match_voxel_size,
    normalize,
)
from aop.adapt.gap import (
    collapse_warning,
    density_warning,
    foreground_fraction,
    label_correlation,
)
from aop.errors import AopError
from aop.io import DATASET_FILE, DatasetInfo, load_dataset, write_dataset
from aop.outputs import atomic_file

__all__ = [
    "ADAPT_GENERATOR",
    "CollapseGuard",
    "EpochCheckpoint",
    "PanelCallback",
    "adapt_benchmark",
    "adapt_dataset",
    "train_cyclegan",
]

ADAPT_GENERATOR = "aop.adapt"
CHECKPOINT = "last.ckpt"
BEST = "best.ckpt"
COLLAPSED = "collapsed.json"


def _checked_resume(path: Path, settings: AdaptSettings, channels: int) -> None:
    """Refuse a checkpoint whose networks differ from the ones ``settings`` builds."""
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        hparams = checkpoint["hyper_parameters"]
        saved = AdaptSettings.model_validate(hparams["settings"])
    except Exception as exc:  # a truncated or foreign file surfaces as many exception types
        raise AopError(f"{path}: not a checkpoint of aop adapt ({type(exc).__name__})") from None
    ours, theirs = settings.architecture(), saved.architecture()
    theirs_channels = hparams.get("channels", 1)
    for name, value in ours.items():
        if theirs[name] != value:
            raise AopError(
                f"{path}: checkpoint from another configuration ({name}={theirs[name]!r}, this run "
                f"has {name}={value!r}); use another work folder or the same settings"
            )
    if theirs_channels != channels:
        raise AopError(
            f"{path}: checkpoint from another configuration ({theirs_channels} channels, this run "
            f"has {channels})"
        )


class EpochCheckpoint(L.Callback):
    """Write the checkpoint ``path`` every ``every`` epochs, after the last one and when training
    stops early (atomically)."""

    def __init__(self, path: Path, every: int) -> None:
        self.path, self.every = path, every

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every and epoch != trainer.max_epochs and not trainer.should_stop:
            return
        _save_atomically(trainer, self.path)


def _save_atomically(trainer: L.Trainer, path: Path) -> None:
    with atomic_file(path) as tmp:
        trainer.save_checkpoint(tmp)


class CollapseGuard(L.Callback):
    """Keep the epoch of the highest ``label_corr``; stop when it drifts ``drop`` below it.

    Each epoch with a new highest mean ``label_corr`` is saved as ``checkpoints/best.ckpt``.
    When ``label_corr`` is more than ``drop`` below that best for ``patience`` epochs in a row,
    ``checkpoints/collapsed.json`` records the epoch, its correlation and the best epoch, and the
    trainer stops; :func:`train_cyclegan` then returns the best epoch's networks, also on a later
    resume.
    """

    def __init__(self, checkpoints: Path, drop: float, patience: int = 2) -> None:
        self.best, self.marker = checkpoints / BEST, checkpoints / COLLAPSED
        self.drop, self.patience = drop, patience
        self.best_value, self.best_epoch, self.low = -math.inf, 0, 0

    def state_dict(self) -> dict[str, Any]:  # saved in the checkpoints, so a resume continues
        return {"best_value": self.best_value, "best_epoch": self.best_epoch, "low": self.low}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_value, self.best_epoch, self.low = (
            state["best_value"], state["best_epoch"], state["low"],
        )  # fmt: skip

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get("label_corr_epoch")
        if value is None:
            return
        value, epoch = float(value), trainer.current_epoch + 1
        if value > self.best_value:
            self.best_value, self.best_epoch, self.low = value, epoch, 0
            _save_atomically(trainer, self.best)
            return
        self.low = self.low + 1 if value < self.best_value - self.drop else 0
        if self.low < self.patience:
            return
        record = {"epoch": epoch, "label_corr": round(value, 4), "best_epoch": self.best_epoch,
                  "best_label_corr": round(self.best_value, 4), "drop": self.drop}  # fmt: skip
        with atomic_file(self.marker) as tmp:
            tmp.write_text(json.dumps(record))
        trainer.should_stop = True


def _load_best(module: Any, checkpoints: Path) -> dict[str, Any] | None:
    """The collapse record, with the best epoch's networks loaded into ``module``; None if none."""
    marker = checkpoints / COLLAPSED
    if not marker.is_file():
        return None
    import torch

    state = torch.load(checkpoints / BEST, map_location="cpu", weights_only=False)
    module.load_state_dict(state["state_dict"])
    return json.loads(marker.read_text())


class PanelCallback(L.Callback):
    """Log a real / synthetic / adapted panel to the MLflow run every ``every`` epochs.

    ``synthetic`` and ``real`` are normalised (C, Z, Y, X) volumes (a few slices suffice).
    """

    def __init__(self, synthetic: np.ndarray, real: np.ndarray, every: int) -> None:
        self.synthetic, self.real, self.every = synthetic, real, every

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        if epoch % self.every and epoch != trainer.max_epochs:
            return
        logger = trainer.logger
        if logger is None or not hasattr(logger, "run_id"):
            return
        import matplotlib.pyplot as plt

        from aop.adapt.figure import adaptation_panel
        from aop.adapt.translate import translate_volume

        adapted = translate_volume(module, self.synthetic, device=module.device)  # type: ignore[arg-type]
        module.train()
        figure = adaptation_panel(self.real, self.synthetic, adapted)
        logger.experiment.log_figure(logger.run_id, figure, f"panels/epoch_{epoch:04d}.png")
        plt.close(figure)


def train_cyclegan(
    synthetic: list[np.ndarray],
    real: list[np.ndarray],
    settings: AdaptSettings,
    work_dir: str | os.PathLike,
    *,
    resume: bool = True,
    tracking_uri: str | None = None,
    experiment: str = "aop-adapt",
    progress: bool = True,
    callbacks: Sequence[Any] = (),
    masks: Sequence[np.ndarray] | None = None,
) -> Any:
    """Train (or resume) the CycleGAN on normalised (C, Z, Y, X) volumes of both domains.

    Parameters
    ----------
    synthetic, real : list of ndarray
        Normalised volumes (:func:`aop.adapt.data.normalize`), the same channel count.
    settings : AdaptSettings
    work_dir : path
        Holds ``checkpoints/last.ckpt`` (written every ``checkpoint_every`` epochs and at the end)
        and ``mlflow_run.json`` (and ``mlartifacts/`` with a local MLflow store); a later call
        with the same folder resumes.
    resume : bool
        Continue from ``checkpoints/last.ckpt`` when it exists.
    tracking_uri : str, optional
        MLflow tracking URI; ``None`` logs nothing to MLflow.
    experiment : str
        MLflow experiment name.
    progress : bool
        Lightning's progress bar.
    callbacks : sequence of lightning.Callback
        Further callbacks, run after the checkpoint of each epoch is written.
    masks : sequence of ndarray, optional
        Foreground of each synthetic volume, (1, Z, Y, X): the adapted crops' correlation with
        it is logged (``label_corr``), and the label loss (``settings.lambda_label``) uses it;
        without them that loss is off. The crops drawn are the same with and without masks.

    Returns
    -------
    CycleGAN
        The trained module, in evaluation mode. Its ``collapse`` attribute is None, or, when
        the collapse guard (``settings.collapse_drop``, with ``masks``) stopped training, the
        record of ``checkpoints/collapsed.json``; the module then holds the networks of the
        epoch with the highest ``label_corr``.
    """
    from aop.adapt.model import CycleGAN

    work_dir = Path(work_dir)
    checkpoints = work_dir / "checkpoints"
    last = checkpoints / CHECKPOINT
    channels = int(synthetic[0].shape[0])
    if int(real[0].shape[0]) != channels:
        raise AopError(
            f"real and synthetic volumes have different channel counts ({real[0].shape[0]} and "
            f"{channels})"
        )
    ckpt_path = None
    if resume and last.is_file():
        _checked_resume(last, settings, channels)
        ckpt_path = str(last)
    # the collapse guard's files: stale before a fresh training; with the guard turned off, a
    # stop it made does not hold and the resume trains on
    stale = [checkpoints / COLLAPSED, checkpoints / BEST] if ckpt_path is None else []
    if settings.collapse_drop is None:
        stale.append(checkpoints / COLLAPSED)
    for path in stale:
        path.unlink(missing_ok=True)
    L.seed_everything(settings.seed, verbose=False)
    module = CycleGAN(settings.model_dump(mode="json"), channels)
    if masks is not None:
        masks = [
            np.asarray(m, dtype=bool).reshape(1, *v.shape[1:])
            for m, v in zip(masks, synthetic, strict=True)
        ]
    data = UnpairedDataModule(synthetic, real, settings, masks)
    own: list[Any] = [EpochCheckpoint(last, settings.checkpoint_every)]
    if settings.collapse_drop is not None:  # before the checkpoint, which saves a stop
        own.insert(0, CollapseGuard(checkpoints, settings.collapse_drop))
    logger: Any = False
    if tracking_uri is not None:
        from lightning.pytorch.loggers import MLFlowLogger

        run_file = work_dir / "mlflow_run.json"
        run_id = None
        if ckpt_path and run_file.is_file():
            run_id = json.loads(run_file.read_text())["run_id"]
        local = tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri
        logger = MLFlowLogger(
            experiment_name=experiment,
            tracking_uri=tracking_uri,
            # a local store keeps a new experiment's artifacts beside the checkpoints
            artifact_location=(work_dir / "mlartifacts").resolve().as_uri() if local else None,
            run_name=f"adapt-{work_dir.name}",
            run_id=run_id,
            tags={"aop.stage": "adapt"},
        )
        if run_id is None:
            # MLflow's UI shows runs and artifacts (not its GenAI view) for this kind
            client, experiment_id = logger.experiment, logger.experiment_id
            client.set_experiment_tag(
                experiment_id, "mlflow.experimentKind", "custom_model_development"
            )
            logger.log_hyperparams(settings.model_dump(mode="json"))
            work_dir.mkdir(parents=True, exist_ok=True)
            with atomic_file(run_file) as tmp:  # whole or not at all
                tmp.write_text(json.dumps({"run_id": logger.run_id}))
        z = synthetic[0].shape[1] // 2
        middle_real = real[0][:, real[0].shape[1] // 2][:, None]
        own.append(PanelCallback(synthetic[0][:, z : z + 1], middle_real, settings.panel_every))
    trainer = L.Trainer(
        max_epochs=settings.total_epochs,
        accelerator="auto",
        devices=1,
        logger=logger,
        callbacks=[*own, *callbacks],
        enable_progress_bar=progress,
        enable_model_summary=False,
        enable_checkpointing=False,  # checkpoints: the callback above
        default_root_dir=work_dir,
        log_every_n_steps=max(1, min(50, settings.steps_per_epoch)),
        num_sanity_val_steps=0,
    )
    if not (checkpoints / COLLAPSED).is_file():  # a training the guard stopped is finished
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    module.collapse = _load_best(module, checkpoints)
    return module.cpu().eval()


def _check_out(out: Path, overwrite: bool, hint: str) -> None:
    """Only a folder aop adapt wrote may be replaced, and only with ``overwrite``."""
    if not out.exists():
        return
    info = out / DATASET_FILE
    if out.is_dir() and not any(out.iterdir()):
        return
    try:
        provenance = load_dataset(out, validate=False).info.provenance if info.is_file() else {}
    except AopError:
        provenance = {}
    if provenance.get("generator") != ADAPT_GENERATOR:
        raise AopError(f"{out}: exists and was not written by aop adapt; choose another output")
    if not overwrite:
        raise AopError(f"{out}: holds an earlier adapted benchmark; pass {hint} to replace it")


def adapt_dataset(
    synthetic: str | os.PathLike,
    real: str | os.PathLike,
    out: str | os.PathLike,
    settings: AdaptSettings,
    *,
    work_dir: str | os.PathLike | None = None,
    resume: bool = True,
    tracking_uri: str | None = None,
    experiment: str = "aop-adapt",
    progress: bool = True,
    echo: Callable[[str], object] = lambda _: None,
    overwrite: bool = False,
    overwrite_hint: str = "overwrite=True",
) -> Path:
    """Train a CycleGAN between a benchmark and real volumes, and write the adapted benchmark.

    Real volumes are resampled to the benchmark's voxel size; every benchmark volume is translated
    whole (tiled, :func:`aop.adapt.translate.translate_volume`) and rescaled to the real data's
    intensity range; labels are copied unchanged. ``dataset.yaml`` records, under ``provenance``,
    the source benchmark and its provenance, the real volumes, the resampling and the settings.

    Parameters
    ----------
    synthetic : path
        The benchmark data set (``images/``, ``labels/``, ``dataset.yaml``).
    real : path
        Real volumes: a data set or a folder of volume files; no labels needed.
    out : path
        The adapted data set. An existing one written by ``aop adapt`` is replaced only with
        ``overwrite`` (checked before any training); anything else, or one of the inputs, is
        refused.
    settings : AdaptSettings
    work_dir : path, optional
        Checkpoints and MLflow run id (default: ``OUT.training`` beside ``out``).
    resume, tracking_uri, experiment, progress
        See :func:`train_cyclegan`.
    echo : callable
        Receives one progress line per stage.
    overwrite : bool
        Replace an earlier adapted benchmark at ``out``.
    overwrite_hint : str
        How the refusal names that option (``--overwrite`` on the command line).

    Returns
    -------
    Path
        ``out``.
    """
    from aop import __version__
    from aop.adapt.model import CycleGAN
    from aop.adapt.translate import translate_volume
    from aop.resources import check_tracking_uri

    out = Path(out)
    _check_out(out, overwrite, overwrite_hint)
    if tracking_uri is not None:
        check_tracking_uri(tracking_uri)  # a server that does not answer: before any training
    work = Path(work_dir) if work_dir is not None else out.with_name(out.name + ".training")
    bench = load_dataset(synthetic, require_labels=True)
    syn = load_volumes(synthetic, "synthetic")
    raw_real = load_volumes(real, "real")
    if raw_real.channels != syn.channels:
        raise AopError(
            f"real and synthetic volumes have different channel counts ({raw_real.channels} in "
            f"{real}, {syn.channels} in {synthetic})"
        )
    target = tuple(float(v) for v in bench.info.voxel_size)
    matched, factors = match_voxel_size(raw_real, target)
    check_patch(syn, settings, "synthetic")
    check_patch(matched, settings, "real")
    last = work / "checkpoints" / CHECKPOINT
    if resume and last.is_file():
        _checked_resume(last, settings, syn.channels)
    syn_norm = [normalize(v)[0] for v in syn.volumes]
    real_scaled = [normalize(v) for v in matched.volumes]
    lo = float(np.median([r[1][0] for r in real_scaled]))
    hi = float(np.median([r[1][1] for r in real_scaled]))
    masks = [bench.labels(name) > 0 for name in syn.names]  # label loss and label_corr
    shares = {
        "benchmark": float(np.mean([m.mean() for m in masks])),
        "real": foreground_fraction(matched.volumes),
    }
    warning = density_warning(shares["benchmark"], shares["real"])
    if warning is not None:
        echo(warning)
    echo(
        f"training the CycleGAN ({settings.mode}, {settings.total_epochs} epochs of "
        f"{settings.steps_per_epoch} steps) on {len(syn.volumes)} synthetic and "
        f"{len(matched.volumes)} real volumes; checkpoints in {work / 'checkpoints'}"
    )
    started = time.perf_counter()
    module: CycleGAN = train_cyclegan(
        syn_norm,
        [r[0] for r in real_scaled],
        settings,
        work,
        resume=resume,
        tracking_uri=tracking_uri,
        experiment=experiment,
        progress=progress,
        masks=masks,
    )
    seconds = time.perf_counter() - started
    echo(f"trained in {seconds:.0f} s; translating {len(syn.volumes)} volumes")
    collapse = module.collapse
    if collapse is not None:
        echo(
            f"the CycleGAN drifted: label_corr {collapse['label_corr']:.2f} at epoch "
            f"{collapse['epoch']}, more than {collapse['drop']} below its best "
            f"({collapse['best_label_corr']:.2f}, epoch {collapse['best_epoch']}); training "
            f"stopped, translating with the networks of epoch {collapse['best_epoch']}"
        )

    correlations: list[float] = []

    def generate():  # type: ignore[no-untyped-def]
        for name, volume in zip(syn.names, syn_norm, strict=True):
            adapted = denormalize(translate_volume(module, volume), lo, hi)
            image = adapted[0] if adapted.shape[0] == 1 else adapted
            labels = bench.labels(name)
            correlations.append(label_correlation([image], [labels]))
            yield name, image, labels
        # dataset.yaml is written after the last volume: the collapse check goes in with it
        provenance["label_correlation"] = round(float(np.mean(correlations)), 4)

    provenance: dict[str, Any] = {
        "generator": ADAPT_GENERATOR,
        "aop_version": __version__,
        "synthetic": str(Path(synthetic).resolve()),
        "synthetic_provenance": bench.info.provenance,
        "real": str(Path(real).resolve()),
        "real_volumes": raw_real.files,
        "real_voxel_size": list(raw_real.voxel_size) if raw_real.voxel_size else None,
        "real_resampling": factors,
        "real_intensity_range": [lo, hi],
        "foreground_fraction": shares,  # benchmark: its labels; real: Otsu (aop.adapt.gap)
        "settings": settings.model_dump(mode="json"),
        "checkpoint": str((work / "checkpoints" / (BEST if collapse else CHECKPOINT)).resolve()),
        "training_seconds": round(seconds, 1),
        "collapse": collapse,  # None, or where the collapse guard stopped (checkpoints/)
    }
    info = DatasetInfo(
        name=out.name,
        voxel_size=target,  # type: ignore[arg-type]
        channel_names=list(bench.info.channel_names),
        provenance=provenance,
    )
    root = write_dataset(
        out, generate(), info, overwrite=overwrite, inputs=(synthetic, real),
        overwrite_hint=overwrite_hint,
    )  # fmt: skip
    warning = collapse_warning(provenance["label_correlation"])
    if warning is not None:
        echo(warning)
    return root


def _digest_files(paths: list[Path], digest: Any) -> None:
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(path.parent)).encode())
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)


def adaptation_key(benchmark_dir: str | os.PathLike, settings: AdaptConfig) -> str:
    """Content key of an adaptation: benchmark files, real files and settings."""
    digest = hashlib.sha256()
    bench = Path(benchmark_dir)
    _digest_files([bench / "images", bench / "labels"], digest)
    real = Path(settings.real)
    _digest_files(sorted(p for p in real.iterdir() if not p.name.startswith(".")), digest)
    digest.update(json.dumps(settings.settings().model_dump(mode="json"), sort_keys=True).encode())
    return digest.hexdigest()[:16]


def adapt_benchmark(
    benchmark_dir: str | os.PathLike,
    settings: AdaptConfig,
    out_dir: str | os.PathLike,
    *,
    tracking_uri: str | None = None,
    progress: bool = False,
    echo: Callable[[str], object] = lambda _: None,
) -> Path:
    """The adapted benchmark for ``data.adapt`` of an experiment, computed once and cached.

    The adapted data set lives in ``out_dir/<key>`` where the key hashes the benchmark's images
    and labels, the real volumes and the settings; a complete one is reused as it is, so a resumed
    study or a second study on the same data trains nothing again.

    Parameters
    ----------
    benchmark_dir : path
        The synthetic benchmark.
    settings : AdaptConfig
        ``data.adapt``: the real folder and the adaptation settings.
    out_dir : path
        Cache folder of adapted benchmarks.
    tracking_uri : str, optional
        MLflow URI for the training's losses and panels.

    Returns
    -------
    Path
        The adapted data set.
    """
    real = Path(settings.real)
    if not real.is_dir():
        raise AopError(f"data.adapt.real: {real}: folder not found")
    key = adaptation_key(benchmark_dir, settings)
    target = Path(out_dir) / key
    if (target / DATASET_FILE).is_file():
        return target
    adapt_dataset(
        benchmark_dir,
        real,
        target,
        settings.settings(),
        work_dir=Path(out_dir) / f"{key}.training",
        tracking_uri=tracking_uri,
        progress=progress,
        echo=echo,
    )
    return target
