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
* :func:`bits_per_dim`: the bound on the discrete 8-bit likelihood from a dequantized density;
  :func:`exact_bits_per_dim` for a probability mass function over the levels themselves;
  :func:`bits_per_dim_figures` picks the one that applies (:func:`bits_per_dim_basis`).

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
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.infer.elbo import ELBO
from torch.distributions import constraints, kl_divergence
from tqdm.auto import tqdm

from pyro_vae.eval.memory import Allocations
from pyro_vae.eval.noise import STREAM_ELBO, CounterNoise
from pyro_vae.infer import ImportanceWeightedELBO, make_estimator, mean_field_refusal
from pyro_vae.models import evaluation_mode, latent_sites, observed_sites, traces
from pyro_vae.models.discretized_logistic import LevelGrid
from pyro_vae.models.protocol import base_distribution, check_inputs, check_shape, data_plate_of

#: Default memory budget for one chunk of particles x datapoints.
DEFAULT_MEMORY_BUDGET_MB = 1024.0


def _stand_in(model, inputs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, tuple]:
    """One datapoint of zeros and the first row of each input: for reading a model's structure
    (run with validation off; the values do not matter)."""
    ref = next(model.parameters())
    return ref.new_zeros(1, *model.event_shape), tuple(t[:1] for t in inputs)


def bytes_per_pair(model, inputs: Sequence[torch.Tensor] = ()) -> int:
    """Estimated peak bytes of one (particle x datapoint) pair in the importance sampler.

    Every tensor that the log weights of one datapoint allocate is counted (whatever op made
    it: a network layer, a likelihood's log density, a mixture prior's per-component terms), as
    the difference between 3 and 2 particles, so work done once per call (the encoder's pass
    over the data, a VampPrior's over its pseudo-inputs) is not counted per pair and any model
    is measured, not guessed. Under ``no_grad`` most of these are freed as the next op runs,
    so the sum over-counts: a budget is an upper bound, not a target.

    :param inputs: the extra inputs of a conditional model (their first row is used).
    """
    ref = next(model.parameters())
    x, ins = _stand_in(model, inputs)
    counts = []
    with evaluation_mode(model), pyro.validation_enabled(False):
        with torch.random.fork_rng(devices=[ref.device] if ref.is_cuda else []):
            for k in (2, 3):
                est = ImportanceWeightedELBO(alpha=0.0, num_particles=k)
                with Allocations() as allocated:
                    est.log_weights(model.model, model.guide, x, *ins)  # (k, 1)
                counts.append(allocated.bytes)
    return max(ref.element_size(), counts[1] - counts[0])


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
    vae,
    x: torch.Tensor,
    num_samples: int = 5000,
    *,
    inputs: Sequence[torch.Tensor] = (),
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    seed: int = 0,
    batch_size: int | None = None,
    particle_chunk: int | None = None,
    data_chunk: int | None = None,
    quiet: bool = False,
    data_offset: int = 0,
) -> ImportanceResult:
    r"""Importance-sampled log p(x) per datapoint with the guide as proposal.

    .. math::

        \log \hat p(x_n) = \log \frac{1}{K} \sum_{k=1}^K
            \frac{p(x_n, z_{nk})}{q(z_{nk} \mid x_n)}, \qquad z_{nk} \sim q(z \mid x_n),

    with the log weights from :meth:`ImportanceWeightedELBO.log_weights` (Pyro traces) for
    each chunk of ``k`` particles x ``b`` datapoints, and per datapoint, in float64,
    ``lse <- logaddexp(lse, logsumexp_k log w)`` and the same for ``2 log w``. Finally
    ``log_px = lse - log K`` and ``ESS = exp(2 lse - lse2)``.

    :param vae: any model of :mod:`pyro_vae.models.protocol`.
    :param x: model input ``(N, *event_shape)``, already preprocessed.
    :param num_samples: K (Burda et al. use 5000).
    :param inputs: the model's extra inputs (labels), each ``(N, ...)``.
    :param memory_budget_mb: upper bound for one chunk, through :func:`bytes_per_pair`.
    :param seed: the particles are a function of ``(seed, n, k, d)`` (:class:`CounterNoise`).
    :param batch_size: most datapoints per chunk (default: as many as the budget allows).
    :param particle_chunk: force the particles per chunk (overrides the budget).
    :param data_chunk: force the datapoints per chunk (overrides the budget).
    :param quiet: no progress bar.
    :param data_offset: the index of ``x[0]`` in the whole data set (a shard of it, as each
        rank of a distributed evaluation scores): the particles of datapoint ``n`` are those a
        single process draws for datapoint ``data_offset + n``.

    The VAE's mode and beta are restored afterwards and no parameter changes.

    .. warning:: With beta != 1 the model is evaluated at beta = 1: log p(x) belongs to the
        generative model, not to the training objective.
    """
    check_shape(vae, x, "evaluation")
    check_inputs(vae, inputs, len(x), "evaluation")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    pair_bytes = bytes_per_pair(vae, inputs)
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
            ib = tuple(t[n0:n1] for t in inputs)
            for k0, k1 in chunks(num_samples, k_chunk):
                est = ImportanceWeightedELBO(alpha=0.0, num_particles=k1 - k0)
                noise = CounterNoise(
                    seed,
                    data_offset=data_offset + n0,
                    particle_offset=k0,
                    num_particles=k1 - k0,
                    particle_dim=-est.max_plate_nesting if k1 - k0 > 1 else None,
                    data_plate=data_plate_of(vae),
                )
                log_w, _ = est.log_weights(vae.model, noise(vae.guide), xb, *ib)  # (k, b)
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
    :ivar kl_per_site: ``{site: (N,)}``: the KL term of each latent site, in guide order.
    :ivar kl_kind: ``{site: "analytic" | "monte-carlo"}``: how each site's KL was estimated.
    :ivar kl_per_dim: ``(N, L)``: the analytic ``KL(q(z_d | ...) || p(z_d | ...))`` per latent
        dimension (the sites' events flattened and concatenated in guide order); ``nan`` for
        the dimensions of a site whose KL is a Monte Carlo estimate (it does not split by
        dimension).
    """

    recon: torch.Tensor  # (N,)
    kl_per_site: dict[str, torch.Tensor]  # {site: (N,)}
    kl_kind: dict[str, str]
    kl_per_dim: torch.Tensor  # (N, L)
    num_particles: int

    @property
    def kl(self) -> torch.Tensor:
        """``(N,)`` the KL term, summed over the latent sites."""
        return sum(self.kl_per_site.values(), torch.zeros_like(self.recon))

    @property
    def elbo(self) -> torch.Tensor:
        """``(N,)`` ELBO = recon - KL."""
        return self.recon - self.kl


def _analytic_kl(q, p) -> torch.Tensor | None:
    """``KL(q || p)`` per dimension (``Independent`` unwrapped), or ``None`` if torch has no
    closed form for the pair."""
    try:
        return kl_divergence(base_distribution(q), base_distribution(p))
    except NotImplementedError:
        return None


def elbo_terms(
    vae,
    x: torch.Tensor,
    num_particles: int = 100,
    *,
    inputs: Sequence[torch.Tensor] = (),
    seed: int = 0,
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    batch_size: int | None = None,
    quiet: bool = False,
    data_offset: int = 0,
) -> ElboTerms:
    """The ELBO split into its terms, per datapoint, for any model.

    One guide trace per chunk (particles from :class:`CounterNoise`, stream
    :data:`STREAM_ELBO`) and the model replayed against it, under a particle plate:

    * reconstruction: the model trace's observed sites' ``log_prob``, averaged over particles;
    * KL, per latent site: the analytic ``kl_divergence`` of the guide's and the model's
      distributions, per dimension (``Independent`` unwrapped), averaged over the particles'
      values of the sites before it, which is what :class:`~pyro.infer.TraceMeanField_ELBO`
      sums, where a closed form exists and the guide samples the sites in the model's order
      (:func:`~pyro_vae.infer.estimators.mean_field_refusal`); else the Monte Carlo
      ``E_q[log q - log p]`` over the particles. :attr:`ElboTerms.kl_kind` says which.

    So ``elbo = recon - kl`` equals :func:`evaluate_elbo` in expectation, with
    ``num_particles`` times less Monte Carlo variance. ``data_offset``: as in
    :func:`importance_log_px`.
    """
    check_shape(vae, x, "evaluation")
    check_inputs(vae, inputs, len(x), "evaluation")
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    n = len(x)
    k_chunk, b_chunk = choose_chunks(
        num_particles, n, bytes_per_pair(vae, inputs), memory_budget_mb, batch_size
    )
    recon = torch.zeros(n, dtype=torch.float64)
    kl_sum: dict[str, torch.Tensor] = {}  # {site: (N,) sum over particles}
    per_dim: dict[str, list[torch.Tensor]] = {}  # {site: [(b, d) sum over particles]}
    kind: dict[str, str] = {}
    events: dict[str, int] = {}  # {site: flattened event size}
    total = math.ceil(n / b_chunk) * math.ceil(num_particles / k_chunk)
    with (
        evaluation_mode(vae),
        tqdm(total=total, desc="ELBO terms", disable=quiet, dynamic_ncols=True) as bar,
    ):
        for n0, n1 in chunks(n, b_chunk):
            xb, ib = x[n0:n1], tuple(t[n0:n1] for t in inputs)
            dims_chunk: dict[str, torch.Tensor] = {}
            for k0, k1 in chunks(num_particles, k_chunk):
                noise = CounterNoise(
                    seed, data_offset=data_offset + n0, particle_offset=k0,
                    num_particles=k1 - k0,
                    particle_dim=-2, data_plate=data_plate_of(vae), stream=STREAM_ELBO,
                )  # fmt: skip
                with pyro.plate("elbo_particles", k1 - k0, dim=-2):
                    guide_tr = poutine.trace(noise(vae.guide)).get_trace(xb, *ib)
                    replayed = poutine.replay(vae.model, trace=guide_tr)
                    model_tr = poutine.trace(replayed).get_trace(xb, *ib)
                if not kind:
                    ordered = mean_field_refusal(guide_tr, model_tr) is None
                for site in observed_sites(model_tr):
                    log_lik = site["fn"].log_prob(site["value"]).reshape(-1, n1 - n0)  # (k, b)
                    recon[n0:n1] += log_lik.to(torch.float64).sum(0).cpu()
                for site in latent_sites(guide_tr):
                    name, prior = site["name"], model_tr.nodes[site["name"]]
                    kl = _analytic_kl(site["fn"], prior["fn"]) if ordered else None
                    kind.setdefault(name, "monte-carlo" if kl is None else "analytic")
                    events[name] = math.prod(site["fn"].event_shape)
                    if kl is None:
                        log_q = site["fn"].log_prob(site["value"])
                        kl = log_q - prior["fn"].log_prob(prior["value"])
                        kl = kl.reshape(-1, n1 - n0, 1)  # (k, b, 1)
                    else:
                        kl = kl.reshape(-1, n1 - n0, math.prod(site["fn"].event_shape))
                    kl = kl.to(torch.float64).sum(0).cpu()  # (b, d) summed over particles
                    dims_chunk[name] = dims_chunk.get(name, 0) + kl
                bar.update()
            for name, kl in dims_chunk.items():
                per_dim.setdefault(name, []).append(kl / num_particles)
    for name, parts in per_dim.items():
        kl_sum[name] = torch.cat(parts).sum(-1)
        if kind[name] == "monte-carlo":  # no split by dimension
            per_dim[name] = [torch.full((n, events[name]), math.nan, dtype=torch.float64)]
    return ElboTerms(
        recon=recon / num_particles,
        kl_per_site=kl_sum,
        kl_kind=kind,
        kl_per_dim=torch.cat([torch.cat(parts) for parts in per_dim.values()], -1),
        num_particles=num_particles,
    )


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


def exact_bits_per_dim(log_px: float, num_dims: int) -> float:
    r"""Bits per dimension of a probability mass function over the 8-bit levels themselves
    (``discretized-logistic``): ``-log2 P(x) / D = -log_px / (D ln 2)``, exact, with no
    dequantization gap. ``log_px`` is the log-probability of the levels in nats per datapoint
    (the importance-sampled estimate is a lower bound in expectation, so the figure is an
    upper bound in expectation, as for :func:`bits_per_dim`)."""
    return -log_px / (num_dims * math.log(2))


#: ``bits_per_dim_kind``: bits/dim of a pmf over the levels, :func:`exact_bits_per_dim`
BITS_EXACT = "exact"
#: ``bits_per_dim_kind``: bits/dim of a density on dequantized levels, :func:`bits_per_dim`
BITS_DEQUANTIZED = "dequantization-bound"


def base_support(fn) -> constraints.Constraint:
    """The support of one dimension of a distribution: under its ``Independent`` wrappers."""
    support = base_distribution(fn).support
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support


def is_level_pmf(fn) -> bool:
    """Whether an observation distribution is a probability mass function over quantized
    levels (its support a :class:`~pyro_vae.models.discretized_logistic.LevelGrid`)."""
    return isinstance(base_support(fn), LevelGrid)


def bits_per_dim_basis(
    vae, dequantized: bool, inputs: Sequence[torch.Tensor] = (), binarized: bool = False
) -> tuple[str | None, str | None]:
    """How bits/dim of ``vae`` on data so prepared is computed: ``(kind, reason)``.

    ``kind`` is :data:`BITS_EXACT` when every observed site is a probability mass function
    over the levels (:class:`~pyro_vae.models.discretized_logistic.LevelGrid`) of data that
    were not binarized, :data:`BITS_DEQUANTIZED` when every one is a density and the data
    were dequantized 8-bit levels, else ``None`` with ``reason`` saying why bits/dim is not
    reported (another discrete distribution gives log-probabilities of binarized data; data
    that were not dequantized 8-bit levels have no bin width).
    """
    x, ins = _stand_in(vae, inputs)
    with evaluation_mode(vae), pyro.validation_enabled(False):
        with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
            trace = poutine.trace(vae.model).get_trace(x, *ins)
    sites = list(observed_sites(trace))
    if sites and all(is_level_pmf(site["fn"]) for site in sites):
        if binarized:
            return None, (
                "the data were binarized: log p(x) is the log-probability of binarized draws, "
                "not of the 8-bit levels"
            )
        return BITS_EXACT, None
    for site in sites:
        if site["fn"].support.is_discrete:
            what = type(base_distribution(site["fn"])).__name__.lstrip("_")
            return None, (
                f"the observation {site['name']!r} ({what}) is discrete: log p(x) is already a "
                f"log-probability of the (binarized) data, not of 8-bit levels"
            )
    if not dequantized:
        return None, (
            "the data were not dequantized 8-bit levels, so there is no bin width to account for"
        )
    return BITS_DEQUANTIZED, None


def bits_per_dim_reason(vae, dequantized: bool, inputs: Sequence[torch.Tensor] = ()) -> str | None:
    """Why the dequantization bound :func:`bits_per_dim` does not apply to ``vae`` on data so
    prepared (``None``: it does); see :func:`bits_per_dim_basis`, which also gives the exact
    bits/dim of a pmf over the levels."""
    kind, reason = bits_per_dim_basis(vae, dequantized, inputs)
    if kind == BITS_EXACT:
        return (
            "the observation is a probability mass function over the 8-bit levels: its "
            "bits/dim is exact (exact_bits_per_dim), with no dequantization bound"
        )
    return reason


def bits_per_dim_figures(
    vae,
    log_px: float,
    log_px_se: float,
    *,
    dequantized: bool,
    binarized: bool = False,
    inputs: Sequence[torch.Tensor] = (),
) -> dict:
    """The bits/dim keys of ``summary.json``: ``bits_per_dim`` and ``bits_per_dim_se`` (lower
    is better), ``bits_per_dim_kind`` (:data:`BITS_EXACT`, :data:`BITS_DEQUANTIZED`, or
    ``None``) and ``bits_per_dim_reason`` (why there is none)."""
    kind, reason = bits_per_dim_basis(vae, dequantized, inputs, binarized)
    num_dims = math.prod(vae.event_shape)
    value = {BITS_EXACT: exact_bits_per_dim, BITS_DEQUANTIZED: bits_per_dim}.get(kind)
    return {
        "bits_per_dim": None if value is None else value(log_px, num_dims),
        "bits_per_dim_se": None if value is None else log_px_se / (num_dims * math.log(2)),
        "bits_per_dim_kind": kind,
        "bits_per_dim_reason": reason,
    }


def standard_error(values: torch.Tensor) -> float:
    """Standard error of the mean of ``values`` (``nan`` for one value)."""
    n = values.numel()
    return (values.std() / math.sqrt(n)).item() if n > 1 else math.nan


#: particles of the held-out ELBO where the analytic KL does not apply
MC_KL_PARTICLES = 10


def heldout_estimator(vae, x: torch.Tensor, *inputs: torch.Tensor) -> tuple[ELBO, str]:
    """The estimator of a model's held-out ELBO, and how it estimates the KL: one traced pass
    of ``x`` (see :func:`heldout_choice`)."""
    with evaluation_mode(vae), torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        return heldout_choice(traces(vae, x, *inputs))


def heldout_choice(traced) -> tuple[ELBO, str]:
    """The estimator of the held-out ELBO for the model these ``(guide_trace, model_trace)``
    come from.

    ``meanfield`` (Pyro's ``TraceMeanField_ELBO``: the analytic KL at each latent site that
    has one, a Monte Carlo KL at the others) where the guide samples the latent sites in the
    model's order; else ``elbo`` (Monte Carlo KL at every site) with
    :data:`MC_KL_PARTICLES` particles, since the analytic KL would be biased
    (:func:`~pyro_vae.infer.estimators.mean_field_refusal`). ``traced=None`` (no traces:
    the model's parameters are already invalid) gives ``meanfield``.
    """
    if traced is None or mean_field_refusal(*traced) is None:
        return make_estimator("meanfield"), "meanfield: the analytic KL where one exists"
    return (
        make_estimator("elbo", MC_KL_PARTICLES),
        f"elbo: a Monte Carlo KL with {MC_KL_PARTICLES} particles (the guide samples the "
        f"latent sites in another order than the model)",
    )


def evaluate_elbo(
    vae,
    data: torch.Tensor,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 1000,
    *,
    inputs: Sequence[torch.Tensor] = (),
    estimator: ELBO | None = None,
) -> float:
    """ELBO per datapoint in nats (higher is better) of ``data`` under the model.

    With beta = 1 whatever the training objective, and the estimator of
    :func:`heldout_estimator` (unless one is given), so numbers are comparable across
    estimators and warm-up schedules. One sync at the end.

    :param inputs: the model's extra inputs (labels), each ``(N, ...)``.
    """
    if len(data) == 0:
        return math.nan
    if estimator is None:
        with torch.random.fork_rng(devices=[data.device] if data.is_cuda else []):
            probe = preprocess(data[:2]), *(t[:2] for t in inputs)
        estimator, _ = heldout_estimator(vae, *probe)
    total = torch.zeros((), device=data.device)
    with evaluation_mode(vae):  # eval(), beta = 1, no_grad, validation on; restored after
        for i in range(0, len(data), batch_size):
            x = preprocess(data[i : i + batch_size])  # (b, *event_shape)
            batch = tuple(t[i : i + batch_size] for t in inputs)
            total += estimator.differentiable_loss(vae.model, vae.guide, x, *batch)
    return -(total / len(data)).item()
