"""Evaluation of a trained VAE: importance-sampled log p(x), the ELBO's terms, active units.

Every number is **per datapoint, in nats, higher is better** (``log_px``, ``elbo``, ``recon``;
``kl`` is the KL term that the ELBO subtracts), and every number comes from the Pyro ``model``
and ``guide``: the importance weights are :meth:`ImportanceWeightedELBO.log_weights` of the
traces, the reconstruction term is the model trace's ``x`` site, the KL terms are
:func:`torch.distributions.kl_divergence` of the guide's and the model's ``z`` distributions.
Nothing here writes down a density.

* :func:`importance_log_px`: ``log (1/K) sum_k p(x, z_k) / q(z_k | x)``, ``z_k ~ q(z | x)``,
  chunked over particles and data to stay within a memory budget, with the effective sample
  size of the weights.
* :func:`elbo_terms`: reconstruction ``E_q[log p(x | z)]`` and the analytic KL per latent
  dimension.
* :func:`active_units`: ``Cov_x(E_q[z_d | x])`` per latent dimension (Burda et al.).
* :func:`bits_per_dim`: the bound on the discrete 8-bit likelihood from a dequantized density.
* :func:`evaluate_run`: all of it for a run directory, written to ``summary.json`` and
  ``report.md`` (what ``pyro-vae evaluate`` runs).

The guide's particles are a function of ``(seed, datapoint index, particle index, latent
dimension)`` only (:class:`CounterNoise`), so a fixed seed gives the same particles, and the
same estimate up to floating-point summation order, whatever the chunk sizes.

References:

[1] Y. Burda, R. Grosse, R. Salakhutdinov, *Importance Weighted Autoencoders*, ICLR 2016
(log p(x) with K = 5000, active units).

[2] L. Theis, A. van den Oord, M. Bethge, *A note on the evaluation of generative models*,
ICLR 2016 (dequantization and bits/dim).

[3] J. K. Salmon, M. A. Moraes, R. O. Dror, D. E. Shaw, *Parallel random numbers: as easy as
1, 2, 3*, SC 2011 (counter-based random numbers).
"""

from __future__ import annotations

import json
import math
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import Independent, kl_divergence
from tqdm.auto import tqdm

from pyro_vae.estimators import ImportanceWeightedELBO
from pyro_vae.model import VAE, evaluation_mode

#: Burda et al.'s threshold on Cov_x(E_q[z_d | x]) for an active latent dimension.
ACTIVE_THRESHOLD = 0.01
#: Default memory budget for one chunk of particles x datapoints.
DEFAULT_MEMORY_BUDGET_MB = 1024.0
#: Bytes per (particle x datapoint) are an estimate; this factor keeps the budget honest.
SAFETY_FACTOR = 3
#: Counter streams, so the importance sampler and the ELBO draw different particles.
STREAM_IMPORTANCE, STREAM_ELBO = 0, 1

_MASK32 = 0xFFFFFFFF


# ----------------------------------------------------------------------- counter-based uniforms


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2^32`` for ``0 <= x < 2^32`` in int64 without overflow (16-bit halves)."""
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + ((hi * (c & 0xFFFF)) << 16)) & _MASK32  # every term < 2^49


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """C. Wellons' ``lowbias32``: a bijection of 32-bit words with full avalanche."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def counter_hash(*counters: torch.Tensor | int) -> torch.Tensor:
    """A 32-bit hash (int64 tensor in ``[0, 2^32)``) of non-negative integer counters.

    The counters broadcast against each other; each is folded in as
    ``h <- mix(h xor c)``, a Python int of 2^32 or more once more with its high word. The
    result depends on the counters' values only, never on the shapes they came in.

    .. warning:: Tensor counters must lie in ``[0, 2^32)`` (they are taken modulo 2^32).
    """
    device = next((c.device for c in counters if isinstance(c, torch.Tensor)), None)
    h = torch.tensor(0x9E3779B9, dtype=torch.int64, device=device)
    for c in counters:
        if isinstance(c, torch.Tensor):
            h = _mix32(h ^ (c.to(torch.int64) & _MASK32))
            continue
        c = int(c)
        if c < 0:
            raise ValueError(f"counters must be non-negative, got {c}")
        h = _mix32(h ^ (c & _MASK32))
        if c > _MASK32:
            h = _mix32(h ^ ((c >> 32) & _MASK32))
    return h


def counter_uniform(
    *counters: torch.Tensor | int, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Uniforms on the open interval (0, 1), one per broadcast element of ``counters``.

    ``u = (m + 1/2) / 2^b`` with ``m`` the top ``b`` bits of :func:`counter_hash`, where
    ``b = min(32, mantissa bits of dtype)`` (23 for float32, 32 for float64), so every ``u``
    is exactly representable in ``dtype`` and ``2u - 1`` never rounds to -1 or 1 (a Normal's
    inverse CDF stays finite: float32 particles reach about 5.3 standard deviations).
    """
    bits = min(32, round(-math.log2(torch.finfo(dtype).eps)))  # stored mantissa bits
    m = counter_hash(*counters) >> (32 - bits)
    return ((m.to(torch.float64) + 0.5) / 2.0**bits).to(dtype)


def _site_key(name: str) -> int:
    return zlib.crc32(name.encode())  # stable across processes, unlike hash()


class CounterNoise(Messenger):
    """Draw the guide's latent sites from counter-based uniforms instead of the global RNG.

    At every unobserved sample site of the wrapped guide whose distribution has an inverse CDF
    (a ``Normal``, possibly inside ``Independent``), the value becomes ``base.icdf(u)`` with
    ``u = counter_uniform(seed, stream, site, n, k, d)``: ``n`` the global datapoint index
    (``data_offset`` + position in the ``data`` plate), ``k`` the global particle index
    (``particle_offset`` + position in the particle plate), ``d`` the flat index into the
    event. So a datapoint's particles do not depend on how data and particles are chunked.
    The site stays a latent site (``is_observed`` is False) carrying its distribution, expanded
    to the plates' shape, so :func:`~pyro.poutine.replay` of the model and Pyro's log densities
    work as usual.

    :param int seed: the evaluation seed.
    :param int data_offset: global index of the batch's first datapoint.
    :param int particle_offset: global index of the chunk's first particle.
    :param int num_particles: particles in the chunk (the size of the particle plate).
    :param particle_dim: the particle plate's dim (``-2`` for the VAE under a vectorized
        estimator), or ``None`` when there is no particle plate. The plate is wrapped *around*
        this messenger (Pyro's estimators wrap the guide), so its frame is not yet in the
        message when this messenger runs: it must be given.
    :param str data_plate: name of the plate that indexes datapoints (without subsampling:
        position i in the plate is datapoint ``data_offset + i``).
    :param int stream: separates independent uses of one seed.

    .. warning:: Chunk invariance needs an inverse CDF at every guide site. A site whose
        distribution has none (``icdf`` raises ``NotImplementedError``) falls back to the
        ordinary ``rsample()`` from the global torch RNG; its name is recorded in
        :attr:`fallback_sites`, and estimates then depend on the chunk sizes (still unbiased).

    .. warning:: float32 uniforms carry 23 bits, so the proposal is truncated at about
        5.3 standard deviations (mass ~1e-7 per dimension): negligible against the Monte Carlo
        error of any practical K.
    """

    def __init__(
        self,
        seed: int,
        *,
        data_offset: int = 0,
        particle_offset: int = 0,
        num_particles: int = 1,
        particle_dim: int | None = None,
        data_plate: str = "data",
        stream: int = STREAM_IMPORTANCE,
    ):
        super().__init__()
        if seed < 0 or data_offset < 0 or particle_offset < 0:
            raise ValueError("seed and offsets must be non-negative")
        self.seed = int(seed)
        self.data_offset = int(data_offset)
        self.particle_offset = int(particle_offset)
        self.num_particles = int(num_particles)
        self.particle_dim = particle_dim
        self.data_plate = data_plate
        self.stream = int(stream)
        self.fallback_sites: set[str] = set()

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["done"] or site_is_subsample(msg):
            return
        name, fn = msg["name"], msg["fn"]
        frames = [f for f in msg["cond_indep_stack"] if f.vectorized]
        data = next((f for f in frames if f.name == self.data_plate), None)
        if data is None or len(frames) > 1:
            raise NotImplementedError(
                f"CounterNoise needs every guide site in exactly the {self.data_plate!r} plate "
                f"(besides the particle plate); site {name!r} is in {[f.name for f in frames]}"
            )
        ndim = max(-data.dim, len(fn.batch_shape), -(self.particle_dim or -1))
        plates = [1] * ndim
        plates[data.dim] = data.size
        if self.particle_dim is not None:
            plates[self.particle_dim] = self.num_particles
        batch_shape = torch.broadcast_shapes(tuple(plates), fn.batch_shape)
        fn = fn.expand(batch_shape)
        base = fn
        while isinstance(base, Independent):
            base = base.base_dist
        try:
            ref = base.mean  # (*batch, *event): device and dtype of the particles
        except NotImplementedError:
            self.fallback_sites.add(name)
            return
        event = tuple(fn.event_shape)
        full = len(batch_shape) + len(event)
        n = self._index(self.data_offset, data.size, len(batch_shape) + data.dim, full, ref)
        counters = [self.seed, self.stream, _site_key(name), n]
        if self.particle_dim is not None:
            counters.append(
                self._index(
                    self.particle_offset, self.num_particles,
                    len(batch_shape) + self.particle_dim, full, ref,
                )
            )
        else:
            counters.append(self.particle_offset)
        d = torch.arange(math.prod(event), device=ref.device).reshape(event)  # (*event,)
        counters.append(d)
        u = counter_uniform(*counters, dtype=ref.dtype)  # (*batch, *event) or broadcastable
        u = u.expand(*batch_shape, *event)
        try:
            value = base.icdf(u)
        except NotImplementedError:
            self.fallback_sites.add(name)
            return
        msg["fn"] = fn
        msg["value"] = value
        msg["done"] = True

    @staticmethod
    def _index(offset: int, size: int, pos: int, ndim: int, ref: torch.Tensor) -> torch.Tensor:
        shape = [1] * ndim
        shape[pos] = size
        return (offset + torch.arange(size, device=ref.device)).reshape(shape)


# ----------------------------------------------------------------------- chunks and memory


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


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(start + size, total)


def _check_data(vae: VAE, x: torch.Tensor) -> None:
    vae.check_shape(x, "evaluation")


# ----------------------------------------------------------------------- log p(x)


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
        return _se(self.log_px)

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
    _check_data(vae, x)
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
    with evaluation_mode(vae), tqdm(
        total=total, desc=f"log p(x), K={num_samples}", disable=quiet, dynamic_ncols=True
    ) as bar:
        for n0, n1 in _chunks(n, b_chunk):
            xb = x[n0:n1]  # (b, *event_shape)
            for k0, k1 in _chunks(num_samples, k_chunk):
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

    So ``elbo = recon - kl`` equals :func:`pyro_vae.train.evaluate_elbo` in expectation, with
    ``num_particles`` times less Monte Carlo variance in the reconstruction term.
    """
    _check_data(vae, x)
    if num_particles < 1:
        raise ValueError(f"num_particles must be >= 1, got {num_particles}")
    n = len(x)
    k_chunk, b_chunk = choose_chunks(
        num_particles, n, bytes_per_pair(vae), memory_budget_mb, batch_size
    )
    recon = torch.zeros(n, dtype=torch.float64)
    kl_parts: list[torch.Tensor] = []
    total = math.ceil(n / b_chunk) * math.ceil(num_particles / k_chunk)
    with evaluation_mode(vae), tqdm(
        total=total, desc="ELBO terms", disable=quiet, dynamic_ncols=True
    ) as bar:
        for n0, n1 in _chunks(n, b_chunk):
            xb = x[n0:n1]  # (b, *event_shape)
            kl_chunk = None
            for k0, k1 in _chunks(num_particles, k_chunk):
                noise = CounterNoise(
                    seed, data_offset=n0, particle_offset=k0, num_particles=k1 - k0,
                    particle_dim=-2, stream=STREAM_ELBO,
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


# ----------------------------------------------------------------------- latents


def posterior_means(vae: VAE, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """``(N, L)`` float64 on the CPU: ``E_q[z | x]`` read from the guide's distributions
    (latent sites flattened and concatenated in guide order)."""
    _check_data(vae, x)
    out = []
    with evaluation_mode(vae):
        for n0, n1 in _chunks(len(x), batch_size):
            tr = poutine.trace(vae.guide).get_trace(x[n0:n1])
            means = [
                site["fn"].mean.reshape(n1 - n0, -1)
                for site in tr.nodes.values()
                if site["type"] == "sample" and not site["is_observed"]
                and not site_is_subsample(site)
            ]
            out.append(torch.cat(means, -1).to(torch.float64).cpu())
    return torch.cat(out)


@dataclass(frozen=True)
class ActiveUnits:
    """What :func:`active_units` returns.

    :ivar activity: ``(L,)``: ``A_d = Cov_x(E_q[z_d | x])``, the variance over datapoints of
        the guide's mean.
    :ivar threshold: a dimension is active when ``A_d > threshold``.
    """

    activity: torch.Tensor  # (L,)
    threshold: float = ACTIVE_THRESHOLD

    @property
    def active(self) -> torch.Tensor:
        """``(L,)`` bool."""
        return self.activity > self.threshold

    @property
    def count(self) -> int:
        return int(self.active.sum())


def active_units(
    vae: VAE | None = None,
    x: torch.Tensor | None = None,
    *,
    means: torch.Tensor | None = None,
    threshold: float = ACTIVE_THRESHOLD,
    batch_size: int = 1000,
) -> ActiveUnits:
    """Active units (Burda et al. 2016): ``A_d = Cov_x(E_q[z_d | x]) > threshold``.

    A dimension whose posterior mean does not move with ``x`` carries no information about
    ``x``, whatever its posterior variance. Give ``vae`` and ``x``, or the ``(N, L)``
    posterior ``means`` from :func:`posterior_means`. The covariance is the unbiased sample
    variance over the N datapoints.
    """
    if means is None:
        if vae is None or x is None:
            raise ValueError("active_units needs vae and x, or means")
        means = posterior_means(vae, x, batch_size)
    if means.shape[0] < 2:
        raise ValueError("active units need at least two datapoints")
    return ActiveUnits(activity=means.var(0), threshold=threshold)


# ----------------------------------------------------------------------- bits/dim


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


def _bits_per_dim_reason(vae: VAE, dequantized: bool) -> str | None:
    """Why bits/dim is not reported (``None``: it is)."""
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


# ----------------------------------------------------------------------- a run directory


def _finite(value):
    """JSON-safe: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _se(values: torch.Tensor) -> float:
    n = values.numel()
    return (values.std() / math.sqrt(n)).item() if n > 1 else math.nan


def evaluation_data(run_dir: str | Path, split: str = "test", seed: int = 0):
    """The run's data split as the model sees it, with the labels.

    The split is loaded and prepared exactly as in training
    (:func:`pyro_vae.train.resolve_data` of the saved configuration). Per-batch randomness
    (dynamic binarization of training data, dequantization) is drawn **once** for the whole
    split, on the CPU, from a forked RNG seeded with ``seed``: the evaluated data depend
    neither on the batch size nor on the device.

    :returns: ``(x, labels, label_names, run_config)``: ``x`` float32 ``(N, *event_shape)``.
    """
    from pyro_vae.config import RunConfig
    from pyro_vae.rundir import read_config
    from pyro_vae.train import resolve_data

    if split not in ("test", "train"):
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    config = read_config(run_dir)
    cfg = RunConfig.from_dict({k: config[k] for k in ("model", "data", "train")})
    data, pre, cfg = resolve_data(cfg)
    raw = data.test if split == "test" else data.train
    labels = data.test_labels if split == "test" else data.train_labels
    if len(raw) == 0:
        raise ValueError(f"the run's {split} split is empty; evaluate --split train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        x = pre(raw.cpu())  # (N, *event_shape)
    return x, labels, data.label_names, cfg


def evaluate_run(
    run_dir: str | Path,
    iw_samples: int = 5000,
    split: str = "test",
    batch_size: int | None = None,
    device: str = "cpu",
    memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
    seed: int = 0,
    which: str = "best",
    elbo_particles: int = 100,
    quiet: bool = False,
) -> dict:
    """Evaluate a run directory: ``pyro-vae evaluate``.

    Loads ``<which>.pt``, prepares the split as in training (:func:`evaluation_data`), and
    writes ``summary.json`` (the returned dict), ``report.md``, ``report.html`` and the
    pictures under ``evaluation/`` in ``run_dir``.

    :param iw_samples: K of :func:`importance_log_px`.
    :param batch_size: most datapoints per chunk (default: as the memory budget allows).
    :param device: ``cpu``, ``cuda`` or ``auto``.
    :param memory_budget_mb: for one chunk of particles x datapoints.
    :param seed: particles, dequantization noise and pictures; the same seed gives the same
        numbers whatever the batch size and budget.
    :param which: ``best`` or ``checkpoint``.
    :param elbo_particles: Monte Carlo particles of the ELBO's reconstruction term.
    """
    from pyro_vae import report
    from pyro_vae.rundir import atomic_write_text, read_metrics
    from pyro_vae.train import load_run, resolve_device

    if iw_samples < 1:
        raise ValueError(f"iw_samples must be >= 1, got {iw_samples}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not memory_budget_mb > 0:
        raise ValueError(f"memory_budget_mb must be > 0, got {memory_budget_mb}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    vae, config = load_run(run_dir, which, device=str(dev))
    x_cpu, labels, label_names, cfg = evaluation_data(run_dir, split, seed)
    vae.likelihood.check_support(x_cpu)
    x = x_cpu.to(dev)

    start = time.perf_counter()
    imp = importance_log_px(
        vae, x, iw_samples, memory_budget_mb=memory_budget_mb, seed=seed,
        batch_size=batch_size, quiet=quiet,
    )
    terms = elbo_terms(
        vae, x, elbo_particles, seed=seed, memory_budget_mb=memory_budget_mb,
        batch_size=batch_size, quiet=quiet,
    )
    means = posterior_means(vae, x, batch_size or 1000)
    units = active_units(means=means) if len(x) > 1 else None
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - start

    num_dims = math.prod(vae.event_shape)
    reason = _bits_per_dim_reason(vae, bool(cfg.data.dequantize))
    kl_dim = terms.kl_per_dim.mean(0)  # (L,)
    summary = {
        "units": "nats per datapoint, higher is better; kl is the term the ELBO subtracts",
        "run_dir": str(run_dir),
        "which": which,
        "split": split,
        "num": len(x),
        "num_dims": num_dims,
        "latent_dim": vae.latent_dim,
        "likelihood": vae.likelihood.name,
        "dataset": cfg.data.dataset,
        "seed": seed,
        "device": str(dev),
        "iw_samples": iw_samples,
        "log_px": imp.mean,
        "log_px_se": imp.se,
        "log_px_mc_se": (imp.mc_se.square().sum().sqrt() / len(x)).item(),
        "ess_mean": imp.ess.mean().item(),
        "ess_median": imp.ess.median().item(),
        "ess_min": imp.ess.min().item(),
        "elbo_particles": elbo_particles,
        "elbo": terms.elbo.mean().item(),
        "elbo_se": _se(terms.elbo),
        "recon": terms.recon.mean().item(),
        "kl": terms.kl.mean().item(),
        "log_px_minus_elbo": imp.mean - terms.elbo.mean().item(),
        "kl_per_dim": kl_dim.tolist(),
        "active_threshold": ACTIVE_THRESHOLD,
        "unit_activity": None if units is None else units.activity.tolist(),
        "active_units": None if units is None else units.count,
        "active_dims": None if units is None else units.active.nonzero().flatten().tolist(),
        "bits_per_dim": None if reason else bits_per_dim(imp.mean, num_dims),
        "bits_per_dim_se": None if reason else imp.se / (num_dims * math.log(2)),
        "bits_per_dim_reason": reason,
        "particle_chunk": imp.particle_chunk,
        "data_chunk": imp.data_chunk,
        "memory_budget_mb": memory_budget_mb,
        "bytes_per_pair": imp.bytes_per_pair,
        "chunk_invariant": imp.chunk_invariant,
        "seconds": seconds,
    }
    pictures = report.write_pictures(
        vae, x, means, kl_dim, labels, label_names, read_metrics(run_dir),
        run_dir / "evaluation", seed=seed,
    )
    summary["pictures"] = {k: str(Path("evaluation") / v) for k, v in pictures.items()}
    summary = _finite(summary)
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(run_dir / "report.md", report.markdown(summary))
    atomic_write_text(run_dir / "report.html", report.html(summary))
    return summary


__all__ = [
    "ACTIVE_THRESHOLD", "ActiveUnits", "CounterNoise", "ElboTerms", "ImportanceResult",
    "active_units", "bits_per_dim", "bytes_per_pair", "choose_chunks", "counter_hash",
    "counter_uniform", "elbo_terms", "evaluate_run", "evaluation_data", "evaluation_mode",
    "importance_log_px", "posterior_means",
]
