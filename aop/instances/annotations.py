"""The class table of a data set: instance classes, their keys, and ``annotations.csv``.

This module alone owns the format; the annotation page, label spreading, the classifier study and
the analysis read and write the table through it.

- The classes are declared in ``dataset.yaml`` as
  ``classes: [{name: myotube, key: "1"}, {name: schwann, key: "2"}, ...]``. A class name is a
  non-empty string without commas or control characters (a newline, a tab), and no two names
  differ only by case (``Myotube`` beside ``myotube`` would split one class in two); a key is one
  character, unique among the classes. The class :data:`BAD_SEGMENTATION` (key ``x``) is always
  allowed and never declared.
- ``DATASET_DIR/annotations.csv`` has one row per annotation with the columns :data:`COLUMNS`:
  ``volume`` (a volume name of ``images/``), ``label`` (an instance id of ``labels/<volume>``),
  ``class``, ``source`` (one of :data:`SOURCES`), ``annotator`` (free text, may be empty) and
  ``time`` (ISO 8601, UTC, e.g. ``2026-12-01T21:40:00+00:00``).
- A ``(volume, label)`` pair has at most one ``manual`` row; other sources may repeat a pair
  (a classifier's predictions beside label spreading's pseudo-labels, for instance).

Every write builds the new table beside the old one and renames it into place, under an exclusive
lock (``.annotations.csv.lock``), so concurrent writers never lose rows and a reader never sees
half a file. Every problem is one :class:`aop.errors.AopError` line naming the file and the row
(``DATASET/annotations.csv line 3``: the header is line 1; ``new row 2`` for rows being added).
"""

from __future__ import annotations

import io
import os
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from filelock import FileLock

from aop.errors import AopError
from aop.outputs import atomic_file

__all__ = [
    "ANNOTATIONS_FILE",
    "BAD_SEGMENTATION",
    "COLUMNS",
    "SOURCES",
    "ClassSpec",
    "append_annotations",
    "read_annotations",
    "read_classes",
    "remove_annotations",
    "replace_annotations",
    "write_classes",
]

ANNOTATIONS_FILE = "annotations.csv"
COLUMNS = ("volume", "label", "class", "source", "annotator", "time")
SOURCES = ("manual", "spread", "truth", "predicted")
BAD_SEGMENTATION = "bad_segmentation"
BAD_SEGMENTATION_KEY = "x"

_DATASET_FILE = "dataset.yaml"


@dataclass(frozen=True)
class ClassSpec:
    """One instance class: its name and the keyboard key that assigns it on the annotation page."""

    name: str
    key: str


# --------------------------------------------------------------------------------------------------
# Classes in dataset.yaml
# --------------------------------------------------------------------------------------------------


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise AopError(f"{path}: not valid YAML") from None
    if not isinstance(raw, dict):
        raise AopError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    return raw


def _check_classes(specs: Sequence[ClassSpec], where: str) -> None:
    names: dict[str, str] = {BAD_SEGMENTATION.casefold(): BAD_SEGMENTATION}  # casefold -> name
    keys: set[str] = {BAD_SEGMENTATION_KEY}
    for i, spec in enumerate(specs):
        if not isinstance(spec.name, str) or not spec.name.strip() or "," in spec.name:
            raise AopError(f"{where}: classes.{i}.name must be a non-empty name without commas")
        if any(unicodedata.category(c).startswith("C") for c in spec.name):
            raise AopError(
                f"{where}: classes.{i}.name {spec.name!r} holds a control character (a newline, "
                "a tab); a class name is one line of text"
            )
        if spec.name == BAD_SEGMENTATION:
            raise AopError(f"{where}: classes.{i}.name {BAD_SEGMENTATION!r} is reserved")
        same = names.get(spec.name.casefold())
        if same == spec.name:
            raise AopError(f"{where}: classes.{i}.name {spec.name!r} is declared twice")
        if same is not None:
            raise AopError(
                f"{where}: classes.{i}.name {spec.name!r} differs from the class {same!r} only "
                "by case; name each class one way"
            )
        if not isinstance(spec.key, str) or len(spec.key) != 1:
            raise AopError(f"{where}: classes.{i}.key must be one character, got {spec.key!r}")
        if spec.key in keys:
            raise AopError(f"{where}: classes.{i}.key {spec.key!r} is already taken")
        names[spec.name.casefold()] = spec.name
        keys.add(spec.key)


def read_classes(dataset_dir: str | os.PathLike) -> list[ClassSpec]:
    """The instance classes declared in ``dataset.yaml`` (empty when none are).

    Parameters
    ----------
    dataset_dir : str or path-like
        The data-set folder.

    Returns
    -------
    list of ClassSpec
        In declaration order; :data:`BAD_SEGMENTATION` is not listed (it is always allowed).

    Raises
    ------
    AopError
        Naming ``classes.N.name`` or ``classes.N.key`` when an entry is malformed.

    Examples
    --------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> write_classes(root, ["myotube", "schwann"])
    >>> read_classes(root)
    [ClassSpec(name='myotube', key='1'), ClassSpec(name='schwann', key='2')]
    """
    path = Path(dataset_dir) / _DATASET_FILE
    raw = _read_yaml(path).get("classes") or []
    if not isinstance(raw, list):
        raise AopError(f"{path}: classes must be a list of {{name, key}}, got {raw!r}")
    specs = []
    for i, entry in enumerate(raw):
        if isinstance(entry, str):
            entry = {"name": entry}
        if not isinstance(entry, dict) or "name" not in entry:
            raise AopError(f"{path}: classes.{i} must be a mapping with name and key")
        unknown = sorted(set(entry) - {"name", "key"})
        if unknown:
            raise AopError(f"{path}: classes.{i}: unknown key {unknown[0]!r} (known: key, name)")
        key = entry.get("key", str(i + 1) if i < 9 else None)
        specs.append(ClassSpec(str(entry["name"]), None if key is None else str(key)))  # type: ignore[arg-type]
    _check_classes(specs, str(path))
    return specs


def write_classes(dataset_dir: str | os.PathLike, classes: Sequence[ClassSpec | str]) -> None:
    """Declare the instance classes in ``dataset.yaml`` (an atomic rewrite; other keys are kept).

    Parameters
    ----------
    dataset_dir : str or path-like
        The data-set folder.
    classes : sequence of ClassSpec or str
        A bare name gets the key ``"1"``, ``"2"``, ... by its position (up to nine).

    Raises
    ------
    AopError
        When a name or key is malformed, repeated or reserved.
    """
    root = Path(dataset_dir)
    path = root / _DATASET_FILE
    specs = []
    for i, item in enumerate(classes):
        if isinstance(item, ClassSpec):
            specs.append(item)
        else:
            if i >= 9:
                raise AopError(f"class {item!r}: give a key (only nine default keys, 1..9)")
            specs.append(ClassSpec(str(item), str(i + 1)))
    _check_classes(specs, str(path))
    raw = _read_yaml(path) or {"name": root.name}
    raw["classes"] = [{"name": s.name, "key": s.key} for s in specs]
    _atomic_write(path, yaml.safe_dump(raw, sort_keys=False))


# --------------------------------------------------------------------------------------------------
# annotations.csv
# --------------------------------------------------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def _locked(root: Path) -> FileLock:
    """An exclusive lock over read-modify-write of the table (across threads and processes).

    The lock file ``.annotations.csv.lock`` is aop's own and stays in the data-set folder (all
    writers lock the same file); ``root`` must exist (the lock would create it).
    """
    if not root.is_dir():
        raise AopError(f"{root}: data-set folder not found")
    return FileLock(root / f".{ANNOTATIONS_FILE}.lock")


def _empty() -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype=object) for c in COLUMNS})
    frame["label"] = frame["label"].astype(np.int64)
    return frame


_LABEL_CACHE: dict[Path, tuple[tuple[int, int], frozenset[int]]] = {}


def _label_ids(path: Path) -> frozenset[int]:
    """The instance ids of a label volume, cached by file modification time and size."""
    import fastremap

    from aop.io import read_volume

    stat = path.stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    cached = _LABEL_CACHE.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    data, _ = read_volume(path)
    ids = frozenset(int(v) for v in fastremap.unique(np.asarray(data)) if v != 0)
    _LABEL_CACHE[path] = (stamp, ids)
    return ids


class _Checker:
    """Validates rows against one data set: volumes, labels, classes, sources, duplicates."""

    def __init__(self, root: Path, check_labels: bool) -> None:
        from aop.io import find_volumes

        self.root = root
        self.volumes = find_volumes(root / "images")
        self.label_files = find_volumes(root / "labels")
        self.classes = {s.name for s in read_classes(root)} | {BAD_SEGMENTATION}
        self.check_labels = check_labels
        self.manual: set[tuple[str, int]] = set()

    def row(self, where: str, values: Mapping[str, Any]) -> dict[str, Any]:
        missing = [c for c in ("volume", "label", "class", "source") if _blank(values.get(c))]
        if missing:
            raise AopError(f"{where}: missing {missing[0]!r}")
        unknown = sorted(set(values) - set(COLUMNS))
        if unknown:
            raise AopError(f"{where}: unknown column {unknown[0]!r} (known: {', '.join(COLUMNS)})")
        volume = str(values["volume"])
        if volume not in self.volumes:
            raise AopError(f"{where}: unknown volume {volume!r} (no images/{volume}.*)")
        label = _as_label(values["label"], where)
        if self.check_labels:
            label_path = self.label_files.get(volume)
            if label_path is None:
                raise AopError(f"{where}: volume {volume!r} has no labels/{volume}.*")
            if label not in _label_ids(label_path):
                rel = label_path.relative_to(self.root)
                raise AopError(f"{where}: label {label} does not exist in {rel}")
        name = str(values["class"])
        if name not in self.classes:
            known = ", ".join(sorted(self.classes))
            raise AopError(f"{where}: undeclared class {name!r} (declared: {known})")
        source = str(values["source"])
        if source not in SOURCES:
            raise AopError(f"{where}: bad source {source!r} (one of {', '.join(SOURCES)})")
        if source == "manual":
            if (volume, label) in self.manual:
                raise AopError(f"{where}: duplicate manual annotation of {volume} label {label}")
            self.manual.add((volume, label))
        annotator = "" if _blank(values.get("annotator")) else str(values["annotator"])
        time = values.get("time")
        time = _now() if _blank(time) else _as_time(time, where)
        return {
            "volume": volume,
            "label": label,
            "class": name,
            "source": source,
            "annotator": annotator,
            "time": time,
        }


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or value == ""


def _as_label(value: Any, where: str) -> int:
    try:
        number = float(value)
        label = int(number)
    except (TypeError, ValueError):
        raise AopError(f"{where}: label must be a positive integer, got {value!r}") from None
    if label != number or label < 1:
        raise AopError(f"{where}: label must be a positive integer, got {value!r}")
    return label


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _as_time(value: Any, where: str) -> str:
    try:
        stamp = datetime.fromisoformat(str(value))
    except ValueError:
        raise AopError(f"{where}: time must be ISO 8601 (e.g. 2026-01-31T12:00:00Z)") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.astimezone(UTC).isoformat(timespec="seconds")


def _frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    if not rows:
        return _empty()
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["label"] = frame["label"].astype(np.int64)
    return frame


def _load_rows(root: Path, checker: _Checker) -> list[dict[str, Any]]:
    path = root / ANNOTATIONS_FILE
    if not path.is_file():
        return []
    try:
        text: str | None = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\x00" in text:
        raise AopError(f"{path}: not a text file (binary data, or not UTF-8; expected CSV)")
    try:
        raw = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        return []
    except pd.errors.ParserError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AopError(f"{path}: not a readable CSV table ({reason})") from None
    if tuple(raw.columns) != COLUMNS:
        got = ", ".join(ascii(str(c))[1:-1] for c in raw.columns)  # one printable line
        raise AopError(f"{path}: columns must be {', '.join(COLUMNS)}, got {got[:200]}")
    return [
        checker.row(f"{path} line {i + 2}", record)
        for i, record in enumerate(raw.to_dict("records"))
    ]


def read_annotations(
    dataset_dir: str | os.PathLike, *, check_labels: bool = True
) -> pd.DataFrame:
    """Read and validate ``annotations.csv``.

    Parameters
    ----------
    dataset_dir : str or path-like
        The data-set folder.
    check_labels : bool
        Check that each label exists in ``labels/<volume>`` (reads each label volume once; the
        ids are cached while the file is unchanged).

    Returns
    -------
    pandas.DataFrame
        The columns :data:`COLUMNS` in order (``label`` int64, ``time`` str ISO 8601 UTC); an
        empty frame with those columns when the file does not exist.

    Raises
    ------
    AopError
        One line naming the row: an unknown volume, a label not in the volume, an undeclared
        class, a duplicate manual ``(volume, label)``, a bad source or time; or bad columns.

    Examples
    --------
    >>> import tempfile
    >>> read_annotations(tempfile.mkdtemp()).columns.tolist()
    ['volume', 'label', 'class', 'source', 'annotator', 'time']
    """
    root = Path(dataset_dir)
    return _frame(_load_rows(root, _Checker(root, check_labels)))


def _records(rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> list[Mapping[str, Any]]:
    if isinstance(rows, pd.DataFrame):
        return rows.to_dict("records")
    return list(rows)


def _write_rows(root: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    _frame(rows).to_csv(buffer, index=False)
    _atomic_write(root / ANNOTATIONS_FILE, buffer.getvalue())


def append_annotations(
    dataset_dir: str | os.PathLike, rows: Iterable[Mapping[str, Any]] | pd.DataFrame
) -> int:
    """Append rows to ``annotations.csv``, all or nothing.

    Parameters
    ----------
    dataset_dir : str or path-like
        The data-set folder (``annotations.csv`` is created when missing).
    rows : iterable of mappings, or DataFrame
        Each with ``volume``, ``label``, ``class``, ``source`` and optionally ``annotator``
        (default ``""``) and ``time`` (default now, UTC).

    Returns
    -------
    int
        The number of rows written.

    Raises
    ------
    AopError
        When a new row fails validation against the data set or the existing table (``new row
        N``); nothing is written then.

    Examples
    --------
    >>> import numpy as np, tempfile
    >>> from aop.io import DatasetInfo, write_dataset
    >>> root = write_dataset(tempfile.mkdtemp() + "/ds",
    ...     [("a", np.zeros((2, 4, 4), np.float32), np.ones((2, 4, 4), np.uint16))],
    ...     DatasetInfo("ds"))
    >>> write_classes(root, ["big", "small"])
    >>> append_annotations(root, [{"volume": "a", "label": 1, "class": "big", "source": "manual"}])
    1
    >>> read_annotations(root)[["volume", "label", "class"]].values.tolist()
    [['a', 1, 'big']]
    """
    root = Path(dataset_dir)
    new = _records(rows)
    with _locked(root):
        checker = _Checker(root, check_labels=True)
        old = _load_rows(root, checker)
        checked = [checker.row(f"new row {i + 1}", r) for i, r in enumerate(new)]
        if checked:
            _write_rows(root, old + checked)
    return len(checked)


def remove_annotations(
    dataset_dir: str | os.PathLike, keys: Iterable[tuple[str, int]], source: str = "manual"
) -> int:
    """Remove the rows of ``source`` whose ``(volume, label)`` is in ``keys`` (an atomic rewrite).

    Parameters
    ----------
    dataset_dir : str or path-like
        The data-set folder.
    keys : iterable of (str, int)
        ``(volume, label)`` pairs; pairs without a row are ignored.
    source : str
        Only rows of this source are removed.

    Returns
    -------
    int
        The number of rows removed.
    """
    root = Path(dataset_dir)
    if source not in SOURCES:
        raise AopError(f"bad source {source!r} (one of {', '.join(SOURCES)})")
    drop = {(str(v), int(label)) for v, label in keys}
    with _locked(root):
        old = _load_rows(root, _Checker(root, check_labels=False))
        kept = [r for r in old if not (r["source"] == source and (r["volume"], r["label"]) in drop)]
        removed = len(old) - len(kept)
        if removed:
            _write_rows(root, kept)
    return removed


def replace_annotations(
    dataset_dir: str | os.PathLike,
    rows: Iterable[Mapping[str, Any]] | pd.DataFrame,
    source: str,
) -> int:
    """Replace every row of ``source`` by ``rows`` (all of that source), all or nothing.

    Rows of the other sources are kept untouched; label spreading uses it to rewrite its
    ``spread`` rows on each run.

    Returns
    -------
    int
        The number of rows written.

    Raises
    ------
    AopError
        When a new row fails validation or is not of ``source``.
    """
    root = Path(dataset_dir)
    if source not in SOURCES:
        raise AopError(f"bad source {source!r} (one of {', '.join(SOURCES)})")
    new = _records(rows)
    with _locked(root):
        checker = _Checker(root, check_labels=True)
        old = [r for r in _load_rows(root, checker) if r["source"] != source]
        checked = []
        for i, record in enumerate(new):
            row = checker.row(f"new row {i + 1}", {"source": source, **record})
            if row["source"] != source:
                raise AopError(f"new row {i + 1}: source {row['source']!r} is not {source!r}")
            checked.append(row)
        _write_rows(root, old + checked)
    return len(checked)
