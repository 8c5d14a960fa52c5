"""MLflow tracking of studies (imports no Ray): see :mod:`aop.tracking.client`."""

from aop.tracking.client import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    RUN_ID_FILE,
    StudyTracker,
    default_tracking_uri,
    flatten,
    is_model_uri,
)

__all__ = [
    "EXPERIMENT_KIND",
    "EXPERIMENT_KIND_TAG",
    "RUN_ID_FILE",
    "StudyTracker",
    "default_tracking_uri",
    "flatten",
    "is_model_uri",
]
