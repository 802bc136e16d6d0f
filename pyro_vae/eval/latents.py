"""The latent space of a trained model: posterior means and active units.

References:

[1] Y. Burda, R. Grosse, R. Salakhutdinov, *Importance Weighted Autoencoders*, ICLR 2016
(active units).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from pyro_vae.eval.bounds import chunks
from pyro_vae.models import VAE, evaluation_mode

#: Burda et al.'s threshold on Cov_x(E_q[z_d | x]) for an active latent dimension.
ACTIVE_THRESHOLD = 0.01


def posterior_means(vae: VAE, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """``(N, L)`` float64 on the CPU: ``E_q[z | x]`` read from the guide's distributions
    (latent sites flattened and concatenated in guide order)."""
    vae.check_shape(x, "evaluation")
    out = []
    with evaluation_mode(vae):
        for n0, n1 in chunks(len(x), batch_size):
            tr = poutine.trace(vae.guide).get_trace(x[n0:n1])
            means = [
                site["fn"].mean.reshape(n1 - n0, -1)
                for site in tr.nodes.values()
                if site["type"] == "sample"
                and not site["is_observed"]
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
