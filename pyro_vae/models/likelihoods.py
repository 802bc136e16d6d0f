"""Observation models p(x | z): the swappable last step of the generative model.

A likelihood turns the decoder's raw output into a Pyro distribution over one datapoint. The
decoder emits ``params_per_dim`` numbers per data dimension, laid out as
``(..., params_per_dim, *event_shape)``; the likelihood builds the distribution with
``event_shape`` as its event (so the model's ``data`` plate sees one log-density per datapoint,
summed over all D dimensions: never a mean over pixels).

Adding a likelihood touches this file only: subclass :class:`Likelihood` and register it::

    @LIKELIHOODS.register("laplace")
    class LaplaceLikelihood(Likelihood):
        ...

The registered names are ``bernoulli``, ``continuous-bernoulli`` and ``normal``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.registry import Registry

LIKELIHOODS: Registry[type[Likelihood]] = Registry("likelihood")


class DataSupportError(ValueError):
    """Data lie outside the support of the chosen likelihood; the message says what to do."""


def _describe(x: torch.Tensor) -> str:
    return f"observed range [{x.min().item():.4g}, {x.max().item():.4g}]"


def check_finite(x: torch.Tensor) -> None:
    """Raise :class:`DataSupportError` if ``x`` holds NaN or infinite values.

    The message gives how many there are and the index of the first datapoint holding one.
    """
    bad = ~torch.isfinite(x)
    if bad.any():
        count = int(bad.sum())
        first = int(bad.reshape(bad.shape[0], -1).any(-1).nonzero()[0, 0]) if x.dim() else 0
        raise DataSupportError(
            f"the data contain {count} non-finite values (NaN or inf); the first is in datapoint "
            f"{first}. Clean or drop those datapoints before training."
        )


def _check_binary(x: torch.Tensor) -> None:
    not_binary = (x != 0) & (x != 1)
    if not_binary.any():
        raise DataSupportError(
            f"the bernoulli likelihood needs binary data (every value exactly 0 or 1), but "
            f"{int(not_binary.sum())} values are not ({_describe(x)}). Binarize the data "
            f"(--binarize dynamic, static or threshold), or choose a likelihood for grey "
            f"levels: --likelihood continuous-bernoulli (data in [0, 1]) or normal."
        )


def _check_unit_interval(x: torch.Tensor) -> None:
    outside = (x < 0) | (x > 1)
    if outside.any():
        raise DataSupportError(
            f"the continuous-bernoulli likelihood needs data in [0, 1], but "
            f"{int(outside.sum())} values are outside ({_describe(x)}). Rescale the data to "
            f"[0, 1] (8-bit images: divide by 255), or use --likelihood normal."
        )


class _ActionableSupport:
    """Mixin for torch distributions: when Pyro's validation finds a value outside the support,
    raise the likelihood's :class:`DataSupportError` (what to do) instead of a bare message.
    It reuses the check validation performs anyway, so it costs nothing when data are valid."""

    support_check = staticmethod(check_finite)

    def _validate_sample(self, value: torch.Tensor) -> None:
        try:
            super()._validate_sample(value)
        except ValueError:
            self.support_check(value)
            raise


class _Bernoulli(_ActionableSupport, dist.Bernoulli):
    support_check = staticmethod(_check_binary)


class _ContinuousBernoulli(_ActionableSupport, dist.ContinuousBernoulli):
    support_check = staticmethod(_check_unit_interval)


class Likelihood(nn.Module):
    """Base class of observation models.

    :param event_shape: shape of one datapoint, e.g. ``(1, 28, 28)`` or ``(784,)``.

    Subclasses set :attr:`params_per_dim` and implement :meth:`distribution`, :meth:`mean` and
    :meth:`check_support`. They may own learnable parameters (e.g. a noise scale); these are
    ordinary ``nn.Parameter``s trained with the rest of the model.
    """

    #: Number of decoder outputs per data dimension.
    params_per_dim: int = 1
    #: Registered name (set by the subclass).
    name: str = ""
    #: How ``pyro-vae train`` binarizes data for this likelihood unless told otherwise
    #: (``"none"``: grey levels stay grey; see :class:`~pyro_vae.data.Preprocess`).
    default_binarize: str = "none"
    #: Whether 8-bit levels are dequantized, ``(k + u) / 256``, unless told otherwise (when
    #: nothing is binarized): right for a density, wrong for a probability mass function.
    dequantize_8bit: bool = True

    def __init__(self, event_shape: Sequence[int]):
        super().__init__()
        self.event_shape = torch.Size(event_shape)

    @property
    def event_dim(self) -> int:
        return len(self.event_shape)

    @property
    def param_shape(self) -> torch.Size:
        """Shape the decoder must produce per datapoint: ``(params_per_dim, *event_shape)``."""
        return torch.Size((self.params_per_dim, *self.event_shape))

    def component(self, params: torch.Tensor, i: int) -> torch.Tensor:
        """The ``i``-th decoder output per dimension: ``(..., k, *event) -> (..., *event)``."""
        return params.select(-1 - self.event_dim, i)

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:
        """The distribution of ``x`` given decoder output ``params``.

        :param params: ``(..., params_per_dim, *event_shape)``.
        :returns: a distribution with ``batch_shape == params.shape[:-event_dim-1]`` and
            ``event_shape == self.event_shape``.
        """
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """E[x | params], shaped ``(..., *event_shape)``: what pictures show."""
        raise NotImplementedError

    def check_support(self, x: torch.Tensor) -> None:
        """Raise :class:`DataSupportError`, saying what to do, if ``x`` is outside the support."""
        check_finite(x)

    def extra_repr(self) -> str:
        return f"event_shape={tuple(self.event_shape)}"


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(Likelihood):
    """Independent Bernoulli pixels with logits from the decoder.

    .. warning:: Data must be exactly 0 or 1. Grey levels are not a Bernoulli outcome: binary
        cross-entropy on them is not a normalized density. Binarize the data, or use
        ``continuous-bernoulli`` or ``normal``.
    """

    name = "bernoulli"
    default_binarize = "dynamic"
    dequantize_8bit = False

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:
        return _Bernoulli(logits=self.component(params, 0)).to_event(self.event_dim)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.component(params, 0))

    def check_support(self, x: torch.Tensor) -> None:
        check_finite(x)
        _check_binary(x)


@LIKELIHOODS.register("continuous-bernoulli")
class ContinuousBernoulliLikelihood(Likelihood):
    """Continuous Bernoulli pixels on [0, 1] (Loaiza-Ganem & Cunningham, 2019).

    The density ``C(lambda) lambda^x (1 - lambda)^(1 - x)`` is normalized on [0, 1], unlike
    binary cross-entropy applied to grey levels. Its mean is **not** ``lambda``; :meth:`mean`
    returns the true mean, which is what pictures should show.

    References: G. Loaiza-Ganem, J. P. Cunningham, *The continuous Bernoulli: fixing a
    pervasive error in variational autoencoders*, NeurIPS 2019.
    """

    name = "continuous-bernoulli"

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:
        return _ContinuousBernoulli(logits=self.component(params, 0)).to_event(self.event_dim)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return dist.ContinuousBernoulli(logits=self.component(params, 0)).mean

    def check_support(self, x: torch.Tensor) -> None:
        check_finite(x)
        _check_unit_interval(x)


#: how the ``normal`` likelihood parameterizes sigma
SCALE_MODES: Registry[None] = Registry.of("normal scale", ("shared", "per-pixel", "decoder"))


def mse_scale(weight: float = 1.0) -> float:
    """sigma of the Normal that a weighted sum of squared errors is.

    ``weight * sum_d (x_d - mu_d)^2 = -log N(x; mu, sigma^2 I) + const`` with
    ``sigma = 1 / sqrt(2 weight)``: 0.71 for a plain summed MSE.
    """
    if not weight > 0:
        raise ValueError(f"the MSE weight must be > 0, got {weight}")
    return 1.0 / math.sqrt(2.0 * weight)


def softclip(t: torch.Tensor, low: float) -> torch.Tensor:
    """Smooth lower bound ``low + softplus(t - low)``: about ``t`` above ``low``, never below it."""
    return low + F.softplus(t - low)


def _inverse_softclip(value: float, low: float) -> float:
    return low + math.log(math.expm1(value - low))


@LIKELIHOODS.register("normal")
class NormalLikelihood(Likelihood):
    """Independent Normal observations with a **learned** standard deviation.

    :param str scale: how sigma is parameterized:

        - ``shared``: one scalar sigma for all dimensions (the sigma-VAE's optimal-sigma setting);
        - ``per-pixel``: one learned sigma per data dimension;
        - ``decoder``: the decoder outputs ``loc`` and a raw log-sigma per dimension
          (``params_per_dim == 2``).

    :param float init_scale: sigma at initialization (0.1 by default, a tenth of the [0, 1]
        pixel range).
    :param float min_log_scale: soft lower bound on log sigma, applied in every mode as in the
        sigma-VAE: ``log_sigma = min + softplus(raw - min)``. It stops sigma collapsing to 0
        on constant pixels, where the density (and the ELBO) would grow without bound.
        Default -6 (sigma >= 0.0025).

    The Normal is a density on the reals, so its log-likelihood can be positive and the loss
    negative; that alone is no bug. Compare models on dequantized 8-bit data in bits/dim.

    References: O. Rybkin, K. Daniilidis, S. Levine, *Simple and Effective VAE Training with
    Calibrated Decoders*, ICML 2021.
    """

    name = "normal"

    def __init__(
        self,
        event_shape: Sequence[int],
        scale: str = "shared",
        init_scale: float = 0.1,
        min_log_scale: float = -6.0,
    ):
        super().__init__(event_shape)
        SCALE_MODES.check(scale)
        if not init_scale > math.exp(min_log_scale):
            raise ValueError(
                f"init_scale={init_scale} must exceed the lower bound exp({min_log_scale})"
            )
        self.scale_mode = scale
        self.min_log_scale = float(min_log_scale)
        raw = _inverse_softclip(math.log(init_scale), self.min_log_scale)
        if scale == "shared":
            self.raw_log_scale = nn.Parameter(torch.tensor(raw))
        elif scale == "per-pixel":
            self.raw_log_scale = nn.Parameter(torch.full(self.event_shape, raw))
        else:
            # the decoder's raw output starts near 0; this offset starts sigma at init_scale
            self.raw_offset = raw
            self.params_per_dim = 2

    @torch.no_grad()
    def set_scale(self, sigma: float) -> None:
        """Set sigma in the ``shared`` and ``per-pixel`` modes (e.g. to fix it for a baseline)."""
        if self.scale_mode == "decoder":
            raise ValueError("in 'decoder' mode sigma is an output of the decoder")
        self.raw_log_scale.fill_(_inverse_softclip(math.log(sigma), self.min_log_scale))

    def log_scale(self, params: torch.Tensor | None = None) -> torch.Tensor:
        """log sigma: a scalar, ``event_shape``, or ``(..., *event_shape)`` in ``decoder`` mode."""
        if self.scale_mode == "decoder":
            assert params is not None
            raw = self.component(params, 1) + self.raw_offset
        else:
            raw = self.raw_log_scale
        return softclip(raw, self.min_log_scale)

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:
        loc = self.component(params, 0)  # (..., *event_shape)
        scale = self.log_scale(params).exp()  # broadcasts against loc
        return dist.Normal(loc, scale).to_event(self.event_dim)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self.component(params, 0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale_mode!r}"


def make_likelihood(name: str, event_shape: Sequence[int], **options) -> Likelihood:
    """Build the likelihood registered as ``name``.

    Options whose value is ``None`` are dropped, so command-line defaults pass through.

    :raises UnknownNameError: for an unknown name, listing the valid ones.
    :raises ValueError: for an option this likelihood does not take.
    """
    cls = LIKELIHOODS.get(name)
    options = {k: v for k, v in options.items() if v is not None}
    try:
        return cls(event_shape, **options)
    except TypeError as e:
        raise ValueError(f"likelihood {name!r} does not take options {sorted(options)}: {e}") from e
