"""A Gaussian guide followed by inverse autoregressive flows (Kingma et al. 2016): the ``iaf``
model.

The generative model is the VAE's; the guide draws ``z0 ~ N(loc(x), diag(scale(x)^2))`` and
pushes it through ``flows`` affine autoregressive transforms (Pyro's
:class:`~pyro.distributions.transforms.ConditionalAffineAutoregressive`, MADE networks with a
random order of the dimensions each), each conditioned on a context from ``x``: the base's
``(loc, log scale)``. The site ``z`` is then a :class:`~pyro.distributions.TransformedDistribution`:
sampling and scoring its own samples are cheap (the inverse is cached); it has no closed-form
mean or KL, so the tools use particle means and a Monte Carlo KL, and the path-derivative
estimators (``stl``, ``dreg``) refuse it before the first step.

References: D. P. Kingma, T. Salimans, R. Jozefowicz, X. Chen, I. Sutskever, M. Welling,
*Improved Variational Inference with Inverse Autoregressive Flow*, NeurIPS 2016.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.nn import ConditionalAutoRegressiveNN
from torch import nn

from pyro_vae.models.config import MODELS, LabelInfo, ModelConfig
from pyro_vae.models.likelihoods import Likelihood
from pyro_vae.models.networks import Decoder, Encoder
from pyro_vae.models.vae import VAE, vae_parts


class IAFVAE(VAE):
    """The VAE with ``q(z | x)`` a Gaussian pushed through inverse autoregressive flows.

    :param flows: the number of flows.
    :param flow_hidden: hidden sizes of each flow's autoregressive network.
    """

    def __init__(
        self,
        encoder: Encoder,
        decoder: Decoder,
        likelihood: Likelihood,
        flows: int = 2,
        flow_hidden: Sequence[int] | None = None,
        beta: float = 1.0,
    ):
        super().__init__(encoder, decoder, likelihood, beta)
        dim = self.latent_dim
        hidden = list(flow_hidden or [max(32, 4 * dim)])
        self.flows = nn.ModuleList(
            ConditionalAffineAutoregressive(ConditionalAutoRegressiveNN(dim, 2 * dim, hidden))
            for _ in range(flows)
        )

    def posterior(self, x: torch.Tensor) -> dist.TorchDistribution:
        """``q(z | x)``: the base Gaussian through the flows, batch ``(batch,)``."""
        loc, scale = self.encoder(x)  # (batch, latent_dim) each
        context = torch.cat([loc, scale.log()], -1)  # (batch, 2 latent_dim)
        base = dist.Normal(loc, scale).to_event(1)
        return dist.TransformedDistribution(base, [t.condition(context) for t in self.flows])

    def guide(self, x: torch.Tensor, num_samples: int | None = None):
        with pyro.plate("data", x.shape[0]), self.kl_weight():
            pyro.sample("z", self.posterior(x))


@MODELS.register("iaf")
def iaf(
    event_shape: Sequence[int],
    config: ModelConfig,
    *,
    labels: LabelInfo | None = None,
    beta: float = 1.0,
) -> IAFVAE:
    """The ``iaf`` model: the VAE's networks and ``flows`` flows."""
    encoder, decoder, lik = vae_parts(event_shape, config)
    return IAFVAE(encoder, decoder, lik, flows=config.flows, beta=beta)
