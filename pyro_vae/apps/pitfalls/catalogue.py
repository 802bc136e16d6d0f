"""The catalogue: each mistake beside its correct program, and the prose that explains it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyro_vae.apps.pitfalls.programs import (
    BinaryCrossEntropyLikelihood,
    FixedScaleNormalLikelihood,
    LogVarianceEncoder,
    pixel_mean_program,
)
from pyro_vae.models import VAE, Likelihood, MLPDecoder, MLPEncoder
from pyro_vae.models.likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    NormalLikelihood,
    mse_scale,
)
from pyro_vae.registry import Registry

if TYPE_CHECKING:  # the builders' settings; the runner's config holds the catalogue's names
    from pyro_vae.apps.pitfalls.runner import PitfallsConfig


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
    mistake: Callable[[Sequence[int], PitfallsConfig], VAE]
    correct: Callable[[Sequence[int], PitfallsConfig], VAE]
    as_correct_model: Callable[[VAE], VAE]


PITFALLS: Registry[Pitfall] = Registry("pitfall")


def _vae(
    event_shape, likelihood: Likelihood, cfg: PitfallsConfig, as_std: bool | None = None
) -> VAE:
    """MLP networks as :func:`~pyro_vae.models.make_networks` builds them (encoder first,
    decoder mirrored), so one seed gives a mistake and its correct program the same initial
    networks; ``as_std`` not ``None``: a :class:`LogVarianceEncoder` with that setting."""
    latent, hidden = cfg.run.model.latent_dim, cfg.run.model.hidden
    if as_std is None:
        encoder = MLPEncoder(event_shape, latent, hidden)
    else:
        encoder = LogVarianceEncoder(event_shape, latent, hidden, as_std=as_std)
    decoder = MLPDecoder(latent, likelihood.param_shape, tuple(reversed(hidden)))
    return VAE(encoder, decoder, likelihood)


def _plain(vae: VAE) -> VAE:
    return VAE(vae.encoder, vae.decoder, vae.likelihood)


def _register(p: Pitfall) -> None:
    PITFALLS.add(p.name, p)


def _bernoulli(event_shape, cfg, as_std: bool | None = None) -> VAE:
    return _vae(event_shape, BernoulliLikelihood(event_shape), cfg, as_std)


_register(
    Pitfall(
        name="pixel-mean",
        title="a reconstruction term averaged over pixels instead of summed",
        binarized=True,
        mistake_program="Bernoulli VAE, `x` site under `poutine.scale(1/D)`",
        correct_program="the same Bernoulli VAE, scale 1",
        why="a mean over D pixels is the x site scaled by 1/D: a KL weight of D, so the posterior "
        "collapses",
        details="Averaging log p(x|z) over the D dimensions multiplies it by 1/D while the KL "
        "keeps weight 1, so D times that loss is the loss of the correct model with beta = D "
        "(`tests/test_pitfalls.py` checks the identity). Tutorials that multiply the mean "
        "by `original_dim` undo it; those that do not train a beta-VAE with beta = D "
        "without saying so. Its optimum ignores z: the KL falls to about 0, no latent "
        "dimension stays active, and every reconstruction is nearly the same average image.",
        mistake=lambda shape, cfg: pixel_mean_program(_bernoulli(shape, cfg)),
        correct=_bernoulli,
        as_correct_model=_plain,
    )
)

_register(
    Pitfall(
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
    )
)

_register(
    Pitfall(
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
            FixedScaleNormalLikelihood(shape, mse_scale(cfg.mse_weight)),
            cfg,
        ),
        correct=lambda shape, cfg: _vae(shape, NormalLikelihood(shape, scale="shared"), cfg),
        as_correct_model=lambda vae: vae,  # already a normalized model: judged as it is
    )
)

_register(
    Pitfall(
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
    )
)

#: the order of the report (and the default of ``--pitfalls``)
PITFALL_ORDER = ("pixel-mean", "bce-grey", "mse", "logvar-std")
