"""The model protocol: what every tool of pyro-vae needs of a model, and how it reads the rest
from the model's Pyro traces.

A **model** is a :class:`torch.nn.Module` (holding every trainable parameter) with two Pyro
programs over a plate of datapoints:

``model(x, *inputs, num_samples=None)``
    the generative model p(x, z | inputs). Every per-datapoint sample site lies in
    ``pyro.plate(data_plate, batch)``; ``x``, shaped ``(batch, *event_shape)``, is observed at
    the **observed sites** (``pyro.sample(..., obs=x)``); ``x=None`` samples them instead, the
    batch then being the inputs' first dimension, or ``num_samples``.
``guide(x, *inputs)``
    the amortized posterior q(z | x, inputs), sampling the model's **latent sites**.

and these attributes:

``event_shape``
    the shape of one datapoint;
``inputs``
    the names of the extra inputs the programs take after ``x``: ``()`` for most models,
    ``("labels",)`` for a model conditioned on the data's labels (the loaders' labels are then
    passed, indexed like ``x``);
``beta`` (optional)
    a KL weight the model applies to its latent sites; the tools set it to 1 to evaluate the
    model itself (:func:`evaluation_mode`).

Site names, the number of latent sites, their shapes and their distributions are the model's
own: the tools read them from traces (:func:`traces`, :func:`latent_sites`,
:func:`observed_sites`) and never assume a name. Two parameter groups are read the same way
(:func:`parameter_groups`): ``encoder``, every parameter the guide's distributions depend on,
and ``decoder``, every parameter the model's distributions depend on (the prior included).

:class:`LatentModel` is a base class with these conveniences (the beta context, SVI support,
``reconstruct`` and ``sample``); a model need not derive from it.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Iterator, Sequence

import pyro
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.poutine.messenger import Messenger
from pyro.poutine.runtime import _PYRO_STACK, effectful
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import site_is_subsample
from torch import nn
from torch.distributions import Independent

#: the plate over datapoints, unless a model names another (``model.data_plate``)
DATA_PLATE = "data"
#: particles averaged where a site's distribution has no closed-form mean
MEAN_PARTICLES = 64


def check_protocol(model) -> None:
    """Refuse, in one sentence, an object that is not a model of this protocol."""
    missing = [a for a in ("model", "guide", "event_shape", "parameters") if not hasattr(model, a)]
    if missing:
        raise TypeError(
            f"{type(model).__name__} is not a pyro-vae model: it has no "
            f"{', '.join(missing)}. A model is an nn.Module with Pyro programs model(x, *inputs) "
            f"and guide(x, *inputs) and an event_shape (see pyro_vae.models.protocol)"
        )


def inputs_of(model) -> tuple[str, ...]:
    """The names of the extra inputs ``model`` takes after ``x``."""
    return tuple(getattr(model, "inputs", ()))


def data_plate_of(model) -> str:
    return getattr(model, "data_plate", DATA_PLATE)


def check_inputs(model, inputs: Sequence[torch.Tensor], n: int, what: str) -> None:
    """Refuse extra inputs that do not match what ``model`` takes, or the data's length."""
    names = inputs_of(model)
    if len(inputs) != len(names):
        given = "no extra inputs" if not inputs else f"{len(inputs)} extra inputs"
        wanted = ", ".join(names) if names else "none"
        raise ValueError(
            f"{type(model).__name__} takes the extra inputs ({wanted}) after x, but the {what} "
            f"data come with {given}"
        )
    for name, value in zip(names, inputs):
        if len(value) != n:
            raise ValueError(
                f"the {what} {name} have {len(value)} rows for {n} datapoints; index them alike"
            )


@contextlib.contextmanager
def evaluation_mode(model, grad: bool = False) -> Iterator[None]:
    """``eval()``, beta = 1 and ``no_grad`` inside, validation on; the caller's mode and beta
    restored after.

    No optimizer is involved anywhere, so no parameter can move (an optimizer ``step()`` under
    ``no_grad`` would still apply Adam's momentum).

    :param grad: keep autograd on (to read how the program's values depend on each other).
    """
    was_training = model.training
    beta = getattr(model, "beta", None)
    model.eval()
    if beta is not None:
        model.beta = 1.0  # the bound and the ELBO of the model itself, whatever the training weight
    try:
        with torch.set_grad_enabled(grad), pyro.validation_enabled(True):
            yield
    finally:
        if beta is not None:
            model.beta = beta
        model.train(was_training)


# ----------------------------------------------------------------------- reading traces


def latent_sites(trace: Trace) -> list[dict]:
    """The trace's unobserved sample sites (subsample sites left out), in program order."""
    return [
        site
        for site in trace.nodes.values()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]


def observed_sites(trace: Trace) -> list[dict]:
    """The trace's observed sample sites, in program order."""
    return [
        site for site in trace.nodes.values() if site["type"] == "sample" and site["is_observed"]
    ]


def traces(model, x: torch.Tensor, *inputs: torch.Tensor) -> tuple[Trace, Trace]:
    """``(guide_trace, model_trace)``: the guide run on ``x``, then the model replayed on the
    guide's latent values."""
    guide_tr = poutine.trace(model.guide).get_trace(x, *inputs)
    model_tr = poutine.trace(poutine.replay(model.model, trace=guide_tr)).get_trace(x, *inputs)
    return guide_tr, model_tr


def site_mean(fn, particles: int = MEAN_PARTICLES) -> torch.Tensor:
    """The mean of a site's distribution; a particle mean where it has none in closed form
    (a flow, a mixture), shaped like one draw."""
    try:
        return fn.mean
    except NotImplementedError:
        pass
    draws = fn.rsample((particles,)) if fn.has_rsample else fn.sample((particles,))
    return draws.mean(0)


def base_distribution(fn):
    """The distribution under ``Independent`` wrappers."""
    while isinstance(fn, Independent):
        fn = fn.base_dist
    return fn


class LatentValues(Messenger):
    """Sets each latent site of a program to a given value, or else to its distribution's
    mean (:func:`site_mean`), as the program goes: later sites see the values of earlier
    ones. Observed sites keep their data.

    :param values: ``{site name: value}`` for the sites to set.
    """

    def __init__(self, values: dict[str, torch.Tensor] | None = None):
        super().__init__()
        self.values = dict(values or {})

    def _pyro_sample(self, msg) -> None:
        if msg["is_observed"] or msg["done"] or site_is_subsample(msg):
            return
        value = self.values.get(msg["name"])
        if value is None:
            value = site_mean(msg["fn"])
        msg["value"] = value.expand(msg["fn"].shape()) if value.dim() else value
        msg["done"] = True


def _one_observed_site(trace: Trace, what: str) -> dict:
    sites = observed_sites(trace)
    if len(sites) != 1:
        raise NotImplementedError(
            f"{what} needs one observed site; this model observes {len(sites)} "
            f"({', '.join(s['name'] for s in sites) or 'none'})"
        )
    return sites[0]


@torch.no_grad()
def reconstruct(model, x: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """The observation's mean given the guide's latent means: ``(batch, *event_shape)``.

    The guide runs with each latent site at its mean (a particle mean where there is none in
    closed form), so a hierarchical guide's later sites see the means of earlier ones; the
    model is replayed on those values, and the observed site's distribution gives its mean.
    """
    guide_tr = poutine.trace(LatentValues()(model.guide)).get_trace(x, *inputs)
    replayed = poutine.replay(model.model, trace=guide_tr)
    model_tr = poutine.trace(replayed).get_trace(x, *inputs)
    return site_mean(_one_observed_site(model_tr, "a reconstruction")["fn"])


def observation_site(model, num: int, *inputs: torch.Tensor) -> str:
    """The name of the model's observed site, read from one pass of the model on stand-in data
    (zeros, validation off: only the site names are read; the global RNG is left alone)."""
    ref = next(model.parameters())
    stand_in = ref.new_zeros(num, *model.event_shape)  # (num, *event_shape)
    with torch.random.fork_rng(devices=[ref.device] if ref.is_cuda else []):
        with pyro.validation_enabled(False), torch.no_grad():
            trace = poutine.trace(model.model).get_trace(stand_in, *inputs)
    return _one_observed_site(trace, "this picture")["name"]


@torch.no_grad()
def sample(model, num: int, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws from the generative model: ``(mean, x)``, the observation's mean at latents drawn
    from the prior, and a draw of the observation, each ``(num, *event_shape)``.

    :param inputs: the extra inputs of a conditional model, ``num`` rows each.
    """
    name = observation_site(model, num, *inputs)
    trace = poutine.trace(model.model).get_trace(None, *inputs, num_samples=num)
    site = trace.nodes[name]
    return site_mean(site["fn"]), site["value"]


@torch.no_grad()
def decode(model, values: dict[str, torch.Tensor], num: int, *inputs: torch.Tensor) -> torch.Tensor:
    """The observation's mean with the latent sites of ``values`` set, the model's other
    latent sites at their (conditional) means: ``(num, *event_shape)``."""
    name = observation_site(model, num, *inputs)
    with LatentValues(values):
        trace = poutine.trace(model.model).get_trace(None, *inputs, num_samples=num)
    return site_mean(trace.nodes[name]["fn"])


def parameter_groups(model, x: torch.Tensor, *inputs: torch.Tensor) -> dict[str, list]:
    """``encoder``: every parameter the guide's distributions depend on; ``decoder``: every
    parameter the model's distributions depend on, at the guide's latent values held fixed.

    Read from one pass of each program: a parameter enters a group if the log density of that
    program's sites, at values cut from the graph, has a gradient for it. A parameter shared
    by both programs is in both; one used by neither is in none.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.random.fork_rng(devices=[x.device] if x.is_cuda else []), torch.enable_grad():
        guide_tr = poutine.trace(model.guide).get_trace(x, *inputs)
        fixed = {s["name"]: s["value"].detach() for s in latent_sites(guide_tr)}
        model_tr = poutine.trace(poutine.condition(model.model, data=fixed)).get_trace(x, *inputs)
        groups = {}
        for group, trace in (("encoder", guide_tr), ("decoder", model_tr)):
            sites = [s for s in trace.nodes.values() if s["type"] == "sample"]
            if trace is guide_tr:
                sites = latent_sites(trace)
            log_p = sum(s["fn"].log_prob(s["value"].detach()).sum() for s in sites)
            grads = torch.autograd.grad(log_p, params, allow_unused=True) if sites else ()
            groups[group] = [p for p, g in zip(params, grads) if g is not None]
    return groups


# ----------------------------------------------------------------------- SVI support


def _param_capture_listens() -> bool:
    """Whether a handler that collects parameters (SVI's ``poutine.trace(param_only=True)``)
    is active: only then are the parameters announced, so the training loop pays nothing."""
    return any(getattr(handler, "param_only", False) for handler in _PYRO_STACK)


def announce_params(module: nn.Module, prefix: str = "model") -> None:
    """Emit one Pyro ``param`` site per parameter of ``module``, as :func:`pyro.module` does,
    but without touching Pyro's global param store: :class:`~pyro.infer.SVI` (whose
    ``pyro.optim`` optimizer takes the parameters its param-only trace sees) then trains the
    module's own parameters, and no two models can share a stored parameter by name."""
    if not _param_capture_listens():
        return
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        if not hasattr(p, "unconstrained"):
            p.unconstrained = weakref.ref(p)  # how SVI reads a param site's leaf tensor
        full = f"{prefix}$$${name}"
        effectful(type="param")(lambda *_, p=p, **__: p)(
            full, p, constraint=constraints.real, event_dim=None, name=full
        )


def _announcing(program):
    @functools.wraps(program)
    def wrapper(self, *args, **kwargs):
        announce_params(self, type(self).__name__)
        return program(self, *args, **kwargs)

    wrapper._announces = True
    return wrapper


class LatentModel(nn.Module):
    """Base class of the built-in models: the protocol's attributes and its conveniences.

    * Subclasses implement ``model(x=None, *inputs, num_samples=None)`` and
      ``guide(x, *inputs)``; both announce the module's parameters to Pyro's SVI
      (:func:`announce_params`), so ``SVI`` with ``pyro.optim`` trains them.
    * :attr:`beta` and :meth:`kl_weight`: wrap the latent sites of both programs in
      ``with self.kl_weight():`` and every estimator weights their log densities (or their
      analytic KL) by beta; ``beta = 0`` masks them.
    * :meth:`batch_size`, :meth:`check_shape`, :meth:`reconstruct`, :meth:`sample`.

    :param event_shape: the shape of one datapoint.
    """

    #: the extra inputs the programs take after ``x``
    inputs: tuple[str, ...] = ()
    #: the plate over datapoints
    data_plate: str = DATA_PLATE

    def __init__(self, event_shape: Sequence[int], beta: float = 1.0):
        super().__init__()
        self.event_shape = torch.Size(event_shape)
        self.beta = beta

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for name in ("model", "guide"):
            program = cls.__dict__.get(name)
            if callable(program) and not getattr(program, "_announces", False):
                setattr(cls, name, _announcing(program))

    @property
    def beta(self) -> float:
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        value = float(value)
        if not value >= 0:
            raise ValueError(f"beta must be >= 0, got {value}")
        self._beta = value

    def kl_weight(self) -> contextlib.AbstractContextManager:
        """The context that weights the latent sites by beta (in the model and the guide)."""
        if self._beta == 1.0:
            return contextlib.nullcontext()
        if self._beta == 0.0:
            return poutine.mask(mask=False)
        return poutine.scale(scale=self._beta)

    def batch_size(self, x, inputs: Sequence[torch.Tensor], num_samples: int | None) -> int:
        """The batch of a program call: ``x``'s, else the inputs', else ``num_samples``."""
        if x is not None:
            return x.shape[0]
        if inputs:
            return inputs[0].shape[0]
        if num_samples is None:
            raise ValueError("model(x=None) needs num_samples (or the extra inputs)")
        return num_samples

    def model(self, x=None, *inputs, num_samples=None):
        raise NotImplementedError

    def guide(self, x, *inputs):
        raise NotImplementedError

    def check_shape(self, x: torch.Tensor, what: str = "input") -> None:
        """Raise ``ValueError`` unless ``x`` is a non-empty batch of ``event_shape`` datapoints."""
        check_shape(self, x, what)

    def reconstruct(self, x: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        """See :func:`reconstruct`."""
        return reconstruct(self, x, *inputs)

    def sample(self, num_samples: int, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """See :func:`sample`."""
        return sample(self, num_samples, *inputs)


def check_shape(model, x: torch.Tensor, what: str = "input") -> None:
    """Raise ``ValueError`` unless ``x`` is a non-empty batch of the model's datapoints."""
    if x.dim() < 1 or x.shape[0] == 0:
        raise ValueError(f"the {what} data are empty")
    shape = tuple(x.shape[1:])
    if shape != tuple(model.event_shape):
        raise ValueError(
            f"the {what} data have datapoints shaped {shape}, but the model expects "
            f"{tuple(model.event_shape)}"
        )
