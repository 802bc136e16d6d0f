"""Two stochastic layers (Burda et al. 2016): the ``two-layer`` model.

Generative model ``p(z2) p(z1 | z2) p(x | z1)`` with ``z2 ~ N(0, I)`` and a Gaussian
``p(z1 | z2)`` whose mean and scale a network computes; guide ``q(z1 | x) q(z2 | z1)``. Sites:
``z2`` (top, ``top_latent_dim``), ``z1`` (``latent_dim``), ``x``.

The guide samples ``z1`` before ``z2`` and the model ``z2`` before ``z1``: the sites come in
another order, so the analytic-KL estimator (``meanfield``) does not apply; the held-out ELBO
and the evaluation use a Monte Carlo KL for this model (:mod:`pyro_vae.eval.bounds`).

Burda et al.'s MNIST architecture: ``--latent-dim 100 --hidden 200 200 --top-latent-dim 50
--top-hidden 100 100 --activation tanh``.

References: Y. Burda, R. Grosse, R. Salakhutdinov, *Importance Weighted Autoencoders*, ICLR
2016.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch

from pyro_vae.models.config import MODELS, LabelInfo, ModelConfig
from pyro_vae.models.likelihoods import Likelihood
from pyro_vae.models.networks import Decoder, Encoder, MLPEncoder
from pyro_vae.models.protocol import LatentModel
from pyro_vae.models.vae import standard_normal, vae_parts


class TwoLayerVAE(LatentModel):
    """``x -> z1 -> z2`` with Gaussian layers.

    :param Encoder encoder: ``x -> (loc, scale)`` of ``q(z1 | x)``.
    :param Encoder top_encoder: ``z1 -> (loc, scale)`` of ``q(z2 | z1)``.
    :param Encoder top_decoder: ``z2 -> (loc, scale)`` of ``p(z1 | z2)``.
    :param Decoder decoder: ``z1 -> params`` of the likelihood ``p(x | z1)``.
    :param Likelihood likelihood: the observation model.
    """

    def __init__(
        self,
        encoder: Encoder,
        top_encoder: Encoder,
        top_decoder: Encoder,
        decoder: Decoder,
        likelihood: Likelihood,
        beta: float = 1.0,
    ):
        super().__init__(likelihood.event_shape, beta)
        if not encoder.latent_dim == top_decoder.latent_dim == decoder.latent_dim:
            raise ValueError("the encoder, top decoder and decoder disagree on z1's dimensions")
        if top_encoder.latent_dim != top_decoder.in_shape[-1]:
            raise ValueError("the top encoder and top decoder disagree on z2's dimensions")
        self.encoder, self.top_encoder = encoder, top_encoder
        self.top_decoder, self.decoder = top_decoder, decoder
        self.likelihood = likelihood
        self.latent_dim, self.top_latent_dim = encoder.latent_dim, top_encoder.latent_dim

    def model(self, x: torch.Tensor | None = None, num_samples: int | None = None):
        batch = self.batch_size(x, (), num_samples)
        like = x if x is not None else next(self.parameters())  # the prior's device and dtype
        with pyro.plate("data", batch):
            with self.kl_weight():
                z2 = pyro.sample("z2", standard_normal(like, batch, self.top_latent_dim))
                loc, scale = self.top_decoder(z2)  # (..., batch, latent_dim) each
                z1 = pyro.sample("z1", dist.Normal(loc, scale).to_event(1))
            params = self.decoder(z1)  # (..., batch, k, *event_shape)
            pyro.sample("x", self.likelihood.distribution(params), obs=x)
        return params

    def guide(self, x: torch.Tensor, num_samples: int | None = None):
        with pyro.plate("data", x.shape[0]), self.kl_weight():
            loc, scale = self.encoder(x)  # (batch, latent_dim) each
            z1 = pyro.sample("z1", dist.Normal(loc, scale).to_event(1))
            loc, scale = self.top_encoder(z1)  # (..., batch, top_latent_dim) each
            pyro.sample("z2", dist.Normal(loc, scale).to_event(1))


@MODELS.register("two-layer")
def two_layer(
    event_shape: Sequence[int],
    config: ModelConfig,
    *,
    labels: LabelInfo | None = None,
    beta: float = 1.0,
) -> TwoLayerVAE:
    """The ``two-layer`` model: ``x`` and ``z1`` joined by ``arch`` networks of ``hidden``
    sizes, ``z1`` and ``z2`` by MLPs of ``top_hidden`` sizes."""
    c = config
    encoder, decoder, lik = vae_parts(event_shape, config)
    top_encoder = MLPEncoder((c.latent_dim,), c.top_latent_dim, c.top_hidden, c.activation)
    top_decoder = MLPEncoder(
        (c.top_latent_dim,), c.latent_dim, tuple(reversed(c.top_hidden)), c.activation
    )
    return TwoLayerVAE(encoder, top_encoder, top_decoder, decoder, lik, beta=beta)
