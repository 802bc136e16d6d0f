"""The faults a hostile trial found (README, Reliability): each case with the one line a person
sees, the exit status, and proof that nothing was lost or overwritten.

Grouped as the trial reported them: data loss (run folders, the lock, non-finite state),
preemption and signals, crashes with no message (memory, damaged checkpoints), and wrong
answers or tracebacks (the other commands, data identity, strict settings, messages).
"""

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
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
from matplotlib.figure import Figure
from torch.optim.optimizer import register_optimizer_step_post_hook

from pyro_vae import runs
from pyro_vae.apps import cli
from pyro_vae.config import RunConfig, TrainConfig, check_flat, from_flat
from pyro_vae.data.arrays import DataFormatError, orient
from pyro_vae.eval.memory import Allocations
from pyro_vae.eval.plots import save_grid
from pyro_vae.files import save_figure
from pyro_vae.infer import make_estimator
from pyro_vae.models import build_vae
from pyro_vae.train import NonFiniteLossError, fit
from pyro_vae.train.checkpoint import safe_load
from pyro_vae.train.checks import check_step_memory, step_memory
from pyro_vae.train.rundir import RunLock
from pyro_vae.train.step import DivergenceWatch
from pyro_vae.validation import shortest


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def _params_finite(path: Path) -> bool:
    state = safe_load(path)
    tensors = [*state["model"].values()]
    tensors += [t for slot in state["optimizer"]["state"].values() for t in slot.values()]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


# ---------------------------------------------------------------------- data loss: folders


def test_a_new_run_refuses_a_folder_holding_a_run_without_checkpoint(
    capsys, finished_run, flat_data
):
    (finished_run / "checkpoint.pt").unlink()  # deleted to save space; best.pt kept
    before = files(finished_run)
    rc, err = run_cli(flat_args(flat_data, "--out", finished_run), capsys)
    assert rc == 1 and "is not empty" in _one_line(err) and "best.pt" in err
    assert files(finished_run) == before


def test_a_new_run_in_the_current_folder_keeps_the_users_files(
    tmp_path, monkeypatch, capsys, flat_data
):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text('{"mine": true}')
    (tmp_path / "metrics.csv").write_text("a,b\n1,2\n")
    before = files(tmp_path)
    rc, err = run_cli(flat_args(flat_data, "--out", "."), capsys)
    assert rc == 1 and "is not empty (it holds config.json, metrics.csv)" in _one_line(err)
    assert files(tmp_path) == before


def test_a_run_killed_in_its_first_checkpoint_write_resumes_from_step_0(
    tmp_path, capsys, flat_data
):
    """kill -9 during the first checkpoint write leaves config.json and a temporary file: a new
    run there is refused with how to resume, every command removes the temporary file, and
    --resume trains from step 0 to the same parameters as a run never killed."""
    run, straight = tmp_path / "run", tmp_path / "straight"
    assert run_cli(flat_args(flat_data, "--epochs", 0, "--out", run), capsys)[0] == 0
    for path in run.iterdir():  # what the kill leaves: config.json, the cut write
        if path.name not in ("config.json", ".lock"):
            path.unlink()
    (run / ".checkpoint.pt.x1y2.tmp").write_bytes(b"\x80\x02partial")
    rc, err = run_cli(flat_args(flat_data, "--out", run), capsys)
    assert rc == 1 and "stopped before its first checkpoint" in _one_line(err)
    assert f"pyro-vae train --resume {run}" in err
    assert temp_files(run) == []  # that command held the folder: it removed the leftover
    assert run_cli(["train", "--resume", run, "--epochs", 2], capsys)[0] == 0
    assert run_cli(flat_args(flat_data, "--epochs", 2, "--out", straight), capsys)[0] == 0
    done, reference = safe_load(run / "checkpoint.pt"), safe_load(straight / "checkpoint.pt")
    assert done["step"] == reference["step"] == 8
    for key in reference["model"]:
        assert torch.equal(done["model"][key], reference["model"][key]), key


def test_evaluate_and_sample_remove_temporary_files_of_a_killed_write(capsys, finished_run):
    for command in (["evaluate", finished_run, "--iw-samples", 2, "--elbo-particles", 1,
                     "--quiet"], ["sample", finished_run, "--num", 4])[::-1]:  # fmt: skip
        (finished_run / ".best.pt.k9.tmp").write_bytes(b"partial")
        assert run_cli(command, capsys)[0] == 0
        assert temp_files(finished_run) == []


# ------------------------------------------------------------------ data loss: the lock


def test_a_second_process_cannot_claim_a_run_folder_in_use(tmp_path, capsys, flat_data):
    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):  # a live run holds the folder
        rc, err = run_cli(flat_args(flat_data, "--out", run), capsys)
        assert rc == 1 and f"{run} is in use by another pyro-vae process" in _one_line(err)
        assert f"pid {os.getpid()}" in err
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing was written
    assert run_cli(flat_args(flat_data, "--out", run, "--epochs", 1), capsys)[0] == 0
    with RunLock(run):
        rc, err = run_cli(["train", "--resume", run, "--epochs", 2], capsys)
        assert rc == 1 and "in use by another pyro-vae process" in err
    assert safe_load(run / "checkpoint.pt")["epoch"] == 1


def test_the_lock_of_a_killed_process_is_stale_at_once(tmp_path, capsys, flat_data):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, time
            from pyro_vae.train.rundir import RunLock
            lock = RunLock({str(run)!r}).acquire()
            print("held", flush=True)
            time.sleep(600)
        """)],
        stdout=subprocess.PIPE, text=True, env=ONE_THREAD,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert run_cli(flat_args(flat_data, "--out", run), capsys)[0] == 1
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert run_cli(flat_args(flat_data, "--out", run, "--epochs", 1), capsys)[0] == 0


# --------------------------------------------------------- data loss: non-finite state


@pytest.fixture
def poison_update():
    """After the optimizer update of step ``at``, one parameter is infinite: an update that
    overflowed, with a finite loss and finite gradients before it."""
    calls = {"n": 0, "at": None}

    def hook(optimizer, args, kwargs):
        calls["n"] += 1
        if calls["n"] == calls["at"]:
            with torch.no_grad():
                optimizer.param_groups[0]["params"][0].view(-1)[0] = math.inf

    handle = register_optimizer_step_post_hook(hook)
    yield calls
    handle.remove()


@pytest.mark.parametrize("test_size", [0, 16])
def test_a_non_finite_update_never_reaches_a_checkpoint(tmp_path, poison_update, test_size):
    """--lr inf used to save non-finite parameters as the kept checkpoint.pt and best.pt."""
    x = torch.randint(0, 2, (80 - test_size, 16)).float()
    test = torch.randint(0, 2, (test_size, 16)).float() if test_size else None
    cfg = TrainConfig(epochs=3, batch_size=64, quiet=True)  # one or two steps per epoch
    steps_per_epoch = math.ceil(len(x) / 64)
    poison_update["at"] = 2 * steps_per_epoch  # the last step of epoch 2
    with pytest.raises(NonFiniteLossError, match="became non-finite in an update") as info:
        fit(build_vae((16,), latent_dim=2, hidden=(8,)), x, test, cfg, out=tmp_path / "run")
    assert info.value.term == "update" and "encoder" in str(info.value)
    assert f"from step {steps_per_epoch} is kept" in str(info.value)
    for name in ("checkpoint.pt", "best.pt"):
        state = safe_load(tmp_path / "run" / name)
        assert state["step"] == steps_per_epoch and _params_finite(tmp_path / "run" / name)


def test_an_update_that_breaks_the_held_out_evaluation_names_the_step(tmp_path, capsys, flat_data):
    """With a test set, Pyro's validation error escaped from the test evaluation as 106 lines
    of tensor dump with no step named."""
    run = tmp_path / "run"
    rc, err = run_cli(flat_args(flat_data, "--batch-size", 64, "--lr", 1e30, "--out", run),
                      capsys)  # fmt: skip
    line = _one_line(err)
    assert rc == 1 and "the held-out ELBO after step 1 (epoch 1) could not be computed" in line
    assert "tensor(" not in line
    assert safe_load(run / "checkpoint.pt")["step"] == 0 and not (run / "best.pt").exists()


def test_a_diverged_run_stops_and_keeps_no_diverged_checkpoint(tmp_path, capsys, flat_data):
    """--lr 1e6 with Bernoulli exited 0 with a test ELBO of -2.4e27 kept as best.pt."""
    run = tmp_path / "run"
    rc, err = run_cli(flat_args(flat_data, "--lr", 1e6, "--epochs", 3, "--out", run), capsys)
    line = _one_line(err)
    assert rc == 1 and re.search(r"the run diverged at step \d+ \(epoch 1\)", line), line
    assert "--divergence-factor" in line
    assert safe_load(run / "checkpoint.pt")["step"] == 0 and not (run / "best.pt").exists()


def test_divergence_is_a_rise_above_the_best_by_the_factor():
    watch = DivergenceWatch(factor=1000.0)
    assert not watch.diverged(120.0)  # the baseline
    assert not watch.diverged(90.0)  # improved: best 90
    assert not watch.diverged(90.0 + 1000 * 90)  # exactly the margin: not yet
    assert watch.diverged(90.0 + 1000 * 90 + 1)
    small = DivergenceWatch(factor=10.0, best=-0.5)  # |best| < 1: the margin is 10 x 1
    assert not small.diverged(9.5) and small.diverged(9.6)
    assert not DivergenceWatch(factor=0.0, best=1.0).diverged(1e30)  # 0: never


# ------------------------------------------------------------------ preemption, signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_checkpoint_between_steps_and_exit_128_plus_signal(tmp_path, sig):
    run = tmp_path / "run"
    proc = pyro_vae_process("train", "--num-shapes", 200, "--test-size", 50, "--batch-size",
                            50, "--latent-dim", 2, "--hidden", 16, "--quiet", "--epochs",
                            10_000, "--out", run)  # fmt: skip
    wait_for(lambda: (run / "metrics.jsonl").is_file() or proc.poll() is not None)
    time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    state = safe_load(run / "checkpoint.pt")
    name = signal.Signals(sig).name
    assert err.strip() == (
        f"interrupted by {name} at step {state['step']}; resume with pyro-vae train --resume {run}"
    )
    assert state["step"] >= 4 and _params_finite(run / "checkpoint.pt")
    proc = pyro_vae_process("train", "--resume", run, "--epochs", state["epoch"] + 1)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert safe_load(run / "checkpoint.pt")["epoch"] == state["epoch"] + 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_signal_during_the_imports_prints_one_line(tmp_path, sig):
    proc = pyro_vae_process("train", "--out", tmp_path / "run", cwd=tmp_path)
    time.sleep(0.3)  # importing torch takes seconds
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    name = signal.Signals(sig).name
    assert re.fullmatch(rf"pyro-vae( train)?: interrupted by (Ctrl-C \()?{name}\)?; .*nothing "
                        rf"was written", _one_line(err)), err  # fmt: skip
    assert not (tmp_path / "run").exists()


def test_ctrl_c_while_loading_data_claims_no_checkpoint(tmp_path, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "load_data", interrupted)
    rc, err = run_cli(["train", "--out", tmp_path / "run"], capsys)
    assert rc == 130
    assert _one_line(err) == (
        "pyro-vae train: interrupted by Ctrl-C (SIGINT); training had not started; nothing was "
        "written"
    )
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------ crashes with no message: memory


def test_the_step_memory_estimate_is_linear_in_datapoints_times_particles():
    """Measured on 2 datapoints with 1 and 2 particles, the estimate of a step of 8 datapoints
    with 4 particles is the allocation count of that step (the model is linear in B x K)."""
    model = build_vae((16,), latent_dim=3, hidden=(8,))
    cfg = TrainConfig(estimator="iwae", particles=4)
    x = torch.randint(0, 2, (8, 16)).float()
    memory = step_memory(model, cfg, x[:2])
    assert memory.per_pair > 0 and memory.per_datapoint > 0
    with Allocations() as allocated:
        est = make_estimator("iwae", 4)
        est.differentiable_loss(model.model, model.guide, x).backward()
    assert memory.per_pair > 0
    assert memory.of(8, 4) == pytest.approx(allocated.bytes, rel=0.05)


def test_a_step_that_cannot_fit_is_refused_with_the_largest_setting_that_fits(capsys, flat_data):
    """--particles 10000 --batch-size 500 grew to 24 GB and was killed (rc 137)."""
    rc, err = run_cli(flat_args(flat_data, "--estimator", "iwae", "--particles", 10_000,
                                "--memory-limit-mb", 20), capsys)  # fmt: skip
    line = _one_line(err)
    assert rc == 1 and "more than --memory-limit-mb 20" in line
    batch = int(re.search(r"What fits: --batch-size (\d+) with --particles 10000", line)[1])
    particles = int(re.search(r"or --particles (\d+) with --batch-size 16", line)[1])
    memory = step_memory(build_vae((16,), latent_dim=2, hidden=(8,)),
                         TrainConfig(estimator="iwae"), torch.zeros(2, 16))  # fmt: skip
    limit = 20 * 2**20
    assert memory.of(batch, 10_000) <= limit < memory.of(batch + 1, 10_000)
    assert memory.of(16, particles) <= limit < memory.of(16, particles + 1)
    assert f"estimated to need {memory.of(16, 10_000) / 2**30:.2f} GB" in line
    assert run_cli(flat_args(flat_data, "--estimator", "iwae", "--particles", 10_000,
                             "--memory-limit-mb", 0, "--epochs", 0), capsys)[0] == 0  # fmt: skip


def test_the_default_memory_limit_is_the_memory_available():
    memory = step_memory(build_vae((16,), latent_dim=2, hidden=(8,)), TrainConfig(),
                         torch.zeros(2, 16))  # fmt: skip
    huge = TrainConfig(batch_size=2**40 // max(memory.per_pair, 1))  # a terabyte
    with pytest.raises(ValueError, match=r"more than 90% of the [\d.]+ GB available on cpu"):
        check_step_memory(memory, huge, torch.device("cpu"))
    check_step_memory(memory, TrainConfig(), torch.device("cpu"))  # a small step fits


# ------------------------------------------------- crashes with no message: damaged checkpoints


def _damage(state: dict, case: str) -> None:
    adam = state["optimizer"]["state"][0]
    if case == "adam-shape":  # segfaulted in the fused Adam step (rc 139)
        adam["exp_avg"] = adam["exp_avg"][:1]
    elif case == "adam-dtype":
        adam["exp_avg_sq"] = adam["exp_avg_sq"].double()
    elif case == "int64-parameter":  # was cast silently
        key = next(iter(state["model"]))
        state["model"][key] = state["model"][key].long()
    elif case == "metrics-string":  # rewrote metrics.jsonl to "x" before failing
        state["metrics"] = "x"
    elif case == "metrics-rows":
        state["metrics"] = state["metrics"][:1]
    elif case == "epoch-string":
        state["epoch"] = "2"
    elif case == "step-range":
        state["step"] = -3
    elif case == "rng-torch":
        state["rng"]["torch"] = state["rng"]["torch"][:10]
    elif case == "rng-numpy":
        state["rng"]["numpy"]["pos"] = 10_000
    elif case == "optimizer-index":
        state["optimizer"]["state"][99] = state["optimizer"]["state"].pop(0)


@pytest.mark.parametrize(
    "case",
    ["adam-shape", "adam-dtype", "int64-parameter", "metrics-string", "metrics-rows",
     "epoch-string", "step-range", "rng-torch", "rng-numpy", "optimizer-index"],
)  # fmt: skip
def test_a_damaged_checkpoint_is_refused_before_anything_changes(capsys, finished_run, case):
    path = finished_run / "checkpoint.pt"
    state = safe_load(path)
    _damage(state, case)
    torch.save(state, path)
    before = files(finished_run)
    rc, err = run_cli(["train", "--resume", finished_run, "--epochs", 3], capsys)
    line = _one_line(err)
    assert rc == 1 and f"{path} is damaged or was not written by pyro-vae" in line, line
    assert "nothing in the run directory was changed" in line
    assert files(finished_run) == before


# ------------------------------------------------------------------ the other commands


@pytest.mark.parametrize(
    "case", ["missing-folder", "no-best", "corrupt-best", "other-configuration", "num-0"]
)
def test_evaluate_and_sample_fail_with_one_line(tmp_path, capsys, finished_run, case):
    run, status, pattern = finished_run, 1, ""
    if case == "missing-folder":
        run, pattern = tmp_path / "nowhere", "is not a run directory: it has no config.json"
    elif case == "no-best":  # an interrupted run before its first epoch ended
        (run / "best.pt").unlink()
        pattern = "has no best.pt.*--which checkpoint reads checkpoint.pt"
    elif case == "corrupt-best":
        (run / "best.pt").write_bytes(b"garbage")
        pattern = "best.pt (is truncated or corrupt|was refused: it is not a weights-only)"
    elif case == "other-configuration":
        config = json.loads((run / "config.json").read_text())
        config["model"]["latent_dim"] = 3
        (run / "config.json").write_text(json.dumps(config))
        pattern = "model.latent_dim: checkpoint 2, now 3"
    for command in ("evaluate", "sample"):
        extra = ["--num", 0] if case == "num-0" and command == "sample" else []
        if case == "num-0" and command == "evaluate":
            extra, want = ["--iw-samples", 0], (2, "iw_samples must be >= 1")
        else:
            want = (2, "--num must be >= 1") if case == "num-0" else (status, pattern)
        rc, err = run_cli([command, run, *extra], capsys)
        assert rc == want[0] and re.search(want[1], err.strip().splitlines()[-1]), err
        if rc == 1:
            assert _one_line(err).startswith(f"pyro-vae {command}: error: ")
    assert not (run / "summary.json").exists()


# ------------------------------------------------------------------------- data identity


def test_data_changed_after_training_is_refused_by_evaluate_and_resume(tmp_path, capsys, flat_data):
    data, run = tmp_path / "data.npy", tmp_path / "run"
    shutil.copy(flat_data, data)
    assert run_cli(flat_args(data, "--epochs", 1, "--out", run), capsys)[0] == 0
    for replacement in (np.load(data)[::-1].copy(), np.load(data)[:40]):  # same shape, fewer
        np.save(data, replacement)
        before = files(run)
        rc, err = run_cli(["evaluate", run, "--iw-samples", 2], capsys)
        assert rc == 1 and "not those this run was trained on" in _one_line(err)
        rc, err = run_cli(["train", "--resume", run, "--epochs", 2], capsys)
        assert rc == 1 and "the data differ from those the run was trained on" in _one_line(err)
        assert files(run) == before


def test_a_run_trained_by_relative_path_resumes_and_evaluates_from_anywhere(
    tmp_path, monkeypatch, capsys, flat_data
):
    (tmp_path / "here").mkdir()
    shutil.copy(flat_data, tmp_path / "here" / "flat.npy")
    monkeypatch.chdir(tmp_path / "here")
    assert run_cli(flat_args("flat.npy", "--epochs", 1, "--out", "run"), capsys)[0] == 0
    config = json.loads((tmp_path / "here" / "run" / "config.json").read_text())
    assert config["data"]["dataset"] == str(tmp_path / "here" / "flat.npy")
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "here" / "run"
    assert run_cli(["train", "--resume", run, "--epochs", 2], capsys)[0] == 0
    absolute = tmp_path / "here" / "flat.npy"
    assert run_cli(["train", "--resume", run, "--epochs", 3, "--dataset", absolute],
                   capsys)[0] == 0  # fmt: skip
    assert run_cli(["evaluate", run, "--iw-samples", 2, "--quiet"], capsys)[0] == 0
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 3


# ---------------------------------------------------------------------- strict settings


_TOML = {
    'hidden = "32"': "hidden must be a list of integers, got str '32'",
    "batch_size = true": "batch-size must be an integer, got bool True",
    "latent_dim = 4.7": "latent-dim must be an integer, got float 4.7",
    'quiet = "no"': "quiet must be true or false, got str 'no'",
    'latent_dim = "four"': "latent-dim must be an integer, got str 'four'",
    "epochs = 1.5": "epochs must be an integer, got float 1.5",
}


@pytest.mark.parametrize("line", list(_TOML))
def test_settings_files_are_typed_strictly(tmp_path, capsys, line):
    toml = tmp_path / "run.toml"
    toml.write_text(line + "\n")
    rc, err = run_cli(["train", "--config", toml, "--out", tmp_path / "run"], capsys)
    assert rc == 2
    assert err.strip().splitlines()[-1].endswith(f"{toml}: {_TOML[line]}"), err
    assert not (tmp_path / "run").exists()


def test_an_integer_for_a_float_setting_is_a_float():
    cfg = from_flat(RunConfig(), {"lr": 1, "beta": 2})
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)
    assert check_flat(RunConfig, {"hidden": 32}) == {"hidden": 32}
    with pytest.raises(ValueError, match="hidden must be a list of integers"):
        check_flat(RunConfig, {"hidden": [32, True]})


@pytest.mark.parametrize(
    "flag, value, message",
    [("--lr", "inf", "lr must be a finite number, got inf"),
     ("--lr", "nan", "lr must be a finite number, got nan"),
     ("--weight-decay", "nan", "weight-decay must be a finite number, got nan"),
     ("--grad-clip", "nan", "grad-clip must be a finite number, got nan"),
     ("--beta", "inf", "beta must be a finite number, got inf"),
     ("--alpha", "nan", "alpha must be a finite number, got nan"),
     ("--seed", "-1", "seed must be >= 0, got -1"),
     ("--divergence-factor", "-1", "divergence-factor must be >= 0, got -1.0")],
)  # fmt: skip
def test_every_float_flag_must_be_finite(tmp_path, capsys, flag, value, message):
    rc, err = run_cli(["train", flag, value, "--out", tmp_path / "run"], capsys)
    assert rc == 2 and err.strip().splitlines()[-1].endswith(message), err
    assert not (tmp_path / "run").exists()


def test_resume_with_another_out_is_refused(tmp_path, capsys, finished_run):
    rc, err = run_cli(["train", "--resume", finished_run, "--out", tmp_path / "b"], capsys)
    assert rc == 2 and "cannot be combined with --resume" in err
    assert not (tmp_path / "b").exists()


# ----------------------------------------------------------------------- data layouts


def test_an_ambiguous_image_layout_is_refused_and_layout_picks_it(tmp_path, capsys):
    x = np.random.default_rng(0).integers(0, 256, (40, 4, 4, 3), dtype=np.uint8)
    np.save(data := tmp_path / "hwc.npy", x)
    args = ["train", "--dataset", data, "--test-size", 8, "--batch-size", 8, "--epochs", 0,
            "--quiet"]  # fmt: skip
    rc, err = run_cli([*args, "--out", tmp_path / "auto"], capsys)
    assert rc == 1 and "say which with --layout channels-first or --layout channels-last" in err
    for layout, shape in (("channels-last", [3, 4, 4]), ("channels-first", [4, 4, 3])):
        out = tmp_path / layout
        assert run_cli([*args, "--layout", layout, "--out", out], capsys)[0] == 0
        assert json.loads((out / "config.json").read_text())["event_shape"] == shape
    assert np.array_equal(orient(x, "channels-last", "x"), x.transpose(0, 3, 1, 2))
    with pytest.raises(DataFormatError, match="looks channels-last.*--layout channels-last"):
        orient(np.zeros((2, 28, 28, 3)), "auto", "x")


# ---------------------------------------------------------------------------- messages


def test_a_value_just_outside_the_support_is_printed_with_its_digits(tmp_path, capsys):
    x = np.random.default_rng(0).random((80, 16)).astype(np.float32)
    x[3, 3] = np.float32(1.0000001)
    np.save(data := tmp_path / "over.npy", x)
    rc, err = run_cli(flat_args(data, "--likelihood", "continuous-bernoulli"), capsys)
    assert rc == 1 and "observed range [" in err and ", 1.0000001]" in _one_line(err)
    assert shortest(1.0) == "1.0" and shortest(0.1) == "0.1"


@pytest.mark.parametrize("content", ["random", "empty", "pickled"])
@pytest.mark.parametrize("command", ["train", "diagnose"])
def test_a_file_that_is_not_an_array_is_named_as_such(tmp_path, capsys, command, content):
    path = tmp_path / "bad.npy"
    if content == "random":
        path.write_bytes(np.random.default_rng(0).bytes(500))
    elif content == "empty":
        path.write_bytes(b"")
    else:
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    rc, err = run_cli([command, "--dataset", path], capsys)
    line = _one_line(err)
    assert rc == 1 and f"{path} is not a valid .npy array file" in line
    assert "allow_pickle" not in line and "pickle.load" not in line
    assert {"random": "not a .npy file", "empty": "empty (0 bytes)",
            "pickled": "never loads"}[content] in line  # fmt: skip


def test_zero_epochs_says_so(tmp_path, capsys, flat_data):
    rc = cli.main([str(a) for a in flat_args(flat_data, "--epochs", 0, "--out", tmp_path / "r")])
    out = capsys.readouterr().out
    assert rc == 0 and "no epoch was trained (--epochs 0)" in out
    assert "nan" not in out and "inf" not in out


# ------------------------------------------------------------------ files, config.json


def test_pictures_are_written_atomically(tmp_path, monkeypatch):
    """A write cut short (a full disk at the rename) leaves the previous picture whole."""
    path = tmp_path / "grid.png"
    assert save_grid(torch.rand(4, 1, 8, 8), path)
    old = path.read_bytes()

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(OSError, match="No space"):
        save_grid(torch.rand(4, 1, 8, 8), path)
    with pytest.raises(OSError, match="No space"):
        save_figure(Figure(figsize=(1, 1)), path)
    assert path.read_bytes() == old and temp_files(tmp_path) == []
