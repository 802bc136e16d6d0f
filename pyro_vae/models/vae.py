"""The VAE as a pair of Pyro programs.

Generative model ``p(x, z) = N(z; 0, I) p(x | decoder(z))`` and guide
``q(z | x) = N(z; loc(x), diag(scale(x)^2))``, both over a ``data`` plate. The loss is never
written here: any Pyro ELBO estimator turns ``(model, guide)`` into one (see
:mod:`pyro_vae.infer.estimators`).

Sites: ``z`` (latent, shape ``(batch, latent_dim)``, event dim 1) and ``x`` (observed, shape
``(batch, *event_shape)``). With vectorized particles every site gains a leading particle
dimension.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn

from pyro_vae.models.likelihoods import Likelihood, make_likelihood
from pyro_vae.models.networks import Decoder, Encoder, make_networks


class VAE(nn.Module):
    """A variational autoencoder written as a Pyro ``model``/``guide`` pair.

    :param Encoder encoder: ``x -> (loc, scale)`` of the guide.
    :param Decoder decoder: ``z -> params`` with ``decoder.out_shape == likelihood.param_shape``.
    :param Likelihood likelihood: the observation model p(x | z).
    :param float beta: KL weight. It scales the log densities of ``z`` in **both** the model
        and the guide, so every estimator weights ``log p(z) - log q(z|x)`` (or the analytic
        KL of :class:`~pyro.infer.TraceMeanField_ELBO`, which reads the guide site's scale) by
        ``beta``. ``beta = 0`` masks those terms out entirely.

    The module holds every trainable parameter (networks and likelihood), so one torch
    optimizer over ``vae.parameters()`` trains it; nothing goes through Pyro's param store.
    """

    def __init__(
        self,
        encoder: Encoder,
        decoder: Decoder,
        likelihood: Likelihood,
        beta: float = 1.0,
    ):
        super().__init__()
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
        self.beta = beta

    @property
    def beta(self) -> float:
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        value = float(value)
        if not value >= 0:
            raise ValueError(f"beta must be >= 0, got {value}")
        self._beta = value

    @property
    def event_shape(self) -> torch.Size:
        return self.likelihood.event_shape

    def _kl_weight(self) -> contextlib.AbstractContextManager:
        if self._beta == 1.0:
            return contextlib.nullcontext()
        if self._beta == 0.0:
            return poutine.mask(mask=False)
        return poutine.scale(scale=self._beta)

    def model(self, x: torch.Tensor | None = None, num_samples: int | None = None):
        """Generative model p(x | z) p(z).

        :param x: observed batch ``(batch, *event_shape)``; ``None`` samples ``x`` instead.
        :param num_samples: batch size when ``x`` is ``None``.
        :returns: the decoder's raw parameters ``(..., batch, *param_shape)``.
        """
        if x is None:
            if num_samples is None:
                raise ValueError("model(x=None) needs num_samples")
            ref = next(self.parameters())
            batch, like = num_samples, ref
        else:
            batch, like = x.shape[0], x
        # prior built from the input's device and dtype
        loc = like.new_zeros(()).expand(batch, self.latent_dim)  # (batch, latent_dim)
        scale = like.new_ones(()).expand(batch, self.latent_dim)  # (batch, latent_dim)
        with pyro.plate("data", batch):
            with self._kl_weight():
                z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))  # (..., batch, latent)
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
            with self._kl_weight():
                pyro.sample("z", dist.Normal(loc, scale).to_event(1))
        return loc, scale

    def check_shape(self, x: torch.Tensor, what: str = "input") -> None:
        """Raise ``ValueError`` unless ``x`` is a non-empty batch of ``event_shape`` datapoints."""
        if x.dim() < 1 or x.shape[0] == 0:
            raise ValueError(f"the {what} data are empty")
        shape = tuple(x.shape[1:])
        if shape != tuple(self.event_shape):
            raise ValueError(
                f"the {what} data have datapoints shaped {shape}, but the model expects "
                f"{tuple(self.event_shape)}"
            )

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Likelihood mean at the guide's posterior mean: ``(batch, *event_shape)``."""
        loc, _ = self.encoder(x)
        return self.likelihood.mean(self.decoder(loc))

    @torch.no_grad()
    def sample(self, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Draws from the generative model.

        :returns: ``(mean, x)``: the likelihood mean at ``z ~ p(z)``, and a draw of ``x``,
            each ``(num_samples, *event_shape)``.
        """
        trace = poutine.trace(self.model).get_trace(None, num_samples)
        params = trace.nodes["_RETURN"]["value"]
        return self.likelihood.mean(params), trace.nodes["x"]["value"]


@contextlib.contextmanager
def evaluation_mode(vae: VAE) -> Iterator[None]:
    """``eval()``, beta = 1 and ``no_grad`` inside; the caller's mode and beta restored after.

    No optimizer is involved anywhere, so no parameter can move (an optimizer ``step()`` under
    ``no_grad`` would still apply Adam's momentum).
    """
    was_training, beta = vae.training, vae.beta
    vae.eval()
    vae.beta = 1.0  # the bound and the ELBO of the model itself, whatever the training weight
    try:
        with torch.no_grad(), pyro.validation_enabled(True):
            yield
    finally:
        vae.beta = beta
        vae.train(was_training)


def build_vae(
    event_shape: Sequence[int],
    likelihood: str = "bernoulli",
    latent_dim: int = 20,
    hidden: Sequence[int] = (400,),
    arch: str = "mlp",
    activation: str = "relu",
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
