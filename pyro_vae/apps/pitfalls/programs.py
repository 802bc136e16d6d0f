"""The mistakes as Pyro programs: each is a model, a likelihood or a guide network that a Pyro
estimator turns into exactly the loss people write by hand.

References:

[1] G. Loaiza-Ganem, J. P. Cunningham, *The continuous Bernoulli: fixing a pervasive error in
variational autoencoders*, NeurIPS 2019.

[2] O. Rybkin, K. Daniilidis, S. Levine, *Simple and Effective VAE Training with Calibrated
Decoders*, ICML 2021 (the MSE weight as a fixed decoder variance).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.poutine.scale_messenger import ScaleMessenger

from pyro_vae.models import VAE, Likelihood, MLPEncoder
from pyro_vae.models.likelihoods import BernoulliLikelihood, mse_scale


class SiteScaleMessenger(ScaleMessenger):
    """``poutine.scale`` restricted to the sample sites named in ``sites``.

    :param sites: names of the sites whose log densities are multiplied by ``scale``.
    :param float scale: a positive factor.
    """

    def __init__(self, sites: Sequence[str], scale: float):
        super().__init__(scale)
        self.sites = frozenset(sites)

    def _process_message(self, msg) -> None:
        if msg["name"] in self.sites:
            super()._process_message(msg)


class ObservationScaledVAE(VAE):
    """A :class:`~pyro_vae.models.VAE` whose observation site ``x`` is scaled by ``obs_scale``.

    The model's ``log p(x | z)`` enters every estimator as ``obs_scale * log p(x | z)``; the
    ``z`` sites keep their weight (``beta``). With ``obs_scale = 1/D`` this is the hand-written
    loss whose reconstruction term is a **mean** over the D dimensions instead of a sum, and
    ``D`` times its loss is the loss of the unscaled model with ``beta = D``.

    :param float obs_scale: positive factor on the ``x`` site.
    """

    def __init__(self, encoder, decoder, likelihood, obs_scale: float, beta: float = 1.0):
        super().__init__(encoder, decoder, likelihood, beta=beta)
        if not obs_scale > 0:
            raise ValueError(f"obs_scale must be > 0, got {obs_scale}")
        self.obs_scale = float(obs_scale)

    def model(self, x: torch.Tensor | None = None, num_samples: int | None = None):
        with SiteScaleMessenger(["x"], self.obs_scale):
            return super().model(x, num_samples)


def pixel_mean_program(vae: VAE) -> ObservationScaledVAE:
    """The pixel-mean mistake on ``vae``'s networks and likelihood (shared, not copied): the
    same model with its ``x`` site scaled by 1/D."""
    scale = 1.0 / math.prod(vae.event_shape)
    return ObservationScaledVAE(vae.encoder, vae.decoder, vae.likelihood, scale, beta=vae.beta)


class UnnormalizedBernoulli(dist.Bernoulli):
    r"""Binary cross-entropy read as a density on [0, 1]: what BCE on grey levels is.

    .. math::

        \log f(x) = x \log \lambda + (1 - x) \log (1 - \lambda), \qquad
        \lambda = \operatorname{sigmoid}(\text{logits}), \quad x \in [0, 1].

    .. warning:: This is **not** a distribution: :math:`\int_0^1 f(x)\,dx = 1 / C(\lambda)
        \le 1/2` (equal at :math:`\lambda = 1/2`), where :math:`C` is the normalizing constant
        of the continuous Bernoulli, whose log density is exactly ``log_prob + log C``. The
        missing ``log C`` depends on the decoder's output, so an "ELBO" built from it bounds no
        likelihood; and it cannot be sampled.

    It is Pyro's own ``Bernoulli`` with one change, the mistake itself: its declared support is
    [0, 1] instead of {0, 1}, so validation (on, as always) admits grey levels and the log
    density is the Bernoulli's, i.e. minus binary cross-entropy.

    References: G. Loaiza-Ganem, J. P. Cunningham, *The continuous Bernoulli*, NeurIPS 2019.
    """

    support = constraints.unit_interval
    has_enumerate_support = False

    def sample(self, sample_shape=torch.Size()):
        raise NotImplementedError(
            "binary cross-entropy on [0, 1] is not a normalized density: there is nothing to "
            "sample from. Read its logits as a continuous Bernoulli to sample."
        )


class BinaryCrossEntropyLikelihood(BernoulliLikelihood):
    """Binary cross-entropy on grey levels as an observation model (the ``bce-grey`` mistake).

    The ``bernoulli`` likelihood with :class:`UnnormalizedBernoulli` in place of the Bernoulli:
    one logit per dimension, and :meth:`mean` ``sigmoid(logits)``, the picture its author
    shows; it is the mean of no distribution. Data in [0, 1] are checked against the
    distribution's declared support, as for any likelihood (:func:`pyro_vae.train.check_data`).

    .. warning:: Unnormalized (see :class:`UnnormalizedBernoulli`); not registered, so neither
        ``pyro-vae train`` nor ``pyro-vae diagnose`` offers it.
    """

    name = "bce"

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:
        return UnnormalizedBernoulli(logits=self.component(params, 0)).to_event(self.event_dim)

    def check_support(self, x: torch.Tensor) -> None:
        Likelihood.check_support(self, x)  # finite; [0, 1] is the declared support


class FixedScaleNormalLikelihood(Likelihood):
    r"""A Normal with a **fixed** standard deviation: what a weighted squared error is.

    :math:`w \sum_d (x_d - \mu_d)^2 = -\log \mathcal N(x; \mu, \sigma^2 I) + \text{const}`
    with :math:`\sigma = 1 / \sqrt{2 w}`, so a plain summed MSE (w = 1) is
    :math:`\sigma = 1/\sqrt 2 \approx 0.71`. Normalized, so its ELBO and log p(x) are honest;
    only sigma is not learned.

    :param float scale: sigma (default: that of a plain summed MSE).
    """

    name = "normal-fixed-scale"

    def __init__(self, event_shape: Sequence[int], scale: float = mse_scale(1.0)):
        super().__init__(event_shape)
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.sigma = float(scale)  # a constant, in the precision of the data it meets

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:
        loc = self.component(params, 0)  # (..., *event_shape)
        return dist.Normal(loc, loc.new_tensor(self.sigma)).to_event(self.event_dim)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self.component(params, 0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sigma={self.sigma:.4g}"


class LogVarianceEncoder(MLPEncoder):
    """An MLP encoder whose second output ``s`` is a log-variance, ``s = log sigma^2``.

    :param bool as_std: the mistake: use ``s`` itself as the guide's standard deviation, which
        is <= 0 wherever ``s`` is. Otherwise the scale is ``exp(s / 2)``.
    """

    def __init__(self, *args, as_std: bool = False, **kwargs):  # MLPEncoder's arguments
        super().__init__(*args, **kwargs)
        self.as_std = bool(as_std)

    def to_scale(self, log_var: torch.Tensor) -> torch.Tensor:
        return log_var if self.as_std else torch.exp(0.5 * log_var)
