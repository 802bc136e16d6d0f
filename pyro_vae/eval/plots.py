"""Pictures of a model: image grids (torchvision), learning curves, latent traversals and
scatter plots (matplotlib through :class:`~matplotlib.figure.Figure` only: no pyplot, no global
state)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from pyro_vae.eval.fontcache import announce_font_cache
from pyro_vae.files import atomic_write, save_figure
from pyro_vae.models import evaluation_mode, reconstruct, sample
from pyro_vae.models.protocol import decode

#: latent dimensions shown in traversals.png, and the values each one takes
TRAVERSAL_DIMS = 8
TRAVERSAL_VALUES = torch.linspace(-3.0, 3.0, 9)
#: most points in the latent scatter
SCATTER_POINTS = 5000


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
    # imported here, as in the other picture functions: torchvision costs a second to import
    from torchvision.utils import save_image

    images = as_images(x.detach().float().cpu())
    if images is None:
        return False
    images = images.clamp(0, 1)
    atomic_write(path, lambda f: save_image(images, f, format="png", nrow=nrow, padding=2,
                                            pad_value=0.5))  # fmt: skip
    return True


def save_reconstructions(
    x: torch.Tensor, recon: torch.Tensor, path: str | Path, n: int = 8
) -> bool:
    """Rows of originals above their reconstructions (likelihood means)."""
    n = min(n, x.shape[0])
    pairs = torch.stack([x[:n].float(), recon[:n].float()], dim=0)  # (2, n, ...)
    return save_grid(pairs.reshape(2 * n, *x.shape[1:]), path, nrow=n)


def plot_curves(rows: Sequence[dict], path: str | Path) -> None:
    """ELBO per datapoint against epoch: train objective and held-out ELBO."""
    announce_font_cache()  # the first figure may build matplotlib's font cache
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
    save_figure(fig, path)


def save_panels(
    panels: Sequence[tuple[str, torch.Tensor]], path: str | Path, nrow: int = 8
) -> bool:
    """Labelled picture grids stacked top to bottom: ``(title, x)`` with values in [0, 1].

    :returns: False (and writes nothing) if some ``x`` are not images.
    """
    announce_font_cache()  # the first figure may build matplotlib's font cache
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
    save_figure(fig, path)
    return True


@dataclass(frozen=True)
class LatentSummary:
    """What the latent pictures need, from an evaluation.

    :ivar means: ``(N, L)`` posterior means (the latent sites flattened, in guide order).
    :ivar kl_per_dim: ``(L,)`` mean KL per latent dimension (orders the traversals; ``nan``
        where a site's KL does not split by dimension, which then go by their activity).
    :ivar layout: ``[(site, event_shape)]``: how the ``L`` columns split into latent sites.
    :ivar labels: ``(N,)`` classes or ``(N, F)`` factors (the first is used), or ``None``.
    """

    means: torch.Tensor  # (N, L)
    kl_per_dim: torch.Tensor  # (L,)
    layout: Sequence[tuple[str, tuple[int, ...]]]
    labels: torch.Tensor | None = None
    label_names: Sequence[str] | None = None


def _rows(inputs: Sequence[torch.Tensor], n: int) -> tuple[torch.Tensor, ...]:
    """``n`` rows of each input, cycling through them: inputs for ``n`` draws."""
    return tuple(t[torch.arange(n, device=t.device) % len(t)] for t in inputs)


def write_pictures(
    vae,
    x: torch.Tensor,
    out_dir: str | Path,
    metrics: Sequence[dict] = (),
    *,
    seed: int = 0,
    preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
    latents: LatentSummary | None = None,
    inputs: Sequence[torch.Tensor] = (),
) -> dict[str, str]:
    """Write the pictures of a model into ``out_dir``: what a run directory shows after
    training, and, with ``latents``, what an evaluation adds.

    ================== ========================================================================
    file               contents
    ================== ========================================================================
    reconstructions    inputs (top row) and the observation's mean at their posterior means
    samples            the observation's mean at 64 prior draws of the latents
    sample-draws       draws of the observation at those latents (with ``latents``)
    traversals         one row per latent dimension with the highest KL: z_d from -3 to 3, the
                       other dimensions of its site at the first datapoint's posterior mean,
                       the other sites at their (conditional) prior means (``latents``)
    latents            posterior means E_q[z | x] (first two principal components when z > 2),
                       coloured by label (``latents``)
    curves             ELBO per epoch, from ``metrics``
    ================== ========================================================================

    :param x: data ``(N, *event_shape)`` as the model sees it, or raw data for ``preprocess``
        (applied to the first 8 datapoints, inside the seeded RNG).
    :param seed: the draws come from a forked RNG seeded with it; the global RNG is untouched.
    :param inputs: the model's extra inputs (labels) of ``x``: the reconstructions take the
        first 8 rows, the samples and traversals the first ones (cycled to 64).
    :returns: ``{name: file name}`` of the pictures written (image grids only for image data).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}

    def keep(name: str, ok: bool) -> None:
        if ok:
            written[name.removesuffix(".png")] = name

    ref = next(vae.parameters())
    with evaluation_mode(vae), torch.random.fork_rng(devices=[ref.device] if ref.is_cuda else []):
        torch.manual_seed(seed)
        xs = x[:8] if preprocess is None else preprocess(x[:8])
        recon = reconstruct(vae, xs, *_rows(inputs, len(xs)))
        keep(
            "reconstructions.png", save_reconstructions(xs, recon, out_dir / "reconstructions.png")
        )
        mean, draws = sample(vae, 64, *_rows(inputs, 64))
        keep("samples.png", save_grid(mean, out_dir / "samples.png"))
        if latents is not None:
            keep("sample-draws.png", save_grid(draws, out_dir / "sample-draws.png"))
            grid = traversal_grid(vae, latents, inputs)
            keep(
                "traversals.png",
                save_grid(grid, out_dir / "traversals.png", nrow=len(TRAVERSAL_VALUES)),
            )
    if latents is not None:
        save_latent_scatter(
            latents.means, latents.labels, latents.label_names, out_dir / "latents.png"
        )
        written["latents"] = "latents.png"
    if metrics:
        plot_curves(metrics, out_dir / "curves.png")
        written["curves"] = "curves.png"
    return written


def traversal_grid(
    vae, latents: LatentSummary, inputs: Sequence[torch.Tensor] = ()
) -> torch.Tensor:
    """The observation's means ``(rows * columns, *event_shape)``: row r varies the r-th
    highest-KL latent dimension over :data:`TRAVERSAL_VALUES` (dimensions whose KL does not
    split by dimension go by their activity), the other dimensions of its site at the first
    datapoint's posterior mean, the model's other latent sites at their (conditional) means."""
    ref = next(vae.parameters())
    activity = (
        latents.means.var(0) if len(latents.means) > 1 else torch.zeros_like(latents.kl_per_dim)
    )
    score = torch.where(torch.isnan(latents.kl_per_dim), activity, latents.kl_per_dim)
    dims = torch.argsort(score, descending=True)[:TRAVERSAL_DIMS]  # (rows,)
    values = TRAVERSAL_VALUES.to(ref)  # (cols,)
    owner = []  # per latent dimension: (its site, the site's first column, its event shape)
    for name, event in latents.layout:
        owner += [(name, len(owner), event)] * math.prod(event)
    z0 = latents.means[0].to(ref)  # (L,)
    first = tuple(t[:1] for t in inputs)  # the first datapoint's inputs
    rows = []
    for d in dims.tolist():
        name, start, event = owner[d]
        site = z0[start : start + math.prod(event)].expand(len(values), -1).clone()  # (cols, d)
        site[:, d - start] = values
        values_at = {name: site.reshape(len(values), *event)}
        rows.append(decode(vae, values_at, len(values), *_rows(first, len(values))))
    return torch.cat(rows)


def save_latent_scatter(
    means: torch.Tensor,
    labels: torch.Tensor | None,
    label_names: Sequence[str] | None,
    path: str | Path,
) -> None:
    """Posterior means in 2-D (PCA via SVD when L > 2; a histogram when L = 1), coloured by
    label when there are labels."""
    announce_font_cache()  # the first figure may build matplotlib's font cache
    from matplotlib.figure import Figure

    n = min(len(means), SCATTER_POINTS)
    z = means[:n].to(torch.float64)  # (n, L)
    colour = None
    colour_name = "label"
    if labels is not None and len(labels) >= n:
        lab = labels[:n]
        if lab.dim() > 1:
            lab = lab[:, 0]
            colour_name = label_names[0] if label_names else "first factor"
        colour = lab.to(torch.float64).numpy()
    fig = Figure(figsize=(5.5, 4.5), dpi=110)
    ax = fig.add_subplot()
    if z.shape[1] == 1:
        ax.hist(z[:, 0].numpy(), bins=50, color="tab:blue", alpha=0.8)
        ax.set_xlabel("E_q[z | x]")
        ax.set_ylabel("datapoints")
    else:
        if z.shape[1] == 2:
            xy, names = z, ("z_1", "z_2")
        else:
            centred = z - z.mean(0)
            _, s, vh = torch.linalg.svd(centred, full_matrices=False)
            xy = centred @ vh[:2].T  # (n, 2)
            share = (s**2 / (s**2).sum().clamp(min=1e-300))[:2].tolist()
            names = tuple(f"PC{i + 1} ({100 * f:.0f}% of variance)" for i, f in enumerate(share))
        xs, ys = xy[:, 0].numpy(), xy[:, 1].numpy()
        classes = sorted(set(colour.tolist())) if colour is not None else []
        if colour is None:
            ax.scatter(xs, ys, s=4, alpha=0.6, linewidths=0)
        elif len(classes) <= 10:  # classes: one colour each, with a legend
            for i, value in enumerate(classes):
                at = colour == value
                ax.scatter(
                    xs[at], ys[at], s=4, alpha=0.6, linewidths=0, color=f"C{i}", label=f"{value:g}"
                )
            ax.legend(title=colour_name, markerscale=3, fontsize="small")
        else:  # a continuous factor: a colour bar
            points = ax.scatter(xs, ys, s=4, alpha=0.6, linewidths=0, c=colour, cmap="viridis")
            fig.colorbar(points, ax=ax, label=colour_name)
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
    ax.set_title("posterior means E_q[z | x]")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
