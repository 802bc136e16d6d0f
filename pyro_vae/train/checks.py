"""Checks before the first step: the data's sizes, every datapoint against the support of the
model's observation distribution, and the traced probe the estimator is checked on."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from pyro import poutine

from pyro_vae.models import DataSupportError, evaluation_mode, observed_sites, traces
from pyro_vae.models.likelihoods import check_finite
from pyro_vae.models.protocol import base_distribution, check_inputs, check_shape
from pyro_vae.validation import invalid_distribution_argument

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


def check_data(
    model,
    data: torch.Tensor,
    preprocess: Callable[[torch.Tensor], torch.Tensor],
    what: str,
    inputs: Sequence[torch.Tensor] = (),
) -> None:
    """Check every datapoint, as the model will see it, against the support of the model's
    observed sites.

    One pass of the model per chunk of :data:`CHECK_CHUNK` datapoints (in eval mode, no
    gradient, validation on) gives each observed site's
    distribution and value; the distribution's own actionable check runs first where it has
    one (the built-in likelihoods say what to do), then its declared support, whatever the
    likelihood (a custom one included): with the loss recorded as a graph, Pyro validates only
    the first batch. Runs under a forked RNG, so the check draws nothing from the training's
    random stream.

    :raises DataSupportError: naming the datapoint, the site and what to do.
    """
    check_shape(model, data, what)
    check_inputs(model, inputs, len(data), what)
    devices = [data.device] if data.is_cuda else []
    with evaluation_mode(model), torch.random.fork_rng(devices=devices):
        for i in range(0, len(data), CHECK_CHUNK):
            x = preprocess(data[i : i + CHECK_CHUNK])  # (b, *event_shape)
            check_finite(x)
            chunk = tuple(t[i : i + CHECK_CHUNK] for t in inputs)
            run = poutine.trace(model.model).get_trace
            trace = _traced_or_none(run, x, *chunk)
            if trace is None:  # invalid parameters already: the first step names them
                return
            for site in observed_sites(trace):
                _check_site(site, what, i)


def _traced_or_none(run: Callable, *args):
    """``run(*args)``, or ``None`` when validation refuses a distribution parameter (a model
    whose parameters are already non-finite): the training's first step then names the fault
    with its step and term."""
    try:
        return run(*args)
    except ValueError as e:
        if invalid_distribution_argument(e):
            return None
        raise


def _check_site(site: dict, what: str, offset: int) -> None:
    fn, value = site["fn"], site["value"]
    base = base_distribution(fn)
    actionable = getattr(base, "support_check", None)  # the built-in likelihoods' own message
    if actionable is not None:
        actionable(value)
    try:
        inside = fn.support.check(value).reshape(len(value), -1).all(-1)  # (b,)
    except NotImplementedError:  # a support that depends on the parameters
        return
    if not bool(inside.all()):
        first = offset + int((~inside).nonzero()[0, 0])
        raise DataSupportError(
            f"{what} datapoint {first} (and {int((~inside).sum()) - 1} more among "
            f"datapoints {offset}..{offset + len(value) - 1}) lies outside the support of the "
            f"{type(base).__name__.lstrip('_')} distribution of the observed site {site['name']!r} "
            f"({fn.support}). Transform the data, or choose a likelihood whose support holds "
            f"them (pyro-vae diagnose lists the valid ones)."
        )


def probe(model, x: torch.Tensor, inputs: Sequence[torch.Tensor] = ()):
    """``(guide_trace, model_trace)`` of the first two datapoints, in evaluation mode (autograd
    on, so that a requirement can read how the sites depend on each other) under a forked RNG;
    ``None`` if validation refuses a distribution parameter (the first step names it). What
    :func:`~pyro_vae.infer.estimator_refusal` reads to refuse an estimator before step 1."""
    devices = [x.device] if x.is_cuda else []
    with evaluation_mode(model, grad=True), torch.random.fork_rng(devices=devices):
        return _traced_or_none(traces, model, x[:2], *(t[:2] for t in inputs))
