"""Counter-based random numbers: the guide's particles as a function of (seed, datapoint,
particle, dimension) only.

:class:`CounterNoise` draws every latent site of a guide from :func:`counter_uniform` through
the site distribution's inverse CDF, so a datapoint's particles, and every estimate built from
them, do not depend on how data and particles are chunked, on the batch size or on the
device.

References:

[1] J. K. Salmon, M. A. Moraes, R. O. Dror, D. E. Shaw, *Parallel random numbers: as easy as
1, 2, 3*, SC 2011 (counter-based random numbers).
"""

from __future__ import annotations

import math
import zlib

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import Independent, TransformedDistribution

#: Counter streams, so the importance sampler and the ELBO draw different particles.
STREAM_IMPORTANCE, STREAM_ELBO = 0, 1

_MASK32 = 0xFFFFFFFF


def _mul32_(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x <- (x * c) mod 2^32`` in place, for ``0 <= x < 2^32`` in int64 without overflow
    (16-bit halves: every term < 2^49)."""
    hi = x >> 16
    x &= 0xFFFF
    x *= c
    hi *= c & 0xFFFF
    hi <<= 16
    x += hi
    x &= _MASK32
    return x


def _mix32_(x: torch.Tensor) -> torch.Tensor:
    """C. Wellons' ``lowbias32``, a bijection of 32-bit words with full avalanche, in place on
    ``x`` (a tensor the caller made for it: in place, a full-size hash allocates 5 temporaries
    instead of 20)."""
    x ^= x >> 16
    _mul32_(x, 0x7FEB352D)
    x ^= x >> 15
    _mul32_(x, 0x846CA68B)
    x ^= x >> 16
    return x


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
            h = _mix32_(h ^ (c.to(torch.int64) & _MASK32))
            continue
        c = int(c)
        if c < 0:
            raise ValueError(f"counters must be non-negative, got {c}")
        h = _mix32_(h ^ (c & _MASK32))
        if c > _MASK32:
            h = _mix32_(h ^ ((c >> 32) & _MASK32))
    return h


def counter_uniform(
    *counters: torch.Tensor | int, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """Uniforms on the open interval (0, 1), one per broadcast element of ``counters``.

    ``u = (m + 1/2) / 2^b`` with ``m`` the top ``b`` bits of :func:`counter_hash`, where
    ``b = min(32, mantissa bits of dtype)`` (23 for float32, 32 for float64), so every ``u``
    is exactly representable in ``dtype`` and ``2u - 1`` never rounds to -1 or 1 (a Normal's
    inverse CDF stays finite: float32 particles reach about 5.3 standard deviations). ``m`` and
    ``m + 1/2`` fit the significand of ``dtype`` (``b`` stored bits and the implicit one), so
    the arithmetic is exact in ``dtype`` itself.
    """
    bits = min(32, round(-math.log2(torch.finfo(dtype).eps)))  # stored mantissa bits
    u = (counter_hash(*counters) >> (32 - bits)).to(dtype)  # m, exactly
    return u.add_(0.5).mul_(2.0**-bits)


def _site_key(name: str) -> int:
    return zlib.crc32(name.encode())  # stable across processes, unlike hash()


def _innermost(fn):
    """The distribution under ``Independent`` wrappers and ``TransformedDistribution`` bases."""
    while isinstance(fn, Independent | TransformedDistribution):
        fn = fn.base_dist
    return fn


def _icdf_draw(fn, u: torch.Tensor) -> torch.Tensor:
    """The draw of ``fn`` at the uniforms ``u``: the innermost base's inverse CDF, pushed
    through the transforms of every ``TransformedDistribution`` on the way out (a flow).

    :raises NotImplementedError: the innermost distribution has no inverse CDF.
    """
    while isinstance(fn, Independent):
        fn = fn.base_dist
    if isinstance(fn, TransformedDistribution):
        value = _icdf_draw(fn.base_dist, u)
        for transform in fn.transforms:
            value = transform(value)  # caches (x, y): the flow scores its own draw cheaply
        return value
    return fn.icdf(u)


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

    A site that is a ``TransformedDistribution`` (a flow) draws its base from the counters and
    pushes it through the transforms, so flows stay chunk-invariant too.

    .. warning:: Chunk invariance needs an inverse CDF at every guide site (at the base of a
        flow). A site whose distribution has none (``icdf`` raises ``NotImplementedError``)
        falls back to the ordinary ``rsample()`` from the global torch RNG; its name is
        recorded in :attr:`fallback_sites`, and estimates then depend on the chunk sizes
        (still unbiased).

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
        try:
            ref = _innermost(fn).mean  # (*batch, *event): device and dtype of the particles
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
                    self.particle_offset,
                    self.num_particles,
                    len(batch_shape) + self.particle_dim,
                    full,
                    ref,
                )
            )
        else:
            counters.append(self.particle_offset)
        d = torch.arange(math.prod(event), device=ref.device).reshape(event)  # (*event,)
        counters.append(d)
        u = counter_uniform(*counters, dtype=ref.dtype)  # (*batch, *event) or broadcastable
        u = u.expand(*batch_shape, *event)
        try:
            value = _icdf_draw(fn, u)
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
