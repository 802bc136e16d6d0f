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
stl        :class:`StickingTheLandingELBO`, path derivative (Roeder)      yes
dreg       :class:`DReGELBO`, IWAE with DReG gradients (Tucker et al.)    no
========== ============================================================== ==========

``stl`` and ``dreg`` change only the gradient: their values are ``elbo``'s and ``iwae``'s for
the same sample. Pyro itself has neither (pyro-ppl/pyro issue 2598).

Pyro's own ``RenyiELBO`` computes the same bound: with vectorized particles its log-sum-exp
runs over the particles of each datapoint, and on the same draws its loss equals ours (a tested
identity). It is not used because it has no ``differentiable_loss`` (so no torch optimizer, no
recorded graph, no ``estimator(model, guide)(x)``), and because evaluation and DReG need the
per-particle, per-datapoint log weights that :meth:`ImportanceWeightedELBO.log_weights`
returns.
``JitTraceMeanField_ELBO`` is not exposed: in Pyro 1.9.2 its cache check tests the wrong
attribute, so it re-traces on every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pyro.distributions as dist
import torch
from pyro.distributions.util import scale_and_mask
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer.elbo import ELBO, ELBOModule
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.poutine.util import site_is_subsample
from pyro.util import check_if_enumerated
from torch import nn

from pyro_vae.registry import Registry


class ProgramsModule(ELBOModule):
    """Pyro's :class:`~pyro.infer.elbo.ELBOModule` (``estimator(model, guide)``) for programs
    that are methods of a module, as a model's ``model`` and ``guide`` are: the module is
    registered, so ``parameters()`` yields every parameter the programs use."""

    def __init__(self, model, guide, elbo: ELBO):
        super().__init__(model, guide, elbo)
        owners: list[nn.Module] = []
        for program in (model, guide):
            owner = getattr(program, "__self__", None)
            if isinstance(owner, nn.Module) and all(owner is not o for o in owners):
                owners.append(owner)
        self.owners = nn.ModuleList(owners)


class SeesModules:
    """Mixin for Pyro's ELBOs: ``estimator(model.model, model.guide)`` is a
    :class:`ProgramsModule`, whose ``parameters()`` are the model's."""

    def __call__(self, model, guide) -> ProgramsModule:
        return ProgramsModule(model, guide, self)


class TraceELBO(SeesModules, Trace_ELBO):
    """Pyro's :class:`~pyro.infer.Trace_ELBO` (``elbo``), unchanged but for
    :class:`SeesModules`."""


class TraceMeanFieldELBO(SeesModules, TraceMeanField_ELBO):
    """Pyro's :class:`~pyro.infer.TraceMeanField_ELBO` (``meanfield``), unchanged but for
    :class:`SeesModules`."""


class ImportanceWeightedELBO(SeesModules, ELBO):
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
        ``data`` plate of :class:`~pyro_vae.models.VAE`).

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
        log_w, scale, _, _ = self._traced_log_weights(model, guide, args, kwargs)
        return log_w, scale

    def _traced_log_weights(self, model, guide, args, kwargs, detach_guide: bool = False):
        """:meth:`log_weights` with the guide trace and the particle dim it came from.

        :param detach_guide: evaluate each guide site's log density with its distribution's
            parameters detached (:func:`detach_params`): the same values, but gradients reach
            the guide's parameters only through the sampled ``z``.
        :returns: ``(log_w, scale, guide_trace, particle_dim)``.
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
        # keyed by side too: the model's and the guide's `z` must both be checked
        scales = {
            f"{'model' if sign > 0 else 'guide'} {site['name']}": site["scale"]
            for site, sign in sites
        }
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
            if sign < 0 and detach_guide:
                lp = detach_site(site, self._name).log_prob(site["value"])
                site = {**site, "unscaled_log_prob": lp}
            log_w = log_w + sign * _per_datapoint(site, nesting, particle_dim)
        scale = next(iter(scales.values()), 1.0)
        log_w = torch.as_tensor(log_w)
        if particle_dim is None:
            log_w = log_w.unsqueeze(0)  # (1, batch)
        return log_w, scale, guide_trace, particle_dim

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


def detach_params(fn: torch.distributions.Distribution) -> torch.distributions.Distribution:
    """The same distribution with its parameters cut from the autograd graph.

    Its log density at a reparameterized sample ``z`` then carries gradient to the guide's
    parameters only through ``z`` (the path derivative), not through the parameters directly
    (the score). Supported: ``Normal`` and ``Independent`` of a supported distribution (the
    guide family of :class:`~pyro_vae.models.VAE`).

    :raises NotImplementedError: for any other distribution; a generic copy could keep a
        cached, still attached parameter (``MultivariateNormal``'s Cholesky factor, say) and
        give a silently wrong gradient.
    """
    if isinstance(fn, torch.distributions.Independent):
        return type(fn)(detach_params(fn.base_dist), fn.reinterpreted_batch_ndims)
    if type(fn) in (torch.distributions.Normal, dist.Normal):
        return type(fn)(fn.loc.detach(), fn.scale.detach())
    raise NotImplementedError(
        f"path-derivative estimators (stl, dreg) support Normal and Independent(Normal) guide "
        f"sites, not {type(fn).__name__}"
    )


def detach_site(site: dict, estimator: str) -> torch.distributions.Distribution:
    """:func:`detach_params` of a guide site's distribution; a refusal names the site."""
    try:
        return detach_params(site["fn"])
    except NotImplementedError as e:
        raise NotImplementedError(
            f"{estimator}: guide site {site['name']!r}: {e}; use --estimator iwae or elbo"
        ) from None


class StickingTheLandingELBO(TraceELBO):
    r"""The ELBO with the sticking-the-landing (path derivative) gradient.

    The value is exactly :class:`~pyro.infer.Trace_ELBO`'s for the same sample,

    .. math::

        \mathcal{L}(x) = \mathbb{E}_{q_\phi(z \mid x)}\left[\log p_\theta(x, z)
            - \log q_\phi(z \mid x)\right],

    but the guide's log density in the surrogate is evaluated with the guide distribution's
    parameters detached (:func:`detach_params`), at the reparameterized ``z = z(eps, phi)``. So
    the encoder gradient is the path derivative
    ``d/dz [log p(x, z) - log q_phi(z | x)] dz/dphi`` without the score term
    ``-d/dphi log q_phi(z | x)``, whose expectation is zero. The gradient stays unbiased, and it
    is exactly zero for every sample when ``q`` equals the posterior, where the usual
    reparameterization gradient still has variance. Model (decoder) gradients are
    :class:`~pyro.infer.Trace_ELBO`'s. ``num_particles`` averages as for ``Trace_ELBO``.

    A KL weight (``beta != 1``) works as for ``Trace_ELBO``: the sites' scales (and masks)
    apply to the detached log density too.

    .. warning:: Every guide site must be reparameterizable (``has_rsample``) and a ``Normal``
        or ``Independent(Normal)``; otherwise :class:`NotImplementedError`.

    .. warning:: The path derivative is unbiased for a guide whose latent sites do not depend on
        each other (the amortized mean-field guide of :class:`~pyro_vae.models.VAE`). For a
        hierarchical guide the detached parameters also cut the dependence of one site's
        parameters on an earlier site's value, and the gradient is biased.

    References:

    [1] G. Roeder, Y. Wu, D. Duvenaud, *Sticking the Landing: Simple, Lower-Variance Gradient
    Estimators for Variational Inference*, NeurIPS 2017.
    """

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        elbo_particle = 0.0
        surrogate_elbo_particle = 0.0
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                elbo_particle = elbo_particle + torch_item(site["log_prob_sum"])
                surrogate_elbo_particle = surrogate_elbo_particle + site["log_prob_sum"]
        for site in guide_trace.nodes.values():
            if site["type"] != "sample":
                continue
            if not site["fn"].has_rsample:
                raise NotImplementedError(
                    f"stl needs a reparameterizable guide; site {site['name']!r} "
                    f"({type(site['fn']).__name__}) has no rsample"
                )
            elbo_particle = elbo_particle - torch_item(site["log_prob_sum"])
            log_q = detach_site(site, "stl").log_prob(site["value"])  # no score term
            log_q = scale_and_mask(log_q, site["scale"], site["mask"])
            surrogate_elbo_particle = surrogate_elbo_particle - log_q.sum()
        return -elbo_particle, -surrogate_elbo_particle


class DReGELBO(ImportanceWeightedELBO):
    r"""The IWAE bound with doubly reparameterized gradients (DReG), per datapoint.

    The value is the IWAE bound of :class:`ImportanceWeightedELBO` (``alpha = 0``),
    ``log (1/K) sum_k w_k``, summed over the ``data`` plate. The gradient, with normalized
    weights ``w~_k = w_k / sum_j w_j``:

    * model (decoder) parameters: the IWAE gradient ``sum_k w~_k d/dtheta log w_k``;
    * guide (encoder) parameters: Tucker et al.'s doubly reparameterized estimator

      .. math::

          \sum_{k=1}^K \tilde w_k^2 \, \frac{\partial \log w_k}{\partial z_k}
              \frac{\partial z_k}{\partial \phi},

      where ``d log w_k / dz_k`` holds ``phi`` in ``q_phi`` fixed. It has the same
      expectation as the IWAE encoder gradient, and its signal-to-noise ratio does not
      vanish as K grows (the IWAE one falls as ``O(1 / sqrt(K))``, Rainforth et al.).

    How: ``log w_k`` is computed from the traces with the guide's log density at detached
    parameters (:func:`detach_params`), so its value is unchanged and the guide parameters
    are reached only through ``z_k``; differentiating the bound then gives ``w~_k dlog w_k/dz_k``
    at ``z_k``, and a gradient hook on every guide sample value multiplies it by ``w~_k``
    once more. No second pass through the model is needed, and
    :meth:`differentiable_loss` works with a plain torch optimizer over all parameters (or
    ``estimator(model, guide)(x)``). With ``K = 1`` the gradient is
    :class:`StickingTheLandingELBO`'s.

    :param int num_particles: K.
    :param int max_plate_nesting: plates in the model besides the particle plate.

    .. warning:: The guide must be reparameterizable, with ``Normal`` or
        ``Independent(Normal)`` sites whose parameters do not depend on other latent sites
        (as in :class:`~pyro_vae.models.VAE`), and the model must not share parameters with the
        guide: the hook rescales every gradient that reaches ``z``.

    .. warning:: No KL weight: ``beta != 1`` is refused with a ``ValueError``, as for ``iwae``.

    References:

    [1] G. Tucker, D. Lawson, S. Gu, C. J. Maddison, *Doubly Reparameterized Gradient
    Estimators for Monte Carlo Objectives*, ICLR 2019.

    [2] T. Rainforth, A. R. Kosiorek, T. A. Le, C. J. Maddison, M. Igl, F. Wood, Y. W. Teh,
    *Tighter Variational Bounds are Not Necessarily Better*, ICML 2018.
    """

    def __init__(self, num_particles: int = 5, max_plate_nesting: int = 1):
        super().__init__(0.0, num_particles, max_plate_nesting)

    @property
    def _name(self) -> str:
        return "dreg"

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """Minus the IWAE bound summed over the data plate; its gradient is DReG's."""
        log_w, scale, guide_trace, particle_dim = self._traced_log_weights(
            model, guide, args, kwargs, detach_guide=True
        )  # (K, batch); reaches the guide's parameters through z only
        if torch.is_grad_enabled():
            w = torch.softmax(log_w.detach(), dim=0)  # (K, batch) normalized weights
            for site in guide_trace.nodes.values():
                if site["type"] == "sample" and site["value"].requires_grad:
                    w_site = _weight_at_site(w, site, self.max_plate_nesting, particle_dim)
                    site["value"].register_hook(lambda g, w_site=w_site: g * w_site)
        bound = torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])  # (batch,)
        return -bound.sum() * scale


def _weight_at_site(w: torch.Tensor, site: dict, nesting: int, particle_dim: int | None):
    """``w`` ``(K or 1, batch)`` reshaped to broadcast against the site's value."""
    frames = [f for f in site["cond_indep_stack"] if f.vectorized and f.dim != particle_dim]
    value = site["value"]
    batch_ndim = value.dim() - site["fn"].event_dim
    shape = [1] * value.dim()
    shape[batch_ndim + frames[0].dim] = w.shape[1]
    if particle_dim is not None:
        shape[batch_ndim + particle_dim] = w.shape[0]
    return w.reshape(shape)


@dataclass(frozen=True)
class EstimatorSpec:
    """A registered estimator: how to build it and what it supports."""

    name: str
    factory: Callable[..., ELBO]
    description: str
    #: whether a KL weight beta != 1 is meaningful for this estimator
    supports_beta: bool = True
    #: ``(guide_trace, model_trace) -> why the estimator does not apply, or None``, checked
    #: on one batch before the first step (see :func:`estimator_refusal`)
    requirements: tuple[Callable, ...] = ()


ESTIMATORS: Registry[EstimatorSpec] = Registry("estimator")


def _register(spec: EstimatorSpec) -> None:
    ESTIMATORS.add(spec.name, spec)


def _trace_elbo(cls):
    def factory(num_particles=1, max_plate_nesting=1, **unused):
        return cls(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=num_particles > 1,
        )

    return factory


# ----------------------------------------------------------------------- what each needs


def _latent(trace) -> list[dict]:
    return [
        site
        for site in trace.nodes.values()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]


def mean_field_refusal(guide_trace, model_trace) -> str | None:
    """The analytic KL of ``TraceMeanField_ELBO`` needs the guide to sample the latent sites in
    the model's order (Pyro's mean-field condition: each KL is taken at the values the sites
    before it drew). Pyro only warns when it fails; the bound is then biased."""
    guide_order = [s["name"] for s in _latent(guide_trace)]
    model_order = [s["name"] for s in _latent(model_trace) if s["name"] in guide_order]
    if guide_order == model_order:
        return None
    return (
        f"the guide samples the latent sites in the order {guide_order} but the model in "
        f"{model_order}, so the analytic KL would be biased"
    )


def reparameterized_refusal(guide_trace, model_trace) -> str | None:
    """Pathwise gradients need ``rsample`` at every latent site of the guide."""
    for site in _latent(guide_trace):
        if not site["fn"].has_rsample:
            return f"guide site {site['name']!r} ({type(site['fn']).__name__}) has no rsample"
    return None


def path_derivative_refusal(guide_trace, model_trace) -> str | None:
    """The path derivative (stl, dreg) evaluates each guide site at detached parameters: each
    site must be detachable, and its parameters must not depend on another latent site's
    value (detaching them would cut that dependence, and bias the gradient). The dependence
    is read with autograd where the traces kept a graph."""
    sites = _latent(guide_trace)
    for site in sites:
        try:
            detach_params(site["fn"])
        except NotImplementedError as e:
            return f"guide site {site['name']!r}: {e}"
    why = reparameterized_refusal(guide_trace, model_trace)
    if why is not None:
        return why
    for j, site in enumerate(sites):
        earlier = [s for s in sites[:j] if s["value"].requires_grad]
        log_q = site["fn"].log_prob(site["value"].detach()).sum()
        if not earlier or not log_q.requires_grad:
            continue
        values = [s["value"] for s in earlier]
        # the traces stay readable for the next requirement (one probe serves them all)
        grads = torch.autograd.grad(log_q, values, allow_unused=True, retain_graph=True)
        for s, g in zip(earlier, grads):
            if g is not None:
                return (
                    f"guide site {site['name']!r} depends on {s['name']!r}: detaching its "
                    f"parameters would cut that dependence and bias the gradient"
                )
    return None


def per_datapoint_refusal(guide_trace, model_trace) -> str | None:
    """Importance weights per datapoint need every sample site in exactly one data plate."""
    for trace in (model_trace, guide_trace):
        for site in trace.nodes.values():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            frames = [f for f in site["cond_indep_stack"] if f.vectorized]
            if len(frames) != 1:
                return (
                    f"site {site['name']!r} is in plates {[f.name for f in frames]}: a "
                    f"per-datapoint bound needs every site in exactly one data plate"
                )
    return None


_register(EstimatorSpec("elbo", _trace_elbo(TraceELBO), "Trace_ELBO: Monte Carlo KL"))
_register(
    EstimatorSpec(
        "meanfield",
        _trace_elbo(TraceMeanFieldELBO),
        "TraceMeanField_ELBO: analytic KL",
        requirements=(mean_field_refusal,),
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
        requirements=(per_datapoint_refusal, reparameterized_refusal),
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
        requirements=(per_datapoint_refusal, reparameterized_refusal),
    )
)
_register(
    EstimatorSpec(
        "stl",
        _trace_elbo(StickingTheLandingELBO),
        "Trace_ELBO with the sticking-the-landing (path derivative) gradient",
        requirements=(path_derivative_refusal,),
    )
)
_register(
    EstimatorSpec(
        "dreg",
        lambda num_particles=1, max_plate_nesting=1, **unused: DReGELBO(
            num_particles, max_plate_nesting
        ),
        "IWAE bound with doubly reparameterized (DReG) encoder gradients",
        supports_beta=False,
        requirements=(per_datapoint_refusal, path_derivative_refusal),
    )
)

#: what to use instead of an estimator that does not apply to a model
_INSTEAD = {"meanfield": "elbo", "stl": "elbo", "dreg": "iwae", "iwae": "elbo", "renyi": "elbo"}


def estimator_refusal(name: str, guide_trace, model_trace) -> str | None:
    """Why the estimator ``name`` does not apply to the model these traces come from, as a
    sentence that names the site and what to use instead; ``None`` if it applies."""
    for requirement in ESTIMATORS.get(name).requirements:
        why = requirement(guide_trace, model_trace)
        if why is not None:
            instead = _INSTEAD.get(name, "elbo")
            return (
                f"the {name} estimator does not apply to this model: {why}. "
                f"Use --estimator {instead}"
            )
    return None


def make_estimator(
    name: str,
    num_particles: int = 1,
    *,
    alpha: float | None = None,
    max_plate_nesting: int = 1,
) -> ELBO:
    """Build the estimator registered as ``name``.

    :param num_particles: Monte Carlo particles (vectorized when > 1); K for ``iwae``, ``renyi``
        and ``dreg``.
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
