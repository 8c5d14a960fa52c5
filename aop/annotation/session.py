"""The state behind the annotation page: instances, their order, the class table and each key press.

An :class:`AnnotationSession` owns one data set. It indexes every instance of ``labels/``
(centroid and bounding box), reads the class table and ``annotations.csv`` through
:mod:`aop.instances.annotations` (the one module that owns that format), and turns each key press
of the page into one atomic write of that file. Everything the page asks for goes through instance
keys, a volume name and a label id, checked against the index: the page never names a file.

Rules the page relies on:

- *Next* is the first instance of the order that has no manual class, was not skipped by this page
  and is not held by another page. A page holds the instance it shows (a lease of ``lease_s``
  seconds), so two pages on one server show, and write, different instances.
- An instance gets at most one manual row: annotating one that already has a class is refused
  (conflict) unless the request names that class as ``previous`` (a deliberate relabel, after
  browsing back), which swaps the row: two atomic writes (remove, then append), so a crash
  between them leaves the instance unannotated, never the file corrupt.
- Undo takes back this page's last key press (class, relabel or skip) if nobody changed that
  instance since. A skipped instance comes round again once no other is left; skips live only in
  the server's memory, so a restarted server shows skipped instances again.
- With ``order="uncertain"`` the unannotated instances are sorted most uncertain first by label
  spreading (:func:`aop.instances.spread.spread_labels` on
  :func:`aop.instances.features.dataset_features`), spread again after every ``respread_every``
  manual annotations (in a background thread). Each instance shows the spread's suggestion and
  confidence in both orders once two classes have manual annotations.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from cachetools import LRUCache

from aop.annotation.render import (
    InstanceBox,
    channel_limits,
    index_instances,
    render_instance,
)
from aop.errors import AopError
from aop.instances import annotations as table
from aop.io import load_dataset, read_volume

__all__ = ["ORDERS", "AnnotationSession", "RequestError", "resolve_classes"]

ORDERS = ("sequential", "uncertain")


class RequestError(AopError):
    """A request the page cannot have: one line, and the HTTP status that says why."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def resolve_classes(
    dataset_dir: str | Path, classes: Sequence[str] | None
) -> list[table.ClassSpec]:
    """The class table of a data set, extended by ``classes`` when given.

    Classes already declared in ``dataset.yaml`` keep their names, keys and order (annotations may
    use them); names of ``classes`` not declared yet are added after them with the next free keys
    ``1``..``9``, and ``dataset.yaml`` is rewritten (atomically) only then.

    Raises
    ------
    AopError
        When no class is declared or given, a name is empty, repeated or reserved, or more classes
        than free keys are asked for.
    """
    declared = table.read_classes(dataset_dir)
    known = {c.name for c in declared}
    wanted: list[str] = []
    for raw in classes or []:
        name = raw.strip()
        if not name:
            raise AopError(f"--classes: empty class name in {','.join(classes or [])!r}")
        if name == table.BAD_SEGMENTATION:
            raise AopError(f"--classes: {name!r} is reserved (the key x marks a bad segmentation)")
        if name in wanted:
            raise AopError(f"--classes: class {name!r} is given twice")
        wanted.append(name)
    new = [name for name in wanted if name not in known]
    if not declared and not new:
        raise AopError(f"{Path(dataset_dir) / 'dataset.yaml'}: no classes declared; give --classes")
    if new:
        used = {c.key for c in declared}
        free = [k for k in "123456789" if k not in used]
        if len(new) > len(free):
            raise AopError(
                f"--classes: {len(declared) + len(new)} classes but only the keys 1..9 exist"
            )
        declared = declared + [table.ClassSpec(n, k) for n, k in zip(new, free, strict=False)]
        table.write_classes(dataset_dir, declared)
    return declared


@dataclass
class _Volume:
    image: np.ndarray
    labels: np.ndarray
    limits: np.ndarray


@dataclass
class _Client:
    history: list[tuple[str, int, str | None, str | None]] = field(default_factory=list)
    skipped: set[int] = field(default_factory=set)


class AnnotationSession:
    """One data set open for annotation (see the module docstring for the rules).

    Parameters
    ----------
    dataset_dir : str or Path
        The data set; its ``labels/`` hold the instances (from ``aop segment``, or the truth).
    classes : sequence of str, optional
        Class names to declare (see :func:`resolve_classes`); the data set's own otherwise.
    annotator : str
        Written into every row.
    order : {"sequential", "uncertain"}
        Volume by volume and label by label, or most uncertain first by label spreading.
    respread_every : int
        Manual annotations between two spreads (uncertain order and suggestions).
    suggest : bool
        Compute instance features and show label-spreading suggestions (always for ``uncertain``).
    prefetch : int
        Instances after the one shown that are rendered ahead, in a background thread.
    cache_size : int
        Rendered pictures kept in memory.
    volumes_in_memory : int
        Volumes (image and labels) kept in memory.
    lease_s : float
        How long a page holds the instance it shows.
    features : DataFrame, str or Path, optional
        The instance features for label spreading, as a table or a file written by
        ``aop instances`` (``.parquet`` or ``.csv``); computed from the data set when omitted.
    progress : callable, optional
        Called with one line of text while the session opens (indexing, features).

    Examples
    --------
    >>> session = AnnotationSession("data/real", classes=["myotube", "other"])  # doctest: +SKIP
    >>> item = session.next_for("tab-1")                                         # doctest: +SKIP
    >>> session.annotate("tab-1", item["volume"], item["label"], "myotube")      # doctest: +SKIP
    """

    def __init__(
        self,
        dataset_dir: str | Path,
        *,
        classes: Sequence[str] | None = None,
        annotator: str = "",
        order: str = "sequential",
        respread_every: int = 10,
        suggest: bool = True,
        prefetch: int = 4,
        cache_size: int = 512,
        volumes_in_memory: int = 2,
        lease_s: float = 300.0,
        features: pd.DataFrame | str | Path | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        if order not in ORDERS:
            raise AopError(f"order: unknown value {order!r} (known: {', '.join(ORDERS)})")
        if respread_every < 1:
            raise AopError(f"respread_every: must be at least 1, got {respread_every}")
        say = progress or (lambda _line: None)
        self.root = Path(dataset_dir)
        self.dataset = load_dataset(self.root, require_labels=True, validate=False)
        self.classes = resolve_classes(self.root, classes)
        self.class_names = [c.name for c in self.classes] + [table.BAD_SEGMENTATION]
        self.annotator = annotator
        self.order_kind = order
        self.respread_every = int(respread_every)
        self.prefetch = int(prefetch)
        self.lease_s = float(lease_s)
        self.spacing = tuple(float(s) for s in self.dataset.info.voxel_size)
        self.channel_names = list(self.dataset.info.channel_names)

        self.boxes: list[InstanceBox] = []
        self.depth: dict[str, int] = {}
        for n, entry in enumerate(self.dataset, start=1):
            say(f"indexing instances: volume {n}/{len(self.dataset)} ({entry.name})")
            labels = self._read_labels(entry.name)
            self.depth[entry.name] = int(labels.shape[0])
            self.boxes.extend(index_instances(labels, entry.name))
        if not self.boxes:
            raise AopError(f"{self.root / 'labels'}: no instances to annotate (all labels are 0)")
        self.index = {(b.volume, b.label): i for i, b in enumerate(self.boxes)}

        self._lock = threading.RLock()
        self._manual: dict[int, str] = {}
        self._load_annotations()
        self._clients: dict[str, _Client] = {}
        self._leases: dict[int, tuple[str, float]] = {}
        self._order = list(range(len(self.boxes)))
        self._position = {i: p for p, i in enumerate(self._order)}

        # least recently used out first; the caches are not thread-safe, and the server's request
        # threads and the prefetch thread use them at once: each has its lock
        self._volumes: LRUCache[str, _Volume] = LRUCache(maxsize=max(1, int(volumes_in_memory)))
        self._volume_lock = threading.Lock()
        self._pictures: LRUCache[tuple[int, int | None], bytes] = LRUCache(
            maxsize=max(0, int(cache_size))
        )
        self._picture_lock = threading.Lock()
        self._renderer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aop-prefetch")
        self._pending: dict[tuple[int, int | None], Future] = {}

        self.features: pd.DataFrame | None = None
        self.spread: pd.DataFrame | None = None
        self.spread_generation = 0
        self.spread_error: str | None = None
        self._spread_count = -1
        self._spread_thread: threading.Thread | None = None
        if suggest or order == "uncertain":
            self.features = self._features(features, say)
            self._respread()

    # ---------------------------------------------------------------------------------------------
    # data
    # ---------------------------------------------------------------------------------------------

    def _read_labels(self, name: str) -> np.ndarray:
        entry = self.dataset.entry(name)
        labels, _ = read_volume(entry.label_path)  # type: ignore[arg-type]
        if labels.ndim != 3 or labels.dtype.kind not in "ui":
            raise AopError(
                f"{entry.label_path}: labels must be a 3D integer volume, got {labels.dtype} "
                f"{labels.shape}"
            )
        return labels

    def _features(
        self, given: pd.DataFrame | str | Path | None, say: Callable[[str], None]
    ) -> pd.DataFrame:
        if given is None:
            from aop.instances.features import dataset_features

            say(f"instance features of {len(self.boxes)} instances (label spreading)")
            return dataset_features(
                self.root, on_volume=lambda name, n: say(f"features: {name} ({n} instances)")
            )
        where = "features"
        if not isinstance(given, pd.DataFrame):
            path = Path(given)
            where = str(path)
            if not path.is_file():
                raise AopError(f"{path}: file not found")
            try:
                reader = pd.read_csv if path.suffix.lower() == ".csv" else pd.read_parquet
                given = reader(path)
            except Exception as exc:  # pyarrow and pandas raise many types for corrupt files
                raise AopError(f"{path}: cannot read table ({type(exc).__name__})") from None
        if not {"volume", "label"} <= set(given.columns):
            raise AopError(f"{where}: expected columns volume and label (a table of aop instances)")
        keys = set(zip(given["volume"].astype(str), given["label"].astype(int), strict=True))
        for box in self.boxes:
            if (box.volume, box.label) not in keys:
                raise AopError(
                    f"{where}: no row for volume {box.volume!r} label {box.label} "
                    "(the labels changed since; compute the features again)"
                )
        return given

    def _volume(self, name: str) -> _Volume:
        with self._volume_lock:
            cached = self._volumes.get(name)
            if cached is not None:
                return cached
            entry = self.dataset.entry(name)
            image, _ = read_volume(entry.image_path)
            labels = self._read_labels(name)
            if image.shape[-3:] != labels.shape:
                raise AopError(
                    f"{entry.label_path}: shape {labels.shape} does not match image "
                    f"{image.shape[-3:]}"
                )
            image = image[None] if image.ndim == 3 else image
            volume = _Volume(image, labels, channel_limits(image))
            self._volumes[name] = volume
            return volume

    def _load_annotations(self) -> None:
        frame = table.read_annotations(self.root)
        manual = frame[frame["source"] == "manual"]
        self._manual = {}
        columns = manual["volume"], manual["label"], manual["class"]
        for volume, label, cls in zip(*columns, strict=True):
            i = self.index.get((str(volume), int(label)))
            if i is not None:
                self._manual[i] = str(cls)

    def _find(self, volume: Any, label: Any) -> int:
        if not isinstance(volume, str) or volume not in self.depth:
            raise RequestError(f"unknown volume {volume!r}", 404)
        try:
            key = (volume, int(label))
        except (TypeError, ValueError):
            raise RequestError(f"label must be an integer, got {label!r}", 400) from None
        if key not in self.index:
            raise RequestError(f"volume {volume!r} has no label {label}", 404)
        return self.index[key]

    def _check_class(self, cls: Any) -> str:
        if cls not in self.class_names:
            raise RequestError(
                f"unknown class {cls!r} (classes: {', '.join(self.class_names)})", 400
            )
        return str(cls)

    def _client(self, client: Any) -> _Client:
        if not isinstance(client, str) or not 1 <= len(client) <= 64:
            raise RequestError("client: expected an id of 1 to 64 characters", 400)
        return self._clients.setdefault(client, _Client())

    # ---------------------------------------------------------------------------------------------
    # what the page reads
    # ---------------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Classes with keys and counts, progress, annotator, order and spread generation."""
        with self._lock:
            counts = {name: 0 for name in self.class_names}
            for cls in self._manual.values():
                counts[cls] = counts.get(cls, 0) + 1
            return {
                "dataset": self.dataset.info.name,
                "annotator": self.annotator,
                "order": self.order_kind,
                "total": len(self.boxes),
                "done": len(self._manual),
                "classes": [
                    {"name": c.name, "key": c.key, "count": counts[c.name]} for c in self.classes
                ],
                "bad_segmentation": counts[table.BAD_SEGMENTATION],
                "channels": self.channel_names,
                "spread_generation": self.spread_generation,
                "spread_error": self.spread_error,
            }

    def info(self, i: int) -> dict[str, Any]:
        """What the page shows about instance ``i`` (no picture)."""
        box = self.boxes[i]
        suggestion = None
        if self.spread is not None and (box.volume, box.label) in self.spread.index:
            row = self.spread.loc[(box.volume, box.label)]
            suggestion = {
                "class": str(row["class"]),
                "confidence": float(row["confidence"]),
                "uncertainty": float(row["uncertainty"]),
            }
        return {
            "volume": box.volume,
            "label": box.label,
            "position": self._position[i],
            "centroid": list(box.centroid),
            "voxels": box.voxels,
            "depth": self.depth[box.volume],
            "class": self._manual.get(i),
            "suggestion": suggestion,
        }

    def instance(self, client: str, volume: Any, label: Any) -> dict[str, Any]:
        """Instance ``(volume, label)`` for ``client``, which now holds it."""
        with self._lock:
            i = self._find(volume, label)
            self._hold(self._client(client), client, i)
            return self._with_upcoming(client, i)

    def step(self, client: str, volume: Any, label: Any, direction: int) -> dict[str, Any] | None:
        """The instance before (``-1``) or after (``+1``) ``(volume, label)`` in the order."""
        with self._lock:
            p = self._position[self._find(volume, label)] + (1 if direction > 0 else -1)
            if not 0 <= p < len(self._order):
                return None
            i = self._order[p]
            self._hold(self._client(client), client, i)
            return self._with_upcoming(client, i)

    def next_for(self, client: str) -> dict[str, Any] | None:
        """The first instance of the order without a manual class that ``client`` may take.

        Instances ``client`` skipped come round again once no other is left.
        """
        with self._lock:
            state = self._client(client)
            now = time.monotonic()
            for passed in (state.skipped, set()):
                for i in self._order:
                    if i in self._manual or i in passed:
                        continue
                    holder = self._leases.get(i)
                    if holder is not None and holder[0] != client and holder[1] > now:
                        continue
                    state.skipped.discard(i)
                    self._hold(state, client, i)
                    return self._with_upcoming(client, i)
            return None

    def _hold(self, state: _Client, client: str, i: int) -> None:
        """``client`` now shows ``i``: it holds ``i`` unless another page holds it already."""
        for j in [j for j, (c, _) in self._leases.items() if c == client]:
            del self._leases[j]
        holder = self._leases.get(i)
        if holder is None or holder[1] <= time.monotonic():
            self._leases[i] = (client, time.monotonic() + self.lease_s)

    def _with_upcoming(self, client: str, i: int) -> dict[str, Any]:
        """Info of ``i`` plus the instances the page is likely to show next (prefetched)."""
        item = self.info(i)
        state = self._clients[client]
        upcoming = []
        for j in self._order[self._position[i] + 1 :]:
            if len(upcoming) >= self.prefetch:
                break
            if j not in self._manual and j not in state.skipped:
                upcoming.append(j)
        item["upcoming"] = [
            {"volume": self.boxes[j].volume, "label": self.boxes[j].label} for j in upcoming
        ]
        with self._picture_lock:
            for j in upcoming:  # the page asks for `i` itself at once
                key = (j, None)
                if key not in self._pictures and key not in self._pending:
                    self._pending[key] = self._renderer.submit(self._prefetch, j)
        return item

    # ---------------------------------------------------------------------------------------------
    # pictures
    # ---------------------------------------------------------------------------------------------

    def picture(self, volume: Any, label: Any, z: int | None = None) -> bytes:
        """PNG of instance ``(volume, label)`` with the ``xy`` view at ``z`` (cached)."""
        i = self._find(volume, label)
        depth = self.depth[self.boxes[i].volume]
        if z is not None and not 0 <= z < depth:
            raise RequestError(f"z={z} is outside volume {volume!r} (0..{depth - 1})", 400)
        if z == self.boxes[i].centroid[0]:
            z = None
        return self._picture(i, z)

    def _picture(self, i: int, z: int | None, *, prefetching: bool = False) -> bytes:
        key = (i, z)
        with self._picture_lock:
            cached = self._pictures.get(key)
            if cached is not None:
                return cached
            pending = None if prefetching else self._pending.get(key)
        # a prefetch already drawing this picture is waited for; one still queued is not
        if pending is not None and (pending.running() or pending.done()):
            try:
                png = pending.result()
                if png is not None:
                    return png
            except AopError:
                pass
        box = self.boxes[i]
        volume = self._volume(box.volume)
        png = render_instance(
            volume.image,
            volume.labels,
            box,
            z=z,
            spacing=self.spacing,
            limits=volume.limits,
            channel_names=self.channel_names,
        ).png
        with self._picture_lock:
            if self._pictures.maxsize > 0:  # cache_size=0 keeps no picture
                self._pictures[key] = png
        return png

    def _prefetch(self, i: int) -> bytes | None:
        try:
            return self._picture(i, None, prefetching=True)
        except AopError:
            return None  # the page's own request reports the problem
        finally:
            with self._picture_lock:
                self._pending.pop((i, None), None)

    # ---------------------------------------------------------------------------------------------
    # key presses
    # ---------------------------------------------------------------------------------------------

    def annotate(
        self, client: str, volume: Any, label: Any, cls: Any, previous: str | None = None
    ) -> dict[str, Any]:
        """Write the class of one instance (one atomic append to ``annotations.csv``).

        Raises
        ------
        RequestError
            404 for an unknown volume or label, 400 for an unknown class, 409 when the instance
            has a class already and ``previous`` does not name it.
        """
        with self._lock:
            state = self._client(client)
            i = self._find(volume, label)
            cls = self._check_class(cls)
            current = self._manual.get(i)
            if current is not None and current != previous:
                raise RequestError(
                    f"{volume}/{label} is already annotated as {current!r}", 409
                )
            if current is None and previous is not None:
                raise RequestError(f"{volume}/{label} has no class to replace", 409)
            key = (self.boxes[i].volume, self.boxes[i].label)
            if current is not None:
                if current == cls:
                    return self._answer(client, i)
                table.remove_annotations(self.root, [key])
                del self._manual[i]
            self._append(i, cls)
            state.history.append((key[0], key[1], cls, current))
            state.skipped.discard(i)
            self._leases.pop(i, None)
            self._maybe_respread()
            return self._answer(client, i)

    def _append(self, i: int, cls: str) -> None:
        box = self.boxes[i]
        row = {
            "volume": box.volume,
            "label": box.label,
            "class": cls,
            "source": "manual",
            "annotator": self.annotator,
        }
        try:
            table.append_annotations(self.root, [row])
        except AopError as exc:
            # the file changed behind the server (another process): take its contents as they are
            self._load_annotations()
            raise RequestError(f"not saved: {exc}", 409) from None
        self._manual[i] = cls

    def _answer(self, client: str, i: int) -> dict[str, Any]:
        """Answer to a key press on ``i``: progress, ``i`` as it is now, and ``client``'s next."""
        return {"state": self.state(), "item": self.info(i), "next": self.next_for(client)}

    def skip(self, client: str, volume: Any, label: Any) -> dict[str, Any]:
        """Pass over an instance for now (nothing is written)."""
        with self._lock:
            state = self._client(client)
            i = self._find(volume, label)
            state.skipped.add(i)
            state.history.append((self.boxes[i].volume, self.boxes[i].label, None, None))
            self._leases.pop(i, None)
            return self._answer(client, i)

    def undo(self, client: str) -> dict[str, Any]:
        """Take back ``client``'s last key press; returns the instance to show again.

        Raises
        ------
        RequestError
            404 when there is nothing to undo, 409 when the instance changed since.
        """
        with self._lock:
            state = self._client(client)
            if not state.history:
                raise RequestError("nothing to undo on this page", 404)
            volume, label, cls, previous = state.history[-1]
            i = self.index[(volume, label)]
            if cls is None:
                state.skipped.discard(i)
            else:
                if self._manual.get(i) != cls:
                    state.history.pop()
                    raise RequestError(f"{volume}/{label} changed since; not undone", 409)
                table.remove_annotations(self.root, [(volume, label)])
                del self._manual[i]
                if previous is not None:
                    self._append(i, previous)
            state.history.pop()
            self._hold(state, client, i)
            return {"state": self.state(), "item": self._with_upcoming(client, i)}

    # ---------------------------------------------------------------------------------------------
    # label spreading
    # ---------------------------------------------------------------------------------------------

    def _maybe_respread(self) -> None:
        if self.features is None:
            return
        if self._spread_count >= 0 and len(self._manual) - self._spread_count < self.respread_every:
            return
        if self._spread_thread is not None and self._spread_thread.is_alive():
            return
        self._spread_thread = threading.Thread(target=self._respread, daemon=True)
        self._spread_thread.start()

    def wait_for_spread(self, timeout: float = 30.0) -> None:
        """Block until a spread running in the background has finished."""
        thread = self._spread_thread
        if thread is not None:
            thread.join(timeout)

    def _respread(self) -> None:
        from aop.instances.spread import spread_labels

        with self._lock:
            manual = dict(self._manual)
        classes = {cls for cls in manual.values() if cls != table.BAD_SEGMENTATION}
        if len(classes) < 2 or self.features is None:
            return
        frame = pd.DataFrame(
            {
                "volume": [self.boxes[i].volume for i in manual],
                "label": np.array([self.boxes[i].label for i in manual], np.int64),
                "class": list(manual.values()),
                "source": "manual",
                "annotator": self.annotator,
                "time": "",
            },
            columns=list(table.COLUMNS),
        )
        try:
            spread = spread_labels(self.features, frame).set_index(["volume", "label"])
        except AopError as exc:  # shown on the page; the last good spread stays in use
            self.spread_error = str(exc)
            return
        self.spread_error = None
        with self._lock:
            self.spread = spread
            self._spread_count = len(manual)
            if self.order_kind == "uncertain":
                keys = pd.MultiIndex.from_tuples([(b.volume, b.label) for b in self.boxes])
                uncertainty = spread["uncertainty"].reindex(keys).fillna(0.0).to_numpy()
                # most uncertain first; ties keep the sequential order (stable sort)
                self._order = [int(i) for i in np.argsort(-uncertainty, kind="stable")]
                self._position = {i: p for p, i in enumerate(self._order)}
            self.spread_generation += 1

    def close(self) -> None:
        """Stop the prefetch thread."""
        self._renderer.shutdown(wait=False, cancel_futures=True)
