"""Record the loss a Pyro estimator derives from the model and guide once; replay it each step.

A Pyro estimator builds the loss by running the guide and the model under effect handlers
(trace, replay, plate, scale), checking every distribution's arguments and support, and
summing log densities: the same tensor operations every step for a given batch shape, plus a
few hundred microseconds of Python around them. :class:`CapturedLoss` runs that program once,
with validation on, while recording the tensor operations that reach the loss
(:func:`torch.fx.experimental.proxy_tensor.make_fx`, above autograd so ``detach`` keeps its
meaning), and from then on replays the recorded graph: the same operations, in the same
order, drawing the same random numbers from the same generator. The loss is still the
estimator's; nothing is written by hand. Optionally the graph is handed to
:func:`torch.compile`.

What is done once instead of every step, and what covers it after (see
:func:`pyro_vae.train.fit`): Pyro's structural checks (plates, shapes, model/guide agreement)
and the distribution-argument checks run at capture; the support of every datapoint is checked
before training starts; a non-finite loss or gradient is caught on the device every step, and
the failing batch is traced again with full validation to name the term.

Each capture is verified: the recorded graph's loss and every parameter gradient must equal
those of the Pyro program on the same batch and random draws. A program the graph cannot
represent (Python hooks, or an estimator that shapes gradients with autograd hooks, such as
DReG) runs eagerly instead; :attr:`CapturedLoss.mode` says which and why.
"""

from __future__ import annotations

import contextlib
import inspect
import operator
import sys
from typing import Callable, Iterator

import torch
from torch import nn

#: how the training step runs the estimator's loss
CAPTURE_MODES = ("graph", "compile", "off")

_MAKE_FX_OPTIONS = {"pre_dispatch": True, "_error_on_data_dependent_ops": False}


def _make_fx_supported() -> bool:
    try:
        from torch.fx.experimental.proxy_tensor import make_fx
    except ImportError:  # pragma: no cover - every supported torch has it
        return False
    return set(_MAKE_FX_OPTIONS) <= set(inspect.signature(make_fx).parameters)


_MODULE_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _hooked(modules: list[nn.Module], params: list[torch.Tensor]) -> bool:
    """Whether a module hook (which a recorded graph would drop) or a parameter's gradient hook
    (which the capture's verification would call) is registered; cheap, checked every call."""
    from torch.nn.modules import module as module_globals

    return (
        any(getattr(module_globals, name, None) for name in
            ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks"))
        or any(getattr(m, name) for m in modules for name in _MODULE_HOOKS)
        or any(p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None)
               for p in params)
    )


@contextlib.contextmanager
def _items_as_tensors() -> Iterator[None]:
    """While recording, Pyro's ``torch_item`` returns the detached tensor, not a float.

    Pyro's estimators read loss values with ``torch_item`` (``.item()``) and return
    ``loss + (surrogate - item(surrogate))``. Recorded, an ``.item()`` would become the first
    batch's number, a constant in every later step's loss value; detached tensors keep the
    value exact (Pyro's own JIT estimators do the same while tracing).
    """
    from pyro.infer import util

    original = util.torch_item

    def detached(x):
        return x.detach() if isinstance(x, torch.Tensor) else x

    patched = [  # the modules that imported it by name (read without triggering imports)
        m for name, m in list(sys.modules.items())
        if name.startswith(("pyro.", "pyro_vae.")) and vars(m).get("torch_item") is original
    ]
    for m in patched:
        m.torch_item = detached
    try:
        yield
    finally:
        for m in patched:
            m.torch_item = original


#: ``op(x, c) == x`` exactly for a floating tensor ``x`` (aten overloads, scalar ``c``)
_IDENTITIES = {
    "aten.add.Tensor": 0, "aten.sub.Tensor": 0, "aten.mul.Tensor": 1, "aten.div.Tensor": 1,
}


def _drop_identities(graph) -> None:
    """Remove ``x + 0``, ``x - 0``, ``x * 1``, ``x / 1`` (Pyro's bookkeeping adds a few) and
    ``expand`` to the shape the tensor already has; values and gradients are unchanged."""
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or len(node.args) < 2 or node.kwargs:
            continue
        x, c = node.args[0], node.args[1]
        out, src = node.meta.get("val"), getattr(x, "meta", {}).get("val")
        if not isinstance(out, torch.Tensor) or not isinstance(src, torch.Tensor):
            continue
        same = out.shape == src.shape and out.dtype == src.dtype and src.is_floating_point()
        name = str(node.target)
        identity = (
            (name in _IDENTITIES and isinstance(c, (int, float)) and not isinstance(c, bool)
             and c == _IDENTITIES[name])
            or (name == "aten.expand.default" and tuple(c) == tuple(src.shape))
        )
        if same and identity:
            node.replace_all_uses_with(x)
            graph.graph.erase_node(node)
    for node in list(graph.graph.nodes):
        # broadcast_tensors of tensors that already share a shape returns them as they are
        if node.op == "call_function" and str(node.target) == "aten.broadcast_tensors.default":
            inputs = node.args[0]
            vals = [getattr(t, "meta", {}).get("val") for t in inputs]
            if all(isinstance(v, torch.Tensor) for v in vals) and len(
                {tuple(v.shape) for v in vals}
            ) == 1 and all(u.op == "call_function" and u.target is operator.getitem
                           for u in node.users):
                for u in list(node.users):
                    u.replace_all_uses_with(inputs[u.args[1]])
                    graph.graph.erase_node(u)
                graph.graph.erase_node(node)
    for node in list(graph.graph.nodes):
        # a constant copied and detached in place, then never read (Pyro's argument checks)
        if (node.op == "call_function" and str(node.target) == "aten.lift_fresh_copy.default"
                and all(str(u.target) == "aten.detach_.default" and not u.users
                        for u in node.users)):
            for u in list(node.users):
                graph.graph.erase_node(u)
            graph.graph.erase_node(node)


class _Program(nn.Module):
    """``forward(x)`` = the estimator's differentiable loss of ``vae`` on ``x`` (summed)."""

    def __init__(self, vae: nn.Module, estimator):
        super().__init__()
        self.vae = vae
        self.estimator = estimator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.estimator.differentiable_loss(self.vae.model, self.vae.guide, x)


class CapturedLoss:
    """``loss(x)``: the estimator's ``differentiable_loss(vae.model, vae.guide, x)``, replayed.

    :param vae: a :class:`~pyro_vae.model.VAE` (anything with ``model``/``guide`` methods and
        parameters).
    :param estimator: a Pyro ELBO with ``differentiable_loss``.
    :param mode: ``"graph"`` (record and replay), ``"compile"`` (record, then
        :func:`torch.compile` the graph of the first batch shape seen, the training batch
        size; its first call compiles, tens of seconds on a small CPU; other shapes, such as
        an epoch's last smaller batch, replay their plain graph) or ``"off"`` (run the Pyro
        program every call).
    :param capturable: ``False`` with a reason string when the estimator is known not to be
        representable as a graph; it then runs eagerly.

    Graphs are kept per batch shape, dtype, device, KL weight and train/eval mode; the
    parameters are inputs of the graph, so optimizer updates, ``load_state_dict`` and
    ``.to(device)`` are seen. A module hook (on any submodule) or a gradient hook on a
    parameter makes that call run the program eagerly, hooks included.

    .. warning:: It belongs to the VAE's structure when built: after replacing a submodule or
        a parameter object, make a new one (as :func:`~pyro_vae.train.fit` does per run).

    .. warning:: Call it inside :func:`pyro.validation_enabled` as the training loop does: the
        capture validates the first batch of each shape, later batches are not re-validated by
        Pyro (check data before the loop, and the loss for finiteness, as :func:`fit` does).
    """

    def __init__(self, vae: nn.Module, estimator, mode: str = "graph",
                 capturable: bool | str = True):
        if mode not in CAPTURE_MODES:
            raise ValueError(f"unknown capture mode {mode!r}; choose one of {CAPTURE_MODES}")
        self.vae, self.estimator = vae, estimator
        self.requested = mode
        self._program = _Program(vae, estimator)
        self._graphs: dict[tuple, Callable | None] = {}
        named = [*vae.named_parameters(), *vae.named_buffers()]
        self._names = [f"vae.{n}" for n, _ in named]
        self._tensors = [t for _, t in named]  # graph inputs, in this order
        self._modules = list(vae.modules())
        self._params = [t for t in self._tensors if isinstance(t, nn.Parameter)]
        self._why_eager: str | None = None
        self._compiled = False
        if mode == "off":
            self._why_eager = "capture is off"
        elif capturable is not True:
            self._why_eager = str(capturable)
        elif not _make_fx_supported():
            self._why_eager = "this torch's make_fx cannot record above autograd"

    @property
    def mode(self) -> str:
        """``"graph"``, ``"compile"``, or ``"eager: <why>"`` for the last call."""
        return self.requested if self._why_eager is None else f"eager: {self._why_eager}"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # hooks may come and go: a hooked call runs eagerly, the next may not
        if self._why_eager is None and not _hooked(self._modules, self._params):
            graph = self._graph_for(x)
            if graph is not None:
                return graph(self._tensors, x)
        return self.eager(x)

    def eager(self, x: torch.Tensor) -> torch.Tensor:
        """The Pyro program itself, run now (no graph)."""
        return self._program(x)

    def _key(self, x: torch.Tensor) -> tuple:
        return (tuple(x.shape), x.dtype, x.device, getattr(self.vae, "beta", None),
                self.vae.training, torch.is_grad_enabled())

    def _graph_for(self, x: torch.Tensor) -> Callable | None:
        key = self._key(x)
        if key not in self._graphs:
            self._graphs[key] = self._record(x)
        return self._graphs[key]

    def _record(self, x: torch.Tensor) -> Callable | None:
        from torch.fx.experimental.proxy_tensor import make_fx

        names = self._names
        program = self._program

        def loss_of(tensors, x):
            return torch.func.functional_call(program, dict(zip(names, tensors)), (x,))

        devices = [x.device] if x.is_cuda else []
        try:
            with torch.random.fork_rng(devices=devices), _items_as_tensors():
                graph = make_fx(loss_of, **_MAKE_FX_OPTIONS)(
                    [t.detach() for t in self._tensors], x
                )
        except (RuntimeError, TypeError, NotImplementedError, AssertionError) as e:
            # the recorder cannot follow this program; Pyro's own errors (ValueError, e.g. a
            # validation failure) propagate, and the eager run below raises any real fault
            self._why_eager = f"the program could not be recorded ({type(e).__name__}: {e})"
            return None
        _drop_identities(graph)
        graph.graph.eliminate_dead_code()  # e.g. log p(z) that the analytic KL never reads
        graph.recompile()
        problem = self._disagreement(graph, x)
        if problem is not None:
            self._why_eager = f"the recorded graph disagrees with the Pyro program ({problem})"
            return None
        if self.requested == "compile" and not self._compiled:
            self._compiled = True  # one compilation: the shape trained on every step
            # aten's own random numbers: the same draws as the Pyro program and the graph
            return torch.compile(graph, dynamic=False, options={"fallback_random": True})
        return graph

    def _disagreement(self, graph: Callable, x: torch.Tensor) -> str | None:
        """Compare loss and gradients of the graph and the program on the same draws."""
        tensors = self._tensors
        params = [t for t in tensors if t.requires_grad]
        devices = [x.device] if x.is_cuda else []
        results = []
        for run in (lambda: self._program(x), lambda: graph(tensors, x)):
            with torch.random.fork_rng(devices=devices):
                loss = run()
                grads = (
                    torch.autograd.grad(loss, params, allow_unused=True)
                    if loss.requires_grad else ()
                )
            results.append((loss.detach(), grads))
        (a, ga), (b, gb) = results
        if not _close(a, b):
            return f"loss {a.item():.6g} vs {b.item():.6g}"
        for (name, _), u, v in zip(
            [(n, p) for n, p in self.vae.named_parameters() if p.requires_grad], ga, gb
        ):
            if (u is None) != (v is None) or (u is not None and not _close(u, v)):
                return f"gradient of {name}"
        return None


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    with contextlib.suppress(RuntimeError):
        return bool(torch.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True))
    return False
