"""The cluster path as users deploy it, on this machine.

A real two-node cluster started with the ``ray start`` CLI and token authentication: a head with
two logical GPUs, and a worker with its own ports and a custom resource. A real ``mlflow server
--serve-artifacts``. The cluster starts once for the module and its processes are killed (by
process group, never ``ray stop``, which would stop every Ray on a shared machine) in teardown,
also after a failure.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest
import ray
import yaml
from mlflow_helpers import wait_for_mlflow
from ray import cloudpickle, tune

import aop
from aop.errors import AopError
from aop.pipeline_model import log_pipeline_model
from aop.ray_cluster import check_resources, connect
from aop.synth import simulate
from aop.tuning.searchers import make_searcher
from aop.tuning.segmentation import table_iii_space
from aop.tuning.segmentation_trial import (
    make_trainable,
    put_benchmark,
    score_volume,
    segmentation_trial,
)
from aop.tuning.study import run_search

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/

BIN = Path(sys.executable).parent
AOP = [sys.executable, "-c", "from aop.cli import main; main()"]
ROOT = Path(aop.__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports (bound once, released)."""
    sockets, ports = [], []
    for _ in range(count):
        s = socket.socket()
        s.bind(("", 0))
        sockets.append(s)
        ports.append(s.getsockname()[1])
    for s in sockets:
        s.close()
    return ports


def _free_range(width: int) -> int:
    """The first port of ``width`` consecutive free ports."""
    for _ in range(200):
        start = random.randint(20000, 60000 - width)
        try:
            held = []
            for port in range(start, start + width):
                s = socket.socket()
                held.append(s)
                s.bind(("", port))
            return start
        except OSError:
            continue
        finally:
            for s in held:
                s.close()
    raise RuntimeError("no free port range")


def _node_ports() -> list[str]:
    node_manager, object_manager, agent, agent_grpc, metrics, runtime_env = _free_ports(6)
    workers = _free_range(24)
    return [
        f"--node-manager-port={node_manager}",
        f"--object-manager-port={object_manager}",
        f"--dashboard-agent-listen-port={agent}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--min-worker-port={workers}",
        f"--max-worker-port={workers + 23}",
    ]


def _kill_group(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL, the process group of a ``ray start --block`` we started."""
    for sig, wait in ((signal.SIGTERM, 2), (signal.SIGKILL, 5)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(wait)
        except subprocess.TimeoutExpired:
            continue
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the group's children, reparented after the leader died
        if not [p for p in psutil.process_iter(["pid"]) if _pgid(p.pid) == process.pid]:
            break
        time.sleep(0.2)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


class RayStartCluster:
    """A head and a worker, each a ``ray start --block`` process group of its own."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.token = root / "token"
        self.token.write_text(secrets.token_hex(32))
        self.env = {
            **os.environ,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token),
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            # notice a dead node within seconds, not the default ~30 s
            "RAY_health_check_period_ms": "500",
            "RAY_health_check_timeout_ms": "500",
            "RAY_health_check_failure_threshold": "4",
            "RAY_DEDUP_LOGS": "0",
        }
        self.processes: list[subprocess.Popen] = []
        self.port = _free_ports(1)[0]
        self.host = "127.0.0.1"

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = (self.root / f"{name}.log").open("w")
        process = subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", "--disable-usage-stats", *args],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append(process)
        return process

    def start(self) -> None:
        self.head = self._start(
            "head",
            [
                "--head",
                f"--port={self.port}",
                f"--node-ip-address={self.host}",
                "--num-cpus=1",
                "--num-gpus=2",
                "--include-dashboard=false",
                f"--temp-dir={self.root / 'h'}",
                *_node_ports(),
            ],
        )
        deadline = time.monotonic() + 60
        while not self._listening():
            assert self.head.poll() is None, (self.root / "head.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the head did not start"
            time.sleep(0.3)
        self.worker = self._start(
            "worker",
            [
                f"--address={self.address}",
                f"--node-ip-address={self.host}",
                "--num-cpus=1",
                '--resources={"aop_worker": 1}',
                f"--temp-dir={self.root / 'w'}",
                *_node_ports(),
            ],
        )

    def _listening(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def raylet_of(self, process: subprocess.Popen) -> psutil.Process:
        for p in psutil.process_iter(["pid", "name"]):
            if p.info["name"] == "raylet" and _pgid(p.pid) == process.pid:
                return p
        raise LookupError("raylet not found")

    def stop(self) -> None:
        for process in reversed(self.processes):
            _kill_group(process)


@pytest.fixture(scope="module")
def cluster():
    if ray.is_initialized():
        ray.shutdown()
    root = Path(tempfile.mkdtemp(prefix="aoprs", dir="/tmp"))  # short unix-socket paths
    nodes = RayStartCluster(root)
    try:
        nodes.mlflow = _start_mlflow(root / "mlflow")  # starts while the nodes start
        nodes.processes.append(nodes.mlflow[0])  # killed with the nodes, also after a failure
        nodes.start()
        yield nodes
    finally:
        nodes.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def joined(cluster):
    """This process joined to the cluster by :func:`connect`, the token found by path only."""
    from ray._raylet import AuthenticationTokenLoader, Config

    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    os.environ.pop("RAY_AUTH_MODE", None)
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(cluster.token)
    try:
        connect(cluster.address)
        assert os.environ["RAY_AUTH_MODE"] == "token"  # switched on because the cluster asked
        deadline = time.monotonic() + 60
        while len([n for n in ray.nodes() if n["Alive"]]) < 2:
            assert time.monotonic() < deadline, "the worker node did not join"
            time.sleep(0.3)
        yield cluster
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def _nodes() -> dict[str, dict]:
    return {n["NodeID"][:8]: n for n in ray.nodes() if n["Alive"]}


def _worker_id() -> str:
    return next(k for k, n in _nodes().items() if "aop_worker" in n["Resources"])


def _head_id() -> str:
    return next(k for k, n in _nodes().items() if "GPU" in n["Resources"])


def _experiment(path: Path, study: Path, budget: int, **storage: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "name": path.stem,
                "data": {"synth": {"n_volumes": 2, "shape": [12, 32, 32], "seed": 3}},
                "models": [{"name": "classical"}],
                "search": {"searcher": "gp", "budget": budget, "seed": 0, "concurrency": 1},
                "storage": {"study_dir": str(study), **storage},
                "comparison": {"baseline": False, "random": False},
            }
        )
    )
    return path


# ------------------------------------------------------------------------------------------------
# Joining: fast one-line errors, token found where Ray keeps it
# ------------------------------------------------------------------------------------------------


def test_an_address_where_nothing_listens_fails_in_seconds():
    (port,) = _free_ports(1)
    start = time.monotonic()
    with pytest.raises(AopError, match=f"no Ray cluster answers at 127.0.0.1:{port}") as err:
        connect(f"127.0.0.1:{port}")
    assert time.monotonic() - start < 5 and "\n" not in str(err.value)
    with pytest.raises(AopError, match="expected HOST:PORT"):
        connect("head-without-port")


def test_a_missing_or_wrong_token_is_one_line_saying_what_to_set(cluster, tmp_path, monkeypatch):
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "absent"))
    start = time.monotonic()
    with pytest.raises(AopError, match="RAY_AUTH_TOKEN_PATH=.*absent: the token file is missing"):
        connect(cluster.address)
    garbage = tmp_path / "garbage"
    garbage.write_text("not\na token\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(garbage))  # gRPC would abort the process
    with pytest.raises(AopError, match="garbage: not an authentication token"):
        connect(cluster.address)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token either
    with pytest.raises(AopError, match="requires an authentication token and none was found"):
        connect(cluster.address)
    wrong = tmp_path / "wrong"
    wrong.write_text(secrets.token_hex(32))
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(wrong))
    with pytest.raises(AopError, match="rejected the authentication token") as err:
        connect(cluster.address)
    elapsed = time.monotonic() - start
    message = str(err.value)
    assert "\n" not in message and "RAY_AUTH_TOKEN_PATH" in message and "RAY_AUTH_TOKEN " in message
    assert not ray.is_initialized()
    print(f"missing and wrong token refused in {elapsed:.1f} s")
    assert elapsed < 10


# ------------------------------------------------------------------------------------------------
# A study through the CLI, MLflow as a server
# ------------------------------------------------------------------------------------------------


def _start_mlflow(root: Path) -> tuple[subprocess.Popen, str, Path]:
    """A real ``mlflow server --serve-artifacts`` on 127.0.0.1 (a free port), not waited for."""
    root.mkdir()
    (port,) = _free_ports(1)
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [
            str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
            "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "artifacts"), "--serve-artifacts",
            "--workers", "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return server, f"http://127.0.0.1:{port}", root


@pytest.fixture(scope="module")
def mlflow_server(cluster):
    server, uri, root = cluster.mlflow
    wait_for_mlflow(uri, server, 180, root / "server.log")
    return uri, root / "artifacts"


def test_cli_study_on_the_ray_start_cluster_logs_everything_to_the_server(
    cluster, mlflow_server, tmp_path
):
    """A study on the cluster with --address and --tracking-uri; its driver is killed (SIGKILL)
    after the first trial and resumed on the head with aop resume --address: exact budget, no
    duplicate runs on the server, every artifact there."""
    from mlflow import MlflowClient

    uri, artifacts = mlflow_server
    study = tmp_path / "study"
    experiment = _experiment(tmp_path / "deployed.yaml", study, 3)
    env = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_MODE"}  # token by path only
    results = study / "results" / "gp.jsonl"
    start = time.monotonic()
    log = (tmp_path / "search.log").open("w")
    driver = subprocess.Popen(
        [
            *AOP, "search", str(experiment), "--address", cluster.address,
            "--tracking-uri", uri, "--quiet",
        ],
        stdout=subprocess.DEVNULL, stderr=log, env=env, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while driver.poll() is None and not (
            results.is_file() and results.read_text().count("\n") >= 1
        ):
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.1)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver only: the nodes are not its group
        driver.wait()
        log.close()
    before = [json.loads(x) for x in results.read_text().splitlines()] if results.is_file() else []
    tail = (tmp_path / "search.log").read_text()[-2000:]
    assert 1 <= len(before) < 3, f"the driver was not interrupted: {tail}"
    done = subprocess.run(
        [*AOP, "resume", str(study), "--address", cluster.address, "--quiet"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    print(f"aop search --address, killed, aop resume --address (3 trials, 2 volumes): "
          f"{time.monotonic() - start:.1f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(x) for x in results.read_text().splitlines()]
    ids = [r["trial_id"] for r in records]
    assert len(records) == 3 and len(set(ids)) == 3
    # the trials finished before the kill are kept (one that reported after Tune's last save
    # reruns under a new id)
    assert len([r for r in before if r["trial_id"] in ids]) >= len(before) - 1
    # every trial scored its two volumes on the two nodes (one CPU each)
    for record in records:
        assert len({node.split("/")[1] for node in record["volume_nodes"].values()}) == 2

    client = MlflowClient(uri)
    parent_id = (study / "mlflow_run_id").read_text().strip()
    parent = client.get_run(parent_id)
    assert parent.info.artifact_uri.startswith("mlflow-artifacts:")
    logged = {a.path for a in client.list_artifacts(parent_id)}
    assert {"best.yaml", "experiment.yaml"} <= logged
    on_server = {p.name for p in artifacts.rglob("*") if p.is_file()}
    plots = {p.name for p in (study / "plots").glob("*.png")}
    assert plots and plots <= on_server  # every plot went to the server's artifact store
    assert {"best.yaml", "experiment.yaml", "MLmodel", "python_model.pkl"} <= on_server
    assert not (study / "mlartifacts").exists()
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_id}'"
    )
    assert sorted(r.data.tags["trial_id"] for r in children) == sorted(
        r["trial_id"] for r in records
    )

    # a clean process (no study folder, no artifact files) segments a volume by runs:/ URI
    clean = tmp_path / "clean"
    clean.mkdir()
    image, truth = simulate((12, 32, 32), seed=11, n_objects=4)
    np.save(clean / "image.npy", image)
    script = (
        "import mlflow, numpy as np\n"
        f"model = mlflow.pyfunc.load_model('runs:/{parent_id}/pipeline')\n"
        "np.save('labels.npy', np.asarray(model.predict(np.load('image.npy'))))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", script],
        cwd=clean,
        env={**env, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    labels = np.load(clean / "labels.npy")
    assert labels.shape == image.shape and labels.dtype == np.uint32
    overlap = 2 * np.sum((labels > 0) & (truth > 0)) / (np.sum(labels > 0) + np.sum(truth > 0))
    print(f"clean process: {labels.max()} instances, foreground Dice {overlap:.2f}")
    assert labels.max() > 0 and overlap > 0.5


# ------------------------------------------------------------------------------------------------
# Every command that starts Ray joins the cluster one way (aop.ray_cluster.connect)
# ------------------------------------------------------------------------------------------------

CLASSIFIER_CROP = (6, 16, 16)
PIPELINE_PARAMS = {
    "erode_dilate": 1, "open_close": 0, "merge_continuity": 0.0, "merge_smoothness": 0.0,
    "merge_area": 0.0, "split_sigma": 0.0, "split_threshold": 0.0,
}  # fmt: skip


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """What ``aop predict``, ``segment`` and ``classify`` need, made in this process without Ray:
    a data set of two Myotube volumes with classes, a segmentation study folder whose logged
    pipeline is ``classical`` with a dilation, and a classifier trained for one epoch on the
    data set's truth and logged with its crop metadata, as a study logs its best one."""
    from aop.classification.train import ClassifierConfig, train_classifier
    from aop.instances.annotations import read_annotations, read_classes
    from aop.instances.crops import instance_crops
    from aop.io import load_dataset
    from aop.synth import preset_params
    from aop.synth.classes import class_set
    from aop.synth.dataset import write_synthetic_dataset
    from aop.tracking import StudyTracker
    from aop.tuning.classification_trial import log_classifier_model

    root = tmp_path_factory.mktemp("served")
    data = write_synthetic_dataset(
        root / "data", preset_params("myotube"), (16, 64, 64), 2, seed=5, preset="myotube",
        classes=class_set("myotube"),
    )
    dataset = load_dataset(data, require_labels=True)
    segmentation = StudyTracker(root / "segmentation", experiment_name="aop-segmentation")
    segmentation.start(
        {"name": "served", "models": [{"name": "classical"}]},
        {"erode_dilate": {"low": -1, "high": 1}, "models": ["classical"]},
    )
    log_pipeline_model(
        segmentation,
        {"search": "gp", "trial_id": "t1", "model": "classical", "params": PIPELINE_PARAMS,
         "ipq": 0.5},
        spacing=tuple(dataset.info.voxel_size),
    )

    classes = [c.name for c in read_classes(data)]
    truth = read_annotations(data).query("source == 'truth'")
    crops, ys = [], []
    for volume, part in truth.groupby("volume", sort=True):
        named = dict(zip(part["label"].astype(int), part["class"], strict=True))
        array, ids = instance_crops(
            dataset.labels(volume), dataset.image(volume), size=CLASSIFIER_CROP,
            spacing=dataset.info.voxel_size, method="mask", labels_subset=sorted(named),
        )
        crops.append(array)
        ys += [classes.index(named[int(i)]) for i in ids]
    config = ClassifierConfig(
        encoder="test_resnet", head="slice", pretraining="none", lr=3e-3, max_epochs=1,
        patience=1, batch_size=8, seed=0, head_width=8, head_depth=1,
    )
    crops = np.concatenate(crops)
    trained = train_classifier(
        config, crops, np.asarray(ys), out_dir=root / "training", class_names=classes
    )
    tracker = StudyTracker(root / "classification", experiment_name="aop-classification")
    tracker.start({"name": "served-classifier"}, {})
    classifier = log_classifier_model(
        tracker, trained.checkpoint_path, crops.shape[1:], "aop-served-classifier",
        metadata={"crop_size": list(CLASSIFIER_CROP), "target_spacing": None,
                  "preprocessing": "mask", "sigma": 2.0, "classes": classes},
    )
    instances = sum(len(np.unique(dataset.labels(v))) - 1 for v in dataset.names)
    return {
        "data": data, "study": root / "segmentation", "classifier": classifier,
        "tracking_uri": tracker.tracking_uri, "instances": instances, "classes": classes,
        "names": sorted(dataset.names),
    }


def _aop(args: list[str], env: dict[str, str], timeout: float = 300) -> tuple[int, str, float]:
    """Run ``aop ARGS``; its exit status, its stdout and stderr together, and its seconds."""
    start = time.monotonic()
    done = subprocess.run([*AOP, *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    return done.returncode, done.stdout + done.stderr, time.monotonic() - start


def _only_aop_output(output: str) -> None:
    """No line of Ray's (its start, Ray Data's execution and progress) in a command's output."""
    for line in output.splitlines():
        assert not any(word in line for word in ("INFO", "WARNING", "Dataset", "core_worker")), line


def test_predict_segment_and_classify_join_the_ray_start_cluster(cluster, served, tmp_path):
    """``aop predict``, ``segment`` and ``classify`` with ``--address`` of the ``ray start`` head,
    the token where users keep it (a file named by RAY_AUTH_TOKEN_PATH, or RAY_AUTH_TOKEN), and
    RAY_AUTH_MODE not set: each switches token mode on as ``aop search`` does."""
    from aop.io import load_dataset, read_volume
    from aop.segmentation.cache import PredictionCache
    from aop.segmentation.models import build_model
    from aop.segmentation.postprocess import postprocess

    by_path = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_MODE"}
    by_value = {k: v for k, v in by_path.items() if k != "RAY_AUTH_TOKEN_PATH"}
    by_value["RAY_AUTH_TOKEN"] = cluster.token.read_text().strip()
    data, names = served["data"], served["names"]
    spacing = tuple(load_dataset(data, validate=False).info.voxel_size)
    model = build_model("classical")
    timings = {}

    cache = tmp_path / "cache"
    logs = set(Path(tempfile.gettempdir()).glob("aop-*.log"))
    status, output, timings["predict"] = _aop(
        ["predict", "--data", str(data), "--models", "classical", "--cache", str(cache),
         "--address", cluster.address], by_path,
    )
    assert status == 0, output[-3000:]
    assert "InvalidAuthToken" not in output
    _only_aop_output(output)
    assert len(list(cache.rglob("*.npz"))) == len(names)
    for name in names:  # each volume's entry, under its key, holds what the model predicts here
        image, _ = read_volume(data / "images" / f"{name}.tif")
        entry = PredictionCache(cache).path_for(PredictionCache(cache).key(model, image, spacing))
        np.testing.assert_array_equal(PredictionCache.load(entry), model.predict(image, spacing))

    out = tmp_path / "segmented"
    status, output, timings["segment"] = _aop(
        ["segment", str(served["study"]), "--data", str(data), "--out", str(out),
         "--address", cluster.address], by_path,
    )
    assert status == 0, output[-3000:]
    assert "InvalidAuthToken" not in output
    _only_aop_output(output)
    assert sorted(p.stem for p in (out / "labels").glob("*.tif")) == names
    for name in names:
        image, _ = read_volume(data / "images" / f"{name}.tif")
        labels, _ = read_volume(out / "labels" / f"{name}.tif")
        first = image if image.ndim == 3 else image[0]  # the classical model's channel
        pipeline = postprocess(
            model.predict(image, spacing), first.astype(np.float32), PIPELINE_PARAMS,
            spacing=spacing,
        )
        np.testing.assert_array_equal(labels, pipeline)  # the logged pipeline, run on the nodes

    status, output, timings["classify"] = _aop(
        ["classify", served["classifier"], "--data", str(data), "--address", cluster.address],
        {**by_value, "MLFLOW_TRACKING_URI": served["tracking_uri"]},
    )
    assert status == 0, output[-3000:]
    assert "InvalidAuthToken" not in output
    _only_aop_output(output)
    # the library log of each command was a temporary file, removed when it succeeded
    assert set(Path(tempfile.gettempdir()).glob("aop-*.log")) == logs
    table = pd.read_csv(data / "predictions.csv")
    assert len(table) == served["instances"] and set(table["volume"]) == set(names)
    columns = [f"p_{c}" for c in served["classes"]]
    np.testing.assert_allclose(table[columns].sum(axis=1), 1.0, atol=1e-4)
    assert set(table["class"]) <= set(served["classes"])
    annotations = pd.read_csv(data / "annotations.csv")
    assert len(annotations.query("source == 'predicted'")) == served["instances"]
    print("on the ray start cluster: " + ", ".join(f"aop {k} {v:.1f} s" for k, v in
                                                   timings.items()))


def test_an_address_where_nothing_listens_is_one_line_about_the_cluster(served, tmp_path):
    """``aop segment`` and ``aop classify`` with a dead address stop within seconds with one
    line that names the address (not a disk error), before writing anything."""
    (port,) = _free_ports(1)
    address = f"127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    out = tmp_path / "segmented"
    runs = {
        "segment": ["segment", str(served["study"]), "--data", str(served["data"]),
                    "--out", str(out), "--address", address],
        "classify": ["classify", served["classifier"], "--data", str(served["data"]),
                     "--address", address],
    }
    before = (served["data"] / "annotations.csv").read_bytes()
    for command, args in runs.items():
        status, output, seconds = _aop(
            args, {**env, "MLFLOW_TRACKING_URI": served["tracking_uri"]}, timeout=120
        )
        lines = output.strip().splitlines()
        print(f"aop {command} --address {address}: exit {status} in {seconds:.1f} s: {lines}")
        assert status == 2 and len(lines) == 1, output[-3000:]
        assert f"no Ray cluster answers at {address}" in lines[0]
        assert "cannot write" not in lines[0]
        assert seconds < 60  # the interpreter's start and imports; the refusal itself is < 3 s
    assert not out.exists()
    assert (served["data"] / "annotations.csv").read_bytes() == before


# ------------------------------------------------------------------------------------------------
# Resources, logical GPUs
# ------------------------------------------------------------------------------------------------


def test_requests_no_node_can_hold_are_refused_before_any_trial(joined):
    with pytest.raises(AopError, match="2 CPUs on one node.*largest: 1"):
        check_resources({"CPU": 2}, 1)
    with pytest.raises(AopError, match="3 GPUs on one node.*largest: 2"):
        check_resources({"GPU": 3}, 1)
    with pytest.raises(AopError, match="'aop_worker'.*largest: 1"):
        check_resources({"aop_worker": 2}, 1)
    assert check_resources({"CPU": 1, "aop_worker": 1}, 1) == 1
    with pytest.warns(UserWarning, match="hold 2 such trial"):
        assert check_resources({"CPU": 1}, 4) == 2
    # a node type the autoscaler may add makes a big request possible
    assert check_resources({"CPU": 8}, 1, node_types={"big": {"CPU": 16}}) == 1


def test_aop_cluster_lists_the_nodes_and_checks_a_request(joined):
    from typer.testing import CliRunner

    from aop.cli import app

    runner = CliRunner()
    done = runner.invoke(app, ["cluster", "--address", joined.address, "--gpu", "0.5"])
    assert done.exit_code == 0, done.output
    assert "aop_worker=1" in done.output and "2 run at once" in done.output  # 2 CPUs
    done = runner.invoke(app, ["cluster", "--address", joined.address, "--gpu", "3"])
    assert done.exit_code == 2 and "3 GPUs on one node" in done.output
    assert ray.is_initialized()  # the test's own connection is left alone


@pytest.fixture(scope="module")
def benchmark(joined):
    image, gt = simulate((12, 32, 32), seed=21, n_objects=4)
    return put_benchmark({"classical": {"v0": gt}}, {"v0": gt}, {"v0": image})


def _space():
    return table_iii_space(["classical"])


class GpuProbe:
    """A scorer that records the GPU Ray gave its volume task and waits for ``expected`` peers.

    Every task holds its GPU share until ``expected`` tasks have started: it returns only if
    Ray ran that many at once.
    """

    def __init__(self, folder: Path, expected: int) -> None:
        self.folder, self.expected = folder, expected

    def __call__(self, prediction, labels, image, params, spacing):
        entry = {
            "gpus": [str(g) for g in ray.get_gpu_ids()],
            "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "node": ray.get_runtime_context().get_node_id()[:8],
        }
        (self.folder / f"{os.getpid()}-{time.time_ns()}.json").write_text(json.dumps(entry))
        deadline = time.monotonic() + 240
        while len(list(self.folder.glob("*.json"))) < self.expected:
            if time.monotonic() > deadline:
                raise TimeoutError("the other GPU trials never ran at the same time")
            time.sleep(0.2)
        return score_volume(prediction, labels, image, params, spacing)


def test_half_gpu_trials_run_two_per_logical_gpu(joined, benchmark, tmp_path):
    probes = tmp_path / "probes"
    probes.mkdir()
    records = run_search(
        "gpu",
        make_trainable(benchmark, cpus=0.25, gpu=0.5, scorer=GpuProbe(probes, 4)),
        study_dir=tmp_path,
        kind="segmentation",
        param_space={},
        num_samples=4,
        searcher=make_searcher("random", _space(), metric="ipq", concurrency=4),
        concurrency=4,
        max_failures=0,
        verbose=0,
    )
    assert len(records) == 4  # all four held their half GPU at once (see GpuProbe)
    entries = [json.loads(p.read_text()) for p in probes.glob("*.json")]
    assert len(entries) == 4
    assert all(len(e["gpus"]) == 1 and e["cuda"] == e["gpus"][0] for e in entries)
    assert all(e["node"] == _head_id() for e in entries)
    assert Counter(e["gpus"][0] for e in entries) == {"0": 2, "1": 2}


def test_prediction_actors_get_gpus_and_fall_back_to_the_cpu(joined, tmp_path):
    from aop.io import load_dataset
    from aop.segmentation.predict import predict_dataset
    from aop.synth import preset_params
    from aop.synth.dataset import write_synthetic_dataset

    root = write_synthetic_dataset(
        tmp_path / "data", preset_params("nuclei", n_objects=4), (12, 32, 32), 2, seed=5
    )
    dataset = load_dataset(root)
    placements: list[dict] = []
    with pytest.warns(UserWarning, match="no usable CUDA device") as caught:
        entries = predict_dataset(
            dataset, ["classical"], tmp_path / "cache", gpus_per_worker=0.5, progress=False,
            placements=placements,
        )
    assert len([w for w in caught if "CUDA" in str(w.message)]) == 1  # one warning line
    assert set(entries["classical"]) == set(dataset.names)
    assert len(placements) == 2
    for place in placements:
        assert place["node"].split("/")[1] == _head_id()  # the only node with GPUs
        assert place["gpus"] in {"0", "1"} and place["cuda"] == place["gpus"]
    with pytest.raises(AopError, match="no usable CUDA device.*a GPU is required") as err:
        predict_dataset(
            dataset, ["classical"], tmp_path / "cache2", gpus_per_worker=0.5, progress=False,
            require_gpu=True,
        )
    assert "\n" not in str(err.value)
    with pytest.raises(AopError, match="3 GPUs on one node"):
        predict_dataset(dataset, ["classical"], tmp_path / "c3", gpus_per_worker=3)


# ------------------------------------------------------------------------------------------------
# Storage that is not a local folder; node loss
# ------------------------------------------------------------------------------------------------


def fails_once(config, benchmark, scorer, cpus, gpu):
    """The second trial of a search raises the first time it runs."""
    folder = Path(config["marker"])
    trial_id = tune.get_context().get_trial_id()
    started = sorted(folder.glob("started-*"))
    if not (folder / f"started-{trial_id}").exists():
        (folder / f"started-{trial_id}").write_text(str(len(started)))
    if (folder / f"started-{trial_id}").read_text() == "1" and not (folder / "failed").exists():
        (folder / "failed").write_text(trial_id)
        raise RuntimeError("interrupted")
    segmentation_trial(config, benchmark, scorer, cpus, gpu)


def test_tune_storage_uri_through_pyarrow_and_resume_from_it(joined, benchmark, tmp_path):
    remote = tmp_path / "remote"
    uri = remote.as_uri()  # file:///...: a pyarrow filesystem, not Tune's local default
    marker = tmp_path / "markers"
    marker.mkdir()
    arguments = dict(
        study_dir=tmp_path / "study",
        param_space={"marker": str(marker)},
        num_samples=3,
        max_failures=0,
        verbose=0,
        storage=uri,
        kind="segmentation",
    )
    first = run_search(
        "gp", make_trainable(benchmark, trial_fn=fails_once),
        searcher=make_searcher(
            "gp", _space(), metric="ipq", concurrency=1, start_points=_space().start("zeros")
        ), **arguments,
    )
    assert len(first) == 2  # one trial errored: an interrupted search
    assert (remote / "gp").is_dir() and not (tmp_path / "study" / "tune").exists()
    assert any(p.name.startswith("experiment_state") for p in (remote / "gp").iterdir())
    second = run_search(
        "gp", make_trainable(benchmark, trial_fn=fails_once),
        searcher=make_searcher(
            "gp", _space(), metric="ipq", concurrency=1, start_points=_space().start("zeros")
        ), **arguments,
    )
    assert len(second) == 3 and len({r["trial_id"] for r in second}) == 3
    assert [r["trial_id"] for r in second[:2]] == [r["trial_id"] for r in first]
    assert (marker / "failed").read_text() in {r["trial_id"] for r in second}  # rerun, kept id


BUDGET = 4


def slow_trial(config, benchmark, scorer, cpus, gpu):
    """Note where the trial (re)starts, then hold its resources a moment."""
    trial_id = tune.get_context().get_trial_id()
    node = ray.get_runtime_context().get_node_id()[:8]
    with (Path(config["marker"]) / "starts.jsonl").open("a") as handle:
        handle.write(json.dumps({"trial_id": trial_id, "node": node, "t": time.time()}) + "\n")
    time.sleep(1.5)
    segmentation_trial(config, benchmark, scorer, cpus, gpu)


def test_a_killed_worker_node_retries_its_trial_with_the_exact_budget(
    joined, benchmark, mlflow_server, tmp_path
):
    from aop.tracking import StudyTracker

    uri, _ = mlflow_server
    marker = tmp_path / "markers"
    marker.mkdir()
    worker = _worker_id()
    raylet = joined.raylet_of(joined.worker)
    killed: dict = {}

    def kill_when_a_trial_runs_on_the_worker() -> None:
        deadline = time.monotonic() + 120
        starts = marker / "starts.jsonl"
        while time.monotonic() < deadline:
            if starts.is_file():
                for line in starts.read_text().splitlines():
                    entry = json.loads(line)
                    if entry["node"] == worker:
                        time.sleep(0.5)
                        raylet.kill()  # SIGKILL the worker node's raylet mid-trial
                        killed.update(entry, at=time.time())
                        return
            time.sleep(0.1)

    tracker = StudyTracker(tmp_path / "study", uri, "node-loss")
    tracker.start({"name": "node-loss"}, {"models": ["classical"]})
    killer = threading.Thread(target=kill_when_a_trial_runs_on_the_worker, daemon=True)
    killer.start()
    start = time.monotonic()
    records = run_search(
        "gp",
        make_trainable(benchmark, trial_fn=slow_trial),
        study_dir=tmp_path / "study",
        kind="segmentation",
        param_space={"marker": str(marker)},
        num_samples=BUDGET,
        searcher=make_searcher("random", _space(), metric="ipq", concurrency=2),
        concurrency=2,
        max_failures=2,
        tracker=tracker,
        verbose=0,
    )
    elapsed = time.monotonic() - start
    killer.join(5)
    assert killed, "no trial ran on the worker node"
    assert len(records) == BUDGET and len({r["trial_id"] for r in records}) == BUDGET
    starts = [json.loads(line) for line in (marker / "starts.jsonl").read_text().splitlines()]
    again = [s for s in starts if s["trial_id"] == killed["trial_id"]]
    assert [s["node"] for s in again] == [worker, _head_id()], again  # retried on the head
    assert killed["trial_id"] in {r["trial_id"] for r in records}
    children = tracker.child_runs("gp")
    assert sorted(r.data.tags["trial_id"] for r in children) == sorted(
        r["trial_id"] for r in records
    )
    retry_after = again[1]["t"] - killed["at"]
    print(
        f"node loss: trial {killed['trial_id']} started on worker {worker}, raylet killed, "
        f"restarted on head {again[1]['node']} {retry_after:.1f} s later; {BUDGET} trials in "
        f"{elapsed:.1f} s, {len(children)} MLflow child runs"
    )
