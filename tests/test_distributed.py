"""Data-parallel runs (torchrun, gloo on CPU): the sharding of epochs, one DDP step against one
process with twice the batch, a 2-process run that trains, is interrupted on one rank and
resumes bit-identically, stops on a non-finite loss on one rank, survives a rank's death with a
clear error, and a distributed evaluation equal to a single process's."""

import json
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from cli_runs import wait_for
from dist_step import two_steps
from ranks import finish, pyro_vae_ranks, start_ranks, torchrun

from pyro_vae.distributed import World, epoch_seed, rank_seed
from pyro_vae.signals import Interrupted, StopRequest
from pyro_vae.train.checkpoint import safe_load
from pyro_vae.train.state import EpochCursor, Schedule

TESTS = Path(__file__).resolve().parent

# ------------------------------------------------------------------ sharding (one process)


@pytest.mark.parametrize("n, batch, world", [(37, 4, 2), (64, 16, 2), (10, 3, 3), (2, 1, 4)])
def test_the_ranks_batches_together_are_one_process_batch_of_w_times_b(n, batch, world):
    """Step i of W ranks with batch B covers positions [i B W, (i + 1) B W) of the padded
    permutation, as one process with batch B W; every datapoint is trained on each epoch and
    fewer than W are repeated."""
    perm = EpochCursor.start(n, torch.device("cpu"), seed=5, epoch=2).perm
    ranks = [Schedule(n, batch, 1, world_size=world, rank=r) for r in range(world)]
    one = Schedule(ranks[0].datapoints_per_epoch, batch * world, 1)
    padded = perm.repeat(world)[: one.n]
    assert one.steps_per_epoch == ranks[0].steps_per_epoch
    for i in range(one.steps_per_epoch):
        together = torch.stack([s.indices(s.shard_of(perm), i) for s in ranks], 1).flatten()
        assert torch.equal(together, one.indices(padded, i))
    seen = torch.cat([s.shard_of(perm) for s in ranks])
    assert set(seen.tolist()) == set(range(n))
    assert len(seen) - n < world


def test_epoch_permutations_depend_on_the_seed_and_epoch_only():
    """Every rank draws the same permutation, whatever its own random stream."""
    torch.manual_seed(rank_seed(0, 1))
    a = EpochCursor.start(50, torch.device("cpu"), seed=3, epoch=4).perm
    torch.manual_seed(rank_seed(0, 0))
    b = EpochCursor.start(50, torch.device("cpu"), seed=3, epoch=4).perm
    c = EpochCursor.start(50, torch.device("cpu"), seed=3, epoch=5).perm
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sorted(a.tolist()) == list(range(50))
    assert epoch_seed(3, 4) != epoch_seed(4, 4)


def test_rank_0_draws_as_one_process_and_the_other_ranks_draw_apart():
    assert rank_seed(11, 0) == 11
    seeds = {rank_seed(11, r) for r in range(1, 64)}
    assert len(seeds) == 63 and 11 not in seeds
    assert all(0 <= s < 2**32 for s in seeds)  # what numpy (pyro.set_rng_seed) takes


@pytest.mark.parametrize("n, size", [(10, 3), (2, 4), (9, 1)])
def test_blocks_are_contiguous_and_cover_every_datapoint_once(n, size):
    spans = [World(r, size).block(n) for r in range(size)]
    assert spans[0][0] == 0 and spans[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert max(b - a for a, b in spans) - min(b - a for a, b in spans) <= 1


def test_a_repeated_stop_signal_within_the_window_is_the_same_request():
    """torchrun forwards the terminal's Ctrl-C to a worker that got it already: one request.
    Another signal, or the same one later, interrupts at once."""
    stop = StopRequest()
    stop._handle(signal.SIGINT, None)
    stop._handle(signal.SIGINT, None)  # the forwarded copy
    assert stop.signum == signal.SIGINT
    with pytest.raises(Interrupted):
        stop._handle(signal.SIGTERM, None)
    stop._at -= 1.0
    with pytest.raises(Interrupted):
        stop._handle(signal.SIGINT, None)


def test_only_the_process_groups_errors_read_as_a_lost_rank():
    """A backward's error under DDP becomes "lost contact" only when it comes from the process
    group; a real fault of this rank keeps its own message."""
    import torch.distributed as dist

    from pyro_vae.distributed import from_process_group, lost_contact

    gone = RuntimeError(
        "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer"
    )
    assert from_process_group(gone) and from_process_group(dist.DistError("timed out"))
    assert not from_process_group(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not from_process_group(ValueError("Connection"))
    message = str(lost_contact(gone))
    assert "Connection closed by peer" in message and "resume with the same number" in message


# ---------------------------------------------------------------- one DDP step (2 ranks)


@pytest.mark.parametrize(
    "estimator, particles, capture", [("meanfield", 1, "graph"), ("iwae", 3, "graph"),
                                      ("elbo", 1, "off")]
)  # fmt: skip
def test_two_ranks_of_batch_b_update_as_one_process_of_2b(tmp_path, estimator, particles, capture):
    """The gradients DDP averages over two ranks of batch B, and the parameters after two
    Adam steps, equal one process's with batch 2B on the same datapoints and particles."""
    out = tmp_path / "step"
    results = finish(start_ranks(2, [TESTS / "dist_step.py", out, estimator, particles, capture]))
    for rc, _, err in results:
        assert rc == 0, err
    ranks = [torch.load(f"{out}.rank{r}.pt", weights_only=False) for r in range(2)]
    one = two_steps(World(), estimator, particles, capture)
    assert ranks[0]["mode"] == ranks[1]["mode"] == one["mode"]
    assert one["mode"] == (capture if capture != "off" else "eager: capture is off")
    for i, step in enumerate(one["steps"]):
        mean_loss = (ranks[0]["steps"][i]["loss"] + ranks[1]["steps"][i]["loss"]) / 2
        torch.testing.assert_close(mean_loss, step["loss"], rtol=1e-5, atol=1e-6)
        for key in ("grads", "params"):
            for r in range(2):
                for a, b in zip(ranks[r]["steps"][i][key], step[key]):
                    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # one half alone has other gradients: the averaging over the ranks made them equal
    half = two_steps(World(), estimator, particles, capture, half=True)["steps"][0]["grads"]
    assert not all(torch.allclose(a, b) for a, b in zip(half, one["steps"][0]["grads"]))


# ------------------------------------------------------------- whole runs (2 processes)


def _data(tmp_path: Path) -> Path:
    import numpy as np

    path = tmp_path / "flat.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (168, 16), dtype=np.uint8))
    return path


def _args(data: Path, *extra) -> list:
    """``train`` on 133 datapoints: 67 per rank (one repeated), 5 steps of 16 per epoch (the
    last of 3); 35 test datapoints, 18 and 17 per rank."""
    return ["train", "--dataset", data, "--test-size", 35, "--batch-size", 16,
            "--latent-dim", 2, "--hidden", 8, "--quiet", *extra]  # fmt: skip


def test_torchrun_trains_one_run_directory_written_by_rank_0(tmp_path):
    data = _data(tmp_path)
    done = torchrun(2, *_args(data, "--epochs", 2), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1  # rank 0 named it, for both
    run = runs[0]
    assert done.stdout.count("run directory:") == 1
    config = json.loads((run / "config.json").read_text())
    assert config["world_size"] == 2
    ckpt = safe_load(run / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2
    assert ckpt["step"] == 2 * 5  # 133 datapoints, 67 per rank, batch 16
    assert not torch.equal(ckpt["rng_ranks"][0]["torch"], ckpt["rng_ranks"][1]["torch"])


def test_sigterm_on_one_rank_stops_both_at_one_step_and_resume_is_bit_identical(tmp_path):
    data = _data(tmp_path)
    args = _args(data, "--epochs", 6, "--log-every", 1)
    whole = finish(pyro_vae_ranks(2, *args, "--out", tmp_path / "whole"))
    assert [rc for rc, _, _ in whole] == [0, 0], whole[0][2] + whole[1][2]

    run = tmp_path / "cut"
    procs = pyro_vae_ranks(2, *args, "--out", run)
    wait_for(lambda: (run / "metrics.jsonl").is_file() or procs[0].poll() is not None)
    procs[1].send_signal(signal.SIGTERM)  # one rank preempted
    (rc0, _, err0), (rc1, _, err1) = finish(procs)
    assert (rc0, rc1) == (143, 143), err0 + err1
    assert "interrupted by SIGTERM at step" in err0 and err1.strip() == ""
    ckpt = safe_load(run / "checkpoint.pt")
    assert 0 < ckpt["step"] < 30 and len(ckpt["rng_ranks"]) == 2

    resumed = finish(pyro_vae_ranks(2, "train", "--resume", run, "--quiet"))
    assert [rc for rc, _, _ in resumed] == [0, 0], resumed[0][2]
    a, b = safe_load(run / "checkpoint.pt"), safe_load(tmp_path / "whole" / "checkpoint.pt")
    assert a["step"] == b["step"] == 30
    for name, t in b["model"].items():
        assert torch.equal(a["model"][name], t), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    ref = [
        json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["test_elbo"] for r in rows] == [r["test_elbo"] for r in ref]

    one = finish(pyro_vae_ranks(1, "train", "--resume", run, "--epochs", 7))
    assert one[0][0] == 1 and "written by a run of 2 process(es)" in one[0][2]


NAN_ON_RANK_1 = '''
import math

import pyro
import pyro.distributions as dist
import torch.distributed as torch_dist

from pyro_vae.models import LatentModel, MLPDecoder, MLPEncoder, make_likelihood


class NanOnRank1(LatentModel):
    """A VAE whose decoder output turns NaN on rank 1 from its third training batch on."""

    def __init__(self, event_shape, config, beta=1.0):
        super().__init__(event_shape, beta)
        self.likelihood = make_likelihood(config.likelihood, event_shape)
        self.encoder = MLPEncoder(event_shape, config.latent_dim, config.hidden)
        self.decoder = MLPDecoder(config.latent_dim, self.likelihood.param_shape, config.hidden)
        self.batches = 0

    def model(self, x=None, num_samples=None):
        batch = self.batch_size(x, (), num_samples)
        zeros = next(self.parameters()).new_zeros(batch, self.encoder.latent_dim)
        with pyro.plate("data", batch):
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            params = self.decoder(z)
            if x is not None and len(x) == 16 and torch_dist.get_rank() == 1:  # training
                self.batches += 1
                if self.batches >= 3:
                    params = params * math.nan
            pyro.sample("x", self.likelihood.distribution(params), obs=x)

    def guide(self, x, num_samples=None):
        loc, scale = self.encoder(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))


def build(event_shape, config, *, labels=None, beta=1.0):
    return NanOnRank1(event_shape, config, beta)
'''


STOP_ON_RANK_1 = NAN_ON_RANK_1.replace(
    "params = params * math.nan",
    'os.kill(os.getpid(), signal.SIGTERM) if os.environ.get("STOP_AT") == str(self.batches) '
    "else None",
).replace("import math\n", "import math\nimport os\nimport signal\n")


def test_a_stop_mid_epoch_resumes_every_rank_bit_identically(tmp_path):
    """Rank 1 receives SIGTERM during its 7th full batch, step 8 (epoch 2, batch 3 of 5):
    both ranks stop before step 9, one mid-epoch checkpoint holds the epoch's cursor, the sum
    of both ranks' losses and each rank's RNG state, and the resumed run ends as the run never
    stopped."""
    (tmp_path / "stopmodel.py").write_text(STOP_ON_RANK_1)
    data = _data(tmp_path)
    args = _args(data, "--epochs", 4, "--capture", "off", "--model", "stopmodel.py:build")
    whole = finish(pyro_vae_ranks(2, *args, "--out", tmp_path / "whole", cwd=tmp_path))
    assert [rc for rc, _, _ in whole] == [0, 0], whole[0][2]
    run = tmp_path / "cut"
    cut = finish(pyro_vae_ranks(2, *args, "--out", run, cwd=tmp_path, env={"STOP_AT": "7"}))
    assert [rc for rc, _, _ in cut] == [143, 143], cut[0][2] + cut[1][2]
    ckpt = safe_load(run / "checkpoint.pt")
    assert (ckpt["step"], ckpt["epoch"], ckpt["batch"]) == (8, 1, 3)
    assert ckpt["perm"] is not None and len(ckpt["rng_ranks"]) == 2
    resumed = finish(pyro_vae_ranks(2, "train", "--resume", run, "--quiet", cwd=tmp_path))
    assert [rc for rc, _, _ in resumed] == [0, 0], resumed[0][2]
    a, b = safe_load(run / "checkpoint.pt"), safe_load(tmp_path / "whole" / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], t) for k, t in b["model"].items())
    timeless = [
        [{k: v for k, v in r.items() if k != "seconds"} for r in c["metrics"]] for c in (a, b)
    ]
    assert timeless[0] == timeless[1]  # the training ELBO of epoch 2 from the saved loss sum


GUIDE_NAN_ON_RANK_1_TEST_SHARE = NAN_ON_RANK_1.replace(
    "        loc, scale = self.encoder(x)\n",
    "        loc, scale = self.encoder(x)\n"
    "        if len(x) == 17 and torch_dist.get_rank() == 1:  # rank 1's share of the test set\n"
    "            scale = scale * math.nan\n",
)


def test_a_held_out_refusal_on_one_rank_stops_both_at_once_with_its_reason(tmp_path):
    """Pyro's validation refuses rank 1's share of the held-out ELBO only: rank 0 says why for
    both, at once (not after --dist-timeout)."""
    (tmp_path / "testnan.py").write_text(GUIDE_NAN_ON_RANK_1_TEST_SHARE)
    data = _data(tmp_path)
    args = _args(data, "--epochs", 2, "--model", "testnan.py:build", "--dist-timeout", 120,
                 "--out", tmp_path / "run")  # fmt: skip
    start = time.monotonic()
    (rc0, _, err0), (rc1, _, err1) = finish(pyro_vae_ranks(2, *args, cwd=tmp_path))
    assert (rc0, rc1) == (1, 1) and time.monotonic() - start < 60
    assert "the held-out ELBO after step 5 (epoch 1) could not be computed" in err0, err0
    assert "Expected parameter scale" in err0 and err1.strip() == ""


def test_a_non_finite_loss_on_one_rank_stops_both_at_the_same_step(tmp_path):
    (tmp_path / "nanmodel.py").write_text(NAN_ON_RANK_1)
    data = _data(tmp_path)
    args = _args(data, "--epochs", 3, "--capture", "off", "--model", "nanmodel.py:build",
                 "--log-every", 1, "--out", tmp_path / "run")  # fmt: skip
    (rc0, _, err0), (rc1, _, err1) = finish(pyro_vae_ranks(2, *args, cwd=tmp_path))
    assert (rc0, rc1) == (1, 1), err0 + err1
    assert "Traceback" not in err0 + err1
    assert err1.strip() == ""  # rank 0 says it for both
    assert "became non-finite at step 3 (epoch 1): the reconstruction term" in err0, err0
    assert "rank 1's batch" in err0
    assert safe_load(tmp_path / "run" / "checkpoint.pt")["step"] == 0


def test_a_rank_that_dies_makes_the_other_exit_with_one_line(tmp_path):
    data = _data(tmp_path)
    run = tmp_path / "run"
    procs = pyro_vae_ranks(2, *_args(data, "--epochs", 200, "--dist-timeout", 30, "--out", run))
    wait_for(lambda: (run / "metrics.jsonl").is_file() or procs[0].poll() is not None)
    procs[1].kill()
    start = time.monotonic()
    (rc0, _, err0), _ = finish(procs, timeout=120)
    assert rc0 == 1 and time.monotonic() - start < 60
    assert "lost contact with another rank" in err0 and "Traceback" not in err0, err0
    assert len(err0.strip().splitlines()) == 1
    assert safe_load(run / "checkpoint.pt")["step"] >= 5  # the last checkpoint is kept


def test_a_refusal_before_training_is_said_once_by_rank_0(tmp_path):
    """A refusal every rank would make alike (an estimator that does not apply, a missing run
    directory) is rank 0's one line; the others stop without repeating it."""
    data = _data(tmp_path)
    train = finish(pyro_vae_ranks(2, *_args(data, "--model", "two-layer", "--estimator", "stl")))
    assert [rc for rc, _, _ in train] == [1, 1]
    assert "the stl estimator does not apply to this model" in train[0][2]
    assert train[1][2].strip() == "" and len(train[0][2].strip().splitlines()) == 1
    evaluate = finish(pyro_vae_ranks(2, "evaluate", tmp_path / "nowhere"))
    assert [rc for rc, _, _ in evaluate] == [1, 1]
    assert "nowhere is not a run directory" in evaluate[0][2] and evaluate[1][2].strip() == ""


def test_distributed_evaluation_equals_a_single_process(tmp_path):
    data = _data(tmp_path)
    run = tmp_path / "run"
    trained = finish(pyro_vae_ranks(1, *_args(data, "--epochs", 1, "--out", run)))
    assert trained[0][0] == 0, trained[0][2]
    flags = ["--iw-samples", 40, "--elbo-particles", 8, "--quiet", "--batch-size", 5]
    single = finish(pyro_vae_ranks(1, "evaluate", run, *flags))
    assert single[0][0] == 0, single[0][2]
    one = json.loads((run / "summary.json").read_text())
    done = torchrun(2, "evaluate", run, *flags)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("report:") == 1
    two = json.loads((run / "summary.json").read_text())
    for key in ("log_px", "log_px_se", "ess_mean", "ess_min", "elbo", "recon", "kl"):
        assert two[key] == pytest.approx(one[key], rel=1e-5, abs=1e-6), key
    assert two["kl_per_dim"] == pytest.approx(one["kl_per_dim"], rel=1e-5, abs=1e-6)
    assert two["chunk_invariant"] is True


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
