"""Models: the protocol every tool works with, observation models p(x | z), networks, and the
built-in models, each a Pyro ``model``/``guide`` pair registered by name in :data:`MODELS`.

=========================  =========================================================================
module                     what it holds
=========================  =========================================================================
``protocol``               what a model is (:class:`LatentModel`), and how the tools read its traces
``config``                 :class:`ModelConfig`, :data:`MODELS`, models by import path
``likelihoods``            observation models, registered by name in :data:`LIKELIHOODS`
``discretized_logistic``   the discretized logistic mixture: a pmf over 8-bit levels
``networks``               MLP and conv encoders/decoders (return parameters, never sample)
``vae``                    ``vae``: the VAE
``two_layer``              ``two-layer``: two stochastic layers (Burda et al. 2016)
``iaf``                    ``iaf``: a Gaussian guide with inverse autoregressive flows
``vamp``                   ``vamp``: the VampPrior
``cvae``                   ``cvae``: a label-conditional VAE
=========================  =========================================================================
"""

from pyro_vae.models.config import (
    MODELS,
    LabelInfo,
    ModelConfig,
    build_model,
    import_modules,
    resolve_factory,
)
from pyro_vae.models.cvae import ConditionalVAE
from pyro_vae.models.iaf import IAFVAE
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
    mlp,
)
from pyro_vae.models.protocol import (
    LatentModel,
    check_protocol,
    evaluation_mode,
    inputs_of,
    latent_sites,
    observed_sites,
    parameter_groups,
    reconstruct,
    sample,
    traces,
)
from pyro_vae.models.two_layer import TwoLayerVAE
from pyro_vae.models.vae import VAE, build_vae
from pyro_vae.models.vamp import VampVAE

__all__ = [
    "ACTIVATIONS", "ARCHITECTURES", "ConditionalVAE", "ConvDecoder", "ConvEncoder",
    "DataSupportError", "Decoder", "Encoder", "IAFVAE", "LIKELIHOODS", "LabelInfo",
    "LatentModel", "Likelihood", "MLPDecoder", "MLPEncoder", "MODELS", "ModelConfig",
    "TwoLayerVAE", "VAE", "VampVAE", "build_model", "build_vae", "check_protocol",
    "evaluation_mode", "import_modules", "inputs_of", "latent_sites", "make_likelihood",
    "make_networks", "mlp", "observed_sites", "parameter_groups", "reconstruct",
    "resolve_factory", "sample", "traces",
]  # fmt: skip
