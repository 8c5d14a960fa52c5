"""Synthetic benchmark: geometry, layouts, image model, presets, validation, ``aop synth``."""

from __future__ import annotations

import cc3d
import numpy as np
import pytest
import yaml
from scipy import ndimage as ndi
from typer.testing import CliRunner

from aop.cli import app
from aop.errors import AopError
from aop.io import load_dataset
from aop.synth import (
    PRESETS,
    expected_object_count,
    make_params,
    preset_params,
    simulate,
    touching_fraction,
    touching_labels,
)
from aop.synth.layout import mean_object_volume, place_objects, region_of
from aop.synth.render import rasterize
from aop.synth.shapes import inside_mask, normalized_radius, random_blob

SHAPE = (24, 64, 64)


@pytest.fixture(scope="module")
def volume() -> tuple[np.ndarray, np.ndarray]:
    return simulate(SHAPE, spacing=(2.0, 1.0, 1.0), n_objects=40, radius_range=(3, 5), seed=7)


# ------------------------------------------------------------------------------------------------
# arrays, determinism, labels
# ------------------------------------------------------------------------------------------------


def test_shapes_dtypes_and_consecutive_labels(volume):
    image, labels = volume
    assert image.shape == labels.shape == SHAPE
    assert image.dtype == np.float32 and labels.dtype == np.uint32
    n = int(labels.max())
    assert 36 <= n <= 40  # objects cut to < min_voxels at the border are dropped
    np.testing.assert_array_equal(np.unique(labels), np.arange(n + 1))


def test_same_seed_same_arrays_other_seed_other_arrays(volume):
    image, labels = volume
    again = simulate(SHAPE, spacing=(2.0, 1.0, 1.0), n_objects=40, radius_range=(3, 5), seed=7)
    np.testing.assert_array_equal(image, again[0])
    np.testing.assert_array_equal(labels, again[1])
    other = simulate(SHAPE, spacing=(2.0, 1.0, 1.0), n_objects=40, radius_range=(3, 5), seed=8)
    assert not np.array_equal(labels, other[1])


def test_labels_do_not_depend_on_image_parameters(volume):
    _, labels = volume
    image, same = simulate(
        SHAPE, spacing=(2.0, 1.0, 1.0), n_objects=40, radius_range=(3, 5), seed=7,
        background=80.0, psf_sigma=0.0, gaussian_noise=0.0, texture=0.0,
    )  # fmt: skip
    np.testing.assert_array_equal(labels, same)
    assert abs(float(np.median(image[labels == 0])) - 80.0) < 5.0


def test_every_object_is_one_piece_and_objects_are_brighter(volume):
    image, labels = volume
    for label, mask in cc3d.each(labels, binary=True, in_place=True):
        assert cc3d.connected_components(mask, connectivity=6).max() == 1, label
    inside = float(image[labels > 0].mean())
    outside = float(image[ndi.binary_dilation(labels > 0, iterations=3) == 0].mean())
    assert inside > 3 * outside


def test_object_volumes_match_the_radius_range():
    params = make_params(spacing=(1.0, 1.0, 1.0), n_objects=30, radius_range=(4.0, 6.0))
    _, labels = simulate((40, 80, 80), params=params, seed=3)
    whole = [
        label
        for label, box in enumerate(ndi.find_objects(labels), start=1)
        if all(s.start > 0 and s.stop < n for s, n in zip(box, labels.shape, strict=True))
    ]  # objects not cut by the volume's faces
    assert len(whole) >= 10
    volumes = np.bincount(labels.ravel())[whole]
    ratio = volumes.mean() / mean_object_volume(params)
    assert 0.8 < ratio < 1.25, ratio


# ------------------------------------------------------------------------------------------------
# shapes and rasterisation
# ------------------------------------------------------------------------------------------------


def test_inside_mask_agrees_with_normalized_radius():
    rng = np.random.default_rng(0)
    blob = random_blob(rng, 5.0, elongation=1.5, irregularity=0.3)
    axis = np.arange(-9.0, 9.5, 0.5, dtype=np.float32)
    dz, dy, dx = axis[:, None, None], axis[None, :, None], axis[None, None, :]
    mask = inside_mask(blob, dz, dy, dx)
    np.testing.assert_array_equal(mask, normalized_radius(blob, dz, dy, dx) <= 1.0)
    # the irregular volume stays near the ellipsoid's (4/3) pi r^3 and inside the bounding ball
    volume = mask.sum() * 0.5**3
    assert 0.7 < volume / (4 / 3 * np.pi * 5.0**3) < 1.35
    r = np.sqrt(dz**2 + dy**2 + dx**2)
    assert r[mask].max() <= blob.bounding_radius


def test_overlapping_pair_shares_voxels_without_losing_any():
    rng = np.random.default_rng(1)
    first = random_blob(rng, 6.0, 1.2, 0.2).moved(np.array([15.0, 15.0, 12.0]))
    second = random_blob(rng, 6.0, 1.2, 0.2).moved(np.array([15.0, 15.0, 20.0]))
    shape = (30, 30, 34)
    labels, kept = rasterize([first, second], shape, (1.0, 1.0, 1.0))
    grid = [np.arange(n, dtype=np.float32) for n in shape]
    masks = [
        inside_mask(b, grid[0][:, None, None] - b.center[0], grid[1][None, :, None] - b.center[1],
                    grid[2][None, None, :] - b.center[2])
        for b in (first, second)
    ]  # fmt: skip
    assert (masks[0] & masks[1]).sum() > 50  # they do overlap
    np.testing.assert_array_equal(labels > 0, masks[0] | masks[1])  # the union, nothing lost
    assert list(kept) == [0, 1]
    assert set(touching_labels(labels)) == {1, 2}


# ------------------------------------------------------------------------------------------------
# counts, touching, anisotropy, layouts
# ------------------------------------------------------------------------------------------------


def test_density_gives_the_expected_count():
    params = make_params(density=0.12, radius_range=(3.0, 5.0), touching_fraction=0.0)
    expected = expected_object_count((32, 96, 96), params)
    assert expected == round(0.12 * 31 * 95 * 95 / mean_object_volume(params))
    _, labels = simulate((32, 96, 96), params=params, seed=2)
    assert 0.9 * expected <= labels.max() <= expected


def test_strongly_irregular_touching_objects_stay_in_one_piece():
    _, labels = simulate(
        (32, 96, 96), spacing=(3.0, 1.0, 1.0), n_objects=40, radius_range=(3, 6),
        irregularity=0.5, elongation=2.0, touching_fraction=1.0, seed=1,
    )  # fmt: skip
    assert touching_fraction(labels) == 1.0
    for label, mask in cc3d.each(labels, binary=True, in_place=True):
        assert cc3d.connected_components(mask, connectivity=6).max() == 1, label


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_touching_fraction_is_honoured(fraction):
    _, labels = simulate((32, 96, 96), spacing=(2.0, 1.0, 1.0), n_objects=80,
                         radius_range=(3, 5), touching_fraction=fraction, seed=5)  # fmt: skip
    measured = touching_fraction(labels)
    if fraction == 0.0:
        assert measured == 0.0  # separate objects keep a background gap
    else:
        assert abs(measured - fraction) <= 0.08, measured


def test_overlap_packs_objects_as_densely_as_real_nuclei():
    """StarDist's annotated real volume (31x61x57 at voxel size (2, 1, 1)) has 38.5 % foreground
    and 86 % of its nuclei touch a neighbour; with overlap 0 the packer cannot get near that."""
    plain = make_params(spacing=(2.0, 1.0, 1.0), density=0.45, touching_fraction=0.5)
    with pytest.raises(AopError, match="'density': only .* objects fit"):
        simulate(SHAPE, params=plain, seed=0)
    dense = plain.model_copy(update={"overlap": 0.4})
    foreground, touching = [], []
    for seed in range(3):
        _, labels = simulate(SHAPE, params=dense, seed=seed)
        assert labels.max() >= 0.9 * expected_object_count(SHAPE, dense)
        for label, mask in cc3d.each(labels, binary=True, in_place=True):
            assert cc3d.connected_components(mask, connectivity=6).max() == 1, label
        foreground.append((labels > 0).mean())
        touching.append(touching_fraction(labels))
    assert 0.32 < np.mean(foreground) < 0.42, foreground
    assert np.mean(touching) > 0.75, touching


def test_anisotropic_spacing_shrinks_objects_along_z():
    _, labels = simulate((60, 80, 80), spacing=(3.0, 1.0, 1.0), n_objects=15,
                         radius_range=(5, 6), elongation=1.0, irregularity=0.0,
                         touching_fraction=0.0, seed=4)  # fmt: skip
    extents = []
    for box in ndi.find_objects(labels):
        if all(s.start > 0 and s.stop < n for s, n in zip(box, labels.shape, strict=True)):
            extents.append([s.stop - s.start for s in box])
    extents = np.asarray(extents, dtype=float)
    assert len(extents) >= 5
    ratio = extents[:, 2].mean() / extents[:, 0].mean()
    assert 2.4 < ratio < 3.6, ratio  # spheres: 3x more voxels along x than along z


def test_spheroid_keeps_objects_in_a_ball_denser_at_the_centre():
    shape = (48, 96, 96)
    params = make_params(layout="spheroid", density=0.06, radius_range=(2.5, 3.5),
                         central_density=4.0, touching_fraction=0.2)  # fmt: skip
    _, labels = simulate(shape, params=params, seed=11)
    region = region_of(shape, params)
    z, y, x = np.nonzero(labels)
    distance = np.sqrt((z - region.center[0]) ** 2 + (y - region.center[1]) ** 2
                       + (x - region.center[2]) ** 2)  # fmt: skip
    assert distance.max() <= region.radius + 1.0
    centres = np.asarray(ndi.center_of_mass(labels > 0, labels, range(1, labels.max() + 1)))
    r = np.linalg.norm(centres - region.center, axis=1) / region.radius
    inner = (r < 0.5).sum() / 0.5**3
    outer = (r >= 0.5).sum() / (1 - 0.5**3)
    assert inner > 1.5 * outer


def test_core_shell_populations_differ_in_place_size_and_brightness():
    shape = (40, 128, 128)
    params = preset_params("core_shell", spacing=(1.0, 1.0, 1.0), radius_range=(3.0, 4.0),
                           n_objects=80, psf_sigma=0.5)  # fmt: skip
    image, labels = simulate(shape, params=params, seed=2)
    region = region_of(shape, params)
    index = np.arange(1, labels.max() + 1)
    centres = np.asarray(ndi.center_of_mass(labels > 0, labels, index))
    r = np.linalg.norm(centres - region.center, axis=1)
    core = r < region.core_radius
    assert core.sum() >= 20 and (~core).sum() >= 20
    size = np.bincount(labels.ravel())[1:]
    brightness = np.asarray(ndi.mean(image, labels, index))
    assert np.median(size[~core]) > 1.4 * np.median(size[core])  # shell radius x1.25
    assert np.median(brightness[core]) > 1.5 * np.median(brightness[~core])  # shell x0.45


def test_presets_match_the_paper_counts_and_scale_down():
    myotube = preset_params("myotube")
    assert abs(expected_object_count((90, 1024, 1024), myotube) - 11146) <= 1
    assert abs(expected_object_count((70, 1024, 1024), preset_params("core_shell")) - 672) <= 1
    small = expected_object_count((90, 256, 256), myotube)
    assert abs(small - 11146 * (255 / 1023) ** 2) < 0.02 * small
    assert myotube.spacing[0] > myotube.spacing[2]  # anisotropic voxels


def test_noise_model_is_poisson_plus_gaussian():
    image, labels = simulate((16, 64, 64), n_objects=0, background=50.0, psf_sigma=0.0,
                             gaussian_noise=2.0, seed=1)  # fmt: skip
    assert labels.max() == 0
    assert abs(image.mean() - 50.0) < 0.5
    assert abs(image.var() - (50.0 + 2.0**2)) < 3.0


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"touching_fraction": 1.5}, "touching_fraction"),
        ({"overlap": 0.7}, "'overlap': Input should be less than or equal to 0.5"),
        ({"radius_range": (5.0, 2.0)}, "radius_range"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing"),
        ({"layout": "torus"}, "layout"),
        ({"n_objects": 5, "density": 0.1}, "n_objects or density"),
        ({"colour": "red"}, "unknown simulation parameter 'colour'"),
        ({"n_objects": 5000}, "'n_objects': only"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_parameters_raise_one_line_naming_them(kwargs, named):
    with pytest.raises(AopError) as info:
        simulate((16, 32, 32), **kwargs)
    assert named in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("shape", [(0, 8, 8), (8, 8), (8.5, 8, 8)])
def test_bad_shape_raises(shape):
    with pytest.raises(AopError, match="shape"):
        simulate(shape)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(AopError, match="unknown preset 'foo'.*myotube"):
        preset_params("foo")


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------

runner = CliRunner()


def test_cli_writes_a_loadable_dataset_with_provenance(tmp_path):
    out = tmp_path / "bench"
    result = runner.invoke(app, ["synth", "--out", str(out), "--n-volumes", "2", "--shape",
                                 "16", "48", "48", "--seed", "5", "--preset", "myotube",
                                 "--n-objects", "12"])  # fmt: skip
    assert result.exit_code == 0, result.output
    dataset = load_dataset(out, require_labels=True)
    assert dataset.names == ["synth_000", "synth_001"]
    assert dataset.info.voxel_size == (1.0, 0.5, 0.5)
    provenance = yaml.safe_load((out / "dataset.yaml").read_text())["provenance"]
    assert provenance["preset"] == "myotube" and provenance["shape"] == [16, 48, 48]
    assert provenance["params"]["n_objects"] == 12 and provenance["params"]["density"] is None
    seeds = {name: record["seed"] for name, record in provenance["volumes"].items()}
    assert len(set(seeds.values())) == 2
    # the provenance is enough to simulate every volume again, voxel for voxel
    params = make_params(**provenance["params"])
    for name in dataset.names:
        image, labels = simulate(provenance["shape"], params=params, seed=seeds[name])
        np.testing.assert_array_equal(dataset.labels(name), labels)
        np.testing.assert_array_equal(dataset.image(name), image)
        assert provenance["volumes"][name]["n_objects"] == labels.max()


def test_cli_packed_nuclei_with_overlap_override(tmp_path):
    out = tmp_path / "packed"
    result = runner.invoke(app, ["synth", "--out", str(out), "--n-volumes", "1", "--shape", "24",
                                 "64", "64", "--preset", "packed_nuclei", "--spacing", "2", "1",
                                 "1", "--overlap", "0.3"])  # fmt: skip
    assert result.exit_code == 0, result.output
    provenance = yaml.safe_load((out / "dataset.yaml").read_text())["provenance"]
    assert provenance["params"]["overlap"] == 0.3 and provenance["params"]["density"] == 0.45
    labels = load_dataset(out, require_labels=True).labels("synth_000")
    assert 0.25 < (labels > 0).mean() < 0.42 and touching_fraction(labels) > 0.5


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--shape", "0", "8", "8"], "--shape"),
        (["--n-volumes", "0"], "--n-volumes"),
        (["--touching-fraction", "3"], "--touching-fraction"),
        (["--overlap", "0.8"], "--overlap"),
        (["--density", "0.45", "--shape", "16", "48", "48"], "--density: only"),
        (["--spacing", "1", "-1", "1"], "--spacing"),
        (["--preset", "foo"], "unknown preset 'foo'"),
        (["--layout", "torus"], "--layout"),
        (["--n-objects", "5000", "--shape", "8", "32", "32"], "--n-objects: only"),
    ],
)
def test_cli_bad_value_gives_one_line_and_no_output(tmp_path, args, named):
    out = tmp_path / "never"
    result = runner.invoke(app, ["synth", "--out", str(out), *args])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and named in lines[0], result.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_smoothed_noise_std_matches_filtered_noise():
    from aop.synth.render import smoothed_noise_std

    noise = np.random.default_rng(0).standard_normal((40, 120, 120))
    sigma = (0.6, 1.5, 2.0)
    filtered = ndi.gaussian_filter(noise, sigma, truncate=3.0)
    assert abs(filtered.std() / smoothed_noise_std(sigma) - 1.0) < 0.05


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_fits_its_default_shape(name):
    preset = PRESETS[name]
    params = preset_params(name)
    placement = place_objects(preset.default_shape, params, np.random.default_rng(0))
    assert len(placement.blobs) >= 0.9 * placement.requested >= 9
    assert abs(touching_fraction_of(placement) - params.touching_fraction) < 0.1


def touching_fraction_of(placement) -> float:
    return float(np.mean(placement.partners >= 0))
