"""Observation models p(x | z): the swappable last step of the generative model.

A likelihood turns the decoder's raw output into a Pyro distribution over one datapoint. The
decoder emits ``params_per_dim`` numbers per data dimension, laid out as
``(..., params_per_dim, *event_shape)``; the likelihood builds the distribution with
``event_shape`` as its event (so the model's ``data`` plate sees one log-density per datapoint,
summed over all D dimensions: never a mean over pixels).

Adding a likelihood touches this file only (or the user's own module): subclass
:class:`Likelihood` and register it::

    @LIKELIHOODS.register("student-t")
    class StudentTLikelihood(Likelihood):
        ...

The registered names are ``bernoulli``, ``continuous-bernoulli``, ``discretized-logistic``
(a probability mass function over 8-bit levels, :mod:`~pyro_vae.models.discretized_logistic`),
``beta``, ``laplace`` and ``normal``. The last three learn their scale in one of
:data:`SCALE_MODES` (:class:`LocationScaleLikelihood`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.util import sum_rightmost
from torch import nn
from torch.distributions import constraints
from torch.distributions.utils import broadcast_all

from pyro_vae.models.discretized_logistic import DiscretizedLogisticMixture, LevelGrid
from pyro_vae.registry import Registry
from pyro_vae.validation import shortest

LIKELIHOODS: Registry[type[Likelihood]] = Registry("likelihood")


class DataSupportError(ValueError):
    """Data lie outside the support of the chosen likelihood; the message says what to do."""


def _describe(x: torch.Tensor) -> str:
    return f"observed range [{shortest(x.min().item())}, {shortest(x.max().item())}]"


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
            f"levels: --likelihood continuous-bernoulli (data in [0, 1]), normal, or "
            f"discretized-logistic (8-bit levels as they are)."
        )


def _check_unit_interval(x: torch.Tensor) -> None:
    outside = (x < 0) | (x > 1)
    if outside.any():
        raise DataSupportError(
            f"the continuous-bernoulli likelihood needs data in [0, 1], but "
            f"{int(outside.sum())} values are outside ({_describe(x)}). Rescale the data to "
            f"[0, 1] (8-bit images: divide by 255), or use --likelihood normal."
        )


def _check_open_unit_interval(x: torch.Tensor) -> None:
    edge = (x == 0) | (x == 1)
    outside = (x < 0) | (x > 1)
    if edge.any() or outside.any():
        raise DataSupportError(
            f"the beta likelihood needs data strictly inside (0, 1), but {int(edge.sum())} "
            f"values are exactly 0 or 1 and {int(outside.sum())} lie outside [0, 1] "
            f"({_describe(x)}); its density is 0 or infinite at the ends. Store 8-bit levels "
            f"as uint8 so that the trainer dequantizes them ((k + u)/256 lies inside (0, 1)), "
            f"or squash proportions into the open interval, (x (N - 1) + 1/2) / N for N "
            f"datapoints (Smithson & Verkuilen 2006); or use --likelihood continuous-bernoulli "
            f"(data in [0, 1])."
        )


def _check_levels(x: torch.Tensor) -> None:
    off = ~LevelGrid(256).check(x)
    if off.any():
        raise DataSupportError(
            f"the discretized-logistic likelihood is a probability mass function over the 256 "
            f"8-bit levels k/255, but {int(off.sum())} values are not on them ({_describe(x)}). "
            f"Feed it the levels as they are: uint8 data with --binarize none --no-dequantize "
            f"(its defaults; dequantized values are off the levels), or floats that are "
            f"exactly k/255. For continuous data choose a density: continuous-bernoulli, beta, "
            f"laplace or normal."
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


class _IndependentBernoulli(dist.Independent):
    """``Bernoulli(logits).to_event(n)`` with the pixels' log-probabilities summed as they are
    made, never held negated.

    torch's ``Bernoulli.log_prob`` negates every pixel's binary cross-entropy and
    ``Independent`` then sums them: two passes over every pixel, and their two mirror images in
    the backward pass. Here:

    * with autograd on (training): ``-sum(bce(l, x))``, bit for bit the numbers torch gives
      (negation is exact, so negating the sum equals summing the negations) without the pass
      that negates each pixel, forward and backward;
    * without autograd (evaluation, the importance sampler's thousands of particles per
      datapoint): ``x . l - sum softplus(l)``, one product over the event and one softplus,
      about half the time of the cross-entropy's four passes. It equals the cross-entropy up to
      float rounding (it is exact where ``x = 0`` and the cross-entropy exact where ``x = 1``),
      and is right where the cross-entropy is not (``l = 1e30, x = 0``: -1e30, not 0).

    The support of the value is validated as ``Bernoulli`` validates it (``_Bernoulli``'s
    actionable message), against the value as given, before it is broadcast to the particles.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        base, n = self.base_dist, self.reinterpreted_batch_ndims
        if base._validate_args:
            base._validate_sample(value)
        logits = base.logits
        if torch.is_grad_enabled() or n == 0:
            # the very call torch's Bernoulli.log_prob makes: a density of the model, not a loss
            logits, value = broadcast_all(logits, value)
            bce = F.binary_cross_entropy_with_logits(logits, value, reduction="none")
            return -sum_rightmost(bce, n)
        event = logits.shape[logits.dim() - n :]
        value = value.expand(*value.shape[: value.dim() - n], *event)  # (*vb, *event)
        flat_l = logits.flatten(-n)  # (*batch, D)
        flat_x = value.reshape(*value.shape[: value.dim() - n], -1)  # (*vb, D)
        dot = torch.einsum("...d,...d->...", flat_l, flat_x)  # broadcast, not expanded
        return dot - F.softplus(flat_l).sum(-1)


class _ContinuousBernoulli(_ActionableSupport, dist.ContinuousBernoulli):
    support_check = staticmethod(_check_unit_interval)


class OpenInterval(constraints.Constraint):
    """The open interval ``(lower_bound, upper_bound)`` (torch has only closed and half-open
    ones): a Beta's density is 0 or infinite at the ends, so they are outside its support."""

    def __init__(self, lower_bound: float, upper_bound: float):
        self.lower_bound, self.upper_bound = lower_bound, upper_bound
        super().__init__()

    def check(self, value: torch.Tensor) -> torch.Tensor:
        return (value > self.lower_bound) & (value < self.upper_bound)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.lower_bound}, {self.upper_bound})"


class _Beta(_ActionableSupport, dist.Beta):
    support = OpenInterval(0.0, 1.0)
    support_check = staticmethod(_check_open_unit_interval)


class _DiscretizedLogistic(_ActionableSupport, DiscretizedLogisticMixture):
    support_check = staticmethod(_check_levels)


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
    #: The data it is for, in a few words (``pyro-vae diagnose`` says it when it recommends
    #: this likelihood).
    fits: str = ""

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
        """The ``i``-th decoder output per dimension: ``(..., k, *event) -> (..., *event)``.

        With one output per dimension it is a ``squeeze``, the same view as ``select`` but
        one whose backward is a view too (``select``'s fills a zero tensor of the decoder's
        output and copies the gradient into it, every step).
        """
        dim = -1 - self.event_dim
        if i == 0 and params.shape[dim] == 1:
            return params.squeeze(dim)
        return params.select(dim, i)

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
    fits = "binary data, exactly 0 or 1"

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:
        return _IndependentBernoulli(_Bernoulli(logits=self.component(params, 0)), self.event_dim)

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
    fits = "values in [0, 1], such as dequantized grey levels"

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:
        return _ContinuousBernoulli(logits=self.component(params, 0)).to_event(self.event_dim)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return dist.ContinuousBernoulli(logits=self.component(params, 0)).mean

    def check_support(self, x: torch.Tensor) -> None:
        check_finite(x)
        _check_unit_interval(x)


#: how ``normal``, ``laplace`` and ``beta`` parameterize their learned spread (``--scale``)
SCALE_MODES: Registry[None] = Registry.of("scale mode", ("shared", "per-pixel", "decoder"))


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


class LocationScaleLikelihood(Likelihood):
    """Base of the likelihoods with a location from the decoder and a **learned** scale.

    :param str scale: how the scale is parameterized (:data:`SCALE_MODES`):

        - ``shared``: one scalar for all dimensions (the sigma-VAE's optimal-sigma setting);
        - ``per-pixel``: one learned scale per data dimension;
        - ``decoder``: the decoder outputs the location and a raw log-scale per dimension
          (``params_per_dim == 2``).

    :param float init_scale: the scale at initialization.
    :param float min_log_scale: soft lower bound on the log scale, applied in every mode as in
        the sigma-VAE: ``log_scale = min + softplus(raw - min)``. It stops the scale collapsing
        to 0 on constant dimensions, where the density (and the ELBO) would grow without bound.

    Subclasses set the defaults and implement :meth:`build` (the distribution of one
    dimension from the location's raw output and the scale) and, unless the location is the
    mean, :meth:`mean`.
    """

    #: the subclass's default initial scale and lower bound on its log
    default_init_scale: float = 0.1
    default_min_log_scale: float = -6.0

    def __init__(
        self,
        event_shape: Sequence[int],
        scale: str = "shared",
        init_scale: float | None = None,
        min_log_scale: float | None = None,
    ):
        super().__init__(event_shape)
        SCALE_MODES.check(scale)
        init_scale = self.default_init_scale if init_scale is None else init_scale
        min_log_scale = self.default_min_log_scale if min_log_scale is None else min_log_scale
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
            # the decoder's raw output starts near 0; this offset starts the scale at init_scale
            self.raw_offset = raw
            self.params_per_dim = 2

    @torch.no_grad()
    def set_scale(self, scale: float) -> None:
        """Set the scale in the ``shared`` and ``per-pixel`` modes (e.g. to fix it)."""
        if self.scale_mode == "decoder":
            raise ValueError("in 'decoder' mode the scale is an output of the decoder")
        self.raw_log_scale.fill_(_inverse_softclip(math.log(scale), self.min_log_scale))

    def log_scale(self, params: torch.Tensor | None = None) -> torch.Tensor:
        """The log scale: a scalar, ``event_shape``, or ``(..., *event_shape)`` in ``decoder``
        mode."""
        if self.scale_mode == "decoder":
            assert params is not None
            raw = self.component(params, 1) + self.raw_offset
        else:
            raw = self.raw_log_scale
        return softclip(raw, self.min_log_scale)

    def build(self, loc: torch.Tensor, log_scale: torch.Tensor) -> dist.TorchDistribution:
        """The distribution of each dimension: ``loc`` is the decoder's first output
        ``(..., *event_shape)``, ``log_scale`` broadcasts against it."""
        raise NotImplementedError

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:
        loc = self.component(params, 0)  # (..., *event_shape)
        return self.build(loc, self.log_scale(params)).to_event(self.event_dim)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self.component(params, 0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, scale={self.scale_mode!r}"


@LIKELIHOODS.register("normal")
class NormalLikelihood(LocationScaleLikelihood):
    """Independent Normal observations with a **learned** standard deviation sigma.

    Options as :class:`LocationScaleLikelihood`; sigma starts at 0.1 (a tenth of the [0, 1]
    pixel range), and its log has the soft lower bound -6 (sigma >= 0.0025).

    The Normal is a density on the reals, so its log-likelihood can be positive and the loss
    negative; that alone is no bug. Compare models on dequantized 8-bit data in bits/dim.

    References: O. Rybkin, K. Daniilidis, S. Levine, *Simple and Effective VAE Training with
    Calibrated Decoders*, ICML 2021.
    """

    name = "normal"
    fits = "real values with about Gaussian noise (light tails)"

    def build(self, loc: torch.Tensor, log_scale: torch.Tensor) -> dist.TorchDistribution:
        return dist.Normal(loc, log_scale.exp())


@LIKELIHOODS.register("laplace")
class LaplaceLikelihood(LocationScaleLikelihood):
    """Independent Laplace observations, ``exp(-|x - mu| / b) / (2 b)``, with a **learned**
    scale b: the heavy-tailed choice for real-valued data (excess kurtosis 3, where the
    Normal's is 0), whose log-likelihood is a summed absolute error, robust to outliers.

    Options as :class:`LocationScaleLikelihood`; b starts at 0.1 and its log has the soft
    lower bound -6. A density: compare models on dequantized 8-bit data in bits/dim.
    """

    name = "laplace"
    fits = "real values with heavy tails or outliers (excess kurtosis near 3)"

    def build(self, loc: torch.Tensor, log_scale: torch.Tensor) -> dist.TorchDistribution:
        return dist.Laplace(loc, log_scale.exp())


#: soft lower bound on the log of a Beta's two concentrations: both stay > 0 however far the
#: decoder pushes the mean to 0 or 1 (where one of them would underflow to 0 in float32)
_BETA_MIN_LOG_CONCENTRATION = -20.0


@LIKELIHOODS.register("beta")
class BetaLikelihood(LocationScaleLikelihood):
    """Independent Beta observations on the open interval (0, 1), for proportions.

    The decoder's first output is the logit of the mean mu; the learned scale ``s`` is the
    inverse of the concentration kappa = alpha + beta: ``Beta(mu / s, (1 - mu) / s)``, whose
    variance is ``mu (1 - mu) s / (1 + s)``, so the scale modes mean what they mean for the
    Normal (a larger ``s`` is a wider density). ``s`` starts at 0.04 (a standard deviation of
    0.1 at mu = 1/2) and its log has the soft lower bound -10 (kappa <= 22026).

    .. warning:: Exact 0s and 1s are outside the support (the density is 0 or infinite
        there): dequantize 8-bit levels (the default for uint8 data) or squash proportions
        into (0, 1).

    References: S. L. P. Ferrari, F. Cribari-Neto, *Beta regression for modelling rates and
    proportions*, Journal of Applied Statistics 31, 2004.
    """

    name = "beta"
    fits = "values strictly inside (0, 1): proportions, or dequantized grey levels"
    default_init_scale = 0.04
    default_min_log_scale = -10.0

    def build(self, loc: torch.Tensor, log_scale: torch.Tensor) -> dist.TorchDistribution:
        low = _BETA_MIN_LOG_CONCENTRATION
        alpha = softclip(F.logsigmoid(loc) - log_scale, low).exp()  # mu / s
        beta = softclip(F.logsigmoid(-loc) - log_scale, low).exp()  # (1 - mu) / s
        return _Beta(alpha, beta)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self.distribution(params).mean  # alpha / (alpha + beta)

    def check_support(self, x: torch.Tensor) -> None:
        check_finite(x)
        _check_open_unit_interval(x)


#: mixture components per dimension of ``discretized-logistic`` by default (PixelCNN++'s)
DEFAULT_COMPONENTS = 10


@LIKELIHOODS.register("discretized-logistic")
class DiscretizedLogisticLikelihood(Likelihood):
    """A mixture of discretized logistics per dimension: a probability mass function over the
    256 8-bit levels ``k / 255`` as the loader reads them (PixelCNN++, IAF-VAE), not a density
    on dequantized data. Its log p(x) is the log-probability of the levels themselves, and
    bits/dim ``-log2 P(x) / D`` is exact (:class:`DiscretizedLogisticMixture`).

    :param int components: K, mixture components per dimension (default 10); ``K = 1`` is the
        plain discretized logistic. The decoder emits ``3 K`` numbers per dimension (mixture
        logits, locations, raw log scales; ``2`` for ``K = 1``, which needs no weights).
    :param float init_scale: the components' scale at initialization, on the [0, 1] scale.
    :param float min_log_scale: soft lower bound on each component's log scale: -8, about
        PixelCNN++'s -7 on data in [-1, 1], which lets one level take 99% of the mass. The
        bound keeps gradients finite, not the likelihood bounded (a mass never exceeds 1).

    The components' locations start spread over [0, 1] (the decoder's raw output near 0 plus
    an offset ``(c + 1/2) / K``), so they do not start as identical copies. Colour channels
    are modelled independently, each with its own mixture (no autoregression across
    channels, unlike PixelCNN++).

    .. warning:: The data must be the levels themselves: uint8 data, not dequantized
        (``--no-dequantize``, the default for this likelihood), nor binarized.
    """

    name = "discretized-logistic"
    dequantize_8bit = False
    fits = "8-bit levels as they are: an exact log-probability, and exact bits/dim"

    def __init__(
        self,
        event_shape: Sequence[int],
        components: int = DEFAULT_COMPONENTS,
        init_scale: float = 0.05,
        min_log_scale: float = -8.0,
    ):
        super().__init__(event_shape)
        if not (isinstance(components, int) and components >= 1):
            raise ValueError(f"components must be an integer >= 1, got {components!r}")
        if not init_scale > math.exp(min_log_scale):
            raise ValueError(
                f"init_scale={init_scale} must exceed the lower bound exp({min_log_scale})"
            )
        self.components = components
        self.min_log_scale = float(min_log_scale)
        self.params_per_dim = 2 if components == 1 else 3 * components
        self.raw_offset = _inverse_softclip(math.log(init_scale), self.min_log_scale)
        spread = (torch.arange(components, dtype=torch.float32) + 0.5) / components
        self.register_buffer("loc_offset", spread, persistent=False)

    def _part(self, params: torch.Tensor, start: int) -> torch.Tensor:
        """``K`` outputs per dimension from ``start``, components last: ``(..., *event, K)``."""
        axis = -1 - self.event_dim
        return params.narrow(axis, start, self.components).movedim(axis, -1)

    def mixture(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(logits, loc, log_scale)`` of the mixture, each ``(..., *event_shape, K)``."""
        k = self.components
        first = 0 if k == 1 else k  # K = 1 has no mixture logits
        loc = self._part(params, first) + self.loc_offset.to(params.dtype)
        log_scale = softclip(self._part(params, first + k) + self.raw_offset, self.min_log_scale)
        logits = torch.zeros_like(loc) if k == 1 else self._part(params, 0)
        return logits, loc, log_scale

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:
        return _DiscretizedLogistic(*self.mixture(params)).to_event(self.event_dim)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self.distribution(params).mean

    def check_support(self, x: torch.Tensor) -> None:
        check_finite(x)
        _check_levels(x)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, components={self.components}"


def likelihood_options(name: str, **options) -> dict:
    """The options that are set (not ``None``), checked against what likelihood ``name`` takes
    (the keyword parameters of its ``__init__`` after ``event_shape``).

    :raises UnknownNameError: for an unknown name, listing the valid ones.
    :raises ValueError: for an option this likelihood does not take, naming those it takes.
    """
    params = list(inspect.signature(LIKELIHOODS.get(name).__init__).parameters.values())[2:]
    options = {k: v for k, v in options.items() if v is not None}
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return options
    takes = [p.name for p in params]
    refused = sorted(set(options) - set(takes))
    if refused:
        raise ValueError(
            f"likelihood {name!r} does not take the options {refused} (it takes: "
            f"{', '.join(takes) or 'none'})"
        )
    return options


def make_likelihood(name: str, event_shape: Sequence[int], **options) -> Likelihood:
    """Build the likelihood registered as ``name``.

    Options whose value is ``None`` are dropped, so command-line defaults pass through.

    :raises UnknownNameError: for an unknown name, listing the valid ones.
    :raises ValueError: for an option this likelihood does not take.
    """
    return LIKELIHOODS.get(name)(event_shape, **likelihood_options(name, **options))
