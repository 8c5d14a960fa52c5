"""predict_dataset and ``aop predict``: Ray Data actors fill the prediction cache once."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from aop.cli import app
from aop.io import DatasetInfo, load_dataset, write_dataset
from aop.segmentation.cache import PredictionCache
from aop.segmentation.models import ModelSpec, build_model
from aop.segmentation.predict import predict_dataset


def _balls(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.zeros((12, 32, 32), dtype=np.uint32)
    grid = np.indices(labels.shape)
    for i, centre in enumerate([(6, 9, 9), (6, 22, 20), (6, 10, 23)], start=1):
        jitter = np.asarray(centre) + rng.integers(-1, 2, 3)
        inside = sum((g - c) ** 2 for g, c in zip(grid, jitter, strict=True)) <= 16
        labels[inside] = i
    image = (labels > 0) * 100.0 + rng.normal(10, 3, labels.shape)
    return image.astype(np.float32), labels


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture
def small_dataset(tmp_path):
    volumes = [(f"vol{i}", *_balls(i)) for i in range(3)]
    return write_dataset(tmp_path / "data", volumes, DatasetInfo("balls", (1.0, 1.0, 1.0)))


def test_predict_dataset_with_two_workers(ray_local, small_dataset, tmp_path):
    dataset = load_dataset(small_dataset)
    cache_root = tmp_path / "cache"
    first = predict_dataset(
        dataset, ["classical"], cache_root, num_workers=2, progress=False
    )
    assert set(first) == {"classical"} and set(first["classical"]) == {"vol0", "vol1", "vol2"}
    cache = PredictionCache(cache_root)
    model = build_model("classical")
    for name, entry in first["classical"].items():
        labels = PredictionCache.load(entry)
        image = dataset.image(name)
        # the entry is what the model predicts here, under the key of (model, volume, spacing)
        np.testing.assert_array_equal(labels, model.predict(image, (1.0, 1.0, 1.0)))
        assert entry == cache.path_for(cache.key(model, image, (1.0, 1.0, 1.0)))
        assert labels.max() == 3
    stamps = {p: p.stat().st_mtime_ns for p in first["classical"].values()}
    again = predict_dataset(dataset, ["classical"], cache_root, num_workers=2, progress=False)
    assert again == first
    assert {p: p.stat().st_mtime_ns for p in again["classical"].values()} == stamps


def test_aop_predict_cli(ray_local, small_dataset, tmp_path):
    runner = CliRunner()
    cache_root = tmp_path / "cli-cache"
    result = runner.invoke(
        app,
        [
            "predict", "--models", "classical", "--data", str(small_dataset),
            "--cache", str(cache_root), "--setting", "classical.sigma=1.5", "--workers", "2",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(list(cache_root.glob("*/*.npz"))) == 3
    assert "classical" in result.output
    bad = runner.invoke(app, ["predict", "--models", "nope", "--data", str(small_dataset)])
    assert bad.exit_code == 2 and "unknown model 'nope'" in bad.output
    bad = runner.invoke(
        app, ["predict", "--models", "classical", "--data", str(small_dataset),
              "--setting", "classical.sigmaa=1"],
    )
    assert bad.exit_code == 2 and "sigmaa" in bad.output


def test_models_file_with_ids_predicts_each_entry(ray_local, small_dataset, tmp_path):
    import yaml

    from aop.errors import AopError

    models = tmp_path / "models.yaml"
    models.write_text(yaml.safe_dump([
        {"name": "classical", "id": "sharp", "settings": {"sigma": 0.5}},
        {"name": "classical", "id": "smooth", "settings": {"sigma": 2.0}},
    ]))
    cache_root = tmp_path / "cache"
    result = CliRunner().invoke(
        app, ["predict", "--config", str(models), "--data", str(small_dataset),
              "--cache", str(cache_root), "--setting", "smooth.sigma=3.0"],
    )
    assert result.exit_code == 0, result.output
    assert len(list(cache_root.glob("*/*.npz"))) == 6  # two settings x three volumes
    dataset = load_dataset(small_dataset)
    sharp = ModelSpec(name="classical", settings={"sigma": 0.5})
    keyed = predict_dataset(dataset, {"again": sharp}, cache_root, progress=False)
    assert set(keyed) == {"again"} and set(keyed["again"]) == {"vol0", "vol1", "vol2"}
    assert len(list(cache_root.glob("*/*.npz"))) == 6  # the "sharp" entries, found again
    with pytest.raises(AopError, match="'classical' is listed twice"):
        predict_dataset(dataset, ["classical", "classical"], cache_root, progress=False)
    models.write_text(yaml.safe_dump([{"name": "classical", "settings": {}, "colour": 1}]))
    bad = CliRunner().invoke(app, ["predict", "--config", str(models), "--data", "x"])
    assert bad.exit_code == 2 and "models.yaml: models.0.colour: unknown field" in bad.output


def test_aop_models_reports_what_is_missing(tmp_path, monkeypatch):
    import torch
    import yaml

    from aop.segmentation.bioimageio_package import write_model_package

    monkeypatch.setenv("COLUMNS", "300")
    kwargs = {"in_channels": 1, "out_channels": 2, "kernel_size": 3, "padding": 1}
    package = write_model_package(
        tmp_path / "tiny", torch.nn.Conv3d(**kwargs), callable_name="Conv3d",
        import_from="torch.nn", kwargs=kwargs, name="tiny conv", description="one conv",
        min_shape=(8, 8, 8), step=(1, 1, 1), halo=(2, 2, 2),
    )
    models = tmp_path / "models.yaml"
    entries = [
        {"name": "classical"},
        {"name": "bioimageio", "id": "tiny", "settings": {"model": str(package)}},
        {"name": "bioimageio", "id": "gone", "settings": {"model": str(tmp_path / "gone")}},
    ]
    models.write_text(yaml.safe_dump(entries))
    runner = CliRunner()
    result = runner.invoke(app, ["models", "--config", str(models)])
    assert result.exit_code == 1, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert "ready" in rows["classical"] and "none needed" in rows["classical"]
    # long paths fold inside their table cell: compare without the folding
    unfolded = "".join(line.strip(" │") for line in result.output.splitlines())
    assert "ready" in rows["tiny"] and str(package / "weights.pt") in unfolded
    assert "not ready" in rows["gone"]
    assert f"put them at{tmp_path / 'gone' / 'rdf.yaml'}" in unfolded.replace(" at ", " at")
    assert "2 of 3 models ready" in result.output
    models.write_text(yaml.safe_dump(entries[:2]))
    assert runner.invoke(app, ["models", "--config", str(models)]).exit_code == 0
    every = runner.invoke(app, ["models", "--setting", "classical.sigma=1.0"])
    assert "classical" in every.output and "unet3d" in every.output
