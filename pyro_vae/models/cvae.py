"""A label-conditional VAE (Sohn et al. 2015): the ``cvae`` model.

``p(x | z, y) p(z)`` and ``q(z | x, y)``, where ``y`` is the datapoint's label, an extra input
of both programs (``inputs = ("labels",)``): ``pyro-vae train --model cvae`` passes the data's
labels, indexed like ``x``. Class labels enter the networks one-hot; float labels (the shapes'
generating factors, regression targets) as they are. Samples are drawn for given labels: the
pictures show the first test datapoints' labels.

References: K. Sohn, H. Lee, X. Yan, *Learning Structured Output Representation using Deep
Conditional Generative Models*, NeurIPS 2015.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.models.config import MODELS, LabelInfo, ModelConfig
from pyro_vae.models.likelihoods import Likelihood, make_likelihood
from pyro_vae.models.networks import MLPDecoder, MLPEncoder
from pyro_vae.models.protocol import LatentModel
from pyro_vae.models.vae import standard_normal


class LabelFeatures(nn.Module):
    """Labels as network inputs: one-hot classes, or float labels flattened.

    :param labels: what the labels look like.
    """

    def __init__(self, labels: LabelInfo):
        super().__init__()
        self.num_classes = labels.num_classes if labels.dtype.startswith("int") else None
        self.dim = self.num_classes or max(1, math.prod(labels.shape))

    def forward(self, y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``(batch, dim)`` features, in ``like``'s dtype."""
        if self.num_classes is not None:
            return F.one_hot(y.long(), self.num_classes).to(like.dtype)
        return y.reshape(y.shape[0], -1).to(like.dtype)


class ConditionalVAE(LatentModel):
    """``p(x | z, y) p(z)``, ``q(z | x, y)``.

    :param encoder: ``(flat x, label features) -> (loc, scale)``: an encoder over their
        concatenation.
    :param decoder: ``(z, label features) -> params``: a decoder over their concatenation.
    """

    inputs = ("labels",)

    def __init__(
        self,
        features: LabelFeatures,
        encoder: MLPEncoder,
        decoder: MLPDecoder,
        likelihood: Likelihood,
        beta: float = 1.0,
    ):
        super().__init__(likelihood.event_shape, beta)
        self.features, self.encoder, self.decoder = features, encoder, decoder
        self.likelihood = likelihood
        self.latent_dim = encoder.latent_dim

    def model(
        self,
        x: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        num_samples: int | None = None,
    ):
        if labels is None:
            raise ValueError("the cvae model needs the labels: model(x, labels)")
        batch = self.batch_size(x, (labels,), num_samples)
        like = x if x is not None else next(self.parameters())
        y = self.features(labels, like)  # (batch, label_dim)
        with pyro.plate("data", batch):
            with self.kl_weight():
                z = pyro.sample("z", standard_normal(like, batch, self.latent_dim))
            zy = torch.cat([z, y.expand(*z.shape[:-1], y.shape[-1])], -1)
            params = self.decoder(zy)  # (..., batch, k, *event_shape)
            pyro.sample("x", self.likelihood.distribution(params), obs=x)
        return params

    def guide(self, x: torch.Tensor, labels: torch.Tensor, num_samples: int | None = None):
        y = self.features(labels, x)  # (batch, label_dim)
        loc, scale = self.encoder(torch.cat([x.reshape(x.shape[0], -1), y], -1))
        with pyro.plate("data", x.shape[0]), self.kl_weight():
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))
        return loc, scale


@MODELS.register("cvae")
def cvae(
    event_shape: Sequence[int],
    config: ModelConfig,
    *,
    labels: LabelInfo | None = None,
    beta: float = 1.0,
) -> ConditionalVAE:
    """The ``cvae`` model: MLP networks over the data (or ``z``) and the label features."""
    c = config
    if labels is None:
        raise ValueError("the cvae model needs labels, and these data have none")
    if c.arch != "mlp":
        raise ValueError(f"the cvae model has MLP networks only, not --arch {c.arch}")
    lik = make_likelihood(c.likelihood, event_shape, **c.likelihood_options())
    features = LabelFeatures(labels)
    d = math.prod(event_shape)
    encoder = MLPEncoder((d + features.dim,), c.latent_dim, c.hidden, c.activation)
    decoder = MLPDecoder(
        c.latent_dim + features.dim, lik.param_shape, tuple(reversed(c.hidden)), c.activation
    )
    return ConditionalVAE(features, encoder, decoder, lik, beta=beta)
