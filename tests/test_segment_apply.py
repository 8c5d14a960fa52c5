"""``aop segment``: a study's MLflow pipeline applied on a 2-node Ray cluster, with resume."""

from __future__ import annotations

import numpy as np
import pytest
import ray
import yaml
from ray.cluster_utils import Cluster
from typer.testing import CliRunner

from aop.cli import app
from aop.errors import AopError
from aop.io import DatasetInfo, load_dataset, read_volume, write_dataset
from aop.pipeline_model import log_pipeline_model
from aop.segmentation.apply import apply_pipeline, resolve_model
from aop.segmentation.models import build_model
from aop.segmentation.postprocess import postprocess
from aop.synth import simulate
from aop.tracking import StudyTracker

SPACING = (2.0, 1.0, 1.0)
PARAMS = {
    "erode_dilate": 1, "open_close": 0, "merge_continuity": 0.0, "merge_smoothness": 0.0,
    "merge_area": 0.0, "split_sigma": 0.0, "split_threshold": 0.0,
}  # fmt: skip
BEST = {
    "search": "gp", "trial_id": "t1", "model": "classical", "params": PARAMS, "ipq": 0.7,
    "sq": 0.8, "rq": 0.9, "iq": 1.0, "per_volume": {}, "duration_s": 1.0, "node": "n",
    "iteration": 0,
}  # fmt: skip


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
def study(tmp_path_factory):
    """A study folder whose parent run holds the logged best pipeline (classical + dilation)."""
    root = tmp_path_factory.mktemp("segment")
    tracker = StudyTracker(root / "study", experiment_name="aop-segmentation")
    tracker.start(
        {"name": "tiny", "data": {"path": str(root / "bench")}, "models": [{"name": "classical"}],
         "search": {"searcher": "gp", "budget": 1}},
        {"erode_dilate": {"low": -1, "high": 1}, "models": ["classical"]},
    )  # fmt: skip
    log_pipeline_model(tracker, BEST, spacing=SPACING)
    images = [
        (f"v{i}", simulate((12, 32, 32), SPACING, seed=i, n_objects=3)[0], None) for i in range(3)
    ]
    data = write_dataset(root / "data", images, DatasetInfo("data", SPACING))
    return root / "study", data


@pytest.mark.slow
def test_segment_on_two_nodes_and_resume(two_nodes, study, tmp_path):
    study_dir, data = study
    out = tmp_path / "out"
    nodes = apply_pipeline(study_dir, data, out, num_workers=2)
    assert sorted(nodes) == ["v0", "v1", "v2"]
    assert len(set(nodes.values())) == 2  # the actors ran on both nodes
    segmented = load_dataset(out, require_labels=True)
    assert segmented.info.voxel_size == SPACING
    model = build_model("classical")
    for name in ("v0", "v1", "v2"):
        image, _ = read_volume(data / "images" / f"{name}.tif")
        expected = postprocess(model.predict(image, SPACING), image, PARAMS, spacing=SPACING)
        labels = segmented.labels(name)
        assert labels.max() > 0
        np.testing.assert_array_equal(labels, expected)

    kept = (out / "labels" / "v0.tif").stat().st_mtime_ns
    (out / "labels" / "v2.tif").unlink()  # as if interrupted before v2
    command = ["segment", str(study_dir), "--data", str(data), "--out", str(out)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "segmented 1 volume(s)" in output and "(2 already done)" in output
    assert (out / "labels" / "v0.tif").stat().st_mtime_ns == kept
    assert (out / "labels" / "v2.tif").is_file()


def test_segment_bad_sources(tmp_path):
    with pytest.raises(AopError, match="no such study folder or model URI"):
        resolve_model(tmp_path / "missing")
    with pytest.raises(AopError, match="neither a study folder"):
        resolve_model(tmp_path)
    result = CliRunner().invoke(
        app, ["segment", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1


def test_a_study_folder_resolves_to_the_tracking_store_it_logged_to(tmp_path):
    """aop segment STUDY_DIR finds the pipeline where the study logged it: a server given with
    --tracking-uri, else the study's own SQLite store, also after the folder moved."""
    study = tmp_path / "study"
    study.mkdir()
    (study / "mlflow_run_id").write_text("abc123\n")
    assert resolve_model(study) == ("runs:/abc123/pipeline", f"sqlite:///{study / 'mlflow.db'}")
    saved = {"storage": {"study_dir": "/gone/old_study"},
             "tracking": {"tracking_uri": "http://mlflow.example:5000"}}
    (study / "experiment.yaml").write_text(yaml.safe_dump(saved))
    assert resolve_model(study) == ("runs:/abc123/pipeline", "http://mlflow.example:5000")
    saved["tracking"]["tracking_uri"] = "sqlite:////gone/old_study/mlflow.db"
    (study / "experiment.yaml").write_text(yaml.safe_dump(saved))
    assert resolve_model(study)[1] == f"sqlite:///{study / 'mlflow.db'}"
    saved["tracking"]["tracking_uri"] = "sqlite:////shared/team.db"  # not the study's own
    (study / "experiment.yaml").write_text(yaml.safe_dump(saved))
    assert resolve_model(study)[1] == "sqlite:////shared/team.db"
