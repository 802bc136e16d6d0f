"""AdamReplay: the recorded fused Adam update is optimizer.step(), bit for bit, or it is not
used."""

import copy
import inspect

import pyro
import pytest
import torch
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)

from pyro_vae.config import TrainConfig
from pyro_vae.models import build_vae
from pyro_vae.train import AdamReplay, TrainStep

SHAPES = [(7, 5), (5,), (3, 7), (3,)]


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]


def _grads(step: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, generator=g) * 10.0 ** (step % 3 - 1) for s in SHAPES]


def _all(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for group in opt.param_groups for p in group["params"]]


def _assert_same(plain: torch.optim.Optimizer, replayed: torch.optim.Optimizer) -> None:
    for p, q in zip(_all(plain), _all(replayed), strict=True):
        assert torch.equal(p, q)
        for key, value in plain.state[p].items():
            assert torch.equal(value, replayed.state[q][key]), key


def _twins(**adam):
    """Two identical parameter sets, one stepped by optimizer.step(), one by AdamReplay."""
    plain = torch.optim.Adam(_params(), lr=1e-2, fused=True, **adam)
    replayed = torch.optim.Adam(_params(), lr=1e-2, fused=True, **adam)
    return plain, replayed, AdamReplay(replayed)


def _take(plain, update, step: int, found: torch.Tensor | None, grads=None) -> None:
    grads = _grads(step) if grads is None else grads
    for opt in (plain, update.optimizer):
        for p, g in zip(opt.param_groups[0]["params"], grads):
            p.grad = None if g is None else g.clone()
    plain.found_inf = found
    plain.step()
    update.step(found_inf=found)


DECOUPLED = pytest.param(
    {"weight_decay": 0.1, "decoupled_weight_decay": True},
    marks=pytest.mark.skipif(
        "decoupled_weight_decay" not in inspect.signature(torch.optim.Adam).parameters,
        reason="this torch's Adam has no decoupled weight decay",
    ),
)


@pytest.mark.parametrize(
    "adam",
    [{}, {"weight_decay": 0.1}, {"maximize": True, "betas": (0.5, 0.9), "eps": 1e-3}, DECOUPLED],
)
def test_the_replayed_update_is_optimizer_step_bit_for_bit(adam):
    plain, replayed, update = _twins(**adam)
    # a schedule changes the learning rate every step: the replay reads it
    schedules = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=8) for o in (plain, replayed)]
    found = torch.zeros(())
    for step in range(1, 9):
        found.fill_(1.0 if step in (4, 5) else 0.0)  # two skipped updates, then good ones
        before = [p.clone() for p in replayed.param_groups[0]["params"]]
        _take(plain, update, step, found)
        _assert_same(plain, replayed)
        moved = [not torch.equal(b, p) for b, p in zip(before, replayed.param_groups[0]["params"])]
        assert moved == [step not in (4, 5)] * len(SHAPES)
        for s in schedules:
            s.step()
    assert replayed.state[replayed.param_groups[0]["params"][0]]["step"] == 6  # 8 - 2 skipped
    assert update.replayed == 7  # the first step recorded the update
    _take(plain, update, 9, None)  # no flag at all
    _assert_same(plain, replayed)
    assert update.replayed == 8


HOOKS = {
    "own pre": lambda opt, hook: opt.register_step_pre_hook(hook),
    "own post": lambda opt, hook: opt.register_step_post_hook(hook),
    "global pre": lambda opt, hook: register_optimizer_step_pre_hook(hook),
    "global post": lambda opt, hook: register_optimizer_step_post_hook(hook),
}


@pytest.mark.parametrize("kind", list(HOOKS))
def test_a_step_hook_is_honoured_and_the_replay_resumes_once_it_is_removed(kind):
    plain, replayed, update = _twins()
    seen = []
    _take(plain, update, 1, None)
    handle = HOOKS[kind](replayed, lambda opt, a, k: seen.append(2) if opt is replayed else None)
    try:
        _take(plain, update, 2, None)
        _take(plain, update, 3, None)
    finally:
        handle.remove()
    _take(plain, update, 4, None)
    _assert_same(plain, replayed)
    assert seen == [2, 2]  # called at each step while registered, on this optimizer
    assert update.replayed == 1  # steps 1-3 through optimizer.step(), step 4 replayed


def test_a_state_cleared_in_place_starts_again_as_optimizer_step_does():
    plain, replayed, update = _twins()
    for step in (1, 2):
        _take(plain, update, step, None)
    for opt in (plain, replayed):
        opt.state.clear()  # fresh moments and step counts at the next step
    for step in (3, 4):
        _take(plain, update, step, None)
        _assert_same(plain, replayed)
    assert update.replayed == 2  # steps 2 and 4


def test_loading_a_state_records_the_update_again():
    plain, replayed, update = _twins()
    for step in (1, 2):
        _take(plain, update, step, None)
    other = torch.optim.Adam(_params(seed=1), lr=1e-2, fused=True)
    for p, g in zip(other.param_groups[0]["params"], _grads(7)):
        p.grad = g
    other.step()  # a resumed run's state: different moments and step counts
    for opt in (plain, replayed):  # each its own copy: a loaded state shares the tensors
        opt.load_state_dict(copy.deepcopy(other.state_dict()))
    for step in (3, 4, 5):
        _take(plain, update, step, None)
        _assert_same(plain, replayed)
    assert update.replayed == 3  # all but the first step and the first after the load


def test_a_parameter_without_a_gradient_takes_optimizer_step():
    plain, replayed, update = _twins()
    _take(plain, update, 1, None)
    unused = _grads(2)
    unused[1] = None  # Adam leaves that parameter alone
    _take(plain, update, 2, None, grads=unused)
    _take(plain, update, 3, None)
    _assert_same(plain, replayed)
    assert update.replayed == 1  # step 3: every parameter has its state by then


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.Adam(ps, lr=1e-2, fused=True, amsgrad=True),
        lambda ps: torch.optim.Adam(ps, lr=1e-2, foreach=True),
        lambda ps: torch.optim.Adam(ps, lr=torch.tensor(1e-2), fused=True),
        lambda ps: torch.optim.Adam(
            [{"params": ps[:2]}, {"params": ps[2:], "lr": 1e-3}], lr=1e-2, fused=True
        ),
        lambda ps: torch.optim.SGD(ps, lr=1e-2),
    ],
    ids=["amsgrad", "foreach", "tensor-lr", "two-groups", "sgd"],
)
def test_what_the_kernel_replay_does_not_cover_is_always_optimizer_step(make):
    plain, replayed = make(_params()), make(_params())
    update = AdamReplay(replayed)
    for step in (1, 2, 3):
        for opt in (plain, replayed):
            for p, g in zip(_all(opt), _grads(step)):
                p.grad = g.clone()
            opt.step() if opt is plain else update.step()
    _assert_same(plain, replayed)
    assert update.replayed == 0


@pytest.mark.parametrize("grad_clip", [None, 1.0])
def test_the_training_step_replays_its_update_and_trains_as_optimizer_step_would(grad_clip):
    # a do-nothing hook sends every update of the second step through optimizer.step()
    x = torch.rand(16, 6, generator=torch.Generator().manual_seed(0)).round()
    cfg = TrainConfig(device="cpu", lr=1e-2, grad_clip=grad_clip)
    steps = []
    for hooked in (False, True):
        pyro.set_rng_seed(0)
        step = TrainStep(build_vae((6,), latent_dim=2, hidden=(8,)), cfg, torch.device("cpu"))
        if hooked:
            step.optimizer.register_step_pre_hook(lambda opt, args, kwargs: None)
        torch.manual_seed(1)
        with pyro.validation_enabled(True):
            for i in range(1, 6):
                step(x, i)
        steps.append(step)
    (replayed, plain) = steps
    assert (replayed.update.replayed, plain.update.replayed) == (4, 0)
    for (name, p), q in zip(replayed.model.named_parameters(), plain.model.parameters()):
        assert torch.equal(p, q), name
    _assert_same(plain.optimizer, replayed.optimizer)
