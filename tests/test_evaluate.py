"""Evaluation against closed forms: importance-sampled log p(x), ELBO terms, active units.

The linear-Gaussian VAE (tests/linear_gaussian.py) has an exact log p(x) and an exact diagonal
posterior, so every estimate here is checked against the truth, not against itself.
"""

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

from pyro_vae.apps.evaluate import evaluate_run
from pyro_vae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from pyro_vae.data import Preprocess, load_data
from pyro_vae.eval import (
    CounterNoise,
    active_units,
    bits_per_dim,
    bytes_per_pair,
    choose_chunks,
    counter_uniform,
    elbo_terms,
    evaluate_elbo,
    importance_log_px,
)
from pyro_vae.eval.bounds import (
    BITS_DEQUANTIZED,
    BITS_EXACT,
    bits_per_dim_figures,
    bits_per_dim_reason,
    exact_bits_per_dim,
)
from pyro_vae.models import build_vae
from pyro_vae.runs import run_training
from pyro_vae.train import fit

from linear_gaussian import exact_log_px, make_problem, make_vae

SIGMA = 0.5


@pytest.fixture
def problem():
    W, b, x = make_problem(sigma=SIGMA)
    return W, b, x, exact_log_px(W, b, SIGMA, x)


# ------------------------------------------------------------------ counter-based particles


def test_counter_uniforms_look_uniform_independent_and_distinct():
    n = torch.arange(64).reshape(64, 1, 1)
    k = torch.arange(32).reshape(1, 32, 1)
    d = torch.arange(4)
    u = counter_uniform(7, 0, 123, n, k, d)  # (64, 32, 4) float64
    flat = u.flatten()
    N = flat.numel()
    assert u.shape == (64, 32, 4) and ((flat > 0) & (flat < 1)).all()
    assert len(torch.unique(flat)) == N  # no repeats across datapoints, particles, dimensions
    assert abs(flat.mean().item() - 0.5) < 4 * math.sqrt(1 / 12 / N)
    assert abs(flat.var().item() - 1 / 12) < 0.005
    ks = (flat.sort().values - (torch.arange(N, dtype=torch.float64) + 0.5) / N).abs().max()
    assert ks < 1.63 / math.sqrt(N)  # Kolmogorov-Smirnov at the 1% level
    # neighbouring particles, datapoints and dimensions are uncorrelated
    for a, b in [(u[:, :-1], u[:, 1:]), (u[:-1], u[1:]), (u[..., :-1], u[..., 1:])]:
        r = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
        assert abs(r) < 4 / math.sqrt(a.numel())
    # a value depends on its counters only, not on the shape of the request
    part = counter_uniform(7, 0, 123, n[10:13], k[:, 5:9], d)
    assert torch.equal(part, u[10:13, 5:9])
    assert not torch.equal(counter_uniform(8, 0, 123, n, k, d), u)  # the seed matters
    # float32: exactly representable, and a Normal's inverse CDF stays finite
    u32 = counter_uniform(7, 0, 123, n, k, d, dtype=torch.float32)
    assert torch.isfinite(torch.distributions.Normal(0.0, 1.0).icdf(u32)).all()
    assert (2 * u32 - 1).abs().max() < 1


def test_guide_particles_do_not_depend_on_chunks(problem):
    W, b, x, _ = problem
    vae = make_vae(W, b, SIGMA, loc_shift=0.3, scale_factor=1.5)

    def particles(n0, n1, k0, k1):
        noise = CounterNoise(
            5, data_offset=n0, particle_offset=k0, num_particles=k1 - k0, particle_dim=-2
        )
        with pyro.plate("particles", k1 - k0, dim=-2):
            tr = poutine.trace(noise(vae.guide)).get_trace(x[n0:n1])
        site = tr.nodes["z"]
        assert not site["is_observed"] and site["fn"].batch_shape == (k1 - k0, n1 - n0)
        return site["value"]  # (k, b, L)

    full = particles(0, 16, 0, 40)
    torch.testing.assert_close(particles(3, 9, 11, 29), full[11:29, 3:9], rtol=0, atol=1e-14)
    # the draws are from q: standardized particles are N(0, 1)
    loc, scale = vae.encoder(x)
    eps = ((full - loc) / scale).flatten()
    assert abs(eps.mean()) < 4 / math.sqrt(eps.numel()) and abs(eps.var() - 1) < 0.1


# ------------------------------------------------------------------ log p(x) against the truth


@pytest.mark.parametrize("K", [1, 2, 17, 300])
def test_exact_posterior_as_guide_is_exact_for_any_K(problem, K):
    # with q(z|x) = p(z|x) every weight equals p(x): the estimate is exact and ESS = K
    W, b, x, log_px = problem
    vae = make_vae(W, b, SIGMA)
    r = importance_log_px(vae, x, K, seed=K, quiet=True)
    torch.testing.assert_close(r.log_px, log_px, rtol=0, atol=1e-9)
    torch.testing.assert_close(r.ess, torch.full_like(r.ess, K), rtol=1e-9, atol=0)
    assert r.mc_se.max() < 1e-6


def test_imperfect_guide_converges_from_below(problem):
    W, b, x, log_px = problem
    vae = make_vae(W, b, SIGMA, loc_shift=0.3, scale_factor=1.5)  # overdispersed, shifted
    R = 10  # independent seeds: their spread is the estimator's standard error
    per_seed = {}
    for K in (1, 3, 2000):
        runs = [importance_log_px(vae, x, K, seed=s, quiet=True) for s in range(R)]
        err = torch.stack([r.log_px for r in runs]) - log_px  # (R, N)
        per_seed[K] = err.mean(1)  # (R,)
        mean, se = per_seed[K].mean().item(), (per_seed[K].std() / math.sqrt(R)).item()
        assert mean < 3 * se, (K, mean, se)  # never systematically above log p(x)
        if K == 2000:
            assert abs(mean) < 3 * se and se < 0.01  # unbiased for large K; the check has teeth
            # the delta-method Monte Carlo SE matches the spread over seeds
            ratio = (torch.stack([r.mc_se for r in runs]).mean() / err.std(0).mean()).item()
            assert 0.5 < ratio < 2, ratio
        else:
            assert mean + 5 * se < -0.1, (K, mean, se)  # small K: a bound, clearly below
    # the gap closes as K grows (paired over seeds: particle k is the same for every K)
    for lo, hi in [(1, 3), (3, 2000)]:
        gain = per_seed[hi] - per_seed[lo]
        assert gain.mean() > 5 * gain.std() / math.sqrt(R), (lo, hi)


# ------------------------------------------------------------------ chunks and memory


def _bernoulli_vae_and_data(n=24, dim=12):
    vae = build_vae((dim,), "bernoulli", latent_dim=3, hidden=(16,))
    g = torch.Generator().manual_seed(3)
    x = torch.bernoulli(torch.full((n, dim), 0.3), generator=g)
    return vae, x


def test_chunked_and_unchunked_evaluation_agree(problem):
    W, b, x, _ = problem
    vae = make_vae(W, b, SIGMA, loc_shift=0.3, scale_factor=1.5)  # float64
    full = importance_log_px(vae, x, 60, seed=1, quiet=True)
    assert (full.particle_chunk, full.data_chunk, full.num_chunks) == (60, 16, 1)
    for k, n in [(1, 16), (7, 3), (60, 1), (59, 16)]:
        r = importance_log_px(vae, x, 60, seed=1, particle_chunk=k, data_chunk=n, quiet=True)
        assert (r.particle_chunk, r.data_chunk) == (k, n) and r.chunk_invariant
        # the same particles; only the order of floating-point sums differs
        torch.testing.assert_close(r.log_px, full.log_px, rtol=0, atol=1e-12)
        torch.testing.assert_close(r.ess, full.ess, rtol=1e-10, atol=0)
    other_seed = importance_log_px(vae, x, 60, seed=2, quiet=True)
    assert (other_seed.log_px - full.log_px).abs().max() > 1e-4
    # float32 networks, Bernoulli likelihood
    vae, xb = _bernoulli_vae_and_data()
    a = importance_log_px(vae, xb, 50, seed=4, quiet=True)
    c = importance_log_px(vae, xb, 50, seed=4, particle_chunk=8, data_chunk=5, quiet=True)
    torch.testing.assert_close(c.log_px, a.log_px, rtol=0, atol=1e-4)


def test_small_memory_budget_forces_chunking_and_changes_nothing():
    vae, x = _bernoulli_vae_and_data()
    K = 200
    pair = bytes_per_pair(vae)
    full = importance_log_px(vae, x, K, seed=0, quiet=True)
    assert (full.particle_chunk, full.data_chunk) == (K, len(x))
    # room for all K particles of 3 datapoints
    budget = 3.5 * K * pair / 2**20
    few = importance_log_px(vae, x, K, seed=0, memory_budget_mb=budget, quiet=True)
    assert (few.particle_chunk, few.data_chunk) == (K, 3)
    assert few.particle_chunk * few.data_chunk * pair <= budget * 2**20
    # room for 30 pairs only: particles are chunked too
    tiny = importance_log_px(vae, x, K, seed=0, memory_budget_mb=30.5 * pair / 2**20, quiet=True)
    assert (tiny.particle_chunk, tiny.data_chunk) == (30, 1)
    assert tiny.num_chunks == len(x) * math.ceil(K / 30)
    for r in (few, tiny):
        torch.testing.assert_close(r.log_px, full.log_px, rtol=0, atol=1e-4)
        torch.testing.assert_close(r.ess, full.ess, rtol=1e-3, atol=0)


@pytest.mark.parametrize(
    "K,N,pair,mb",
    [(5000, 10000, 66000, 1024), (5000, 3, 10, 1.0), (7, 100, 10**9, 1e-3), (1, 1, 1, 1.0)],
)
def test_chunk_sizes_fit_the_budget(K, N, pair, mb):
    k, b = choose_chunks(K, N, pair, mb)
    assert 1 <= k <= K and 1 <= b <= N
    assert k * b * pair <= max(mb * 2**20, pair)  # at least one pair whatever the budget
    assert k == K or b == 1  # all particles for fewer datapoints first


# ------------------------------------------------------------------ no parameter moves


def test_evaluation_leaves_every_parameter_bit_identical():
    vae = build_vae((12,), "normal", latent_dim=3, hidden=(16,), scale="per-pixel")
    x = torch.rand(32, 12)
    optimizer = torch.optim.Adam(vae.parameters(), lr=1e-2)
    est = pyro.infer.TraceMeanField_ELBO()
    for _ in range(2):  # Adam now holds momentum that a stray step() would apply
        optimizer.zero_grad()
        est.differentiable_loss(vae.model, vae.guide, x).backward()
        optimizer.step()
    vae.beta = 0.5  # a training-time KL weight; evaluation uses the model itself (beta = 1)
    before = {k: v.clone() for k, v in vae.state_dict().items()}
    grads = {n: p.grad.clone() for n, p in vae.named_parameters()}
    vae.train()
    importance_log_px(vae, x, 50, quiet=True, memory_budget_mb=0.01)
    elbo_terms(vae, x, 10, quiet=True)
    active_units(vae, x)
    after = vae.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    for n, p in vae.named_parameters():
        assert torch.equal(p.grad, grads[n]), n
    assert vae.training and vae.beta == 0.5


# ------------------------------------------------------------------ ELBO terms, active units


def test_elbo_terms_match_evaluate_elbo_in_expectation(problem):
    W, b, x, log_px = problem
    vae = make_vae(W, b, SIGMA, loc_shift=0.3, scale_factor=1.5)
    terms = elbo_terms(vae, x, 2000, seed=0, quiet=True)
    assert terms.recon.shape == (16,) and terms.kl_per_dim.shape == (16, 3)
    torch.testing.assert_close(terms.elbo, terms.recon - terms.kl)
    ours = terms.elbo.mean().item()
    # pyro_vae.eval.evaluate_elbo: TraceMeanField_ELBO, one particle per datapoint
    draws = torch.tensor([evaluate_elbo(vae, x.repeat(50, 1), Preprocess()) for _ in range(20)])
    se = (draws.std() / math.sqrt(len(draws))).item()
    assert abs(ours - draws.mean().item()) < 4 * se + 0.01, (ours, draws.mean(), se)
    assert ours < log_px.mean().item() - 0.1  # the ELBO's gap for this guide
    # the analytic KL of the guide's Normal against N(0, 1), per dimension
    loc, scale = vae.encoder(x)
    kl = 0.5 * (scale**2 + loc**2 - 1) - scale.log()
    torch.testing.assert_close(terms.kl_per_dim, kl.detach(), rtol=1e-12, atol=1e-12)
    # exact posterior: the ELBO is log p(x) in expectation
    exact = elbo_terms(make_vae(W, b, SIGMA), x, 4000, seed=1, quiet=True)
    assert abs(exact.elbo.mean() - log_px.mean()) < 0.01


def test_active_units_and_kl_per_dim_when_the_decoder_ignores_dimensions():
    D, L, n = 6, 4, 400
    g = torch.Generator().manual_seed(1)
    Q, _ = torch.linalg.qr(torch.randn(D, L, generator=g, dtype=torch.float64))
    W = Q * torch.tensor([1.5, 0.0, 1.0, 0.0], dtype=torch.float64)  # dims 1, 3 are unused
    b = torch.randn(D, generator=g, dtype=torch.float64)
    z = torch.randn(n, L, generator=g, dtype=torch.float64)
    x = z @ W.T + b + SIGMA * torch.randn(n, D, generator=g, dtype=torch.float64)
    vae = make_vae(W, b, SIGMA)  # the exact posterior: unused dims get q = N(0, 1) = p(z_d)
    units = active_units(vae, x)
    assert units.active.nonzero().flatten().tolist() == [0, 2] and units.count == 2
    assert units.activity[[1, 3]].max() < 1e-12 and units.activity[[0, 2]].min() > 0.5
    kl = elbo_terms(vae, x, 10, quiet=True).kl_per_dim.mean(0)  # (L,)
    assert kl[[1, 3]].max() < 1e-3 and kl[[0, 2]].min() > 0.1
    # the closed form: posterior variance S = sigma^2 / (sigma^2 + d^2), mean m
    loc, scale = vae.encoder(x)
    expected = (0.5 * (scale**2 + loc**2 - 1) - scale.log()).mean(0)
    torch.testing.assert_close(kl, expected.detach(), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ bits/dim


def test_bits_per_dim():
    # a uniform density on [0, 1]^D puts mass 256^-D on each 8-bit level: 8 bits/dim
    assert bits_per_dim(0.0, 784) == pytest.approx(8.0, abs=1e-12)
    # every nat per datapoint is 1 / (D ln 2) bits/dim less
    assert bits_per_dim(784 * math.log(2), 784) == pytest.approx(7.0)
    assert bits_per_dim_reason(build_vae((4,), "normal", latent_dim=2, hidden=(8,)), True) is None
    bernoulli = build_vae((4,), "bernoulli", latent_dim=2, hidden=(8,))
    assert "discrete" in bits_per_dim_reason(bernoulli, True)
    cb = build_vae((4,), "continuous-bernoulli", latent_dim=2, hidden=(8,))
    assert "dequantized" in bits_per_dim_reason(cb, False)


def test_bits_per_dim_of_a_pmf_over_the_levels_is_exact_and_the_summary_says_which():
    # -log2 P(x) / D: every nat per datapoint is 1 / (D ln 2) bits/dim, with no 8-bit offset
    assert exact_bits_per_dim(-784 * 3 * math.log(2), 784) == pytest.approx(3.0)
    assert exact_bits_per_dim(0.0, 784) == 0.0  # P(x) = 1
    # a uniform pmf over the 256 levels is 8 bits/dim, exactly as the uniform density's bound
    assert exact_bits_per_dim(-784 * math.log(256), 784) == pytest.approx(bits_per_dim(0.0, 784))
    dl = build_vae((4,), "discretized-logistic", latent_dim=2, hidden=(8,), components=2)
    cb = build_vae((4,), "continuous-bernoulli", latent_dim=2, hidden=(8,))
    log_px, se = -5.0, 0.2
    exact = bits_per_dim_figures(dl, log_px, se, dequantized=False)
    assert exact == {
        "bits_per_dim": pytest.approx(5.0 / (4 * math.log(2))),
        "bits_per_dim_se": pytest.approx(0.2 / (4 * math.log(2))),
        "bits_per_dim_kind": BITS_EXACT,
        "bits_per_dim_reason": None,
    }
    bound = bits_per_dim_figures(cb, log_px, se, dequantized=True)
    assert bound["bits_per_dim_kind"] == BITS_DEQUANTIZED
    assert bound["bits_per_dim"] == pytest.approx(8 + 5.0 / (4 * math.log(2)))
    # binarized data under the pmf, or a density on data that were not dequantized: none
    binarized = bits_per_dim_figures(dl, log_px, se, dequantized=False, binarized=True)
    assert binarized["bits_per_dim"] is None and "binarized" in binarized["bits_per_dim_reason"]
    assert bits_per_dim_figures(cb, log_px, se, dequantized=False)["bits_per_dim_kind"] is None
    # the dequantization bound is not the formula for the pmf, and says so
    assert "exact" in bits_per_dim_reason(dl, False)


# ------------------------------------------------------------------ a run directory, the CLI


def test_evaluate_run_writes_summary_report_and_pictures(tmp_path):
    cfg = RunConfig(
        model=ModelConfig(likelihood="continuous-bernoulli", latent_dim=3, hidden=(32,)),
        data=DataConfig(num_shapes=300, test_size=40),
        train=TrainConfig(epochs=1, batch_size=50, lr=3e-3, quiet=True),
    )
    run = tmp_path / "run"
    run_training(cfg, out=run)
    s = evaluate_run(run, iw_samples=40, elbo_particles=20, quiet=True)
    assert json.loads((run / "summary.json").read_text()) == s
    assert {
        "log_px",
        "log_px_se",
        "ess_mean",
        "ess_median",
        "elbo",
        "recon",
        "kl",
        "kl_per_dim",
        "active_units",
        "bits_per_dim",
        "seconds",
        "particle_chunk",
        "data_chunk",
    } <= set(s)
    assert s["num"] == 40 and s["num_dims"] == 784 and s["iw_samples"] == 40
    assert s["log_px"] >= s["elbo"] - 3 * s["elbo_se"]
    assert s["elbo"] == pytest.approx(s["recon"] - s["kl"])
    assert 1 <= s["ess_min"] <= s["ess_median"] <= 40
    assert s["kl"] == pytest.approx(sum(s["kl_per_dim"]))
    assert 0 <= s["active_units"] <= 3 and s["chunk_invariant"]
    # dequantized 8-bit data and a density: bits/dim is reported, from the formula
    assert s["bits_per_dim_reason"] is None and s["bits_per_dim_kind"] == "dequantization-bound"
    assert s["bits_per_dim"] == pytest.approx(8 - s["log_px"] / (784 * math.log(2)))
    for path in s["pictures"].values():
        assert (run / path).is_file(), path
    assert set(s["pictures"]) >= {"reconstructions", "samples", "traversals", "latents", "curves"}
    md = (run / "report.md").read_text()
    assert "bits/dim" in md and "](evaluation/latents.png)" in md
    assert (run / "report.html").read_text().startswith("<!doctype html>")
    # the same seed gives the same numbers with other chunks
    again = evaluate_run(run, iw_samples=40, elbo_particles=20, quiet=True, batch_size=7)
    assert (again["particle_chunk"], again["data_chunk"]) == (40, 7)
    assert again["log_px"] == pytest.approx(s["log_px"], abs=1e-4)

    # the command line, in a subprocess
    exe = Path(sys.executable).parent / "pyro-vae"
    env = {**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning"}
    res = subprocess.run(
        [str(exe), "evaluate", str(run), "--iw-samples", "5", "--seed", "1", "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert "log p(x), importance sampled, K = 5" in res.stdout and "bits/dim" in res.stdout
    assert json.loads((run / "summary.json").read_text())["iw_samples"] == 5
    res = subprocess.run(
        [str(exe), "evaluate", str(run), "--iw-samples", "0"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=tmp_path,
    )
    assert res.returncode != 0 and "iw_samples must be >= 1" in res.stderr


def _tiny_run(tmp_path, likelihood: str, dataset: str = "shapes", **model) -> Path:
    cfg = RunConfig(
        model=ModelConfig(likelihood=likelihood, **{"latent_dim": 3, "hidden": (32,), **model}),
        data=DataConfig(dataset=dataset, num_shapes=300, test_size=40),
        train=TrainConfig(epochs=1, batch_size=50, lr=3e-3, quiet=True),
    )
    run = tmp_path / likelihood
    run_training(cfg, out=run)
    return run


def test_a_discretized_logistic_run_reports_exact_bits_per_dim_and_writes_its_pictures(tmp_path):
    run = _tiny_run(tmp_path, "discretized-logistic", components=2)
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["dequantize"] is False and config["data"]["binarize"] == "none"
    assert config["model"]["components"] == 2
    s = evaluate_run(run, iw_samples=20, elbo_particles=4, quiet=True)
    assert s["bits_per_dim_kind"] == "exact" and s["bits_per_dim_reason"] is None
    assert s["bits_per_dim"] == pytest.approx(-s["log_px"] / (784 * math.log(2)))
    assert s["log_px"] < 0 and s["recon"] < 0  # log-probabilities of the levels
    assert "bits/dim, exact" in (run / "report.md").read_text()
    assert {"samples", "sample-draws", "reconstructions"} <= set(s["pictures"])


ROOT = Path(__file__).resolve().parents[1]
MNIST_T10K = ROOT.parent / "shared" / "data" / "mnist-t10k"


@pytest.mark.skipif(not MNIST_T10K.is_dir(), reason="shared MNIST t10k folder not present")
def test_on_mnist_grey_levels_the_pmf_beats_the_continuous_bernoulli_bound():
    """The same small network, one epoch on 2,000 t10k grey-level images, scored on 200 held
    out: the exact bits/dim of the discretized logistic (3 components, to stay quick) is
    -log_px / (D ln 2), and below the continuous Bernoulli's dequantization bound (README: the
    full split, 30 epochs, K = 5000)."""
    split = load_data(str(MNIST_T10K))  # uint8 levels, 9,000 / 1,000
    train, test = split.train[:2000], split.test[:200]
    figures = {}
    for likelihood, options, dequantize in (
        ("discretized-logistic", {"components": 3}, False),
        ("continuous-bernoulli", {}, True),
    ):
        pyro.set_rng_seed(0)
        vae = build_vae(split.event_shape, likelihood, latent_dim=5, hidden=(100,), **options)
        pre = Preprocess(dequantize=dequantize)
        fit(
            vae,
            train,
            None,
            TrainConfig(epochs=1, batch_size=100, lr=3e-3, quiet=True),
            preprocess=pre,
        )
        x = pre(test)  # the levels k / 255, or one dequantized draw
        imp = importance_log_px(vae, x, 5, quiet=True)
        figures[likelihood] = bits_per_dim_figures(vae, imp.mean, imp.se, dequantized=dequantize)
        figures[likelihood]["log_px"] = imp.mean
    dl, cb = figures["discretized-logistic"], figures["continuous-bernoulli"]
    assert dl["bits_per_dim_kind"] == "exact" and cb["bits_per_dim_kind"] == "dequantization-bound"
    assert dl["bits_per_dim"] == pytest.approx(-dl["log_px"] / (784 * math.log(2)))
    assert dl["bits_per_dim"] < cb["bits_per_dim"] - 1  # by far more than the estimates' noise


@pytest.mark.skipif(not MNIST_T10K.is_dir(), reason="shared MNIST t10k folder not present")
def test_benchmark_script_smoke():
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_evaluate.py"),
            "--num",
            "20",
            "--iw-samples",
            "10",
            "--train-epochs",
            "0",
            "--memory-budget-mb",
            "1",
            "--race-num",
            "20",
            "--race-rounds",
            "2",
            "--peak-rows",
            "500",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["num"] == 20 and out["iw_samples"] == 10 and out["peak_rss_mb"] > 0
    assert out["particle_chunk"] * out["data_chunk"] < 200  # the 1 MB budget chunked the work
    # the hand-written floor estimates the same log p(x) from other particles: the two means
    # of 20 images differ by Monte Carlo error only (a fraction of a nat at K = 10)
    assert abs(out["race_log_px_pyro_vae"] - out["race_log_px_hand_written"]) < 2.0
    assert [ln.split()[:2] for ln in res.stdout.splitlines() if ln.startswith("eval-")] == [
        ["eval-roofline", "cpu"],
        ["eval-ratio", "cpu"],
        ["eval-ratio-same-density", "cpu"],
    ]
    assert out["race_ratio_same_density"] > 0 and len(out["race_ratios"]) == 2
