"""Reliability and security: bad inputs and injected faults, each with its observable outcome.

Every test provokes one fault (bad data, a full disk, a NaN, Ctrl-C, ``kill -9``, a corrupt or
malicious checkpoint) and asserts the error a person sees, that nothing was lost or
overwritten, and that training continues from the last checkpoint. Rows of the catalogue that
other modules already test are cited in README.md (Reliability), not repeated here.
"""

import errno
import json
import os
import pathlib
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from cli_runs import (
    ONE_THREAD,
    files,
    flat_args,
    pyro_vae_process,
    run_cli,
    temp_files,
    wait_for,
)

from pyro_vae.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from pyro_vae.data import Preprocess, load_data
from pyro_vae.models import build_vae
from pyro_vae.runs import load_run, run_training
from pyro_vae.train import NonFiniteLossError, TrainingInterrupted, fit
from pyro_vae.train.checkpoint import CheckpointError, safe_load
from pyro_vae.train.rundir import RunDirectoryError

SMALL = dict(latent_dim=2, hidden=(8,))
BIN = Preprocess("dynamic")


def _params(vae) -> dict:
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


def _assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


#: the flags of a tiny run on the embedded shapes (4 steps per epoch)
TINY_RUN = ["--num-shapes", 200, "--test-size", 50, "--batch-size", 50, "--latent-dim", 2,
            "--hidden", 16, "--quiet"]  # fmt: skip


class _Calls:
    """Forward hook counting training-mode calls (evaluation runs in eval mode); from call ``n``
    on it multiplies the outputs by ``factor`` or, with ``action``, calls it once."""

    def __init__(self, n, factor=1.0, action=None):
        self.calls, self.n, self.factor, self.action = 0, n, factor, action

    def __call__(self, module, inputs, output):
        if not module.training:
            return output
        self.calls += 1
        if self.calls == self.n and self.action is not None:
            self.action()
        if self.calls >= self.n and self.factor != 1.0:
            if isinstance(output, tuple):
                return tuple(t * self.factor for t in output)
            return output * self.factor
        return output


# ------------------------------------------------------------------- bad data, bad settings


_BAD_DATA = {
    "nan": r"2 NaN/inf values \(first at index \(1, 3\)\)",
    "grey-bernoulli": r"bernoulli likelihood needs binary.*observed range.*Binarize",
    "conv-on-flat": r"divisible by 4.*--arch mlp",
    "empty": r"empty data, shape \(0, 16\)",
    "batch-too-large": r"batch size 100 is larger than the 64 training datapoints",
    "test-size": r"test_size=80 leaves no training data",
    "unknown-dataset": r"unknown dataset 'mnsit'; valid choices: cifar10, .*mnist, shapes",
    "offline": r"train-images-idx3-ubyte.*--download",
}


@pytest.mark.parametrize("case", list(_BAD_DATA))
def test_cli_refuses_bad_data_before_training(tmp_path, monkeypatch, capsys, flat_data, case):
    monkeypatch.chdir(tmp_path)
    data, extra = flat_data, []
    if case == "nan":
        x = np.random.default_rng(0).random((80, 16), dtype=np.float32)
        x[1, 3], x[7, 0] = np.nan, np.inf
        np.save(data := tmp_path / "nan.npy", x)
    elif case == "grey-bernoulli":
        extra = ["--binarize", "none"]
    elif case == "conv-on-flat":
        extra = ["--arch", "conv"]
    elif case == "empty":
        np.save(data := tmp_path / "empty.npy", np.zeros((0, 16), np.uint8))
    elif case == "batch-too-large":
        extra = ["--batch-size", 100]
    elif case == "test-size":
        extra = ["--test-size", 80]
    elif case == "unknown-dataset":
        data = "mnsit"
    elif case == "offline":
        data, extra = "mnist", ["--data-dir", tmp_path / "nothing-here"]
    rc, err = run_cli(flat_args(data, *extra), capsys)
    assert rc == 1
    assert err.startswith("pyro-vae train: error: ")
    assert len(err.strip().splitlines()) == 1 and re.search(_BAD_DATA[case], err), err
    assert not (tmp_path / "runs").exists()  # no run directory: nothing started


# ------------------------------------------------------------------ run directory, disk full


def test_unwritable_run_directory_fails_before_training(tmp_path, capsys, flat_data):
    (tmp_path / "afile").write_text("a file where a folder should be")
    out = tmp_path / "afile" / "run"  # mkdir fails even for root
    x = torch.rand(64, 4).round()
    vae = build_vae((4,), **SMALL)
    calls = _Calls(1)
    vae.encoder.register_forward_hook(calls)
    with pytest.raises(RunDirectoryError, match="is not writable.*nothing was trained"):
        fit(vae, x, None, TrainConfig(epochs=1, batch_size=16, quiet=True), out=out)
    assert calls.calls == 0  # not a single step
    rc, err = run_cli(flat_args(flat_data, "--out", out), capsys)
    assert rc == 1 and "is not writable" in err


@pytest.mark.parametrize("fail_at_epoch", [0, 2])
def test_disk_full_stops_cleanly_keeping_the_last_checkpoint(tmp_path, monkeypatch, fail_at_epoch):
    x = torch.rand(64, 4).round()
    cfg = TrainConfig(epochs=3, batch_size=16, quiet=True)
    torch.manual_seed(0)
    straight = fit(build_vae((4,), **SMALL), x, None, cfg)
    real_save, before = torch.save, {}

    def full_disk(obj, f, *args, **kwargs):
        if obj["epoch"] == fail_at_epoch:
            before.update(
                {
                    k: v
                    for k, v in files(tmp_path / "run").items()
                    if k not in temp_files(tmp_path / "run")
                }
            )
            f.write(b"\0" * 100)  # a part of the file made it to the disk
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_disk)
    torch.manual_seed(0)
    vae = build_vae((4,), **SMALL)
    calls = _Calls(1)
    vae.encoder.register_forward_hook(calls)
    with pytest.raises(RunDirectoryError, match="No space left on device") as info:
        fit(vae, x, None, cfg, out=tmp_path / "run")
    assert info.value.errno == errno.ENOSPC
    if fail_at_epoch == 0:
        assert "before training; nothing was trained" in str(info.value)
        assert calls.calls == 0
        assert not (tmp_path / "run").exists()  # the folder it made, and nothing in it, is gone
        return
    assert temp_files(tmp_path / "run") == []
    assert files(tmp_path / "run") == before  # the previous checkpoint untouched
    assert "from step 4 is kept" in str(info.value) and "--resume" in str(info.value)
    assert safe_load(tmp_path / "run" / "checkpoint.pt")["step"] == 4
    monkeypatch.undo()  # room again: resume finishes as if nothing happened
    torch.manual_seed(99)
    resumed = fit(build_vae((4,), **SMALL), x, None, cfg, out=tmp_path / "run", resume=True)
    _assert_same_params(_params(straight.vae), _params(resumed.vae))
    assert [r["train_elbo"] for r in resumed.metrics] == [r["train_elbo"] for r in straight.metrics]


def test_a_new_run_does_not_overwrite_an_existing_one(capsys, finished_run, flat_data):
    before = files(finished_run)
    rc, err = run_cli(flat_args(flat_data, "--out", finished_run), capsys)
    assert rc == 1 and "already holds a run" in err and f"--resume {finished_run}" in err
    assert files(finished_run) == before


# ---------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint_is_refused_and_nothing_is_overwritten(capsys, finished_run, damage):
    path = finished_run / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": os.urandom(len(data)), "empty": b""}[
            damage
        ]
    )
    before = files(finished_run)
    with pytest.raises(CheckpointError, match="nothing was overwritten"):
        safe_load(path)
    rc, err = run_cli(["train", "--resume", finished_run], capsys)
    assert rc == 1 and str(path) in err
    assert "truncated or corrupt" in err or "not a weights-only checkpoint" in err
    assert files(finished_run) == before


def test_checkpoint_of_another_configuration_lists_the_mismatch(capsys, finished_run):
    before = files(finished_run)
    rc, err = run_cli(
        ["train", "--resume", finished_run, "--lr", "0.002", "--batch-size", "8"], capsys
    )
    assert rc == 1
    assert "train.batch_size: checkpoint 16, now 8" in err
    assert "train.lr: checkpoint 0.001, now 0.002" in err
    assert files(finished_run) == before
    # a checkpoint whose recorded configuration disagrees with config.json
    state = safe_load(finished_run / "best.pt")
    state["config"]["model"]["latent_dim"] = 3
    torch.save(state, finished_run / "best.pt")
    with pytest.raises(CheckpointError, match="model.latent_dim: checkpoint 3, now 2"):
        load_run(finished_run)
    # parameters of another model under the right configuration
    state["config"]["model"]["latent_dim"] = 2
    state["model"] = build_vae((16,), latent_dim=3, hidden=(8,)).state_dict()
    torch.save(state, finished_run / "best.pt")
    with pytest.raises(CheckpointError, match="parameters of another model.*size mismatch"):
        load_run(finished_run)


class _Payload:
    """What a malicious checkpoint carries: unpickling it calls ``Path.touch(marker)``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


@pytest.mark.parametrize("container", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused_and_never_run(tmp_path, capsys, finished_run, container):
    marker = tmp_path / "PWNED"
    path = finished_run / "checkpoint.pt"
    payload = {
        "model": _Payload(marker),
        "optimizer": {},
        "rng": {},
        "epoch": 0,
        "step": 0,
        "config": {},
    }
    if container == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    # the payload is live: an unsafe load would run it
    if container == "pickle":
        pickle.loads(path.read_bytes())
    else:
        shutil.copy(path, tmp_path / "unsafe.pt")
        torch.load(tmp_path / "unsafe.pt", weights_only=False)
    assert marker.exists()
    marker.unlink()

    with pytest.raises(CheckpointError, match="not a weights-only.*nothing in it was run"):
        safe_load(path)
    with pytest.raises(CheckpointError):
        load_run(finished_run, "checkpoint")
    rc, err = run_cli(["train", "--resume", finished_run], capsys)
    assert rc == 1 and "refused" in err
    assert not marker.exists()


# ------------------------------------------------------------------------- non-finite loss


@pytest.mark.parametrize(
    "network,factor,likelihood,term",
    [
        ("decoder", float("nan"), "bernoulli", "reconstruction"),  # Pyro validation catches it
        ("decoder", 1e30, "normal", "reconstruction"),  # finite parameters, infinite log p(x|z)
        ("encoder", float("nan"), "bernoulli", "KL"),  # Pyro validation catches it
        ("encoder", 1e30, "bernoulli", "KL"),  # |z| ~ 1e30: log p(z) = -inf
    ],
)
def test_non_finite_loss_names_the_step_and_the_term(tmp_path, network, factor, likelihood, term):
    validation = factor != factor  # NaN: Pyro's argument check refuses it before any loss
    x = torch.rand(64, 4)
    if likelihood == "bernoulli":
        x = x.round()
    vae = build_vae((4,), likelihood, **SMALL)
    # 4 steps per epoch; the fault starts at step 6, the flag is read at the epoch's end
    getattr(vae, network).register_forward_hook(_Calls(6, factor))
    cfg = TrainConfig(epochs=3, batch_size=16, quiet=True, log_every=100)
    with pytest.raises(NonFiniteLossError) as info:
        fit(vae, x, None, cfg, out=tmp_path)
    message = str(info.value)
    assert info.value.step == 6 and info.value.term == term
    what = (
        "Pyro's validation refused a distribution parameter"
        if validation
        else "the training loss or its gradient became non-finite"
    )
    assert message.startswith(f"{what} at step 6 (epoch 2)")
    if validation:
        assert "is invalid (Expected parameter" in message and "tensor(" not in message
    assert f"the {term} term" in message and "from step 4 is kept" in message
    kept = safe_load(tmp_path / "checkpoint.pt")
    assert kept["step"] == 4 and all(torch.isfinite(v).all() for v in kept["model"].values())
    # the bad steps were skipped on the device: the model is still the last good one
    assert all(torch.isfinite(p).all() for p in vae.parameters())


def test_cli_non_finite_loss_exits_non_zero_with_the_message_on_stderr(
    tmp_path, monkeypatch, capsys, flat_data
):
    import pyro_vae.models.vae as vae_module

    def faulty(*args, **kwargs):
        vae = build_vae(*args, **kwargs)
        vae.decoder.register_forward_hook(_Calls(3, float("nan")))
        return vae

    monkeypatch.setattr(vae_module, "build_vae", faulty)
    rc, err = run_cli(flat_args(flat_data, "--epochs", 2, "--out", tmp_path / "run"), capsys)
    assert rc == 1
    assert "refused a distribution parameter at step 3 (epoch 1): the reconstruction term" in err
    assert "no checkpoint of trained parameters was written yet" in err


# --------------------------------------------------------------------------------- Ctrl-C


def test_sigint_saves_mid_epoch_and_resume_is_bit_identical(tmp_path):
    split = BIN.prepare(load_data("shapes", num_shapes=256, test_size=64))
    cfg = TrainConfig(epochs=3, batch_size=64, quiet=True, log_every=2)  # 4 steps per epoch

    def run(**kwargs):
        pyro.set_rng_seed(0)
        vae = build_vae(split.event_shape, **SMALL)
        return vae, lambda: fit(vae, split.train, split.test, cfg, preprocess=BIN, **kwargs)

    vae, go = run()
    straight = go()
    vae, go = run(out=tmp_path)
    vae.encoder.register_forward_hook(_Calls(6, action=lambda: signal.raise_signal(signal.SIGINT)))
    with pytest.raises(TrainingInterrupted, match=f"at step 6; resume with .*--resume {tmp_path}"):
        go()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    state = safe_load(tmp_path / "checkpoint.pt")
    assert (state["epoch"], state["step"], state["batch"]) == (1, 6, 2)  # mid-epoch 2
    assert state["perm"].shape == (256,) and len(state["metrics"]) == 1
    torch.manual_seed(1234)  # whatever happens in between must not matter
    vae, go = run(out=tmp_path, resume=True)
    resumed = go()
    _assert_same_params(_params(straight.vae), _params(resumed.vae))
    for key in ("train_elbo", "test_elbo", "step"):
        assert [r[key] for r in resumed.metrics] == [r[key] for r in straight.metrics]


def test_sigint_to_the_cli_saves_exits_130_and_resume_continues(tmp_path):
    run = tmp_path / "run"
    args = TINY_RUN
    proc = pyro_vae_process("train", *args, "--epochs", 10_000, "--out", run)
    wait_for(lambda: (run / "metrics.jsonl").is_file() or proc.poll() is not None)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    state = safe_load(run / "checkpoint.pt")
    resume = f"resume with pyro-vae train --resume {run}"
    assert err.strip() == f"interrupted by Ctrl-C (SIGINT) at step {state['step']}; {resume}"
    assert state["step"] > 0
    epochs = state["epoch"] + 2
    proc = pyro_vae_process("train", "--resume", run, "--epochs", epochs)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    # the same as a run never interrupted, bit for bit
    cfg = RunConfig(
        model=ModelConfig(latent_dim=2, hidden=(16,)),
        data=DataConfig(num_shapes=200, test_size=50),
        train=TrainConfig(epochs=epochs, batch_size=50, quiet=True),
    )
    straight = run_training(cfg, out=None)
    resumed, _ = load_run(run, "checkpoint")
    _assert_same_params(_params(straight.vae), _params(resumed))
    assert [r["test_elbo"] for r in rows] == [r["test_elbo"] for r in straight.metrics]


# ---------------------------------------------------------------------------------- kill -9

_ZYGOTE = textwrap.dedent(
    """
    # Imports pyro-vae (and what a run imports on first use) once, then forks one
    # `pyro-vae train` per request, so that many processes can be started and killed without
    # paying for the imports each time.
    import json, os, sys, time
    import torch
    import torch._dynamo  # imported by the first torch optimizer
    import torchvision.utils  # imported by the first picture
    from pyro_vae.apps import cli

    for line in sys.stdin:
        request = json.loads(line)
        if "wait" in request:
            _, status = os.waitpid(request["wait"], 0)
            print(os.waitstatus_to_exitcode(status), flush=True)
            continue
        pid = os.fork()
        if pid == 0:
            log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(log, 1)
            os.dup2(log, 2)
            if request.get("slow_writes"):  # every checkpoint write takes this long
                save = torch.save
                def slow_save(obj, f, *args, **kwargs):
                    save(obj, f, *args, **kwargs)
                    f.flush()
                    time.sleep(request["slow_writes"])
                torch.save = slow_save
            code = 1
            try:
                code = cli.main(request["argv"])
            finally:
                os._exit(code)
        print(pid, flush=True)
    """
)


class _Zygote:
    """Test side of the zygote: start, wait for; and on close, kill what is still running."""

    def __init__(self, folder: Path):
        self.folder, self.count, self.live = folder, 0, set()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=ONE_THREAD,
        )

    def _ask(self, request: dict) -> int:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, "the zygote died"
        return int(answer)

    def start(self, *argv, slow_writes=0.0) -> int:
        self.count += 1
        log = str(self.folder / f"child-{self.count}.log")
        pid = self._ask({"argv": [str(a) for a in argv], "log": log, "slow_writes": slow_writes})
        self.live.add(pid)
        return pid

    def wait(self, pid: int) -> int:
        status = self._ask({"wait": pid})
        self.live.discard(pid)
        return status

    def close(self):
        for pid in self.live:  # only after a failed assertion
            os.kill(pid, signal.SIGKILL)
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.proc.stdout.close()


def test_sigkill_at_random_moments_never_loses_a_checkpoint(tmp_path):
    """Fault injection: ~20 `kill -9` of a training process, one of them mid-write; after each,
    `checkpoint.pt` loads with weights_only and no progress is lost; the run that finally
    completes equals one never killed, bit for bit."""
    run, straight = tmp_path / "run", tmp_path / "straight"
    args = TINY_RUN
    ckpt = run / "checkpoint.pt"
    rng = random.Random(0)
    zygote = _Zygote(tmp_path)
    try:
        pid = zygote.start("train", *args, "--epochs", 10**6, "--out", run)
        wait_for(ckpt.is_file)  # the step-0 checkpoint
        os.kill(pid, signal.SIGKILL)
        assert zygote.wait(pid) == -signal.SIGKILL
        last, progressed = safe_load(ckpt)["step"], 0

        # one kill in the middle of a checkpoint write, for certain
        pid = zygote.start("train", "--resume", run, slow_writes=0.5)
        cut = lambda: list(run.glob(".*.pt.*.tmp"))  # noqa: E731 (checkpoint.pt or best.pt)
        wait_for(cut)
        os.kill(pid, signal.SIGKILL)
        assert zygote.wait(pid) == -signal.SIGKILL
        assert cut()  # the write was cut
        last = safe_load(ckpt)["step"]

        # how long a resume takes to write its first epoch, on this machine as loaded as it is
        written = ckpt.stat().st_mtime_ns
        start, pid = time.monotonic(), zygote.start("train", "--resume", run)
        wait_for(lambda: ckpt.stat().st_mtime_ns != written)
        first_epoch = time.monotonic() - start
        os.kill(pid, signal.SIGKILL)
        assert zygote.wait(pid) == -signal.SIGKILL
        last = safe_load(ckpt)["step"]

        for _ in range(18):  # kills from the start to half an epoch past the first
            pid = zygote.start("train", "--resume", run)
            time.sleep(rng.uniform(0.0, 1.5 * first_epoch))
            os.kill(pid, signal.SIGKILL)
            assert zygote.wait(pid) == -signal.SIGKILL
            state = safe_load(ckpt)  # weights_only; raises if torn
            assert state["step"] >= last  # nothing lost
            assert state["step"] == state["epoch"] * 4
            progressed += state["step"] > last
            last = state["step"]
        assert progressed >= 3

        epochs = safe_load(ckpt)["epoch"] + 2
        pid = zygote.start("train", "--resume", run, "--epochs", epochs)
        assert zygote.wait(pid) == 0, (tmp_path / f"child-{zygote.count}.log").read_text()
        pid = zygote.start("train", *args, "--epochs", epochs, "--out", straight)
        assert zygote.wait(pid) == 0
    finally:
        zygote.close()
    assert temp_files(run) == []  # the cut write's leftovers were cleaned on resume
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, epochs + 1))
    done, reference = safe_load(ckpt), safe_load(straight / "checkpoint.pt")
    assert done["step"] == epochs * 4
    _assert_same_params(done["model"], reference["model"])
    assert [r["test_elbo"] for r in rows] == [r["test_elbo"] for r in reference["metrics"]]
