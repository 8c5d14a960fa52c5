"""The class table: classes in dataset.yaml, annotations.csv reading, validation, atomic writes."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd
import pytest
import yaml

from aop.errors import AopError
from aop.instances import (
    ANNOTATIONS_FILE,
    BAD_SEGMENTATION,
    COLUMNS,
    ClassSpec,
    append_annotations,
    read_annotations,
    read_classes,
    remove_annotations,
    replace_annotations,
    write_classes,
)
from aop.io import DatasetInfo, load_dataset, write_dataset


@pytest.fixture
def dataset(tmp_path):
    labels_a = np.zeros((4, 8, 8), np.uint16)
    labels_a[:, :4] = 1
    labels_a[:, 4:] = 3  # ids 1 and 3 (2 does not exist)
    labels_b = np.zeros((4, 8, 8), np.uint16)
    labels_b[1:3, 2:6, 2:6] = 7
    image = np.ones((4, 8, 8), np.float32)
    root = write_dataset(
        tmp_path / "ds",
        [("a", image, labels_a), ("b", image, labels_b)],
        DatasetInfo("ds", (2.0, 0.5, 0.5), provenance={"seed": 3}),
    )
    write_classes(root, ["myotube", ClassSpec("schwann", "s")])
    return root


def _row(volume="a", label=1, name="myotube", source="manual", **extra):
    return {"volume": volume, "label": label, "class": name, "source": source, **extra}


def test_classes_round_trip_keep_other_keys(dataset):
    assert read_classes(dataset) == [ClassSpec("myotube", "1"), ClassSpec("schwann", "s")]
    raw = yaml.safe_load((dataset / "dataset.yaml").read_text())
    assert raw["classes"] == [{"name": "myotube", "key": "1"}, {"name": "schwann", "key": "s"}]
    assert raw["voxel_size"] == [2.0, 0.5, 0.5] and raw["provenance"] == {"seed": 3}
    assert load_dataset(dataset).info.classes == raw["classes"]  # aop.io accepts the key


@pytest.mark.parametrize(
    "classes, message",
    [
        ([ClassSpec("a", "1"), ClassSpec("b", "1")], "classes.1.key '1' is already taken"),
        ([ClassSpec("a", "x")], "classes.0.key 'x' is already taken"),
        (["a", "a"], "classes.1.name 'a' is declared twice"),
        ([BAD_SEGMENTATION], "is reserved"),
        ([ClassSpec("a", "12")], "classes.0.key must be one character"),
    ],
)
def test_bad_classes_are_refused_and_nothing_is_written(dataset, classes, message):
    before = (dataset / "dataset.yaml").read_text()
    with pytest.raises(AopError, match=message):
        write_classes(dataset, classes)
    assert (dataset / "dataset.yaml").read_text() == before


def test_missing_table_reads_empty_with_columns(dataset):
    frame = read_annotations(dataset)
    assert tuple(frame.columns) == COLUMNS and len(frame) == 0
    assert frame["label"].dtype == np.int64


def test_append_read_remove(dataset):
    n = append_annotations(
        dataset,
        [
            _row(annotator="ann", time="2026-01-02T03:04:05Z"),
            _row("a", 3, "schwann"),
            _row("b", 7, BAD_SEGMENTATION),
            _row("a", 1, "schwann", source="spread"),  # other sources may repeat a pair
        ],
    )
    assert n == 4
    frame = read_annotations(dataset)
    assert tuple(frame.columns) == COLUMNS
    assert frame["label"].tolist() == [1, 3, 7, 1]
    assert frame["label"].dtype == np.int64
    assert frame.loc[0, "time"] == "2026-01-02T03:04:05+00:00"
    assert frame.loc[0, "annotator"] == "ann" and frame.loc[1, "annotator"] == ""
    stamp = pd.Timestamp(frame.loc[1, "time"])
    assert stamp.tz is not None and abs(pd.Timestamp.now(tz="UTC") - stamp).total_seconds() < 60
    assert remove_annotations(dataset, [("a", 1)]) == 1  # only the manual row
    left = read_annotations(dataset)
    assert list(zip(left["label"], left["source"], strict=True)) == [
        (3, "manual"),
        (7, "manual"),
        (1, "spread"),
    ]
    assert remove_annotations(dataset, [("a", 1)]) == 0


@pytest.mark.parametrize(
    "row, message",
    [
        (_row(volume="zz"), "new row 2: unknown volume 'zz'"),
        (_row(label=2), "new row 2: label 2 does not exist in labels/a.tif"),
        (_row(name="ghost"), "new row 2: undeclared class 'ghost'"),
        (_row(source="guess"), "new row 2: bad source 'guess'"),
        (_row(), "new row 2: duplicate manual annotation of a label 1"),
        (_row(label="x"), "new row 2: label must be a positive integer"),
        (_row(label=3, time="yesterday"), "new row 2: time must be ISO 8601"),
        ({"volume": "a", "label": 3, "class": "myotube"}, "new row 2: missing 'source'"),
    ],
)
def test_append_is_all_or_nothing(dataset, row, message):
    append_annotations(dataset, [_row("b", 7)])
    before = (dataset / ANNOTATIONS_FILE).read_text()
    with pytest.raises(AopError, match=message):
        append_annotations(dataset, [_row(), row])
    assert (dataset / ANNOTATIONS_FILE).read_text() == before
    assert len(read_annotations(dataset)) == 1


@pytest.mark.parametrize(
    "line, message",
    [
        ("c,1,myotube,manual,,2026-01-01T00:00:00+00:00", "line 3: unknown volume 'c'"),
        ("a,2,myotube,manual,,2026-01-01T00:00:00+00:00", "line 3: label 2 does not exist"),
        ("a,3,ghost,manual,,2026-01-01T00:00:00+00:00", "line 3: undeclared class 'ghost'"),
        ("a,1,schwann,manual,,2026-01-01T00:00:00+00:00", "line 3: duplicate manual"),
        ("a,3,myotube,human,,2026-01-01T00:00:00+00:00", "line 3: bad source 'human'"),
    ],
)
def test_reading_names_the_bad_line(dataset, line, message):
    good = "a,1,myotube,manual,,2026-01-01T00:00:00+00:00"
    (dataset / ANNOTATIONS_FILE).write_text(",".join(COLUMNS) + f"\n{good}\n{line}\n")
    with pytest.raises(AopError, match=f"annotations.csv {message}"):
        read_annotations(dataset)


def test_label_check_can_be_skipped_and_bad_columns_are_named(dataset):
    (dataset / ANNOTATIONS_FILE).write_text(
        ",".join(COLUMNS) + "\na,2,myotube,manual,,2026-01-01T00:00:00+00:00\n"
    )
    assert read_annotations(dataset, check_labels=False)["label"].tolist() == [2]
    (dataset / ANNOTATIONS_FILE).write_text("volume,label,klass\na,1,myotube\n")
    with pytest.raises(AopError, match="columns must be volume, label, class"):
        read_annotations(dataset)


def test_replace_keeps_other_sources(dataset):
    append_annotations(dataset, [_row(), _row("a", 3, "schwann", source="truth")])
    spread = [_row("a", 3, source="spread"), {"volume": "b", "label": 7, "class": "myotube"}]
    assert replace_annotations(dataset, spread, "spread") == 2
    assert replace_annotations(dataset, [_row("b", 7, "schwann", source="spread")], "spread") == 1
    with pytest.raises(AopError, match="new row 1: source 'manual' is not 'spread'"):
        replace_annotations(dataset, [_row("b", 7)], "spread")
    frame = read_annotations(dataset)
    assert frame["source"].tolist() == ["manual", "truth", "spread"]
    assert frame.loc[2, "class"] == "schwann"


def test_concurrent_appends_lose_no_row(dataset):
    keys = [("a", 1), ("a", 3), ("b", 7)]

    def annotate(source):
        for volume, label in keys:
            append_annotations(dataset, [_row(volume, label, source=source)])

    threads = [threading.Thread(target=annotate, args=(s,)) for s in ("spread", "predicted")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(read_annotations(dataset)) == 6
