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


def save_panels(
    panels: Sequence[tuple[str, torch.Tensor]], path: str | Path, nrow: int = 8
) -> bool:
    """Labelled picture grids stacked top to bottom: ``(title, x)`` with values in [0, 1].

    :returns: False (and writes nothing) if some ``x`` are not images.
    """
    from matplotlib.figure import Figure
    from torchvision.utils import make_grid

    grids = []
    for title, x in panels:
        images = as_images(x.detach().float().cpu())
        if images is None:
            return False
        grid = make_grid(images.clamp(0, 1), nrow=nrow, padding=2, pad_value=0.5)  # (3, h, w)
        grids.append((title, grid.permute(1, 2, 0).numpy()))
    width = max(g.shape[1] for _, g in grids)
    heights = [g.shape[0] for _, g in grids]
    inches = 6.0 / width  # a grid of 8 MNIST images is 6 inches wide
    fig = Figure(figsize=(6.0, inches * sum(heights) + 0.3 * len(grids)), dpi=110)
    axes = fig.subplots(len(grids), 1, squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax, (title, grid) in zip(axes[:, 0], grids):
        ax.imshow(grid, interpolation="nearest")
        ax.set_title(title, fontsize=8, loc="left")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path)
    return True
