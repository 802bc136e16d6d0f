"""The classic hand-written VAE loss mistakes, written as the Pyro programs they really are.

Every mistake below is a model/guide pair that a Pyro estimator turns into exactly the loss
people write by hand; no loss is written here. Each is trained by :func:`pyro_vae.train.fit`
beside the correct program, on the same data, from the same initialization, and both are then
evaluated **under the correct model** (:attr:`Pitfall.as_correct_model`: the trained networks
read by the model the data call for, with scale 1 and beta 1).

==============  ===================================================  ===========================
pitfall         the mistake as a program                             the correct program
==============  ===================================================  ===========================
``pixel-mean``  the ``x`` site scaled by 1/D: a reconstruction       the same model, scale 1
                averaged over pixels (:func:`pixel_mean_program`)
``bce-grey``    binary cross-entropy on grey levels: an              ``continuous-bernoulli``
                unnormalized Bernoulli "density" on [0, 1]
                (:class:`BinaryCrossEntropyLikelihood`)
``mse``         a Normal with sigma fixed at 1/sqrt(2w)              ``normal`` with a learned
                (:class:`FixedScaleNormalLikelihood`): w * SSE       (shared) sigma
``logvar-std``  a guide whose scale is a log-variance read as a      scale = exp(log_var / 2)
                standard deviation (:class:`LogVarianceEncoder`)
==============  ===================================================  ===========================

:func:`run_pitfalls` trains and evaluates them and writes ``pitfalls.md`` (the table), one
picture per pitfall (reconstructions and samples side by side), ``results.json`` and
``config.json``; ``experiments/loss_pitfalls.py`` is its command line.

References:

[1] G. Loaiza-Ganem, J. P. Cunningham, *The continuous Bernoulli: fixing a pervasive error in
variational autoencoders*, NeurIPS 2019.

[2] O. Rybkin, K. Daniilidis, S. Levine, *Simple and Effective VAE Training with Calibrated
Decoders*, ICML 2021 (the MSE weight as a fixed decoder variance).

[3] I. Higgins et al., *beta-VAE: Learning Basic Visual Concepts with a Constrained
Variational Framework*, ICLR 2017 (a KL weight above 1).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.poutine.scale_messenger import ScaleMessenger

from pyro_vae.config import DEVICES, TrainConfig
from pyro_vae.likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    Likelihood,
    NormalLikelihood,
)
from pyro_vae.model import VAE, evaluation_mode
from pyro_vae.networks import MLPDecoder, MLPEncoder
from pyro_vae.registry import Registry

#: sigma of the Normal that a plain (weight 1) sum of squared errors is
MSE_SIGMA = 1 / math.sqrt(2)


# ----------------------------------------------------------------------- the programs


class SiteScaleMessenger(ScaleMessenger):
    """``poutine.scale`` restricted to the sample sites named in ``sites``.

    :param sites: names of the sites whose log densities are multiplied by ``scale``.
    :param float scale: a positive factor.
    """

    def __init__(self, sites: Sequence[str], scale: float):
        super().__init__(scale)
        self.sites = frozenset(sites)

    def _process_message(self, msg) -> None:
        if msg["name"] in self.sites:
            super()._process_message(msg)


class ObservationScaledVAE(VAE):
    """A :class:`~pyro_vae.model.VAE` whose observation site ``x`` is scaled by ``obs_scale``.

    The model's ``log p(x | z)`` enters every estimator as ``obs_scale * log p(x | z)``; the
    ``z`` sites keep their weight (``beta``). With ``obs_scale = 1/D`` this is the hand-written
    loss whose reconstruction term is a **mean** over the D dimensions instead of a sum, and
    ``D`` times its loss is the loss of the unscaled model with ``beta = D``.

    :param float obs_scale: positive factor on the ``x`` site.
    """

    def __init__(self, encoder, decoder, likelihood, obs_scale: float, beta: float = 1.0):
        super().__init__(encoder, decoder, likelihood, beta=beta)
        if not obs_scale > 0:
            raise ValueError(f"obs_scale must be > 0, got {obs_scale}")
        self.obs_scale = float(obs_scale)

    def model(self, x: torch.Tensor | None = None, num_samples: int | None = None):
        with SiteScaleMessenger(["x"], self.obs_scale):
            return super().model(x, num_samples)


def pixel_mean_program(vae: VAE) -> ObservationScaledVAE:
    """The pixel-mean mistake on ``vae``'s networks and likelihood (shared, not copied): the
    same model with its ``x`` site scaled by 1/D."""
    scale = 1.0 / math.prod(vae.event_shape)
    return ObservationScaledVAE(vae.encoder, vae.decoder, vae.likelihood, scale, beta=vae.beta)


class UnnormalizedBernoulli(dist.Bernoulli):
    r"""Binary cross-entropy read as a density on [0, 1]: what BCE on grey levels is.

    .. math::

        \log f(x) = x \log \lambda + (1 - x) \log (1 - \lambda), \qquad
        \lambda = \operatorname{sigmoid}(\text{logits}), \quad x \in [0, 1].

    .. warning:: This is **not** a distribution: :math:`\int_0^1 f(x)\,dx = 1 / C(\lambda)
        \le 1/2` (equal at :math:`\lambda = 1/2`), where :math:`C` is the normalizing constant
        of the continuous Bernoulli, whose log density is exactly ``log_prob + log C``. The
        missing ``log C`` depends on the decoder's output, so an "ELBO" built from it bounds no
        likelihood; and it cannot be sampled.

    It is Pyro's own ``Bernoulli`` with one change, the mistake itself: its declared support is
    [0, 1] instead of {0, 1}, so validation (on, as always) admits grey levels and the log
    density is the Bernoulli's, i.e. minus binary cross-entropy.

    References: G. Loaiza-Ganem, J. P. Cunningham, *The continuous Bernoulli*, NeurIPS 2019.
    """

    support = constraints.unit_interval
    has_enumerate_support = False

    def sample(self, sample_shape=torch.Size()):
        raise NotImplementedError(
            "binary cross-entropy on [0, 1] is not a normalized density: there is nothing to "
            "sample from. Read its logits as a continuous Bernoulli to sample."
        )


class BinaryCrossEntropyLikelihood(BernoulliLikelihood):
    """Binary cross-entropy on grey levels as an observation model (the ``bce-grey`` mistake).

    The ``bernoulli`` likelihood with :class:`UnnormalizedBernoulli` in place of the Bernoulli:
    one logit per dimension, and :meth:`mean` ``sigmoid(logits)``, the picture its author
    shows; it is the mean of no distribution. Data in [0, 1] are checked against the
    distribution's declared support, as for any likelihood (:func:`pyro_vae.train.check_data`).

    .. warning:: Unnormalized (see :class:`UnnormalizedBernoulli`); not registered, so neither
        ``pyro-vae train`` nor ``pyro-vae diagnose`` offers it.
    """

    name = "bce"

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:
        return UnnormalizedBernoulli(logits=self.component(params, 0)).to_event(self.event_dim)

    def check_support(self, x: torch.Tensor) -> None:
        Likelihood.check_support(self, x)  # finite; [0, 1] is the declared support


class FixedScaleNormalLikelihood(Likelihood):
    r"""A Normal with a **fixed** standard deviation: what a weighted squared error is.

    :math:`w \sum_d (x_d - \mu_d)^2 = -\log \mathcal N(x; \mu, \sigma^2 I) + \text{const}`
    with :math:`\sigma = 1 / \sqrt{2 w}`, so a plain summed MSE (w = 1) is
    :math:`\sigma = 1/\sqrt 2 \approx 0.71`. Normalized, so its ELBO and log p(x) are honest;
    only sigma is not learned.

    :param float scale: sigma (default: that of a plain summed MSE).
    """

    name = "normal-fixed-scale"

    def __init__(self, event_shape: Sequence[int], scale: float = MSE_SIGMA):
        super().__init__(event_shape)
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.sigma = float(scale)  # a constant, in the precision of the data it meets

    @staticmethod
    def scale_of_mse_weight(weight: float) -> float:
        """sigma of the Normal that ``weight * sum (x - mu)^2`` is."""
        if not weight > 0:
            raise ValueError(f"the MSE weight must be > 0, got {weight}")
        return 1.0 / math.sqrt(2.0 * weight)

    def distribution(self, params: torch.Tensor) -> dist.TorchDistribution:
        loc = self.component(params, 0)  # (..., *event_shape)
        return dist.Normal(loc, loc.new_tensor(self.sigma)).to_event(self.event_dim)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self.component(params, 0)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, sigma={self.sigma:.4g}"


class LogVarianceEncoder(MLPEncoder):
    """An MLP encoder whose second output ``s`` is a log-variance, ``s = log sigma^2``.

    :param bool as_std: the mistake: use ``s`` itself as the guide's standard deviation, which
        is <= 0 wherever ``s`` is. Otherwise the scale is ``exp(s / 2)``.
    """

    def __init__(self, *args, as_std: bool = False, **kwargs):  # MLPEncoder's arguments
        super().__init__(*args, **kwargs)
        self.as_std = bool(as_std)

    def to_scale(self, log_var: torch.Tensor) -> torch.Tensor:
        return log_var if self.as_std else torch.exp(0.5 * log_var)


# ----------------------------------------------------------------------- the pitfalls


@dataclass(frozen=True)
class Pitfall:
    """One classic mistake: the program it is, the correct program, and how to compare them.

    :ivar binarized: trained on dynamically binarized data (else on grey levels, dequantized
        when they are 8-bit).
    :ivar mistake: ``(event_shape, config) -> VAE``: the mistaken program.
    :ivar correct: ``(event_shape, config) -> VAE``: the correct program.
    :ivar as_correct_model: the trained mistaken program's networks read under the correct
        model (sharing the parameters).
    """

    name: str
    title: str
    binarized: bool
    mistake_program: str
    correct_program: str
    why: str
    details: str
    mistake: Callable[[Sequence[int], "PitfallsConfig"], VAE]
    correct: Callable[[Sequence[int], "PitfallsConfig"], VAE]
    as_correct_model: Callable[[VAE], VAE]


PITFALLS: Registry[Pitfall] = Registry("pitfall")


def _vae(
    event_shape, likelihood: Likelihood, cfg: "PitfallsConfig", as_std: bool | None = None
) -> VAE:
    """MLP networks as :func:`~pyro_vae.networks.make_networks` builds them (encoder first,
    decoder mirrored), so one seed gives a mistake and its correct program the same initial
    networks; ``as_std`` not ``None``: a :class:`LogVarianceEncoder` with that setting."""
    if as_std is None:
        encoder = MLPEncoder(event_shape, cfg.latent_dim, cfg.hidden)
    else:
        encoder = LogVarianceEncoder(event_shape, cfg.latent_dim, cfg.hidden, as_std=as_std)
    decoder = MLPDecoder(cfg.latent_dim, likelihood.param_shape, tuple(reversed(cfg.hidden)))
    return VAE(encoder, decoder, likelihood)


def _plain(vae: VAE) -> VAE:
    return VAE(vae.encoder, vae.decoder, vae.likelihood)


def _register(p: Pitfall) -> None:
    PITFALLS.register(p.name)(p)


def _bernoulli(event_shape, cfg, as_std: bool | None = None) -> VAE:
    return _vae(event_shape, BernoulliLikelihood(event_shape), cfg, as_std)


_register(Pitfall(
    name="pixel-mean",
    title="a reconstruction term averaged over pixels instead of summed",
    binarized=True,
    mistake_program="Bernoulli VAE, `x` site under `poutine.scale(1/D)`",
    correct_program="the same Bernoulli VAE, scale 1",
    why="a mean over D pixels is the x site scaled by 1/D: a KL weight of D, so the posterior "
        "collapses",
    details="Averaging log p(x|z) over the D dimensions multiplies it by 1/D while the KL keeps "
            "weight 1, so D times that loss is the loss of the correct model with beta = D "
            "(`tests/test_pitfalls.py` checks the identity). Tutorials that multiply the mean "
            "by `original_dim` undo it; those that do not train a beta-VAE with beta = D "
            "without saying so. Its optimum ignores z: the KL falls to about 0, no latent "
            "dimension stays active, and every reconstruction is nearly the same average image.",
    mistake=lambda shape, cfg: pixel_mean_program(_bernoulli(shape, cfg)),
    correct=_bernoulli,
    as_correct_model=_plain,
))

_register(Pitfall(
    name="bce-grey",
    title="binary cross-entropy on grey levels",
    binarized=False,
    mistake_program="`x log λ + (1 - x) log(1 - λ)` on grey x in [0, 1] (unnormalized)",
    correct_program="`continuous-bernoulli`: the same plus log C(λ), normalized",
    why="BCE on grey x integrates to 1/C(λ) ≤ 1/2 over [0, 1]: no likelihood; read as a "
        "continuous Bernoulli it gets its missing log C(λ)",
    details="Binary cross-entropy on grey levels is a Bernoulli 'density' that is not "
            "normalized on [0, 1]: it integrates to 1/C(λ) ≤ 1/2, where log C(λ) is what the "
            "continuous Bernoulli adds to the same term (Loaiza-Ganem & Cunningham 2019). "
            "Its 'ELBO' (the own-objective column) bounds nothing; read as a continuous "
            "Bernoulli with the same logits, the BCE-trained decoder is a proper model whose "
            "ELBO and log p(x) can be compared. The BCE optimum puts λ at the pixel value, "
            "so sigmoid(logits) (the picture its author shows) looks right, but it is the mean "
            "of no distribution; the continuous Bernoulli with that λ has another mean (the "
            "extra panel).",
    mistake=lambda shape, cfg: _vae(shape, BinaryCrossEntropyLikelihood(shape), cfg),
    correct=lambda shape, cfg: _vae(shape, ContinuousBernoulliLikelihood(shape), cfg),
    as_correct_model=lambda vae: VAE(
        vae.encoder, vae.decoder, ContinuousBernoulliLikelihood(vae.event_shape)
    ),
))

_register(Pitfall(
    name="mse",
    title="a squared error with an arbitrary weight against the KL",
    binarized=False,
    mistake_program="Normal(μ, σ) with σ = 1/sqrt(2w) fixed: w × sum of squared errors",
    correct_program="`normal --scale shared`: Normal(μ, σ), σ learned",
    why="w × SSE is a Normal with σ = 1/√(2w) fixed (0.71 for w = 1), several times the data's "
        "spread: the KL wins and images blur",
    details="A summed squared error with weight w is -log N(x; μ, σ²) with σ = 1/sqrt(2w) "
            "fixed, up to a constant: the weight *is* a decoder variance, and an arbitrary one. "
            "Both programs are normalized, so both numbers are honest; the fixed σ (several "
            "times the pixels' spread) makes reconstruction cheap to give up, so the KL wins "
            "and the reconstructions blur. Learning σ (here one shared σ, as the σ-VAE) lets "
            "the data set the balance: a far better likelihood and sharp reconstructions. Its "
            "prior draws may look rougher than the fixed-σ program's: a KL held near the prior "
            "keeps q(z) close to p(z), so prior draws decode to typical images; that is the "
            "same trade-off, not a better model.",
    mistake=lambda shape, cfg: _vae(
        shape,
        FixedScaleNormalLikelihood(
            shape, FixedScaleNormalLikelihood.scale_of_mse_weight(cfg.mse_weight)
        ),
        cfg,
    ),
    correct=lambda shape, cfg: _vae(shape, NormalLikelihood(shape, scale="shared"), cfg),
    as_correct_model=lambda vae: vae,  # already a normalized model: judged as it is
))

_register(Pitfall(
    name="logvar-std",
    title="a log-variance used as a standard deviation",
    binarized=True,
    mistake_program="guide Normal(μ, s), s the encoder's log-variance output",
    correct_program="guide Normal(μ, exp(s/2))",
    why="a log-variance read as a standard deviation gives the guide a scale ≤ 0, which "
        "Pyro's validation refuses",
    details="A hand-written loss that samples `z = z_mean + z_log_var * eps` but computes the "
            "KL for log σ² = `z_log_var` optimizes no ELBO: the distribution it samples from "
            "is not the one in its KL, and its 'standard deviation' is negative wherever the "
            "log-variance is. In a Pyro guide the distribution sampled and its log q are one "
            "object, so the closest program is Normal(μ, s), and Pyro's argument validation "
            "(always on in pyro-vae) refuses it before any loss exists. Reading s as "
            "log σ² (σ = exp(s/2)) is the fix; pyro-vae's own encoders use softplus.",
    mistake=lambda shape, cfg: _bernoulli(shape, cfg, as_std=True),
    correct=lambda shape, cfg: _bernoulli(shape, cfg, as_std=False),
    as_correct_model=lambda vae: vae,  # refused before training: nothing to re-read
))

#: the order of the report (and the default of ``--pitfalls``)
PITFALL_ORDER = ("pixel-mean", "bce-grey", "mse", "logvar-std")


# ----------------------------------------------------------------------- the experiment


@dataclass(frozen=True)
class PitfallsConfig:
    """What :func:`run_pitfalls` trains and how hard it evaluates.

    :param pitfalls: names from :data:`PITFALLS`, in report order.
    :param num_train: train on the first ``num_train`` training datapoints (``None``: all).
    :param num_test: importance-sample log p(x) on the first ``num_test`` test datapoints
        (``None``: all); the ELBO uses the whole test split.
    :param iw_samples: K of the importance-sampled log p(x).
    :param elbo_particles: Monte Carlo particles of the ELBO's reconstruction term.
    :param mse_weight: w of the ``mse`` mistake, ``w * sum (x - mu)^2``: sigma = 1/sqrt(2w).
    """

    dataset: str = "shapes"
    pitfalls: tuple[str, ...] = PITFALL_ORDER
    epochs: int = 10
    num_train: int | None = None
    test_size: int = 1000
    num_test: int | None = None
    num_shapes: int = 10000
    iw_samples: int = 1000
    elbo_particles: int = 10
    latent_dim: int = 20
    hidden: tuple[int, ...] = (400,)
    batch_size: int = 128
    lr: float = 1e-3
    mse_weight: float = 1.0
    seed: int = 0
    device: str = "auto"
    memory_budget_mb: float = 1024.0
    quiet: bool = False

    def __post_init__(self):
        object.__setattr__(self, "pitfalls", tuple(self.pitfalls))
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        for name in self.pitfalls:
            PITFALLS.get(name)
        if not self.pitfalls or len(set(self.pitfalls)) != len(self.pitfalls):
            raise ValueError(f"pitfalls must be distinct names, got {list(self.pitfalls)}")
        for name in ("iw_samples", "elbo_particles", "latent_dim", "test_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1")
        for name in ("num_train", "num_test"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be >= 1")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"every hidden size must be >= 1, got {list(self.hidden)}")
        FixedScaleNormalLikelihood.scale_of_mse_weight(self.mse_weight)
        if not self.memory_budget_mb > 0:
            raise ValueError("memory-budget-mb must be > 0")
        self.train_config()  # epochs, batch size, lr, device validate themselves

    def train_config(self) -> TrainConfig:
        """Every program trains with these settings (analytic-KL ELBO, beta = 1)."""
        return TrainConfig(
            estimator="meanfield", epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
            seed=self.seed, device=self.device, quiet=self.quiet,
        )


@dataclass
class ProgramResult:
    """One trained program; numbers in nats per datapoint (higher is better) on the held-out
    data under the correct model, ``None`` where there is none.

    :ivar objective: the held-out value of the program's **own** objective after training
        (its ELBO as written, e.g. scaled by 1/D, or unnormalized): what its author sees.
    :ivar refused: Pyro's validation message when the program could not be trained.
    """

    pitfall: str
    role: str  # "mistake" or "correct"
    program: str
    objective: float | None = None
    elbo: float | None = None
    elbo_se: float | None = None
    kl: float | None = None
    active_units: int | None = None
    log_px: float | None = None
    log_px_se: float | None = None
    ess_median: float | None = None
    bits_per_dim: float | None = None
    train_seconds: float = 0.0
    refused_step: int | None = None
    refused: str | None = None
    picture: str | None = None
    metrics: list[dict] = field(default_factory=list, repr=False)


@dataclass
class PitfallsReport:
    """What :func:`run_pitfalls` returns; ``markdown`` is ``pitfalls.md``."""

    config: PitfallsConfig
    out: Path
    results: list[ProgramResult]
    markdown: str


def _validation_refusal(error: BaseException) -> str | None:
    """The argument-validation message in ``error``'s chain, shortened; ``None`` if there is
    none (then the error is not a refusal and must not be swallowed)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        text = str(error)
        if isinstance(error, ValueError) and "Expected parameter" in text:
            first = text.strip().splitlines()[0].rstrip(":")
            # the distribution's repr lists every argument's shape: keep its name only
            return re.sub(r"of distribution (\w+)\(.*\) to satisfy",
                          r"of distribution \1 to satisfy", first)
        error = error.__cause__ or error.__context__
    return None


@torch.no_grad()
def prior_means(
    vae: VAE, num: int, seed: int, likelihood: Likelihood | None = None
) -> torch.Tensor:
    """Likelihood means at ``num`` draws ``z ~ p(z)`` of ``vae``'s model, from ``seed``.

    :param likelihood: read the decoder's output with this likelihood's :meth:`mean` instead
        (the same z, since the model draws z first).
    :returns: ``(num, *event_shape)``.
    """
    ref = next(vae.parameters())
    with evaluation_mode(vae), torch.random.fork_rng(devices=[ref.device] if ref.is_cuda else []):
        torch.manual_seed(seed)
        trace = poutine.trace(vae.model).get_trace(None, num)
    params = trace.nodes["_RETURN"]["value"]  # (num, *param_shape)
    return (likelihood or vae.likelihood).mean(params)


def _evaluate(view: VAE, x: torch.Tensor, cfg: PitfallsConfig, dequantized: bool) -> dict:
    from pyro_vae.evaluate import (
        _bits_per_dim_reason, _se, active_units, bits_per_dim, elbo_terms, importance_log_px,
    )

    terms = elbo_terms(
        view, x, cfg.elbo_particles, seed=cfg.seed, memory_budget_mb=cfg.memory_budget_mb,
        quiet=cfg.quiet,
    )
    units = active_units(view, x) if len(x) > 1 else None
    imp = importance_log_px(
        view, x[: cfg.num_test] if cfg.num_test else x, cfg.iw_samples, seed=cfg.seed,
        memory_budget_mb=cfg.memory_budget_mb, quiet=cfg.quiet,
    )
    reason = _bits_per_dim_reason(view, dequantized)
    return {
        "elbo": terms.elbo.mean().item(),
        "elbo_se": _se(terms.elbo),
        "kl": terms.kl.mean().item(),
        "active_units": None if units is None else units.count,
        "log_px": imp.mean,
        "log_px_se": imp.se,
        "ess_median": imp.ess.median().item(),
        "bits_per_dim": None if reason else bits_per_dim(imp.mean, math.prod(view.event_shape)),
    }


def _pictures(
    programs: list[tuple[str, VAE, VAE]], x: torch.Tensor, seed: int, path: Path
) -> bool:
    """Test inputs, then each program's reconstructions, then its samples (likelihood means
    at the same prior draws), in labelled rows: ``(role, trained program, correct reading)``."""
    from pyro_vae.plots import save_panels

    recon, samples = [], []
    for role, vae, view in programs:
        with evaluation_mode(view):
            recon.append((f"{role}: reconstructions", vae.reconstruct(x)))
            samples.append((f"{role}: samples", prior_means(view, 16, seed, vae.likelihood)))
            if view.likelihood is not vae.likelihood:
                what = f"{role} read as {view.likelihood.name} (its mean)"
                recon.append((f"{what}: reconstructions", view.reconstruct(x)))
                samples.append((f"{what}: samples", prior_means(view, 16, seed)))
    return save_panels([("test inputs", x)] + recon + samples, path)


def run_pitfalls(config: PitfallsConfig, out: str | Path | None = None) -> PitfallsReport:
    """Train and evaluate every pitfall of ``config``; write the report into ``out``.

    :param out: output folder (default ``runs/pitfalls-<time>-<dataset>``); refused if it
        already holds a ``pitfalls.md``.
    """
    from pyro_vae.data import Preprocess, load_data
    from pyro_vae.rundir import atomic_write_text, environment, prepare
    from pyro_vae.train import NonFiniteLossError, fit, resolve_device

    cfg = config
    started = time.perf_counter()
    if out is None:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = Path("runs") / f"pitfalls-{stamp}-{Path(cfg.dataset).name or cfg.dataset}"
    if (Path(out) / "pitfalls.md").exists():
        raise FileExistsError(f"{out} already holds a pitfalls report; choose another --out")
    out = prepare(out)
    split = load_data(
        cfg.dataset, test_size=cfg.test_size, seed=cfg.seed, num_shapes=cfg.num_shapes
    )
    if len(split.test) == 0:
        raise ValueError(f"{cfg.dataset} has no test data to evaluate on")
    device = resolve_device(cfg.device)
    shape = tuple(split.event_shape)
    results: list[ProgramResult] = []
    for name in cfg.pitfalls:
        pitfall = PITFALLS.get(name)
        dequantize = not pitfall.binarized and split.is_8bit
        pre = Preprocess("dynamic" if pitfall.binarized else "none", dequantize, cfg.seed)
        data = pre.prepare(split)
        train = data.train[: cfg.num_train] if cfg.num_train else data.train
        with torch.random.fork_rng(devices=[]):  # one fixed draw of the held-out data
            torch.manual_seed(cfg.seed)
            x = pre(data.test).to(device)  # (M, *event_shape)
        trained = []
        for role in ("mistake", "correct"):
            pyro.set_rng_seed(cfg.seed)  # the same initial networks and batches for both
            builder = pitfall.mistake if role == "mistake" else pitfall.correct
            vae = builder(shape, cfg)
            text = pitfall.mistake_program if role == "mistake" else pitfall.correct_program
            result = ProgramResult(name, role, text)
            t0 = time.perf_counter()
            try:
                fitted = fit(vae, train, data.test, cfg.train_config(), preprocess=pre)
            except (NonFiniteLossError, ValueError) as e:
                refusal = _validation_refusal(e)
                if role == "correct" or refusal is None:
                    raise
                result.refused, result.refused_step = refusal, getattr(e, "step", None)
            result.train_seconds = time.perf_counter() - t0
            if result.refused is None:
                result.metrics = fitted.metrics
                result.objective = fitted.test_elbo
                view = pitfall.as_correct_model(vae) if role == "mistake" else vae
                for key, value in _evaluate(view, x, cfg, dequantize).items():
                    setattr(result, key, value)
                trained.append((role, vae, view))
            results.append(result)
            if not cfg.quiet:
                print(_progress_line(result), flush=True)
        picture = f"{name}.png"
        if _pictures(trained, x[:8], cfg.seed, out / picture):
            for r in results[-2:]:
                r.picture = picture
    elapsed = time.perf_counter() - started

    facts = {
        "dataset": cfg.dataset, "event_shape": list(shape), "num_dims": math.prod(shape),
        "num_train": len(split.train[: cfg.num_train] if cfg.num_train else split.train),
        "num_test": len(split.test), "num_test_iw": min(cfg.num_test or len(split.test),
                                                        len(split.test)),
        "torch_threads": torch.get_num_threads(), "device": str(device), "seconds": elapsed,
    }
    atomic_write_text(out / "config.json", json.dumps(
        {"config": asdict(cfg), "data": facts, "environment": environment()}, indent=2
    ) + "\n")
    atomic_write_text(out / "results.json", json.dumps(
        {"units": "nats per datapoint, higher is better, under the correct model",
         "data": facts, "programs": [asdict(r) for r in results]}, indent=2
    ) + "\n")
    markdown = pitfalls_markdown(cfg, results, facts)
    atomic_write_text(out / "pitfalls.md", markdown)
    return PitfallsReport(cfg, out, results, markdown)


def _progress_line(r: ProgramResult) -> str:
    if r.refused is not None:
        return f"{r.pitfall} {r.role}: refused at step {r.refused_step}: {r.refused}"
    return (
        f"{r.pitfall} {r.role}: own objective {r.objective:.2f}, ELBO {r.elbo:.2f}, "
        f"log p(x) {r.log_px:.2f} ({r.train_seconds:.0f} s training)"
    )


def _cell(value, digits: int = 2) -> str:
    if value is None:
        return "—"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def pitfalls_table(results: Sequence[ProgramResult], iw_samples: int) -> str:
    """The Markdown table: one line per program, the mistake above its correct program."""
    head = (
        "| pitfall | program | own objective | ELBO | KL | active units | "
        f"log p(x), IS K={iw_samples} | ESS | bits/dim | why |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        pitfall = PITFALLS.get(r.pitfall)
        first = r.role == "mistake"
        label = f"**{r.pitfall}**" if first else ""
        why = pitfall.why if first else ""
        if r.refused is not None:
            cells = [f"refused at step {r.refused_step}"] + ["—"] * 6
            why = f"{why}: `{r.refused}`"
        else:
            log_px = f"{r.log_px:.2f} ± {r.log_px_se:.2f}" if r.log_px_se is not None else (
                _cell(r.log_px))
            cells = [
                _cell(r.objective), _cell(r.elbo), _cell(r.kl), _cell(r.active_units), log_px,
                _cell(r.ess_median, 1), _cell(r.bits_per_dim, 3),
            ]
        lines.append("| " + " | ".join([label, f"{r.role}: {r.program}", *cells, why]) + " |")
    return "\n".join(lines)


def pitfalls_markdown(cfg: PitfallsConfig, results: Sequence[ProgramResult], facts: dict) -> str:
    """``pitfalls.md``: settings, units, the table, and a section per pitfall."""
    D = facts["num_dims"]
    hidden = "-".join(map(str, cfg.hidden))
    parts = [f"""# The classic VAE loss mistakes, as the Pyro programs they are

Data: `{cfg.dataset}`, {facts['num_train']} training and {facts['num_test']} held-out \
datapoints of shape {tuple(facts['event_shape'])} (D = {D}). Every program: MLP \
{D}-{hidden}-{cfg.latent_dim} (decoder mirrored), Adam (lr {cfg.lr}), batch {cfg.batch_size}, \
{cfg.epochs} epochs of `TraceMeanField_ELBO` on its own model and guide through \
`pyro_vae.train.fit`, seed {cfg.seed}: the mistake and the correct program start from the same \
networks and see the same batches. Torch threads: {facts['torch_threads']}. Wall time: \
{facts['seconds'] / 60:.1f} min.

Every number is **nats per datapoint**, summed over the D = {D} dimensions, higher is better, \
on the held-out data, **under the correct model**: the trained networks read by the model \
the data call for, x-site scale 1, beta = 1 (a BCE-trained decoder as a continuous Bernoulli \
with the same logits; a fixed-sigma Normal is already normalized and is judged as it is).

- own objective: the held-out value of the objective the program was trained on, as its author \
sees it (scaled by 1/D, or unnormalized); not comparable across rows.
- ELBO, KL: analytic KL, reconstruction term with {cfg.elbo_particles} particles, on all \
{facts['num_test']} held-out datapoints; active units: Cov_x(E_q[z_d | x]) > 0.01.
- log p(x): importance sampling with K = {cfg.iw_samples} on the first \
{facts['num_test_iw']} held-out datapoints, mean ± standard error over datapoints; ESS: the \
median effective sample size of the K weights (near 1: the guide is a poor proposal under the \
correct model, and log p(x) a loose lower bound).
- bits/dim = 8 - log p(x) / (D ln 2), for densities on dequantized 8-bit data.
- pixel-mean and logvar-std train a Bernoulli on dynamically binarized data (log p(x) <= 0 is \
a log-probability); bce-grey and mse train densities on dequantized grey levels (log p(x) can be \
positive: the negative loss of a density is no bug).

{pitfalls_table(results, cfg.iw_samples)}
"""]
    by_name: dict[str, list[ProgramResult]] = {}
    for r in results:
        by_name.setdefault(r.pitfall, []).append(r)
    for name, rows in by_name.items():
        p = PITFALLS.get(name)
        section = [f"## {name}: {p.title}", "", p.details, ""]
        section.append(f"- mistake: {p.mistake_program}")
        section.append(f"- correct: {p.correct_program}")
        for r in rows:
            if r.refused is not None:
                section.append(
                    f"- the {r.role} program was refused at step {r.refused_step} by Pyro's "
                    f"validation: `{r.refused}`"
                )
        picture = next((r.picture for r in rows if r.picture), None)
        if picture:
            section += ["", f"![{name}]({picture})"]
        parts.append("\n".join(section) + "\n")
    return "\n".join(parts)


# ----------------------------------------------------------------------- command line


def add_pitfalls_flags(p: argparse.ArgumentParser, default_dataset: str = "shapes") -> None:
    """The flags of ``experiments/loss_pitfalls.py``."""
    d = PitfallsConfig()
    p.add_argument("--dataset", default=default_dataset,
                   help="shapes, mnist, ..., or a path (e.g. ../shared/data/mnist-t10k)")
    p.add_argument("--pitfalls", nargs="+", default=list(d.pitfalls),
                   help=f"which of {', '.join(PITFALL_ORDER)}")
    p.add_argument("--epochs", type=int, default=d.epochs, help="epochs of every program")
    p.add_argument("--num-train", type=int, default=d.num_train,
                   help="train on the first N training datapoints (default: all)")
    p.add_argument("--test-size", type=int, default=d.test_size,
                   help="held-out datapoints when the source has no test split")
    p.add_argument("--num-test", type=int, default=d.num_test,
                   help="importance-sample log p(x) on the first N held-out datapoints "
                        "(default: all)")
    p.add_argument("--num-shapes", type=int, default=d.num_shapes,
                   help="training images of the shapes dataset")
    p.add_argument("--iw-samples", type=int, default=d.iw_samples,
                   help="K of the importance-sampled log p(x)")
    p.add_argument("--elbo-particles", type=int, default=d.elbo_particles,
                   help="particles of the held-out ELBO's reconstruction term")
    p.add_argument("--latent-dim", type=int, default=d.latent_dim)
    p.add_argument("--hidden", type=int, nargs="+", default=list(d.hidden))
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--mse-weight", type=float, default=d.mse_weight,
                   help="w of the mse mistake, w * sum (x - mu)^2: sigma = 1/sqrt(2w)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", choices=DEVICES, default=d.device)
    p.add_argument("--memory-budget-mb", type=float, default=d.memory_budget_mb,
                   help="memory for one chunk of particles x datapoints in evaluation")
    p.add_argument("--out", default=None,
                   help="output folder (default: runs/pitfalls-<time>-<dataset>)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or per-program lines")


def config_from_args(args: argparse.Namespace) -> PitfallsConfig:
    """A :class:`PitfallsConfig` from parsed :func:`add_pitfalls_flags` flags."""
    return PitfallsConfig(
        dataset=args.dataset, pitfalls=tuple(args.pitfalls), epochs=args.epochs,
        num_train=args.num_train, test_size=args.test_size, num_test=args.num_test,
        num_shapes=args.num_shapes, iw_samples=args.iw_samples,
        elbo_particles=args.elbo_particles, latent_dim=args.latent_dim,
        hidden=tuple(args.hidden), batch_size=args.batch_size, lr=args.lr,
        mse_weight=args.mse_weight, seed=args.seed, device=args.device,
        memory_budget_mb=args.memory_budget_mb, quiet=args.quiet,
    )


def main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``experiments/loss_pitfalls.py``: invalid settings end in ``parser.error`` (exit 2)."""
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    report = run_pitfalls(cfg, args.out)
    print(pitfalls_table(report.results, cfg.iw_samples))
    print(f"report: {report.out / 'pitfalls.md'}")
    return 0


__all__ = [
    "BinaryCrossEntropyLikelihood", "FixedScaleNormalLikelihood", "LogVarianceEncoder",
    "MSE_SIGMA", "ObservationScaledVAE", "PITFALLS", "PITFALL_ORDER", "Pitfall",
    "PitfallsConfig", "PitfallsReport", "ProgramResult", "SiteScaleMessenger",
    "UnnormalizedBernoulli", "add_pitfalls_flags", "config_from_args", "pitfalls_markdown",
    "pitfalls_table", "pixel_mean_program", "prior_means", "run_pitfalls",
]
