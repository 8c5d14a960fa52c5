"""Annotation page: key press to next instance, through the real HTTP server, on a larger volume.

One synthetic Myotube volume of 48x384x384 with three channels (its classes' marker channels) is
written to a temporary data set. Measured in the same run, over 50 key presses of one page (httpx,
no browser):

- *key press*: ``POST /api/annotate`` (one locked, atomic rewrite of ``annotations.csv``; the answer
  carries the next instance) and then ``GET`` of the next instance's picture, as the page does;
- the two references it is made of: ``append_annotations`` alone (the class table's write) and a
  bare HTTP round trip (``GET /api/state``);
- a picture rendered cold (no cache) against one served from the cache the prefetch fills.

The goal is 150 ms from key press to the next instance on screen. Run:
``.venv/bin/python benchmarks/annotate_bench.py``.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import httpx

from aop.annotation import AnnotationServer, AnnotationSession
from aop.instances.annotations import append_annotations, remove_annotations
from aop.synth import preset_params
from aop.synth.classes import class_set
from aop.synth.dataset import write_synthetic_dataset


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="aop-annotate-bench-") as tmp:
        root = write_synthetic_dataset(
            Path(tmp) / "data",
            preset_params("myotube"),
            (48, 384, 384),
            1,
            seed=0,
            preset="myotube",
            classes=class_set("myotube"),
        )
        (root / "annotations.csv").unlink()  # the truth rows: start with an empty table
        opened = time.perf_counter()
        session = AnnotationSession(root, annotator="bench", suggest=False)
        opened = time.perf_counter() - opened
        server = AnnotationServer(session).start()
        base = f"http://127.0.0.1:{server.port}"
        classes = [c.name for c in session.classes]
        try:
            with httpx.Client(base_url=base) as client:
                item = client.get("/api/next", params={"client": "b"}).json()["item"]
                client.get(f"/api/image/{item['volume']}/{item['label']}.png")
                presses, rtts = [], []
                for n in range(50):
                    start = time.perf_counter()
                    body = {"client": "b", "volume": item["volume"], "label": item["label"],
                            "class": classes[n % len(classes)]}
                    item = client.post("/api/annotate", json=body).json()["next"]
                    client.get(f"/api/image/{item['volume']}/{item['label']}.png")
                    presses.append(time.perf_counter() - start)
                    rtts.append(timed(lambda: client.get("/api/state")))
                cold = [
                    timed(lambda b=b: session._picture(session.index[(b.volume, b.label)], 1))
                    for b in session.boxes[60:70]
                ]
                warm = [
                    timed(lambda b=b: client.get(f"/api/image/{b.volume}/{b.label}.png"))
                    for b in session.boxes[:10]
                ]
        finally:
            server.stop()
        key = (session.boxes[-1].volume, session.boxes[-1].label)
        row = {"volume": key[0], "label": key[1], "class": classes[0], "source": "manual"}
        appends = []
        for _ in range(20):
            appends.append(timed(lambda: append_annotations(root, [row])))
            remove_annotations(root, [key])
    ms = 1e3
    press, rtt, append = (statistics.median(v) * ms for v in (presses, rtts, appends))
    n = len(session.boxes)
    print(f"data set: one 3x48x384x384 volume, {n} instances, opened in {opened:.1f} s")
    verdict = "within" if press <= 150 else "over"
    print(f"key press to next picture:  {press:6.1f} ms median, {max(presses) * ms:6.1f} ms max "
          f"({verdict} the 150 ms goal: {press / 150:.2f} of it)")
    print(f"  append_annotations alone: {append:6.1f} ms ({append / press:.0%} of a key press)")
    print(f"  bare HTTP round trip:     {rtt:6.1f} ms ({rtt / press:.0%} of a key press)")
    print(f"picture rendered cold:      {statistics.median(cold) * ms:6.1f} ms; served from the "
          f"prefetch cache {statistics.median(warm) * ms:6.1f} ms "
          f"({statistics.median(cold) / statistics.median(warm):.1f}x)")
    print(f"50 key presses:             {sum(presses):6.2f} s")


if __name__ == "__main__":
    main()
