"""Move the artifact locations of a study's MLflow store with the study folder or its project.

MLflow's SQLite store keeps absolute artifact URIs (``file:///old/project/mlartifacts/...``) in
its experiments, runs, logged models, model versions and dataset sources. A study folder, or a
project folder with its store, that was moved or copied would go on writing artifacts to the old
place (recreating it) and show the old files. MLflow has no API to change a run's artifact URI,
so the rows are rewritten in one SQLite transaction, and only in a store that moved with the
study: inside its folder, or where the study's own path to it leads now.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from aop.errors import AopError

#: ``(table, column)`` pairs that hold artifact locations or dataset sources.
LOCATION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("logged_models", "artifact_location"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("datasets", "dataset_source"),
)


def _moved(value: str, old: Path, new: Path) -> str:
    """``value`` with the folder ``old`` (as a URI or a path, whole or followed by ``/`` or a
    JSON string's closing quote) replaced by ``new``."""
    for before, after in ((old.as_uri(), new.as_uri()), (str(old), str(new))):
        if value == before:
            return after
        value = value.replace(before + "/", after + "/").replace(before + '"', after + '"')
    return value


def relocate_store(db: str | Path, old: str | Path, new: str | Path) -> int:
    """Rewrite the locations under ``old`` in the SQLite store ``db`` to lie under ``new``.

    Parameters
    ----------
    db : path-like
        The ``mlflow.db`` file (inside ``new``).
    old, new : path-like
        The study folder before and after the move (absolute).

    Returns
    -------
    int
        Rows changed (0 when the store already points at ``new``).

    Raises
    ------
    AopError
        The file is not a readable SQLite store.
    """
    db, old, new = Path(db), Path(old), Path(new)
    changed = 0
    try:
        with sqlite3.connect(db) as conn:  # one transaction: all rows move, or none
            tables = {name for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}  # fmt: skip
            for table, column in LOCATION_COLUMNS:
                if table not in tables:
                    continue
                query = f"SELECT rowid, {column} FROM {table} WHERE instr({column}, ?) > 0"
                for rowid, value in conn.execute(query, (str(old),)).fetchall():
                    moved = _moved(value, old, new)
                    if moved != value:
                        conn.execute(f"UPDATE {table} SET {column} = ? WHERE rowid = ?",
                                     (moved, rowid))  # fmt: skip
                        changed += 1
    except sqlite3.Error as exc:
        raise AopError(f"{db}: cannot move the MLflow store with the study ({exc})") from None
    if changed:
        _forget_artifact_repositories()
    return changed


def _forget_artifact_repositories() -> None:
    """Drop MLflow's per-process cache of artifact repositories (by run id): a run opened before
    the move would otherwise go on writing to its old location in this process."""
    try:
        from mlflow.tracking._tracking_service import utils
    except ImportError:  # another MLflow layout: nothing cached there
        return
    cache = getattr(utils, "_artifact_repos_cache", None)
    if hasattr(cache, "clear"):
        cache.clear()


def moved_study_store(uri: str | None, old: str | Path, new: str | Path) -> str | None:
    """The tracking URI of a study that moved from folder ``old`` to ``new``.

    A SQLite store inside the study (``uri`` None: ``new/mlflow.db``; or a ``sqlite:///`` URI of
    a file under ``old``) now lies under ``new``. A store outside it (the project's
    ``mlflow.db``) moved with the project when a file lies where the study's relative path to it
    leads now. Either way its URI is mapped there and, when the file exists and moved, its
    artifact locations are rewritten (:func:`relocate_store`). Any other URI (an MLflow server, a
    store that stayed) is returned as it is.

    Returns
    -------
    str or None
        The URI to use; ``None`` stays ``None`` (the study's default store).
    """
    old, new = Path(old), Path(new)
    prefix = "sqlite:///"
    if uri is None:
        db, before = new / "mlflow.db", old
    elif uri.startswith(prefix):
        stored = Path(uri[len(prefix) :])
        if stored.is_relative_to(old):
            db, before = new / stored.relative_to(old), old
        else:
            db = Path(os.path.normpath(new / os.path.relpath(stored, old)))
            if db == stored or not db.is_file():
                return uri  # a store that stayed where it was
            before = stored.parent
        uri = f"{prefix}{db}"
    else:
        return uri  # an MLflow server
    if old != new and db.is_file():
        relocate_store(db, before, db.parent if before != old else new)
    return uri

