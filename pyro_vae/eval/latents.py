"""The latent space of a trained model: posterior means and active units.

References:

[1] Y. Burda, R. Grosse, R. Salakhutdinov, *Importance Weighted Autoencoders*, ICLR 2016
(active units).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from pyro import poutine

from pyro_vae.eval.bounds import chunks
from pyro_vae.models import evaluation_mode, latent_sites
from pyro_vae.models.protocol import check_inputs, check_shape, site_mean

#: Burda et al.'s threshold on Cov_x(E_q[z_d | x]) for an active latent dimension.
ACTIVE_THRESHOLD = 0.01


def posterior_means(
    vae,
    x: torch.Tensor,
    batch_size: int = 1000,
    *,
    inputs: Sequence[torch.Tensor] = (),
) -> torch.Tensor:
    """``(N, L)`` float64 on the CPU: ``E_q[z | x]`` read from the guide's distributions
    (latent sites flattened and concatenated in guide order).

    A site whose distribution has no closed-form mean (a flow, a mixture) gives a particle
    mean (:func:`~pyro_vae.models.protocol.site_mean`); a site that depends on an earlier one
    gives its mean at the earlier site's draw, an unbiased one-draw estimate of its marginal
    mean.
    """
    check_shape(vae, x, "evaluation")
    check_inputs(vae, inputs, len(x), "evaluation")
    out = []
    with evaluation_mode(vae):
        for n0, n1 in chunks(len(x), batch_size):
            tr = poutine.trace(vae.guide).get_trace(x[n0:n1], *(t[n0:n1] for t in inputs))
            means = [site_mean(site["fn"]).reshape(n1 - n0, -1) for site in latent_sites(tr)]
            out.append(torch.cat(means, -1).to(torch.float64).cpu())
    return torch.cat(out)


def latent_layout(vae, x: torch.Tensor, *inputs: torch.Tensor) -> list[tuple[str, tuple]]:
    """``[(site, event_shape)]`` of the guide's latent sites, in guide order: how the columns
    of :func:`posterior_means` split into sites."""
    with evaluation_mode(vae), torch.random.fork_rng(devices=[x.device] if x.is_cuda else []):
        tr = poutine.trace(vae.guide).get_trace(x[:1], *(t[:1] for t in inputs))
    return [(site["name"], tuple(site["fn"].event_shape)) for site in latent_sites(tr)]


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
    vae=None,
    x: torch.Tensor | None = None,
    *,
    means: torch.Tensor | None = None,
    threshold: float = ACTIVE_THRESHOLD,
    batch_size: int = 1000,
    inputs: Sequence[torch.Tensor] = (),
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
        means = posterior_means(vae, x, batch_size, inputs=inputs)
    if means.shape[0] < 2:
        raise ValueError("active units need at least two datapoints")
    return ActiveUnits(activity=means.var(0), threshold=threshold)
