"""pyro-vae: variational autoencoders written as Pyro programs.

The generative model and the guide are Pyro programs (:class:`VAE`); the likelihood is
swappable (:data:`LIKELIHOODS`); a Pyro ELBO estimator (:data:`ESTIMATORS`) turns them into the
loss; :func:`fit` is the one training loop.
"""

from pyro_vae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from pyro_vae.data import DataSplit, Preprocess, load_data
from pyro_vae.evaluate import evaluate_run, importance_log_px
from pyro_vae.estimators import (
    ESTIMATORS,
    DReGELBO,
    ImportanceWeightedELBO,
    StickingTheLandingELBO,
    make_estimator,
)
from pyro_vae.gradients import gradient_snr
from pyro_vae.likelihoods import LIKELIHOODS, DataSupportError, Likelihood, make_likelihood
from pyro_vae.model import VAE, build_vae
from pyro_vae.networks import ConvDecoder, ConvEncoder, Decoder, Encoder, MLPDecoder, MLPEncoder
from pyro_vae.registry import UnknownNameError
from pyro_vae.rundir import RunDirectoryError
from pyro_vae.train import (
    NonFiniteLossError,
    TrainingInterrupted,
    TrainResult,
    evaluate_elbo,
    fit,
    load_run,
    run_training,
)

__version__ = "0.1.0"

__all__ = [
    "ConvDecoder", "ConvEncoder", "DReGELBO", "DataConfig", "DataSplit", "DataSupportError",
    "Decoder", "RunDirectoryError", "StickingTheLandingELBO", "TrainingInterrupted", "gradient_snr",
    "ESTIMATORS", "Encoder", "ImportanceWeightedELBO", "LIKELIHOODS", "Likelihood",
    "MLPDecoder", "MLPEncoder", "ModelConfig", "NonFiniteLossError", "Preprocess", "RunConfig",
    "TrainConfig", "TrainResult", "UnknownNameError", "VAE", "build_vae", "evaluate_elbo",
    "evaluate_run", "fit", "importance_log_px",
    "load_data", "load_run", "make_estimator", "make_likelihood", "run_training",
]
