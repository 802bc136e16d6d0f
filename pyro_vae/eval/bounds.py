"""Bounds on log p(x) of a trained model: importance-sampled log p(x), the ELBO and its terms,
bits/dim.

Every number is **per datapoint, in nats, higher is better** (``log_px``, ``elbo``, ``recon``;
``kl`` is the KL term that the ELBO subtracts), and every number comes from the Pyro ``model``
and ``guide``: the importance weights are :meth:`ImportanceWeightedELBO.log_weights` of the
traces, the reconstruction term is the model trace's observed sites, the KL terms are
:func:`torch.distributions.kl_divergence` of the guide's and the model's latent distributions.
Nothing here writes down a density.

* :func:`importance_log_px`: ``log (1/K) sum_k p(x, z_k) / q(z_k | x)``, ``z_k ~ q(z | x)``,
  chunked over particles and data to stay within a memory budget (:func:`choose_chunks`),
  with the effective sample size of the weights.
* :func:`elbo_terms`: reconstruction ``E_q[log p(x | z)]`` and the analytic KL per latent
  dimension.
* :func:`evaluate_elbo`: the held-out ELBO the training loop reports every epoch.
* :func:`bits_per_dim`: the bound on the discrete 8-bit likelihood from a dequantized density.

The guide's particles come from :class:`~pyro_vae.eval.noise.CounterNoise`, so a fixed seed
gives the same particles, and the same estimate up to floating-point summation order, whatever
the chunk sizes.

References:

[1] Y. Burda, R. Grosse, R. Salakhutdinov, *Importance Weighted Autoencoders*, ICLR 2016
(log p(x) with K = 5000).

[2] L. Theis, A. van den Oord, M. Bethge, *A note on the evaluation of generative models*,
ICLR 2016 (dequantization and bits/dim).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample
from torch.distributions import Independent, kl_divergence
from tqdm.auto import tqdm

from pyro_vae.data import Preprocess
from pyro_vae.eval.noise import STREAM_ELBO, CounterNoise
from pyro_vae.infer import ImportanceWeightedELBO, make_estimator
from pyro_vae.models import VAE, evaluation_mode

#: Default memory budget for one chunk of particles x datapoints.
DEFAULT_MEMORY_BUDGET_MB = 1024.0
#: Bytes per (particle x datapoint) are an estimate; this factor keeps the budget honest.
SAFETY_FACTOR = 3


def bytes_per_pair(vae: VAE) -> int:
    """Estimated peak bytes of one (particle x datapoint) pair in the importance sampler.

    ``itemsize x (every decoder activation for one z + 4 D for the likelihood's log density
    temporaries + 6 L for z, log q and log p(z)) x SAFETY_FACTOR``; the activations come from
    one trial forward of the decoder with hooks on its leaf modules, so a custom decoder is
    measured, not guessed. Under ``no_grad`` this over-counts (layers are freed as they go):
    a budget is an upper bound, not a target.
    """
    ref = next(vae.parameters())
    latent = vae.latent_dim
    numel = 0

    def hook(module, inputs, output):
        nonlocal numel
        if isinstance(output, torch.Tensor):
            numel += output.numel()

    leaves = [m for m in vae.decoder.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    was_training = vae.decoder.training
    try:
        vae.decoder.eval()
        with torch.no_grad():
            vae.decoder(ref.new_zeros(1, latent))
    finally:
        for h in handles:
            h.remove()
        vae.decoder.train(was_training)
    dims = math.prod(vae.event_shape)
    return int((numel + 4 * dims + 6 * latent) * ref.element_size() * SAFETY_FACTOR)


def choose_chunks(
    num_samples: int,
    num_data: int,
    pair_bytes: int,
    memory_budget_mb: float,
    max_data_chunk: int | None = None,
) -> tuple[int, int]:
    """``(particle_chunk, data_chunk)`` with ``particle_chunk x data_chunk x pair_bytes`` within
    the budget: all K particles for as many datapoints as fit, else fewer particles for one
    datapoint; at least 1 x 1 whatever the budget."""
    if memory_budget_mb <= 0:
        raise ValueError(f"memory_budget_mb must be > 0, got {memory_budget_mb}")
    pairs = max(1, int(memory_budget_mb * 2**20) // max(1, pair_bytes))
    if pairs < num_samples:
        return pairs, 1
    data = min(pairs // num_samples, max(1, num_data), max_data_chunk or num_data)
    return num_samples, max(1, data)


def chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` of consecutive chunks of ``size`` (the last may be shorter)."""
    for start in range(0, total, size):
        yield start, min(start + size, total)


@dataclass(frozen=True)
class ImportanceResult:
    """What :func:`importance_log_px` returns.

    :ivar log_px: ``(N,)`` float64: log p(x) estimates per datapoint (nats). Each is a
        stochastic lower bound: its expectation is below log p(x) by Jensen's inequality,
        and the gap shrinks as K grows.
    :ivar ess: ``(N,)`` float64: effective sample size of the K weights,
        ``(sum w)^2 / sum w^2`` in ``[1, K]``; K for a perfect guide.
    :ivar particle_chunk: particles per chunk actually used.
    :ivar data_chunk: datapoints per chunk actually used.
    :ivar bytes_per_pair: the memory estimate the chunk sizes came from.
    :ivar chunk_invariant: False if some guide site fell back to the global RNG (see
        :class:`CounterNoise`).
    """

    log_px: torch.Tensor  # (N,)
    ess: torch.Tensor  # (N,)
    num_samples: int
    particle_chunk: int
    data_chunk: int
    bytes_per_pair: int
    chunk_invariant: bool = True

    @property
    def mean(self) -> float:
        """Mean log p(x) over datapoints (nats)."""
        return self.log_px.mean().item()

    @property
    def se(self) -> float:
        """Standard error of :attr:`mean` over datapoints (``nan`` for one datapoint)."""
        return standard_error(self.log_px)

    @property
    def mc_se(self) -> torch.Tensor:
        """``(N,)`` delta-method Monte Carlo standard error of each estimate:
        ``sqrt(1/ESS - 1/K)``, from ``Var(w) / E[w]^2 ~ K/ESS - 1``. Unreliable when the
        weights are heavy-tailed (then ESS is small too)."""
        return (1.0 / self.ess - 1.0 / self.num_samples).clamp(min=0.0).sqrt()

    @property
    def num_chunks(self) -> int:
        n = self.log_px.numel()
        return math.ceil(n / self.data_chunk) * math.ceil(self.num_samples / self.particle_chunk)


def importance_log_px(
    vae: VAE,
    x: torch.Tensor,
    num_samples: int = 5000,
    *,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    seed: int = 0,
    batch_size: int | None = None,
    particle_chunk: int | None = None,
    data_chunk: int | None = None,
    quiet: bool = False,
) -> ImportanceResult:
    r"""Importance-sampled log p(x) per datapoint with the guide as proposal.

    .. math::

        \log \hat p(x_n) = \log \frac{1}{K} \sum_{k=1}^K
            \frac{p(x_n, z_{nk})}{q(z_{nk} \mid x_n)}, \qquad z_{nk} \sim q(z \mid x_n),

    with the log weights from :meth:`ImportanceWeightedELBO.log_weights` (Pyro traces) for
    each chunk of ``k`` particles x ``b`` datapoints, and per datapoint, in float64,
    ``lse <- logaddexp(lse, logsumexp_k log w)`` and the same for ``2 log w``. Finally
    ``log_px = lse - log K`` and ``ESS = exp(2 lse - lse2)``.

    :param x: model input ``(N, *event_shape)``, already preprocessed.
    :param num_samples: K (Burda et al. use 5000).
    :param memory_budget_mb: upper bound for one chunk, through :func:`bytes_per_pair`.
    :param seed: the particles are a function of ``(seed, n, k, d)`` (:class:`CounterNoise`).
    :param batch_size: most datapoints per chunk (default: as many as the budget allows).
    :param particle_chunk: force the particles per chunk (overrides the budget).
    :param data_chunk: force the datapoints per chunk (overrides the budget).
    :param quiet: no progress bar.

    The VAE's mode and beta are restored afterwards and no parameter changes.

    .. warning:: With beta != 1 the model is evaluated at beta = 1: log p(x) belongs to the
        generative model, not to the training objective.
    """
    vae.check_shape(x, "evaluation")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    pair_bytes = bytes_per_pair(vae)
    k_chunk, b_chunk = choose_chunks(num_samples, len(x), pair_bytes, memory_budget_mb, batch_size)
    k_chunk = min(particle_chunk or k_chunk, num_samples)
    b_chunk = min(data_chunk or b_chunk, len(x))
    n = len(x)
    lse = torch.full((n,), -math.inf, dtype=torch.float64, device=x.device)  # log sum w
    lse2 = torch.full((n,), -math.inf, dtype=torch.float64, device=x.device)  # log sum w^2
    fallback: set[str] = set()
    total = math.ceil(n / b_chunk) * math.ceil(num_samples / k_chunk)
    with (
        evaluation_mode(vae),
        tqdm(
            total=total, desc=f"log p(x), K={num_samples}", disable=quiet, dynamic_ncols=True
        ) as bar,
    ):
        for n0, n1 in chunks(n, b_chunk):
            xb = x[n0:n1]  # (b, *event_shape)
            for k0, k1 in chunks(num_samples, k_chunk):
                est = ImportanceWeightedELBO(alpha=0.0, num_particles=k1 - k0)
                noise = CounterNoise(
                    seed,
                    data_offset=n0,
                    particle_offset=k0,
                    num_particles=k1 - k0,
                    particle_dim=-est.max_plate_nesting if k1 - k0 > 1 else None,
                )
                log_w, _ = est.log_weights(vae.model, noise(vae.guide), xb)  # (k, b)
                log_w = log_w.to(torch.float64)
                lse[n0:n1] = torch.logaddexp(lse[n0:n1], torch.logsumexp(log_w, 0))
                lse2[n0:n1] = torch.logaddexp(lse2[n0:n1], torch.logsumexp(2 * log_w, 0))
                fallback |= noise.fallback_sites
                bar.update()
    return ImportanceResult(
        log_px=(lse - math.log(num_samples)).cpu(),
        ess=(2 * lse - lse2).exp().cpu(),
        num_samples=num_samples,
        particle_chunk=k_chunk,
        data_chunk=b_chunk,
        bytes_per_pair=pair_bytes,
        chunk_invariant=not fallback,
    )


# ----------------------------------------------------------------------- ELBO terms


@dataclass(frozen=True)
class ElboTerms:
    """What :func:`elbo_terms` returns; every tensor is float64 on the CPU.

    :ivar recon: ``(N,)``: ``E_q[log p(x | z)]``, a Monte Carlo mean over the particles.
    :ivar kl_per_dim: ``(N, L)``: analytic ``KL(q(z_d | x) || p(z_d))`` per latent dimension
        (the latent sites' events flattened and concatenated in guide order).
    """

    recon: torch.Tensor  # (N,)
    kl_per_dim: torch.Tensor  # (N, L)
    num_particles: int

    @property
    def kl(self) -> torch.Tensor:
        """``(N,)`` KL(q(z | x) || p(z))."""
        return self.kl_per_dim.sum(-1)

    @property
    def elbo(self) -> torch.Tensor:
        """``(N,)`` ELBO = recon - KL."""
        return self.recon - self.kl


def _unwrap(fn):
    """The per-dimension distribution of a site: ``Independent`` wrappers removed."""
    while isinstance(fn, Independent):
        fn = fn.base_dist
    return fn


def elbo_terms(
    vae: VAE,
    x: torch.Tensor,
    num_particles: int = 100,
    *,
    seed: int = 0,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    batch_size: int | None = None,
    quiet: bool = False,
) -> ElboTerms:
    """The ELBO with the analytic KL, split into its terms, per datapoint.

    One guide trace per chunk (particles from :class:`CounterNoise`, stream
    :data:`STREAM_ELBO`) and the model replayed against it, under a particle plate:

    * reconstruction: the model trace's observed sites' ``log_prob``, averaged over particles;
    * KL: ``kl_divergence`` of the guide's and the model's distribution at each latent site,
      per dimension (``Independent`` unwrapped), which is what
      :class:`~pyro.infer.TraceMeanField_ELBO` sums.

    So ``elbo = recon - kl`` equals :func:`evaluate_elbo` in expectation, with
    ``num_particles`` times less Monte Carlo variance in the reconstruction term.
    """
    vae.check_shape(x, "evaluation")
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    n = len(x)
    k_chunk, b_chunk = choose_chunks(
        num_particles, n, bytes_per_pair(vae), memory_budget_mb, batch_size
    )
    recon = torch.zeros(n, dtype=torch.float64)
    kl_parts: list[torch.Tensor] = []
    total = math.ceil(n / b_chunk) * math.ceil(num_particles / k_chunk)
    with (
        evaluation_mode(vae),
        tqdm(total=total, desc="ELBO terms", disable=quiet, dynamic_ncols=True) as bar,
    ):
        for n0, n1 in chunks(n, b_chunk):
            xb = x[n0:n1]  # (b, *event_shape)
            kl_chunk = None
            for k0, k1 in chunks(num_particles, k_chunk):
                noise = CounterNoise(
                    seed,
                    data_offset=n0,
                    particle_offset=k0,
                    num_particles=k1 - k0,
                    particle_dim=-2,
                    stream=STREAM_ELBO,
                )
                with pyro.plate("elbo_particles", k1 - k0, dim=-2):
                    guide_tr = poutine.trace(noise(vae.guide)).get_trace(xb)
                    replayed = poutine.replay(vae.model, trace=guide_tr)
                    model_tr = poutine.trace(replayed).get_trace(xb)
                log_lik = 0.0
                for site in model_tr.nodes.values():
                    if site["type"] == "sample" and site["is_observed"]:
                        log_lik = log_lik + site["fn"].log_prob(site["value"])  # (k, b)
                recon[n0:n1] += torch.as_tensor(log_lik).to(torch.float64).sum(0).cpu()
                if kl_chunk is None:  # the KL does not depend on the particles
                    kl_chunk = _kl_per_dim(guide_tr, model_tr, n1 - n0)
                bar.update()
            kl_parts.append(kl_chunk)
    return ElboTerms(
        recon=recon / num_particles,
        kl_per_dim=torch.cat(kl_parts),
        num_particles=num_particles,
    )


def _kl_per_dim(guide_tr, model_tr, batch: int) -> torch.Tensor:
    """``(b, L)``: analytic KL per latent dimension from the two traces' distributions."""
    parts = []
    for name, site in guide_tr.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or site_is_subsample(site):
            continue
        q, p = _unwrap(site["fn"]), _unwrap(model_tr.nodes[name]["fn"])
        kl = kl_divergence(q, p)  # (k, b, *event) after the plates' expansion
        event = tuple(site["fn"].event_shape)
        kl = kl.reshape(-1, batch, math.prod(event))[0]  # identical over particles
        parts.append(kl.to(torch.float64).cpu())
    return torch.cat(parts, -1)


def bits_per_dim(log_px: float, num_dims: int, levels: int = 256) -> float:
    r"""Bits per dimension of 8-bit data from a density on dequantized data.

    Dequantization maps the levels ``k in {0..255}^D`` to ``x = (k + u) / 256``,
    ``u ~ U[0, 1)^D``, so every level owns a bin of width ``1/256`` per dimension in
    ``[0, 1]^D``. For any density ``p`` on ``[0, 1]^D`` (or on R^D), the bins' masses
    ``P(k) = \int_{bin(k)} p(x) dx`` form a (sub-)normalized pmf, and by Jensen's inequality

    .. math::

        \log P(k) = \log \mathbb{E}_u\left[256^D p\left(\tfrac{k + u}{256}\right)\right]
            \ge \mathbb{E}_u \log p\left(\tfrac{k + u}{256}\right) - D \log 256 .

    With ``log_px`` an estimate of ``E_u log p((k + u)/256)`` (nats, per datapoint, for the
    model's density of the dequantized ``x`` on ``[0, 1]^D``), the discrete negative
    log-likelihood in bits per dimension is at most

    .. math::

        \text{bits/dim} = \frac{-(\log p_x - D \log 256)}{D \ln 2}
                        = 8 - \frac{\log p_x}{D \ln 2}.

    A uniform density on ``[0, 1]^D`` (``log_px = 0``) gives exactly 8 bits/dim. Lower is
    better; the importance-sampled ``log_px`` is itself a lower bound in expectation, so the
    reported bits/dim is an upper bound in expectation.

    :param log_px: nats per datapoint of the dequantized data (the density on ``[0, 1]^D``).
    :param num_dims: D.
    :param levels: quantization levels per dimension (256 for 8-bit data).
    """
    return -(log_px - num_dims * math.log(levels)) / (num_dims * math.log(2))


def bits_per_dim_reason(vae: VAE, dequantized: bool) -> str | None:
    """Why bits/dim of ``vae`` on data so prepared is not reported (``None``: it is)."""
    with evaluation_mode(vae):
        ref = next(vae.parameters())
        params = vae.decoder(ref.new_zeros(1, vae.latent_dim))
        support = vae.likelihood.distribution(params).support
    if support.is_discrete:
        return (
            f"the {vae.likelihood.name or type(vae.likelihood).__name__} likelihood is discrete: "
            f"log p(x) is already a log-probability of the (binarized) data, not of 8-bit levels"
        )
    if not dequantized:
        return "the data were not dequantized 8-bit levels, so there is no bin width to account for"
    return None


def standard_error(values: torch.Tensor) -> float:
    """Standard error of the mean of ``values`` (``nan`` for one value)."""
    n = values.numel()
    return (values.std() / math.sqrt(n)).item() if n > 1 else math.nan


def evaluate_elbo(
    vae: VAE, data: torch.Tensor, preprocess: Preprocess, batch_size: int = 1000
) -> float:
    """ELBO per datapoint in nats (higher is better) of ``data`` under the VAE.

    Uses the analytic-KL estimator with beta = 1 whatever the training objective, so numbers
    are comparable across estimators and warm-up schedules. One sync at the end.
    """
    if len(data) == 0:
        return math.nan
    est = make_estimator("meanfield")
    total = torch.zeros((), device=data.device)
    with evaluation_mode(vae):  # eval(), beta = 1, no_grad, validation on; restored after
        for i in range(0, len(data), batch_size):
            x = preprocess(data[i : i + batch_size])  # (b, *event_shape)
            total += est.differentiable_loss(vae.model, vae.guide, x)
    return -(total / len(data)).item()
