"""The architecture of docs/architecture.md: the engine, tracking and analysis know no kind.

``make test`` also runs ``lint-imports`` (the import contracts in pyproject.toml) and ``deptry``;
these tests check what an import graph cannot see: names in the source text.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import aop
from aop.tuning.kinds import ENTRY_POINT_GROUP, get_kind

AOP = Path(aop.__file__).resolve().parent
ENGINE = [
    "study", "kinds", "space", "searchers", "callbacks", "storage", "smac_search", "progress",
]
GENERIC = sorted(
    [AOP / "tuning" / f"{name}.py" for name in ENGINE]
    + list((AOP / "tracking").glob("*.py"))
    + list((AOP / "analysis").glob("*.py"))
)


#: Metric columns that are also the engine's own vocabulary: ``epoch`` (a classification column)
#: is the step of every Lightning curve the tracking logs.
COMMON_WORDS = {"epoch"}


def kind_words() -> set[str]:
    """Every installed kind's name, objective and metric columns (the entry points)."""
    words: set[str] = set()
    for name in {entry.name for entry in entry_points(group=ENTRY_POINT_GROUP)}:
        kind = get_kind(name)
        words |= {kind.name, kind.metric, *kind.metrics}
    return words - COMMON_WORDS


def test_the_built_in_kinds_are_registered_with_their_metrics():
    words = kind_words()
    assert {"segmentation", "classification", "ipq", "sq", "rq", "iq", "val_accuracy"} <= words


@pytest.mark.parametrize("path", GENERIC, ids=lambda p: str(p.relative_to(AOP)))
def test_the_engine_tracking_and_analysis_name_no_kind_and_no_metric(path):
    text = path.read_text(encoding="utf-8")
    found = sorted(
        {w for w in kind_words() if re.search(rf"(?<![\w-]){re.escape(w)}(?![\w-])", text)}
    )
    assert not found, f"{path.relative_to(AOP)} names {found}"


def test_importing_the_engine_tracking_and_analysis_loads_no_kind():
    code = (
        "import sys; import aop.tuning.study, aop.tracking, aop.analysis.report, "
        "aop.analysis.plots; "
        "print(sorted(m for m in sys.modules if m.startswith(('aop.tuning.segmentation', "
        "'aop.tuning.classification', 'aop.segmentation', 'aop.classification', 'aop.metrics'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
