"""Checks before the first step: the data's sizes, every datapoint against the support of the
model's observation distribution, the traced probe the estimator is checked on, and the memory
a step will need."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from pyro import poutine

from pyro_vae.config import TrainConfig
from pyro_vae.eval.memory import Allocations, available_bytes
from pyro_vae.infer import make_estimator
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


@dataclass(frozen=True)
class StepMemory:
    """The memory a training step of a model allocates, forward and backward, measured on one
    and two datapoints: ``fixed`` bytes per step (the gradients), ``per_datapoint`` (the
    encoder's pass) and ``per_pair`` per (datapoint x particle) pair (the decoder, the log
    densities). An upper bound: see :class:`~pyro_vae.eval.memory.Allocations`."""

    fixed: int
    per_datapoint: int
    per_pair: int

    def of(self, batch_size: int, particles: int) -> int:
        """The bytes of a step of ``batch_size`` datapoints with ``particles`` particles."""
        return self.fixed + batch_size * (self.per_datapoint + self.per_pair * particles)

    def largest_batch(self, limit: float, particles: int) -> int:
        """The largest batch whose step fits in ``limit`` bytes with ``particles``."""
        return int(max(0.0, limit - self.fixed) // (self.per_datapoint + self.per_pair * particles))

    def most_particles(self, limit: float, batch_size: int) -> int:
        """The most particles a step of ``batch_size`` datapoints fits in ``limit`` bytes."""
        room = limit - self.fixed - batch_size * self.per_datapoint
        return int(max(0.0, room) // max(1, batch_size * self.per_pair))


def step_memory(model, cfg: TrainConfig, x: torch.Tensor, inputs: Sequence[torch.Tensor] = ()):
    """Measure :class:`StepMemory`: the estimator's loss and its backward on (datapoints,
    particles) = (1, 1), (2, 1) and (2, 2), in evaluation mode under a forked RNG (gradients
    reset), so that any model and estimator is measured the way it runs."""
    counts = {}
    devices = [x.device] if x.is_cuda else []
    with evaluation_mode(model, grad=True), torch.random.fork_rng(devices=devices):
        for b, k in ((1, 1), (2, 1), (2, 2)):
            est = make_estimator(cfg.estimator, k, alpha=cfg.alpha)
            chunk = tuple(t[:b] for t in inputs)
            with Allocations() as allocated:
                est.differentiable_loss(model.model, model.guide, x[:b], *chunk).backward()
            counts[b, k] = allocated.bytes
    model.zero_grad(set_to_none=True)
    per_pair = max(0, counts[2, 2] - counts[2, 1]) // 2
    per_datapoint = max(0, counts[2, 1] - counts[1, 1] - per_pair)
    return StepMemory(max(0, counts[1, 1] - per_datapoint - per_pair), per_datapoint, per_pair)


def check_step_memory(memory: StepMemory, cfg: TrainConfig, device: torch.device) -> None:
    """Refuse, before the first step, a step estimated to need more than ``--memory-limit-mb``
    (default: 90% of the memory available now on ``device``), with the estimate and the
    largest batch size and particle count that fit.

    :raises ValueError: the step does not fit.
    """
    if cfg.memory_limit_mb == 0:
        return
    if cfg.memory_limit_mb is not None:
        limit, whose = cfg.memory_limit_mb * 2**20, f"--memory-limit-mb {cfg.memory_limit_mb:g}"
    else:
        available = available_bytes(device)
        if available is None:
            return
        limit, whose = 0.9 * available, f"90% of the {available / 2**30:.1f} GB available"
    need = memory.of(cfg.batch_size, cfg.particles)
    if need <= limit:
        return
    batch, particles = (
        memory.largest_batch(limit, cfg.particles),
        memory.most_particles(limit, cfg.batch_size),
    )
    fits = [f"--batch-size {batch} with --particles {cfg.particles}"] if batch else []
    fits += [f"--particles {particles} with --batch-size {cfg.batch_size}"] if particles else []
    raise ValueError(
        f"a training step of batch {cfg.batch_size} with {cfg.particles} particle(s) is "
        f"estimated to need {need / 2**30:.2f} GB, more than {whose} on {device.type} "
        f"(measured on one and two datapoints: {memory.per_pair / 2**10:.0f} KB per datapoint "
        f"and particle, an upper bound). What fits: {', or '.join(fits) or 'nothing'}; "
        f"--memory-limit-mb sets the limit (0: no check)"
    )
