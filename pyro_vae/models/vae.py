"""The VAE as a pair of Pyro programs: the ``vae`` model.

Generative model ``p(x, z) = N(z; 0, I) p(x | decoder(z))`` and guide
``q(z | x) = N(z; loc(x), diag(scale(x)^2))``, both over a ``data`` plate. The loss is never
written here: any Pyro ELBO estimator turns ``(model, guide)`` into one (see
:mod:`pyro_vae.infer.estimators`).

Sites: ``z`` (latent, shape ``(batch, latent_dim)``, event dim 1) and ``x`` (observed, shape
``(batch, *event_shape)``). With vectorized particles every site gains a leading particle
dimension. This file is also the smallest example of a model of the protocol
(:mod:`pyro_vae.models.protocol`): the other built-in models follow its pattern.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch

from pyro_vae.models.config import MODELS, LabelInfo, ModelConfig
from pyro_vae.models.likelihoods import Likelihood, make_likelihood
from pyro_vae.models.networks import Decoder, Encoder, make_networks
from pyro_vae.models.protocol import LatentModel


def standard_normal(like: torch.Tensor, batch: int, dim: int) -> dist.TorchDistribution:
    """N(0, I) over ``dim`` dimensions for a batch, on ``like``'s device and dtype: a prior."""
    loc = like.new_zeros(()).expand(batch, dim)  # (batch, dim)
    scale = like.new_ones(()).expand(batch, dim)  # (batch, dim)
    return dist.Normal(loc, scale).to_event(1)


class VAE(LatentModel):
    """A variational autoencoder written as a Pyro ``model``/``guide`` pair.

    :param Encoder encoder: ``x -> (loc, scale)`` of the guide.
    :param Decoder decoder: ``z -> params`` with ``decoder.out_shape == likelihood.param_shape``.
    :param Likelihood likelihood: the observation model p(x | z).
    :param float beta: KL weight. It scales the log densities of ``z`` in **both** the model
        and the guide, so every estimator weights ``log p(z) - log q(z|x)`` (or the analytic
        KL of :class:`~pyro.infer.TraceMeanField_ELBO`, which reads the guide site's scale) by
        ``beta``. ``beta = 0`` masks those terms out entirely.

    The module holds every trainable parameter (networks and likelihood), so one torch
    optimizer over ``vae.parameters()`` trains it; Pyro's SVI sees them too (see
    :class:`~pyro_vae.models.protocol.LatentModel`), and nothing is kept in Pyro's global
    param store.
    """

    def __init__(
        self,
        encoder: Encoder,
        decoder: Decoder,
        likelihood: Likelihood,
        beta: float = 1.0,
    ):
        super().__init__(likelihood.event_shape, beta)
        if encoder.latent_dim != decoder.latent_dim:
            raise ValueError(
                f"encoder latent_dim {encoder.latent_dim} != decoder latent_dim "
                f"{decoder.latent_dim}"
            )
        if tuple(decoder.out_shape) != tuple(likelihood.param_shape):
            raise ValueError(
                f"decoder emits {tuple(decoder.out_shape)} per datapoint but the "
                f"{likelihood.name or type(likelihood).__name__} likelihood needs "
                f"{tuple(likelihood.param_shape)}"
            )
        self.encoder = encoder
        self.decoder = decoder
        self.likelihood = likelihood
        self.latent_dim = encoder.latent_dim

    def model(self, x: torch.Tensor | None = None, num_samples: int | None = None):
        """Generative model p(x | z) p(z).

        :param x: observed batch ``(batch, *event_shape)``; ``None`` samples ``x`` instead.
        :param num_samples: batch size when ``x`` is ``None``.
        :returns: the decoder's raw parameters ``(..., batch, *param_shape)``.
        """
        batch = self.batch_size(x, (), num_samples)
        like = x if x is not None else next(self.parameters())  # the prior's device and dtype
        with pyro.plate("data", batch):
            with self.kl_weight():
                prior = standard_normal(like, batch, self.latent_dim)
                z = pyro.sample("z", prior)  # (..., batch, latent_dim)
            params = self.decoder(z)  # (..., batch, k, *event_shape)
            pyro.sample("x", self.likelihood.distribution(params), obs=x)
        return params

    def guide(self, x: torch.Tensor, num_samples: int | None = None):
        """Amortized posterior q(z | x) = N(loc(x), diag(scale(x)^2)).

        :param x: batch ``(batch, *event_shape)``.
        :returns: ``(loc, scale)``, each ``(batch, latent_dim)``.
        """
        loc, scale = self.encoder(x)  # (batch, latent_dim) each; scale > 0
        with pyro.plate("data", x.shape[0]):
            with self.kl_weight():
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))
        return loc, scale


def build_vae(
    event_shape: Sequence[int],
    likelihood: str = ModelConfig.likelihood,
    latent_dim: int = ModelConfig.latent_dim,
    hidden: Sequence[int] = ModelConfig.hidden,
    arch: str = ModelConfig.arch,
    activation: str = ModelConfig.activation,
    beta: float = 1.0,
    **likelihood_options,
) -> VAE:
    """A :class:`VAE` from names: the likelihood by registry name, the networks by ``arch``.

    ``likelihood_options`` go to the likelihood (e.g. ``scale="per-pixel"`` for ``normal``).
    """
    lik = make_likelihood(likelihood, event_shape, **likelihood_options)
    encoder, decoder = make_networks(
        arch, event_shape, lik.param_shape, latent_dim, hidden, activation
    )
    return VAE(encoder, decoder, lik, beta=beta)


def vae_parts(event_shape: Sequence[int], config: ModelConfig):
    """``(encoder, decoder, likelihood)`` of a configuration: the likelihood by name, the
    networks by ``arch`` (the parts the built-in models share)."""
    c = config
    lik = make_likelihood(c.likelihood, event_shape, **c.likelihood_options())
    encoder, decoder = make_networks(
        c.arch, event_shape, lik.param_shape, c.latent_dim, c.hidden, c.activation
    )
    return encoder, decoder, lik


@MODELS.register("vae")
def vae(
    event_shape: Sequence[int],
    config: ModelConfig,
    *,
    labels: LabelInfo | None = None,
    beta: float = 1.0,
) -> VAE:
    """The ``vae`` model: :func:`build_vae` of the configuration."""
    c = config
    options = c.likelihood_options()
    return build_vae(
        event_shape, c.likelihood, c.latent_dim, c.hidden, c.arch, c.activation, beta, **options
    )
