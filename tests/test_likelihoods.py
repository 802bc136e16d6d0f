"""Likelihoods: normalization, closed forms, support errors, learned scales."""

import argparse
import math
import re
import shlex
from pathlib import Path

import pyro
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_vae.apps.cli import build_parser
from pyro_vae.config import RunConfig, add_flags, from_flat
from pyro_vae.config import given as given_settings
from pyro_vae.infer.estimators import make_estimator
from pyro_vae.models import VAE, ModelConfig, build_vae
from pyro_vae.models.discretized_logistic import DiscretizedLogisticMixture, LevelGrid
from pyro_vae.models.likelihoods import (
    LIKELIHOODS,
    DataSupportError,
    NormalLikelihood,
    make_likelihood,
)
from pyro_vae.models.networks import MLPEncoder
from pyro_vae.registry import UnknownNameError

from linear_gaussian import LinearDecoder, make_problem

LAMBDAS = [1e-4, 0.3, 0.4999, 0.5, 0.5001, 0.9]


def _cb(lams):
    lik = make_likelihood("continuous-bernoulli", (1,))
    lams = torch.tensor(lams, dtype=torch.float64)
    params = torch.logit(lams).reshape(-1, 1, 1)  # (n, k=1, D=1)
    return lik, params


def test_continuous_bernoulli_is_normalized_and_its_mean_is_not_lambda():
    lik, params = _cb(LAMBDAS)
    x = torch.linspace(0, 1, 200_001, dtype=torch.float64)  # (G,)
    d = lik.distribution(params)  # batch (n,), event (1,)
    dens = d.log_prob(x.reshape(-1, 1, 1)).exp()  # (G, n)
    mass = torch.trapezoid(dens, x, dim=0)
    torch.testing.assert_close(mass, torch.ones_like(mass), atol=1e-6, rtol=0)
    mean_numeric = torch.trapezoid(dens * x[:, None], x, dim=0)
    mean = lik.mean(params).reshape(-1)
    torch.testing.assert_close(mean, mean_numeric, atol=1e-6, rtol=0)
    # lambda = 0.3 has mean ~0.46, not 0.3: pictures must show the true mean
    assert abs(mean[1].item() - 0.3) > 0.1


def test_continuous_bernoulli_gradients_finite_near_one_half():
    lik, params = _cb([0.4999, 0.49999, 0.5, 0.50001, 0.5001])
    params.requires_grad_(True)
    x = torch.tensor([[0.0], [0.2], [0.5], [0.9], [1.0]], dtype=torch.float64)
    lp = lik.distribution(params).log_prob(x)
    (g,) = torch.autograd.grad(lp.sum(), params)
    assert torch.isfinite(lp).all() and torch.isfinite(g).all()
    # d/d logit log p at lambda = 1/2 is x - 1/2 (the log-normalizer is flat there)
    torch.testing.assert_close(g.reshape(-1), x.reshape(-1) - 0.5, atol=1e-3, rtol=0)


def _normal(x, loc, scale):
    return -0.5 * ((x - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)


def _laplace(x, loc, scale):
    return -(x - loc).abs() / scale - (2 * scale).log()


@pytest.mark.parametrize("mode", ["shared", "per-pixel", "decoder"])
@pytest.mark.parametrize(("name", "closed_form"), [("normal", _normal), ("laplace", _laplace)])
def test_location_scale_log_probs_are_the_closed_forms_with_all_constants(mode, name, closed_form):
    D = 5
    lik = make_likelihood(name, (D,), scale=mode, init_scale=0.3).double()
    params = torch.randn(4, lik.params_per_dim, D, dtype=torch.float64)
    x = torch.randn(4, D, dtype=torch.float64)
    loc = params[:, 0]
    scale = lik.log_scale(params).exp().expand(4, D)
    expected = closed_form(x, loc, scale).sum(-1)
    torch.testing.assert_close(lik.distribution(params).log_prob(x), expected)
    torch.testing.assert_close(lik.mean(params), loc)
    # the scale starts at init_scale (in decoder mode: when the decoder's raw output is 0)
    start = lik.log_scale(torch.zeros_like(params)).exp().expand(4, D)
    torch.testing.assert_close(start, torch.full_like(start, 0.3))


@pytest.mark.parametrize("mode", ["shared", "per-pixel", "decoder"])
def test_beta_log_density_is_the_closed_form_with_mean_sigmoid_and_scale_one_over_kappa(mode):
    D = 5
    lik = make_likelihood("beta", (D,), scale=mode, init_scale=0.05).double()
    params = torch.randn(4, lik.params_per_dim, D, dtype=torch.float64)
    x = torch.rand(4, D, dtype=torch.float64).clamp(1e-3, 1 - 1e-3)
    mu = torch.sigmoid(params[:, 0])
    s = lik.log_scale(params).exp().expand(4, D)
    a, b = mu / s, (1 - mu) / s  # concentration kappa = a + b = 1 / s
    log_beta_fn = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)
    expected = ((a - 1) * x.log() + (b - 1) * torch.log1p(-x) - log_beta_fn).sum(-1)
    torch.testing.assert_close(lik.distribution(params).log_prob(x), expected)
    torch.testing.assert_close(lik.mean(params), mu)
    start = lik.log_scale(torch.zeros_like(params)).exp().expand(4, D)
    torch.testing.assert_close(start, torch.full_like(start, 0.05))
    # its variance is mu (1 - mu) s / (1 + s)
    var = lik.distribution(params).base_dist.variance
    torch.testing.assert_close(var, mu * (1 - mu) * s / (1 + s))


def test_beta_stays_a_valid_density_however_far_the_decoder_pushes_its_mean():
    lik = make_likelihood("beta", (3,), scale="decoder").double()
    params = torch.zeros(2, 2, 3, dtype=torch.float64)
    params[0, 0], params[1, 0] = 1e4, -1e4  # mean sigmoid(+-1e4): 1 or 0 in floating point
    params[:, 1] = 40.0  # and a large scale: one concentration underflows without a floor
    x = torch.tensor([[0.3, 0.5, 0.99], [1e-6, 0.5, 0.7]], dtype=torch.float64)
    lp = lik.distribution(params).log_prob(x)
    assert torch.isfinite(lp).all()
    grid = torch.linspace(1e-5, 1 - 1e-5, 100_001, dtype=torch.float64)
    moderate = make_likelihood("beta", (1,), scale="shared", init_scale=0.2).double()
    dens = moderate.distribution(torch.full((1, 1, 1), 0.7, dtype=torch.float64))
    mass = torch.trapezoid(dens.log_prob(grid.reshape(-1, 1, 1)).exp().flatten(), grid)
    assert mass.item() == pytest.approx(1.0, abs=1e-4)  # normalized on (0, 1)


def test_normal_scale_has_a_soft_lower_bound():
    lik = NormalLikelihood((3,), scale="decoder", min_log_scale=-6.0)
    params = torch.zeros(2, 2, 3)
    params[:, 1] = -1e4  # the decoder pushes log sigma to -infinity
    assert torch.isfinite(lik.distribution(params).log_prob(torch.zeros(2, 3))).all()
    assert lik.log_scale(params).min().item() >= -6.0


def test_learned_shared_sigma_recovers_the_noise_level():
    true_sigma = 0.3
    W, b, x = make_problem(D=10, L=2, sigma=true_sigma, n=4000, seed=3, dtype=torch.float32)
    lik = NormalLikelihood((10,), scale="shared", init_scale=1.0)
    dec = LinearDecoder(torch.randn(10, 2) * 0.1, torch.zeros(10))
    vae = VAE(MLPEncoder((10,), 2, hidden=(32,)), dec, lik)
    opt = torch.optim.Adam(vae.parameters(), lr=2e-2)
    est = make_estimator("meanfield")
    for _ in range(1500):
        opt.zero_grad()
        loss = est.differentiable_loss(vae.model, vae.guide, x) / x.shape[0]
        loss.backward()
        opt.step()
    sigma = lik.log_scale().exp().item()
    assert sigma == pytest.approx(true_sigma, rel=0.1)


def test_bernoulli_on_grey_data_says_what_to_do():
    lik = make_likelihood("bernoulli", (4,))
    with pytest.raises(DataSupportError, match="Binarize") as e:
        lik.check_support(torch.tensor([[0.0, 0.5, 1.0, 0.2]]))
    assert "continuous-bernoulli" in str(e.value) and "normal" in str(e.value)
    assert "2 values" in str(e.value)
    lik.check_support(torch.tensor([[0.0, 1.0, 1.0, 0.0]]))


def _bernoulli(logits: torch.Tensor, event_shape: tuple[int, ...]):
    """The Bernoulli likelihood's distribution for ``logits`` of shape ``(*batch, *event)``."""
    lik = make_likelihood("bernoulli", event_shape)
    return lik.distribution(logits.unsqueeze(-1 - len(event_shape)))  # one output per pixel


def _bernoulli_reference(logits: torch.Tensor, x: torch.Tensor, event_dim: int) -> torch.Tensor:
    """torch's own ``Bernoulli(logits).to_event(event_dim).log_prob(x)``."""
    return torch.distributions.Independent(
        torch.distributions.Bernoulli(logits=logits), event_dim
    ).log_prob(x)


def test_bernoulli_log_prob_with_gradients_is_torchs_bit_for_bit_gradients_included():
    torch.manual_seed(0)
    x = (torch.rand(4, 1, 5, 7) < 0.4).float()
    logits = (4 * torch.randn(3, 4, 1, 5, 7)).requires_grad_()  # (particles, batch, *event)
    ours = _bernoulli(logits, (1, 5, 7)).log_prob(x)
    (grad,) = torch.autograd.grad(ours.sum(), logits)
    ref = _bernoulli_reference(logits, x, 3)
    (ref_grad,) = torch.autograd.grad(ref.sum(), logits)
    assert ours.shape == (3, 4)
    assert torch.equal(ours, ref) and torch.equal(grad, ref_grad)


def test_bernoulli_log_prob_without_gradients_is_the_float64_value_to_rounding():
    torch.manual_seed(1)
    x = (torch.rand(5, 2, 6) < 0.5).float()
    logits = 6 * torch.randn(7, 5, 2, 6)
    logits[0, 0] = torch.tensor([[30.0, -30.0, 80.0, -80.0, 1e-3, 0.0]] * 2)  # saturated pixels
    with torch.no_grad():
        ours = _bernoulli(logits, (2, 6)).log_prob(x)  # x . l - sum softplus(l), broadcast
        ref = _bernoulli_reference(logits.double(), x.double(), 2)
    assert ours.shape == (7, 5) and ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), ref, rtol=1e-6, atol=1e-4)
    # a value that broadcasts along the particles and one with the particles' own shape agree
    with torch.no_grad():
        full = _bernoulli(logits, (2, 6)).log_prob(x.expand(7, 5, 2, 6).contiguous())
    torch.testing.assert_close(full, ours, rtol=1e-6, atol=1e-5)
    # where the cross-entropy loses the pixel (l = 1e30, x = 0 gives 0), the sum keeps it
    big = torch.tensor([[1e30, 0.0]])
    with torch.no_grad():
        value = _bernoulli(big, (2,)).log_prob(torch.tensor([[0.0, 1.0]])).item()
    assert value == pytest.approx(-1e30 - math.log(2))


@pytest.mark.parametrize("grad", [True, False])
def test_bernoulli_log_prob_refuses_grey_values_in_both_paths(grad):
    with torch.set_grad_enabled(grad), pytest.raises(DataSupportError, match="Binarize"):
        _bernoulli(torch.zeros(2, 3, requires_grad=grad), (3,)).log_prob(
            torch.tensor([0.0, 0.5, 1.0])
        )


def test_bernoulli_distribution_survives_pyro_broadcasting_and_masking():
    x = torch.tensor([[0.0, 1.0, 1.0]])
    d = _bernoulli(torch.randn(1, 3), (3,)).expand((4,))
    assert type(d) is type(_bernoulli(torch.zeros(1, 3), (3,))) and d.batch_shape == (4,)
    with torch.no_grad():
        masked = d.mask(torch.tensor([True, False, True, True])).log_prob(x)
        torch.testing.assert_close(
            masked, d.log_prob(x) * torch.tensor([1.0, 0.0, 1.0, 1.0]), rtol=0, atol=0
        )


def test_continuous_bernoulli_outside_unit_interval_says_what_to_do():
    lik = make_likelihood("continuous-bernoulli", (2,))
    with pytest.raises(DataSupportError, match=r"\[0, 1\].*255.*normal"):
        lik.check_support(torch.tensor([[0.0, 255.0]]))


def test_beta_refuses_exact_zeros_and_ones_saying_to_squash_or_dequantize():
    lik = make_likelihood("beta", (3,))
    for bad in ([[0.0, 0.5, 0.2]], [[0.3, 1.0, 1.0]]):
        with pytest.raises(DataSupportError, match=r"strictly inside \(0, 1\)") as e:
            lik.check_support(torch.tensor(bad))
        assert "dequantize" in str(e.value) and "squash" in str(e.value)
    assert "2 values are exactly 0 or 1" in _refusal(lik, [[0.3, 1.0, 1.0]])
    lik.check_support(torch.tensor([[1e-6, 0.5, 1 - 1e-6]]))
    # Pyro's validation of the observed site gives the same message (what training sees)
    d = lik.distribution(torch.zeros(1, 1, 3))
    with pytest.raises(DataSupportError, match="squash"):
        d.log_prob(torch.tensor([[0.0, 0.5, 0.5]]))


def _refusal(lik, x) -> str:
    with pytest.raises(DataSupportError) as e:
        lik.check_support(torch.tensor(x))
    return str(e.value)


@pytest.mark.parametrize(
    "name",
    ["bernoulli", "continuous-bernoulli", "normal", "beta", "laplace", "discretized-logistic"],
)
def test_non_finite_data_are_refused_with_count_and_index(name):
    lik = make_likelihood(name, (3,))
    x = torch.zeros(5, 3)
    x[3, 1] = float("nan")
    x[4, 0] = float("inf")
    with pytest.raises(DataSupportError, match="2 non-finite values.*datapoint 3"):
        lik.check_support(x)


def test_unknown_names_list_valid_choices():
    names = "bernoulli, beta, continuous-bernoulli, discretized-logistic, laplace, normal"
    with pytest.raises(UnknownNameError, match=names):
        make_likelihood("gaussian", (3,))
    with pytest.raises(ValueError, match="shared, per-pixel, decoder"):
        make_likelihood("normal", (3,), scale="learned")
    with pytest.raises(ValueError, match="does not take"):
        make_likelihood("bernoulli", (3,), scale="shared")
    assert make_likelihood("bernoulli", (3,), scale=None).params_per_dim == 1


# ----------------------------------------------------------------------- discretized logistic

LEVELS = torch.arange(256, dtype=torch.float64) / 255  # (256,) the 8-bit levels as model input
HALF = 0.5 / 255


def _mixture(K: int, n: int = 6, seed: int = 0):
    """Random mixture parameters ``(n, K)``, with extreme locations and scales among them."""
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(n, K, generator=g, dtype=torch.float64)
    loc = torch.randn(n, K, generator=g, dtype=torch.float64)
    log_scale = torch.empty(n, K, dtype=torch.float64).uniform_(-8, 1, generator=g)
    loc[0], log_scale[0] = -1e4, -30.0  # far below 0 and narrower than a bin
    loc[1], log_scale[1] = 1e4, 30.0  # far above 1 and far wider than [0, 1]
    loc[2], log_scale[2] = 0.5 * HALF, -12.0  # inside level 0's bin, very narrow
    loc[3] = 1.0 + 1e-9  # at level 255
    loc[4], log_scale[4] = 127.5 / 255, -30.0  # on the edge between levels 127 and 128
    loc[5], log_scale[5] = 0.3, 100.0  # flat: half the mass on each edge level
    return logits, loc, log_scale


def _all_levels(d) -> torch.Tensor:
    """``log P(k)`` of every level: ``(256, *batch_shape)``."""
    return d.log_prob(LEVELS.reshape(-1, *[1] * len(d.batch_shape)).expand(-1, *d.batch_shape))


@pytest.mark.parametrize("K", [1, 3, 10])
def test_discretized_logistic_sums_to_one_over_the_256_levels(K):
    d = DiscretizedLogisticMixture(*_mixture(K))
    log_p = _all_levels(d)  # (256, n)
    assert torch.isfinite(log_p).all()
    torch.testing.assert_close(
        log_p.exp().sum(0), torch.ones(6, dtype=torch.float64), atol=1e-6, rtol=0
    )
    # the same through the likelihood, at any decoder output
    lik = make_likelihood("discretized-logistic", (6,), components=K).double()
    params = 20 * torch.randn(1, lik.params_per_dim, 6, dtype=torch.float64)
    per_dim = _all_levels(lik.distribution(params).base_dist)  # (256, 1, 6)
    torch.testing.assert_close(
        per_dim.exp().sum(0), torch.ones(1, 6, dtype=torch.float64), atol=1e-6, rtol=0
    )


def test_plain_discretized_logistic_is_the_closed_form_with_its_edge_bins():
    loc = torch.tensor([[0.2], [0.5], [0.0], [1.0], [0.03]], dtype=torch.float64)
    log_scale = torch.tensor([[-3.0], [-1.0], [-5.0], [-2.0], [-6.0]], dtype=torch.float64)
    d = DiscretizedLogisticMixture(torch.zeros_like(loc), loc, log_scale)
    s = log_scale.exp().T  # (1, 5)
    x = LEVELS[:, None]  # (256, 1)

    def cdf(t):
        return torch.sigmoid((t - loc.T) / s)

    mass = cdf(x + HALF) - cdf(x - HALF)  # inner levels
    mass[0] = cdf(x[0] + HALF)[0]  # level 0 takes the lower tail
    mass[255] = 1 - cdf(x[255] - HALF)[0]  # level 255 the upper tail
    torch.testing.assert_close(_all_levels(d).exp(), mass, atol=1e-12, rtol=1e-9)
    # K = 1 of the likelihood: two outputs per dimension, no mixture weights
    lik = make_likelihood("discretized-logistic", (5,), components=1, init_scale=0.1).double()
    assert lik.params_per_dim == 2
    params = 0.3 * torch.randn(3, 2, 5, dtype=torch.float64)  # no mass below ~1e-30 (naive)
    logits, loc, log_scale = lik.mixture(params)
    assert torch.equal(logits, torch.zeros(3, 5, 1, dtype=torch.float64))
    x = LEVELS[torch.randint(0, 256, (3, 5))]

    def sig(t):
        return torch.sigmoid((t[..., None] - loc) / log_scale.exp())

    inner = (sig(x + HALF) - sig(x - HALF)).squeeze(-1)
    inner = torch.where(x == 0, sig(x + HALF).squeeze(-1), inner)
    inner = torch.where(x == 1, 1 - sig(x - HALF).squeeze(-1), inner)
    torch.testing.assert_close(lik.distribution(params).log_prob(x), inner.log().sum(-1))
    # at a raw output of 0 the scale is init_scale and the location the middle of [0, 1]
    _, loc0, log_scale0 = lik.mixture(torch.zeros(1, 2, 5, dtype=torch.float64))
    torch.testing.assert_close(log_scale0.exp(), torch.full((1, 5, 1), 0.1, dtype=torch.float64))
    torch.testing.assert_close(loc0, torch.full((1, 5, 1), 0.5, dtype=torch.float64))


def test_discretized_logistic_mixture_is_the_log_sum_exp_of_its_components():
    logits, loc, log_scale = _mixture(4)
    d = DiscretizedLogisticMixture(logits, loc, log_scale)
    x = LEVELS[torch.tensor([0, 1, 77, 128, 254, 255])]  # (6,)
    parts = torch.stack(
        [
            DiscretizedLogisticMixture(
                logits[:, c : c + 1], loc[:, c : c + 1], log_scale[:, c : c + 1]
            ).log_prob(x)
            for c in range(4)
        ],
        -1,
    )  # (6, 4): each component alone
    expected = torch.logsumexp(torch.log_softmax(logits, -1) + parts, -1)
    torch.testing.assert_close(d.log_prob(x), expected)
    # and its mixture weights are the softmax of the logits: one dominant component
    one_hot = torch.full_like(logits, -1e3)
    one_hot[:, 2] = 0.0
    alone = DiscretizedLogisticMixture(one_hot, loc, log_scale).log_prob(x)
    torch.testing.assert_close(alone, parts[:, 2])


def test_discretized_logistic_gradients_are_finite_at_the_edges_and_match_the_closed_form():
    logits, loc, log_scale = (t.clone().requires_grad_(True) for t in _mixture(3))
    x = LEVELS[torch.tensor([0, 255, 0, 255, 1, 254])]  # the edges and their neighbours
    lp = DiscretizedLogisticMixture(logits, loc, log_scale).log_prob(x)
    grads = torch.autograd.grad(lp.sum(), (logits, loc, log_scale))
    assert torch.isfinite(lp).all() and all(torch.isfinite(g).all() for g in grads)
    # level 0 of a plain logistic: d/dmu log sigmoid(a) = -(1 - sigmoid(a)) / s, a = (h - mu)/s
    mu = torch.tensor([0.1, -0.2, 0.01], dtype=torch.float64, requires_grad=True)
    ls = torch.tensor([-2.0, 0.5, -6.0], dtype=torch.float64)
    lp0 = DiscretizedLogisticMixture(torch.zeros(3, 1), mu[:, None], ls[:, None]).log_prob(
        torch.zeros(3, dtype=torch.float64)
    )
    (g,) = torch.autograd.grad(lp0.sum(), mu)
    a = (HALF - mu.detach()) / ls.exp()
    torch.testing.assert_close(g, -(1 - torch.sigmoid(a)) / ls.exp())


def test_discretized_logistic_mean_and_draws_are_its_own():
    logits, loc, log_scale = _mixture(3)
    d = DiscretizedLogisticMixture(logits, loc, log_scale)
    p = _all_levels(d).exp()  # (256, 6)
    mean = (p * LEVELS[:, None]).sum(0)
    torch.testing.assert_close(d.mean, mean, atol=1e-12, rtol=0)
    torch.manual_seed(0)
    draws = d.sample((40_000,))  # (40000, 6)
    assert bool(LevelGrid(256).check(draws).all())
    sd = ((p * LEVELS[:, None] ** 2).sum(0) - mean**2).clamp_min(1e-12).sqrt()
    z = (draws.mean(0) - mean) / (sd / math.sqrt(len(draws)))
    assert z.abs().max() < 4.5  # the draws' mean is the pmf's mean
    counts = torch.stack([(draws == level).double().mean(0) for level in LEVELS])  # (256, 6)
    assert (counts - p).abs().max() < 0.01  # and their frequencies its masses
    # pictures show this mean (the likelihood's, from the decoder's output)
    lik = make_likelihood("discretized-logistic", (4,), components=2).double()
    params = torch.randn(2, lik.params_per_dim, 4, dtype=torch.float64)
    per_dim = _all_levels(lik.distribution(params).base_dist).exp()  # (256, 2, 4)
    torch.testing.assert_close(lik.mean(params), (per_dim * LEVELS[:, None, None]).sum(0))


def test_discretized_logistic_refuses_data_off_the_levels_saying_what_to_do():
    lik = make_likelihood("discretized-logistic", (4,))
    lik.check_support(torch.tensor([[0.0, 1 / 255, 128 / 255, 1.0]]))  # float32 levels pass
    dequantized = (torch.tensor([[0.0, 1.0, 128.0, 255.0]]) + 0.5) / 256
    with pytest.raises(DataSupportError, match="--no-dequantize") as e:
        lik.check_support(dequantized)
    assert "4 values are not on them" in str(e.value) and "continuous-bernoulli" in str(e.value)
    with pytest.raises(DataSupportError, match="8-bit levels"):
        lik.check_support(torch.tensor([[0.0, 0.0, 0.0, 2.0]]))  # on no level: above 1
    # Pyro's validation of the observed site says the same (what training runs into)
    params = torch.zeros(1, lik.params_per_dim, 4)
    with pytest.raises(DataSupportError, match="--no-dequantize"):
        lik.distribution(params).log_prob(dequantized)
    assert lik.distribution(params).support.is_discrete


def test_components_is_a_setting_of_the_model_for_the_likelihood_that_takes_it():
    cfg = from_flat(RunConfig(), {"likelihood": "discretized-logistic", "components": 3})
    vae = build_vae((1, 4, 4), cfg.model.likelihood, latent_dim=2, hidden=(8,), components=3)
    assert vae.likelihood.params_per_dim == 9 and vae.decoder.out_shape == (9, 1, 4, 4)
    assert cfg.model.likelihood_options() == {"scale": None, "components": 3}
    parser = argparse.ArgumentParser()
    add_flags(parser, RunConfig)
    assert parser.parse_args(["--components", "5"]).components == 5
    assert "(default: 10)" in parser.format_help().replace("\n", " ")
    with pytest.raises(ValueError, match="'normal' does not take the options \\['components'\\]"):
        ModelConfig(likelihood="normal", components=3)
    with pytest.raises(ValueError, match="components must be >= 1"):
        ModelConfig(likelihood="discretized-logistic", components=0)


def test_a_discretized_logistic_vae_trains_on_8bit_levels():
    """The likelihood in a model: an ELBO that rises, a log-probability never above 0."""
    torch.manual_seed(0)
    levels = torch.randint(0, 256, (64, 1, 8))
    levels[:, :, :4] = 0  # half the pixels black, as in digits
    x = levels.float() / 255
    vae = build_vae((1, 8), "discretized-logistic", latent_dim=2, hidden=(32,), components=2)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    est = make_estimator("meanfield")
    losses = []
    for _ in range(150):
        opt.zero_grad()
        loss = est.differentiable_loss(vae.model, vae.guide, x) / len(x)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 5  # nats per datapoint
    trace = pyro.poutine.trace(vae.model).get_trace(x)
    assert (trace.nodes["x"]["fn"].log_prob(x) <= 0).all()  # a pmf: log P <= 0


def _in_support(name: str, x: torch.Tensor) -> torch.Tensor:
    """Uniform values moved into the likelihood's support."""
    if name == "bernoulli":
        return x.round()
    if name == "discretized-logistic":
        return (x * 255).round() / 255
    if name == "beta":
        return x.clamp(1e-4, 1 - 1e-4)
    return x


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(LIKELIHOODS)),
    batch=st.integers(1, 4),
    shape=st.sampled_from([(3,), (1, 4, 4), (3, 2, 2)]),
    scale=st.floats(-30, 30),
)
def test_log_probs_are_finite_with_the_right_shape(name, batch, shape, scale):
    lik = make_likelihood(name, shape)
    params = scale * torch.rand(batch, lik.params_per_dim, *shape)
    x = _in_support(name, torch.rand(batch, *shape))
    lp = lik.distribution(params).log_prob(x)
    assert lp.shape == (batch,)
    assert torch.isfinite(lp).all()
    assert lik.mean(params).shape == (batch, *shape)
    assert torch.isfinite(lik.mean(params)).all()


def test_the_readme_table_lists_every_likelihood_and_its_commands_are_valid_settings():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = re.search(r"^## Likelihoods .*?\n(.*?)(?=^## )", readme, re.S | re.M).group(1)
    for name in LIKELIHOODS:
        assert f"| `{name}` |" in section, name
    lines = [
        line
        for block in re.findall(r"```bash\n(.*?)\n```", section, re.S)
        for line in block.replace("\\\n", " ").splitlines()
    ]
    trains = [shlex.split(line, comments=True) for line in lines if " train " in line]
    assert len(trains) >= 10
    for argv in trains:
        args = build_parser().parse_args(argv[1:])
        cfg = from_flat(RunConfig(), given_settings(args, RunConfig))  # a valid configuration
        make_likelihood(cfg.model.likelihood, (1, 4, 4), **cfg.model.likelihood_options())
