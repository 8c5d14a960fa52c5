"""The annotation page's library and server, without a browser: pictures, rules, safety.

A real uvicorn server on a free 127.0.0.1 (or 0.0.0.0) port, a real ``annotations.csv`` written
through :mod:`aop.instances.annotations`, and requests made with httpx.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import scipy.ndimage as ndi
from annotation_helpers import CLASSES, SPACING, copy_dataset, make_dataset
from PIL import Image
from typer.testing import CliRunner

from aop.annotation import (
    AnnotationServer,
    AnnotationSession,
    channel_limits,
    index_instances,
    render_instance,
    resolve_classes,
)
from aop.annotation.render import INSTANCE_COLOUR, NEIGHBOUR_COLOUR
from aop.cli import app
from aop.errors import AopError
from aop.instances.annotations import (
    ANNOTATIONS_FILE,
    append_annotations,
    read_annotations,
    read_classes,
)
from aop.io import read_volume

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("annotate") / "data")


@pytest.fixture()
def data(base, tmp_path) -> Path:
    return copy_dataset(base, tmp_path / "data")


@pytest.fixture()
def served(data):
    session = AnnotationSession(data, classes=CLASSES, annotator="ana", suggest=False)
    server = AnnotationServer(session).start()
    with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as client:
        yield session, server, client
    server.stop()


def _csv(root: Path) -> bytes:
    path = root / ANNOTATIONS_FILE
    return path.read_bytes() if path.exists() else b""


# --------------------------------------------------------------------------------------------------
# pictures
# --------------------------------------------------------------------------------------------------


def test_index_matches_scipy(base):
    labels, _ = read_volume(base / "labels" / "vol_0.tif")
    boxes = index_instances(labels, "vol_0")
    ids = np.unique(labels[labels > 0])
    assert [b.label for b in boxes] == ids.tolist()
    slices = ndi.find_objects(labels)
    centres = ndi.center_of_mass(labels > 0, labels, ids)
    for box, centre in zip(boxes, centres, strict=True):
        sl = slices[box.label - 1]
        assert box.bbox == tuple(s.start for s in sl) + tuple(s.stop for s in sl)
        assert box.centroid == tuple(int(np.floor(c + 0.5)) for c in centre)
        assert box.voxels == int((labels == box.label).sum())


def test_channel_limits_are_percentiles():
    rng = np.random.default_rng(0)
    image = np.stack([rng.normal(10, 2, (8, 32, 32)), rng.exponential(5, (8, 32, 32))])
    limits = channel_limits(image, (1, 99.8))
    for c in range(2):
        assert limits[c] == pytest.approx(np.percentile(image[c], (1, 99.8)), rel=1e-5)
    assert channel_limits(np.ones((2, 4, 4)))[0].tolist() == [1.0, 2.0]  # flat: still high > low


@pytest.mark.parametrize("where", ["largest", "edge"])
def test_render_views_outlines_and_contrast(base, where):
    image, _ = read_volume(base / "images" / "vol_0.tif")
    labels, _ = read_volume(base / "labels" / "vol_0.tif")
    boxes = index_instances(labels, "vol_0")
    if where == "largest":
        box = max(boxes, key=lambda b: b.voxels)
    else:  # touches the volume's x = 0 face: its views reach past the edge
        box = next(b for b in boxes if b.bbox[2] == 0)
    limits = channel_limits(image)
    z = box.bbox[0]
    shown = render_instance(
        image, labels, box, z=z, spacing=SPACING, limits=limits, channel_names=["dapi", "actin"]
    )
    picture = np.asarray(Image.open(io.BytesIO(shown.png)).convert("RGB"))
    assert picture.shape == (shown.height, shown.width, 3)
    views = [(p["channel"], p["view"]) for p in shown.panels]
    assert views == [(c, v) for c in ("dapi", "actin") for v in ("xy", "yz", "max", "xz")]
    xy = next(p for p in shown.panels if p["view"] == "xy" and p["channel"] == "actin")
    xz = next(p for p in shown.panels if p["view"] == "xz")
    # the window: the box padded by its extent (at least 2 z, 8 y and x voxels), square in y and
    # x, not clipped; past the volume's edge it shows background (the low limit, label 0)
    z0, y0, x0, z1, y1, x1 = box.bbox
    side = max(y1 - y0, x1 - x0)
    pads = [max(2, z1 - z0), max(8, side), max(8, side)]
    centred = [y0 - (side - (y1 - y0)) // 2, x0 - (side - (x1 - x0)) // 2]
    lo = [z0 - pads[0], centred[0] - pads[1], centred[1] - pads[2]]
    hi = [z1 + pads[0], lo[1] + side + 2 * pads[1], lo[2] + side + 2 * pads[2]]
    margin = max(pads) * 2
    padded_labels = np.pad(labels, margin)
    padded_image = np.pad(image[1], margin, constant_values=limits[1, 0])
    ys, xs = (slice(lo[a] + margin, hi[a] + margin) for a in (1, 2))
    scale = xy["width"] // (hi[2] - lo[2])
    assert xy["height"] == scale * (hi[1] - lo[1])
    # side views are stretched along z by the voxel size (2 / 1 here)
    assert xz["height"] == round((hi[0] - lo[0]) * scale * SPACING[0] / SPACING[2])
    panel = picture[xy["y"] : xy["y"] + xy["height"], xy["x"] : xy["x"] + xy["width"]]
    crop_labels = padded_labels[z + margin, ys, xs]
    crop_image = padded_image[z + margin, ys, xs]
    expected = np.clip((crop_image - limits[1, 0]) * 255 / (limits[1, 1] - limits[1, 0]), 0, 255)
    expected = np.repeat(np.repeat(expected.astype(np.uint8), scale, 0), scale, 1)
    big_labels = np.repeat(np.repeat(crop_labels, scale, 0), scale, 1)
    interior = ndi.binary_erosion(big_labels == 0, iterations=2)  # background away from any outline
    assert interior.any()
    assert np.array_equal(panel[interior][:, 0], expected[interior])  # grey, channel's own contrast
    yellow = np.all(panel == INSTANCE_COLOUR.astype(np.uint8), axis=2)
    own = big_labels == box.label
    assert yellow.any() and np.all(own[yellow])  # the outline lies on the instance ...
    assert not yellow[ndi.binary_erosion(own)].any()  # ... on its edge only
    rows, cols = np.nonzero(own)  # and the instance sits in the middle of the view
    assert abs(cols.mean() - xy["width"] / 2) < 0.25 * xy["width"]
    neighbours = (big_labels > 0) & ~own
    if neighbours.any():
        tint = np.abs(panel.astype(float) - 0.55 * NEIGHBOUR_COLOUR).max(axis=2)
        blended = tint <= 0.45 * 255 + 1
        assert (blended & neighbours & (panel[..., 2] > panel[..., 0])).any()


def test_render_rejects_bad_z(base):
    image, _ = read_volume(base / "images" / "vol_0.tif")
    labels, _ = read_volume(base / "labels" / "vol_0.tif")
    box = index_instances(labels, "vol_0")[0]
    with pytest.raises(AopError, match="z=12 is outside the volume"):
        render_instance(image, labels, box, z=12)


# --------------------------------------------------------------------------------------------------
# classes and session rules
# --------------------------------------------------------------------------------------------------


def test_resolve_classes(data):
    with pytest.raises(AopError, match="no classes declared; give --classes"):
        resolve_classes(data, None)
    specs = resolve_classes(data, ["myotube", "schwann"])
    assert [(c.name, c.key) for c in specs] == [("myotube", "1"), ("schwann", "2")]
    assert read_classes(data) == specs
    # declared classes keep their keys; new ones are added after them
    specs = resolve_classes(data, ["other", "myotube"])
    assert [(c.name, c.key) for c in specs] == [("myotube", "1"), ("schwann", "2"), ("other", "3")]
    with pytest.raises(AopError, match="'bad_segmentation' is reserved"):
        resolve_classes(data, ["bad_segmentation"])
    with pytest.raises(AopError, match="given twice"):
        resolve_classes(data, ["a", "a"])
    with pytest.raises(AopError, match="only the keys 1..9"):
        resolve_classes(data, [f"c{i}" for i in range(7)])


def test_session_order_undo_relabel_and_two_pages(data):
    session = AnnotationSession(data, classes=CLASSES, annotator="ana", suggest=False)
    try:
        first = session.next_for("a")
        assert (first["volume"], first["label"]) == ("vol_0", 1)
        second = session.next_for("b")  # another page does not get the instance page a holds
        assert (second["volume"], second["label"]) == ("vol_0", 2)
        answer = session.annotate("a", "vol_0", 1, "myotube")
        assert (answer["next"]["volume"], answer["next"]["label"]) == ("vol_0", 3)
        with pytest.raises(AopError, match="already annotated as 'myotube'") as caught:
            session.annotate("b", "vol_0", 1, "schwann")
        assert caught.value.status == 409
        session.skip("b", "vol_0", 2)
        assert session.next_for("b")["label"] == 4  # 3 is held by page a
        # a deliberate relabel names the class it replaces; undo restores it
        session.annotate("a", "vol_0", 1, "debris", previous="myotube")
        frame = read_annotations(data)
        assert frame[["volume", "label", "class", "annotator"]].values.tolist() == [
            ["vol_0", 1, "debris", "ana"]
        ]
        back = session.undo("a")["item"]
        assert (back["label"], back["class"]) == (1, "myotube")
        assert read_annotations(data)["class"].tolist() == ["myotube"]
        session.undo("a")
        assert read_annotations(data).empty
        with pytest.raises(AopError, match="nothing to undo on this page"):
            session.undo("a")
        assert session.undo("b")["item"]["label"] == 2  # undoing a skip shows it again
        assert session.state()["done"] == 0
    finally:
        session.close()


def test_skipped_instances_come_round_again(tmp_path):
    data = make_dataset(tmp_path / "small", n_volumes=1, n_objects=4)
    session = AnnotationSession(data, classes=CLASSES, suggest=False)
    try:
        assert session.next_for("b")["label"] == 1  # page b holds 1 from now on
        assert session.next_for("a")["label"] == 2
        session.skip("a", "vol_0", 2)
        assert session.next_for("a")["label"] == 3
        session.annotate("a", "vol_0", 3, "debris")
        assert session.next_for("a")["label"] == 4
        session.annotate("a", "vol_0", 4, "debris")
        assert session.next_for("a")["label"] == 2  # no other left: the skipped one again
        session.annotate("a", "vol_0", 2, "debris")
        assert session.next_for("a") is None  # page b still holds 1
    finally:
        session.close()


def test_session_resumes_from_file(data):
    resolve_classes(data, CLASSES)
    rows = [{"volume": "vol_0", "label": i, "class": "schwann", "source": "manual"} for i in (1, 2)]
    append_annotations(data, [*rows, {**rows[0], "label": 4}])
    session = AnnotationSession(data, suggest=False)
    try:
        item = session.next_for("page")
        assert (item["volume"], item["label"]) == ("vol_0", 3)
        state = session.state()
        assert state["done"] == 3 and state["total"] == 72
        assert [c["count"] for c in state["classes"]] == [0, 3, 0]
    finally:
        session.close()
    rest = [(b.volume, b.label) for b in session.boxes if (b.volume, b.label) not in
            {("vol_0", 1), ("vol_0", 2), ("vol_0", 4)}]
    append_annotations(
        data, [{"volume": v, "label": n, "class": "debris", "source": "manual"} for v, n in rest]
    )
    session = AnnotationSession(data, suggest=False)
    try:
        assert session.next_for("page") is None  # all done
        assert session.state()["done"] == session.state()["total"] == 72
    finally:
        session.close()


def test_session_bad_arguments(data):
    with pytest.raises(AopError, match="order: unknown value 'random'"):
        AnnotationSession(data, classes=CLASSES, order="random", suggest=False)
    (data / "labels" / "vol_1.tif").unlink()
    with pytest.raises(AopError, match="no labels/vol_1"):
        AnnotationSession(data, classes=CLASSES, suggest=False)


# --------------------------------------------------------------------------------------------------
# the server
# --------------------------------------------------------------------------------------------------


def test_page_and_api(served):
    session, server, client = served
    page = client.get("/")
    assert page.status_code == 200 and "<script src=\"app.js\"" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/app.js", "/style.css"):
        assert client.get(asset).status_code == 200
    # nothing on the page is fetched from another origin
    for text in (page.text, client.get("/app.js").text, client.get("/style.css").text):
        assert "http://" not in text and "https://" not in text
    state = client.get("/api/state").json()
    keys = [(c["name"], c["key"]) for c in state["classes"]]
    assert keys == list(zip(CLASSES, "123", strict=True))
    item = client.get("/api/next", params={"client": "p1"}).json()["item"]
    assert (item["volume"], item["label"]) == ("vol_0", 1)
    png = client.get("/api/image/vol_0/1.png")
    assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
    moved = client.get("/api/image/vol_0/1.png", params={"z": 0})
    assert moved.status_code == 200 and moved.content != png.content
    answer = client.post(
        "/api/annotate", json={"client": "p1", "volume": "vol_0", "label": 1, "class": "debris"}
    )
    assert answer.status_code == 200
    assert answer.json()["next"]["label"] == 2 and answer.json()["state"]["done"] == 1
    step = client.get("/api/step/vol_0/2", params={"client": "p1", "dir": -1}).json()["item"]
    assert (step["label"], step["class"]) == (1, "debris")
    assert read_annotations(session.root)[["label", "class"]].values.tolist() == [[1, "debris"]]


def test_unknown_class_volume_label_keep_the_file(served):
    session, _, client = served
    client.post(
        "/api/annotate", json={"client": "p", "volume": "vol_0", "label": 1, "class": "myotube"}
    )
    before = _csv(session.root)
    cases = [
        ({"volume": "vol_0", "label": 2, "class": "neuron"}, 400, "unknown class 'neuron'"),
        ({"volume": "vol_9", "label": 2, "class": "myotube"}, 404, "unknown volume 'vol_9'"),
        ({"volume": "vol_0", "label": 999, "class": "myotube"}, 404, "has no label 999"),
        ({"volume": "vol_0", "label": "two", "class": "myotube"}, 422, "label"),
        ({"volume": "vol_0", "label": 2, "class": "myotube", "path": "/etc"}, 422, "path"),
        ({"volume": "vol_0", "label": 1, "class": "schwann"}, 409, "already annotated"),
    ]
    for body, status, message in cases:
        answer = client.post("/api/annotate", json={"client": "p", **body})
        assert answer.status_code == status, body
        error = answer.json()["error"]
        assert message in error and "\n" not in error
    json_type = {"content-type": "application/json"}
    broken = client.post("/api/annotate", content=b'{"client": "p", "volume":', headers=json_type)
    assert broken.status_code == 422 and "\n" not in broken.json()["error"]
    assert client.get("/api/image/vol_0/999.png").status_code == 404
    assert client.get("/api/image/vol_0/1.png", params={"z": 40}).status_code == 400
    assert _csv(session.root) == before
    assert read_annotations(session.root)["label"].tolist() == [1]


def test_path_traversal_reads_nothing(served, tmp_path):
    session, server, client = served
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    opened: list[str] = []
    recording = threading.Event()

    def hook(event: str, args: tuple) -> None:
        path = args[0] if args else None
        if recording.is_set() and event == "open" and isinstance(path, str | bytes | os.PathLike):
            opened.append(os.fsdecode(path))

    sys.addaudithook(hook)  # audit hooks cannot be removed; this one only records while set
    root = str(session.root)
    attempts = [
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/static/..%2f..%2fdataset.yaml",
        "/dataset.yaml",
        "/annotations.csv",
        "/images/vol_0.tif",
        f"/{secret}",
        f"/api/image/{'%2F'.join(['..'] * 6)}{secret}/1.png",
        f"/api/image/%2F{str(secret).lstrip('/').replace('/', '%2F')}/1.png",
        "/api/image/..%252F..%252Fdataset.yaml/1.png",
        "/api/image/vol_0/..%2F..%2Fdataset.yaml",
        "/api/image/vol_0/1.png%00.yaml",
        "/api/image/%2e%2e/1.png",
        "/api/instance/..%2Fimages/1?client=x",
        "/api/image/vol_0/..%5C..%5Cdataset.yaml",
    ]
    for raw in attempts:
        recording.set()
        response = client.get(raw)
        recording.clear()
        assert 400 <= response.status_code < 500, (raw, response.status_code)
        assert "top secret" not in response.text and "voxel_size" not in response.text
    # encoded traversal through the raw socket too (no client-side normalisation)
    for raw in (b"GET /..%2F..%2Fetc%2Fpasswd HTTP/1.1", b"GET /../../etc/passwd HTTP/1.1"):
        recording.set()
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(raw + f"\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode())
            head = sock.recv(4096).split(b"\r\n", 1)[0]
        recording.clear()
        assert head.split()[1].startswith(b"4"), head
    assert not [p for p in opened if p.startswith(root) or p.startswith("/etc") or "secret" in p]
    # the hook does see the server's reads: a real picture request opens the volume's files
    recording.set()
    assert client.get("/api/image/vol_1/3.png").status_code == 200
    recording.clear()
    assert any(p.startswith(str(session.root / "images")) for p in opened)


def test_oversized_and_non_json_bodies(served):
    session, server, client = served
    before = _csv(session.root)
    big = {"client": "p", "volume": "vol_0", "label": 1, "class": "a", "previous": "x" * 20_000}
    assert client.post("/api/annotate", json=big).status_code == 413

    def chunks():
        yield b'{"client": "p", "volume": "vol_0", '
        for _ in range(40):
            yield b" " * 1000
        yield b'"label": 1, "class": "myotube"}'

    chunked = client.post(
        "/api/annotate", content=chunks(), headers={"content-type": "application/json"}
    )
    assert chunked.status_code == 413 and "over 16384 bytes" in chunked.json()["error"]
    form = client.post("/api/annotate", data={"client": "p", "volume": "vol_0", "label": "1"})
    assert form.status_code == 415
    assert _csv(session.root) == before


def test_host_header_checked_on_loopback(served):
    _, server, client = served
    assert client.get("/api/state", headers={"host": "evil.example:80"}).status_code == 403
    assert client.get("/api/state", headers={"host": f"localhost:{server.port}"}).status_code == 200
    # an SSH forward may arrive on another local port
    assert client.get("/api/state", headers={"host": "127.0.0.1:9999"}).status_code == 200
    assert client.get("/api/state", headers={"host": "127.0.0.1.evil.example"}).status_code == 403


def test_token_required_off_loopback(data):
    session = AnnotationSession(data, classes=CLASSES, suggest=False)
    server = AnnotationServer(session, host="0.0.0.0").start()
    try:
        assert server.token and len(server.token) >= 24
        assert server.url == f"http://0.0.0.0:{server.port}/?token={server.token}"
        base = f"http://127.0.0.1:{server.port}"
        for path in ("/", "/app.js", "/api/state", "/api/next?client=x", "/api/image/vol_0/1.png"):
            refused = httpx.get(base + path)
            assert refused.status_code == 403 and "token" in refused.json()["error"]
            assert httpx.get(base + path, params={"token": "wrong"}).status_code == 403
        with httpx.Client(base_url=base) as browser:
            assert browser.get("/", params={"token": server.token}).status_code == 200
            assert browser.get("/api/state").status_code == 200  # the cookie carries it
        headers = {"x-aop-token": server.token}
        assert httpx.get(base + "/api/state", headers=headers).status_code == 200
        refused = httpx.post(
            base + "/api/annotate",
            json={"client": "p", "volume": "vol_0", "label": 1, "class": "myotube"},
        )
        assert refused.status_code == 403 and not (data / ANNOTATIONS_FILE).exists()
    finally:
        server.stop()


def test_concurrent_pages_never_write_one_instance_twice(served):
    session, server, _ = served
    barrier = threading.Barrier(6)
    codes: list[int] = []

    def press(n: int) -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}") as client:
            barrier.wait()
            for label in (5, 6, 7):
                cls = CLASSES[n % 3]
                body = {"client": f"tab{n}", "volume": "vol_1", "label": label, "class": cls}
                codes.append(client.post("/api/annotate", json=body).status_code)

    threads = [threading.Thread(target=press, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] * 3 + [409] * 15
    frame = read_annotations(session.root)
    assert sorted(frame["label"].tolist()) == [5, 6, 7] and set(frame["volume"]) == {"vol_1"}


# --------------------------------------------------------------------------------------------------
# the command
# --------------------------------------------------------------------------------------------------


def test_cli_errors_are_one_line(data):
    runner = CliRunner()
    result = runner.invoke(app, ["annotate", str(data), "--classes", "a,b", "--order", "random"])
    assert result.exit_code == 2 and "order: unknown value 'random'" in result.output
    result = runner.invoke(app, ["annotate", str(data / "nope"), "--classes", "a"])
    assert result.exit_code == 2 and "data-set folder not found" in result.output
    result = runner.invoke(app, ["annotate", str(data)])
    assert result.exit_code == 2 and "give --classes" in result.output


def test_cli_killed_and_restarted_resumes(data):
    """``aop annotate --host 0.0.0.0``: token in the printed URL, SIGKILL, restart, nothing lost."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", "from aop.cli import main; main()", "annotate", str(data)]
    command += ["--classes", "a,b", "--annotator", "ana", "--host", "0.0.0.0", "--port", "0"]
    command += ["--no-suggest"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        url = ""
        deadline = time.monotonic() + 60
        while not url and time.monotonic() < deadline:
            line = process.stdout.readline().decode()
            if not line and process.poll() is not None:
                pytest.fail(process.stderr.read().decode())
            if line.startswith("open "):
                url = line.split()[1]
        assert "?token=" in url
        port, token = url.split(":")[2].split("/")[0], url.split("token=")[1]
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/api/state").status_code == 403
        headers = {"x-aop-token": token}
        for label, cls in ((1, "a"), (2, "b"), (3, "a")):
            body = {"client": "p", "volume": "vol_0", "label": label, "class": cls}
            assert httpx.post(base + "/api/annotate", json=body, headers=headers).status_code == 200
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    frame = read_annotations(data)
    assert frame[["label", "class", "source", "annotator"]].values.tolist() == [
        [1, "a", "manual", "ana"], [2, "b", "manual", "ana"], [3, "a", "manual", "ana"]
    ]
    assert all(datetime.fromisoformat(t).tzinfo is not None for t in frame["time"])
    session = AnnotationSession(data, suggest=False)  # classes now come from dataset.yaml
    try:
        assert session.next_for("p")["label"] == 4
    finally:
        session.close()


def test_features_table_from_a_file(data, tmp_path):
    session = AnnotationSession(data, classes=CLASSES, suggest=False)
    keys = [(b.volume, b.label) for b in session.boxes]
    session.close()
    table = pd.DataFrame(
        {"volume": [v for v, _ in keys], "label": [n for _, n in keys], "size": np.arange(72.0)}
    )
    table.to_csv(tmp_path / "features.csv", index=False)  # as `aop instances --csv` writes it
    session = AnnotationSession(data, features=tmp_path / "features.csv")
    assert session.features["size"].tolist() == list(range(72)) and session.spread is None
    session.close()
    table.iloc[:-1].to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(AopError, match="short.csv: no row for volume 'vol_1' label 36"):
        AnnotationSession(data, features=tmp_path / "short.csv")
    table.rename(columns={"label": "id"}).to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(AopError, match="other.csv: expected columns volume and label"):
        AnnotationSession(data, features=tmp_path / "other.csv")
    with pytest.raises(AopError, match="missing.parquet: file not found"):
        AnnotationSession(data, features=tmp_path / "missing.parquet")
