"""The training loop: improvement, exact resume, NaN handling, run directory, CLI smoke runs."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pyro_vae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from pyro_vae.data import Preprocess, load_data
from pyro_vae.models import build_vae
from pyro_vae.runs import load_run, run_training
from pyro_vae.train import NonFiniteLossError, TrainStep, fit
from pyro_vae.train.checkpoint import CheckpointError, safe_load
from pyro_vae.train.step import NonFiniteGuard

SMALL = dict(latent_dim=4, hidden=(32,))


def small_config(**train) -> RunConfig:
    return RunConfig(
        model=ModelConfig(**SMALL),
        data=DataConfig(num_shapes=600, test_size=200),
        train=TrainConfig(**{"epochs": 2, "batch_size": 64, "quiet": True, **train}),
    )


def test_elbo_improves_on_the_embedded_data(tmp_path):
    result = run_training(small_config(epochs=4, lr=3e-3), out=tmp_path / "run")
    elbos = [r["test_elbo"] for r in result.metrics]
    assert elbos[-1] > elbos[0] + 20  # nats per datapoint; the first epoch is far from done
    assert result.best_test_elbo == max(elbos)
    # run directory contents
    names = {p.name for p in (tmp_path / "run").iterdir()}
    assert {
        "config.json",
        "metrics.jsonl",
        "metrics.csv",
        "checkpoint.pt",
        "best.pt",
        "reconstructions.png",
        "samples.png",
        "curves.png",
    } <= names
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["binarize"] == "dynamic" and config["event_shape"] == [1, 28, 28]
    assert config["environment"]["pyro"]
    rows = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert set(rows[0]) >= {"epoch", "step", "train_elbo", "test_elbo", "seconds", "lr", "beta"}
    assert rows[-1]["step"] == 4 * 10  # 600 / 64 -> 10 steps per epoch


def _params(vae):
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


@pytest.mark.parametrize("estimator,extra", [("meanfield", {}), ("iwae", {"particles": 3})])
def test_resume_is_bit_identical(tmp_path, estimator, extra):
    cfg = small_config(estimator=estimator, **extra)
    straight = run_training(cfg, out=tmp_path / "a")
    one = RunConfig(
        model=cfg.model, data=cfg.data, train=TrainConfig(**{**cfg.train.__dict__, "epochs": 1})
    )
    run_training(one, out=tmp_path / "b")
    torch.manual_seed(1234)  # whatever happens in between must not matter
    resumed = run_training(cfg, out=tmp_path / "b", resume=True)
    a, b = _params(straight.vae), _params(resumed.vae)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [r["test_elbo"] for r in straight.metrics] == [r["test_elbo"] for r in resumed.metrics]


def test_resume_refuses_another_model(tmp_path):
    run_training(small_config(epochs=1), out=tmp_path / "r")
    other = RunConfig(
        model=ModelConfig(latent_dim=5, hidden=(32,)),
        data=small_config().data,
        train=small_config().train,
    )
    with pytest.raises(CheckpointError, match="model.latent_dim: checkpoint 4, now 5"):
        run_training(other, out=tmp_path / "r", resume=True)


def test_beta_warmup_is_linear_and_refused_for_bounds(tmp_path):
    result = run_training(small_config(epochs=3, warmup_epochs=2, beta=2.0), out=None)
    betas = [r["beta"] for r in result.metrics]
    assert betas == pytest.approx([1.0, 2.0, 2.0])  # end of each epoch: 10/20, 20/20, then flat
    with pytest.raises(ValueError, match="warm-up"):
        small_config(estimator="iwae", warmup_epochs=1)


class _NaNAfter:
    """Decoder hook: outputs times ``factor`` from the ``n``-th call on (an injected fault)."""

    def __init__(self, n, factor):
        self.calls, self.n, self.factor = 0, n, factor

    def __call__(self, module, inputs, output):
        self.calls += 1
        return output * self.factor if self.calls >= self.n else output


def test_non_finite_loss_stops_with_the_step_named_and_checkpoint_kept(tmp_path):
    split = Preprocess("dynamic").prepare(load_data("shapes", num_shapes=256, test_size=64))
    vae = build_vae(split.event_shape, **SMALL)
    cfg = TrainConfig(epochs=3, batch_size=64, quiet=True, log_every=2)
    # before step 1: the support check of the training and test data, one traced probe of
    # the model and the 3 passes that measure a step's memory (6 decoder calls); epoch 1: 4
    # steps + 1 evaluation batch = 5 decoder calls; then 2 good steps in epoch 2
    vae.decoder.register_forward_hook(_NaNAfter(6 + 8, float("nan")))
    with pytest.raises(NonFiniteLossError, match=r"step 7 \(epoch 2\).*kept"):
        fit(vae, split.train, split.test, cfg, preprocess=Preprocess("dynamic"), out=tmp_path)
    state = safe_load(tmp_path / "checkpoint.pt")
    assert state["epoch"] == 1 and state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_infinite_loss_is_caught_on_the_device_and_named(tmp_path):
    # an overflowing decoder gives a finite-parameter, infinite loss: no validation error at
    # that step, only the on-device check (read every log_every steps) sees it
    x = torch.rand(256, 4)
    vae = build_vae((4,), "normal", **SMALL)
    # before step 1: the support check, one traced probe of the model and the 3 passes that
    # measure a step's memory (5 decoder calls)
    vae.decoder.register_forward_hook(_NaNAfter(5 + 3, 1e30))
    cfg = TrainConfig(epochs=2, batch_size=64, quiet=True, log_every=100)
    with pytest.raises(NonFiniteLossError, match=r"step 3 \(epoch 1\).*no checkpoint"):
        fit(vae, x, None, cfg, out=tmp_path)


def test_parameters_that_become_nan_are_reported_as_such(tmp_path):
    split = Preprocess("dynamic").prepare(load_data("shapes", num_shapes=256, test_size=64))
    vae = build_vae(split.event_shape, **SMALL)
    cfg = TrainConfig(epochs=1, batch_size=64, quiet=True)
    with torch.no_grad():
        vae.decoder.net[0].weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="step 1 "):
        fit(vae, split.train, split.test, cfg, preprocess=Preprocess("dynamic"))


def test_data_errors_before_training(tmp_path):
    vae = build_vae((4,), "bernoulli", **SMALL)
    grey = torch.full((10, 4), 0.5)
    with pytest.raises(ValueError, match="Binarize"):
        fit(vae, grey, None, TrainConfig(batch_size=5, quiet=True))
    with pytest.raises(ValueError, match="larger than the 10 training datapoints"):
        fit(vae, grey.round(), None, TrainConfig(batch_size=11, quiet=True))
    with pytest.raises(ValueError, match="model expects"):
        fit(vae, torch.ones(10, 5), None, TrainConfig(batch_size=5, quiet=True))


def test_load_run_loads_the_state_asked_for(tmp_path):
    import shutil

    cfg = small_config(epochs=1)
    run_training(cfg, out=tmp_path / "r")
    shutil.copy(tmp_path / "r" / "checkpoint.pt", tmp_path / "epoch1.pt")
    longer = RunConfig(
        model=cfg.model, data=cfg.data, train=TrainConfig(**{**cfg.train.__dict__, "epochs": 2})
    )
    result = run_training(longer, out=tmp_path / "r", resume=True)
    shutil.copy(tmp_path / "epoch1.pt", tmp_path / "r" / "best.pt")  # best != latest
    latest, _ = load_run(tmp_path / "r", "checkpoint")
    best, _ = load_run(tmp_path / "r", "best")
    epoch1 = safe_load(tmp_path / "epoch1.pt")["model"]
    for k, v in _params(result.vae).items():
        assert torch.equal(v.cpu(), latest.state_dict()[k])
    for k, v in epoch1.items():
        assert torch.equal(v, best.state_dict()[k])
    assert any(not torch.equal(epoch1[k], latest.state_dict()[k]) for k in epoch1)


def test_held_out_elbo_ignores_the_training_kl_weight():
    from pyro_vae.eval import evaluate_elbo

    split = Preprocess("dynamic").prepare(load_data("shapes", num_shapes=64, test_size=64))
    vae = build_vae(split.event_shape, **SMALL)
    values = []
    for beta in (1.0, 0.3):
        vae.beta = beta
        torch.manual_seed(0)
        values.append(evaluate_elbo(vae, split.test, Preprocess("dynamic")))
    assert values[0] == values[1]
    assert vae.beta == 0.3  # restored


def test_resume_drops_metric_rows_newer_than_the_checkpoint(tmp_path):
    cfg = small_config(epochs=1)
    run_training(cfg, out=tmp_path / "r")
    metrics = tmp_path / "r" / "metrics.jsonl"
    # a crash after writing metrics but before the checkpoint leaves a row the checkpoint lacks
    metrics.write_text(metrics.read_text() + json.dumps({"epoch": 2, "test_elbo": 1e9}) + "\n")
    longer = RunConfig(
        model=cfg.model, data=cfg.data, train=TrainConfig(**{**cfg.train.__dict__, "epochs": 2})
    )
    result = run_training(longer, out=tmp_path / "r", resume=True)
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["test_elbo"] < 0
    assert result.metrics == rows


# ------------------------------------------------------------------ command line, subprocess


def _cli(*args, cwd, module=False):
    cmd = (
        [sys.executable, "-m", "pyro_vae"]
        if module
        else [str(Path(sys.executable).parent / "pyro-vae")]
    )
    env = {**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning"}
    return subprocess.run(
        [*cmd, *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def test_cli_train_smoke_and_sample(tmp_path):
    out = tmp_path / "run"
    res = _cli(
        "train",
        "--epochs",
        "1",
        "--num-shapes",
        "500",
        "--test-size",
        "100",
        "--latent-dim",
        "3",
        "--hidden",
        "32",
        "--out",
        str(out),
        "--quiet",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert "test ELBO (nats per datapoint" in res.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and np.isfinite(rows[0]["test_elbo"])
    res = _cli("sample", str(out), "--num", "16", cwd=tmp_path, module=True)
    assert res.returncode == 0, res.stderr
    assert (out / "samples-0.png").is_file()


def test_cli_config_file_and_flag_precedence(tmp_path):
    (tmp_path / "c.toml").write_text(
        "epochs = 1\nlatent-dim = 3\nhidden = [16]\nnum_shapes = 300\n"
        'test-size = 50\nlikelihood = "continuous-bernoulli"\n'
    )
    out = tmp_path / "run"
    res = _cli(
        "train",
        "--config",
        "c.toml",
        "--latent-dim",
        "2",
        "--out",
        str(out),
        "--quiet",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["latent_dim"] == 2  # the flag wins
    assert (
        config["model"]["hidden"] == [16]
        and config["model"]["likelihood"] == "continuous-bernoulli"
    )
    assert config["data"]["dequantize"] is True and config["data"]["binarize"] == "none"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--lr", "0"], "lr must be > 0"),
        (["--latent-dim", "0"], "latent-dim must be >= 1"),
        (["--particles", "0"], "particles must be >= 1"),
        (["--beta", "-1"], "beta must be >= 0"),
        (["--epochs", "-1"], "epochs must be >= 0"),
        (["--likelihood", "gauss"], "invalid choice: 'gauss'"),
        (["--estimator", "iwae", "--beta", "0.5"], "no KL weight"),
    ],
)
def test_cli_rejects_invalid_settings_at_parse_time(tmp_path, args, message):
    res = _cli("train", *args, cwd=tmp_path)
    assert res.returncode == 2
    assert message in res.stderr
    assert not (tmp_path / "runs").exists()  # nothing started


def test_non_finite_gradient_with_finite_loss_is_a_bad_step(tmp_path):
    # the loss is finite but one gradient is NaN: no update may use it, no checkpoint keeps it
    split = Preprocess("dynamic").prepare(load_data("shapes", num_shapes=256, test_size=64))
    vae = build_vae(split.event_shape, **SMALL)
    calls = {"n": 0}

    def poison(grad):  # after the 3 backward passes that measure a step's memory
        calls["n"] += 1
        return grad * float("nan") if calls["n"] == 3 + 6 else grad

    vae.decoder.net[0].weight.register_hook(poison)
    cfg = TrainConfig(epochs=3, batch_size=64, quiet=True, log_every=100)
    with pytest.raises(NonFiniteLossError, match=r"loss or its gradient .* step 6 \(epoch 2\)"):
        fit(vae, split.train, split.test, cfg, preprocess=Preprocess("dynamic"), out=tmp_path)
    for name in ("checkpoint.pt", "best.pt"):
        state = safe_load(tmp_path / name)
        assert all(torch.isfinite(v).all() for v in state["model"].values()), name
    assert all(torch.isfinite(p).all() for p in vae.parameters())  # the update was skipped


def test_the_guard_flags_any_non_finite_element_and_nothing_else():
    # every element is tested: one -inf among finite values is caught, finite values whose sum
    # overflows are not a bad step, the values pass unchanged, and the flag stays from the
    # first bad step on, which is named
    guard = NonFiniteGuard(torch.device("cpu"))
    big = torch.full((4,), 3e38)  # finite; their float32 sum is inf
    grads = [torch.randn(3, 5), big.clone()]
    loss = torch.tensor(2.5)
    before = [g.clone() for g in grads]
    assert float(guard.observe([*grads, loss.view(1)], 1)) == 0.0
    assert not torch.isfinite(big.sum()) and guard.first_bad == -1
    assert all(torch.equal(g, b) for g, b in zip(grads, before))
    grads[0][2, 4] = -math.inf
    assert float(guard.observe([*grads, loss.view(1)], 2)) == 1.0
    grads[0][2, 4] = 0.0
    assert float(guard.observe([*grads, loss.view(1)], 3)) == 1.0  # sticky
    assert guard.first_bad == 2
    fresh = NonFiniteGuard(torch.device("cpu"))
    fresh.observe([torch.zeros(2), torch.tensor([math.nan])], 7)  # a NaN loss alone
    assert fresh.first_bad == 7


@pytest.mark.parametrize("grad_clip", [None, 1.0])
def test_a_step_with_an_inf_gradient_element_changes_no_parameter(grad_clip):
    torch.manual_seed(0)
    vae = build_vae((12,), "bernoulli", 2, (8,))
    step = TrainStep(vae, TrainConfig(capture="off", grad_clip=grad_clip), torch.device("cpu"))
    x = torch.bernoulli(torch.full((16, 12), 0.5))
    step(x, 1)
    kept = [p.detach().clone() for p in vae.parameters()]
    handle = vae.decoder.net[0].bias.register_hook(
        lambda g: g.index_fill(0, g.new_tensor([1], dtype=torch.long), math.inf)
    )
    step(x, 2)
    handle.remove()
    assert all(torch.equal(p, k) for p, k in zip(vae.parameters(), kept))
    assert step.guard.first_bad == 2
    assert step.update.replayed == 1  # the skip came through the replayed update


def test_extending_a_cosine_run_is_refused(tmp_path):
    cfg = small_config(epochs=1, lr_schedule="cosine")
    run_training(cfg, out=tmp_path / "r")
    longer = RunConfig(
        model=cfg.model, data=cfg.data, train=TrainConfig(**{**cfg.train.__dict__, "epochs": 2})
    )
    with pytest.raises(CheckpointError, match="cosine .* spans 10 steps"):
        run_training(longer, out=tmp_path / "r", resume=True)


def test_no_test_split_trains_and_keeps_the_best_training_objective(tmp_path):
    cfg = small_config(epochs=2)
    cfg = RunConfig(model=cfg.model, data=DataConfig(num_shapes=300, test_size=0), train=cfg.train)
    result = run_training(cfg, out=tmp_path / "r")
    assert all(np.isnan(r["test_elbo"]) for r in result.metrics)
    assert result.best_test_elbo == max(r["train_elbo"] for r in result.metrics)


def test_validation_is_on_during_training_even_under_python_O(tmp_path):
    code = """
import torch, pyro.infer.util as u
from pyro_vae.train import fit
from pyro_vae.models import build_vae
from pyro_vae.config import TrainConfig
seen = []
vae = build_vae((4,), "bernoulli", latent_dim=2, hidden=(8,))
vae.decoder.register_forward_hook(lambda m, i, o: seen.append(u.is_validation_enabled()))
fit(vae, torch.ones(8, 4), None, TrainConfig(batch_size=4, epochs=1, quiet=True))
print(u.is_validation_enabled(), all(seen), len(seen))
"""
    res = subprocess.run(
        [sys.executable, "-O", "-c", code], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    # on inside fit (the support check, the probe, the 3 passes that measure a step's memory,
    # 2 steps), restored after
    assert res.stdout.split() == ["False", "True", "7"]
