"""Write a PyTorch network as a BioImage.IO model package (``rdf.yaml`` + state dict + tests).

The package is what the ``bioimageio`` adapter loads: a folder with ``rdf.yaml`` (format 0.5), the
weights as a PyTorch state dict whose architecture is a callable imported from an installed library
(e.g. ``monai.networks.nets.UNet``), and an input/output test tensor pair. ``aop train-unet``
writes its network this way, so aop's own model runs through the same code path as PlantSeg's.

``rdf.yaml`` is written as plain YAML in the 0.5 layout rather than through
``bioimageio.spec``: the installed ``bioimageio.spec`` 0.5.12 (pinned by ``bioimageio.core`` 0.11)
fails to build or validate any description under pydantic 2.14.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["write_model_package"]


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
    min_shape: Sequence[int] = (16, 16, 16),
    step: Sequence[int] = (4, 4, 4),
    halo: Sequence[int] = (8, 8, 8),
    percentiles: tuple[float, float] = (1.0, 99.8),
    sigmoid: bool = True,
    documentation: str = "",
) -> Path:
    """Save ``network`` as a BioImage.IO model package folder (written beside, renamed in).

    Parameters
    ----------
    folder : path
        Destination folder; replaced when it exists.
    network : torch.nn.Module
        The network, already trained; switched to evaluation mode.
    callable_name, import_from, kwargs
        How to rebuild the architecture: ``from import_from import callable_name``, called with
        ``kwargs``.
    name, description : str
        Package metadata.
    channel_names : sequence of str
        Names of the output channels.
    voxel_size : sequence of 3 floats, optional
        Training voxel size (z, y, x) in micrometres, stored as the axes' scale.
    min_shape, step : sequence of 3 ints
        Valid input sizes per spatial axis are ``min + n * step``.
    halo : sequence of 3 ints
        Output border (per side) to discard when tiling.
    percentiles : (float, float)
        Input normalisation (``scale_range`` over the whole volume).
    sigmoid : bool
        Whether outputs pass through a sigmoid (post-processing step).
    documentation : str
        README text.

    Returns
    -------
    Path
        The package folder.
    """
    import torch
    import yaml

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    network.eval()
    scale = [float(v) for v in voxel_size] if voxel_size is not None else [1.0, 1.0, 1.0]
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        torch.save(network.state_dict(), tmp / "weights.pt")
        test_input = np.random.default_rng(0).random((1, 1, *min_shape), dtype=np.float32)
        low, high = np.percentile(test_input, percentiles)
        scaled = ((test_input - low) / (high - low + 1e-6)).astype(np.float32)
        with torch.no_grad():
            test_output = network(torch.from_numpy(scaled)).numpy()
        if sigmoid:
            test_output = 1.0 / (1.0 + np.exp(-test_output))
        np.save(tmp / "test_input.npy", test_input)
        np.save(tmp / "test_output.npy", test_output.astype(np.float32))
        (tmp / "README.md").write_text(documentation or f"# {name}\n\n{description}\n")
        axis_ids = ("z", "y", "x")

        def space(axis: int, output: bool) -> dict[str, Any]:
            entry: dict[str, Any] = {"type": "space", "id": axis_ids[axis]}
            if output:
                entry["size"] = {"tensor_id": "raw", "axis_id": axis_ids[axis]}
                entry["halo"] = int(halo[axis])
            else:
                entry["size"] = {"min": int(min_shape[axis]), "step": int(step[axis])}
            entry["scale"] = scale[axis]
            if voxel_size is not None:
                entry["unit"] = "micrometer"
            return entry

        rdf = {
            "format_version": "0.5.4",
            "type": "model",
            "name": name,
            "description": description,
            "authors": [{"name": "aop"}],
            "cite": [{"text": "aop: 3D data Analysis Optimization Pipeline"}],
            "license": "BSD-3-Clause",
            "documentation": "README.md",
            "inputs": [
                {
                    "id": "raw",
                    "axes": [
                        {"type": "batch"},
                        {"type": "channel", "channel_names": ["raw"]},
                        *[space(a, output=False) for a in range(3)],
                    ],
                    "test_tensor": _file(tmp, "test_input.npy"),
                    "preprocessing": [
                        {
                            "id": "scale_range",
                            "kwargs": {
                                "axes": list(axis_ids),
                                "min_percentile": float(percentiles[0]),
                                "max_percentile": float(percentiles[1]),
                            },
                        }
                    ],
                }
            ],
            "outputs": [
                {
                    "id": "probabilities",
                    "axes": [
                        {"type": "batch"},
                        {"type": "channel", "channel_names": list(channel_names)},
                        *[space(a, output=True) for a in range(3)],
                    ],
                    "test_tensor": _file(tmp, "test_output.npy"),
                    "postprocessing": [{"id": "sigmoid"}] if sigmoid else [],
                }
            ],
            "weights": {
                "pytorch_state_dict": {
                    **_file(tmp, "weights.pt"),
                    "architecture": {
                        "callable": callable_name,
                        "import_from": import_from,
                        "kwargs": kwargs,
                    },
                    "pytorch_version": torch.__version__.split("+")[0],
                }
            },
        }
        (tmp / "rdf.yaml").write_text(yaml.safe_dump(rdf, sort_keys=False))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _file(folder: Path, name: str) -> dict[str, str]:
    digest = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    return {"source": name, "sha256": digest}
