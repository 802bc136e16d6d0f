"""Checkpoints that survive crashes and cannot run code, and the one object that writes and
reads a run's state.

Writes go to a temporary file in the same folder, are fsynced, then renamed over the target
(:func:`~pyro_vae.files.atomic_write`), so a reader sees either the old file or the new
one, never half of one. Reads use ``torch.load(weights_only=True)``: a pickle that would
execute code is refused. :class:`Checkpointer` owns every write and read of a run's state in
its run directory: the checkpoint format, the refusal of a checkpoint of another
configuration, the mid-epoch state, the clean-up of temporary files a killed write left, and
the one clear error when a write fails.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pyro_vae.config import RESUMABLE
from pyro_vae.distributed import World
from pyro_vae.files import atomic_write
from pyro_vae.train import rundir
from pyro_vae.train.rundir import RunDirectoryError
from pyro_vae.train.state import EpochCursor, Schedule, TrainState
from pyro_vae.train.step import NonFiniteLossError, non_finite_state

#: checkpoint layout (1: epoch boundaries only; 2: adds the mid-epoch state, and, from runs of
#: several processes, every rank's random-number generator states)
CHECKPOINT_FORMAT = 2

#: facts about the data recorded beside the settings; a resumed run must see the same
DATA_FACTS = ("event_shape", "num_train", "num_test", "data_fingerprint")


class CheckpointError(RuntimeError):
    """A checkpoint could not be read, or does not fit the model it is loaded into."""


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically (see :func:`~pyro_vae.files.atomic_write`)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def safe_load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``: tensors and plain containers only.

    A pickle that names any other global (the way a malicious file runs code) is refused
    before anything in it is called.

    :raises CheckpointError: for a missing, truncated, corrupt or unsafe file; the message says
        which and that nothing was run or overwritten.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():
            # e.g. "Detected pickle protocol 4": the refusal below says what matters
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} was refused: it is not a weights-only checkpoint (tensors and plain "
            f"containers). It is corrupt, or holds objects that could run code when unpickled; "
            f"nothing in it was run and nothing was overwritten (torch.load with "
            f"weights_only=True: {_last_line(e)}). Only load checkpoints from a source you trust."
        ) from e
    except Exception as e:  # noqa: BLE001 (a corrupt file fails in many ways inside torch.load)
        raise CheckpointError(
            f"{path} is truncated or corrupt and cannot be read ({type(e).__name__}: "
            f"{_last_line(e)}); nothing was overwritten"
        ) from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a pyro-vae checkpoint")
    return obj


def _last_line(error: BaseException) -> str:
    """The informative part of torch.load's long messages."""
    text = str(error).strip()
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0].split(". ")[0][:200] if lines else type(error).__name__


def rng_state(device: torch.device | None = None) -> dict:
    """Every global RNG state (torch CPU and CUDA, numpy, python), as plain tensors and lists.

    :param device: a CUDA device: its generator's state only (a rank of a distributed run
        keeps its own device's, and touching the other GPUs would open a context on each);
        ``None``: every visible GPU's.
    """
    np_state = np.random.get_state()
    py_state = random.getstate()
    if device is not None and device.type == "cuda":
        cuda = [torch.cuda.get_rng_state(device)]
    else:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {
        "torch": torch.get_rng_state(),
        "cuda": cuda,
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict, device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` captured (with ``device``: that device's state only)."""
    # RNG states are CPU byte tensors, wherever map_location put the checkpoint
    torch.set_rng_state(state["torch"].cpu())
    if state["cuda"] and torch.cuda.is_available():
        if device is not None and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda"][0].cpu(), device)
        else:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
    n = state["numpy"]
    np.random.set_state(
        (
            "MT19937",
            n["keys"].cpu().numpy().astype(np.uint32),
            n["pos"],
            n["has_gauss"],
            n["cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def load_checkpoint(
    path: str | Path, module: nn.Module, expected_config: dict | None = None, device="cpu"
) -> dict:
    """Load a checkpoint (``weights_only=True``) into ``module`` and return it.

    :param expected_config: the configuration the checkpoint must have been written under;
        every setting but those in :data:`~pyro_vae.config.RESUMABLE` must match.
    :raises CheckpointError: unreadable, truncated or unsafe file, or a checkpoint of another
        model/config (the message lists every mismatching setting or parameter). Nothing is
        loaded into ``module`` then.
    """
    path = Path(path)
    state = safe_load(path, map_location=device)
    check_checkpoint(state, path, expected_config)
    load_module_state(state, module, path)
    return state


def check_checkpoint(state: dict, path: Path, expected_config: dict | None = None) -> None:
    """A pyro-vae checkpoint of a format this version reads, written under
    ``expected_config`` (every setting but the resumable ones equal).

    :raises CheckpointError: saying which, and listing every mismatching setting.
    """
    missing = {"model", "optimizer", "rng", "epoch", "step", "config"} - set(state)
    if missing:
        raise CheckpointError(f"{path} is not a pyro-vae checkpoint (missing {sorted(missing)})")
    if not isinstance(state.get("format", 1), int) or not isinstance(state["config"], dict):
        raise _damaged(path, "its format or its configuration is not what pyro-vae writes")
    if state.get("format", 1) > CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} has checkpoint format {state['format']}, newer than this pyro-vae reads "
            f"({CHECKPOINT_FORMAT}); update pyro-vae"
        )
    if expected_config is not None:
        diffs = config_diff(state["config"], expected_config)
        if diffs:
            raise CheckpointError(
                f"{path} was written for another configuration: "
                + "; ".join(diffs)
                + ". Use the checkpoint's settings, or start a new run with another --out."
            )


def load_module_state(state: dict, module: nn.Module, path: Path) -> None:
    """Load ``state["model"]`` into ``module``, after checking every tensor's name, shape and
    dtype against it.

    :raises CheckpointError: parameters of another model (each difference listed).
    """
    _check_model_state(state["model"], module, path)
    try:
        module.load_state_dict(state["model"])
    except RuntimeError as e:
        detail = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise CheckpointError(f"{path} holds parameters of another model: {detail}") from e


# ------------------------------------------------------------------- the checkpoint's schema


def _damaged(path: Path, what: str) -> CheckpointError:
    return CheckpointError(
        f"{path} is damaged or was not written by pyro-vae: {what}; nothing was loaded and "
        f"nothing in the run directory was changed"
    )


def _check_model_state(model: Any, module: nn.Module, path: Path) -> None:
    """Every tensor of the saved module state has the name, shape and dtype of the module's
    (``load_state_dict`` would cast an int64 parameter silently)."""
    if not isinstance(model, dict) or not all(isinstance(t, torch.Tensor) for t in model.values()):
        raise _damaged(path, "its 'model' is not a mapping of names to tensors")
    expected = module.state_dict()
    for name, t in model.items():
        ref = expected.get(name)
        if ref is not None and t.shape == ref.shape and t.dtype != ref.dtype:
            raise _damaged(path, f"the parameter {name} is {t.dtype}, the model's {ref.dtype}")


def check_training_state(
    saved: dict, path: Path, module: nn.Module, optimizer: torch.optim.Optimizer, spe: int
) -> None:
    """Validate everything :meth:`Checkpointer.restore` reads, before any of it is used: the
    value types, the optimizer state's shapes and dtypes (a wrong shape crashes the fused
    Adam step), the epoch and step, the metrics and the RNG states.

    :param spe: steps per epoch of the run.
    :raises CheckpointError: naming the first field that is wrong.
    """
    for key, kinds in _TYPES.items():
        if key in saved and not isinstance(saved[key], kinds):
            names = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
            raise _damaged(path, f"{key!r} is a {type(saved[key]).__name__}, not {names}")
    epoch, step, batch = saved["epoch"], saved["step"], saved.get("batch", 0)
    if min(epoch, step, batch) < 0 or step != epoch * spe + batch or batch >= max(spe, 1):
        raise _damaged(
            path, f"epoch {epoch}, step {step} and batch {batch} do not fit {spe} steps per epoch"
        )
    metrics = saved.get("metrics")
    if metrics is not None:
        ok = len(metrics) == epoch and all(
            isinstance(r, dict) and r.get("epoch") == i + 1 and _numbers(r)
            for i, r in enumerate(metrics)
        )
        if not ok:
            raise _damaged(path, f"its metrics are not one row of numbers per epoch ({epoch})")
    _check_optimizer_state(saved["optimizer"], module, optimizer, path)
    _check_rng_state(saved["rng"], path)
    ranks = saved.get("rng_ranks")
    if ranks is None and saved.get("world_size", 1) > 1:
        raise _damaged(path, f"it is from a run of {saved['world_size']} processes but holds "
                             f"one process's RNG states")  # fmt: skip
    if ranks is not None:
        if len(ranks) != saved.get("world_size", 1):
            raise _damaged(path, f"it holds {len(ranks)} ranks' RNG states for a run of "
                                 f"{saved.get('world_size', 1)} processes")  # fmt: skip
        for rng in ranks:
            if not isinstance(rng, dict):
                raise _damaged(path, "its ranks' RNG states are not those pyro-vae saves")
            _check_rng_state(rng, path)


_TYPES = {
    "format": (int,),
    "optimizer": (dict,),
    "scheduler": (dict, type(None)),
    "rng": (dict,),
    "epoch": (int,),
    "step": (int,),
    "batch": (int,),
    "perm": (torch.Tensor, type(None)),
    "epoch_loss": (torch.Tensor, type(None)),
    "epoch_seconds": (float, int),
    "best_test_elbo": (float, int),
    "metrics": (list,),
    "config": (dict,),
    "world_size": (int,),
    "rng_ranks": (list, type(None)),
}


def _numbers(row: dict) -> bool:
    values = [row.get(k) for k in rundir.METRIC_FIELDS]
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _check_optimizer_state(
    state: dict, module: nn.Module, optimizer: torch.optim.Optimizer, path: Path
) -> None:
    groups, slots = state.get("param_groups"), state.get("state")
    fresh = optimizer.state_dict()["param_groups"]
    if not isinstance(groups, list) or not isinstance(slots, dict):
        raise _damaged(path, "its optimizer state has no param_groups list and state mapping")
    if [g.get("params") if isinstance(g, dict) else None for g in groups] != [
        g["params"] for g in fresh
    ]:
        raise _damaged(path, "its optimizer holds other parameters than the model's")
    params = dict(enumerate(module.parameters()))
    names = {id(p): name for name, p in module.named_parameters()}
    for index, slot in slots.items():
        p = params.get(index)
        if p is None or not isinstance(slot, dict):
            raise _damaged(path, f"its optimizer state names parameter {index!r}, not the model's")
        for key, t in slot.items():
            if not isinstance(t, torch.Tensor):
                raise _damaged(path, f"the optimizer's {key} of {names[id(p)]} is not a tensor")
            want = () if key == "step" else p.shape
            dtype = torch.float32 if key == "step" else p.dtype
            if t.shape != want or t.dtype != dtype:
                raise _damaged(
                    path,
                    f"the optimizer's {key} of {names[id(p)]} has shape {tuple(t.shape)} and "
                    f"dtype {t.dtype}, not {tuple(want)} and {dtype}",
                )


def _check_rng_state(rng: dict, path: Path) -> None:
    torch_state, numpy_state, python_state = rng.get("torch"), rng.get("numpy"), rng.get("python")
    size = torch.get_rng_state().shape
    ok = (
        isinstance(torch_state, torch.Tensor)
        and torch_state.dtype == torch.uint8
        and torch_state.shape == size
        and isinstance(rng.get("cuda"), list)
        and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in rng["cuda"])
        and isinstance(numpy_state, dict)
        and isinstance(numpy_state.get("keys"), torch.Tensor)
        and numpy_state["keys"].shape == (624,)
        and isinstance(numpy_state.get("pos"), int)
        and 0 <= numpy_state["pos"] <= 624
        and numpy_state.get("has_gauss") in (0, 1)
        and isinstance(numpy_state.get("cached_gaussian"), float)
        and isinstance(python_state, list)
        and len(python_state) == 3
        and isinstance(python_state[1], list)
        and len(python_state[1]) == 625
        and all(isinstance(v, int) for v in python_state[1])
    )
    if not ok:
        raise _damaged(path, "its random-number generator states are not those pyro-vae saves")


def config_diff(saved: dict, expected: dict) -> list[str]:
    """Every setting (but the resumable ones) and data fact that differs, as sentences."""
    # as config.json holds them: tuples and lists compare equal
    saved, expected = json.loads(json.dumps(saved)), json.loads(json.dumps(expected))
    diffs = []
    for section in ("model", "data", "train"):
        a, b = saved.get(section), expected.get(section)
        if a is None or b is None:  # e.g. fit() without run_config records train only
            continue
        # a setting the checkpoint lacks is newer than the checkpoint: its default applies
        for key in sorted(a):
            if key in RESUMABLE or a.get(key) == b.get(key):
                continue
            if (section, key) == ("data", "dataset") and _same_file(a[key], b.get(key)):
                continue  # a run of an older version recorded the path as typed
            diffs.append(f"{section}.{key}: checkpoint {a.get(key)!r}, now {b.get(key)!r}")
    for key in DATA_FACTS:
        if key in saved and key in expected and saved[key] != expected[key]:
            if key == "data_fingerprint":
                diffs.append("the data differ from those the run was trained on (fingerprint)")
            else:
                diffs.append(f"{key}: checkpoint {saved[key]!r}, now {expected[key]!r}")
    return diffs


def _same_file(a: Any, b: Any) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, TypeError, ValueError):
        return False


def _cursor(state: dict, schedule: Schedule, device) -> EpochCursor | None:
    """The mid-epoch state of a checkpoint, checked against the data it resumes on."""
    perm, batch = state.get("perm"), state.get("batch", 0)
    if perm is None:
        return None
    spe = schedule.steps_per_epoch
    if (
        not isinstance(perm, torch.Tensor)
        or perm.shape != (schedule.n,)
        or not 0 <= batch < spe
        or state["step"] != state["epoch"] * spe + batch
    ):
        raise CheckpointError(
            f"the mid-epoch state in the checkpoint (batch {batch} of {spe}, "
            f"permutation of {None if perm is None else tuple(perm.shape)}) does not fit "
            f"{schedule.n} training datapoints in batches of this size"
        )
    loss_sum = state["epoch_loss"].to(device)
    return EpochCursor(perm.to(device), batch, loss_sum, state.get("epoch_seconds", 0.0))


class Checkpointer:
    """Every write and read of a run's state in its run directory.

    ``checkpoint.pt`` holds the module, the optimizer, the LR schedule, every RNG state, the
    :class:`~pyro_vae.train.state.TrainState` (epoch, step, best score, metrics and, mid-epoch,
    the :class:`~pyro_vae.train.state.EpochCursor`) and the configuration; ``best.pt`` the
    same at the best score. Without a run directory nothing is written, and :meth:`kept`
    says so.

    The run directory is locked from construction to :meth:`close` (use it as a context
    manager; see :func:`~pyro_vae.train.rundir.claim`): one process per run.

    With several ranks (``world``) every rank makes one and calls every method at the same
    points; rank 0 alone claims, reads and writes the run directory. A save gathers every
    rank's RNG states (``rng_ranks``) and the sum of their epoch losses into rank 0's file;
    :meth:`restore` reads it on rank 0 and hands it to the others, each taking its own RNG
    states back; a failed read or write on rank 0 stops the other ranks too.

    :param out: the run directory, or ``None``.
    :param config: the configuration saved in every checkpoint, which a resumed run must match.
    :param resume: continue the run in ``out`` (from step 0 if it stopped before its first
        checkpoint); else ``out`` must be absent or empty.
    :raises RunDirectoryError: ``out`` cannot be created or written, is locked by another
        process, or (a new run) is not empty; nothing was trained or overwritten.
    """

    def __init__(
        self,
        out: str | Path | None,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        config: dict,
        resume: bool = False,
        world: World = World(),
    ):
        if resume and out is None:
            raise ValueError("resume=True needs the run directory (out=...)")
        self.world = world
        self.run_dir = None if out is None else Path(out)
        self._lock = None if out is None else world.on_main(rundir.claim, out, resume)
        self.module, self.optimizer, self.scheduler = module, optimizer, scheduler
        self.config, self.resume = config, resume
        #: the step of the last checkpoint.pt written or resumed from (``None``: none yet)
        self.saved_step: int | None = None
        #: a resumed run that had no checkpoint yet: it starts from step 0, as a new run
        self.fresh = not resume

    @property
    def _device(self) -> torch.device:
        """Where the module's parameters are: a distributed rank's own device."""
        return next(self.module.parameters()).device

    def close(self) -> None:
        """Release the run directory's lock."""
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def path(self) -> Path:
        """``checkpoint.pt`` of the run directory."""
        return self.run_dir / "checkpoint.pt"

    def restore(self, schedule: Schedule, device: torch.device) -> TrainState:
        """Load ``checkpoint.pt`` into the module, optimizer, schedule and RNGs; the state.

        A run that stopped before its first checkpoint (its ``config.json`` only) starts from
        step 0. Nothing is written: the caller's :meth:`begin` writes.

        :raises CheckpointError: unreadable, of another configuration, of another number of
            processes, or a cosine schedule asked to span another number of epochs.
        """
        saved = self.world.on_main(self._read, schedule, device)
        if self.world.active:
            saved = self.world.broadcast_object(saved)
        if saved is None:
            self.fresh = True
            return TrainState()
        load_module_state(saved, self.module, self.path)
        self.optimizer.load_state_dict(saved["optimizer"])
        for group in self.optimizer.param_groups:  # the flags come back from the file: ours
            group["fused"], group["foreach"] = True, None
        if self.scheduler is not None and saved.get("scheduler") is not None:
            if saved["scheduler"].get("T_max") != self.scheduler.T_max:
                # a schedule that spans the run (torch's cosine is recursive in the last lr)
                # cannot be re-spanned mid-run
                name = self.config.get("train", {}).get("lr_schedule", "cosine")
                raise CheckpointError(
                    f"this run's {name} learning-rate schedule spans "
                    f"{saved['scheduler'].get('T_max')} steps; resuming with another --epochs "
                    f"would change it mid-run. Resume with the run's own --epochs, or start a "
                    f"new run (or use --lr-schedule constant, which can be extended)"
                )
            self.scheduler.load_state_dict(saved["scheduler"])
        ranks = saved.get("rng_ranks")
        if ranks and self.world.active:
            set_rng_state(ranks[self.world.rank], self._device)
        else:
            set_rng_state(saved["rng"])
        epoch = saved["epoch"]
        if "metrics" in saved:
            metrics = list(saved["metrics"])
        else:  # format 1
            metrics = [r for r in rundir.read_metrics(self.run_dir) if r["epoch"] <= epoch]
        state = TrainState(epoch, saved["step"], saved["best_test_elbo"], metrics)
        state.cursor = _cursor(saved, schedule, device)
        if state.cursor is not None and not self.world.is_main:
            state.cursor.loss_sum.zero_()  # rank 0's holds the sum over the ranks
        self.saved_step = state.step
        return state

    def _read(self, schedule: Schedule, device: torch.device) -> dict | None:
        """``checkpoint.pt``, validated against the module, the optimizer, the schedule and
        the number of processes (``None``: the run stopped before its first checkpoint).
        With several ranks it is read to the CPU, to be handed to the others."""
        if not self.path.exists() and (self.run_dir / "config.json").is_file():
            return None
        saved = safe_load(self.path, map_location="cpu" if self.world.active else device)
        check_checkpoint(saved, self.path, self.config)
        size = saved.get("world_size", 1)
        if size != self.world.size:
            raise CheckpointError(
                f"{self.path} was written by a run of {size} process(es) and this one has "
                f"{self.world.size}; its data shards, steps per epoch and random streams depend "
                f"on that number. Resume with {size} process(es) in all (torchrun --nnodes N "
                f"--nproc-per-node M with N x M = {size})"
            )
        _check_model_state(saved["model"], self.module, self.path)
        spe = schedule.steps_per_epoch
        check_training_state(saved, self.path, self.module, self.optimizer, spe)
        return saved

    def begin(self, state: TrainState, run_config: dict | None) -> None:
        """Before the first step: ``config.json`` (the full ``run_config``: on resume, with the
        settings that changed, such as ``epochs``), then a new run writes a step-0 checkpoint,
        proving the folder takes one, and a resumed run rewrites the metrics of the epochs its
        checkpoint holds."""
        if self.run_dir is None:
            return
        if run_config is not None:
            config = self.run_dir / "config.json"
            self._write(config, state, lambda: rundir.write_config(self.run_dir, run_config))
        if self.fresh:
            self.save("checkpoint.pt", state)
        else:
            self._write(self.run_dir / "metrics.jsonl", state, self._metrics_writer(state))

    def save(self, name: str, state: TrainState, cursor: EpochCursor | None = None) -> None:
        """Write ``name`` (``checkpoint.pt`` or ``best.pt``) from the state; with ``cursor``,
        the epoch in progress too."""
        if self.run_dir is None:
            return
        bad = non_finite_state(self.module, self.optimizer)
        if bad is not None:  # the loop stops before this; a checkpoint must never keep it
            raise NonFiniteLossError(
                f"{bad} is non-finite at step {state.step}, so {name} was not written; "
                f"{self.kept()}. Lower --lr, or add --grad-clip.",
                step=state.step,
                term="update",
            )
        # every rank's, rank 0's first (a rank's own GPU only)
        rngs = self.world.gather_objects(rng_state(self._device if self.world.active else None))
        saved = {
            "format": CHECKPOINT_FORMAT,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "rng": rngs[0],
            "rng_ranks": rngs if self.world.active else None,
            "world_size": self.world.size,
            "epoch": state.epoch,
            "step": state.step,
            "batch": 0 if cursor is None else cursor.batch,
            "perm": None if cursor is None else cursor.perm,
            # the sum over the ranks' datapoints so far
            "epoch_loss": None if cursor is None else self.world.sum_(cursor.loss_sum.clone()),
            "epoch_seconds": 0.0 if cursor is None else cursor.seconds,
            "best_test_elbo": state.best,
            "metrics": state.metrics,
            "config": self.config,
        }
        path = self.run_dir / name
        self._write(path, state, lambda: atomic_save(saved, path))
        if name == "checkpoint.pt":
            self.saved_step = state.step

    def end_epoch(self, state: TrainState, improved: bool) -> None:
        """After an epoch: ``best.pt`` if the score improved, ``checkpoint.pt``, the metrics."""
        if self.run_dir is None:
            return
        # best.pt first: a kill between the two writes redoes this epoch on resume, which
        # rewrites the same best.pt; the other order could lose it
        if improved:
            self.save("best.pt", state)
        self.save("checkpoint.pt", state)
        self._write(self.run_dir / "metrics.jsonl", state, self._metrics_writer(state))

    def kept(self) -> str:
        """What a stop leaves behind, as a clause for its message."""
        if self.run_dir is None:
            return "no run directory was given, so nothing was saved"
        if not self.saved_step:
            return "no checkpoint of trained parameters was written yet"
        return f"{self.path} from step {self.saved_step} is kept"

    def _metrics_writer(self, state: TrainState) -> Callable[[], None]:
        return lambda: rundir.write_metrics(self.run_dir, state.metrics)

    def _write(self, path: Path, state: TrainState, write: Callable[[], Any]) -> None:
        """Run ``write`` on rank 0; turn a failure (full disk, ...) into a clear stop (on
        every rank)."""
        self.world.on_main(self._write_here, path, state, write)

    def _write_here(self, path: Path, state: TrainState, write: Callable[[], Any]) -> None:
        try:
            write()
        except OSError as e:
            if state.step == 0 and self.fresh:
                what, then = "before training; nothing was trained", "start again"
            else:
                what = f"at step {state.step}; training stopped. {self.kept()}"
                then = f"resume with pyro-vae train --resume {self.run_dir}"
            raise RunDirectoryError(
                f"could not write {path} {what} ({e.strerror or e}); no temporary file is "
                f"left. Make room, then {then}",
                e.errno,
            ) from e
