"""Models: observation models p(x | z), encoder and decoder networks, and the VAE as a Pyro
``model``/``guide`` pair."""

from pyro_vae.models.likelihoods import (
    LIKELIHOODS,
    DataSupportError,
    Likelihood,
    make_likelihood,
)
from pyro_vae.models.networks import (
    ACTIVATIONS,
    ARCHITECTURES,
    ConvDecoder,
    ConvEncoder,
    Decoder,
    Encoder,
    MLPDecoder,
    MLPEncoder,
    make_networks,
)
from pyro_vae.models.vae import VAE, build_vae, evaluation_mode

__all__ = [
    "ACTIVATIONS",
    "ARCHITECTURES",
    "ConvDecoder",
    "ConvEncoder",
    "DataSupportError",
    "Decoder",
    "Encoder",
    "LIKELIHOODS",
    "Likelihood",
    "MLPDecoder",
    "MLPEncoder",
    "VAE",
    "build_vae",
    "evaluation_mode",
    "make_likelihood",
    "make_networks",
]
