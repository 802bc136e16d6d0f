"""Inference: ELBO estimators that turn a model/guide pair into a loss, and the recorded loss
graph the training step replays."""

from pyro_vae.infer.capture import CAPTURE_MODES, CapturedLoss
from pyro_vae.infer.estimators import (
    ESTIMATORS,
    DReGELBO,
    EstimatorSpec,
    ImportanceWeightedELBO,
    StickingTheLandingELBO,
    check_beta,
    make_estimator,
)

__all__ = [
    "CAPTURE_MODES",
    "CapturedLoss",
    "DReGELBO",
    "ESTIMATORS",
    "EstimatorSpec",
    "ImportanceWeightedELBO",
    "StickingTheLandingELBO",
    "check_beta",
    "make_estimator",
]
