"""The VAE's Pyro programs: site shapes for every likelihood x network x batch, and errors."""

import pyro
import pytest
import torch
from pyro import poutine

from pyro_vae.infer.estimators import make_estimator
from pyro_vae.models import build_vae

CASES = [
    ("bernoulli", {}),
    ("continuous-bernoulli", {}),
    ("normal", {"scale": "shared"}),
    ("normal", {"scale": "per-pixel"}),
    ("normal", {"scale": "decoder"}),
]


@pytest.mark.parametrize("likelihood,options", CASES)
@pytest.mark.parametrize(
    "arch,shape",
    [("mlp", (1, 28, 28)), ("mlp", (12,)), ("conv", (1, 28, 28)), ("conv", (3, 32, 32))],
)
@pytest.mark.parametrize("batch", [1, 7])
def test_site_shapes(likelihood, options, arch, shape, batch):
    vae = build_vae(shape, likelihood, latent_dim=3, hidden=(16,), arch=arch, **options)
    x = torch.rand(batch, *shape)
    if likelihood == "bernoulli":
        x = x.round()
    guide_tr = poutine.trace(vae.guide).get_trace(x)
    model_tr = poutine.trace(poutine.replay(vae.model, trace=guide_tr)).get_trace(x)
    model_tr.compute_log_prob()
    z, xs = model_tr.nodes["z"], model_tr.nodes["x"]
    assert z["value"].shape == (batch, 3)
    assert z["fn"].event_shape == (3,) and z["log_prob"].shape == (batch,)
    assert xs["fn"].batch_shape == (batch,) and xs["fn"].event_shape == shape
    assert xs["log_prob"].shape == (batch,)
    assert model_tr.nodes["_RETURN"]["value"].shape == (
        batch,
        vae.likelihood.params_per_dim,
        *shape,
    )
    # vectorized particles add one leading dimension everywhere
    K = 4
    log_w, _ = make_estimator("iwae", K).log_weights(vae.model, vae.guide, x)
    assert log_w.shape == (K, batch)
    loss = make_estimator("elbo", K).differentiable_loss(vae.model, vae.guide, x)
    assert loss.shape == () and torch.isfinite(loss)
    assert vae.reconstruct(x).shape == (batch, *shape)
    mean, draw = vae.sample(5)
    assert mean.shape == draw.shape == (5, *shape)


def test_prior_follows_input_dtype():
    vae = build_vae((4,), "normal", latent_dim=2, hidden=(8,)).double()
    x = torch.rand(3, 4, dtype=torch.float64)
    tr = poutine.trace(vae.model).get_trace(x)
    assert tr.nodes["z"]["fn"].base_dist.loc.dtype == torch.float64


def test_guide_scale_is_positive_even_for_extreme_inputs():
    vae = build_vae((4,), "normal", latent_dim=2, hidden=(8,))
    _, scale = vae.encoder(torch.full((3, 4), -1e6))
    assert (scale > 0).all()


def test_model_with_grey_data_under_bernoulli_raises_the_actionable_error():
    vae = build_vae((4,), "bernoulli", latent_dim=2, hidden=(8,))
    x = torch.full((2, 4), 0.5)
    # Pyro re-raises from its trace with the site named; our message is in it
    with pytest.raises(ValueError, match="site 'x'(.|\n)*Binarize the data"):
        make_estimator("meanfield").differentiable_loss(vae.model, vae.guide, x)


def test_conv_on_flat_data_is_refused():
    with pytest.raises(ValueError, match="divisible by 4.*--arch mlp"):
        build_vae((784,), "bernoulli", arch="conv")
    with pytest.raises(ValueError, match="divisible by 4"):
        build_vae((1, 30, 30), "bernoulli", arch="conv")


def test_invalid_sizes_and_beta():
    with pytest.raises(ValueError, match="latent_dim must be a positive"):
        build_vae((4,), latent_dim=0)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        build_vae((4,), beta=-1)
    with pytest.raises(ValueError, match="valid choices: mlp, conv"):
        build_vae((4,), arch="resnet")
    with pytest.raises(ValueError, match="unknown activation"):
        build_vae((4,), activation="sigmoidal")


def test_model_without_data_samples_x():
    vae = build_vae((4,), "bernoulli", latent_dim=2, hidden=(8,))
    tr = poutine.trace(vae.model).get_trace(None, 6)
    x = tr.nodes["x"]["value"]
    assert x.shape == (6, 4) and set(x.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="num_samples"):
        vae.model(None)
    pyro.clear_param_store()
