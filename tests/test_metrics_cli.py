"""``aop score``: volume files and data-set folders, table and JSON output, malformed input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi
from typer.testing import CliRunner

from aop.cli import app
from aop.io import DatasetInfo, write_dataset, write_volume
from aop.metrics import evaluate

runner = CliRunner()


def _prediction(labels: np.ndarray) -> np.ndarray:
    """Eroded nuclei, one of them dropped and one split in two along x."""
    inner = ndi.grey_erosion(labels, size=(1, 3, 3)) == ndi.grey_dilation(labels, size=(1, 3, 3))
    pred = np.where(inner, labels, 0).astype(np.uint32)
    ids = np.unique(labels[labels > 0])
    pred[labels == ids[0]] = 0
    split = pred == ids[1]
    xs = np.nonzero(split)[2]
    pred[split & (np.arange(labels.shape[2]) >= int(np.median(xs)))[None, None, :]] = 60000
    return pred


@pytest.fixture(scope="module")
def real_pair(nuclei_3d):
    _, labels = nuclei_3d
    return labels, _prediction(labels)


def test_score_two_volume_files_as_json(real_pair, tmp_path):
    gt, pred = real_pair
    write_volume(tmp_path / "gt.tif", gt)
    write_volume(tmp_path / "pred.npy", pred)
    result = runner.invoke(app, ["score", str(tmp_path / "gt.tif"), str(tmp_path / "pred.npy"),
                                 "--json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    (row,) = report["volumes"]
    expected = evaluate(gt, pred)
    assert row["name"] == "gt"
    for key, value in expected.items():
        assert row[key] == pytest.approx(value, abs=1e-12), key
    assert report["mean"]["ipq"] == pytest.approx(expected["ipq"])
    assert row["extra_fragments"] == 1 and row["n_gt"] == 51 and row["fn"] >= 1
    assert row["iq"] == pytest.approx(51 / 52)  # one nucleus split in two
    assert 0.3 < row["ipq"] < 1.0


def test_score_prints_a_table(real_pair, tmp_path):
    gt, pred = real_pair
    np.save(tmp_path / "gt.npy", gt)
    np.save(tmp_path / "pred.npy", pred)
    result = runner.invoke(app, ["score", str(tmp_path / "gt.npy"), str(tmp_path / "pred.npy"),
                                 "--iou-threshold", "0.6"])  # fmt: skip
    assert result.exit_code == 0, result.output
    expected = evaluate(gt, pred, iou_threshold=0.6)
    for header in ("IPQ", "SQ", "RQ", "IQ", "PQ", "AP@0.6", "SEG"):
        assert header in result.stdout
    assert f"{expected['ipq']:.3f}" in result.stdout
    assert f"{expected['seg']:.3f}" in result.stdout


def _datasets(tmp_path, real_pair, pred_layout: str):
    gt, pred = real_pair
    image = np.zeros(gt.shape, np.uint16)
    volumes = [("a", image, gt), ("b", image, gt[:, ::-1].copy())]
    write_dataset(tmp_path / "gt", volumes, DatasetInfo(name="gt"))
    predictions = {"a": pred, "b": gt[:, ::-1].copy()}
    for name, labels in predictions.items():
        folder = tmp_path / "pred" / ("labels" if pred_layout == "labels" else "")
        write_volume(folder / f"{name}.tif", labels)
    return predictions


@pytest.mark.parametrize("pred_layout", ["labels", "flat"])
def test_score_pairs_data_set_folders_by_name(real_pair, tmp_path, pred_layout):
    gt, pred = real_pair
    _datasets(tmp_path, real_pair, pred_layout)
    result = runner.invoke(app, ["score", str(tmp_path / "gt"), str(tmp_path / "pred"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    by_name = {row["name"]: row for row in report["volumes"]}
    assert sorted(by_name) == ["a", "b"]
    assert by_name["b"]["ipq"] == 1.0  # b is predicted perfectly
    assert by_name["a"]["ipq"] == pytest.approx(evaluate(gt, pred)["ipq"])
    assert report["mean"]["ipq"] == pytest.approx((by_name["a"]["ipq"] + 1.0) / 2)
    table = runner.invoke(app, ["score", str(tmp_path / "gt"), str(tmp_path / "pred")])
    assert table.exit_code == 0 and "mean of 2" in table.stdout


def _one_line_error(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_shape_mismatch_is_one_line_naming_the_file(real_pair, tmp_path):
    gt, pred = real_pair
    write_volume(tmp_path / "gt.tif", gt)
    write_volume(tmp_path / "short.tif", pred[:-1])
    result = runner.invoke(app, ["score", str(tmp_path / "gt.tif"), str(tmp_path / "short.tif")])
    line = _one_line_error(result)
    assert "short.tif" in line and "does not match" in line and "(30, 61, 57)" in line


def test_missing_prediction_is_one_line(real_pair, tmp_path):
    _datasets(tmp_path, real_pair, "flat")
    (tmp_path / "pred" / "b.tif").unlink()
    result = runner.invoke(app, ["score", str(tmp_path / "gt"), str(tmp_path / "pred")])
    line = _one_line_error(result)
    assert "no prediction for volume 'b'" in line


def test_unmatched_prediction_is_one_line(real_pair, tmp_path):
    gt, _ = real_pair
    _datasets(tmp_path, real_pair, "labels")
    write_volume(tmp_path / "pred" / "labels" / "c.tif", gt)
    result = runner.invoke(app, ["score", str(tmp_path / "gt"), str(tmp_path / "pred")])
    assert "c.tif: no ground-truth volume 'c'" in _one_line_error(result)


def test_bad_labels_and_paths_are_one_line(tmp_path):
    gt = np.zeros((4, 8, 8), np.uint8)
    gt[1:3, 2:6, 2:6] = 1
    np.save(tmp_path / "gt.npy", gt)
    np.save(tmp_path / "float.npy", gt * 0.5)
    result = runner.invoke(app, ["score", str(tmp_path / "gt.npy"), str(tmp_path / "float.npy")])
    line = _one_line_error(result)
    assert "float.npy" in line and "integers" in line
    result = runner.invoke(app, ["score", str(tmp_path / "gt.npy"), str(tmp_path / "nope.npy")])
    assert "nope.npy" in _one_line_error(result)
    (tmp_path / "empty").mkdir()
    result = runner.invoke(app, ["score", str(tmp_path / "gt.npy"), str(tmp_path / "empty")])
    assert "no label volumes" in _one_line_error(result)
    result = runner.invoke(app, ["score", str(tmp_path / "gt.npy"), str(tmp_path / "gt.npy"),
                                 "--iou-threshold", "1.5"])  # fmt: skip
    assert "--iou-threshold" in _one_line_error(result)
