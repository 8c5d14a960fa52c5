"""Instance classification: 2D slice encoders, heads, the LightningModule, data and training.

The core of the classifier-design study (paper II-C, III-B): it imports neither Ray nor MLflow, so
one training runs the same in a test, a notebook and a Ray Tune trial.
"""

from aop.classification.data import CropDataModule, SplitConfig, augmentation, stratified_split
from aop.classification.encoders import (
    TABLE_I,
    SliceEncoder,
    available_encoders,
    build_encoder,
    check_pretrained_weights,
    locate_pretrained_weights,
    register_encoder,
)
from aop.classification.heads import HEADS, build_head
from aop.classification.module import CropClassifier, freeze_plan, predict_proba
from aop.classification.train import (
    ClassifierConfig,
    ClassifierResult,
    classification_metrics,
    train_classifier,
)

__all__ = [
    "HEADS",
    "TABLE_I",
    "ClassifierConfig",
    "ClassifierResult",
    "CropClassifier",
    "CropDataModule",
    "SliceEncoder",
    "SplitConfig",
    "augmentation",
    "available_encoders",
    "build_encoder",
    "build_head",
    "check_pretrained_weights",
    "classification_metrics",
    "freeze_plan",
    "locate_pretrained_weights",
    "predict_proba",
    "register_encoder",
    "stratified_split",
    "train_classifier",
]
