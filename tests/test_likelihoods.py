"""Likelihoods: normalization, closed forms, support errors, learned scales."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pyro_vae.infer.estimators import make_estimator
from pyro_vae.models import VAE
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


@pytest.mark.parametrize("mode", ["shared", "per-pixel", "decoder"])
def test_normal_log_prob_is_the_closed_form_with_all_constants(mode):
    D = 5
    lik = NormalLikelihood((D,), scale=mode, init_scale=0.3).double()
    params = torch.randn(4, lik.params_per_dim, D, dtype=torch.float64)
    x = torch.randn(4, D, dtype=torch.float64)
    loc = params[:, 0]
    sigma = lik.log_scale(params).exp().expand(4, D)
    expected = (-0.5 * ((x - loc) / sigma) ** 2 - sigma.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    torch.testing.assert_close(lik.distribution(params).log_prob(x), expected)
    # sigma starts at init_scale (in decoder mode: when the decoder's raw output is 0)
    start = lik.log_scale(torch.zeros_like(params)).exp().expand(4, D)
    torch.testing.assert_close(start, torch.full_like(start, 0.3))


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


def test_continuous_bernoulli_outside_unit_interval_says_what_to_do():
    lik = make_likelihood("continuous-bernoulli", (2,))
    with pytest.raises(DataSupportError, match=r"\[0, 1\].*255.*normal"):
        lik.check_support(torch.tensor([[0.0, 255.0]]))


@pytest.mark.parametrize("name", ["bernoulli", "continuous-bernoulli", "normal"])
def test_non_finite_data_are_refused_with_count_and_index(name):
    lik = make_likelihood(name, (3,))
    x = torch.zeros(5, 3)
    x[3, 1] = float("nan")
    x[4, 0] = float("inf")
    with pytest.raises(DataSupportError, match="2 non-finite values.*datapoint 3"):
        lik.check_support(x)


def test_unknown_names_list_valid_choices():
    with pytest.raises(UnknownNameError, match="bernoulli, continuous-bernoulli, normal"):
        make_likelihood("gaussian", (3,))
    with pytest.raises(ValueError, match="shared, per-pixel, decoder"):
        make_likelihood("normal", (3,), scale="learned")
    with pytest.raises(ValueError, match="does not take"):
        make_likelihood("bernoulli", (3,), scale="shared")
    assert make_likelihood("bernoulli", (3,), scale=None).params_per_dim == 1


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(sorted(LIKELIHOODS)),
    batch=st.integers(1, 4),
    shape=st.sampled_from([(3,), (1, 4, 4), (3, 2, 2)]),
    scale=st.floats(-30, 30),
)
def test_log_probs_are_finite_with_the_right_shape(name, batch, shape, scale):
    lik = make_likelihood(name, shape)
    params = scale * torch.rand(batch, lik.params_per_dim, *shape)
    x = torch.rand(batch, *shape)
    if name == "bernoulli":
        x = x.round()
    lp = lik.distribution(params).log_prob(x)
    assert lp.shape == (batch,)
    assert torch.isfinite(lp).all()
    assert lik.mean(params).shape == (batch, *shape)
