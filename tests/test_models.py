"""Any model and guide, end to end: the protocol's closed forms (two stochastic layers, a label
-conditional model), Pyro's own tools, and every built-in model through training, resuming,
evaluation, the command line and the comparison."""

import json
import math
import textwrap

import numpy as np
import pyro
import pyro.optim
import pytest
import torch
from pyro.infer import SVI, Predictive

from pyro_vae.apps import cli
from pyro_vae.config import TrainConfig
from pyro_vae.eval import elbo_terms, evaluate_elbo, gradient_snr, importance_log_px
from pyro_vae.infer import make_estimator
from pyro_vae.models import MODELS, LabelInfo, ModelConfig, build_model, build_vae
from pyro_vae.train import NonFiniteLossError, fit, safe_load

from linear_gaussian import (
    exact_conditional_log_px,
    exact_two_layer_log_px,
    make_conditional_problem,
    make_conditional_vae,
    make_two_layer_problem,
    make_two_layer_vae,
)

BUILT_IN = ("vae", "two-layer", "iaf", "vamp", "cvae")
SMALL = dict(latent_dim=3, hidden=(16,), top_latent_dim=2, top_hidden=(8,), pseudo_inputs=6)
LABELS = LabelInfo((), "int64", 3)


def _bound(name, model, x, *inputs, K=1, **kw):
    est = make_estimator(name, K, **kw)
    return -est.differentiable_loss(model.model, model.guide, x, *inputs).item() / len(x)


def _data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.bernoulli(torch.full((n, 1, 8, 8), 0.3), generator=g)  # (n, 1, 8, 8) binary
    return x, torch.arange(n) % 3


def _built(name, seed=0, **settings):
    pyro.set_rng_seed(seed)
    return build_model(ModelConfig(model=name, **{**SMALL, **settings}), (1, 8, 8), labels=LABELS)


def _inputs(name, y):
    return (y,) if name == "cvae" else ()


# ----------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("seed", [0, 1])
def test_two_layer_exact_posterior_gives_the_exact_log_px(seed):
    """z2 -> z1 -> x, linear-Gaussian: with the exact posterior q(z1|x) q(z2|z1), every
    estimator that applies, the importance-sampled log p(x), the ELBO's terms and the
    held-out ELBO (Monte Carlo KL: the sites come in another order) equal log p(x)."""
    p = make_two_layer_problem(seed=seed)
    model, x, truth = make_two_layer_vae(p), p["x"], exact_two_layer_log_px(p).mean().item()
    pyro.set_rng_seed(seed)
    for name, K, kw in [
        ("elbo", 1, {}),
        ("elbo", 4, {}),
        ("iwae", 5, {}),
        ("renyi", 3, {"alpha": 0.5}),
    ]:
        assert _bound(name, model, x, K=K, **kw) == pytest.approx(truth, abs=1e-4), name
    assert importance_log_px(model, x, 20, quiet=True).mean == pytest.approx(truth, abs=1e-4)
    terms = elbo_terms(model, x, 8, quiet=True)
    assert terms.kl_kind == {"z1": "monte-carlo", "z2": "monte-carlo"}
    assert terms.elbo.mean().item() == pytest.approx(truth, abs=1e-4)
    assert torch.isnan(terms.kl_per_dim).all() and terms.kl_per_dim.shape == (len(x), 5)
    assert evaluate_elbo(model, x, lambda b: b) == pytest.approx(truth, abs=1e-4)


def test_two_layer_perturbed_guide_orders_the_bounds():
    p = make_two_layer_problem()
    model = make_two_layer_vae(p, loc_shift=0.4, scale_factor=1.6)
    x, truth = p["x"].repeat(300, 1), exact_two_layer_log_px(p).mean().item()
    pyro.set_rng_seed(0)
    elbo, iwae5, iwae50 = (
        _bound(n, model, x, K=k) for n, k in [("elbo", 1), ("iwae", 5), ("iwae", 50)]
    )
    assert elbo + 0.2 < iwae5 < iwae50 < truth  # each gap far above the Monte Carlo error
    assert truth - elbo > 0.5


def test_conditional_exact_posterior_gives_the_exact_log_px_given_the_label():
    """x | z, y ~ N(W z + b + B y, sigma^2): the label shifts the mean; the exact posterior
    q(z | x, y) makes every bound log p(x | y), and the analytic KL so in expectation."""
    p = make_conditional_problem()
    model, x, y = make_conditional_vae(p), p["x"], p["y"]
    truth = exact_conditional_log_px(p).mean().item()
    pyro.set_rng_seed(0)
    for name, K in [("elbo", 1), ("iwae", 5), ("stl", 2), ("dreg", 3)]:
        assert _bound(name, model, x, y, K=K) == pytest.approx(truth, abs=1e-4), name
    assert importance_log_px(model, x, 16, inputs=(y,), quiet=True).mean == pytest.approx(
        truth, abs=1e-4
    )
    draws = torch.tensor([_bound("meanfield", model, x, y, K=200) for _ in range(30)])
    assert abs(draws.mean() - truth) < 4 * draws.std() / math.sqrt(len(draws)) + 1e-6
    terms = elbo_terms(model, x, 2000, inputs=(y,), quiet=True)
    assert terms.kl_kind == {"z": "analytic"}
    assert terms.elbo.mean().item() == pytest.approx(truth, abs=0.05)
    with pytest.raises(ValueError, match=r"takes the extra inputs \(labels\)"):
        importance_log_px(model, x, 4, quiet=True)


def test_the_monte_carlo_kl_agrees_with_the_analytic_one_in_expectation():
    vae = build_vae((6,), "bernoulli", latent_dim=2, hidden=(8,))
    x = torch.bernoulli(torch.full((40, 6), 0.4))
    analytic = evaluate_elbo(vae, x, lambda b: b)  # meanfield: the sites are in order
    draws = torch.tensor(
        [
            evaluate_elbo(vae, x, lambda b: b, estimator=make_estimator("elbo", 50))
            for _ in range(30)
        ]
    )
    meanfield = torch.tensor([evaluate_elbo(vae, x, lambda b: b) for _ in range(30)])
    se = math.sqrt(draws.var() / len(draws) + meanfield.var() / len(meanfield))
    assert abs(draws.mean() - meanfield.mean()) < 4 * se
    assert abs(analytic - draws.mean()) < 4 * se + 3 * meanfield.std()


# ----------------------------------------------------------------------- Pyro's own tools


@pytest.mark.parametrize("name", ["vae", "cvae"])
def test_svi_with_pyro_optim_trains_every_parameter(name):
    model = _built(name)
    x, y = _data(64)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    svi = SVI(model.model, model.guide, pyro.optim.Adam({"lr": 0.02}), make_estimator("meanfield"))
    losses = [svi.step(x, *_inputs(name, y)) for _ in range(60)]
    assert len(pyro.get_param_store()) == 0  # nothing in Pyro's global store
    for n, p in model.named_parameters():
        assert not torch.equal(p, before[n]), n
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 1.0


def test_predictive_gives_prior_and_posterior_draws():
    model = _built("vae")
    x, _ = _data(5)
    prior = Predictive(model.model, num_samples=4)(None, num_samples=3)
    assert prior["x"].shape == (4, 3, 1, 8, 8) and set(prior["x"].unique().tolist()) <= {0, 1}
    posterior = Predictive(model.model, guide=model.guide, num_samples=6, return_sites=["z"])(x)
    assert posterior["z"].shape == (6, 5, SMALL["latent_dim"])
    assert not torch.equal(posterior["z"][0], posterior["z"][1])


def test_an_estimators_module_sees_the_models_parameters():
    model = _built("iaf")
    for name in ("elbo", "meanfield", "iwae", "stl"):
        module = make_estimator(name, 2)(model.model, model.guide)
        assert {id(p) for p in module.parameters()} == {id(p) for p in model.parameters()}, name


# ----------------------------------------------------------------------- every built-in model


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_model_graph_equals_the_program_and_resume_is_bit_identical(name, tmp_path):
    x, y = _data()
    inputs, test = _inputs(name, y), _inputs(name, y[:20])
    cfg = TrainConfig(epochs=2, batch_size=40, quiet=True, estimator="elbo")
    graph = fit(_built(name), x, x[:20], cfg, train_inputs=inputs, test_inputs=test)
    off = fit(_built(name), x, x[:20], TrainConfig(**{**cfg.__dict__, "capture": "off"}),
              train_inputs=inputs, test_inputs=test)  # fmt: skip
    assert graph.capture == "graph" and off.capture == "eager: capture is off"
    for (n, p), q in zip(graph.model.named_parameters(), off.model.parameters()):
        assert torch.equal(p, q), n
    assert [m["test_elbo"] for m in graph.metrics] == [m["test_elbo"] for m in off.metrics]
    # resume from the epoch-1 checkpoint: the same parameters as the straight run
    one = TrainConfig(**{**cfg.__dict__, "epochs": 1})
    fit(_built(name), x, x[:20], one, out=tmp_path, train_inputs=inputs, test_inputs=test)
    torch.manual_seed(99)  # whatever happens in between does not matter
    resumed = fit(_built(name, seed=5), x, x[:20], cfg, out=tmp_path, resume=True,
                  train_inputs=inputs, test_inputs=test)  # fmt: skip
    for (n, p), q in zip(graph.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), n


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_model_log_px_does_not_depend_on_the_memory_budget(name):
    model = _built(name)
    x, y = _data(12)
    inputs = _inputs(name, y)
    a = importance_log_px(model, x, 30, seed=2, inputs=inputs, quiet=True)
    b = importance_log_px(model, x, 30, seed=2, inputs=inputs, particle_chunk=7, data_chunk=5,
                          quiet=True)  # fmt: skip
    assert a.chunk_invariant and b.chunk_invariant and b.num_chunks > a.num_chunks
    torch.testing.assert_close(a.log_px, b.log_px, rtol=0, atol=1e-4)
    other = importance_log_px(model, x, 30, seed=3, inputs=inputs, quiet=True)
    assert (other.log_px - a.log_px).abs().max() > 1e-4  # the seed matters: the check has teeth


def test_estimators_that_do_not_apply_are_refused_before_the_first_step():
    x, _ = _data(40)
    calls = []
    for name, estimator, words in [
        ("two-layer", "meanfield", r"order \['z1', 'z2'\] but the model in \['z2', 'z1'\].*elbo"),
        ("two-layer", "stl", r"site 'z2' depends on 'z1'.*--estimator elbo"),
        ("iaf", "dreg", r"guide site 'z'.*TransformedDistribution.*--estimator iwae"),
    ]:
        model = _built(name)
        model.decoder.register_forward_hook(lambda m, i, o: calls.append(m.training))
        with pytest.raises(ValueError, match=words):
            cfg = TrainConfig(estimator=estimator, particles=2, batch_size=20, quiet=True)
            fit(model, x, None, cfg)
        assert True not in calls  # no training step ran
    with pytest.raises(ValueError, match="cvae model needs labels"):
        build_model(ModelConfig(model="cvae"), (1, 8, 8))


def test_kl_per_site_and_the_parameter_groups_are_read_from_the_traces():
    x, y = _data(20)
    kinds = {
        "vae": {"z": "analytic"},
        "iaf": {"z": "monte-carlo"},  # a flow: no closed form
        "vamp": {"z": "monte-carlo"},  # a mixture prior: no closed form
        "cvae": {"z": "analytic"},
    }
    for name, kind in kinds.items():
        model = _built(name)
        terms = elbo_terms(model, x, 4, inputs=_inputs(name, y), quiet=True)
        assert terms.kl_kind == kind, name
        assert torch.allclose(terms.kl, sum(terms.kl_per_site.values()))
    vamp, iaf = _built("vamp"), _built("iaf")
    rows = gradient_snr(vamp, x, "elbo", [1], R=3)
    decoder = next(r for r in rows if r.group == "decoder")
    pseudo = vamp.pseudo_inputs.numel()
    assert decoder.num_params > sum(p.numel() for p in vamp.decoder.parameters()) + pseudo - 1
    groups = {r.group: r.num_params for r in gradient_snr(iaf, x, "elbo", [1], R=3)}
    flows = sum(p.numel() for p in iaf.flows.parameters())
    assert groups["encoder"] > flows  # the flows are the guide's


def test_a_non_finite_term_is_named_by_its_site():
    model = _built("two-layer")
    x, _ = _data(40)
    # p(z1 | z2) with a vanishing scale (still valid): log p(z1 | z2) of the guide's z1 is -inf
    model.top_decoder.register_forward_hook(
        lambda m, i, o: (o[0], o[1] * 1e-30) if m.training else o
    )
    with pytest.raises(NonFiniteLossError, match="site 'z1'") as info:
        fit(model, x, None, TrainConfig(estimator="elbo", batch_size=20, quiet=True, capture="off"))
    assert info.value.term == "KL"


# ----------------------------------------------------------------------- the command line


@pytest.fixture
def labelled(tmp_path):
    x, y = _data(90)
    path = tmp_path / "data.npz"
    np.savez(path, x=(x * 255).to(torch.uint8).numpy(), y=y.numpy())
    return path


FLAGS = ["--test-size", "20", "--latent-dim", "2", "--hidden", "8", "--top-latent-dim", "2",
         "--top-hidden", "8", "--pseudo-inputs", "4", "--batch-size", "35", "--quiet"]  # fmt: skip


@pytest.mark.parametrize("name", BUILT_IN)
def test_the_cli_trains_resumes_evaluates_samples_and_compares_every_built_in_model(
    name, labelled, tmp_path, capsys
):
    run = tmp_path / "run"
    estimator = "elbo" if name == "two-layer" else "meanfield"
    base = ["--dataset", str(labelled), *FLAGS]
    assert cli.main(["train", "--model", name, "--estimator", estimator, "--epochs", "1",
                     "--out", str(run), *base]) == 0  # fmt: skip
    assert cli.main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert safe_load(run / "checkpoint.pt")["epoch"] == 2
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["model"] == name and "test_elbo_estimator" in config
    assert cli.main(["evaluate", str(run), "--iw-samples", "4", "--elbo-particles", "2",
                     "--quiet"]) == 0  # fmt: skip
    summary = json.loads((run / "summary.json").read_text())
    assert math.isfinite(summary["log_px"]) and summary["model"] == name
    assert (run / "evaluation" / "traversals.png").is_file()
    assert cli.main(["sample", str(run), "--num", "6"]) == 0
    out = tmp_path / "cmp"
    assert cli.main(["compare", "--model", name, "--epochs", "1", "--seeds", "0", "1", "2",
                     "--ks", "2", "--iw-samples", "3", "--snr-draws", "2", "--snr-batch", "6",
                     "--out", str(out), *base]) == 0  # fmt: skip
    table = (out / "comparison.md").read_text()
    capsys.readouterr()
    if name == "two-layer":
        assert "Not compared: the meanfield estimator" in table and "| elbo | 1 |" in table
    elif name == "iaf":
        assert "Not compared: the stl estimator" in table and "| iwae | 2 |" in table
    else:
        assert "| dreg | 2 |" in table


USER_MODEL = textwrap.dedent(
    """
    import pyro
    import pyro.distributions as dist
    import torch

    from pyro_vae.models import LatentModel, MLPDecoder, MLPEncoder, make_likelihood


    class LaplacePrior(LatentModel):
        def __init__(self, event_shape, latent_dim, hidden, likelihood, beta=1.0):
            super().__init__(event_shape, beta)
            self.likelihood = make_likelihood(likelihood, event_shape)
            self.encoder = MLPEncoder(event_shape, latent_dim, hidden)
            self.decoder = MLPDecoder(latent_dim, self.likelihood.param_shape, hidden)
            self.latent_dim = latent_dim

        def model(self, x=None, num_samples=None):
            batch = self.batch_size(x, (), num_samples)
            zeros = next(self.parameters()).new_zeros(batch, self.latent_dim)
            with pyro.plate("data", batch):
                with self.kl_weight():
                    z = pyro.sample("latent", dist.Laplace(zeros, 1.0).to_event(1))
                pyro.sample("image", self.likelihood.distribution(self.decoder(z)), obs=x)

        def guide(self, x, num_samples=None):
            loc, scale = self.encoder(x)
            with pyro.plate("data", x.shape[0]), self.kl_weight():
                pyro.sample("latent", dist.Normal(loc, scale).to_event(1))


    def build(event_shape, config, *, labels=None, beta=1.0):
        return LaplacePrior(event_shape, config.latent_dim, config.hidden, config.likelihood, beta)
    """
)


USER_LIKELIHOOD = textwrap.dedent(
    """
    from pyro_vae.models import LIKELIHOODS
    from pyro_vae.models.likelihoods import NormalLikelihood


    @LIKELIHOODS.register("user-normal")
    class UserNormal(NormalLikelihood):
        name = "user-normal"
    """
)


def test_a_user_model_by_path_trains_resumes_and_evaluates_from_anywhere(
    labelled, tmp_path, monkeypatch, capsys
):
    code = tmp_path / "user" / "mymodel.py"
    code.parent.mkdir()
    code.write_text(USER_MODEL)
    (code.parent / "likes.py").write_text(USER_LIKELIHOOD)
    run = tmp_path / "run"
    monkeypatch.chdir(code.parent)
    try:
        assert cli.main(["train", "--model", "mymodel.py:build", "--import", "likes.py",
                         "--likelihood", "user-normal",
                         "--epochs", "1", "--dataset", str(labelled), "--out", str(run),
                         *FLAGS]) == 0  # fmt: skip
        monkeypatch.chdir(tmp_path)  # elsewhere: config.json names the file by its path
        assert cli.main(["train", "--resume", str(run), "--epochs", "2"]) == 0
        assert cli.main(["evaluate", str(run), "--iw-samples", "4", "--elbo-particles", "2",
                         "--quiet"]) == 0  # fmt: skip
        config = json.loads((run / "config.json").read_text())["model"]
        assert config["imports"] == [str(code.parent / "likes.py")]
        assert config["model"] == f"{code}:build"  # both by path: rebuilt from any folder
        summary = json.loads((run / "summary.json").read_text())
        assert summary["latent_sites"] == {"latent": [2]}
        assert summary["kl_kind"] == {"latent": "analytic"}  # torch has KL(Normal || Laplace)
        assert summary["bits_per_dim"] is not None  # a density on dequantized levels
    finally:
        from pyro_vae.models import LIKELIHOODS

        LIKELIHOODS._entries.pop("user-normal", None)
    capsys.readouterr()


def test_an_unknown_model_lists_the_choices_and_a_bad_path_says_what_to_do(capsys):
    with pytest.raises(ValueError, match="unknown model 'vea'; valid choices: .*vae.*by path"):
        ModelConfig(model="vea")
    assert cli.main(["train", "--model", "nowhere:build"]) == 1
    err = capsys.readouterr().err
    assert "cannot import nowhere" in err and "PYTHONPATH" in err
    assert set(BUILT_IN) <= set(MODELS)
