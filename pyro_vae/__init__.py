"""pyro-vae: variational autoencoders written as Pyro programs.

The generative model and the guide are Pyro programs: any model of
:mod:`pyro_vae.models.protocol` (the :class:`VAE` and the other built-ins of :data:`MODELS`, or
your own :class:`LatentModel`). The likelihood is swappable (:data:`LIKELIHOODS`); a Pyro ELBO
estimator (:data:`ESTIMATORS`) turns model and guide into the loss; :func:`fit` is the one
training loop.

The package is layered, each layer importing only those above it in this list:
:mod:`~pyro_vae.registry` and :mod:`~pyro_vae.validation`; :mod:`~pyro_vae.fields`;
:mod:`~pyro_vae.models`, :mod:`~pyro_vae.infer` and :mod:`~pyro_vae.data`;
:mod:`~pyro_vae.config`; :mod:`~pyro_vae.eval`; :mod:`~pyro_vae.train`; :mod:`~pyro_vae.runs`;
:mod:`~pyro_vae.apps`.
"""

from pyro_vae.apps.evaluate import evaluate_run
from pyro_vae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from pyro_vae.data import DataSplit, Preprocess, load_data
from pyro_vae.eval import evaluate_elbo, gradient_snr, importance_log_px
from pyro_vae.infer import (
    ESTIMATORS,
    DReGELBO,
    ImportanceWeightedELBO,
    StickingTheLandingELBO,
    make_estimator,
)
from pyro_vae.models import (
    LIKELIHOODS,
    MODELS,
    VAE,
    ConvDecoder,
    ConvEncoder,
    DataSupportError,
    Decoder,
    Encoder,
    LatentModel,
    Likelihood,
    MLPDecoder,
    MLPEncoder,
    build_model,
    build_vae,
    make_likelihood,
)
from pyro_vae.registry import UnknownNameError
from pyro_vae.runs import load_run, run_training
from pyro_vae.train import (
    NonFiniteLossError,
    RunDirectoryError,
    TrainingInterrupted,
    TrainResult,
    fit,
)

__version__ = "0.1.0"

__all__ = [
    "ConvDecoder",
    "ConvEncoder",
    "DReGELBO",
    "DataConfig",
    "DataSplit",
    "DataSupportError",
    "Decoder",
    "ESTIMATORS",
    "Encoder",
    "ImportanceWeightedELBO",
    "LatentModel",
    "MODELS",
    "LIKELIHOODS",
    "Likelihood",
    "MLPDecoder",
    "MLPEncoder",
    "ModelConfig",
    "NonFiniteLossError",
    "Preprocess",
    "RunConfig",
    "RunDirectoryError",
    "StickingTheLandingELBO",
    "TrainConfig",
    "TrainResult",
    "TrainingInterrupted",
    "UnknownNameError",
    "VAE",
    "build_model",
    "build_vae",
    "evaluate_elbo",
    "evaluate_run",
    "fit",
    "gradient_snr",
    "importance_log_px",
    "load_data",
    "load_run",
    "make_estimator",
    "make_likelihood",
    "run_training",
]
