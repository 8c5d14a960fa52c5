"""A study on a 2-node Ray cluster: trials and volume tasks use both nodes; dead workers retry."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import ray
from ray import cloudpickle
from ray.cluster_utils import Cluster

from aop.synth import simulate
from aop.synth.damage import damage_labels
from aop.tuning.searchers import make_searcher
from aop.tuning.segmentation import table_iii_space
from aop.tuning.segmentation_trial import make_trainable, put_benchmark, segmentation_trial
from aop.tuning.study import run_search

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/


@pytest.fixture(scope="module")
def two_nodes():
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def benchmark(two_nodes):
    labels, images, split = {}, {}, {}
    for i in range(2):
        image, gt = simulate((12, 32, 32), seed=20 + i, n_objects=4)
        labels[f"v{i}"], images[f"v{i}"] = gt, image
        split[f"v{i}"] = damage_labels(gt, "split", fraction=1.0, seed=i)
    return put_benchmark({"split": split}, labels, images)


def _space():
    return table_iii_space(["split"])


@pytest.mark.slow
def test_trials_and_volume_tasks_run_on_both_nodes(two_nodes, benchmark, tmp_path):
    node_ids = {n["NodeID"][:8] for n in ray.nodes() if n["Alive"]}
    assert len(node_ids) == 2
    records = run_search(
        "gp",
        make_trainable(benchmark, volume_tasks=2, spread=True),
        study_dir=tmp_path,
        kind="segmentation",
        param_space={},
        num_samples=4,
        searcher=make_searcher(
            "gp", _space(), metric="ipq", concurrency=1, start_points=_space().start("zeros")
        ),
        verbose=0,
    )
    assert len(records) == 4
    for record in records:
        # one bundle per node: the two volumes of every trial were scored on different nodes
        volume_nodes = {node.split("/")[1] for node in record["volume_nodes"].values()}
        assert volume_nodes == node_ids
    assert {r["node"].split("/")[1] for r in records} <= node_ids
    records = run_search(
        "parallel",
        make_trainable(benchmark, volume_tasks=1),
        study_dir=tmp_path,
        kind="segmentation",
        param_space={},
        num_samples=6,
        searcher=make_searcher("random", _space(), metric="ipq", concurrency=2),
        concurrency=2,
        verbose=0,
    )
    # two concurrent trials hold one CPU each: one per node
    assert {node.split("/")[1] for r in records for node in r["volume_nodes"].values()} == node_ids


def dies_once(config, benchmark, scorer, cpus, gpu):
    """A trial that kills its own worker process the first time it runs."""
    marker = Path(config["marker"]) / config["model"]
    if not marker.exists():
        marker.write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    segmentation_trial(config, benchmark, scorer, cpus, gpu)


@pytest.mark.slow
def test_a_trial_whose_worker_dies_is_retried(two_nodes, benchmark, tmp_path):
    records = run_search(
        "retry",
        make_trainable(benchmark, trial_fn=dies_once),
        study_dir=tmp_path,
        kind="segmentation",
        param_space={"marker": str(tmp_path)},
        num_samples=1,
        searcher=make_searcher(
            "gp", _space(), metric="ipq", start_points=_space().start("zeros")
        ),
        max_failures=2,
        verbose=0,
    )
    assert len(records) == 1
    first_pid = int((tmp_path / "split").read_text())
    assert records[0]["params"]["split_threshold"] == 0  # the zero start point, rerun
    assert np.isfinite(records[0]["metrics"]["ipq"]) and first_pid > 0


def test_a_token_on_disk_does_not_switch_token_mode_on_for_a_cluster_without_one(tmp_path):
    """A user who keeps a token for another cluster joins a cluster without authentication: aop
    joins it in plain mode, and work runs on it (token mode there left every actor cancelled)."""
    import subprocess

    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("a" * 64 + "\n")
    code = (
        "import os, ray; from ray.cluster_utils import Cluster; "
        "from aop.ray_cluster import connect; "
        "os.environ['RAY_AUTH_MODE'] = 'disabled'; "  # the cluster: no authentication
        "cluster = Cluster(initialize_head=True, head_node_args={'num_cpus': 1, "
        "'include_dashboard': False}); "
        "del os.environ['RAY_AUTH_MODE']; "  # aop decides, with a token in ~/.ray
        "connect(cluster.address); "
        "f = ray.remote(num_cpus=1)(lambda: 41 + 1); a = ray.remote(num_cpus=1)(type("
        "'A', (), {'v': lambda self: 7})); "
        "print(ray.get(f.remote()), ray.get(a.remote().v.remote()), "
        "os.environ.get('RAY_AUTH_MODE')); "
        "ray.shutdown(); cluster.shutdown()"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180,
        env={**env, "HOME": str(home)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["42", "7", "None"]
