"""Pictures of a run: image grids (torchvision) and learning curves (matplotlib, no pyplot)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from torchvision.utils import save_image


def as_images(x: torch.Tensor) -> torch.Tensor | None:
    """``(N, C, H, W)`` images from ``(N, C, H, W)`` or square flat ``(N, D)`` data, else None."""
    if x.dim() == 4:
        return x
    if x.dim() == 2:
        side = math.isqrt(x.shape[1])
        if side * side == x.shape[1]:
            return x.reshape(-1, 1, side, side)
    return None


def save_grid(x: torch.Tensor, path: str | Path, nrow: int = 8) -> bool:
    """Save ``x`` (values in [0, 1]) as a picture grid; False if ``x`` are not images."""
    images = as_images(x.detach().float().cpu())
    if images is None:
        return False
    save_image(images.clamp(0, 1), str(path), nrow=nrow, padding=2, pad_value=0.5)
    return True


def save_reconstructions(x: torch.Tensor, recon: torch.Tensor, path: str | Path, n: int = 8) -> bool:
    """Rows of originals above their reconstructions (likelihood means)."""
    n = min(n, x.shape[0])
    pairs = torch.stack([x[:n].float(), recon[:n].float()], dim=0)  # (2, n, ...)
    return save_grid(pairs.reshape(2 * n, *x.shape[1:]), path, nrow=n)


def plot_curves(rows: Sequence[dict], path: str | Path) -> None:
    """ELBO per datapoint against epoch: train objective and held-out ELBO."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6, 4), dpi=110)
    ax = fig.add_subplot()
    epochs = [r["epoch"] for r in rows]
    for key, label in (("train_elbo", "train objective"), ("test_elbo", "test ELBO")):
        ax.plot(epochs, [r[key] for r in rows], marker="o", ms=3, label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per datapoint (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
