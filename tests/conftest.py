"""Shared test set-up: quiet, headless, deterministic."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")

import shutil  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from aop.segmentation.models.stardist import prepare_tensorflow  # noqa: E402

# triton imported after TensorFlow crashes the interpreter; tests mix StarDist and torch in one
# process, so settle the import order once, before any test loads TensorFlow.
prepare_tensorflow()


@pytest.fixture(scope="session")
def nuclei_3d() -> tuple[np.ndarray, np.ndarray]:
    """StarDist's real annotated 3D sample: (image uint16 31x61x57, labels with 51 nuclei)."""
    from stardist.data import test_image_nuclei_3d

    image, labels = test_image_nuclei_3d(return_mask=True)
    return np.asarray(image), np.asarray(labels)


@pytest.fixture(autouse=True)
def _no_global_tracking_uri():
    """A test that points MLflow's fluent API at a store leaves it pointing nowhere afterwards."""
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)


@pytest.fixture(autouse=True, scope="module")
def _no_ray_left_running():
    """Shut down a Ray that a module's tests started and left running (``aop`` commands and
    ``run_study`` called in-process start a local one), so the next module in the same
    worker process can start its own."""
    yield
    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()


@pytest.fixture(autouse=True, scope="module")
def _fresh_ray_data_logs():
    """Ray Data keeps one log handler per process, bound to the first Ray session's folder.

    Modules run one after the other in one process (and a module may delete its cluster's
    session folder), so every module gets a fresh handler for the session it starts.
    """
    yield
    if "ray.data" in sys.modules:
        from ray.data._internal import logging as data_logging

        data_logging.reset_logging()
        data_logging.configure_logging()


# The modules that take longest (minutes: clusters, killed and resumed studies, trainings) are
# handed out first, so that the two xdist workers (``--dist loadfile``) end together instead of
# one finishing a long module alone. Order within a module, and of the other modules, is kept.
HEAVY_FIRST = (
    "test_ray_start.py",
    "test_classification_resume.py",
    "test_classification_study.py",
    "test_study_faults.py",
    "test_search.py",
    "test_resume.py",
    "test_study_kinds.py",
    "test_warm_start.py",
    "test_pareto.py",
    "test_tracking.py",
    "test_cluster.py",
    "test_segment_apply.py",
    "test_predict.py",
    "test_classification.py",
    "test_models_cellpose.py",
    "test_model_plugins.py",
)


def pytest_collection_modifyitems(session, config, items):  # noqa: ARG001
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


REQUIRE_BROWSER = os.environ.get("AOP_REQUIRE_BROWSER") == "1"


def _chromium() -> str | None:
    found = shutil.which("chromium")
    if found is None and Path("/usr/bin/chromium").exists():
        found = "/usr/bin/chromium"
    return found


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs for a test module (one that a test left running is shut first)."""
    import ray

    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright; skipped where missing, except with
    ``AOP_REQUIRE_BROWSER=1`` (set by ``.ci/run``): there a missing browser fails."""
    def unavailable(why: str) -> None:
        if REQUIRE_BROWSER:
            pytest.fail(f"{why}, and AOP_REQUIRE_BROWSER=1 requires the browser tests")
        pytest.skip(why)

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("playwright is not installed")
    executable = _chromium()
    if executable is None:
        unavailable("chromium is not installed (apt-get install chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield launched
        launched.close()
