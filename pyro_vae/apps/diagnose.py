"""What the data are, which likelihoods fit them, and which loss mistakes they invite.

:func:`diagnose_data` inspects data **as** :func:`~pyro_vae.data.load_data` **holds them**
(``uint8`` 8-bit levels read as ``k / 255``, or ``float32`` values taken as they are) and
returns a :class:`Diagnosis`: the kind of data (:data:`KINDS`), range, number of distinct
values, constant dimensions, a :class:`Verdict` per registered likelihood, and :class:`Advice`
on the classic hand-written-loss mistakes that fit these data. :func:`format_diagnosis` turns
it into the report that ``pyro-vae diagnose`` prints.

A verdict is not an if-chain over likelihood names: every likelihood in
:data:`~pyro_vae.models.LIKELIHOODS` is built, the data are prepared exactly as
``pyro-vae train`` would prepare them for it (its default ``--binarize``/``--dequantize``, or
the ones given), and the likelihood's own support check (the one training runs) decides;
its message says what to do. Whether a likelihood is a probability mass function (over the
8-bit levels, with exact bits/dim, or not) or a density is read from its distribution's
``support``. The recommended likelihoods are the valid ones that see the data as they are
(not binarized), with nothing to caution against, the tightest support first
(:attr:`Verdict.support_extent`); each says what data it is for
(:attr:`~pyro_vae.models.Likelihood.fits`).

The preprocessing defaults are the trainer's own: :meth:`~pyro_vae.config.DataConfig.resolved`,
as :func:`pyro_vae.runs.resolve_data` applies them.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch
from torch.distributions import constraints

from pyro_vae.config import DataConfig
from pyro_vae.data import DataSplit, Preprocess, as_loaded
from pyro_vae.eval.bounds import BITS_DEQUANTIZED, BITS_EXACT, base_support, is_level_pmf
from pyro_vae.models import LIKELIHOODS, make_likelihood
from pyro_vae.models.discretized_logistic import LevelGrid
from pyro_vae.models.likelihoods import mse_scale
from pyro_vae.train.checks import CHECK_CHUNK

#: sigma of the Normal that a plain (weight 1) sum of squared errors is
MSE_SIGMA = mse_scale(1.0)

KINDS: Mapping[str, str] = MappingProxyType(
    {
        "binary": "binary: every value is 0 or 1 (uint8: the levels 0 and 255)",
        "8-bit": "8-bit grey levels: uint8 levels read as k/255, the brightest at least 128",
        "low-levels": (
            "integer levels stored as uint8, the brightest below 128, so they do not span "
            "0..255: read as k/255, every value is below 0.5"
        ),
        "unit-interval": "real values in [0, 1]",
        "real": "real values outside [0, 1]",
    }
)
"""The kinds of data :func:`diagnose_data` tells apart, with what each means."""

#: uint8 data (not binary) whose brightest level is at most this are ``low-levels``, however
#: many levels they hold: integer levels 0..K saved as uint8 without rescaling to 0..255
LOW_LEVELS_MAX = 127
#: data with at most this many distinct values are discrete to a density
DISCRETE_VALUES = 256


@dataclass(frozen=True)
class Verdict:
    """Whether one likelihood fits the data, as ``pyro-vae train`` would feed them to it.

    :ivar likelihood: the registered name.
    :ivar valid: every datapoint, prepared as below, lies in the likelihood's support.
    :ivar binarize: the ``--binarize`` mode the trainer would apply.
    :ivar dequantize: whether the trainer would dequantize (``(k + u) / 256``).
    :ivar preprocessing: that preprocessing in words.
    :ivar reason: why it is valid (what its numbers mean), or the likelihood's own message
        saying what is wrong and what to do.
    :ivar caution: a problem that support alone does not catch (e.g. a density on discrete
        values, which grows without bound), or ``None``.
    :ivar discrete: the likelihood is a probability mass function (log p(x) <= 0), not a
        density; ``None`` if it could not be built.
    :ivar bits_per_dim: how ``pyro-vae evaluate`` would report bits/dim:
        ``"exact"`` (a pmf over the 8-bit levels), ``"dequantization-bound"`` (a density on
        dequantized levels), or ``None`` (not at all).
    :ivar support_extent: how much the support spans: its number of values for a pmf (2 for
        the Bernoulli, 256 for the 8-bit levels), its length for a density (``inf`` on the
        real line). A tighter support wastes no probability where the data cannot be.
    :ivar fits: what data the likelihood is for, in its own words.
    """

    likelihood: str
    valid: bool
    binarize: str
    dequantize: bool
    preprocessing: str
    reason: str
    caution: str | None = None
    discrete: bool | None = None
    bits_per_dim: str | None = None
    support_extent: float = math.inf
    fits: str = ""

    @property
    def flags(self) -> str:
        """The training flags of this preprocessing."""
        return f"--binarize {self.binarize} --{'' if self.dequantize else 'no-'}dequantize"


@dataclass(frozen=True)
class Advice:
    """One finding about the data: ``topic`` (a :data:`KINDS`-independent tag such as
    ``levels``, ``bce-grey``, ``pixel-mean``) and the text, which says what to do."""

    topic: str
    text: str


@dataclass(frozen=True)
class Diagnosis:
    """What :func:`diagnose_data` finds.

    :ivar name: the data's name (dataset or path).
    :ivar num: datapoints inspected.
    :ivar event_shape: shape of one datapoint.
    :ivar dtype: ``uint8`` (8-bit levels) or ``float32``, as the loader holds them.
    :ivar kind: a key of :data:`KINDS`.
    :ivar low: smallest stored value (levels for uint8).
    :ivar high: largest stored value.
    :ivar num_distinct: distinct stored values.
    :ivar integer_valued: every value is an integer.
    :ivar constant_dims: dimensions with the same value in every datapoint.
    :ivar data_sd: mean over dimensions of the standard deviation over datapoints, of the
        values as model input (``k / 255`` for uint8).
    :ivar excess_kurtosis: mean over the non-constant dimensions of the excess kurtosis over
        datapoints (0 for a Normal, 3 for a Laplace; heavy tails above), ``None`` when every
        dimension is constant.
    :ivar verdicts: one per registered likelihood, in name order.
    :ivar advice: findings, most specific first.
    """

    name: str
    num: int
    event_shape: tuple[int, ...]
    dtype: str
    kind: str
    low: float
    high: float
    num_distinct: int
    integer_valued: bool
    constant_dims: int
    data_sd: float
    excess_kurtosis: float | None
    verdicts: tuple[Verdict, ...]
    advice: tuple[Advice, ...]

    @property
    def num_dims(self) -> int:
        """D: the dimensions of one datapoint, over which every log-likelihood is summed."""
        return math.prod(self.event_shape)

    @property
    def constant_fraction(self) -> float:
        return self.constant_dims / self.num_dims

    @property
    def is_8bit(self) -> bool:
        return self.dtype == "uint8"

    @property
    def valid_likelihoods(self) -> tuple[str, ...]:
        return tuple(v.likelihood for v in self.verdicts if v.valid)

    @property
    def recommended(self) -> tuple[Verdict, ...]:
        """The likelihoods to use: valid, with no caution, seeing the data as they are (not
        binarized, unless they are binary already); a pmf before a density, then the
        tightest support first (:attr:`Verdict.support_extent`; ties in name order)."""
        fit = [
            v
            for v in self.verdicts
            if v.valid and v.caution is None and (v.binarize == "none" or self.kind == "binary")
        ]
        return tuple(sorted(fit, key=lambda v: (not v.discrete, v.support_extent)))

    def verdict(self, likelihood: str) -> Verdict:
        """The verdict on ``likelihood``.

        :raises UnknownNameError: for a name that is not registered, listing the valid ones.
        """
        LIKELIHOODS.get(likelihood)
        for v in self.verdicts:
            if v.likelihood == likelihood:
                return v
        raise KeyError(f"{likelihood!r} was registered after these data were diagnosed")

    def advice_on(self, topic: str) -> tuple[Advice, ...]:
        return tuple(a for a in self.advice if a.topic == topic)


# ----------------------------------------------------------------------- inspection


def _distinct(x: torch.Tensor) -> torch.Tensor:
    """Sorted distinct values (a bincount for 8-bit levels)."""
    if x.dtype == torch.uint8:
        return torch.bincount(x.flatten(), minlength=256).nonzero().flatten().to(torch.float64)
    return torch.unique(x).to(torch.float64)


def _excess_kurtosis(flat: torch.Tensor) -> float | None:
    """Mean over the non-constant dimensions of ``E[(x - m)^4] / var^2 - 3``: ``(N, D)``."""
    centred = flat - flat.mean(0)  # (N, D)
    var = centred.square().mean(0)  # (D,)
    varying = var > 0
    if len(flat) < 2 or not bool(varying.any()):
        return None
    fourth = centred[:, varying].pow(4).mean(0)
    return (fourth / var[varying].square() - 3).mean().item()


def _kind(x: torch.Tensor, values: torch.Tensor) -> str:
    ones = 255.0 if x.dtype == torch.uint8 else 1.0
    if bool(((values == 0) | (values == ones)).all()):
        return "binary"
    low, high = values[0].item(), values[-1].item()
    if x.dtype == torch.uint8:
        return "low-levels" if high <= LOW_LEVELS_MAX else "8-bit"
    return "unit-interval" if low >= 0 and high <= 1 else "real"


def _describe_preprocessing(binarize: str, dequantize: bool, is_8bit: bool) -> str:
    p = "k/255" if is_8bit else "x"
    if binarize == "dynamic":
        return f"binarized: a fresh draw Bernoulli({p}) per batch"
    if binarize == "static":
        return f"binarized once: one seeded draw Bernoulli({p})"
    if binarize == "threshold":
        return f"binarized: {p} > 0.5"
    if dequantize:
        return "dequantized: (k + u)/256, u ~ U(0, 1)"
    return "read as k/255" if is_8bit else "used as stored"


def _trainer_preprocessing(
    likelihood: str, is_8bit: bool, binarize: str | None, dequantize: bool | None
) -> tuple[str, bool]:
    """``(binarize, dequantize)`` as the trainer resolves them
    (:meth:`~pyro_vae.config.DataConfig.resolved`, as :func:`pyro_vae.runs.resolve_data`)."""
    resolved = DataConfig(binarize=binarize, dequantize=dequantize).resolved(likelihood, is_8bit)
    return resolved.binarize, bool(resolved.dequantize)


def _support_extent(fn) -> float:
    """The number of values of a discrete support, the length of a continuous one."""
    support = base_support(fn)
    if isinstance(support, LevelGrid):
        return float(support.levels)
    if support is constraints.boolean:
        return 2.0
    low = getattr(support, "lower_bound", -math.inf)
    high = getattr(support, "upper_bound", math.inf)
    if support.is_discrete:
        return float(high - low + 1)  # an integer interval; inf where unbounded
    return float(high - low)


def _support_reason(discrete: bool, exact: bool, binarized: bool, dequantized: bool) -> str:
    """What the likelihood's numbers mean on data so prepared."""
    if discrete:
        reason = "a probability mass function: log p(x) <= 0, so the loss is >= 0"
        if binarized:
            return reason + "; of binarized draws, so not comparable with a density's log p(x)"
        if exact:
            reason += (
                "; over the 8-bit levels themselves, so bits/dim = -log p(x) / (D ln 2) is exact"
            )
        return reason
    reason = "a density: log p(x) can be positive and the loss negative, which alone is no bug"
    if dequantized:
        return reason + "; bits/dim = 8 - log p(x) / (D ln 2) (a bound) compares models"
    return reason + "; no bits/dim (not dequantized 8-bit levels)"


def _verdict(
    name: str,
    split: DataSplit,
    num_distinct: int,
    binarize: str | None,
    dequantize: bool | None,
    seed: int,
) -> Verdict:
    b, deq = _trainer_preprocessing(name, split.is_8bit, binarize, dequantize)
    words = _describe_preprocessing(b, deq, split.is_8bit)
    try:
        lik = make_likelihood(name, split.event_shape)
        params = torch.zeros(1, *lik.param_shape)  # (1, *param_shape)
        fn = lik.distribution(params)
        discrete = bool(fn.support.is_discrete)
    except (TypeError, ValueError, NotImplementedError) as e:
        return Verdict(name, False, b, deq, words, f"cannot be built with default options: {e}")
    facts = {"discrete": discrete, "support_extent": _support_extent(fn), "fits": lik.fits}
    try:
        pre = Preprocess(b, deq, seed)
        prepared = pre.prepare(split).train  # (N, *event_shape)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for i in range(0, len(prepared), CHECK_CHUNK):
                lik.check_support(pre(prepared[i : i + CHECK_CHUNK]))
    except ValueError as e:  # DataSupportError, or preprocessing these data do not allow
        return Verdict(name, False, b, deq, words, str(e), **facts)

    binarized = b != "none"
    exact = is_level_pmf(fn) and not binarized
    reason = _support_reason(discrete, exact, binarized, deq)
    bits = BITS_EXACT if exact else (BITS_DEQUANTIZED if deq and not discrete else None)
    caution = None
    if not discrete and (binarized or (not deq and num_distinct <= DISCRETE_VALUES)):
        values = 2 if binarized else num_distinct
        caution = (
            f"the data it sees take only {values} distinct values: a density on a finite "
            f"set of values grows without bound as it concentrates on them, so the ELBO "
            f"climbs to the likelihood's floor, not to a likelihood. Dequantize 8-bit levels "
            f"(store them as uint8; --dequantize), or use a discrete likelihood"
        )
    return Verdict(name, True, b, deq, words, reason, caution, bits_per_dim=bits, **facts)


# ----------------------------------------------------------------------- advice


def _rescale_levels(kmax: int) -> str:
    """What to do with integer levels 0..kmax: uint8 over 0..255, never floats on the
    exact levels (a density on finitely many values is unbounded)."""
    return (
        f"rescale the levels to 0..255 before saving, as uint8: "
        f"np.round(x * (255 / {kmax})).astype(np.uint8). Then discretized-logistic models "
        f"the levels as they are (exact bits/dim), the densities (continuous-bernoulli, "
        f"normal, ...) see them dequantized, (k + u)/256: continuous values, on which a "
        f"density is bounded and bits/dim is meaningful; bernoulli binarizes them (its "
        f"default --binarize dynamic, Bernoulli(k/255))."
    )


_SCRIPT = "python experiments/loss_pitfalls.py --pitfalls"


def _levels_advice(kind: str, x: torch.Tensor, values: torch.Tensor) -> list[Advice]:
    """Levels stored so that the loader misreads them (uint8 below 128, integers as floats,
    8-bit levels as floats on the grid k/255)."""
    low, high = values[0].item(), values[-1].item()
    integer = bool((values == values.round()).all())
    grid = values * 255
    on_grid = len(values) <= 256 and bool(((grid - grid.round()).abs() < 1e-3).all())
    if kind == "low-levels":
        kmax = int(high)
        if len(values) == kmax + 1:
            seen = f"{len(values)} grey levels 0..{kmax}"
        else:
            seen = f"{len(values)} levels between {int(low)} and {kmax}"
        text = (
            f"{seen} stored as uint8: the loader reads uint8 as 8-bit levels k/255, so the "
            f"brightest value is {kmax}/255 = {kmax / 255:.3f}, densities see a dark image and "
            f"bernoulli's binarization draws Bernoulli(k/255) <= {kmax / 255:.3f} (most pixels "
            f"off). If {kmax} means full brightness, {_rescale_levels(kmax)} Saving x / {kmax} "
            f"as float32 instead would leave {len(values)} exact values, on which a density "
            f"grows without bound."
        )
    elif kind == "8-bit" and high < 255:
        text = (
            f"the brightest level is {int(high)} < 255: if {int(high)} means full brightness, "
            f"rescale before saving: np.round(x * (255 / {int(high)})).astype(np.uint8)."
        )
    elif x.dtype != torch.uint8 and integer and low >= 0 and high <= 255 and kind == "real":
        text = (
            f"integer values {int(low)}..{int(high)} stored as floats are taken literally "
            f"(outside [0, 1]), and a density on these {len(values)} exact values grows without "
            f"bound, rescaled to [0, 1] or not. If they are grey levels with {int(high)} as full "
            f"brightness, {_rescale_levels(int(high))}"
        )
    elif kind == "unit-interval" and on_grid:
        text = (
            "the values lie on the grid k/255: 8-bit levels stored as floats. Save them as "
            "uint8 so that the trainer dequantizes them for continuous likelihoods and bits/dim "
            "is defined (discretized-logistic takes the levels as they are, either way)."
        )
    else:
        return []
    return [Advice("levels", text)]


def _bce_advice(kind: str, low: float, high: float) -> list[Advice]:
    """Binary cross-entropy on grey levels, or on values outside [0, 1]."""
    if kind in ("8-bit", "low-levels", "unit-interval"):
        text = (
            "grey levels are not Bernoulli outcomes: binary cross-entropy on them, "
            "x log p + (1 - x) log(1 - p), integrates to at most 1/2 over [0, 1] (it is the "
            "continuous Bernoulli without its normalizer log C(p)), so its 'ELBO' bounds no "
            "likelihood and p is not the mean. Binarize for bernoulli (its default, --binarize "
            f"dynamic) or use --likelihood continuous-bernoulli. See: {_SCRIPT} bce-grey"
        )
    elif kind == "real" and (high > 1 or low < 0):
        text = (
            f"values in [{low:.4g}, {high:.4g}] are outside [0, 1]: binary cross-entropy on them "
            "is unbounded (for x > 1 the term (1 - x) log(1 - p) goes to +infinity as p -> 1), "
            "so a hand-written BCE loss runs to -1e18. bernoulli and continuous-bernoulli "
            "refuse these data; rescale to [0, 1] or use normal."
        )
    else:
        return []
    return [Advice("bce-grey", text)]


def _mse_advice(data_sd: float) -> Advice:
    """A summed squared error: a Normal whose fixed sigma the weight sets, not the data."""
    if data_sd > 0:
        spread = (
            f"the fixed sigma {MSE_SIGMA:.3f} is {MSE_SIGMA / data_sd:.3g} times the data's "
            f"standard deviation per dimension, s = {data_sd:.3g}"
        )
    else:
        spread = "the data's standard deviation per dimension is s = 0"
    text = (
        "a summed squared error is a Normal with sigma fixed at 1/sqrt(2) (a weight w on it: "
        f"sigma = 1/sqrt(2w)); {spread}: the arbitrary weight, not the data, sets that ratio "
        "and with it the balance against the KL. --likelihood normal learns sigma. "
        f"See: {_SCRIPT} mse"
    )
    return Advice("mse", text)


def _constant_advice(x: torch.Tensor, constant_dims: int) -> Advice:
    """Dimensions constant over all datapoints: no information, and a trap for a density."""
    n, d = len(x), math.prod(x.shape[1:])
    text = (
        f"{constant_dims} of {d} dimensions ({constant_dims / d:.1%}) are constant over all "
        f"{n} datapoints: they carry no information. "
    )
    if x.dtype == torch.uint8:
        text += (
            "Dequantized, each still adds up to log 256 = 5.55 nats to a density's log p(x) "
            "(0 bits/dim)."
        )
    else:
        text += (
            "Not dequantized, a density on them grows without bound (normal's per-pixel or "
            "decoder sigma shrinks to its floor exp(-6)); drop them, or use --scale shared."
        )
    return Advice("constant", text)


_UNITS = (
    "real-valued data: only a density on the real line fits (normal); log p(x) depends on the "
    "units of x (scaling x by c shifts it by -D log c), and bits/dim is undefined (no 8-bit "
    "levels)."
)
_LOGVAR = (
    "not a question of data: a log-variance used as a standard deviation is a guide whose "
    "scale can be <= 0. pyro-vae's encoders use softplus, and Pyro's validation refuses a "
    f"scale <= 0 at the first step. See: {_SCRIPT} logvar-std"
)


def _advice(
    kind: str,
    x: torch.Tensor,
    values: torch.Tensor,
    constant_dims: int,
    data_sd: float,
) -> list[Advice]:
    """Every finding that fits these data, most specific first."""
    d = math.prod(x.shape[1:])
    out = _levels_advice(kind, x, values)
    out += _bce_advice(kind, values[0].item(), values[-1].item())
    pixel_mean = (
        f"a reconstruction term averaged over the D = {d} dimensions instead of summed is the "
        f"model with its x site scaled by 1/{d}, i.e. a KL weight of {d}: the posterior "
        f"collapses. pyro-vae sums over D; multiply a per-dimension mean by {d} to compare. "
        f"See: {_SCRIPT} pixel-mean"
    )
    out.append(Advice("pixel-mean", pixel_mean))
    if kind != "binary":
        out.append(_mse_advice(data_sd))
    if len(x) > 1 and constant_dims:
        out.append(_constant_advice(x, constant_dims))
    if kind == "real":
        out.append(Advice("units", _UNITS))
    out.append(Advice("logvar-std", _LOGVAR))
    return out


# ----------------------------------------------------------------------- entry points


def diagnose_data(
    x,
    *,
    name: str = "data",
    binarize: str | None = None,
    dequantize: bool | None = None,
    seed: int = 0,
) -> Diagnosis:
    """Inspect data and judge every registered likelihood on them.

    :param x: ``(N, *event_shape)`` array or tensor: uint8 (8-bit levels), another integer
        type holding 0..255 (becomes uint8, as the loader does), bool or float.
    :param name: what to call the data in the report.
    :param binarize: judge with this ``--binarize`` mode (``None``: each likelihood's default).
    :param dequantize: judge with dequantization on or off (``None``: the trainer's default).
    :param seed: seed of the binarization and dequantization draws of the support check.
    :raises DataFormatError: data the loader refuses (bad shape or dtype, NaN, ...).
    """
    x = as_loaded(x)
    values = _distinct(x)  # (V,) sorted, float64
    kind = _kind(x, values)
    flat = x.reshape(len(x), -1)  # (N, D)
    constant_dims = int((flat == flat[:1]).all(0).sum()) if len(x) > 1 else 0
    model_input = flat.to(torch.float64) / (255.0 if x.dtype == torch.uint8 else 1.0)
    data_sd = model_input.std(0).mean().item() if len(x) > 1 else 0.0
    split = DataSplit(name=name, train=x, test=x[:0])
    verdicts = tuple(
        _verdict(lik, split, len(values), binarize, dequantize, seed) for lik in LIKELIHOODS
    )
    return Diagnosis(
        name=name,
        num=len(x),
        event_shape=tuple(x.shape[1:]),
        dtype=str(x.dtype).removeprefix("torch."),
        kind=kind,
        low=values[0].item(),
        high=values[-1].item(),
        num_distinct=len(values),
        integer_valued=bool((values == values.round()).all()),
        constant_dims=constant_dims,
        data_sd=data_sd,
        excess_kurtosis=_excess_kurtosis(model_input),
        verdicts=verdicts,
        advice=tuple(_advice(kind, x, values, constant_dims, data_sd)),
    )


def diagnose_split(split: DataSplit, **options) -> Diagnosis:
    """:func:`diagnose_data` of a split's training and test data together."""
    x = torch.cat([split.train, split.test]) if len(split.test) else split.train
    return diagnose_data(x, name=split.name, **options)


# ----------------------------------------------------------------------- report


def _wrap(text: str, indent: str, width: int = 96, hanging: str | None = None) -> str:
    return textwrap.fill(
        text,
        width,
        initial_indent=indent,
        subsequent_indent=indent if hanging is None else hanging,
        break_on_hyphens=False,
    )


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.4g}"


def _recommendation_lines(d: Diagnosis) -> list[str]:
    """The recommended likelihoods, in order, each with the data it is for and its flags."""
    lines = ["", "recommended for these data (a pmf first, then the tightest support):"]
    for i, v in enumerate(d.recommended, 1):
        lines.append(_wrap(f"{i}. {v.likelihood} ({v.flags}): {v.fits}", "  ", hanging="     "))
    if not d.recommended:
        lines.append("  none: see the verdicts above and the mistakes below")
    return lines


def format_diagnosis(d: Diagnosis, likelihood: str | None = None) -> str:
    """The report of ``pyro-vae diagnose``; with ``likelihood``, ends with its verdict.

    :raises UnknownNameError: for an unregistered ``likelihood``, listing the valid ones.
    """
    chosen = d.verdict(likelihood) if likelihood is not None else None
    D = d.num_dims
    lines = [
        f"data: {d.name}: {d.num} datapoints of shape {d.event_shape}, D = {D} dimensions, "
        f"stored as {d.dtype}",
        f"kind: {KINDS[d.kind]}",
        f"values: range [{_number(d.low)}, {_number(d.high)}], {d.num_distinct} distinct"
        + (" (all integers)" if d.integer_valued and d.dtype != "uint8" else "")
        + f"; {d.constant_dims} of {D} dimensions ({d.constant_fraction:.1%}) constant over "
        f"all datapoints",
    ]
    if d.kind in ("real", "unit-interval") and d.excess_kurtosis is not None:
        lines.append(
            f"tails: excess kurtosis {d.excess_kurtosis:.3g} (mean over the varying "
            f"dimensions; 0 for Gaussian values, 3 for Laplace ones, above: heavy tails)"
        )
    lines += ["", "likelihoods, with the data as `pyro-vae train` would prepare them:"]
    width = max(len(v.likelihood) for v in d.verdicts)
    for v in d.verdicts:
        status = "valid" if v.valid else "INVALID"
        lines.append(f"  {v.likelihood:<{width}}  {status:<7}  {v.preprocessing} ({v.flags})")
        lines.append(_wrap(v.reason, " " * (width + 13)))
        if v.caution:
            lines.append(_wrap(f"caution: {v.caution}", " " * (width + 13)))
    lines += _recommendation_lines(d)
    pmf = [v.likelihood for v in d.verdicts if v.discrete]
    densities = [v.likelihood for v in d.verdicts if v.discrete is False]
    exact = [v.likelihood for v in d.verdicts if v.bits_per_dim == BITS_EXACT]
    per_bit = D * math.log(2)
    units = [
        f"every pyro-vae figure is nats per datapoint, summed over the D = {D} dimensions; an "
        f"ELBO or log p(x) is higher-is-better and the loss is -ELBO. A per-dimension mean is "
        f"1/{D} of it.",
        f"{', '.join(pmf) or 'none'}: a probability mass function, log p(x) <= 0 and the loss "
        f">= 0.",
        f"{', '.join(densities) or 'none'}: a density, whose value can exceed 1: log p(x) can "
        f"be positive and the loss negative, which alone is no bug.",
        f"bits/dim, for a density on dequantized 8-bit data: 8 - log p(x) / (D ln 2) = "
        f"8 - log p(x) / {per_bit:.1f}, an upper bound; a uniform density (0 nats) is 8 "
        f"bits/dim, lower is better.",
        f"bits/dim, for a pmf over the 8-bit levels ({', '.join(exact) or 'none here'}): "
        f"-log p(x) / (D ln 2) = -log p(x) / {per_bit:.1f}, exact (no dequantization); "
        f"comparable with the densities' bound and the literature's figures.",
    ]
    lines += ["", "units:"] + [_wrap(u, "    ").replace("    ", "  - ", 1) for u in units]
    lines += ["", "mistakes that fit these data:"]
    lines += [_wrap(f"[{a.topic}] {a.text}", "    ").replace("    ", "  - ", 1) for a in d.advice]
    if chosen is not None:
        lines.append("")
        if chosen.valid:
            lines.append(
                _wrap(
                    f"--likelihood {chosen.likelihood}: valid for these data; the trainer would "
                    f"feed it the data {chosen.preprocessing} ({chosen.flags}); it is "
                    f"{chosen.reason}.",
                    "",
                )
            )
            if chosen.caution:
                lines.append(_wrap(f"caution: {chosen.caution}.", ""))
            if d.advice_on("levels"):
                lines.append("but first see [levels] above: the data's levels need rescaling.")
        else:
            lines.append(
                _wrap(
                    f"--likelihood {chosen.likelihood}: NOT valid for these data, prepared "
                    f"{chosen.preprocessing} ({chosen.flags}): {chosen.reason}",
                    "",
                )
            )
            others = [v.likelihood for v in d.verdicts if v.valid]
            lines.append(f"valid here: {', '.join(others) or 'none'}")
    return "\n".join(lines) + "\n"


__all__ = [
    "Advice",
    "DISCRETE_VALUES",
    "Diagnosis",
    "KINDS",
    "LOW_LEVELS_MAX",
    "Verdict",
    "diagnose_data",
    "diagnose_split",
    "format_diagnosis",
]
