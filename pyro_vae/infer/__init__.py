"""Inference: ELBO estimators that turn a model/guide pair into a loss, and the recorded loss
graph the training step replays."""

from pyro_vae.infer.capture import CAPTURE_MODES, CapturedLoss
from pyro_vae.infer.estimators import (
    ESTIMATORS,
    DReGELBO,
    EstimatorSpec,
    ImportanceWeightedELBO,
    ProgramsModule,
    StickingTheLandingELBO,
    TraceELBO,
    TraceMeanFieldELBO,
    check_beta,
    estimator_refusal,
    make_estimator,
    mean_field_refusal,
)

__all__ = [
    "CAPTURE_MODES", "CapturedLoss", "DReGELBO", "ESTIMATORS", "EstimatorSpec",
    "ImportanceWeightedELBO", "ProgramsModule", "StickingTheLandingELBO", "TraceELBO",
    "TraceMeanFieldELBO", "check_beta", "estimator_refusal", "make_estimator",
    "mean_field_refusal",
]  # fmt: skip
