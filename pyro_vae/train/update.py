"""The optimizer update of :class:`~pyro_vae.train.TrainStep`: fused Adam, recorded and replayed.

``torch.optim.Adam(fused=True).step()`` spends about 0.12 ms of Python per call before its one
kernel runs (a profiler scope, the hook loops, a state lookup per parameter, grouping the
tensors by device and dtype), 2-3% of a 4 ms step at batch 128 on a CPU. The tensors it hands
the kernel are the same objects every step, so :class:`AdamReplay` records them at the first
step (taken by ``optimizer.step()`` itself, which also creates the state) and afterwards calls
the same three operations ``torch.optim.adam._fused_adam`` calls, in its order, with the
group's hyperparameters read at each step (a learning-rate schedule still applies): the update
is bit-identical to ``optimizer.step()`` (``tests/test_update.py``).

It replays only what it recorded: whenever the replay could differ from ``optimizer.step()``,
that step goes through ``optimizer.step()`` and the update is recorded again (see
:class:`AdamReplay`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.optim import optimizer as _optim

# torch's registries of hooks for every optimizer (torch.optim.register_optimizer_step_*_hook);
# an optimizer without them is never replayed
_GLOBAL_HOOKS = (
    getattr(_optim, "_global_optimizer_pre_hooks", None),
    getattr(_optim, "_global_optimizer_post_hooks", None),
)
# the keys of an Adam group whose meaning the replay knows (a scheduler adds initial_lr); a
# setting a later torch adds is not guessed at: such a group always takes optimizer.step()
_KNOWN_KEYS = frozenset(
    {"params", "param_names", "initial_lr", "lr", "betas", "eps", "weight_decay", "amsgrad",
     "maximize", "foreach", "capturable", "differentiable", "fused", "decoupled_weight_decay"}
)  # fmt: skip


@dataclass
class _Recorded:
    """The tensors ``Adam.step`` passed its kernel, and what they belong to."""

    state: dict  # the optimizer's state dict object (load_state_dict replaces it)
    groups: list  # its param_groups list
    params: list[torch.Tensor]  # group["params"], the list object itself
    exp_avgs: list[torch.Tensor]
    exp_avg_sqs: list[torch.Tensor]
    steps: list[torch.Tensor]  # one 0-d float32 step count per parameter


class AdamReplay:
    """Calls ``optimizer.step()``'s fused Adam kernel on the tensors it recorded.

    :param optimizer: a ``torch.optim.Adam`` with ``fused=True`` and one parameter group
        (any other optimizer works too, and always takes ``optimizer.step()``).

    Replays when the last update was recorded from this optimizer's current state and
    parameter group, every parameter has a gradient, no step hook is registered (the
    optimizer's or torch's global ones: they run on ``optimizer.step()`` only), and the
    group's settings are ones the fused kernel takes as they are (floats, no ``amsgrad``,
    ``capturable`` or ``differentiable``). Otherwise the step is ``optimizer.step()``, which
    records again: after ``load_state_dict`` (resume), ``add_param_group``, or a hook's
    removal the replay resumes by itself.

    .. warning:: The state is recognised by identity (and a cleared one by its size): change
        it through the optimizer's own methods (``load_state_dict``), not by assigning tensors
        into ``optimizer.state``. The three operations are torch's own sequence as of torch
        2.14; ``tests/test_update.py`` compares them with ``optimizer.step()`` on the torch
        installed.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        #: updates replayed so far (the others went through ``optimizer.step()``)
        self.replayed = 0
        self._recorded: _Recorded | None = None

    def step(self, found_inf: torch.Tensor | None = None) -> None:
        """One Adam update of every parameter from its ``.grad``; with ``found_inf`` (a 0-d
        tensor on the parameters' device, as :class:`torch.amp.GradScaler` passes it) a value
        of 1 skips the update on the device and leaves the step counts as they were."""
        rec = self._recorded
        if rec is None or not self._replayable(rec):
            self.optimizer.found_inf = found_inf
            self.optimizer.step()
            self._recorded = self._record()
            return
        group = self.optimizer.param_groups[0]
        grads = [p.grad for p in rec.params]
        beta1, beta2 = group["betas"]
        kernel = torch._fused_adamw_ if group.get("decoupled_weight_decay") else torch._fused_adam_
        with torch.no_grad():  # as Adam.step: torch.optim.adam._fused_adam, one device and dtype
            torch._foreach_add_(rec.steps, 1)
            kernel(
                rec.params, grads, rec.exp_avgs, rec.exp_avg_sqs, [], rec.steps,
                amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2,
                weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
                grad_scale=None, found_inf=found_inf,
            )  # fmt: skip
            if found_inf is not None:  # a skipped update does not count as a step
                torch._foreach_sub_(rec.steps, [found_inf] * len(rec.steps))
        self.replayed += 1

    def _replayable(self, rec: _Recorded) -> bool:
        """Whether replaying ``rec`` now is exactly what ``optimizer.step()`` would do."""
        opt = self.optimizer
        if opt.state is not rec.state or opt.param_groups is not rec.groups:
            return False
        if len(rec.state) != len(rec.params):  # a state cleared or popped in place
            return False
        if len(rec.groups) != 1 or rec.groups[0]["params"] is not rec.params:
            return False
        if opt._optimizer_step_pre_hooks or opt._optimizer_step_post_hooks:
            return False
        if getattr(opt, "grad_scale", None) is not None:  # a GradScaler's: Adam.step passes it
            return False
        if any(hooks is None or hooks for hooks in _GLOBAL_HOOKS):
            return False
        if any(p.grad is None for p in rec.params):
            return False
        return _plain_fused(rec.groups[0])

    def _record(self) -> _Recorded | None:
        """What the step just taken handed its kernel (``None``: not replayable)."""
        opt = self.optimizer
        if type(opt) is not torch.optim.Adam or len(opt.param_groups) != 1:
            return None
        group = opt.param_groups[0]
        params = group["params"]
        if not params or not _plain_fused(group) or not group.keys() <= _KNOWN_KEYS:
            return None
        states = [opt.state.get(p, {}) for p in params]
        if not all({"exp_avg", "exp_avg_sq", "step"} <= s.keys() for s in states):
            return None  # a parameter without a gradient at that step has no state yet
        tensors = [*params, *(s[k] for s in states for k in ("exp_avg", "exp_avg_sq"))]
        first = params[0]
        if any(t.device != first.device or t.dtype != first.dtype for t in tensors):
            return None  # Adam groups these by device and dtype, one kernel each
        if any(s["step"].device != first.device for s in states):
            return None  # fused Adam keeps its step counts beside the parameters
        return _Recorded(
            state=opt.state,
            groups=opt.param_groups,
            params=params,
            exp_avgs=[s["exp_avg"] for s in states],
            exp_avg_sqs=[s["exp_avg_sq"] for s in states],
            steps=[s["step"] for s in states],
        )


def _plain_fused(group: dict) -> bool:
    """Whether ``group`` is fused Adam with settings the kernel takes as they are."""
    if not group["fused"] or group["amsgrad"] or group["capturable"] or group["differentiable"]:
        return False
    beta1, beta2 = group["betas"]
    return all(type(v) is float for v in (group["lr"], beta1, beta2, group["eps"]))
