"""Write a PyTorch network as a BioImage.IO model package (format 0.5, built by bioimageio.spec).

The package is what the ``bioimageio`` adapter loads: ``rdf.yaml``, the weights as a PyTorch state
dict whose architecture is a callable imported from an installed library (e.g.
``monai.networks.nets.UNet``), a README and a test input/output pair. ``bioimageio.spec`` builds and
validates the description and writes the folder, so every package aop writes also passes
``bioimageio.core.test_model``. ``aop train-unet`` saves its network this way, and aop's own model
runs through the same code path as PlantSeg's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aop.errors import AopError, validation_message

__all__ = ["normalize_percentiles", "write_model_package"]

#: Every package scales its input between these percentiles of each volume (``scale_range``).
PERCENTILES = (1.0, 99.8)

#: The reference every package cites (a package must cite a DOI or URL).
UNET_CITATION = (
    "Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical Image "
    "Segmentation. MICCAI 2015",
    "10.1007/978-3-319-24574-4_28",
)


def normalize_percentiles(image: np.ndarray) -> np.ndarray:
    """Scale ``image`` to its :data:`PERCENTILES`, as the package's ``scale_range`` step does."""
    low, high = np.percentile(image, PERCENTILES)
    return ((image - low) / (high - low + 1e-6)).astype(np.float32)


def write_model_package(
    folder: str | Path,
    network: Any,
    *,
    callable_name: str,
    import_from: str,
    kwargs: dict[str, Any],
    name: str,
    description: str,
    channel_names: Sequence[str] = ("foreground", "boundary"),
    voxel_size: Sequence[float] | None = None,
    min_shape: Sequence[int] = (24, 24, 24),
    step: Sequence[int] = (4, 4, 4),
    halo: Sequence[int] = (8, 8, 8),
    overwrite: bool = False,
) -> Path:
    """Save ``network`` as a BioImage.IO model package folder (written beside, renamed in).

    The package scales its input (:func:`normalize_percentiles`), passes the output through a
    sigmoid and cites the U-Net paper.

    Parameters
    ----------
    folder : path
        Destination folder: new, empty, or (with ``overwrite``) an earlier aop package
        (:mod:`aop.outputs`).
    network : torch.nn.Module
        The network, already trained; switched to evaluation mode.
    callable_name, import_from, kwargs
        How to rebuild the architecture: ``from import_from import callable_name``, called with
        ``kwargs``.
    name, description : str
        Package metadata (``name``: at least 5 characters).
    channel_names : sequence of str
        Names of the output channels.
    voxel_size : sequence of 3 floats, optional
        Training voxel size (z, y, x) in micrometres, stored as the axes' scale and unit.
    min_shape, step : sequence of 3 ints
        Valid input sizes per spatial axis are ``min + n * step``; ``min`` must exceed twice the
        halo.
    halo : sequence of 3 ints
        Output border (per side) to discard when tiling.
    overwrite : bool
        Replace an earlier package written by aop.

    Returns
    -------
    Path
        The package folder.

    Raises
    ------
    AopError
        When ``bioimageio.spec`` rejects the description (the first problem, by field).
    """
    import torch
    from bioimageio.spec import save_bioimageio_package_as_folder
    from bioimageio.spec.common import FileDescr
    from bioimageio.spec.model import v0_5 as spec
    from loguru import logger
    from pydantic import ValidationError

    from aop.outputs import atomic_output

    logger.disable("bioimageio")  # its INFO logging has one line per file hashed
    folder = Path(folder)
    network.eval()
    with (
        atomic_output(folder, kind="folder", overwrite=overwrite) as out,
        tempfile.TemporaryDirectory(prefix="aop-package-") as sources,
    ):
        files = Path(sources)
        torch.save(network.state_dict(), files / "weights.pt")
        test_input = np.random.default_rng(0).random((1, 1, *min_shape), dtype=np.float32)
        with torch.no_grad():
            logits = network(torch.from_numpy(normalize_percentiles(test_input))).numpy()
        np.save(files / "test_input.npy", test_input)
        np.save(files / "test_output.npy", (1.0 / (1.0 + np.exp(-logits))).astype(np.float32))
        (files / "README.md").write_text(f"# {name}\n\n{description}\n")

        ids = [spec.AxisId(a) for a in ("z", "y", "x")]
        scale = [float(v) for v in voxel_size] if voxel_size is not None else [1.0] * 3
        unit = "micrometer" if voxel_size is not None else None
        raw = spec.TensorId("raw")
        try:
            inputs = spec.InputTensorDescr(
                id=raw,
                axes=[
                    spec.BatchAxis(),
                    spec.ChannelAxis(channel_names=[spec.Identifier("raw")]),
                    *[
                        spec.SpaceInputAxis(
                            id=ids[a],
                            size=spec.ParameterizedSize(min=int(min_shape[a]), step=int(step[a])),
                            scale=scale[a],
                            unit=unit,
                        )
                        for a in range(3)
                    ],
                ],
                test_tensor=FileDescr(source=files / "test_input.npy"),
                preprocessing=[
                    spec.ScaleRangeDescr(
                        kwargs=spec.ScaleRangeKwargs(
                            axes=tuple(ids),
                            min_percentile=PERCENTILES[0],
                            max_percentile=PERCENTILES[1],
                        )
                    )
                ],
            )
            outputs = spec.OutputTensorDescr(
                id=spec.TensorId("probabilities"),
                axes=[
                    spec.BatchAxis(),
                    spec.ChannelAxis(channel_names=[spec.Identifier(c) for c in channel_names]),
                    *[
                        spec.SpaceOutputAxisWithHalo(
                            id=ids[a],
                            size=spec.SizeReference(tensor_id=raw, axis_id=ids[a]),
                            halo=int(halo[a]),
                            scale=scale[a],
                            unit=unit,
                        )
                        for a in range(3)
                    ],
                ],
                test_tensor=FileDescr(source=files / "test_output.npy"),
                postprocessing=[spec.SigmoidDescr()],
            )
            model = spec.ModelDescr(
                name=name,
                description=description,
                authors=[spec.Author(name="aop")],
                cite=[spec.CiteEntry(text=UNET_CITATION[0], doi=spec.Doi(UNET_CITATION[1]))],
                license=spec.LicenseId("BSD-3-Clause"),
                documentation=FileDescr(source=files / "README.md"),
                inputs=[inputs],
                outputs=[outputs],
                weights=spec.WeightsDescr(
                    pytorch_state_dict=spec.PytorchStateDictWeightsDescr(
                        source=files / "weights.pt",
                        architecture=spec.ArchitectureFromLibraryDescr(
                            callable=spec.Identifier(callable_name),
                            import_from=import_from,
                            kwargs=kwargs,
                        ),
                        pytorch_version=spec.Version(torch.__version__.split("+")[0]),
                    )
                ),
            )
        except ValidationError as exc:
            message = validation_message(exc, first=True)
            raise AopError(f"{folder}: invalid model package: {message}") from None
        save_bioimageio_package_as_folder(model, output_path=out)
    return folder
