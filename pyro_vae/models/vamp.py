"""The VampPrior (Tomczak & Welling 2018): the ``vamp`` model.

The prior is the guide's mixture at ``K`` learned pseudo-inputs ``u_k``,
``p(z) = 1/K sum_k q(z | u_k)``; the guide and the decoder are the VAE's. The prior is a
:class:`~pyro.distributions.MixtureSameFamily`: it has no closed-form KL to the guide, so the
analytic-KL estimator (``meanfield``) takes the KL of ``z`` by Monte Carlo, as Pyro's
``TraceMeanField_ELBO`` does for any site without one. Its parameters are the pseudo-inputs and,
through them, the encoder's: the encoder belongs to the model too.

References: J. M. Tomczak, M. Welling, *VAE with a VampPrior*, AISTATS 2018.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.models.config import MODELS, LabelInfo, ModelConfig
from pyro_vae.models.likelihoods import Likelihood
from pyro_vae.models.networks import Decoder, Encoder
from pyro_vae.models.vae import VAE, vae_parts


class VampVAE(VAE):
    """The VAE with the VampPrior over ``pseudo_inputs`` learned pseudo-inputs.

    The pseudo-inputs start uniform on [0, 1] (the range of the data the likelihoods take) and
    are learned without a constraint.
    """

    def __init__(
        self,
        encoder: Encoder,
        decoder: Decoder,
        likelihood: Likelihood,
        pseudo_inputs: int = 500,
        beta: float = 1.0,
    ):
        super().__init__(encoder, decoder, likelihood, beta)
        self.pseudo_inputs = nn.Parameter(torch.rand(pseudo_inputs, *self.event_shape))

    def prior(self, batch: int) -> dist.TorchDistribution:
        """``1/K sum_k q(z | u_k)`` for a batch: batch shape ``(batch,)``."""
        loc, scale = self.encoder(self.pseudo_inputs)  # (K, latent_dim) each
        components = dist.Normal(loc, scale).to_event(1)
        weights = dist.Categorical(logits=loc.new_zeros(loc.shape[0]))
        return dist.MixtureSameFamily(weights, components).expand((batch,))

    def model(self, x: torch.Tensor | None = None, num_samples: int | None = None):
        batch = self.batch_size(x, (), num_samples)
        with pyro.plate("data", batch):
            with self.kl_weight():
                z = pyro.sample("z", self.prior(batch))  # (..., batch, latent_dim)
            params = self.decoder(z)  # (..., batch, k, *event_shape)
            pyro.sample("x", self.likelihood.distribution(params), obs=x)
        return params


@MODELS.register("vamp")
def vamp(
    event_shape: Sequence[int],
    config: ModelConfig,
    *,
    labels: LabelInfo | None = None,
    beta: float = 1.0,
) -> VampVAE:
    """The ``vamp`` model: the VAE's networks and ``pseudo_inputs`` pseudo-inputs."""
    encoder, decoder, lik = vae_parts(event_shape, config)
    return VampVAE(encoder, decoder, lik, pseudo_inputs=config.pseudo_inputs, beta=beta)
