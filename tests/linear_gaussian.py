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


# ----------------------------------------------------------------------- two layers


class _Affine(Encoder):
    """``v -> (M v + c + shift, scale * factor)``: a Gaussian layer with an exact form."""

    def __init__(self, M, c, scale, loc_shift=0.0, scale_factor=1.0):
        super().__init__()
        self.latent_dim = M.shape[0]
        self.in_shape = torch.Size((M.shape[1],))
        self.register_buffer("M", M)
        self.register_buffer("c", c)
        self.register_buffer("scale", scale.expand(M.shape[0]).clone())
        self.loc_shift = nn.Parameter(torch.full((M.shape[0],), float(loc_shift), dtype=M.dtype))
        self.log_scale_factor = nn.Parameter(
            torch.full((M.shape[0],), math.log(scale_factor), dtype=M.dtype)
        )

    def forward(self, v):
        loc = v @ self.M.T + self.c + self.loc_shift  # (..., out)
        return loc, (self.scale * self.log_scale_factor.exp()).expand_as(loc)


def make_two_layer_problem(D=6, L1=3, L2=2, sigma=0.5, s1=0.7, n=16, seed=0, dtype=torch.float64):
    """``z2 ~ N(0, I)``, ``z1 | z2 ~ N(A z2 + a, s1^2 I)``, ``x | z1 ~ N(W z1 + b, sigma^2 I)``,
    with ``A`` (L1 x L2) zero but for its diagonal and ``W`` of orthogonal columns, so that
    ``p(z1 | x)`` and ``p(z2 | z1)`` are diagonal Gaussians: the guide family holds the
    posterior."""
    g = torch.Generator().manual_seed(seed)
    W, b, _ = make_problem(D, L1, sigma, n, seed, dtype)
    A = torch.zeros(L1, L2, dtype=dtype)
    A[range(L2), range(L2)] = 0.8 + torch.rand(L2, generator=g, dtype=dtype)
    a = torch.randn(L1, generator=g, dtype=dtype)
    z2 = torch.randn(n, L2, generator=g, dtype=dtype)
    z1 = z2 @ A.T + a + s1 * torch.randn(n, L1, generator=g, dtype=dtype)
    x = z1 @ W.T + b + sigma * torch.randn(n, D, generator=g, dtype=dtype)
    return {"W": W, "b": b, "A": A, "a": a, "sigma": sigma, "s1": s1, "x": x}


def exact_two_layer_log_px(p) -> torch.Tensor:
    """log N(x; W a + b, W (A A^T + s1^2 I) W^T + sigma^2 I) per datapoint."""
    W, A = p["W"], p["A"]
    c1 = A @ A.T + p["s1"] ** 2 * torch.eye(A.shape[0], dtype=A.dtype)
    cov = W @ c1 @ W.T + p["sigma"] ** 2 * torch.eye(W.shape[0], dtype=W.dtype)
    mean = W @ p["a"] + p["b"]
    return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(p["x"])


def make_two_layer_vae(p, **perturb):
    """The built-in two-layer model with linear layers: its guide is the exact posterior
    ``p(z1 | x) p(z2 | z1)`` (``perturb`` shifts and scales ``q(z1 | x)``)."""
    from pyro_vae.models import TwoLayerVAE

    W, b, A, a, sigma, s1 = (p[k] for k in ("W", "b", "A", "a", "sigma", "s1"))
    L1, L2 = A.shape
    d2 = (W * W).sum(0)  # diag(W^T W)
    c = (A * A).sum(1) + s1**2  # diag of z1's marginal covariance
    prec1 = 1 / c + d2 / sigma**2  # q(z1 | x) precision
    enc = _Affine(W.T / sigma**2 / prec1[:, None], -(W.T @ b) / sigma**2 / prec1 + a / c / prec1,
                  prec1.rsqrt(), **perturb)  # fmt: skip
    prec2 = 1 + (A * A).sum(0) / s1**2  # p(z2 | z1) precision
    top_enc = _Affine(A.T / s1**2 / prec2[:, None], -(A.T @ a) / s1**2 / prec2, prec2.rsqrt())
    top_dec = _Affine(A, a, torch.tensor(s1, dtype=A.dtype))
    lik = NormalLikelihood((W.shape[0],), scale="shared", init_scale=sigma)
    model = TwoLayerVAE(enc, top_enc, top_dec, LinearDecoder(W, b), lik).to(W.dtype)
    lik.set_scale(sigma)
    return model


# ----------------------------------------------------------------------- conditional


def make_conditional_problem(D=6, L=3, C=3, sigma=0.5, n=18, seed=0, dtype=torch.float64):
    """``z ~ N(0, I)``, ``x | z, y ~ N(W z + b + B[:, y], sigma^2 I)``: the label shifts the
    mean."""
    g = torch.Generator().manual_seed(seed)
    W, b, _ = make_problem(D, L, sigma, n, seed, dtype)
    B = 2 * torch.randn(D, C, generator=g, dtype=dtype)
    y = torch.arange(n) % C
    z = torch.randn(n, L, generator=g, dtype=dtype)
    x = z @ W.T + b + B[:, y].T + sigma * torch.randn(n, D, generator=g, dtype=dtype)
    return {"W": W, "b": b, "B": B, "sigma": sigma, "x": x, "y": y}


def exact_conditional_log_px(p) -> torch.Tensor:
    """log N(x; b + B[:, y], W W^T + sigma^2 I) per datapoint."""
    W = p["W"]
    cov = W @ W.T + p["sigma"] ** 2 * torch.eye(W.shape[0], dtype=W.dtype)
    mean = p["b"] + p["B"][:, p["y"]].T  # (n, D)
    return torch.distributions.MultivariateNormal(mean, covariance_matrix=cov).log_prob(p["x"])


class _ConditionalDecoder(Decoder):
    """``[z, onehot(y)] -> W z + b + B onehot(y)``."""

    def __init__(self, W, b, B):
        super().__init__()
        self.latent_dim = W.shape[1] + B.shape[1]
        self.out_shape = torch.Size((1, W.shape[0]))
        self.register_buffer("M", torch.cat([W, B], 1))
        self.b = nn.Parameter(b.clone())

    def forward(self, zy):
        return (zy @ self.M.T + self.b).unsqueeze(-2)  # (..., 1, D)


def make_conditional_vae(p, **perturb):
    """The built-in cvae with linear networks: its guide is the exact posterior
    ``q(z | x, y) = N(S W^T (x - b - B[:, y]) / sigma^2, S)``."""
    from pyro_vae.models import ConditionalVAE, LabelInfo
    from pyro_vae.models.cvae import LabelFeatures

    W, b, B, sigma = p["W"], p["b"], p["B"], p["sigma"]
    D, L = W.shape
    S = sigma**2 / (sigma**2 + (W * W).sum(0))  # (L,)
    A = S[:, None] * W.T / sigma**2  # (L, D)
    enc = _Affine(torch.cat([A, -A @ B], 1), -A @ b, S.sqrt(), **perturb)  # over [x, onehot]
    features = LabelFeatures(LabelInfo((), "int64", B.shape[1]))
    lik = NormalLikelihood((D,), scale="shared", init_scale=sigma)
    model = ConditionalVAE(features, enc, _ConditionalDecoder(W, b, B), lik).to(W.dtype)
    lik.set_scale(sigma)
    return model
