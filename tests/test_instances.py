"""Instance crops (eq. 6), features (against scikit-image), label spreading (against scikit-learn),
synthetic classes, and the ``aop instances`` / ``aop spread`` commands."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cdist
from skimage.measure import marching_cubes, mesh_surface_area, regionprops
from sklearn.decomposition import PCA
from sklearn.model_selection import cross_val_score
from sklearn.preprocessing import StandardScaler
from sklearn.semi_supervised import LabelSpreading
from sklearn.tree import DecisionTreeClassifier
from threadpoolctl import threadpool_limits
from typer.testing import CliRunner

from aop.cli import app
from aop.errors import AopError
from aop.instances import append_annotations, read_annotations, read_classes
from aop.instances.crops import instance_crops
from aop.instances.features import dataset_features, instance_features
from aop.instances.spread import feature_columns, spread_labels
from aop.io import DatasetInfo, load_dataset, write_dataset
from aop.synth import CLASS_PRESETS, preset_params, simulate, simulate_classes
from aop.synth.dataset import write_synthetic_dataset

SPACING = (2.0, 0.5, 0.75)


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with threadpool_limits(1):  # the tests share two cores
        yield


def _ellipsoid(shape, center, semi, spacing=SPACING):
    grid = np.meshgrid(
        *(np.arange(n) * s for n, s in zip(shape, spacing, strict=True)), indexing="ij"
    )
    r = sum(((g - c) / a) ** 2 for g, c, a in zip(grid, center, semi, strict=True))
    return r <= 1.0


@pytest.fixture(scope="module")
def two_instances():
    labels = np.zeros((12, 40, 36), np.uint16)
    labels[_ellipsoid(labels.shape, (10.0, 8.0, 9.0), (5.0, 5.0, 6.0))] = 4
    labels[_ellipsoid(labels.shape, (12.0, 12.0, 19.0), (6.0, 3.0, 4.0)) & (labels == 0)] = 9
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 100, size=(2, *labels.shape)).astype(np.float32)
    return labels, image


# --------------------------------------------------------------------------------------------------
# Crops
# --------------------------------------------------------------------------------------------------


def _centre_start(labels, label, size):
    centroid = np.argwhere(labels == label).mean(axis=0)
    return np.round(centroid - (np.asarray(size) - 1) / 2).astype(int)


def _reference_crop(volume, start, size):
    """Copy a box out of ``volume`` (..., Z, Y, X) with zeros outside, one voxel at a time."""
    out = np.zeros((*volume.shape[:-3], *size), np.float32)
    for index in np.ndindex(*size):
        source = tuple(int(s + i) for s, i in zip(start, index, strict=True))
        if all(0 <= p < n for p, n in zip(source, volume.shape[-3:], strict=True)):
            out[(..., *index)] = volume[(..., *source)]
    return out


def test_mask_crops_copy_every_channel_and_replace_the_instance_channel(two_instances):
    labels, image = two_instances
    size = (8, 16, 20)  # wider than the volume's border in x: zero padding
    crops, ids = instance_crops(labels, image, size=size, spacing=SPACING, mask_channel=1)
    assert crops.dtype == np.float32 and crops.shape == (2, 2, *size)
    assert ids.tolist() == [4, 9]
    for crop, label in zip(crops, ids, strict=True):
        start = _centre_start(labels, label, size)
        assert np.array_equal(crop[0], _reference_crop(image[0], start, size))
        assert np.array_equal(
            crop[1], _reference_crop((labels == label).astype(np.float32), start, size)
        )
    neighbour = _reference_crop(
        (labels == 9).astype(np.float32), _centre_start(labels, 4, size), size
    )
    assert neighbour.sum() > 0 and crops[0, 1][neighbour > 0].max() == 0  # neighbours masked out


def test_distance_crops_follow_equation_6(two_instances):
    labels, image = two_instances
    sigma = 1.5
    size = (6, 24, 20)
    crops, ids = instance_crops(
        labels,
        image,
        size=size,
        spacing=SPACING,
        method="distance",
        sigma=sigma,
        labels_subset=[9],
    )
    assert ids.tolist() == [9]
    start = _centre_start(labels, 9, size)
    inside = np.argwhere(labels == 9) * SPACING
    expected = np.zeros((2, *size), np.float32)
    for index in np.ndindex(*size):
        p = np.array(start) + index
        if np.all(p >= 0) and np.all(p < labels.shape):
            d = cdist([p * SPACING], inside).min()  # min over the mask of |p1 - p2| in µm
            expected[(slice(None), *index)] = image[(slice(None), *p)] * np.exp(-d / sigma)
    np.testing.assert_allclose(crops[0], expected, rtol=1e-5, atol=1e-4)
    assert crops[0, 0][_reference_crop((labels == 9) * 1.0, start, size) > 0].min() > 0


def test_crops_resample_to_the_target_voxel_size():
    labels = np.zeros((10, 40, 40), np.uint8)
    labels[4:6, 16:24, 16:24] = 1  # 4 x 4 x 4 µm at spacing (2, 0.5, 0.5)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in labels.shape), indexing="ij")
    ramp = 2.0 * z + 0.5 * y + 0.25 * x  # linear in the voxel index: interpolation is exact
    crops, _ = instance_crops(
        labels,
        np.stack([ramp, ramp]),
        size=(8, 8, 8),
        spacing=(2.0, 0.5, 0.5),
        target_spacing=(1.0, 1.0, 1.0),
        mask_channel=1,
    )
    # centroid at voxel (4.5, 19.5, 19.5); sample k along an axis at centroid + (k - 3.5) * step
    k = np.arange(8) - 3.5
    gz, gy, gx = np.meshgrid(4.5 + k / 2, 19.5 + 2 * k, 19.5 + 2 * k, indexing="ij")
    np.testing.assert_allclose(crops[0, 0], 2.0 * gz + 0.5 * gy + 0.25 * gx, rtol=1e-5)
    mask = crops[0, 1]
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert mask.sum() == pytest.approx(4 * 4 * 4, rel=0.3)  # 64 µm³ at 1 µm³ per sample


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": (3, 16, 16)}, "crop size \\[3, 16, 16\\] is smaller than 4"),
        ({"method": "distance", "sigma": 0.0}, "sigma must be positive"),
        ({"method": "distance", "sigma": -1.0}, "sigma must be positive"),
        ({"method": "blur"}, "unknown crop method 'blur'"),
        ({"labels_subset": [5]}, "label 5 does not exist"),
    ],
)
def test_bad_crop_arguments(two_instances, kwargs, message):
    labels, image = two_instances
    with pytest.raises(AopError, match=message):
        instance_crops(labels, image, **kwargs)


def test_empty_volume_is_refused():
    empty = np.zeros((8, 8, 8), np.uint8)
    with pytest.raises(AopError, match="no instances"):
        instance_crops(empty, empty.astype(np.float32))
    with pytest.raises(AopError, match="no instances"):
        instance_features(empty)


# --------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------


def test_features_match_scikit_image_on_single_instances(two_instances):
    labels, image = two_instances
    table = instance_features(labels, image, SPACING)
    assert table.columns[0] == "label" and table["label"].tolist() == [4, 9]
    for row in table.itertuples():
        single = (labels == row.label).astype(np.uint8)
        (prop,) = regionprops(single, intensity_image=np.moveaxis(image, 0, -1), spacing=SPACING)
        assert row.instance_volume == pytest.approx(prop.area)
        assert row.instance_volume == pytest.approx(single.sum() * np.prod(SPACING))
        assert row.equivalent_diameter == pytest.approx(prop.equivalent_diameter_area)
        assert row.axis_major == pytest.approx(prop.axis_major_length)
        assert row.axis_minor == pytest.approx(prop.axis_minor_length)
        assert row.axis_major >= row.axis_middle >= row.axis_minor
        assert row.elongation == pytest.approx(prop.axis_major_length / prop.axis_minor_length)
        assert row.solidity == pytest.approx(prop.solidity)
        assert (row.centroid_z, row.centroid_y, row.centroid_x) == pytest.approx(prop.centroid)
        verts, faces, _, _ = marching_cubes(np.pad(single, 1).astype(float), 0.5, spacing=SPACING)
        assert row.surface_area == pytest.approx(mesh_surface_area(verts, faces))
        area = row.surface_area
        assert row.sphericity == pytest.approx(np.pi ** (1 / 3) * (6 * prop.area) ** (2 / 3) / area)
        for c in range(2):
            values = image[c][single > 0]
            assert getattr(row, f"ch{c}_mean") == pytest.approx(values.mean(), rel=1e-5)
            assert getattr(row, f"ch{c}_std") == pytest.approx(values.std(), rel=1e-4)
            for q in (10, 50, 90):
                assert getattr(row, f"ch{c}_p{q}") == pytest.approx(np.percentile(values, q))
    centroids = table[["centroid_z", "centroid_y", "centroid_x"]].to_numpy()
    assert table["nearest_neighbour"].tolist() == pytest.approx(
        [np.linalg.norm(np.subtract(*centroids))] * 2
    )


def test_ball_geometry_is_close_to_the_formulas():
    spacing = (1.0, 1.0, 1.0)
    ball = _ellipsoid((30, 30, 30), (14.5, 14.5, 14.5), (10.0, 10.0, 10.0), spacing).astype(
        np.uint8
    )
    row = instance_features(ball, spacing=spacing).iloc[0]
    assert row.instance_volume == pytest.approx(4 / 3 * np.pi * 1000, rel=0.02)
    # marching cubes on a binary mask overestimates a ball's area by about 8 % (voxel steps)
    assert 1.0 < row.surface_area / (4 * np.pi * 100) < 1.1
    assert 0.9 < row.sphericity < 1.0
    assert row.elongation == pytest.approx(1.0, abs=0.02)
    assert np.isnan(row.nearest_neighbour)
    assert "ch0_mean" not in row.index


# --------------------------------------------------------------------------------------------------
# Synthetic classes, data-set features, label spreading
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classes_data(tmp_path_factory):
    """A Myotube-like class data set: one volume of 32 x 192 x 192 at 1 µm, about 550 nuclei."""
    root = tmp_path_factory.mktemp("classes") / "myotube"
    params = preset_params("myotube", spacing=(1.0, 1.0, 1.0))
    with threadpool_limits(1):
        write_synthetic_dataset(
            root,
            params,
            (32, 192, 192),
            1,
            seed=1,
            preset="myotube",
            classes=CLASS_PRESETS["myotube"],
        )
        features = dataset_features(root)
    return root, features


def test_synthetic_classes_keep_the_geometry_and_write_the_truth(classes_data):
    root, features = classes_data
    info = load_dataset(root).info
    assert info.channel_names == ["dapi", "alpha_actinin", "s100beta"]
    assert [c.name for c in read_classes(root)] == ["myotube", "schwann", "debris", "other"]
    truth = read_annotations(root)  # validates every row against the labels
    assert (truth["source"] == "truth").all()
    assert len(truth) == len(features) > 400
    shares = truth["class"].value_counts(normalize=True)
    assert set(shares.index) == {"myotube", "schwann", "debris", "other"}
    assert shares.min() > 0.03
    params = preset_params("core_shell", spacing=(2.0, 1.0, 1.0))  # about 20 cells
    image, labels, classes = simulate_classes(
        (64, 128, 128), CLASS_PRESETS["core_shell"], seed=2, params=params
    )
    _, plain_labels = simulate((64, 128, 128), seed=2, params=params)
    assert np.array_equal(labels, plain_labels) and image.shape == (3, 64, 128, 128)
    assert len(classes) == labels.max()
    # core cells carry marker a more than outer-shell cells, which lie outside the core
    names = np.array([c.name for c in CLASS_PRESETS["core_shell"].classes])[classes]
    marker = instance_features(labels, image, params.spacing)["ch1_mean"].to_numpy()
    assert marker[names == "core"].mean() > marker[names == "outer_shell"].mean()


def test_synth_without_classes_writes_no_class_table(tmp_path):
    params = preset_params("nuclei", n_objects=2)
    root = write_synthetic_dataset(tmp_path / "plain", params, (8, 32, 32), 1, seed=0)
    assert not (root / "annotations.csv").exists()
    assert "classes" not in (root / "dataset.yaml").read_text()
    assert load_dataset(root).info.channel_names == ["fluorescence"]
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "n"), "--classes"])
    assert result.exit_code == 2 and "preset 'nuclei' has no instance classes" in result.output


def _truth_labels(root, features):
    truth = read_annotations(root).set_index(["volume", "label"])["class"]
    return truth.loc[list(zip(features["volume"], features["label"], strict=True))].to_numpy()


def test_one_feature_alone_does_not_separate_the_classes(classes_data):
    root, features = classes_data
    y = _truth_labels(root, features)
    X = features[feature_columns(features)].fillna(0.0).to_numpy()
    tree = DecisionTreeClassifier(max_depth=3, random_state=0)
    single = {
        c: cross_val_score(tree, X[:, [i]], y, cv=3).mean()
        for i, c in enumerate(feature_columns(features))
    }
    together = cross_val_score(
        DecisionTreeClassifier(max_depth=6, random_state=0), X, y, cv=3
    ).mean()
    assert max(single.values()) < 0.8  # the best single feature (a marker channel) is far from it
    assert together > max(single.values()) + 0.1
    assert together > 0.85


def test_spreading_10_percent_labels_the_rest(classes_data):
    root, features = classes_data
    y = _truth_labels(root, features)
    rng = np.random.default_rng(0)
    picked = rng.choice(len(features), len(features) // 10, replace=False)
    manual = pd.DataFrame(
        {
            "volume": features["volume"].to_numpy()[picked],
            "label": features["label"].to_numpy()[picked],
            "class": y[picked],
            "source": "manual",
        }
    )
    decoy = manual.assign(source="spread", **{"class": "other"})  # only manual rows count
    result = spread_labels(features, pd.concat([manual, decoy]), seed=0)
    rest = np.setdiff1d(np.arange(len(features)), picked)
    accuracy = (result["class"].to_numpy()[rest] == y[rest]).mean()
    assert accuracy >= 0.85, accuracy
    attrs = result.attrs
    assert attrs["alpha"] in (0.2, 0.5, 0.8) and attrs["cv_accuracy"] > 0.7
    probabilities = result[[f"p_{c}" for c in sorted(set(y))]].to_numpy()
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0)
    assert result["confidence"].to_numpy() == pytest.approx(probabilities.max(axis=1))
    top2 = np.sort(probabilities, axis=1)[:, -2:]
    assert result["uncertainty"].to_numpy() == pytest.approx(1 - (top2[:, 1] - top2[:, 0]))

    # the same as scikit-learn called directly, with the chosen parameters
    X = features[feature_columns(features)].to_numpy(dtype=float)
    X = np.where(np.isfinite(X), X, np.nanmedian(np.where(np.isfinite(X), X, np.nan), axis=0))
    z = PCA(n_components=0.95, svd_solver="full").fit_transform(StandardScaler().fit_transform(X))
    classes = sorted(set(y))
    target = np.full(len(features), -1)
    target[picked] = [classes.index(c) for c in y[picked]]
    direct = LabelSpreading(kernel="rbf", gamma=attrs["gamma"], alpha=attrs["alpha"], max_iter=200)
    direct.fit(z, target)
    np.testing.assert_allclose(probabilities, direct.label_distributions_, atol=1e-10)


def test_spreading_refuses_bad_annotations(classes_data):
    _, features = classes_data
    one_class = pd.DataFrame(
        {"volume": "synth_000", "label": [1, 2], "class": "myotube", "source": "manual"}
    )
    with pytest.raises(AopError, match="two classes or more"):
        spread_labels(features, one_class, gamma=1.0, alpha=0.2)
    ghost = pd.DataFrame(
        {"volume": "synth_000", "label": [1, 99999], "class": ["a", "b"], "source": "manual"}
    )
    with pytest.raises(AopError, match="synth_000 label 99999 has no instance"):
        spread_labels(features, ghost, gamma=1.0, alpha=0.2)
    with pytest.raises(AopError, match="alpha must be between 0 and 1"):
        spread_labels(features, ghost, alpha=1.0)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def test_cli_instances_writes_parquet_or_csv(two_instances, tmp_path):
    labels, image = two_instances
    root = write_dataset(
        tmp_path / "data",
        [("a", image, labels), ("b", image[0], labels)],
        DatasetInfo("d", SPACING),
    )
    runner = CliRunner()
    out = tmp_path / "features.parquet"
    result = runner.invoke(app, ["instances", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(out)
    pd.testing.assert_frame_equal(table, dataset_features(root))
    assert table["volume"].tolist() == ["a", "a", "b", "b"]
    first = instance_features(labels, image, SPACING)
    pd.testing.assert_frame_equal(table.iloc[:2, 1:], first)
    assert "ch1_mean" in table and table["ch1_mean"].isna().tolist() == [False, False, True, True]
    again = runner.invoke(app, ["instances", str(root), "--out", str(out)])
    assert again.exit_code == 2 and "exists" in again.output
    csv = tmp_path / "features.csv"
    assert runner.invoke(app, ["instances", str(root), "--out", str(csv), "--csv"]).exit_code == 0
    assert pd.read_csv(csv)["label"].tolist() == [4, 9, 4, 9]


def test_cli_spread_writes_spread_rows_and_keeps_the_others(classes_data, tmp_path):
    root, features = classes_data
    out = tmp_path / "features.parquet"
    features.to_parquet(out)
    truth = read_annotations(root)
    manual = truth.groupby("class").head(6)[["volume", "label", "class"]].assign(source="manual")
    append_annotations(root, manual)
    before = read_annotations(root)
    runner = CliRunner()
    command = ["spread", str(root), "--features", str(out), "--gamma", "0.5", "--alpha", "0.2"]
    for _ in range(2):  # a rerun replaces the spread rows
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
    after = read_annotations(root)
    spread = after[after["source"] == "spread"]
    assert len(spread) == len(features) - len(manual)
    spread_keys = set(zip(spread["volume"], spread["label"], strict=True))
    assert not spread_keys & set(zip(manual["volume"], manual["label"], strict=True))
    kept = after[after["source"] != "spread"].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, before)


def test_cli_bad_input_is_one_line(tmp_path):
    image = np.ones((4, 8, 8), np.float32)
    no_labels = write_dataset(tmp_path / "nolabels", [("a", image, None)], DatasetInfo("x"))
    empty = write_dataset(
        tmp_path / "empty", [("a", image, np.zeros((4, 8, 8), np.uint8))], DatasetInfo("y")
    )
    runner = CliRunner()
    for data, message in (
        (no_labels, "no labels/a.* for this image"),
        (empty, "labels/a.tif: no instances"),
    ):
        result = runner.invoke(app, ["instances", str(data), "--out", str(tmp_path / "f.parquet")])
        assert result.exit_code == 2
        assert message in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "f.parquet").exists()
    (empty / "annotations.csv").write_text(
        "volume,label,class,source,annotator,time\nb,1,x,manual,,2026-01-01T00:00:00Z\n"
    )
    result = runner.invoke(app, ["spread", str(empty)])
    assert result.exit_code == 2 and "line 2: unknown volume 'b'" in result.output
