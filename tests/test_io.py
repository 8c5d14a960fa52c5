"""Volume and data-set I/O: round trips, voxel sizes, validation messages, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import yaml
from typer.testing import CliRunner

from aop.cli import app
from aop.errors import AopError
from aop.io import (
    DatasetInfo,
    load_dataset,
    read_volume,
    volume_name,
    write_dataset,
    write_volume,
)

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("suffix", [".tif", ".npy", ".zarr"])
@pytest.mark.parametrize(
    "dtype, shape",
    [(np.float32, (5, 12, 10)), (np.uint16, (2, 5, 12, 10)), (np.uint32, (5, 12, 10))],
)
def test_volume_round_trip(tmp_path: Path, suffix: str, dtype, shape) -> None:
    data = (RNG.random(shape) * 1000).astype(dtype)
    path = write_volume(tmp_path / f"vol{suffix}", data, spacing=(2.0, 0.5, 0.25))
    back, spacing = read_volume(path)
    assert back.dtype == data.dtype
    np.testing.assert_array_equal(back, data)
    if suffix == ".npy":
        assert spacing is None
    else:
        assert spacing == pytest.approx((2.0, 0.5, 0.25))


def test_uint64_labels_survive_tiff(tmp_path: Path) -> None:
    labels = np.zeros((3, 4, 4), np.uint64)
    labels[1, 1:3, 1:3] = 2**40 + 7
    back, spacing = read_volume(write_volume(tmp_path / "l.tif", labels, spacing=(3.0, 1.0, 1.0)))
    np.testing.assert_array_equal(back, labels)
    assert spacing == (3.0, 1.0, 1.0)


def test_imagej_voxel_size_is_read(tmp_path: Path) -> None:
    path = tmp_path / "ij.tif"
    data = np.zeros((4, 8, 8), np.uint16)
    resolution = (1 / 0.2, 1 / 0.1)  # pixels per unit along x and y
    tifffile.imwrite(path, data, imagej=True, resolution=resolution, metadata={"spacing": 1.5})
    _, spacing = read_volume(path)
    assert spacing == pytest.approx((1.5, 0.1, 0.2))


def test_plain_tiff_has_no_voxel_size(tmp_path: Path) -> None:
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.zeros((2, 3, 3), np.uint8))
    assert read_volume(path)[1] is None


def test_volume_name_strips_known_suffixes() -> None:
    assert volume_name("a/b/vol_01.ome.tif") == "vol_01"
    assert volume_name("x.npy") == "x"
    assert volume_name("stack.tiff") == "stack"


def test_missing_unknown_and_corrupt_files(tmp_path: Path) -> None:
    with pytest.raises(AopError, match="nope.tif: file not found"):
        read_volume(tmp_path / "nope.tif")
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(AopError, match="unknown volume format"):
        read_volume(tmp_path / "x.png")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    with pytest.raises(AopError, match="bad.tif: cannot read volume"):
        read_volume(bad)
    volume = RNG.random((4, 64, 64)).astype(np.float32)
    good = write_volume(tmp_path / "cut.tif", volume, compression=None)
    good.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(AopError, match="cut.tif: cannot read volume"):
        read_volume(good)


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(AopError):
        write_volume(tmp_path / "v.tif", np.zeros((2, 2, 2, 2, 2)))
    assert list(tmp_path.iterdir()) == []


def _make_dataset(root: Path, n: int = 2) -> Path:
    def volumes():
        for i in range(n):
            image = RNG.random((4, 16, 16)).astype(np.float32)
            labels = np.zeros((4, 16, 16), np.uint32)
            labels[1:3, 2:6, 2:6] = 1
            labels[1:3, 9:13, 9:13] = 2
            yield f"vol_{i:02d}", image, labels

    info = DatasetInfo("toy", (2.0, 0.5, 0.5), ["dapi"], {"seed": 3})
    return write_dataset(root, volumes(), info)


def test_dataset_round_trip(tmp_path: Path) -> None:
    root = _make_dataset(tmp_path / "ds")
    ds = load_dataset(root, require_labels=True)
    assert ds.names == ["vol_00", "vol_01"]
    assert ds.info.voxel_size == (2.0, 0.5, 0.5)
    assert ds.info.channel_names == ["dapi"]
    assert ds.info.provenance == {"seed": 3}
    assert ds.has_labels
    assert ds.image("vol_01").dtype == np.float32
    assert set(np.unique(ds.labels("vol_00"))) == {0, 1, 2}
    # nothing but the data set is left beside it (no temporary folders)
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_interrupted_dataset_write_leaves_nothing(tmp_path: Path) -> None:
    def volumes():
        yield "a", np.zeros((2, 4, 4), np.float32), None
        raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError):
        write_dataset(tmp_path / "ds", volumes(), DatasetInfo("x"))
    assert list(tmp_path.iterdir()) == []


def test_shape_mismatch_names_the_file(tmp_path: Path) -> None:
    root = _make_dataset(tmp_path / "ds")
    write_volume(root / "labels" / "vol_01.tif", np.zeros((3, 16, 16), np.uint32), overwrite=True)
    with pytest.raises(AopError) as info:
        load_dataset(root)
    expected = "labels/vol_01.tif: shape (3, 16, 16) does not match image (4, 16, 16)"
    assert str(info.value) == expected


@pytest.mark.parametrize(
    "labels, message",
    [
        (np.full((4, 16, 16), -1, np.int32), "labels/vol_00.tif: labels must be non-negative"),
        (np.full((4, 16, 16), 0.5, np.float32), "labels/vol_00.tif: labels must be integers"),
    ],
)
def test_bad_labels_are_named(tmp_path: Path, labels: np.ndarray, message: str) -> None:
    root = _make_dataset(tmp_path / "ds")
    write_volume(root / "labels" / "vol_00.tif", labels, overwrite=True)
    with pytest.raises(AopError, match=message):
        load_dataset(root)


def test_non_finite_image_is_named(tmp_path: Path) -> None:
    root = _make_dataset(tmp_path / "ds")
    image = np.zeros((4, 16, 16), np.float32)
    image[0, 0, 0] = np.nan
    write_volume(root / "images" / "vol_01.tif", image, overwrite=True)
    with pytest.raises(AopError, match="images/vol_01.tif: image has non-finite values"):
        load_dataset(root)


def test_pairing_problems(tmp_path: Path) -> None:
    root = _make_dataset(tmp_path / "ds")
    write_volume(root / "labels" / "orphan.tif", np.zeros((4, 16, 16), np.uint32))
    with pytest.raises(AopError, match="labels/orphan.tif: no image images/orphan"):
        load_dataset(root)
    (root / "labels" / "orphan.tif").unlink()
    (root / "labels" / "vol_00.tif").unlink()
    assert not load_dataset(root).has_labels
    with pytest.raises(AopError, match=r"images/vol_00.tif: no labels/vol_00\.\* for this image"):
        load_dataset(root, require_labels=True)


def test_empty_or_missing_folders(tmp_path: Path) -> None:
    with pytest.raises(AopError, match="data-set folder not found"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(AopError, match="no volumes in images/"):
        load_dataset(tmp_path / "empty")


@pytest.mark.parametrize(
    "content, message",
    [
        ("name: x\nvoxel_sise: [1, 1, 1]\n", "unknown key 'voxel_sise'"),
        ("voxel_size: [1, 0, 1]\n", "voxel_size must be three positive numbers"),
        ("voxel_size: [1, 1]\n", "voxel_size must be three positive numbers"),
        ("name: [unclosed\n", "not valid YAML"),
        ("- a\n- b\n", "expected a mapping"),
    ],
)
def test_bad_dataset_yaml(tmp_path: Path, content: str, message: str) -> None:
    root = _make_dataset(tmp_path / "ds")
    (root / "dataset.yaml").write_text(content)
    with pytest.raises(AopError, match=message):
        load_dataset(root)


def test_dataset_yaml_is_plain_yaml(tmp_path: Path) -> None:
    root = _make_dataset(tmp_path / "ds")
    raw = yaml.safe_load((root / "dataset.yaml").read_text())
    assert raw == {
        "name": "toy",
        "voxel_size": [2.0, 0.5, 0.5],
        "channel_names": ["dapi"],
        "provenance": {"seed": 3},
    }


def test_cli_info_and_error_line(tmp_path: Path) -> None:
    root = _make_dataset(tmp_path / "ds")
    runner = CliRunner()
    result = runner.invoke(app, ["info", str(root)])
    assert result.exit_code == 0, result.output
    assert "vol_00" in result.output and "(4, 16, 16)" in result.output
    write_volume(root / "labels" / "vol_00.tif", np.zeros((4, 16, 15), np.uint32), overwrite=True)
    result = runner.invoke(app, ["info", str(root)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert lines == ["error: labels/vol_00.tif: shape (4, 16, 15) does not match image (4, 16, 16)"]
