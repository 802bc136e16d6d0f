"""The recorded loss graph (pyro_vae.infer.capture) is the Pyro program's loss: values, gradients,
random draws, training trajectories; and it steps aside where a graph cannot represent it."""

import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch

from pyro_vae.config import TrainConfig
from pyro_vae.data import Preprocess, load_data
from pyro_vae.infer.capture import CapturedLoss, compile_options
from pyro_vae.infer.estimators import DReGELBO, make_estimator
from pyro_vae.models import MODELS, build_vae
from pyro_vae.train import TrainStep, fit

ROOT = Path(__file__).resolve().parents[1]

CASES = [  # estimator, particles, likelihood, options, arch, event shape
    ("meanfield", 1, "bernoulli", {}, "mlp", (12,)),
    ("elbo", 1, "bernoulli", {}, "mlp", (12,)),
    ("elbo", 3, "normal", {"scale": "per-pixel"}, "mlp", (12,)),
    ("iwae", 4, "continuous-bernoulli", {}, "mlp", (12,)),
    ("renyi", 3, "normal", {"scale": "decoder"}, "mlp", (12,)),
    ("stl", 1, "normal", {"scale": "shared"}, "mlp", (12,)),
    ("meanfield", 1, "normal", {"scale": "shared"}, "conv", (1, 8, 8)),
]


def _data(likelihood, shape, n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g)
    return x.round() if likelihood == "bernoulli" else x


def _loss_and_grads(fn, vae, x, seed):
    torch.manual_seed(seed)
    loss = fn(x)
    grads = torch.autograd.grad(loss, list(vae.parameters()))
    return loss.detach(), grads


@pytest.mark.parametrize("estimator,k,likelihood,options,arch,shape", CASES)
def test_graph_equals_the_pyro_program_on_new_batches_after_updates(
    estimator, k, likelihood, options, arch, shape
):
    vae = build_vae(shape, likelihood, latent_dim=3, hidden=(16,), arch=arch, **options)
    est = make_estimator(estimator, k, alpha=0.5 if estimator == "renyi" else None)
    captured = CapturedLoss(vae, est)
    opt = torch.optim.Adam(vae.parameters(), lr=0.01)
    for step in range(3):  # different data each time, and parameters that moved
        x = _data(likelihood, shape, 10, seed=step)
        graph_loss, graph_grads = _loss_and_grads(captured, vae, x, seed=100 + step)
        assert captured.mode == "graph" and torch.isfinite(graph_loss)
        eager_loss, eager_grads = _loss_and_grads(captured.eager, vae, x, seed=100 + step)
        # the same operations on the same draws (Pyro's eager value sums Python floats of
        # the terms, the graph float32 tensors: the last bits may differ)
        torch.testing.assert_close(graph_loss, eager_loss, rtol=1e-6, atol=0)
        for g, e in zip(graph_grads, eager_grads):
            torch.testing.assert_close(g, e, rtol=1e-6, atol=1e-7)
        assert max(g.abs().max() for g in graph_grads) > 1e-3  # gradients are not trivially 0
        for p, g in zip(vae.parameters(), graph_grads):
            p.grad = g
        opt.step()
    assert len(captured._graphs) == 1  # one shape, one graph


@pytest.mark.parametrize("event_shape", [(1, 4, 4), (16,)])
def test_the_vae_graph_keeps_no_bookkeeping_nodes(event_shape):
    # Pyro's loss + (surrogate - detach(surrogate)), the likelihood's select of its one output
    # per pixel, its (B, 1, D) squeezed back to the decoder's (B, D), and sum_rightmost's
    # reshape of a flat event leave nothing in the graph
    vae = build_vae(event_shape, "bernoulli", latent_dim=3, hidden=(8,))
    captured = CapturedLoss(vae, make_estimator("meanfield", 1))
    x = _data("bernoulli", event_shape, 6, seed=0)
    with pyro.validation_enabled(True):
        captured(x)
    (graph,) = captured._graphs.values()
    ops = [str(n.target) for n in graph.graph.nodes if n.op == "call_function"]
    assert captured.mode == "graph"
    assert not {"aten.detach.default", "aten.select.int"} & set(ops)
    assert ops.count("aten.neg.default") == 2  # -sum(bce) per datapoint, and the loss itself
    reshapes = ("aten.reshape.default", "aten.view.default", "aten.squeeze.dim")

    def start(n):  # where a chain of reshapes begins
        return start(n.args[0]) if str(n.target) in reshapes else n

    shapes = [
        (tuple(start(n.args[0]).meta["val"].shape), tuple(n.meta["val"].shape))
        for n in graph.graph.nodes
        if str(n.target) in reshapes
    ]
    assert all(a != b for a, b in shapes)  # no chain ends where it began
    assert bool(shapes) == (len(event_shape) > 1)  # only an image's event is reshaped


def _surrogate_graph(fn):
    from torch.fx.experimental.proxy_tensor import make_fx

    from pyro_vae.infer.capture import _drop_zero_surrogate

    graph = make_fx(fn, pre_dispatch=True)(torch.randn(3, requires_grad=True))
    _drop_zero_surrogate(graph)
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return graph, [str(n.target) for n in graph.graph.nodes if n.op == "call_function"]


def test_the_zero_surrogate_goes_only_where_loss_and_surrogate_are_one_operation():
    a = torch.tensor([0.5, -2.0, 3.0], requires_grad=True)

    def same(t):  # Pyro's form for a reparameterized estimator: both are -t
        surrogate = -t
        return -t.detach() + (surrogate - surrogate.detach())

    graph, ops = _surrogate_graph(same)
    assert ops == ["aten.neg.default"]
    (grad,) = torch.autograd.grad(graph(a).sum(), a)
    assert torch.equal(graph(a), same(a)) and torch.equal(grad, -torch.ones(3))

    def score(t):  # a loss that is not the surrogate's operation keeps its surrogate term
        surrogate = -t
        return -(2 * t.detach()) + (surrogate - surrogate.detach())

    graph, ops = _surrogate_graph(score)
    assert "aten.sub.Tensor" in ops and "aten.detach.default" in ops
    assert torch.equal(graph(a), score(a))


def test_each_batch_shape_and_kl_weight_gets_its_own_graph():
    vae = build_vae((6,), "bernoulli", latent_dim=2, hidden=(8,))
    captured = CapturedLoss(vae, make_estimator("meanfield"))
    x = _data("bernoulli", (6,), 7, 0)
    for batch, beta in [(7, 1.0), (3, 1.0), (7, 0.5), (7, 0.0)]:
        vae.beta = beta
        torch.manual_seed(0)
        a = captured(x[:batch])
        torch.manual_seed(0)
        b = captured.eager(x[:batch])
        assert torch.equal(a, b)
    assert len(captured._graphs) == 4
    vae.beta = 1.0
    with torch.no_grad():  # evaluation gets a graph without autograd
        torch.manual_seed(1)
        a = captured(x)
        torch.manual_seed(1)
        assert torch.equal(a, captured.eager(x))
    assert len(captured._graphs) == 5


def test_dreg_and_python_hooks_run_the_program_eagerly():
    vae = build_vae((6,), "bernoulli", latent_dim=2, hidden=(8,))
    x = _data("bernoulli", (6,), 5, 0)
    step = TrainStep(
        vae, TrainConfig(estimator="dreg", particles=3, device="cpu"), torch.device("cpu")
    )
    step(x, 1)  # DReG's gradient hooks: the verification refuses the graph (see below)
    assert step.loss.mode.startswith("eager: the recorded graph disagrees with the Pyro program")

    captured = CapturedLoss(vae, make_estimator("meanfield"))
    handle = vae.decoder.register_forward_hook(lambda m, i, o: o * 2)
    torch.manual_seed(0)
    a = captured(x)
    assert captured.mode == "graph" and not captured._graphs  # the hooked call ran eagerly
    handle.remove()
    torch.manual_seed(0)
    b = captured(x)
    assert a.item() != pytest.approx(b.item())  # the hook doubled the logits in the first
    assert len(captured._graphs) == 1


def test_a_graph_that_disagrees_with_the_program_is_refused():
    # DReG reweights gradients with autograd hooks: the verification catches that the
    # recorded graph's gradient differs, and the program runs eagerly
    vae = build_vae((6,), "bernoulli", latent_dim=2, hidden=(8,))
    captured = CapturedLoss(vae, DReGELBO(num_particles=4))
    x = _data("bernoulli", (6,), 5, 0)
    torch.manual_seed(0)
    loss = captured(x)
    assert captured.mode.startswith("eager: the recorded graph disagrees with the Pyro program")
    assert "gradient of encoder" in captured.mode
    torch.manual_seed(0)
    assert torch.equal(loss, captured.eager(x))


def test_unknown_capture_mode_lists_the_choices():
    vae = build_vae((6,), "bernoulli", latent_dim=2, hidden=(8,))
    with pytest.raises(ValueError, match=r"valid choices: graph, compile, off"):
        CapturedLoss(vae, make_estimator("elbo"), mode="jit")
    with pytest.raises(ValueError, match="capture"):
        TrainConfig(capture="jit")


def _trained(capture, **train):
    split = Preprocess("dynamic").prepare(load_data("shapes", num_shapes=150, test_size=30))
    pyro.set_rng_seed(3)
    vae = build_vae(split.event_shape, latent_dim=3, hidden=(16,))
    cfg = TrainConfig(epochs=2, batch_size=32, quiet=True, capture=capture, **train)
    result = fit(vae, split.train, split.test, cfg, preprocess=Preprocess("dynamic"))
    return result


@pytest.mark.parametrize("train", [{}, {"warmup_epochs": 1, "beta": 0.5}, {"grad_clip": 1.0}])
def test_training_with_the_graph_is_bit_identical_to_the_pyro_program(train):
    # 120 datapoints in batches of 32: a partial last batch (its own graph) every epoch
    a, b = _trained("graph", **train), _trained("off", **train)
    assert (a.capture, b.capture) == ("graph", "eager: capture is off")
    for (name, p), q in zip(a.vae.named_parameters(), b.vae.parameters()):
        assert torch.equal(p, q), name
    assert [r["train_elbo"] for r in a.metrics] == [r["train_elbo"] for r in b.metrics]
    assert [r["test_elbo"] for r in a.metrics] == [r["test_elbo"] for r in b.metrics]


def test_a_non_finite_step_through_the_graph_is_caught_and_skipped():
    vae = build_vae((6,), "bernoulli", latent_dim=2, hidden=(8,))
    step = TrainStep(vae, TrainConfig(device="cpu"), torch.device("cpu"))
    x = _data("bernoulli", (6,), 5, 0)
    with pyro.validation_enabled(True):
        step(x, 1)
        assert step.loss.mode == "graph" and step.guard.first_bad == -1
        with torch.no_grad():
            vae.decoder.net[0].weight[0, 0] = float("nan")
        before = {k: v.clone() for k, v in vae.state_dict().items()}
        loss = step(x, 2)  # the graph runs: no validation error, a NaN loss
        step(x, 3)
    assert torch.isnan(loss) and step.guard.first_bad == 2
    for k, v in vae.state_dict().items():  # both updates were skipped on the device
        torch.testing.assert_close(v, before[k], rtol=0, atol=0, equal_nan=True)


def test_compiled_graph_matches_the_program():
    vae = build_vae((6,), "bernoulli", latent_dim=2, hidden=(8,))
    captured = CapturedLoss(vae, make_estimator("meanfield"), mode="compile")
    x = _data("bernoulli", (6,), 5, 0)
    graph_loss, graph_grads = _loss_and_grads(captured, vae, x, seed=7)
    eager_loss, eager_grads = _loss_and_grads(captured.eager, vae, x, seed=7)
    assert captured.mode == "compile"
    # the same random draws (aten's generator); fused kernels may round differently
    torch.testing.assert_close(graph_loss, eager_loss, rtol=1e-5, atol=1e-5)
    for g, e in zip(graph_grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_cuda_graph_mode_asks_inductor_for_cuda_graphs_by_names_it_knows():
    # CUDA graphs run only on a GPU; here: the options are ones this torch's inductor has
    from torch._inductor import config

    assert compile_options("compile") == {"fallback_random": True}
    options = compile_options("cudagraph")
    assert options == {"fallback_random": True, "triton.cudagraphs": True}
    for name in options:
        section, _, leaf = name.rpartition(".")
        assert hasattr(getattr(config, section) if section else config, leaf), name


def test_bench_train_prints_a_ratio_line_per_case(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_train.py"),
            "--rounds",
            "2",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--batch-sizes",
            "16",
            "32",
            "--hidden",
            "16",
            "--latent-dim",
            "2",
            "--epoch-epochs",
            "2",
            "--epoch-images",
            "256",
            "--epoch-rounds",
            "1",
            "--epoch-capture",
            "graph",
            "off",
            "--model-rounds",
            "1",
            "--data",
            str(tmp_path / "absent"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    lines = [ln.split() for ln in res.stdout.splitlines() if ln.startswith("ratio ")]
    assert [(ln[1], ln[2], ln[3]) for ln in lines] == [
        ("cpu", f"batch={b}", e) for b in (16, 32) for e in ("meanfield", "elbo", "iwae", "dreg")
    ]
    assert all(0 < float(ln[4]) < 100 for ln in lines)
    epochs = [ln.split()[:4] for ln in res.stdout.splitlines() if ln.startswith("epoch-ratio")]
    assert epochs == [
        [line, "cpu", f"batch={b}", case]
        for b in (16, 32)
        for case in ("meanfield", "meanfield+off")
        for line in ("epoch-ratio", "epoch-ratio-same-prep")
    ]
    models = {tuple(ln.split()[1:4]) for ln in res.stdout.splitlines() if ln.startswith("model-")}
    assert models == {("cpu", f"batch={b}", m) for b in (16, 32) for m in MODELS.names()}
    assert "epoch cpu 256x784 batch=128 meanfield: seconds" in res.stdout
    assert "peak RSS MB per epoch" in res.stdout


def test_programs_a_graph_cannot_hold_run_eagerly_and_leave_state_as_eager_would():
    from pyro import poutine
    from torch import nn

    vae = build_vae((6,), "bernoulli", latent_dim=2, hidden=(8,))
    x = _data("bernoulli", (6,), 5, 0)
    captured = CapturedLoss(vae, make_estimator("meanfield"))
    with poutine.scale(scale=100.0):  # a handler around the call: eager, not the graph
        torch.manual_seed(0)
        a = captured(x)
    torch.manual_seed(0)
    assert torch.allclose(a, 100 * captured.eager(x)) and not captured._graphs

    class ItemELBO(type(make_estimator("meanfield"))):  # reads the loss back to Python
        def differentiable_loss(self, model, guide, *args, **kwargs):
            loss = super().differentiable_loss(model, guide, *args, **kwargs)
            return loss + 0.001 * float(loss.detach())

    captured = CapturedLoss(vae, ItemELBO())
    for seed in range(2):  # a value read back would otherwise be frozen at the first batch
        x = _data("bernoulli", (6,), 5, seed)
        torch.manual_seed(seed)
        a = captured(x)
        torch.manual_seed(seed)
        assert torch.equal(a, captured.eager(x))
    assert captured.mode.startswith("eager: the program could not be recorded")

    bn = build_vae((6,), "bernoulli", latent_dim=2, hidden=(8,))
    bn.encoder.net.insert(1, nn.BatchNorm1d(8))  # running statistics change in place
    captured = CapturedLoss(bn, make_estimator("meanfield"))
    captured(x)
    assert captured.mode.startswith("eager: the program changes its inputs in place")
    assert int(bn.encoder.net[1].num_batches_tracked) == 1  # recording left no trace


def test_a_custom_likelihood_support_is_checked_before_training_with_the_graph():
    import pyro.distributions as dist

    from pyro_vae.models.likelihoods import DataSupportError, Likelihood

    class Poisson(Likelihood):
        def distribution(self, params):
            return dist.Poisson(params.select(-2, 0).exp()).to_event(1)

        def mean(self, params):
            return params.select(-2, 0).exp()

    from pyro_vae.models import VAE
    from pyro_vae.models.networks import make_networks

    lik = Poisson((6,))
    vae = VAE(*make_networks("mlp", (6,), lik.param_shape, 2, (8,), "relu"), lik)
    x = torch.poisson(torch.full((40, 6), 3.0))
    x[33, 2] = 2.5  # one count that is not an integer
    with pytest.raises(DataSupportError, match=r"training datapoint 33 .* support of the Poisson"):
        fit(vae, x, None, TrainConfig(epochs=1, batch_size=8, quiet=True))
    x[33, 2] = 2.0
    assert fit(vae, x, None, TrainConfig(epochs=1, batch_size=8, quiet=True)).capture == "graph"
