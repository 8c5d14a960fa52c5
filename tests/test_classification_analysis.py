"""`aop analyze`: class counts per volume, instance volumes in µm³, summary, CSV and PNG."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from typer.testing import CliRunner

from aop.analysis.classes import UNCLASSIFIED, class_analysis, write_class_analysis
from aop.errors import AopError
from aop.instances.annotations import read_annotations, write_classes
from aop.io import DatasetInfo, write_dataset

runner = CliRunner()


def boxes(shape, spec):
    """Labels with one axis-aligned box per (label, z0, z1, y0, y1, x0, x1)."""
    labels = np.zeros(shape, np.uint16)
    for label, z0, z1, y0, y1, x0, x1 in spec:
        labels[z0:z1, y0:y1, x0:x1] = label
    return labels


@pytest.fixture(scope="module")
def classified(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis") / "data"
    # voxel 2 x 0.5 x 0.5 µm = 0.5 µm³
    a = boxes(
        (4, 20, 20), [(1, 0, 2, 0, 2, 0, 2), (2, 0, 4, 5, 9, 5, 9), (7, 0, 1, 12, 15, 12, 15)]
    )
    b = boxes((4, 20, 20), [(3, 0, 2, 0, 4, 0, 4), (5, 1, 3, 10, 12, 10, 11)])
    image = np.zeros((4, 20, 20), np.float32)
    write_dataset(root, [("a", image, a), ("b", image, b)],
                  DatasetInfo(name="t", voxel_size=(2.0, 0.5, 0.5)))
    write_classes(root, ["large", "small"])
    rows = [
        ("a", 1, "small", "predicted"), ("a", 1, "large", "manual"),  # manual wins
        ("a", 2, "large", "predicted"), ("a", 2, "small", "spread"),  # predicted wins
        ("b", 3, "large", "spread"),                                  # only spread
        ("b", 5, "small", "truth"),
        # a:7 has no row -> unclassified
    ]
    table = pd.DataFrame(rows, columns=["volume", "label", "class", "source"])
    table["annotator"] = ""
    table["time"] = "2026-01-01T00:00:00Z"
    table.to_csv(root / "annotations.csv", index=False)
    return root


def test_counts_volumes_and_summary(classified):
    result = class_analysis(classified)
    assert result.classes == ["large", "small", UNCLASSIFIED]
    counts = result.counts.set_index("volume")
    assert counts.loc["a"].to_dict() == {"large": 2, "small": 0, UNCLASSIFIED: 1, "total": 3}
    assert counts.loc["b"].to_dict() == {"large": 1, "small": 1, UNCLASSIFIED: 0, "total": 2}
    inst = result.instances.set_index(["volume", "label"])
    # voxel counts x 0.5 µm³
    assert inst.loc[("a", 1), "volume_um3"] == 8 * 0.5 and inst.loc[("a", 1), "source"] == "manual"
    assert inst.loc[("a", 2), "volume_um3"] == 64 * 0.5 and inst.loc[("a", 2), "class"] == "large"
    assert inst.loc[("b", 3), "volume_um3"] == 32 * 0.5
    assert inst.loc[("b", 5), "volume_um3"] == 4 * 0.5
    assert inst.loc[("a", 7), "class"] == UNCLASSIFIED
    summary = result.summary.set_index("class")
    assert summary.loc["large", "instances"] == 3
    assert summary.loc["large", "mean_um3"] == pytest.approx(np.mean([4.0, 32.0, 16.0]))
    assert summary.loc["large", "std_um3"] == pytest.approx(np.std([4.0, 32.0, 16.0], ddof=1))
    assert summary.loc["small", "median_um3"] == 2.0
    assert summary["fraction"].sum() == pytest.approx(1.0)
    # only manual and truth rows count
    only = class_analysis(classified, sources=("manual", "truth"))
    assert only.counts.set_index("volume").loc["a", UNCLASSIFIED] == 2


def test_write_and_cli(classified, tmp_path):
    from aop.cli import app

    paths = write_class_analysis(class_analysis(classified), tmp_path / "out")
    assert sorted(p.name for p in paths) == [
        "class_counts.csv", "class_counts.png", "instance_volumes.csv", "summary.csv",
        "volume_distributions.png",
    ]
    assert imread(tmp_path / "out" / "class_counts.png").shape[2] in (3, 4)
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    result = runner.invoke(app, ["analyze", str(classified), "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert "large" in result.output and (tmp_path / "cli" / "summary.csv").is_file()
    back = pd.read_csv(tmp_path / "cli" / "summary.csv")
    assert back["instances"].tolist() == [3, 1, 1]


def test_bad_tables_are_one_line(classified, tmp_path):
    import shutil

    from aop.cli import app

    root = tmp_path / "bad"
    shutil.copytree(classified, root)
    table = pd.read_csv(root / "annotations.csv")
    time = "2026-01-01T00:00:00Z"
    table.loc[len(table)] = ["b", 9, "small", "manual", "", time]
    table.to_csv(root / "annotations.csv", index=False)
    missing = r"annotations.csv line 8: label 9 does not exist in labels/b"
    with pytest.raises(AopError, match=missing):
        class_analysis(root)
    result = runner.invoke(app, ["analyze", str(root)])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert not (root / "analysis").exists()
    table.loc[len(table) - 1] = ["c", 1, "small", "manual", "", time]
    table.to_csv(root / "annotations.csv", index=False)
    with pytest.raises(AopError, match="line 8: unknown volume 'c'"):
        class_analysis(root)
    (root / "annotations.csv").write_text("volume,label\na,1\n")
    with pytest.raises(AopError, match="columns must be volume, label, class, source"):
        read_annotations(root)
    header = "volume,label,class,source,annotator,time"
    (root / "annotations.csv").write_text(f"{header}\na,x,small,manual,,{time}\n")
    with pytest.raises(AopError, match="line 2: label must be a positive integer, got 'x'"):
        class_analysis(root)
    with pytest.raises(AopError, match="unknown source 'guess'"):
        class_analysis(classified, sources=("manual", "guess"))
