"""Checks before the first step: the data's sizes, and every datapoint against the support of
the model's observation distribution."""

from __future__ import annotations

import torch

from pyro_vae.data import Preprocess
from pyro_vae.models import VAE, DataSupportError

CHECK_CHUNK = 8192  # datapoints per chunk when checking the support before training


def check_sizes(train: torch.Tensor, batch_size: int) -> None:
    """Refuse empty training data, and a batch larger than the data."""
    n = len(train)
    if n == 0:
        raise ValueError("the training data are empty")
    if batch_size > n:
        raise ValueError(
            f"batch size {batch_size} is larger than the {n} training datapoints; "
            f"lower --batch-size"
        )


def check_data(vae: VAE, data: torch.Tensor, preprocess: Preprocess, what: str) -> None:
    """Check every datapoint, as the model will see it, against the likelihood's support.

    First the likelihood's own check (its actionable message for the built-in likelihoods),
    then the support of the distribution it builds, whatever the likelihood (a custom one
    included): with the loss recorded as a graph, Pyro validates only the first batch.
    Runs under a forked RNG so the check draws nothing from the training's random stream.
    """
    vae.check_shape(data, what)
    support = _observation_support(vae, data)
    with torch.random.fork_rng(devices=[data.device] if data.is_cuda else []):
        for i in range(0, len(data), CHECK_CHUNK):
            x = preprocess(data[i : i + CHECK_CHUNK])  # (b, *event_shape)
            vae.likelihood.check_support(x)
            if support is None:
                continue
            try:
                inside = support.check(x).reshape(len(x), -1).all(-1)  # (b,)
            except NotImplementedError:  # a support that depends on the parameters
                support = None
                continue
            if not bool(inside.all()):
                first = i + int((~inside).nonzero()[0, 0])
                raise DataSupportError(
                    f"{what} datapoint {first} (and {int((~inside).sum()) - 1} more among "
                    f"datapoints {i}..{i + len(x) - 1}) lies outside the support of the "
                    f"{vae.likelihood.name or type(vae.likelihood).__name__} likelihood "
                    f"({support}). Transform the data, or choose a likelihood whose support "
                    f"holds them (pyro-vae diagnose lists the valid ones)."
                )


@torch.no_grad()
def _observation_support(vae: VAE, data: torch.Tensor):
    """The support of p(x | z) at z = 0, read from a real decoder output (so the
    distribution's parameters are valid), or ``None`` if they are not; a lookup, not a pass
    of the model, so the decoder's hooks are not run."""
    z = torch.zeros(1, vae.latent_dim, device=data.device)
    try:
        return vae.likelihood.distribution(vae.decoder.forward(z)).support
    except ValueError:  # invalid parameters already: the first step names them
        return None
