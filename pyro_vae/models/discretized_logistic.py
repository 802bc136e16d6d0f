r"""The discretized logistic mixture: a probability mass function over 8-bit levels.

Each dimension takes one of ``L = levels`` values on the grid ``k / (L - 1)``, ``k = 0..L-1``
(the 8-bit levels ``k / 255`` as the loader reads them). Level ``k`` owns the bin
``[(k - 1/2) / (L - 1), (k + 1/2) / (L - 1)]`` of a mixture of logistic densities, and the edge
levels ``0`` and ``L - 1`` take the tails, so the masses of the ``L`` levels sum to 1 exactly
(Salimans et al. 2017, Kingma et al. 2016). It is not a density on dequantized data: its
log-probability is the log-likelihood of the levels themselves, and bits/dim
``-log2 P(x) / D`` is exact.

Everything is computed in log space. The mass of an inner bin uses the identity

.. math::

    \sigma(a) - \sigma(b) = \sigma(a)\, \sigma(-b)\, \bigl(1 - e^{-(a - b)}\bigr),
    \qquad a - b = \frac{1}{(L - 1) s},

so ``log(σ(a) - σ(b))`` is a sum of two log-sigmoids and a ``log1mexp`` of the bin's width in
units of the scale: no difference of two probabilities rounds to 0, for any location or scale.

References:

[1] T. Salimans, A. Karpathy, X. Chen, D. P. Kingma, *PixelCNN++: Improving the PixelCNN with
discretized logistic mixture likelihood and other modifications*, ICLR 2017.

[2] D. P. Kingma, T. Salimans, R. Jozefowicz, X. Chen, I. Sutskever, M. Welling, *Improved
variational inference with inverse autoregressive flow*, NeurIPS 2016.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints

#: log-widths below this are ``log(1 - e^-d) = log d`` (error d / 2 < 1e-35; exp(-80) is a
#: normal number in float32)
_LOG_D_FLOOR = -80.0
#: thresholds of the mean's sum taken at a time (bounds the memory of :attr:`mean`)
_MEAN_CHUNK = 16


class LevelGrid(constraints.Constraint):
    """The grid ``{k / (levels - 1) : k = 0..levels-1}`` of ``[0, 1]``: quantized levels, as
    the loader reads 8-bit data (``levels = 256``: ``k / 255``).

    A discrete support: a likelihood whose distribution declares it is a probability mass
    function over the levels, and bits/dim of 8-bit data under it is exact. Values within
    ``1e-3`` of a level (in units of the level spacing) count as on it, for float rounding.
    """

    is_discrete = True
    event_dim = 0

    def __init__(self, levels: int = 256):
        if levels < 2:
            raise ValueError(f"a grid needs at least 2 levels, got {levels}")
        self.levels = int(levels)
        super().__init__()

    def check(self, value: torch.Tensor) -> torch.Tensor:
        k = value * (self.levels - 1)
        return (value >= 0) & (value <= 1) & ((k - k.round()).abs() <= 1e-3)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(levels={self.levels})"


def log1mexp(log_d: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(-d))`` for ``d = exp(log_d) > 0``, accurate in absolute terms (what a
    log-probability needs), for any ``log_d``: ``log(-expm1(-d))``, where ``d`` is taken at
    least ``exp(-80)`` so that it cannot underflow, and below that ``log d`` itself (the
    two differ by ``d / 2 < 1e-35`` there)."""
    floor = log_d.clamp_min(_LOG_D_FLOOR)
    return torch.log(-torch.expm1(-floor.exp())) + (log_d - floor)


class DiscretizedLogisticMixture(TorchDistribution):
    """Mixture of ``K`` discretized logistics per dimension over ``levels`` grid values in
    ``[0, 1]`` (see the module's docstring).

    :param logits: ``(..., K)`` unnormalized log mixture weights.
    :param loc: ``(..., K)`` locations mu_k of the logistic components, on the ``[0, 1]``
        scale of the levels.
    :param log_scale: ``(..., K)`` log scales log s_k.
    :param int levels: number of levels (256 for 8-bit data).

    ``batch_shape`` is the broadcast of the three without their last dimension; the event is a
    scalar level (wrap in ``.to_event`` for a datapoint). ``K = 1`` is the plain discretized
    logistic.

    .. warning:: Values are the levels ``k / (levels - 1)``, not dequantized data; any value off
        the grid is outside the support (Pyro's validation refuses it).
    """

    arg_constraints = {
        "logits": constraints.real_vector,
        "loc": constraints.real_vector,
        "log_scale": constraints.real_vector,
    }
    has_rsample = False

    def __init__(
        self,
        logits: torch.Tensor,
        loc: torch.Tensor,
        log_scale: torch.Tensor,
        levels: int = 256,
        validate_args: bool | None = None,
    ):
        self.logits, self.loc, self.log_scale = torch.broadcast_tensors(logits, loc, log_scale)
        self.levels = int(levels)
        super().__init__(self.loc.shape[:-1], torch.Size(), validate_args=validate_args)

    @constraints.dependent_property(is_discrete=True, event_dim=0)
    def support(self) -> LevelGrid:
        return LevelGrid(self.levels)

    @property
    def num_components(self) -> int:
        return self.loc.shape[-1]

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(DiscretizedLogisticMixture, _instance)
        shape = torch.Size(batch_shape) + (self.num_components,)
        new.logits = self.logits.expand(shape)
        new.loc = self.loc.expand(shape)
        new.log_scale = self.log_scale.expand(shape)
        new.levels = self.levels
        # validated as the original is (its parameters, expanded, are as valid as they were)
        super(DiscretizedLogisticMixture, new).__init__(
            torch.Size(batch_shape), torch.Size(), validate_args=self._validate_args
        )
        return new

    def component_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``log P_c(value)`` of each component: ``(..., K)``.

        An inner level's mass is ``sigmoid(upper) sigmoid(-lower) (1 - exp(-(upper - lower)))``
        (the module's identity); level 0 keeps only the first factor (it takes the lower
        tail), level ``L - 1`` only the second.
        """
        last = self.levels - 1
        k = (value * last).round().clamp(0, last).unsqueeze(-1)  # (..., 1) level index
        # each bin edge (j - 1/2) / (L - 1) rounds to the same float as the upper edge of one
        # level and the lower edge of the next, so the masses telescope to 1 however narrow
        # the scale (even with the location on an edge)
        upper, lower = (k + 0.5) / last, (k - 0.5) / last  # (..., 1)
        first, final = k == 0, k == last  # the edge levels take the tails: factor 1 there
        neg_log_scale = -self.log_scale
        inv_scale = neg_log_scale.exp()  # (..., K)
        # -log sigmoid(t) = softplus(-t), the cheaper kernel. The two fills are in place (each
        # factor is a fresh tensor of the full shape, and softplus keeps its input, not its
        # output, for the backward pass): this runs K = 5000 times per datapoint in evaluation
        minus_log_upper = F.softplus((self.loc - upper) * inv_scale).masked_fill_(final, 0.0)
        minus_log_lower = F.softplus((lower - self.loc) * inv_scale).masked_fill_(first, 0.0)
        # the standardized bin width 1 / ((L - 1) s), by its log: exact however wide s is (it
        # has the parameters' shape, which the levels may broadcast: filled out of place)
        gap = log1mexp(neg_log_scale - math.log(last)).masked_fill(first | final, 0.0)
        return gap - minus_log_upper - minus_log_lower

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        # log sum_c pi_c P_c with pi = softmax(logits), without normalizing the weights at
        # the components' size
        joint = torch.logsumexp(self.logits + self.component_log_prob(value), -1)
        return joint - torch.logsumexp(self.logits, -1)

    @property
    def mean(self) -> torch.Tensor:
        """E[x] exactly: ``(1 / (L - 1)) sum_{j=1}^{L-1} P(k >= j)``, where
        ``P(k >= j) = sum_c pi_c sigmoid((mu_c - t_j) / s_c)`` at the bin edges
        ``t_j = (j - 1/2) / (L - 1)``; summed in chunks of thresholds."""
        last = self.levels - 1
        weights = torch.softmax(self.logits, -1)  # (..., K)
        inv_scale = torch.exp(-self.log_scale)
        edges = (
            torch.arange(1, last + 1, dtype=self.loc.dtype, device=self.loc.device) - 0.5
        ) / last
        tail = torch.zeros_like(self.loc)  # (..., K): sum_j P_c(k >= j)
        for chunk in edges.split(_MEAN_CHUNK):
            t = chunk.reshape(-1, *([1] * self.loc.dim()))  # (chunk, 1, ..., 1)
            tail = tail + torch.sigmoid((self.loc - t) * inv_scale).sum(0)
        return (weights * tail).sum(-1) / last

    @torch.no_grad()
    def sample(self, sample_shape: torch.Size = torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(torch.Size(sample_shape))  # (*sample, *batch)
        full = shape + (self.num_components,)
        pick = torch.distributions.Categorical(logits=self.logits).sample(sample_shape)
        index = pick.unsqueeze(-1)  # (*sample, *batch, 1)
        loc = self.loc.expand(full).gather(-1, index).squeeze(-1)
        log_scale = self.log_scale.expand(full).gather(-1, index).squeeze(-1)
        tiny = torch.finfo(loc.dtype).tiny
        u = torch.rand(shape, dtype=loc.dtype, device=loc.device).clamp(tiny, 1 - 1e-7)
        y = loc + log_scale.exp() * (torch.log(u) - torch.log1p(-u))  # a logistic draw
        last = self.levels - 1
        return (y * last).round().clamp(0, last) / last
