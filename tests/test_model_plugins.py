"""Adapters as entry points: a plugin distribution outside aop, in Ray workers and in a logged
pipeline loaded by a fresh process; weights found by name in a library cache travel with the
pipeline."""

from __future__ import annotations

import importlib.metadata
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import mlflow
import numpy as np
import pytest

from aop.errors import AopError
from aop.io import DatasetInfo, load_dataset, write_dataset
from aop.pipeline_model import log_pipeline_model
from aop.segmentation.models import (
    ENTRY_POINT_GROUP,
    SegmentationModel,
    available_models,
    build_model,
)
from aop.segmentation.postprocess import postprocess
from aop.tracking import StudyTracker

ROOT = Path(__file__).resolve().parents[1]
ZEROS = {
    "erode_dilate": 0, "open_close": 0, "merge_continuity": 0.0, "merge_smoothness": 0.0,
    "merge_area": 0.0, "split_sigma": 0.0, "split_threshold": 0.0,
}
CONFIG = {"name": "plugins", "data": {"path": "/data/bench"}, "models": [{"name": "classical"}],
          "search": {"searcher": "gp", "budget": 1}}
SPACE = {"erode_dilate": {"low": -10, "high": 10}, "models": ["classical"]}

PLUGIN = '''
"""``level_plugin``: threshold at a level read from a weights folder, then connected components."""

import json
import os
from pathlib import Path

import cc3d
from pydantic import BaseModel, ConfigDict

from aop.segmentation.models import SegmentationModel
from aop.segmentation.models.base import as_labels, missing_weights, single_channel


def levels_dir():
    return Path(os.environ.get("LEVEL_PLUGIN_HOME", Path.home() / ".levels"))


class LevelSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "bright"  # a name in LEVEL_PLUGIN_HOME, or a folder


class LevelModel(SegmentationModel):
    name = "level_plugin"
    Settings = LevelSettings
    weights_setting = "model"

    def __init__(self, **settings):
        super().__init__(**settings)
        given = Path(self.settings.model)
        self.folder = given if given.is_dir() else levels_dir() / self.settings.model
        if not (self.folder / "level.json").is_file():
            raise missing_weights(self.name, self.folder / "level.json", "a level.json file")

    def weight_files(self):
        return [self.folder / "level.json"]

    def weights_path(self):
        return self.folder

    def _load_network(self):
        return json.loads((self.folder / "level.json").read_text())["level"]

    def predict(self, image, spacing):
        volume = single_channel(image, 0, self.name)
        return as_labels(cc3d.connected_components(volume > self.network))
'''


def write_distribution(site: Path, name: str, entry_points: str, module: str | None = None) -> None:
    """A minimal installed distribution: a module and its ``*.dist-info`` on a path folder."""
    site.mkdir(parents=True, exist_ok=True)
    package = name.replace("-", "_")
    if module is not None:
        (site / f"{package}.py").write_text(module)
    info = site / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{entry_points}\n")


class Counted(SegmentationModel):
    """A model whose network is a constant, counting its loads (not registered)."""

    name = "counted_test_model"
    loads: list[int] = []

    def _load_network(self):
        self.loads.append(1)
        return np.full((1, 1, 1), 3, dtype=np.uint32)

    def predict(self, image, spacing):
        return np.broadcast_to(self.network, image.shape[-3:]).copy()


def python_path(*first: Path) -> str:
    parts = [str(p) for p in first] + os.environ.get("PYTHONPATH", "").split(os.pathsep)
    return os.pathsep.join(p for p in parts if p)


@pytest.fixture(autouse=True)
def registry(monkeypatch):
    """Leave the registry and the imported modules as they were: plugins stay in their test."""
    from aop.segmentation.models import base

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    yield
    sys.modules.pop("aop_level_plugin", None)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The plugin's path folder, its weights cache (``LEVEL_PLUGIN_HOME``) and a test volume."""
    root = tmp_path_factory.mktemp("plugin")
    write_distribution(
        root / "site", "aop-level-plugin", "level_plugin = aop_level_plugin:LevelModel", PLUGIN
    )
    cache = root / "levels"
    (cache / "bright").mkdir(parents=True)
    (cache / "bright" / "level.json").write_text(json.dumps({"level": 0.5}))
    volume = np.zeros((8, 24, 40), dtype=np.float32)
    volume[2:6, 2:10, 2:12] = 1.0  # bright
    volume[2:6, 12:22, 20:30] = 0.8  # bright
    volume[2:6, 2:10, 30:38] = 0.3  # dim: below the packed level
    return root / "site", cache, volume


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One SQLite MLflow store with a started study, for the pipelines the tests log."""
    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = StudyTracker(root / "study", tracking_uri=uri, experiment_name="aop-segmentation")
    tracker.start(CONFIG, SPACE)
    return uri, tracker


def test_declared_builtins_are_the_registry():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    declared = declared[ENTRY_POINT_GROUP]
    known = available_models()
    builtins = {name for name, cls in known.items() if cls.__module__.startswith("aop.")}
    assert set(declared) == builtins >= {"classical", "stardist2d", "cellpose", "unet3d"}
    for name, value in declared.items():
        cls = importlib.metadata.EntryPoint(name, value, ENTRY_POINT_GROUP).load()
        assert cls is known[name] and cls.name == name


def test_base_class_owns_network_pickling_and_identity():
    model = Counted()
    assert model._network is None and Counted.loads == []  # nothing loads on construction
    assert model.predict(np.zeros((2, 2, 2)), (1, 1, 1)).sum() == 24
    model.predict(np.zeros((2, 2, 2)), (1, 1, 1))
    assert Counted.loads == [1]  # loaded once, on first use
    clone = pickle.loads(pickle.dumps(model))
    assert model._network is not None and clone._network is None
    assert clone.predict(np.zeros((1, 2, 2)), (1, 1, 1)).sum() == 12
    assert Counted.loads == [1, 1]  # the copy loads its own
    assert clone.identity() == model.identity() == {
        "name": "counted_test_model", "settings": {}, "weights": {},
    }
    with pytest.raises(AopError, match="model 'classical' has no network"):
        _ = build_model("classical").network


def test_plugin_is_found_by_name_here_and_in_ray_workers(plugin, tmp_path, monkeypatch):
    import ray

    from aop.segmentation.cache import PredictionCache
    from aop.segmentation.predict import predict_dataset

    site, cache, volume = plugin
    assert "level_plugin" not in available_models()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("LEVEL_PLUGIN_HOME", str(cache))
    assert available_models()["level_plugin"].__module__ == "aop_level_plugin"
    model = build_model("level_plugin")
    expected = model.predict(volume, (1.0, 1.0, 1.0))
    assert expected.max() == 2 and np.count_nonzero(expected) == 4 * 8 * 10 + 4 * 10 * 10
    assert model.identity()["settings"] == {"model": "bright"}
    assert list(model.identity()["weights"]) == ["level.json"]

    flipped = np.ascontiguousarray(volume[:, ::-1])
    write_dataset(
        tmp_path / "data", [("a", volume, None), ("b", flipped, None)], DatasetInfo(name="two")
    )
    env = {"PYTHONPATH": python_path(site), "LEVEL_PLUGIN_HOME": str(cache)}
    ray.init(
        address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
        runtime_env={"env_vars": env},
    )
    try:
        # aop's own prediction path: Ray Data actors build the model by name from its entry point
        entries = predict_dataset(
            load_dataset(tmp_path / "data"), ["level_plugin"], tmp_path / "cache", progress=False
        )
    finally:
        ray.shutdown()
    entries = entries["level_plugin"]
    np.testing.assert_array_equal(PredictionCache.load(entries["a"]), expected)
    np.testing.assert_array_equal(
        PredictionCache.load(entries["b"]), model.predict(flipped, (1, 1, 1))
    )


def test_broken_plugin_is_one_line(tmp_path, monkeypatch):
    write_distribution(tmp_path, "aop-broken-plugin", "broken_plugin = aop_no_such_module:Model")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.warns(UserWarning, match="segmentation model 'broken_plugin'"):
        assert "broken_plugin" not in available_models()
    message = (
        r"segmentation model 'broken_plugin' \(aop_no_such_module:Model, from aop-broken-plugin "
        r"0.1\): cannot be imported: ModuleNotFoundError"
    )
    with pytest.raises(AopError, match=message):
        build_model("broken_plugin")


def test_logged_plugin_pipeline_runs_in_a_fresh_process(plugin, study, tmp_path, monkeypatch):
    site, cache, volume = plugin
    monkeypatch.syspath_prepend(str(site))
    here = tmp_path / "levels"
    shutil.copytree(cache, here)
    monkeypatch.setenv("LEVEL_PLUGIN_HOME", str(here))
    expected = build_model("level_plugin").predict(volume, (1.0, 1.0, 1.0))

    uri, tracker = study
    best = {"model": "level_plugin", "params": ZEROS}
    model_uri = log_pipeline_model(tracker, best, spacing=(1.0, 1.0, 1.0), name="plugin_pipeline")
    shutil.rmtree(here)  # the weights cache is gone: the pipeline runs from its packed copy
    np.save(tmp_path / "volume.npy", volume)
    script = textwrap.dedent(
        """
        import sys
        import mlflow
        import numpy as np
        pipeline = mlflow.pyfunc.load_model(sys.argv[1])
        np.save(sys.argv[3], pipeline.predict(np.load(sys.argv[2])))
        adapter = pipeline.unwrap_python_model()._model
        print(type(adapter).__module__, adapter.folder.name, adapter.folder.is_dir())
        """
    )
    env = {
        **os.environ,
        "PYTHONPATH": python_path(site),
        "MLFLOW_TRACKING_URI": uri,
        "LEVEL_PLUGIN_HOME": str(tmp_path / "nowhere"),
    }
    done = subprocess.run(
        [sys.executable, "-c", script, model_uri, str(tmp_path / "volume.npy"),
         str(tmp_path / "labels.npy")],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["aop_level_plugin", "bright", "True"]
    np.testing.assert_array_equal(np.load(tmp_path / "labels.npy"), expected)


def test_stardist_by_name_travels_with_the_pipeline(study, tmp_path, monkeypatch):
    pytest.importorskip("stardist")
    from aop.segmentation.models.stardist import prepare_tensorflow

    prepare_tensorflow()
    import tensorflow as tf
    from csbdeep.utils import normalize
    from stardist.models import Config2D, StarDist2D

    # a tiny untrained StarDist2D where StarDist's from_pretrained unpacks registered models
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KERAS_HOME", raising=False)
    keras_cache = tmp_path / "home" / ".keras"
    basedir = keras_cache / "models" / "StarDist2D"
    random.seed(0)  # Keras draws its initialiser seeds from Python's random
    tf.random.set_seed(0)
    config = Config2D(n_rays=8, grid=(2, 2), unet_n_depth=1, unet_n_filter_base=4, use_gpu=False)
    network = StarDist2D(config, name="tiny_by_name", basedir=str(basedir))
    network.keras_model.save_weights(str(basedir / "tiny_by_name" / "weights_best.h5"))
    rng = np.random.default_rng(0)
    image = rng.normal(0.0, 0.05, (2, 48, 48)).astype(np.float32)
    image[:, 8:22, 8:22] += 1.0
    image[:, 26:42, 24:40] += 1.0
    prob, _ = network.predict(normalize(image[0], 1, 99.8))
    thresholds = {"prob": float(np.quantile(prob, 0.8)), "nms": 0.3}
    (basedir / "tiny_by_name" / "thresholds.json").write_text(json.dumps(thresholds))

    model = build_model("stardist2d", model="tiny_by_name")
    assert model.folder == basedir / "tiny_by_name"
    spacing = (2.0, 1.0, 1.0)
    direct = model.predict(image, spacing)
    assert direct.max() >= 1
    identity = model.identity()
    assert set(identity["weights"]) == {"config.json", "weights_best.h5", "thresholds.json"}
    # thresholds.json is a weight file too: without it StarDist's defaults give other labels
    defaults = build_model("stardist2d", model="tiny_by_name", prob_thresh=0.5, nms_thresh=0.4)
    assert not np.array_equal(defaults.predict(image, spacing), direct)
    best = {"model": "stardist2d", "params": {**ZEROS, "erode_dilate": 1}}
    expected = postprocess(direct, image, best["params"], spacing=spacing)

    uri, tracker = study
    spec = {"name": "stardist2d", "settings": {"model": "tiny_by_name"}}
    model_uri = log_pipeline_model(tracker,
        best, spacing=spacing, model_spec=spec, name="stardist_pipeline"
    )
    shutil.rmtree(keras_cache)  # another machine: no StarDist cache
    with pytest.raises(AopError, match="weights not found"):
        build_model("stardist2d", model="tiny_by_name")

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    pipeline = mlflow.pyfunc.load_model(model_uri)
    python_model = pipeline.unwrap_python_model()
    assert python_model.model_settings == {"model": "tiny_by_name"}  # as given
    assert python_model.packed_weights == ("model", "tiny_by_name")
    packed = python_model._model.folder
    assert packed.name == "tiny_by_name" and not packed.is_relative_to(tmp_path / "home")
    assert {p.name for p in packed.iterdir()} == {
        "config.json", "weights_best.h5", "thresholds.json",
    }
    assert python_model._model.identity() == identity  # the same cache key
    labels = pipeline.predict(image, params={"spacing": list(spacing)})
    np.testing.assert_array_equal(labels, expected)
