"""Runs: the seam the applications use.

A run is a :class:`~pyro_vae.config.RunConfig` made real: its data loaded and prepared
(:func:`resolve_data`), its model built by name or by path
(:func:`~pyro_vae.models.build_model`, with the data's labels described for a conditional
model), trained into a run directory (:func:`run_training`), and reopened later
(:func:`load_run`, :func:`evaluation_data`).
``pyro-vae train``, ``evaluate``, ``sample``, ``compare`` and ``diagnose`` all go through here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyro
import torch

from pyro_vae.config import DataConfig, RunConfig
from pyro_vae.data import DataSplit, Preprocess, canonical_source, load_data
from pyro_vae.distributed import World, current
from pyro_vae.models import LabelInfo, build_model, inputs_of
from pyro_vae.registry import Registry
from pyro_vae.train import CheckpointError, TrainResult, fit, load_checkpoint, rundir

#: the splits of a run that can be evaluated
SPLITS: Registry[None] = Registry.of("split", ("test", "train"))
#: the checkpoints of a run directory: the best score, or the latest state
CHECKPOINTS: Registry[None] = Registry.of("checkpoint", ("best", "checkpoint"))


def load_split(data: DataConfig, seed: int) -> DataSplit:
    """The raw split of ``data`` (``seed`` picks the held-out datapoints where the source has
    no test split of its own)."""
    return load_data(
        data.dataset,
        data_dir=data.data_dir,
        test_size=data.test_size,
        seed=seed,
        num_shapes=data.num_shapes,
        download=data.download,
        layout=data.layout,
    )


def resolve_data(cfg: RunConfig) -> tuple[DataSplit, Preprocess, RunConfig]:
    """Load and prepare the data of ``cfg``; fill the preprocessing defaults from the
    likelihood and the data (:meth:`~pyro_vae.config.DataConfig.resolved`).

    :returns: ``(split, preprocess, cfg)``: the split with its one-off transforms applied, the
        per-batch transforms, and ``cfg`` with its data section resolved.
    """
    split = load_split(cfg.data, cfg.train.seed)
    resolved = cfg.data.resolved(cfg.model.likelihood, split.is_8bit)
    resolved = dataclasses.replace(resolved, dataset=canonical_source(cfg.data.dataset))
    pre = Preprocess(resolved.binarize, resolved.dequantize, cfg.train.seed)
    return pre.prepare(split), pre, dataclasses.replace(cfg, data=resolved)


def model_inputs(model, split: DataSplit) -> tuple[tuple, tuple]:
    """The extra inputs a model takes (``model.inputs``) from a split: ``(train, test)``."""
    test = split.test_labels
    if test is None and split.train_labels is not None:
        test = split.train_labels[:0]
    return inputs_for(model, split.train_labels, split.name), inputs_for(model, test, split.name)


def run_training(
    cfg: RunConfig, out: str | Path | None = None, resume: bool = False, world: World | None = None
) -> TrainResult:
    """Load data, build the model and :func:`~pyro_vae.train.fit` it: ``pyro-vae train``.

    The model's extra inputs (a conditional model's labels) come from the data.

    :param out: the run directory (default ``runs/<time>-<dataset>-<likelihood>-<estimator>``).
    :param world: the processes of the run (default: :func:`~pyro_vae.distributed.current`).

    Under torchrun every rank calls it: rank 0 loads the data first (a download happens
    once, a refusal is said once), then the others; rank 0 names the default run directory.
    """
    pyro.set_rng_seed(cfg.train.seed)
    world = world or current(cfg.train.dist_timeout)
    split, pre, cfg = world.main_then_others(resolve_data, cfg)
    fingerprint = split.fingerprint()
    labels = LabelInfo.of(split.train_labels, split.test_labels)
    model = build_model(cfg.model, split.event_shape, labels=labels, beta=cfg.train.beta)
    train_inputs, test_inputs = model_inputs(model, split)
    if out is None:
        out = world.broadcast_object(
            rundir.default_run_dir(cfg.data.dataset, cfg.model.likelihood, cfg.train.estimator)
        )
    full = {
        **cfg.to_dict(),
        "event_shape": list(split.event_shape),
        "num_train": len(split.train),
        "num_test": len(split.test),
        "data_fingerprint": fingerprint,
        "labels": None if labels is None else labels.to_dict(),
        "environment": rundir.environment(),
        "world_size": world.size,
    }
    return fit(
        model, split.train, split.test, cfg.train, preprocess=pre, out=out, run_config=full,
        resume=resume, train_inputs=train_inputs, test_inputs=test_inputs, world=world,
    )  # fmt: skip


def run_config(run_dir: str | Path) -> RunConfig:
    """The :class:`~pyro_vae.config.RunConfig` saved in ``run_dir/config.json``."""
    return RunConfig.from_dict(rundir.read_config(run_dir))


def load_run(run_dir: str | Path, which: str = "best", device: str = "cpu"):
    """Rebuild the model of a run directory from ``config.json`` and ``<which>.pt``: any model,
    by name or by path, with the modules the run imported.

    :returns: ``(model, config)``: the model on ``device``, and ``config.json`` as a dict.
    :raises CheckpointError: the checkpoint is unreadable or unsafe, or was written for
        another configuration than ``config.json`` (the mismatches are listed).
    """
    CHECKPOINTS.check(which)
    run_dir = Path(run_dir)
    config = rundir.read_config(run_dir)
    if not (run_dir / f"{which}.pt").is_file():
        other = "checkpoint" if which == "best" else "best"
        hint = f"; --which {other} reads {other}.pt" if (run_dir / f"{other}.pt").is_file() else ""
        raise CheckpointError(
            f"{run_dir} has no {which}.pt (a run writes best.pt after its first epoch, "
            f"checkpoint.pt before its first step){hint}"
        )
    labels = LabelInfo.from_dict(config.get("labels"))
    model = build_model(RunConfig.from_dict(config).model, config["event_shape"], labels=labels)
    load_checkpoint(run_dir / f"{which}.pt", model, expected_config=config, device=device)
    return model.to(device), config


def evaluation_data(run_dir: str | Path, split: str = "test", seed: int = 0):
    """The run's data split as the model sees it, with the labels.

    The split is loaded and prepared exactly as in training (:func:`resolve_data` of the saved
    configuration). Per-batch randomness (dynamic binarization of training data,
    dequantization) is drawn **once** for the whole split, on the CPU, from a forked RNG
    seeded with ``seed``: the evaluated data depend neither on the batch size nor on the
    device.

    :returns: ``(x, labels, label_names, run_config)``: ``x`` float32 ``(N, *event_shape)``;
        ``labels`` are also a conditional model's input.
    """
    SPLITS.check(split)
    config = rundir.read_config(run_dir)
    data, pre, cfg = resolve_data(RunConfig.from_dict(config))
    check_same_data(config, data)
    raw = data.test if split == "test" else data.train
    labels = data.test_labels if split == "test" else data.train_labels
    if len(raw) == 0:
        raise ValueError(f"the run's {split} split is empty; evaluate --split train")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        x = pre(raw.cpu())  # (N, *event_shape)
    return x, labels, data.label_names, cfg


def check_same_data(config: dict, split: DataSplit) -> None:
    """Refuse data other than those the run of ``config`` (its ``config.json``) was trained
    on: the fingerprint of the split (:meth:`~pyro_vae.data.DataSplit.fingerprint`), as it
    is loaded now, must equal the recorded one (runs from before fingerprints pass).

    :raises ValueError: the data changed (a file overwritten, a folder refilled).
    """
    recorded = config.get("data_fingerprint")
    if recorded is not None and recorded != split.fingerprint():
        raise ValueError(
            f"the data of {config['data']['dataset']} are not those this run was trained on "
            f"(their fingerprint differs: the file was overwritten or changed since); "
            f"evaluating would score other data. Restore the data, or train a new run"
        )


def inputs_for(
    model, labels: torch.Tensor | None, what: str = "these data"
) -> tuple[torch.Tensor, ...]:
    """The extra inputs of ``model`` (``model.inputs``) for data with these labels: ``()`` for
    most models, the labels for a conditional one.

    :raises ValueError: an input the data do not provide (a dataset provides its labels,
        when it has them).
    """
    for name in inputs_of(model):
        if name != "labels" or labels is None:
            raise ValueError(
                f"the model takes the input {name!r}, which {what} do not provide (a dataset "
                f"provides its labels, when it has them)"
            )
    return tuple(labels for _ in inputs_of(model))
