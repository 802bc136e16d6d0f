"""The evaluation report: a terminal table, a Markdown page and an HTML page from
``summary.json`` (the pictures are :func:`pyro_vae.eval.plots.write_pictures`')."""

from __future__ import annotations

import html as _html
import math

from pyro_vae.eval.bounds import BITS_DEQUANTIZED, BITS_EXACT


def _num(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _kl_words(s: dict) -> str:
    """How the ELBO's KL was estimated, per site."""
    kinds = s.get("kl_kind") or {}
    mc = [name for name, kind in kinds.items() if kind == "monte-carlo"]
    if not mc:
        return "analytic KL"
    if len(mc) == len(kinds):
        return "Monte Carlo KL"
    return f"analytic KL, Monte Carlo at {', '.join(mc)}"


#: the bits/dim row's name for each ``bits_per_dim_kind`` (lower is better)
_BITS_LABELS = {
    BITS_EXACT: "bits/dim, exact: -log2 P(x) / D of the pmf over the 8-bit levels",
    BITS_DEQUANTIZED: "bits/dim, dequantization bound: 8 - log p(x) / (D ln 2)",
}


def metric_rows(s: dict) -> list[tuple[str, str]]:
    """``(metric, value)`` rows of the summary table (nats per datapoint, higher is better)."""
    k = s["iw_samples"]
    rows = [
        (
            f"log p(x), importance sampled, K = {k}",
            f"{_num(s['log_px'])} ± {_num(s['log_px_se'])} (SE over {s['num']} datapoints; "
            f"Monte Carlo SE {_num(s['log_px_mc_se'], 3)})",
        ),
        (
            "effective sample size (mean / median / min)",
            f"{_num(s['ess_mean'], 1)} / {_num(s['ess_median'], 1)} / {_num(s['ess_min'], 1)} of "
            f"{k}",
        ),
        (
            f"ELBO ({_kl_words(s)}, {s['elbo_particles']} particles)",
            f"{_num(s['elbo'])} ± {_num(s['elbo_se'])}",
        ),
        ("reconstruction E_q[log p(x | z)]", _num(s["recon"])),
        ("KL(q(z | x) || p(z))", _num(s["kl"])),
        ("log p(x) - ELBO", _num(s["log_px_minus_elbo"], 3)),
        (
            f"active units (Cov_x E_q[z_d] > {s['active_threshold']})",
            "n/a" if s["active_units"] is None else f"{s['active_units']} / {s['latent_dim']}",
        ),
        (
            _BITS_LABELS.get(s.get("bits_per_dim_kind"), "bits/dim"),
            f"{_num(s['bits_per_dim'], 4)} ± {_num(s['bits_per_dim_se'], 4)}"
            if s["bits_per_dim"] is not None
            else f"n/a: {s['bits_per_dim_reason']}",
        ),
        ("seconds", _num(s["seconds"], 1)),
        (
            "chunks (particles x datapoints)",
            f"{s['particle_chunk']} x {s['data_chunk']} within {s['memory_budget_mb']:g} MB",
        ),
    ]
    return rows


def text_table(s: dict) -> str:
    """The metric rows as aligned plain text, for the terminal."""
    rows = metric_rows(s)
    width = max(len(name) for name, _ in rows)
    head = (
        f"{s['which']}.pt of {s['run_dir']}, {s['split']} split, {s['num']} datapoints "
        f"({s['units']})"
    )
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
        *[
            f"| {d} | {_num(kl, 3)} | {_num(a, 4)} | {'yes' if on else 'no'} |"
            for d, kl, a, on in _dims_table(s)
        ],
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
        f'<figure><img src="{esc(path)}" alt="{esc(name)}"><figcaption>{esc(name)}'
        f"</figcaption></figure>"
        for name, path in s.get("pictures", {}).items()
    )
    return (
        '<!doctype html>\n<html><head><meta charset="utf-8">'
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
