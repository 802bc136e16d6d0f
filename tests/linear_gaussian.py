"""A linear-Gaussian VAE (probabilistic PCA) whose log p(x) and posterior are known exactly.

``z ~ N(0, I_L)``, ``x | z ~ N(W z + b, sigma^2 I_D)`` with ``W = Q diag(d)`` and orthonormal
``Q``, so that ``W^T W`` is diagonal and the exact posterior
``N(S W^T (x - b) / sigma^2, S)``, ``S = diag(sigma^2 / (sigma^2 + d^2))``, is a diagonal
Gaussian: the VAE's guide family contains it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pyro_vae.models import VAE
from pyro_vae.models.likelihoods import NormalLikelihood
from pyro_vae.models.networks import Decoder, Encoder


class LinearDecoder(Decoder):
    def __init__(self, W: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.latent_dim = W.shape[1]
        self.out_shape = torch.Size((1, W.shape[0]))
        self.W = nn.Parameter(W.clone())
        self.b = nn.Parameter(b.clone())

    def forward(self, z):
        return (z @ self.W.T + self.b).unsqueeze(-2)  # (..., 1, D)


class PosteriorEncoder(Encoder):
    """The exact posterior of the linear-Gaussian model, optionally perturbed."""

    def __init__(self, W, b, sigma, loc_shift=0.0, scale_factor=1.0):
        super().__init__()
        self.latent_dim = W.shape[1]
        self.in_shape = torch.Size((W.shape[0],))
        d2 = (W * W).sum(0)  # (L,) = diag(W^T W)
        self.register_buffer("S", sigma**2 / (sigma**2 + d2))  # (L,)
        self.register_buffer("A", (self.S[:, None] * W.T) / sigma**2)  # (L, D)
        self.b = b
        self.loc_shift = nn.Parameter(
            torch.full((self.latent_dim,), float(loc_shift), dtype=W.dtype)
        )
        self.log_scale_factor = nn.Parameter(
            torch.full((self.latent_dim,), math.log(scale_factor), dtype=W.dtype)
        )

    def forward(self, x):
        loc = (x - self.b) @ self.A.T + self.loc_shift  # (..., L)
        scale = self.S.sqrt() * self.log_scale_factor.exp()  # (L,)
        return loc, scale.expand_as(loc)


def make_problem(D=6, L=3, sigma=0.5, n=16, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(D, L, generator=g, dtype=dtype))
    d = 0.5 + 1.5 * torch.rand(L, generator=g, dtype=dtype)
    W = Q * d  # (D, L), orthogonal columns
    b = torch.randn(D, generator=g, dtype=dtype)
    z = torch.randn(n, L, generator=g, dtype=dtype)
    x = z @ W.T + b + sigma * torch.randn(n, D, generator=g, dtype=dtype)
    return W, b, x


def exact_log_px(W, b, sigma, x):
    """log N(x; b, W W^T + sigma^2 I) per datapoint."""
    cov = W @ W.T + sigma**2 * torch.eye(W.shape[0], dtype=W.dtype)
    return torch.distributions.MultivariateNormal(b, covariance_matrix=cov).log_prob(x)


def make_vae(W, b, sigma, **perturb) -> VAE:
    lik = NormalLikelihood((W.shape[0],), scale="shared", init_scale=sigma)
    vae = VAE(PosteriorEncoder(W, b, sigma, **perturb), LinearDecoder(W, b), lik)
    vae = vae.to(W.dtype)
    lik.set_scale(sigma)  # again in float64
    return vae
