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

Recording is strict: a program that reads a value back to Python (``.item()``, a branch on
data) cannot be recorded and runs eagerly; Pyro's own reads (``torch_item``, its NaN warnings)
are turned into tensor operations while recording.

Each capture is verified: the recorded graph's loss and every parameter gradient must equal
those of the Pyro program, run with the caller's validation on, on the same batch and random
draws. That run is where Pyro's checks (plates, shapes, model/guide agreement, distribution
arguments and support) happen, once per batch shape instead of every step; after it (see
:func:`pyro_vae.train.fit`) the support of every datapoint is checked before training starts,
a non-finite loss or gradient is caught on the device every step, and a failing batch is traced
again with full validation to name the term. A program the graph cannot represent (hooks, an
estimator that shapes gradients with autograd hooks such as DReG, in-place changes of its
inputs) runs eagerly instead; :attr:`CapturedLoss.mode` says which and why.
"""

from __future__ import annotations

import contextlib
import inspect
import operator
import sys
import threading
from collections.abc import Callable, Iterator

import pyro
import torch
from pyro import util as pyro_util
from pyro.infer import util as pyro_infer_util
from pyro.poutine.runtime import _PYRO_STACK
from torch import nn
from torch.nn.modules import module as module_globals

from pyro_vae.registry import Registry

#: how the training step runs the estimator's loss
CAPTURE_MODES: Registry[None] = Registry.of(
    "capture mode", ("graph", "compile", "off", "cudagraph")
)

_MAKE_FX_OPTIONS = {"pre_dispatch": True, "_error_on_data_dependent_ops": True}


def _make_fx_supported() -> bool:
    try:
        from torch.fx.experimental.proxy_tensor import make_fx
    except ImportError:  # pragma: no cover - every supported torch has it
        return False
    return set(_MAKE_FX_OPTIONS) <= set(inspect.signature(make_fx).parameters)


_MODULE_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOKS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def _hooked(modules: list[nn.Module], params: list[torch.Tensor]) -> bool:
    """Whether a module hook (which a recorded graph would drop) or a parameter's gradient hook
    (which the capture's verification would call) is registered; cheap, checked every call."""
    return (
        any(getattr(module_globals, name, None) for name in _GLOBAL_HOOKS)
        or any(getattr(m, name) for m in modules for name in _MODULE_HOOKS)
        or any(p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None) for p in params)
    )


def _in_pyro_handler() -> bool:
    """Whether the call happens inside a Pyro effect handler (poutine.scale, condition, ...),
    which would change the program the graph recorded without it."""
    return bool(_PYRO_STACK)


def _passthrough(x, *args, **kwargs):
    return x


def _detached(x):
    return x.detach() if isinstance(x, torch.Tensor) else x


_RECORDING = threading.Lock()  # the patch below is process-wide: one recording at a time

#: Pyro's functions that read a value back to Python, and what stands in for them while
#: recording: the detached tensor, or the value passed through
_READS = {
    "torch_item": (pyro_infer_util.torch_item, _detached),
    "warn_if_nan": (pyro_util.warn_if_nan, _passthrough),
    "warn_if_inf": (pyro_util.warn_if_inf, _passthrough),
}


@contextlib.contextmanager
def _recordable(estimator) -> Iterator[None]:
    """While recording: Pyro's ``torch_item`` returns the detached tensor and its NaN/inf
    warnings pass values through, in the modules that define ``estimator``'s class and its
    bases (``pyro.infer.trace_elbo``, ...), so no value is read back to Python.

    Pyro's estimators read loss values with ``torch_item`` (``.item()``) and return
    ``loss + (surrogate - item(surrogate))``, and warn about a NaN loss by testing it in Python.
    Recorded, a read would become the first batch's number in every later step (the recorder
    refuses any such read); detached tensors keep the value exact, as Pyro's own JIT estimators
    do while tracing, and the non-finite check happens on the device instead (see
    :func:`pyro_vae.train.fit`). The names those modules imported are patched and restored,
    under a lock; a read anywhere else makes the recording fail, and the program runs eagerly.
    """
    modules = {sys.modules[c.__module__] for c in type(estimator).__mro__} - {None}
    with _RECORDING:
        patched = []
        for module in modules:
            namespace = vars(module)
            for attr, (original, replacement) in _READS.items():
                if namespace.get(attr) is original:
                    setattr(module, attr, replacement)
                    patched.append((module, attr, original))
        try:
            yield
        finally:
            for module, attr, original in patched:
                setattr(module, attr, original)


#: ``op(x, c) == x`` exactly for a floating tensor ``x`` (aten overloads, scalar ``c``)
_IDENTITIES = {
    "aten.add.Tensor": 0,
    "aten.sub.Tensor": 0,
    "aten.mul.Tensor": 1,
    "aten.div.Tensor": 1,
}


#: tensors every element of which holds the same number: the zeros and ones of a standard prior
_FILLS = {
    "aten.new_zeros.default": 0,
    "aten.new_ones.default": 1,
    "aten.zeros.default": 0,
    "aten.ones.default": 1,
}


def _filled_with(c) -> int | float | None:
    """The number ``c`` stands for: itself (a Python scalar), or the fill of a graph node made by
    ``zeros``/``ones`` (possibly expanded); ``None`` for anything else."""
    if isinstance(c, (int, float)) and not isinstance(c, bool):
        return c
    while isinstance(c, torch.fx.Node) and str(c.target) == "aten.expand.default":
        c = c.args[0]
    if isinstance(c, torch.fx.Node) and c.op == "call_function":
        return _FILLS.get(str(c.target))
    return None


def _is_call(node, target: str) -> bool:
    """Whether ``node`` is a graph node calling the aten overload named ``target``."""
    return (
        isinstance(node, torch.fx.Node)
        and node.op == "call_function"
        and str(node.target) == target
    )


#: ``op(x, shape)`` that gives ``x`` itself when ``shape`` is the shape ``x`` has (the
#: reshapes, see :data:`_RESHAPES`, go in :func:`_drop_round_trips`)
_SAME_SHAPE = ("aten.expand.default",)

#: operations that only give their first argument another shape (a view, or a copy in order)
_RESHAPES = (
    "aten.reshape.default",
    "aten.view.default",
    "aten.squeeze.dim",
    "aten.squeeze.dims",
    "aten.squeeze.default",
    "aten.unsqueeze.default",
)


def _drop_round_trips(graph) -> None:
    """Replace a reshape (``reshape``, ``view``, ``squeeze``, ``unsqueeze``), or a chain of
    them, that ends where it started, in shape and strides, by its start: Pyro's
    ``sum_rightmost`` flattening an event that is already flat, the likelihood's ``(B, 1, D)``
    for its one output per pixel squeezed back to the decoder's ``(B, D)``. The same numbers in
    the same layout, so values and gradients are unchanged."""
    for node in list(graph.graph.nodes):
        if not any(_is_call(node, name) for name in _RESHAPES):
            continue
        root = node.args[0]
        while any(_is_call(root, name) for name in _RESHAPES):
            root = root.args[0]
        out, src = node.meta.get("val"), getattr(root, "meta", {}).get("val")
        if (
            isinstance(out, torch.Tensor)
            and isinstance(src, torch.Tensor)
            and out.shape == src.shape
            and out.stride() == src.stride()
            and out.dtype == src.dtype
        ):
            node.replace_all_uses_with(root)
            graph.graph.erase_node(node)  # the chain goes with dead-code elimination


def _drop_identities(graph) -> None:
    """Remove ``x + 0``, ``x - 0``, ``x * 1``, ``x / 1``, with ``0`` and ``1`` a scalar or a
    tensor of zeros or ones (Pyro's bookkeeping adds a few; a standard Normal prior's KL
    divides by its scale of ones and subtracts its loc of zeros), and ``expand`` to the shape
    the tensor already has; values and gradients are unchanged (the result keeps ``x``'s shape
    and dtype, or nothing is removed)."""
    for node in list(graph.graph.nodes):
        # broadcast_tensors of tensors that already share a shape returns them as they are
        # (first: it hides a prior's zeros and ones from the identities below)
        if _is_call(node, "aten.broadcast_tensors.default"):
            inputs = node.args[0]
            vals = [getattr(t, "meta", {}).get("val") for t in inputs]
            if (
                all(isinstance(v, torch.Tensor) for v in vals)
                and len({tuple(v.shape) for v in vals}) == 1
                and all(
                    u.op == "call_function" and u.target is operator.getitem for u in node.users
                )
            ):
                for u in list(node.users):
                    u.replace_all_uses_with(inputs[u.args[1]])
                    graph.graph.erase_node(u)
                graph.graph.erase_node(node)
    for node in list(graph.graph.nodes):
        if node.op != "call_function" or len(node.args) < 2 or node.kwargs:
            continue
        x, c = node.args[0], node.args[1]
        name = str(node.target)
        if name in ("aten.add.Tensor", "aten.mul.Tensor") and _filled_with(x) is not None:
            x, c = c, x  # 0 + x, 1 * x
        out, src = node.meta.get("val"), getattr(x, "meta", {}).get("val")
        if not isinstance(out, torch.Tensor) or not isinstance(src, torch.Tensor):
            continue
        same = out.shape == src.shape and out.dtype == src.dtype and src.is_floating_point()
        identity = (name in _IDENTITIES and _filled_with(c) == _IDENTITIES[name]) or (
            name in _SAME_SHAPE and tuple(out.shape) == tuple(src.shape)
        )
        if same and identity:
            node.replace_all_uses_with(x)
            graph.graph.erase_node(node)


def _drop_zero_surrogate(graph) -> None:
    """Replace Pyro's ``loss + (surrogate - detach(surrogate))`` by ``surrogate`` where the
    loss is the surrogate's own operation on the detached input (``-detach(a)`` and ``-a``: an
    estimator without score-function terms).

    Pyro returns the loss's value with the surrogate's gradient; when both are the same
    operation ``f`` of the same ``a``, ``f(detach(a)) + (f(a) - f(a))`` is ``f(a)`` in value
    (the difference is exactly 0 for a finite loss; a non-finite one stays non-finite) and in
    gradient (through ``f(a)``, times 1 twice), so three nodes and their backward go.
    """
    for node in list(graph.graph.nodes):
        if not _is_call(node, "aten.add.Tensor") or len(node.args) != 2 or node.kwargs:
            continue
        for loss, diff in (node.args, node.args[::-1]):
            if not (_is_call(diff, "aten.sub.Tensor") and len(diff.args) == 2):
                continue
            surrogate, detached = diff.args
            if not (
                _is_call(detached, "aten.detach.default")
                and detached.args[0] is surrogate
                and isinstance(loss, torch.fx.Node)
                and isinstance(surrogate, torch.fx.Node)
                and loss.op == surrogate.op == "call_function"
                and loss.target == surrogate.target
                and loss.kwargs == surrogate.kwargs
                and len(loss.args) == len(surrogate.args) >= 1
                and loss.args[1:] == surrogate.args[1:]
                and _is_call(loss.args[0], "aten.detach.default")
                and loss.args[0].args[0] is surrogate.args[0]
            ):
                continue
            out, val = node.meta.get("val"), surrogate.meta.get("val")
            if not (
                isinstance(out, torch.Tensor)
                and isinstance(val, torch.Tensor)
                and out.shape == val.shape
                and out.dtype == val.dtype
            ):
                continue
            node.replace_all_uses_with(surrogate)
            graph.graph.erase_node(node)  # the rest goes with dead-code elimination
            break


def _drop_dead_constants(graph) -> None:
    """Remove constants copied and detached in place, then never read."""
    for node in list(graph.graph.nodes):
        if _is_call(node, "aten.lift_fresh_copy.default") and all(
            _is_call(u, "aten.detach_.default") and not u.users for u in node.users
        ):
            for u in list(node.users):
                graph.graph.erase_node(u)
            graph.graph.erase_node(node)


def _schema(node):
    return getattr(node.target, "_schema", None) if node.op == "call_function" else None


def _mutated_roots(graph) -> list:
    """The tensors (graph nodes) that in-place operations write to, traced back through
    views: a placeholder means the program changes its inputs."""
    roots = []
    for node in graph.graph.nodes:
        schema = _schema(node)
        if schema is None or not schema.is_mutable or not node.args:
            continue
        root = node.args[0]
        while (
            isinstance(root, torch.fx.Node)
            and (s := _schema(root)) is not None
            and any(r.alias_info for r in s.returns)
        ):
            root = root.args[0]  # a view of its first argument
        if isinstance(root, torch.fx.Node):
            roots.append(root)
    return roots


def _fresh(node) -> bool:
    """A newly allocated tensor (what Pyro's samplers fill with random numbers in place)."""
    return node.op == "call_function" and "empty" in str(node.target)


class _Program(nn.Module):
    """``forward(x, *inputs)`` = the estimator's differentiable loss of the model on ``x``
    (summed over the data plate)."""

    def __init__(self, vae: nn.Module, estimator):
        super().__init__()
        self.vae = vae
        self.estimator = estimator

    def forward(self, x: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        return self.estimator.differentiable_loss(self.vae.model, self.vae.guide, x, *inputs)


class CapturedLoss:
    """``loss(x, *inputs)``: the estimator's ``differentiable_loss(vae.model, vae.guide, x,
    *inputs)``, replayed.

    :param vae: a :class:`~pyro_vae.models.VAE` (anything with ``model``/``guide`` methods and
        parameters).
    :param estimator: a Pyro ELBO with ``differentiable_loss``.
    :param mode: ``"graph"`` (record and replay), ``"compile"`` (record, then
        :func:`torch.compile` the graph of the first batch shape seen, the training batch
        size; its first call compiles, tens of seconds on a small CPU; other shapes, such as
        an epoch's last smaller batch, replay their plain graph), ``"cudagraph"`` (as
        ``"compile"``, and on CUDA the compiled forward and backward are replayed as CUDA
        graphs, torch's ``reduce-overhead`` mode: one launch per pass instead of one per
        kernel; on CPU it is ``"compile"``) or ``"off"`` (run the Pyro program every call).

    Graphs are kept per shape, dtype and device of the batch and its extra inputs (labels),
    KL weight and train/eval mode; the parameters and buffers are inputs of the graph, so
    optimizer updates, in-place
    ``load_state_dict`` and ``.to(device)`` are seen. A call with a module hook (on any
    submodule), a gradient hook on a parameter, or inside a Pyro effect handler runs the
    program eagerly. A program that reads a value back to Python (``.item()``, a branch on
    data), changes its inputs in place, or whose graph does not reproduce its loss and
    gradients on the first batch runs eagerly from then on; :attr:`mode` says why.

    .. warning:: It belongs to the VAE and estimator as built: after replacing a submodule or
        a parameter object (``load_state_dict(assign=True)``), or changing a non-tensor
        setting (a likelihood's options, the estimator's alpha), make a new one, as
        :func:`~pyro_vae.train.fit` does per run.

    .. warning:: Pyro's validation runs on the first batch of each key (the verification runs
        the program itself, under the caller's validation setting, as :func:`fit` sets it
        on); later batches are not re-validated by Pyro. Check the data against the support
        before the loop, and the loss for finiteness, as :func:`fit` does.
    """

    def __init__(self, vae: nn.Module, estimator, mode: str = "graph"):
        CAPTURE_MODES.check(mode)
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
        elif not _make_fx_supported():
            self._why_eager = "this torch's make_fx cannot record above autograd"

    @property
    def mode(self) -> str:
        """``"graph"``, ``"compile"``, ``"cudagraph"``, or ``"eager: <why>"`` for the last
        call."""
        return self.requested if self._why_eager is None else f"eager: {self._why_eager}"

    def __call__(self, x: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        # hooks and handlers may come and go: such a call runs eagerly, the next may not
        if (
            self._why_eager is None
            and not _hooked(self._modules, self._params)
            and not _in_pyro_handler()
        ):
            graph = self._graph_for(x, inputs)
            if isinstance(graph, torch.fx.GraphModule):  # its forward: it has no hooks to run
                graph = graph.forward
            if graph is not None:
                return graph(self._tensors, x, *inputs)
        return self.eager(x, *inputs)

    def eager(self, x: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        """The Pyro program itself, run now (no graph)."""
        return self._program(x, *inputs)

    def _key(self, x: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> tuple:
        return (
            *((tuple(t.shape), t.dtype, t.device) for t in (x, *inputs)),
            getattr(self.vae, "beta", None),
            self.vae.training,
            torch.is_grad_enabled(),
        )

    def _graph_for(self, x: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> Callable | None:
        key = self._key(x, inputs)
        if key not in self._graphs:
            self._graphs[key] = self._record(x, inputs)
        return self._graphs[key]

    def _record(self, x: torch.Tensor, inputs: tuple[torch.Tensor, ...]) -> Callable | None:
        from torch.fx.experimental.proxy_tensor import make_fx

        names = self._names
        program = self._program

        def loss_of(tensors, x, *inputs):
            return torch.func.functional_call(program, dict(zip(names, tensors)), (x, *inputs))

        buffers = [t.detach().clone() for t in self._tensors if not isinstance(t, nn.Parameter)]
        devices = [x.device] if x.is_cuda else []
        try:
            # Pyro's checks read values back to Python: they run in the verification below
            with (
                torch.random.fork_rng(devices=devices),
                _recordable(self.estimator),
                pyro.validation_enabled(False),
            ):
                graph = make_fx(loss_of, **_MAKE_FX_OPTIONS)(
                    [t.detach() for t in self._tensors], x, *inputs
                )
        except (RuntimeError, TypeError, NotImplementedError, AssertionError) as e:
            # the recorder cannot follow this program (e.g. it reads a value back to Python);
            # the eager run raises any real fault
            return self._refuse(
                f"the program could not be recorded ({type(e).__name__}: "
                f"{str(e).splitlines()[0] if str(e) else ''})",
                buffers,
            )
        _drop_dead_constants(graph)
        mutated = _mutated_roots(graph)
        if any(root.op == "placeholder" for root in mutated):
            return self._refuse(
                "the program changes its inputs in place (e.g. batch-norm statistics)", buffers
            )
        if all(_fresh(root) for root in mutated):  # only random fills of new tensors
            _drop_identities(graph)
            _drop_round_trips(graph)
            _drop_zero_surrogate(graph)
        graph.graph.eliminate_dead_code()  # e.g. log p(z) that the analytic KL never reads
        graph.recompile()
        try:
            problem = self._disagreement(graph, x, inputs)
        except RuntimeError as e:
            problem = f"{type(e).__name__}: {e}"
        if problem is not None:
            return self._refuse(
                f"the recorded graph disagrees with the Pyro program ({problem})", buffers
            )
        if self.requested in ("compile", "cudagraph") and not self._compiled:
            self._compiled = True  # one compilation: the shape trained on every step
            return torch.compile(graph, dynamic=False, options=compile_options(self.requested))
        return graph

    def _refuse(self, why: str, buffers: list[torch.Tensor]) -> None:
        """Run the Pyro program eagerly from now on; undo what recording did to buffers."""
        with torch.no_grad():
            for t, saved in zip(
                [t for t in self._tensors if not isinstance(t, nn.Parameter)], buffers
            ):
                t.copy_(saved)
        self._why_eager = why
        return None

    def _disagreement(
        self, graph: Callable, x: torch.Tensor, inputs: tuple[torch.Tensor, ...]
    ) -> str | None:
        """Compare loss and gradients of the graph and the program on the same draws."""
        tensors = self._tensors
        params = [t for t in tensors if t.requires_grad]
        devices = [x.device] if x.is_cuda else []
        results = []
        for run in (lambda: self._program(x, *inputs), lambda: graph(tensors, x, *inputs)):
            with torch.random.fork_rng(devices=devices):
                loss = run()
                grads = (
                    torch.autograd.grad(loss, params, allow_unused=True)
                    if loss.requires_grad
                    else ()
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


def compile_options(mode: str) -> dict:
    """Inductor's options for a capture mode: aten's own random numbers (the same draws as the
    Pyro program and the graph), and for ``"cudagraph"`` CUDA graphs (ignored off CUDA)."""
    options = {"fallback_random": True}
    if mode == "cudagraph":
        options["triton.cudagraphs"] = True  # what mode="reduce-overhead" sets
    return options


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    with contextlib.suppress(RuntimeError):
        return bool(torch.allclose(a, b, rtol=1e-5, atol=1e-6, equal_nan=True))
    return False
