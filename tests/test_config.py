"""Experiment and search-space files: validation, defaults, one-line errors naming the field."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

from aop.config import read_yaml
from aop.errors import AopError
from aop.segmentation.params import typed_params
from aop.segmentation.postprocess import PARAMETER_RANGES
from aop.tuning.kinds import get_kind, load_experiment
from aop.tuning.segmentation import parse_segmentation_space, table_iii_space
from aop.tuning.space import FloatSpec, IntSpec


def experiment_search_space(exp):
    return get_kind(exp.kind).search_space(exp)


def parse_search_space(raw, source="<search space>", models=("a",)):
    return parse_segmentation_space(raw, list(models), source=source)


def ranges(space):
    """``{name: (type, low, high)}`` of the searched post-processing parameters."""
    out = {}
    for name, spec in space.parameters.items():
        if isinstance(spec, IntSpec):
            out[name] = (int, *spec.int)
        elif isinstance(spec, FloatSpec):
            out[name] = (float, *spec.float)
    return out


def zeros(space):
    """The ``zeros`` start point without the model choice (one per model, all equal)."""
    points = [{k: v for k, v in p.items() if k != "model"} for p in space.start("zeros")]
    assert all(p == points[0] for p in points)
    return points[0]

ROOT = Path(__file__).resolve().parents[1]


def _write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _minimal(tmp_path: Path) -> dict:
    return {
        "name": "t",
        "data": {"synth": {"n_volumes": 2, "shape": [8, 16, 16]}},
        "models": [{"name": "classical"}],
        "storage": {"study_dir": str(tmp_path / "study")},
    }


def test_defaults_follow_the_paper(tmp_path):
    exp = load_experiment(_write(tmp_path / "e.yaml", _minimal(tmp_path)))
    assert exp.search.searcher == "gp"
    assert exp.search.budget == 120
    assert exp.comparison.baseline and exp.comparison.random
    assert exp.random_budget == 120
    assert exp.cache_dir == tmp_path / "study" / "predictions"
    # one store per project: beside the experiment file, whatever the study folder
    assert exp.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert exp.to_yaml_dict()["tracking"]["tracking_uri"] == exp.tracking_uri
    assert exp.search_space == ROOT / "search_spaces" / "segmentation.yaml"
    space = experiment_search_space(exp)
    assert space.choices("model") == ["classical"]
    assert set(ranges(space)) == set(PARAMETER_RANGES) and not space.fixed


def test_relative_paths_resolve_against_the_experiment_folder(tmp_path):
    raw = _minimal(tmp_path)
    raw["storage"] = {"study_dir": "studies/x", "cache_dir": "shared/cache"}
    raw["models"] = [
        {"name": "unet3d", "settings": {"model": "models/u"}},
        {"name": "stardist2d", "settings": {"model": "2D_versatile_fluo"}},  # a registered name
    ]
    (tmp_path / "sub" / "models" / "u").mkdir(parents=True)
    exp = load_experiment(_write(tmp_path / "sub" / "e.yaml", raw))
    assert exp.study_dir == tmp_path / "sub" / "studies" / "x"
    assert exp.cache_dir == tmp_path / "sub" / "shared" / "cache"
    assert exp.models[0].settings["model"] == str(tmp_path / "sub" / "models" / "u")
    assert exp.models[1].settings["model"] == "2D_versatile_fluo"


@pytest.mark.parametrize(
    ("change", "field", "fragment"),
    [
        (lambda r: r["search"].update(budget=0), "search.budget", "greater than 0"),
        (lambda r: r["search"].update(concurrency=-1), "search.concurrency", "greater than 0"),
        (lambda r: r["search"].update(budgte=5), "search.budgte", "unknown field"),
        (lambda r: r.update(colour="red"), "colour", "unknown field"),
        (lambda r: r["search"]["resources"].update(gpu=-1), "search.resources.gpu", "equal to 0"),
        (lambda r: r.update(models=[]), "models", "at least 1"),
        (lambda r: r["data"].update(benchmark="/x"), "data", "exactly one"),
        (lambda r: r["data"]["synth"].update(shape=[4, 4]), "data.synth", "3 entries"),
        (lambda r: r.update(models=[{"name": "classical"}] * 2), "", "listed twice"),
    ],
)
def test_bad_experiment_names_file_and_field(tmp_path, change, field, fragment):
    raw = _minimal(tmp_path)
    raw["search"] = {"resources": {}}
    change(raw)
    path = _write(tmp_path / "bad.yaml", raw)
    with pytest.raises(AopError) as info:
        load_experiment(path)
    message = str(info.value)
    assert message.startswith(f"{path}: {field}")
    assert fragment in message and "\n" not in message


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(AopError, match="file not found"):
        load_experiment(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(AopError, match=r"bad.yaml: not valid YAML \(line"):
        load_experiment(bad)


def test_shipped_search_space_is_table_iii():
    path = ROOT / "search_spaces" / "segmentation.yaml"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shipped file is in today's format: no deprecation
        space = parse_search_space(read_yaml(path), source=str(path), models=["a", "b"])
    assert space == table_iii_space(["a", "b"])
    for name, (kind, low, high) in PARAMETER_RANGES.items():
        assert ranges(space)[name] == (kind, low, high)
    assert space.choices("model") == ["a", "b"]
    assert zeros(space) == {name: 0 for name in PARAMETER_RANGES}
    assert type(zeros(space)["erode_dilate"]) is int
    assert [p["model"] for p in space.start("zeros")] == ["a", "b"]


def test_narrow_fix_and_drop():
    space = parse_search_space(
        {
            "parameters": {
                "model": {"choice": ["a"]},
                "erode_dilate": {"int": [2, 5]},
                "open_close": 1,
                "merge_area": {"float": [0.2, 0.4]},
            },
        }
    )
    assert ranges(space) == {"erode_dilate": (int, 2, 5), "merge_area": (float, 0.2, 0.4)}
    assert space.fixed["open_close"] == 1
    for dropped in ("merge_continuity", "merge_smoothness", "split_sigma", "split_threshold"):
        assert space.fixed[dropped] == 0
        assert type(space.fixed[dropped]) is float  # a weight is a float, also when fixed at 0
    # the start point is clipped into a narrowed range
    assert zeros(space) == {"erode_dilate": 2, "merge_area": 0.2}
    full = typed_params({**space.fixed, "erode_dilate": 3, "merge_area": 0.3})
    assert full == {**{n: 0 for n in PARAMETER_RANGES}, "erode_dilate": 3, "open_close": 1,
                    "merge_area": 0.3}


def test_the_earlier_low_high_format_loads_with_one_deprecation_line():
    legacy = {
        "models": ["a"],
        "parameters": {
            "erode_dilate": {"type": "int", "low": 2, "high": 5},
            "open_close": 1,
            "merge_area": {"low": 0.2, "high": 0.4},
        },
    }
    with pytest.warns(FutureWarning) as caught:
        space = parse_search_space(legacy, source="old.yaml")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert message.startswith("old.yaml: the {low, high} search-space format is deprecated")
    assert "{int: [low, high]}" in message and "model: {choice:" in message
    assert "\n" not in message
    today = parse_search_space({"parameters": {
        "model": {"choice": ["a"]}, "erode_dilate": {"int": [2, 5]}, "open_close": 1,
        "merge_area": {"float": [0.2, 0.4]},
    }})
    assert space == today
    with pytest.warns(FutureWarning):  # `models: null`: every model of the experiment
        every = parse_search_space({"models": None, "parameters": {}}, models=["a", "b"])
    assert every.choices("model") == ["a", "b"] and not every.searched[1:]


@pytest.mark.parametrize(
    ("parameters", "field", "fragment"),
    [
        ({"erode_dilate": {"int": [-11, 3]}}, "parameters.erode_dilate.int.0", "outside"),
        ({"merge_area": {"float": [0.0, 1.5]}}, "parameters.merge_area.float.1", "outside"),
        ({"open_close": {"int": [0.5, 3]}}, "parameters.open_close.int.0", "valid integer"),
        ({"split_sigma": {"float": [0.6, 0.2]}}, "parameters.split_sigma", "must be < high"),
        ({"split_sigma": 2.0}, "parameters.split_sigma", "outside"),
        ({"open_close": 1.5}, "parameters.open_close", "not an integer"),
        ({"erosion": 1}, "parameters.erosion", "unknown parameter"),
        ({"merge_area": "lots"}, "parameters.merge_area", "{float: [low, high]} or a number"),
        ({"merge_area": {"float": [0, 1], "step": 2}}, "parameters.merge_area.step", "unknown"),
        ({"merge_area": {"int": [0, 1]}}, "parameters.merge_area", "{float: [low, high]}"),
        ({"erode_dilate": {"choice": [1, 2]}}, "parameters.erode_dilate", "{int: [low, high]}"),
        # the earlier format (converted, with a deprecation warning) names the same fields
        ({"erode_dilate": {"low": -11, "high": 3}}, "parameters.erode_dilate.int.0", "outside"),
        ({"merge_area": {"low": 0, "high": 1, "step": 2}}, "parameters.merge_area.step",
         "unknown"),
        ({"merge_area": {"type": "int", "low": 0, "high": 1}}, "parameters.merge_area.type",
         "'float'"),
    ],
)
def test_bad_search_space_names_the_parameter(parameters, field, fragment):
    with warnings.catch_warnings(), pytest.raises(AopError) as info:
        warnings.simplefilter("ignore", FutureWarning)
        parse_search_space({"parameters": parameters}, source="space.yaml")
    assert str(info.value).startswith(f"space.yaml: {field}")
    assert fragment in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("space", "field"),
    [({"parameters": {"model": {"choice": ["stardist2d"]}}}, "parameters.model"),
     ({"models": ["stardist2d"], "parameters": {}}, "parameters.model")],
)
def test_search_space_models_must_exist_in_the_experiment(tmp_path, space, field):
    space_file = _write(tmp_path / "s.yaml", space)
    raw = _minimal(tmp_path)
    raw["search_space"] = str(space_file)
    # found when the experiment file loads, before any work
    with warnings.catch_warnings(), pytest.raises(
        AopError, match=rf"s.yaml: {field}: 'stardist2d' is not a model"
    ):
        warnings.simplefilter("ignore", FutureWarning)
        load_experiment(_write(tmp_path / "e.yaml", raw))


def test_a_key_written_twice_is_refused_naming_it_and_its_line(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(f"name: a\nname: b\nmodels: [{{name: classical}}]\n"
                    f"storage: {{study_dir: {tmp_path / 's'}}}\n")
    with pytest.raises(AopError, match=r"e.yaml: key 'name' appears twice \(line 2\)"):
        load_experiment(path)


def test_reading_an_experiment_file_starts_no_ray_and_imports_no_tracking():
    """Every check of an experiment file runs before Ray starts: loading one (of any kind)
    imports neither Ray nor MLflow."""
    paths = [str(p) for p in sorted((ROOT / "experiments").glob("*.yaml"))]
    code = (
        "import sys; from aop.tuning.kinds import load_experiment; "
        f"[load_experiment(p) for p in {paths!r}]; "
        "print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("path", sorted((ROOT / "experiments").glob("*.yaml")))
def test_shipped_experiments_validate(path):
    from aop.tuning.kinds import get_kind

    exp = load_experiment(path)
    assert exp.search.budget > 0
    if exp.kind == "segmentation":
        assert experiment_search_space(exp).choices("model")
    assert get_kind(exp.kind).search_space(exp).searched


def test_search_command_reports_a_bad_experiment_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from aop.cli import app

    raw = _minimal(tmp_path)
    raw["search"] = {"budget": -3}
    path = _write(tmp_path / "bad.yaml", raw)
    result = CliRunner().invoke(app, ["search", str(path)])
    assert result.exit_code == 2
    assert "search.budget" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "study").exists()  # nothing written
    good = _write(tmp_path / "e.yaml", _minimal(tmp_path))
    result = CliRunner().invoke(app, ["search", str(good), "--budget", "0"])
    assert result.exit_code == 2 and "--budget must be at least 1" in result.output
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize(
    ("models", "message"),
    [
        ([{"name": "bioimageo"}], "models.0.name: unknown model 'bioimageo' (available: "),
        (
            [{"name": "classical"}, {"name": "bioimageio", "settings": {"gasp_bta": 0.5}}],
            "models.1.settings.gasp_bta: unknown field",
        ),
        (
            [{"name": "classical", "settings": {"sigma": -1}}],
            "models.0.settings.sigma: Input should be greater than or equal to 0",
        ),
    ],
)
def test_model_names_and_settings_are_checked_when_the_file_loads(tmp_path, models, message):
    raw = _minimal(tmp_path)
    raw["models"] = models
    with pytest.raises(AopError) as error:
        load_experiment(_write(tmp_path / "e.yaml", raw))
    assert str(error.value).startswith(f"{tmp_path / 'e.yaml'}: {message}")
