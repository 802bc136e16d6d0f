"""Gradient diagnostics: the variance and signal-to-noise ratio of an estimator's gradients.

At fixed parameters, :func:`gradient_snr` draws ``R`` independent gradients ``g_1 .. g_R`` of
the per-datapoint loss ``differentiable_loss(model, guide, x) / len(x)`` (the loss the training
loop differentiates) for each estimator and each K, and summarizes them per parameter group
(by default ``encoder``: the guide's network; ``decoder``: the model's network and likelihood):

* ``snr``: the signal-to-noise ratio ``|E g_i| / sd(g_i)`` of each scalar parameter ``i``,
  averaged over the group's parameters (Rainforth et al.);
* ``variance``: ``Var(g_i)`` averaged over the group's parameters.

Moments are accumulated in float64 over the draws (shifted sums up to the fourth power), so a
network with millions of parameters needs no ``R x P`` matrix. Every (estimator, K) pair draws
from the same seed: the comparisons use common random numbers.

Reading the numbers: with ``R`` draws, a parameter whose true SNR is 0 still shows
``|mean| / sd ~ sqrt(2 / (pi R))`` (:func:`snr_noise_floor`); parameters whose gradient is
exactly zero in every draw (unused inputs, dead ReLUs) are left out of the averages. A
gradient without noise (``sd = 0`` but ``mean != 0``) has an infinite SNR.

References:

[1] T. Rainforth, A. R. Kosiorek, T. A. Le, C. J. Maddison, M. Igl, F. Wood, Y. W. Teh,
*Tighter Variational Bounds are Not Necessarily Better*, ICML 2018.

[2] G. Tucker, D. Lawson, S. Gu, C. J. Maddison, *Doubly Reparameterized Gradient Estimators
for Monte Carlo Objectives*, ICLR 2019.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from pyro_vae.infer import make_estimator
from pyro_vae.models import parameter_groups

ParamGroup = nn.Module | Iterable[nn.Parameter]


@dataclass(frozen=True)
class GradientStats:
    """Summary of ``draws`` gradient draws of one estimator at one K for one parameter group.

    :ivar snr: ``|E g_i| / sd(g_i)`` averaged over the group's parameters ``i``.
    :ivar snr_se: an upper bound on the standard error of :attr:`snr`: the mean over
        parameters of the delta-method standard error of each ratio (from the draws' first four
        moments), which bounds the standard error of the average whatever their correlation.
    :ivar variance: ``Var(g_i)`` averaged over the group's parameters (squared nats per
        datapoint per unit parameter).
    :ivar num_params: scalar parameters in the averages (those not exactly zero in every draw).
    """

    estimator: str
    K: int
    group: str
    snr: float
    snr_se: float
    variance: float
    num_params: int
    draws: int

    def as_dict(self) -> dict:
        return asdict(self)


class _Moments:
    """Per-element running mean, variance, skewness and kurtosis of vectors (float64).

    Sums of powers of ``g - g_1`` (shifted by the first draw to avoid cancellation).
    """

    def __init__(self) -> None:
        self.n = 0
        self.shift: torch.Tensor | None = None
        self.sums: list[torch.Tensor] = []

    def add(self, g: torch.Tensor) -> None:
        g = g.detach().to(torch.float64)
        if self.shift is None:
            self.shift = g.clone()
            self.sums = [torch.zeros_like(g) for _ in range(4)]
        d = g - self.shift
        p = d.clone()
        for s in self.sums:
            s += p
            p = p * d
        self.n += 1

    def summary(self) -> tuple[float, float, float, int]:
        """``(mean snr, snr standard-error bound, mean variance, parameters used)``."""
        n = self.n
        if n < 2 or self.shift is None:
            raise ValueError("gradient statistics need at least 2 draws")
        s1, s2, s3, s4 = (s / n for s in self.sums)
        m = s1
        c2 = (s2 - m**2).clamp(min=0.0)  # central moments of the draws (biased)
        c3 = s3 - 3 * m * s2 + 2 * m**3
        c4 = s4 - 4 * m * s3 + 6 * m**2 * s2 - 3 * m**4
        mean = self.shift + m
        var = c2 * n / (n - 1)
        used = (mean != 0) | (var > 0)
        if not used.any():
            return math.nan, math.nan, 0.0, 0
        mean, var, c2, c3, c4 = mean[used], var[used], c2[used], c3[used], c4[used]
        sd = var.sqrt()
        snr = mean.abs() / sd  # inf where a gradient has no noise
        # delta method for |m| / s from Var(m) = s^2/n, Var(s^2) = (c4 - c2^2)/n, Cov = c3/n
        noisy = c2 > 0
        c2 = torch.where(noisy, c2, torch.ones_like(c2))
        skew, kurt = c3 / c2.pow(1.5), c4 / c2**2
        var_snr = (1 + snr**2 * (kurt - 1) / 4 - snr * mean.sign() * skew) / n
        se = torch.where(noisy, var_snr.clamp(min=0.0).sqrt(), torch.zeros_like(var_snr))
        return snr.mean().item(), se.mean().item(), var.mean().item(), int(used.sum())


def snr_noise_floor(draws: int) -> float:
    """Expected ``|mean| / sd`` of a parameter with zero true SNR over ``draws`` Gaussian draws:
    ``sqrt(2 / (pi R))``."""
    return math.sqrt(2.0 / (math.pi * draws))


def default_groups(vae, x: torch.Tensor, *inputs: torch.Tensor) -> dict[str, list]:
    """``encoder``: every parameter the guide's distributions depend on; ``decoder``: every
    parameter the model's depend on (decoder networks, a likelihood's own sigma, a prior's
    parameters), read from the traces of ``x``
    (:func:`~pyro_vae.models.protocol.parameter_groups`)."""
    return parameter_groups(vae, x, *inputs)


def _as_params(group: ParamGroup) -> list[nn.Parameter]:
    params = list(group.parameters()) if isinstance(group, nn.Module) else list(group)
    if not params:
        raise ValueError("a parameter group is empty")
    return params


def gradient_snr(
    vae,
    x: torch.Tensor,
    estimators: str | Sequence[str],
    K_list: Sequence[int],
    R: int = 100,
    groups: Mapping[str, ParamGroup] | None = None,
    seed: int = 0,
    inputs: Sequence[torch.Tensor] = (),
) -> list[GradientStats]:
    """Gradient SNR and variance at the model's current parameters.

    :param x: the batch, as the model sees it ``(batch, *event_shape)``; every draw
        differentiates ``differentiable_loss(model, guide, x, *inputs) / len(x)``.
    :param estimators: registered estimator names (``"iwae"`` or ``["iwae", "dreg"]``).
    :param K_list: particles per draw: K of the importance-weighted bounds, the number of
        averaged particles for the ELBO estimators.
    :param R: gradient draws per (estimator, K), at least 2.
    :param groups: ``{name: module or parameters}``; default :func:`default_groups`.
    :param seed: each (estimator, K) draws from this seed, in a forked RNG (the global RNG
        is left as it was).
    :param inputs: the model's extra inputs (labels) for the batch.
    :returns: one :class:`GradientStats` per estimator, K and group, in that order.

    The model's mode, beta and parameters are left alone (no optimizer is involved).
    """
    if isinstance(estimators, str):
        estimators = [estimators]
    if R < 2:
        raise ValueError(f"R must be >= 2 gradient draws, got {R}")
    if groups is None:
        named = default_groups(vae, x, *inputs)
    else:
        named = {k: _as_params(g) for k, g in groups.items()}
    flat = [p for params in named.values() for p in params]
    sizes = [sum(p.numel() for p in params) for params in named.values()]
    devices = [x.device] if x.is_cuda else []
    rows = []
    for name in estimators:
        for K in K_list:
            est = make_estimator(name, int(K))
            moments = {g: _Moments() for g in named}
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                for _ in range(R):
                    loss = est.differentiable_loss(vae.model, vae.guide, x, *inputs)
                    loss = loss / x.shape[0]
                    grads = torch.autograd.grad(loss, flat, allow_unused=True)
                    g = torch.cat(
                        [
                            (torch.zeros_like(p) if d is None else d).reshape(-1)
                            for p, d in zip(flat, grads)
                        ]
                    )  # (P,)
                    for acc, part in zip(moments.values(), g.split(sizes)):
                        acc.add(part)
            for group, acc in moments.items():
                snr, se, variance, used = acc.summary()
                rows.append(GradientStats(name, int(K), group, snr, se, variance, used, R))
    return rows


def snr_table(rows: Sequence[GradientStats]) -> str:
    """A Markdown table: one line per (estimator, K), SNR (+- its SE bound) and variance per
    group."""
    groups = list(dict.fromkeys(r.group for r in rows))
    keys = list(dict.fromkeys((r.estimator, r.K) for r in rows))
    by = {(r.estimator, r.K, r.group): r for r in rows}
    head = ["estimator", "K"]
    for g in groups:
        head += [f"{g} SNR", f"{g} variance"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for est, K in keys:
        cells = [est, str(K)]
        for g in groups:
            r = by.get((est, K, g))
            cells += (
                ["", ""] if r is None else [f"{r.snr:.3g} +- {r.snr_se:.2g}", f"{r.variance:.3g}"]
            )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_snr(rows: Sequence[GradientStats], title: str | None = None):
    """SNR against K (log-log), one panel per group, one line per estimator, +- the SE bound.

    :returns: a :class:`matplotlib.figure.Figure` (no pyplot; save with ``fig.savefig``).
    """
    from matplotlib.figure import Figure

    groups = list(dict.fromkeys(r.group for r in rows))
    estimators = list(dict.fromkeys(r.estimator for r in rows))
    fig = Figure(figsize=(5 * len(groups), 4), dpi=110)
    axes = fig.subplots(1, len(groups), squeeze=False)[0]
    for ax, group in zip(axes, groups):
        for est in estimators:
            pts = sorted(
                (r.K, r.snr, r.snr_se) for r in rows if r.group == group and r.estimator == est
            )
            pts = [p for p in pts if math.isfinite(p[1]) and p[1] > 0]
            if not pts:
                continue
            ks, snr, se = zip(*pts)
            ax.errorbar(ks, snr, yerr=se, marker="o", ms=4, capsize=2, label=est)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("K (particles)")
        ax.set_ylabel("SNR: mean over parameters of |E g| / sd(g)")
        ax.set_title(f"{group} gradients")
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
