"""ELBO estimators, chosen by name, each turning a (model, guide) pair into a loss.

Every estimator is a member of Pyro's :class:`~pyro.infer.elbo.ELBO` family and exposes
``differentiable_loss(model, guide, *args)``: minus the bound, **summed** over the ``data``
plate, as a tensor that autograd differentiates. So it works with a plain torch optimizer, or
in Pyro's module style ``estimator(model, guide)(x)``.

========== ============================================================== ==========
name       estimator                                                      beta != 1
========== ============================================================== ==========
elbo       :class:`~pyro.infer.Trace_ELBO`, Monte Carlo KL                yes
meanfield  :class:`~pyro.infer.TraceMeanField_ELBO`, analytic KL          yes
iwae       :class:`ImportanceWeightedELBO`, alpha = 0 (Burda et al.)      no
renyi      :class:`ImportanceWeightedELBO`, Renyi alpha (Li & Turner)     no
========== ============================================================== ==========

Pyro's own ``RenyiELBO`` is not used: it has no ``differentiable_loss`` and takes the
log-sum-exp over particles of the *whole batch's* scaled log weight, not per datapoint.
``JitTraceMeanField_ELBO`` is not exposed: in Pyro 1.9.2 its cache check tests the wrong
attribute, so it re-traces on every step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.elbo import ELBO
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import is_validation_enabled
from pyro.util import check_if_enumerated

from pyro_vae.registry import Registry


class ImportanceWeightedELBO(ELBO):
    r"""Importance-weighted (Renyi) bound, per datapoint, with a differentiable loss.

    For each datapoint ``x_n`` and ``K`` particles ``z_k ~ q(z | x_n)`` with log weights
    ``log w_k = log p(x_n, z_k) - log q(z_k | x_n)``:

    .. math::

        \mathcal{L}_\alpha(x_n) = \frac{1}{1 - \alpha}
            \log \frac{1}{K} \sum_{k=1}^K w_k^{1 - \alpha},

    which is the IWAE bound for ``alpha = 0`` and tends to the ELBO as ``alpha -> 1``. The
    log-mean-exp runs over particles separately for every datapoint; the bounds are then summed
    over the ``data`` plate (times the plate's subsampling scale, if any).

    Particles are always vectorized. Gradients are pathwise (reparameterized); the guide must
    be fully reparameterizable.

    :param float alpha: Renyi order, ``alpha != 1``. ``alpha = 0``: IWAE, a lower bound on
        log p(x) that grows with K. ``0 < alpha < 1``: a lower bound between ELBO and IWAE.
        ``alpha < 0``: no longer a lower bound.
    :param int num_particles: K.
    :param int max_plate_nesting: plates in the model besides the particle plate (1 for the
        ``data`` plate of :class:`~pyro_vae.model.VAE`).

    .. warning:: A KL weight (beta) has no meaning inside the log-mean-exp: every site must carry
        the same scale. A model run with ``beta != 1`` is refused with a ``ValueError``.

    References:

    [1] Y. Burda, R. Grosse, R. Salakhutdinov, *Importance Weighted Autoencoders*, ICLR 2016.

    [2] Y. Li, R. E. Turner, *Renyi Divergence Variational Inference*, NeurIPS 2016.
    """

    def __init__(self, alpha: float = 0.0, num_particles: int = 5, max_plate_nesting: int = 1):
        if alpha == 1:
            raise ValueError("alpha = 1 is the ELBO; use the 'elbo' or 'meanfield' estimator")
        self.alpha = float(alpha)
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
        )

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = get_importance_trace(
            "flat", self.max_plate_nesting, model, guide, args, kwargs
        )
        if is_validation_enabled():
            check_if_enumerated(guide_trace)
        return model_trace, guide_trace

    def log_weights(self, model, guide, *args, **kwargs) -> tuple[torch.Tensor, float]:
        """Log importance weights per particle and datapoint.

        :returns: ``(log_w, scale)``: ``log_w`` shaped ``(K, batch)``, and the common scale of the
            sites (the data plate's subsampling factor, 1 without subsampling).
        """
        model_trace, guide_trace = next(self._get_traces(model, guide, args, kwargs))
        nesting = self.max_plate_nesting  # includes the particle plate when K > 1
        particle_dim = -nesting if self.num_particles > 1 else None
        sites = [
            (site, sign)
            for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0))
            for site in trace.nodes.values()
            if site["type"] == "sample"
        ]
        scales = {site["name"]: site["scale"] for site, _ in sites}
        if len(set(scales.values())) > 1 or any(site["mask"] is not None for site, _ in sites):
            raise ValueError(
                f"the {self._name} bound has no KL weight: every site must carry the same scale "
                f"and no mask, but the scales are {scales} (beta != 1?). Use beta = 1, or the "
                f"elbo or meanfield estimator for a beta-VAE."
            )
        log_w = 0.0
        for site, sign in sites:
            if sign < 0 and not site["fn"].has_rsample:
                raise NotImplementedError(
                    f"{self._name} needs a reparameterizable guide; site {site['name']!r} "
                    f"({type(site['fn']).__name__}) has no rsample"
                )
            log_w = log_w + sign * _per_datapoint(site, nesting, particle_dim)
        scale = next(iter(scales.values()), 1.0)
        log_w = torch.as_tensor(log_w)
        if particle_dim is None:
            log_w = log_w.unsqueeze(0)  # (1, batch)
        return log_w, scale

    @property
    def _name(self) -> str:
        return "iwae" if self.alpha == 0 else f"renyi (alpha={self.alpha})"

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """Minus the bound summed over the data plate, differentiable."""
        log_w, scale = self.log_weights(model, guide, *args, **kwargs)  # (K, batch)
        a = 1.0 - self.alpha
        bound = (torch.logsumexp(a * log_w, dim=0) - math.log(log_w.shape[0])) / a  # (batch,)
        return -bound.sum() * scale

    def loss(self, model, guide, *args, **kwargs) -> float:
        """Minus the bound, as a float."""
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Minus the bound; back-propagates it (for :class:`~pyro.infer.SVI`)."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward(retain_graph=self.retain_graph)
        return loss.item()


def _per_datapoint(site: dict, nesting: int, particle_dim: int | None) -> torch.Tensor:
    """A site's unscaled log density summed to ``(K or 1, batch or 1)``.

    Sites may lie only in the particle plate and one data plate; anything else (a global
    latent, a nested plate) has no per-datapoint importance weight.
    """
    frames = [f for f in site["cond_indep_stack"] if f.vectorized and f.dim != particle_dim]
    if len(frames) != 1:
        raise NotImplementedError(
            f"importance-weighted bounds need every sample site in exactly one data plate; site "
            f"{site['name']!r} is in plates {[f.name for f in frames]}"
        )
    data_dim = frames[0].dim
    lp = site["unscaled_log_prob"]
    lp = lp.reshape((1,) * (nesting - lp.dim()) + lp.shape)  # right-align to all plate dims
    keep = [nesting + data_dim] if particle_dim is None else [0, nesting + data_dim]
    other = [d for d in range(nesting) if d not in keep]
    if other:
        lp = lp.sum(other)  # size-1 dims only: no other plates by the check above
    return lp


@dataclass(frozen=True)
class EstimatorSpec:
    """A registered estimator: how to build it and what it supports."""

    name: str
    factory: Callable[..., ELBO]
    description: str
    #: whether a KL weight beta != 1 is meaningful for this estimator
    supports_beta: bool = True


ESTIMATORS: Registry[EstimatorSpec] = Registry("estimator")


def _register(spec: EstimatorSpec) -> None:
    ESTIMATORS.register(spec.name)(spec)


def _trace_elbo(cls):
    def factory(num_particles=1, max_plate_nesting=1, **unused):
        return cls(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=num_particles > 1,
        )

    return factory


_register(EstimatorSpec("elbo", _trace_elbo(Trace_ELBO), "Trace_ELBO: Monte Carlo KL"))
_register(
    EstimatorSpec(
        "meanfield", _trace_elbo(TraceMeanField_ELBO), "TraceMeanField_ELBO: analytic KL"
    )
)
_register(
    EstimatorSpec(
        "iwae",
        lambda num_particles=1, max_plate_nesting=1, **unused: ImportanceWeightedELBO(
            0.0, num_particles, max_plate_nesting
        ),
        "importance-weighted bound (IWAE), log-mean-exp over K particles per datapoint",
        supports_beta=False,
    )
)
_register(
    EstimatorSpec(
        "renyi",
        lambda num_particles=1, max_plate_nesting=1, alpha=0.5, **unused: ImportanceWeightedELBO(
            alpha, num_particles, max_plate_nesting
        ),
        "Renyi alpha bound per datapoint (alpha = 0: IWAE; alpha -> 1: ELBO)",
        supports_beta=False,
    )
)


def make_estimator(
    name: str,
    num_particles: int = 1,
    *,
    alpha: float | None = None,
    max_plate_nesting: int = 1,
) -> ELBO:
    """Build the estimator registered as ``name``.

    :param num_particles: Monte Carlo particles (vectorized when > 1); K for ``iwae``/``renyi``.
    :param alpha: Renyi order for ``renyi`` (default 0.5).
    :raises UnknownNameError: listing valid names.
    """
    spec = ESTIMATORS.get(name)
    if int(num_particles) < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    options = {} if alpha is None else {"alpha": alpha}
    return spec.factory(
        num_particles=int(num_particles), max_plate_nesting=max_plate_nesting, **options
    )


def check_beta(name: str, beta: float, warmup: bool = False) -> None:
    """Refuse a KL weight the estimator ``name`` cannot honour (before any training)."""
    spec = ESTIMATORS.get(name)
    if not spec.supports_beta and (beta != 1.0 or warmup):
        raise ValueError(
            f"the {name} estimator is a bound on log p(x) and has no KL weight: use beta = 1 "
            f"and no warm-up, or the elbo or meanfield estimator for a beta-VAE"
        )
