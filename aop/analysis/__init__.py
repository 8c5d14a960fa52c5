"""Analysis of a study: trial records, search comparison, t-tests, plots, report.

Works on trial records (:mod:`aop.analysis.records`) and imports neither Ray nor MLflow.
"""

from aop.analysis.compare import (
    SearchComparison,
    compare_searches,
    search_sample,
    significance_stars,
)
from aop.analysis.records import (
    append_record,
    best_record,
    order_searches,
    read_records,
    read_study_records,
    validate_record,
)

__all__ = [
    "SearchComparison",
    "append_record",
    "best_record",
    "compare_searches",
    "order_searches",
    "read_records",
    "read_study_records",
    "search_sample",
    "significance_stars",
    "validate_record",
]
