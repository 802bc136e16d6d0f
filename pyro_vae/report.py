"""The evaluation report: pictures, a Markdown page and an HTML page from ``summary.json``.

:func:`write_pictures` draws what :func:`pyro_vae.evaluate.evaluate_run` links:

=================== ==========================================================================
file                contents
=================== ==========================================================================
reconstructions.png inputs (top row) and the likelihood means at their posterior means
samples.png         likelihood means at 64 prior draws z ~ N(0, I)
sample-draws.png    draws x ~ p(x | z) at those z
traversals.png      one row per latent dimension with the highest KL: z_d from -3 to 3, the
                    other dimensions at the first datapoint's posterior mean
latents.png         posterior means E_q[z | x] (first two principal components when z > 2),
                    coloured by label
curves.png          ELBO per epoch from ``metrics.jsonl``
=================== ==========================================================================

Matplotlib is used through :class:`~matplotlib.figure.Figure` only (no pyplot, no global state).
"""

from __future__ import annotations

import html as _html
import math
from pathlib import Path
from typing import Sequence

import torch

from pyro_vae import plots
from pyro_vae.model import evaluation_mode
from pyro_vae.model import VAE

#: latent dimensions shown in traversals.png, and the values each one takes
TRAVERSAL_DIMS = 8
TRAVERSAL_VALUES = torch.linspace(-3.0, 3.0, 9)
#: most points in the latent scatter
SCATTER_POINTS = 5000


def write_pictures(
    vae: VAE,
    x: torch.Tensor,
    means: torch.Tensor,
    kl_per_dim: torch.Tensor,
    labels: torch.Tensor | None,
    label_names: Sequence[str] | None,
    metrics: list[dict],
    out_dir: str | Path,
    seed: int = 0,
) -> dict[str, str]:
    """Write the evaluation pictures into ``out_dir``.

    :param x: evaluated data ``(N, *event_shape)`` as the model sees it.
    :param means: ``(N, L)`` posterior means.
    :param kl_per_dim: ``(L,)`` mean KL per latent dimension (orders the traversals).
    :param labels: ``(N,)`` classes or ``(N, F)`` factors (the first is used), or ``None``.
    :param metrics: rows of ``metrics.jsonl`` (no curves without them).
    :param seed: prior draws come from a forked RNG seeded with it.
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
        xs = x[:8]
        keep("reconstructions.png", plots.save_reconstructions(
            xs, vae.reconstruct(xs), out_dir / "reconstructions.png"))
        mean, draws = vae.sample(64)
        keep("samples.png", plots.save_grid(mean, out_dir / "samples.png"))
        keep("sample-draws.png", plots.save_grid(draws, out_dir / "sample-draws.png"))
        grid = traversal_grid(vae, means[0], kl_per_dim)
        keep("traversals.png", plots.save_grid(
            grid, out_dir / "traversals.png", nrow=len(TRAVERSAL_VALUES)))
    save_latent_scatter(means, labels, label_names, out_dir / "latents.png")
    written["latents"] = "latents.png"
    if metrics:
        plots.plot_curves(metrics, out_dir / "curves.png")
        written["curves"] = "curves.png"
    return written


def traversal_grid(vae: VAE, z0: torch.Tensor, kl_per_dim: torch.Tensor) -> torch.Tensor:
    """Likelihood means ``(rows * columns, *event_shape)``: row r varies the r-th highest-KL
    dimension over :data:`TRAVERSAL_VALUES`, the others stay at ``z0``."""
    ref = next(vae.parameters())
    dims = torch.argsort(kl_per_dim, descending=True)[:TRAVERSAL_DIMS]  # (rows,)
    values = TRAVERSAL_VALUES.to(ref)  # (cols,)
    z = z0.to(ref).expand(len(dims), len(values), -1).clone()  # (rows, cols, L)
    for row, d in enumerate(dims.tolist()):
        z[row, :, d] = values
    with torch.no_grad():
        params = vae.decoder(z.reshape(-1, z.shape[-1]))  # (rows * cols, *param_shape)
        return vae.likelihood.mean(params)


def save_latent_scatter(
    means: torch.Tensor,
    labels: torch.Tensor | None,
    label_names: Sequence[str] | None,
    path: str | Path,
) -> None:
    """Posterior means in 2-D (PCA via SVD when L > 2; a histogram when L = 1), coloured by
    label when there are labels."""
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
                ax.scatter(xs[at], ys[at], s=4, alpha=0.6, linewidths=0, color=f"C{i}",
                           label=f"{value:g}")
            ax.legend(title=colour_name, markerscale=3, fontsize="small")
        else:  # a continuous factor: a colour bar
            points = ax.scatter(xs, ys, s=4, alpha=0.6, linewidths=0, c=colour, cmap="viridis")
            fig.colorbar(points, ax=ax, label=colour_name)
        ax.set_xlabel(names[0])
        ax.set_ylabel(names[1])
    ax.set_title("posterior means E_q[z | x]")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)


# ----------------------------------------------------------------------- tables and pages


def _num(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def metric_rows(s: dict) -> list[tuple[str, str]]:
    """``(metric, value)`` rows of the summary table (nats per datapoint, higher is better)."""
    k = s["iw_samples"]
    rows = [
        (f"log p(x), importance sampled, K = {k}",
         f"{_num(s['log_px'])} ± {_num(s['log_px_se'])} (SE over {s['num']} datapoints; "
         f"Monte Carlo SE {_num(s['log_px_mc_se'], 3)})"),
        ("effective sample size (mean / median / min)",
         f"{_num(s['ess_mean'], 1)} / {_num(s['ess_median'], 1)} / {_num(s['ess_min'], 1)} of {k}"),
        (f"ELBO (analytic KL, {s['elbo_particles']} particles)",
         f"{_num(s['elbo'])} ± {_num(s['elbo_se'])}"),
        ("reconstruction E_q[log p(x | z)]", _num(s["recon"])),
        ("KL(q(z | x) || p(z))", _num(s["kl"])),
        ("log p(x) - ELBO", _num(s["log_px_minus_elbo"], 3)),
        (f"active units (Cov_x E_q[z_d] > {s['active_threshold']})",
         "n/a" if s["active_units"] is None else f"{s['active_units']} / {s['latent_dim']}"),
        ("bits/dim", f"{_num(s['bits_per_dim'], 4)} ± {_num(s['bits_per_dim_se'], 4)}"
         if s["bits_per_dim"] is not None else f"n/a: {s['bits_per_dim_reason']}"),
        ("seconds", _num(s["seconds"], 1)),
        ("chunks (particles x datapoints)",
         f"{s['particle_chunk']} x {s['data_chunk']} within {s['memory_budget_mb']:g} MB"),
    ]
    return rows


def text_table(s: dict) -> str:
    """The metric rows as aligned plain text, for the terminal."""
    rows = metric_rows(s)
    width = max(len(name) for name, _ in rows)
    head = (f"{s['which']}.pt of {s['run_dir']}, {s['split']} split, {s['num']} datapoints "
            f"({s['units']})")
    return "\n".join([head] + [f"  {name:<{width}}  {value}" for name, value in rows])


def _dims_table(s: dict) -> list[tuple[int, float, float | None, bool | None]]:
    activity = s.get("unit_activity") or [None] * len(s["kl_per_dim"])
    active = set(s.get("active_dims") or [])
    order = sorted(range(len(s["kl_per_dim"])), key=lambda d: -(s["kl_per_dim"][d] or 0.0))
    return [(d, s["kl_per_dim"][d], activity[d], d in active) for d in order]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a bare | would end the Markdown table cell


def markdown(s: dict) -> str:
    """``report.md``: the metric table, the pictures, and KL and activity per dimension."""
    lines = [
        f"# Evaluation of `{s['run_dir']}`",
        "",
        f"`{s['which']}.pt`, {s['split']} split ({s['num']} datapoints, D = {s['num_dims']}), "
        f"{s['likelihood']} likelihood, seed {s['seed']}, device {s['device']}. "
        f"Every figure is in {s['units']}.",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {_cell(name)} | {_cell(value)} |" for name, value in metric_rows(s)],
        "",
    ]
    for name, path in s.get("pictures", {}).items():
        lines += [f"## {name}", "", f"![{name}]({path})", ""]
    lines += [
        "## Latent dimensions (by KL)",
        "",
        "| dim | KL | Cov_x E_q[z_d] | active |",
        "|---|---|---|---|",
        *[f"| {d} | {_num(kl, 3)} | {_num(a, 4)} | {'yes' if on else 'no'} |"
          for d, kl, a, on in _dims_table(s)],
        "",
    ]
    return "\n".join(lines)


def html(s: dict) -> str:
    """``report.html``: the same content as :func:`markdown` as a standalone page."""
    esc = _html.escape
    rows = "".join(f"<tr><td>{esc(n)}</td><td>{esc(v)}</td></tr>" for n, v in metric_rows(s))
    dims = "".join(
        f"<tr><td>{d}</td><td>{_num(kl, 3)}</td><td>{_num(a, 4)}</td>"
        f"<td>{'yes' if on else 'no'}</td></tr>"
        for d, kl, a, on in _dims_table(s)
    )
    pics = "".join(
        f"<figure><img src=\"{esc(path)}\" alt=\"{esc(name)}\"><figcaption>{esc(name)}"
        f"</figcaption></figure>"
        for name, path in s.get("pictures", {}).items()
    )
    return (
        "<!doctype html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>Evaluation of {esc(s['run_dir'])}</title>"
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em}"
        "figure{display:inline-block;margin:1em}img{max-width:28em}</style></head><body>"
        f"<h1>Evaluation of <code>{esc(s['run_dir'])}</code></h1>"
        f"<p><code>{esc(s['which'])}.pt</code>, {esc(s['split'])} split, {s['num']} datapoints; "
        f"{esc(s['units'])}.</p>"
        f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>{pics}"
        "<h2>Latent dimensions (by KL)</h2>"
        f"<table><tr><th>dim</th><th>KL</th><th>Cov_x E_q[z_d]</th><th>active</th></tr>{dims}"
        "</table></body></html>\n"
    )
