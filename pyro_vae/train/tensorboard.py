"""Optional TensorBoard logging of a training run: ``pyro-vae train --tensorboard``.

Needs the ``tensorboard`` extra (``pip install -e ".[tensorboard]"``); without it, a run asked
for TensorBoard stops before anything is written, with one line saying what to install.

Writes into ``<run directory>/tensorboard/`` (so ``tensorboard --logdir runs`` shows every run),
once per epoch, with the epoch as the step:

==========================  ================================================================
tag                         value
==========================  ================================================================
``elbo/train``              the epoch's training objective per datapoint (``train_elbo``)
``elbo/test``               the held-out ELBO per datapoint (``test_elbo``)
``lr``, ``beta``            the learning rate and the KL weight at the epoch's end
``seconds``                 the epoch's seconds
``reconstructions``         the first 8 pictured datapoints (top) and their reconstructions
``samples``                 the observation's mean at 64 prior draws
==========================  ================================================================

The pictures are those of ``reconstructions.png`` and ``samples.png``, drawn under a forked,
seeded RNG: logging changes neither the training's random stream nor its results.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from pyro_vae.config import TrainConfig
from pyro_vae.eval.plots import as_images
from pyro_vae.models import evaluation_mode, reconstruct, sample

#: what to install for ``--tensorboard``
INSTALL_HINT = (
    'pip install -e ".[tensorboard]" in the checkout (or pip install "pyro-vae[tensorboard]")'
)
#: the metrics written as scalars: the key in a metrics row, and the tag
SCALARS = (
    ("train_elbo", "elbo/train"),
    ("test_elbo", "elbo/test"),
    ("lr", "lr"),
    ("beta", "beta"),
    ("seconds", "seconds"),
)


class TensorBoardMissingError(ImportError):
    """``--tensorboard`` was asked for, but the ``tensorboard`` package is not installed."""


def summary_writer_class() -> type:
    """torch's ``SummaryWriter``, imported only when asked for (the extra is optional).

    :raises TensorBoardMissingError: the ``tensorboard`` package is missing.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:  # torch's module exists; it fails on the missing package
        raise TensorBoardMissingError(
            f"--tensorboard needs the tensorboard package, which is not installed ({e}); "
            f"install it with {INSTALL_HINT}, or train without --tensorboard"
        ) from None
    return SummaryWriter


class TensorBoardLog:
    """The TensorBoard events of one run; a log that is off does nothing.

    Made by :meth:`start` before the run directory is touched; the event file is opened at
    the first epoch's end.
    """

    def __init__(self, folder: Path | None = None, writer_class: type | None = None, seed=0):
        self.folder, self.writer_class, self.seed = folder, writer_class, seed
        self.writer = None

    @classmethod
    def start(cls, cfg: TrainConfig, out: str | Path | None) -> TensorBoardLog:
        """The log of a run with settings ``cfg`` into the run directory ``out``.

        :raises TensorBoardMissingError: ``cfg.tensorboard`` without the package.
        :raises ValueError: ``cfg.tensorboard`` without a run directory.
        """
        if not cfg.tensorboard:
            return cls()
        writer_class = summary_writer_class()
        if out is None:
            raise ValueError("--tensorboard writes into the run directory; give one (out=...)")
        return cls(Path(out) / "tensorboard", writer_class, cfg.seed)

    @property
    def enabled(self) -> bool:
        return self.folder is not None

    def epoch(self, model: nn.Module, row: dict, preprocess, x: torch.Tensor, inputs=()) -> None:
        """Write one epoch: the scalars of its metrics ``row`` and the pictures of ``model``.

        :param x: the data pictured (raw, for ``preprocess``), as for ``reconstructions.png``;
            ``inputs`` are the model's extra inputs for them.
        """
        if not self.enabled:
            return
        if self.writer is None:
            self.writer = self.writer_class(log_dir=str(self.folder))
        step = int(row["epoch"])
        for key, tag in SCALARS:
            value = row.get(key)
            if value is not None and math.isfinite(value):
                self.writer.add_scalar(tag, value, step)
        for tag, grid in picture_grids(model, x, preprocess, inputs, self.seed).items():
            self.writer.add_image(tag, grid, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def picture_grids(model, x: torch.Tensor, preprocess, inputs=(), seed: int = 0) -> dict:
    """``{"reconstructions": (3, H, W), "samples": (3, H, W)}`` image grids in [0, 1] (empty
    for data that are not images), drawn under a forked RNG seeded with ``seed``."""
    from torchvision.utils import make_grid  # torchvision costs a second to import

    ref = next(model.parameters())
    with evaluation_mode(model), torch.random.fork_rng(devices=[ref.device] if ref.is_cuda else []):
        torch.manual_seed(seed)
        xs = preprocess(x[:8])  # (n, *event_shape)
        recon = reconstruct(model, xs, *(t[: len(xs)] for t in inputs))
        rows = torch.arange(64, device=ref.device)
        mean, _ = sample(model, 64, *(t[rows % len(t)] for t in inputs))
    pairs = torch.cat([xs.float(), recon.float()])  # (2n, *event_shape): inputs, then theirs
    grids = {}
    for tag, images, nrow in (("reconstructions", pairs, len(xs)), ("samples", mean, 8)):
        images = as_images(images.detach().float().cpu())
        if images is not None:
            grids[tag] = make_grid(images.clamp(0, 1), nrow=nrow, padding=2, pad_value=0.5)
    return grids
