"""``aop postprocess`` on files."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from aop.cli import app
from aop.io import read_volume, write_volume
from aop.segmentation.postprocess import PostprocessParams, postprocess

runner = CliRunner()


@pytest.fixture()
def files(tmp_path, nuclei_3d):
    image, labels = nuclei_3d
    pred = write_volume(tmp_path / "pred.tif", labels.astype(np.uint16), spacing=(2.0, 1.0, 1.0))
    raw = write_volume(tmp_path / "raw.tif", image)
    return tmp_path, pred, raw, image, labels


def test_cli_writes_what_the_library_computes(files):
    tmp, pred, raw, image, labels = files
    out = tmp / "out.tif"
    table = tmp / "edges.csv"
    args = ["postprocess", str(pred), str(raw), "--out", str(out), "--erode-dilate", "-1"]
    args += ["--open-close", "2", "--merge-smoothness", "0.7", "--split-threshold", "0.9"]
    result = runner.invoke(app, [*args, "--features", str(table)])
    assert result.exit_code == 0, result.output
    written, spacing = read_volume(out)
    assert spacing == pytest.approx((2.0, 1.0, 1.0))  # taken from PRED's metadata
    values = {
        **PostprocessParams.zeros().to_dict(),
        "erode_dilate": -1,
        "open_close": 2,
        "merge_smoothness": 0.7,
        "split_threshold": 0.9,
    }
    np.testing.assert_array_equal(written, postprocess(labels, image, values, (2.0, 1.0, 1.0)))
    edges = pd.read_csv(table)
    assert list(edges.columns) == ["a", "b", "contact_faces", "contact_area", "f_c", "f_s", "f_r"]
    assert len(edges) > 10 and edges[["f_c", "f_s", "f_r"]].to_numpy().max() <= 1.0
    assert f"-> {int(written.max())}" in result.output


def test_spacing_option_overrides_the_metadata(files):
    tmp, pred, raw, image, labels = files
    out = tmp / "iso.npy"
    args = ["postprocess", str(pred), str(raw), "-o", str(out), "--erode-dilate", "2"]
    result = runner.invoke(app, [*args, "--spacing", "1", "1", "1"])
    assert result.exit_code == 0, result.output
    values = {**PostprocessParams.zeros().to_dict(), "erode_dilate": 2}
    np.testing.assert_array_equal(np.load(out), postprocess(labels, image, values, None))


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--erode-dilate", "11"),
        ("--open-close", "-6"),
        ("--merge-area", "1.5"),
        ("--split-sigma", "-0.1"),
    ],
)
def test_out_of_range_option_is_one_line_and_writes_nothing(files, option, value):
    tmp, pred, raw, _, _ = files
    out = tmp / "bad.tif"
    result = runner.invoke(app, ["postprocess", str(pred), str(raw), "-o", str(out), option, value])
    assert result.exit_code == 2
    assert option in result.output and value in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists()


def test_shape_mismatch_and_missing_file(files, tmp_path):
    tmp, pred, _, _, _ = files
    other = write_volume(tmp / "small.tif", np.zeros((4, 5, 6), np.float32))
    out = tmp / "x.tif"
    result = runner.invoke(app, ["postprocess", str(pred), str(other), "-o", str(out)])
    assert result.exit_code == 2 and "differs" in result.output and not out.exists()
    result = runner.invoke(app, ["postprocess", str(tmp / "nope.tif"), str(other), "-o", str(out)])
    assert result.exit_code == 2 and "nope.tif" in result.output
