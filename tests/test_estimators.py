"""Estimators against closed forms: the linear-Gaussian VAE has an exact log p(x)."""

import math

import pyro
import pytest
import torch
from pyro.infer import RenyiELBO
from torch.distributions import Normal, kl_divergence

from pyro_vae.infer.estimators import ESTIMATORS, ImportanceWeightedELBO, check_beta, make_estimator
from pyro_vae.registry import UnknownNameError

from linear_gaussian import exact_log_px, make_problem, make_vae

SIGMA = 0.5


@pytest.fixture
def problem():
    W, b, x = make_problem(sigma=SIGMA)
    return W, b, x, exact_log_px(W, b, SIGMA, x)


def per_datapoint_elbo(name, vae, x, K=1, **kw):
    est = make_estimator(name, K, **kw)
    return -est.differentiable_loss(vae.model, vae.guide, x).item() / x.shape[0]


@pytest.mark.parametrize(
    "name,K,alpha",
    [
        ("elbo", 1, None),
        ("elbo", 4, None),
        ("iwae", 1, None),
        ("iwae", 5, None),
        ("renyi", 5, 0.5),
        ("renyi", 3, -1.0),
    ],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_posterior_gives_exact_log_px_for_any_sample(problem, name, K, alpha, seed):
    # with q(z|x) = p(z|x), log p(x, z) - log q(z|x) = log p(x) for every z
    W, b, x, log_px = problem
    vae = make_vae(W, b, SIGMA)
    pyro.set_rng_seed(seed)
    est = make_estimator(name, K, alpha=alpha)
    if isinstance(est, ImportanceWeightedELBO):
        log_w, _ = est.log_weights(vae.model, vae.guide, x)  # (K, batch)
        assert log_w.shape == (K, x.shape[0])
        torch.testing.assert_close(log_w, log_px.expand(K, -1), atol=1e-9, rtol=0)
    value = per_datapoint_elbo(name, vae, x, K, alpha=alpha)
    assert value == pytest.approx(log_px.mean().item(), abs=1e-4)


def test_meanfield_is_exact_in_expectation_with_exact_posterior(problem):
    # the analytic KL replaces the sample's log p(z) - log q(z), so one draw is not exact;
    # its mean over particles is, within Monte Carlo error
    W, b, x, log_px = problem
    vae = make_vae(W, b, SIGMA)
    draws = torch.tensor([per_datapoint_elbo("meanfield", vae, x, K=500) for _ in range(40)])
    se = draws.std() / math.sqrt(len(draws))
    assert abs(draws.mean() - log_px.mean()) < 4 * se + 1e-6
    assert se < 0.01  # the check has teeth


def _repeated(name, vae, x, K, reps, **kw):
    # `reps` independent copies of the batch in one call: the mean per datapoint estimates the
    # expected bound, the spread over copies its standard error
    big = x.repeat(reps, 1)
    est = make_estimator(name, K, **kw)
    if isinstance(est, ImportanceWeightedELBO):
        log_w, _ = est.log_weights(vae.model, vae.guide, big)
        a = 1 - est.alpha
        per = (torch.logsumexp(a * log_w, 0) - math.log(K)) / a
    else:  # elbo: per-datapoint values from the trace
        tr = pyro.poutine.trace(vae.guide).get_trace(big)
        mt = pyro.poutine.trace(pyro.poutine.replay(vae.model, trace=tr)).get_trace(big)
        per = (
            mt.nodes["x"]["fn"].log_prob(big)
            + mt.nodes["z"]["fn"].log_prob(mt.nodes["z"]["value"])
            - tr.nodes["z"]["fn"].log_prob(tr.nodes["z"]["value"])
        )
    per = per.detach().reshape(reps, -1).mean(1)  # (reps,) batch-mean per copy
    return per.mean().item(), (per.std() / math.sqrt(reps)).item()


def test_perturbed_guide_orders_the_bounds(problem):
    W, b, x, log_px = problem
    vae = make_vae(W, b, SIGMA, loc_shift=0.4, scale_factor=1.6)
    truth = log_px.mean().item()
    mf, mf_se = _repeated("elbo", vae, x, 1, 4000)
    draws = torch.tensor([per_datapoint_elbo("meanfield", vae, x, K=100) for _ in range(20)])
    meanfield = draws.mean().item()
    bounds = {K: _repeated("iwae", vae, x, K, 2000) for K in (1, 5, 50)}
    # ELBO (both estimators of it) <= IWAE_5 <= IWAE_50 <= log p(x), each gap many SEs wide
    tol = 5 * math.sqrt(mf_se**2 + draws.var().item() / len(draws))
    assert meanfield == pytest.approx(mf, abs=tol)
    assert bounds[1][0] == pytest.approx(mf, abs=5 * (mf_se + bounds[1][1]))
    for lo, hi in [(1, 5), (5, 50)]:
        gap = bounds[hi][0] - bounds[lo][0]
        assert gap > 5 * (bounds[hi][1] + bounds[lo][1]), (lo, hi, bounds)
    assert bounds[50][0] < truth
    assert truth - mf > 0.1  # the perturbation is large enough for the test to mean something


def test_elbo_and_meanfield_agree_in_value_and_gradient():
    W, b, x = make_problem(sigma=SIGMA, n=8)
    vae = make_vae(W, b, SIGMA, loc_shift=0.3, scale_factor=0.7)
    params = [p for p in vae.parameters()]

    def draws(name, reps=30, K=400):
        values, grads = [], []
        for _ in range(reps):
            vae.zero_grad()
            loss = make_estimator(name, K).differentiable_loss(vae.model, vae.guide, x)
            loss.backward()
            values.append(loss.item())
            grads.append(torch.cat([p.grad.reshape(-1) for p in params]))
        return torch.tensor(values), torch.stack(grads)

    v1, g1 = draws("elbo")
    v2, g2 = draws("meanfield")
    se = (v1.var() / len(v1) + v2.var() / len(v2)).sqrt()
    assert abs(v1.mean() - v2.mean()) < 5 * se + 1e-9
    g_se = (g1.var(0) / len(g1) + g2.var(0) / len(g2)).sqrt()
    z = (g1.mean(0) - g2.mean(0)).abs() / (g_se + 1e-9)
    assert z.max() < 5.5, z.max()
    # the gradients are not trivially zero
    assert g1.mean(0).abs().max() > 10 * g_se.max()


def test_beta_scales_the_kl_term_in_every_kl_estimator(problem):
    W, b, x, _ = problem
    vae = make_vae(W, b, SIGMA, loc_shift=0.2)
    loc, scale = vae.encoder(x)
    kl = kl_divergence(Normal(loc, scale), Normal(0.0, 1.0)).sum().item()
    for beta in (0.0, 0.25, 3.0):
        for name in ("meanfield", "elbo"):
            values = []
            for b_ in (1.0, beta):
                vae.beta = b_
                pyro.set_rng_seed(7)  # the same z in both runs
                tr = pyro.poutine.trace(vae.guide).get_trace(x)
                z = tr.nodes["z"]["value"]
                pyro.set_rng_seed(7)
                values.append(
                    make_estimator(name).differentiable_loss(vae.model, vae.guide, x).item()
                )
            log_ratio = (Normal(loc, scale).log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum().item()
            kl_term = kl if name == "meanfield" else log_ratio
            # loss = -E log p(x|z) + beta * KL
            assert values[1] - values[0] == pytest.approx((beta - 1) * kl_term, rel=1e-9, abs=1e-9)
    vae.beta = 1.0


@pytest.mark.parametrize("name", ["iwae", "renyi"])
def test_bounds_refuse_a_kl_weight(problem, name):
    W, b, x, _ = problem
    vae = make_vae(W, b, SIGMA)
    vae.beta = 0.5
    with pytest.raises(ValueError, match="no KL weight"):
        make_estimator(name, 3).differentiable_loss(vae.model, vae.guide, x)
    with pytest.raises(ValueError, match="beta = 1"):
        check_beta(name, 0.5)
    with pytest.raises(ValueError, match="warm-up"):
        check_beta(name, 1.0, warmup=True)
    check_beta("meanfield", 0.5)


def test_iwae_loss_is_differentiable_and_works_in_module_style(problem):
    W, b, x, _ = problem
    vae = make_vae(W, b, SIGMA, loc_shift=0.5)
    est = make_estimator("iwae", 5)
    loss_module = est(vae.model, vae.guide)  # Pyro's ELBOModule style
    loss = loss_module(x)
    loss.backward()
    assert vae.encoder.loc_shift.grad.abs().sum() > 0
    assert vae.decoder.W.grad.abs().sum() > 0


def test_unknown_estimator_lists_choices():
    with pytest.raises(UnknownNameError, match="valid choices: .*elbo, iwae, meanfield") as e:
        make_estimator("iwea")
    assert all(name in str(e.value) for name in ESTIMATORS)
    assert "did you mean 'iwae'" in str(e.value)
    with pytest.raises(ValueError, match="num_particles"):
        make_estimator("elbo", 0)
    assert {"elbo", "meanfield", "iwae", "renyi"} <= set(ESTIMATORS)


def _manual_log_w(vae, x, K):
    """log p(x, z) - log q(z | x), shaped (K, batch), from hand-built Pyro traces: an
    implementation independent of ImportanceWeightedELBO.log_weights."""
    particles = pyro.plate("num_particles_vectorized", K, dim=-2)  # the same draws as Pyro's
    guide_tr = pyro.poutine.trace(particles(vae.guide)).get_trace(x)
    model_tr = pyro.poutine.trace(
        pyro.poutine.replay(particles(vae.model), trace=guide_tr)
    ).get_trace(x)
    z = guide_tr.nodes["z"]["value"]  # (K, batch, L)
    return (
        model_tr.nodes["x"]["fn"].log_prob(x)
        + model_tr.nodes["z"]["fn"].log_prob(z)
        - guide_tr.nodes["z"]["fn"].log_prob(z)
    )


@pytest.mark.parametrize("name,alpha", [("iwae", None), ("renyi", 0.5), ("renyi", -0.7)])
def test_bound_value_and_gradient_match_an_independent_computation(problem, name, alpha):
    W, b, x, _ = problem
    vae = make_vae(W, b, SIGMA, loc_shift=0.5, scale_factor=1.7)  # log weights differ
    K, a = 7, 1.0 - (alpha or 0.0)
    params = list(vae.parameters())
    pyro.set_rng_seed(3)
    loss = make_estimator(name, K, alpha=alpha).differentiable_loss(vae.model, vae.guide, x)
    grads = torch.autograd.grad(loss, params)
    pyro.set_rng_seed(3)
    log_w = _manual_log_w(vae, x, K)
    assert log_w.std(0).min() > 0.1  # an imperfect guide: the log-mean-exp matters
    bound = (torch.logsumexp(a * log_w, 0) - math.log(K)) / a  # (batch,)
    expected = -bound.sum()
    expected_grads = torch.autograd.grad(expected, params)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=1e-10)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


def test_renyi_bounds_are_ordered_in_alpha(problem):
    # for the same particles: ELBO (alpha -> 1) <= Renyi(0.5) <= IWAE (alpha 0) <= Renyi(-1)
    W, b, x, _ = problem
    vae = make_vae(W, b, SIGMA, loc_shift=0.5, scale_factor=1.7)
    values = []
    for name, alpha in [("elbo", None), ("renyi", 0.5), ("iwae", None), ("renyi", -1.0)]:
        pyro.set_rng_seed(5)
        values.append(per_datapoint_elbo(name, vae, x, 9, alpha=alpha))
    assert values == sorted(values) and values[-1] - values[0] > 0.1


@pytest.mark.parametrize("name", ["iwae", "renyi"])
def test_a_common_site_scale_multiplies_the_bound_outside_the_log_mean_exp(problem, name):
    # a scale on every site (as a subsampled data plate gives) weights each datapoint's bound;
    # it must not enter the log-mean-exp
    W, b, x, _ = problem
    vae = make_vae(W, b, SIGMA, loc_shift=0.5, scale_factor=1.7)
    est = make_estimator(name, 5)
    pyro.set_rng_seed(11)
    plain = est.differentiable_loss(vae.model, vae.guide, x)
    scaled_model = pyro.poutine.scale(vae.model, scale=3.0)
    scaled_guide = pyro.poutine.scale(vae.guide, scale=3.0)
    pyro.set_rng_seed(11)
    scaled = est.differentiable_loss(scaled_model, scaled_guide, x)
    torch.testing.assert_close(scaled, 3.0 * plain, rtol=1e-12, atol=1e-10)


def test_a_kl_weight_on_the_model_alone_is_refused_too(problem):
    W, b, x, _ = problem
    vae = make_vae(W, b, SIGMA)

    def model(x):
        loc = x.new_zeros(x.shape[0], W.shape[1])
        with pyro.plate("data", x.shape[0]):
            with pyro.poutine.scale(scale=0.5):  # only the prior's site gets a weight
                z = pyro.sample("z", pyro.distributions.Normal(loc, 1.0).to_event(1))
            pyro.sample("x", vae.likelihood.distribution(vae.decoder(z)), obs=x)

    with pytest.raises(ValueError, match="model z.*0.5"):
        make_estimator("iwae", 3).differentiable_loss(model, vae.guide, x)


@pytest.mark.parametrize("alpha", [0.0, 0.5, -1.0])
def test_pyros_renyi_elbo_takes_the_same_per_datapoint_bound(problem, alpha):
    """Pyro's RenyiELBO with vectorized particles: on the same draws its loss is ours, a
    log-sum-exp over the particles of each datapoint; one over the whole batch's summed log
    weight (what the old docstring claimed) would differ by nats."""
    W, b, x, _ = problem
    vae = make_vae(W, b, SIGMA, loc_shift=0.4, scale_factor=1.5)  # a poor guide: weights vary
    K = 7
    pyro.set_rng_seed(3)
    theirs = RenyiELBO(alpha, K, max_plate_nesting=1, vectorize_particles=True).loss(
        vae.model, vae.guide, x
    )
    ours = ImportanceWeightedELBO(alpha, K)
    pyro.set_rng_seed(3)
    assert ours.loss(vae.model, vae.guide, x) == pytest.approx(theirs, rel=1e-10, abs=1e-8)
    pyro.set_rng_seed(3)
    log_w, _ = ours.log_weights(vae.model, vae.guide, x)  # (K, batch)
    a = 1 - alpha
    whole_batch = (torch.logsumexp(a * log_w.sum(1), 0) - math.log(K)) / a
    assert abs(-whole_batch.item() - theirs) > 1.0
