"""The loss mistakes as Pyro programs: identities they satisfy, and the experiment's smoke run."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.apps.pitfalls import (
    PITFALLS,
    FixedScaleNormalLikelihood,
    PitfallsConfig,
    UnnormalizedBernoulli,
)
from pyro_vae.config import from_flat
from pyro_vae.models import VAE
from pyro_vae.models.likelihoods import mse_scale
from pyro_vae.registry import UnknownNameError

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (1, 4, 4)
D = 16
CFG = from_flat(PitfallsConfig(), {"latent_dim": 3, "hidden": (8,)})


def _log_C(lam: torch.Tensor) -> torch.Tensor:
    """log of the continuous Bernoulli's normalizer, 2 atanh(1 - 2 lam) / (1 - 2 lam)."""
    return torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam))


@pytest.mark.parametrize("estimator", [Trace_ELBO, TraceMeanField_ELBO])
def test_d_times_the_pixel_mean_loss_is_the_loss_with_beta_d(estimator):
    """D * loss(x site scaled by 1/D) = loss(scale 1, beta = D): the same z, the same value,
    the same gradient."""
    pyro.set_rng_seed(1)
    pixel_mean = PITFALLS.get("pixel-mean").mistake(SHAPE, CFG).double()
    beta_d = VAE(pixel_mean.encoder, pixel_mean.decoder, pixel_mean.likelihood, beta=D)
    x = torch.bernoulli(torch.full((5, *SHAPE), 0.3, dtype=torch.float64))
    losses, grads = [], []
    for vae, factor in ((pixel_mean, D), (beta_d, 1)):
        pyro.set_rng_seed(7)
        loss = factor * estimator(num_particles=3, vectorize_particles=True).differentiable_loss(
            vae.model, vae.guide, x
        )
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, list(pixel_mean.parameters())))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-12, atol=1e-10)
    for g0, g1 in zip(*grads):
        torch.testing.assert_close(g0, g1, rtol=1e-10, atol=1e-10)
    # and it is not the correct model's loss: the reconstruction is what is weighted down
    pyro.set_rng_seed(7)
    correct = VAE(pixel_mean.encoder, pixel_mean.decoder, pixel_mean.likelihood)
    plain = estimator(num_particles=3, vectorize_particles=True).differentiable_loss(
        correct.model, correct.guide, x
    )
    assert (plain - losses[0]).abs() > 1


def test_bce_on_grey_levels_is_the_continuous_bernoulli_without_its_normalizer():
    lam = torch.tensor([0.02, 0.3, 0.45, 0.6, 0.97], dtype=torch.float64)
    logits = torch.logit(lam)
    x = torch.linspace(0, 1, 100_001, dtype=torch.float64)[:, None]  # (G, 1)
    bce = UnnormalizedBernoulli(logits=logits).log_prob(x)  # (G, 5)
    cb = torch.distributions.ContinuousBernoulli(logits=logits).log_prob(x)
    torch.testing.assert_close(cb - bce, _log_C(lam).expand_as(bce), rtol=0, atol=1e-9)
    # so it integrates to 1/C(lambda) <= 1/2, never to 1
    mass = torch.trapezoid(bce.exp(), x[:, 0], dim=0)
    torch.testing.assert_close(mass, torch.exp(-_log_C(lam)), rtol=1e-8, atol=0)
    assert (mass < 0.5).all()
    half = (
        UnnormalizedBernoulli(logits=torch.zeros((), dtype=torch.float64)).log_prob(x[:, 0]).exp()
    )
    assert abs(torch.trapezoid(half, x[:, 0]).item() - 0.5) < 1e-12  # the most it reaches


def test_the_bce_program_read_as_a_continuous_bernoulli_gains_exactly_sum_log_c():
    pitfall = PITFALLS.get("bce-grey")
    pyro.set_rng_seed(2)
    bce = pitfall.mistake(SHAPE, CFG).double()
    cb = pitfall.as_correct_model(bce)
    x = torch.rand(6, *SHAPE, dtype=torch.float64)
    guide = poutine.trace(bce.guide).get_trace(x)
    logs = []
    for vae in (bce, cb):
        tr = poutine.trace(poutine.replay(vae.model, trace=guide)).get_trace(x)
        tr.compute_log_prob()
        logs.append(tr.nodes["x"]["log_prob"])  # (6,)
    lam = torch.sigmoid(tr.nodes["_RETURN"]["value"].reshape(6, D))
    torch.testing.assert_close(logs[1] - logs[0], _log_C(lam).sum(-1), rtol=0, atol=1e-8)
    with pytest.raises(NotImplementedError, match="not a normalized density"):
        bce.sample(2)


@pytest.mark.parametrize("weight", [1.0, 0.5, 4.0])
def test_a_weighted_squared_error_is_a_normal_with_fixed_sigma(weight):
    sigma = mse_scale(weight)
    lik = FixedScaleNormalLikelihood((D,), sigma).double()
    mu = torch.randn(1, 1, D, dtype=torch.float64)  # (1, k=1, D)
    x = torch.randn(4, D, dtype=torch.float64)
    nll = -lik.distribution(mu).log_prob(x)  # (4,)
    weighted_sse = weight * (x - mu[:, 0]).square().sum(-1)
    const = nll - weighted_sse  # D/2 log(2 pi sigma^2), whatever x is
    torch.testing.assert_close(const, torch.full_like(const, D / 2 * math.log(math.pi / weight)))
    assert abs(mse_scale(1.0) - 1 / math.sqrt(2)) < 1e-15


def test_log_variance_as_standard_deviation_is_refused_and_exp_half_is_its_reading():
    pitfall = PITFALLS.get("logvar-std")
    x = torch.bernoulli(torch.full((8, *SHAPE), 0.5))
    pyro.set_rng_seed(3)
    wrong = pitfall.mistake(SHAPE, CFG)
    pyro.set_rng_seed(3)
    right = pitfall.correct(SHAPE, CFG)
    with pytest.raises(ValueError, match=r"scale .* GreaterThan\(lower_bound=0.0\)"):
        poutine.trace(wrong.guide).get_trace(x)
    tr = poutine.trace(right.guide).get_trace(x)
    s = wrong.encoder(x)[1]  # the same networks: the raw output, read as a log-variance
    torch.testing.assert_close(tr.nodes["z"]["fn"].base_dist.scale.square(), s.exp())
    assert (s <= 0).any()  # why the mistake is refused


def test_experiment_smoke(tmp_path):
    out = tmp_path / "pitfalls"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "error::DeprecationWarning"}
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "experiments" / "loss_pitfalls.py"),
            "--dataset",
            "shapes",
            "--num-shapes",
            "200",
            "--test-size",
            "40",
            "--epochs",
            "1",
            "--iw-samples",
            "4",
            "--elbo-particles",
            "2",
            "--latent-dim",
            "2",
            "--hidden",
            "8",
            "--batch-size",
            "50",
            "--out",
            str(out),
            "--quiet",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert res.returncode == 0, res.stderr
    names = ("pixel-mean", "bce-grey", "mse", "logvar-std")
    for name in ("pitfalls.md", "results.json", "config.json", *(f"{n}.png" for n in names)):
        assert (out / name).is_file(), name
    report = json.loads((out / "results.json").read_text())
    programs = report["programs"]
    assert [(p["pitfall"], p["role"]) for p in programs] == [
        (n, r) for n in names for r in ("mistake", "correct")
    ]
    D = report["data"]["num_dims"]
    for p in programs:
        if (p["pitfall"], p["role"]) == ("logvar-std", "mistake"):
            assert p["refused_step"] == 1 and "GreaterThan(lower_bound=0.0)" in p["refused"]
            continue
        assert p["refused"] is None
        assert math.isfinite(p["elbo"]) and math.isfinite(p["log_px"])
        if p["bits_per_dim"] is not None:  # the densities on dequantized data
            assert p["pitfall"] in ("bce-grey", "mse")
            assert abs(p["bits_per_dim"] - (8 - p["log_px"] / (D * math.log(2)))) < 1e-9
    markdown = (out / "pitfalls.md").read_text()
    assert "| **pixel-mean** |" in markdown and "refused at step 1" in markdown
    assert "| **pixel-mean** |" in res.stdout


def test_unknown_pitfall_lists_the_choices():
    with pytest.raises(UnknownNameError, match="valid choices: bce-grey, logvar-std, mse, pixel"):
        PitfallsConfig(pitfalls=("mean",))
