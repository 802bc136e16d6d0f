"""STL and DReG against closed forms and against the estimators they must agree with in
expectation, and their refusals.

Statistical checks use paired draws (the same seed for both estimators, so the same z) and
tolerances from the measured spread of the draws, with enough draws that the checks also
detect a wrong estimator (``test_dreg_and_iwae_gradients_have_the_same_expectation`` shows
that the same check rejects the biased IWAE-with-STL-gradient).
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.config import TrainConfig
from pyro_vae.infer.estimators import (
    ESTIMATORS,
    DReGELBO,
    ImportanceWeightedELBO,
    StickingTheLandingELBO,
    make_estimator,
)

from linear_gaussian import exact_log_px, make_problem, make_vae

SIGMA = 0.5


@pytest.fixture
def problem():
    W, b, x = make_problem(sigma=SIGMA)
    return W, b, x, exact_log_px(W, b, SIGMA, x)


def _loss_and_grads(vae, name, K, x, seed):
    pyro.set_rng_seed(seed)
    loss = make_estimator(name, K).differentiable_loss(vae.model, vae.guide, x)
    names, params = zip(*vae.named_parameters())
    return loss.item(), dict(zip(names, torch.autograd.grad(loss, params)))


def _flat(grads: dict, prefix: str) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for n, g in grads.items() if n.startswith(prefix)])


# ----------------------------------------------------------------------- exactness


@pytest.mark.parametrize("name,K", [("stl", 1), ("stl", 4), ("dreg", 1), ("dreg", 5)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_posterior_gives_exact_log_px_for_any_sample(problem, name, K, seed):
    # q(z|x) = p(z|x): log p(x, z) - log q(z|x) = log p(x) for every z
    W, b, x, log_px = problem
    vae = make_vae(W, b, SIGMA)
    pyro.set_rng_seed(seed)
    est = make_estimator(name, K)
    if isinstance(est, ImportanceWeightedELBO):
        log_w, _ = est.log_weights(vae.model, vae.guide, x)  # (K, batch)
        torch.testing.assert_close(log_w, log_px.expand(K, -1), atol=1e-9, rtol=0)
    value = -est.differentiable_loss(vae.model, vae.guide, x).item() / len(x)
    assert value == pytest.approx(log_px.mean().item(), abs=1e-9)


@pytest.mark.parametrize("K", [1, 3])
def test_values_and_decoder_gradients_are_those_of_elbo_and_iwae(problem, K):
    # same sample: stl has Trace_ELBO's value, dreg IWAE's; both keep the decoder gradient
    W, b, x, _ = problem
    vae = make_vae(W, b, SIGMA, loc_shift=0.3, scale_factor=0.7)
    for new, old in [("stl", "elbo"), ("dreg", "iwae")]:
        v_new, g_new = _loss_and_grads(vae, new, K, x, seed=5)
        v_old, g_old = _loss_and_grads(vae, old, K, x, seed=5)
        assert v_new == v_old
        for n in g_new:
            if not n.startswith("encoder"):
                assert torch.equal(g_new[n], g_old[n]), n
        # the encoder gradient is a different estimator of the same expectation
        assert not torch.allclose(_flat(g_new, "encoder"), _flat(g_old, "encoder"))
    # one particle: DReG's weights are all 1, so its gradient is STL's
    _, g_dreg = _loss_and_grads(vae, "dreg", 1, x, seed=6)
    _, g_stl = _loss_and_grads(vae, "stl", 1, x, seed=6)
    for n in g_dreg:
        torch.testing.assert_close(g_dreg[n], g_stl[n], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("new,old,K", [("stl", "elbo", 1), ("stl", "elbo", 3), ("dreg", "iwae", 5)])
def test_path_gradient_of_the_guide_is_zero_at_the_exact_posterior(problem, new, old, K):
    # log p(x, z) - log q(z|x) = log p(x) does not depend on z, so the path derivative is 0 for
    # every draw; the score-function part of the usual gradient is not
    W, b, x, _ = problem
    vae = make_vae(W, b, SIGMA)

    def draws(name):  # (20, encoder parameters)
        return torch.stack(
            [_flat(_loss_and_grads(vae, name, K, x, s)[1], "encoder") for s in range(20)]
        )

    g_new, g_old = draws(new), draws(old)
    assert g_new.abs().max() < 1e-10
    assert g_old.std(0).min() > 0.1


# ----------------------------------------------------------------------- unbiasedness


def _paired_draws(vae, x, estimators, R):
    """``{name: (R, P) gradients}``, draw r of every estimator from seed r (the same z)."""
    params = list(vae.parameters())
    out = {}
    for name, loss_fn in estimators.items():
        rows = []
        for r in range(R):
            pyro.set_rng_seed(r)
            g = torch.autograd.grad(loss_fn(vae.model, vae.guide, x), params)
            rows.append(torch.cat([t.reshape(-1) for t in g]))
        out[name] = torch.stack(rows)
    return out


def _paired_z(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = a - b  # (R, P)
    return d.mean(0) / (d.std(0) / math.sqrt(len(d)))


def test_dreg_and_iwae_gradients_have_the_same_expectation():
    W, b, x = make_problem(sigma=SIGMA, n=64)
    vae = make_vae(W, b, SIGMA, loc_shift=0.4, scale_factor=1.6)
    K, R, n_enc = 5, 500, 6  # the encoder's parameters come first: loc_shift, log_scale_factor
    iwae, dreg = make_estimator("iwae", K), make_estimator("dreg", K)

    def iwae_with_stl_gradient(model, guide, x):
        # detached guide parameters but weights w~ (not w~^2): biased (Tucker et al., sec. 3)
        log_w, _, _, _ = dreg._traced_log_weights(model, guide, (x,), {}, detach_guide=True)
        return -(torch.logsumexp(log_w, 0) - math.log(K)).sum()

    g = _paired_draws(
        vae,
        x,
        {
            "iwae": iwae.differentiable_loss,
            "dreg": dreg.differentiable_loss,
            "biased": iwae_with_stl_gradient,
        },
        R,
    )
    assert torch.equal(g["dreg"][:, n_enc:], g["iwae"][:, n_enc:])  # decoder: IWAE's, exactly
    z = _paired_z(g["dreg"][:, :n_enc], g["iwae"][:, :n_enc])
    assert z.abs().max() < 5, z
    # the gradients are far from zero, so agreement is not trivial
    signal = g["iwae"].mean(0) / (g["iwae"].std(0) / math.sqrt(R))
    assert signal[:n_enc].abs().min() > 10, signal
    # and the same check rejects a biased estimator
    z_biased = _paired_z(g["biased"][:, :n_enc], g["iwae"][:, :n_enc])
    assert z_biased.abs().max() > 20, z_biased


def test_stl_and_elbo_gradients_have_the_same_expectation_with_a_kl_weight():
    # beta scales the detached log q as it scales Trace_ELBO's, so STL stays unbiased
    W, b, x = make_problem(sigma=SIGMA, n=64)
    vae = make_vae(W, b, SIGMA, loc_shift=0.4, scale_factor=1.6)
    vae.beta = 0.5
    elbo, stl = make_estimator("elbo"), make_estimator("stl")
    pyro.set_rng_seed(3)
    v_elbo = elbo.differentiable_loss(vae.model, vae.guide, x).item()
    pyro.set_rng_seed(3)
    assert stl.differentiable_loss(vae.model, vae.guide, x).item() == v_elbo
    R, n_enc = 400, 6
    g = _paired_draws(vae, x, {"elbo": elbo.differentiable_loss, "stl": stl.differentiable_loss}, R)
    assert torch.equal(g["stl"][:, n_enc:], g["elbo"][:, n_enc:])
    z = _paired_z(g["stl"][:, :n_enc], g["elbo"][:, :n_enc])
    assert z.abs().max() < 5, z
    signal = g["elbo"].mean(0) / (g["elbo"].std(0) / math.sqrt(R))
    assert signal[:n_enc].abs().min() > 10, signal
    # STL's point: less variance for the same expectation
    assert (g["stl"][:, :n_enc].var(0) < g["elbo"][:, :n_enc].var(0)).all()


# ----------------------------------------------------------------------- registry and refusals


def test_registry_module_style_and_training_settings(problem):
    W, b, x, _ = problem
    assert ESTIMATORS.get("stl").supports_beta and not ESTIMATORS.get("dreg").supports_beta
    assert isinstance(make_estimator("stl", 2), StickingTheLandingELBO)
    assert isinstance(make_estimator("dreg", 4), DReGELBO)
    vae = make_vae(W, b, SIGMA, loc_shift=0.5)
    loss = make_estimator("dreg", 5)(vae.model, vae.guide)(x)  # Pyro's ELBOModule style
    loss.backward()
    assert vae.encoder.loc_shift.grad.abs().sum() > 0 and vae.decoder.W.grad.abs().sum() > 0
    TrainConfig(estimator="stl", beta=0.5)
    TrainConfig(estimator="dreg", particles=5)
    with pytest.raises(ValueError, match="beta = 1"):
        TrainConfig(estimator="dreg", beta=0.5)
    vae.beta = 0.5
    with pytest.raises(ValueError, match="no KL weight"):
        make_estimator("dreg", 3).differentiable_loss(vae.model, vae.guide, x)
    with torch.no_grad():  # loss() under no_grad: no gradient hooks, the same value
        pyro.set_rng_seed(1)
        vae.beta = 1.0
        a = make_estimator("dreg", 3).loss(vae.model, vae.guide, x)
        pyro.set_rng_seed(1)
        assert make_estimator("iwae", 3).loss(vae.model, vae.guide, x) == a


@pytest.mark.parametrize("name", ["stl", "dreg"])
def test_path_estimators_refuse_guides_they_cannot_detach(name):
    x = torch.randn(4, 2)

    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)

    def guide(x):
        loc = torch.zeros(len(x), 2, requires_grad=True)
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Laplace(loc, 1.0).to_event(1))

    with pytest.raises(NotImplementedError, match="Normal and Independent"):
        make_estimator(name, 2).differentiable_loss(model, guide, x)
