"""``pitfalls.md``: the table of every trained program, and a section per pitfall."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from pyro_vae.apps.pitfalls.catalogue import PITFALLS
from pyro_vae.infer import ESTIMATORS

if TYPE_CHECKING:  # the runner writes its results through this module
    from pyro_vae.apps.pitfalls.runner import PitfallsConfig, ProgramResult


def _cell(value, digits: int = 2) -> str:
    if value is None:
        return "—"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def pitfalls_table(results: Sequence[ProgramResult], iw_samples: int) -> str:
    """The Markdown table: one line per program, the mistake above its correct program."""
    head = (
        "| pitfall | program | own objective | ELBO | KL | active units | "
        f"log p(x), IS K={iw_samples} | ESS | bits/dim | why |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        pitfall = PITFALLS.get(r.pitfall)
        first = r.role == "mistake"
        label = f"**{r.pitfall}**" if first else ""
        why = pitfall.why if first else ""
        if r.refused is not None:
            cells = [f"refused at step {r.refused_step}"] + ["—"] * 6
            why = f"{why}: `{r.refused}`"
        else:
            log_px = (
                f"{r.log_px:.2f} ± {r.log_px_se:.2f}"
                if r.log_px_se is not None
                else (_cell(r.log_px))
            )
            cells = [
                _cell(r.objective),
                _cell(r.elbo),
                _cell(r.kl),
                _cell(r.active_units),
                log_px,
                _cell(r.ess_median, 1),
                _cell(r.bits_per_dim, 3),
            ]
        lines.append("| " + " | ".join([label, f"{r.role}: {r.program}", *cells, why]) + " |")
    return "\n".join(lines)


def pitfalls_markdown(cfg: PitfallsConfig, results: Sequence[ProgramResult], facts: dict) -> str:
    """``pitfalls.md``: settings, units, the table, and a section per pitfall."""
    D = facts["num_dims"]
    model, train = cfg.run.model, cfg.run.train
    hidden = "-".join(map(str, model.hidden))
    estimator = ESTIMATORS.get(train.estimator).description.split(":")[0]
    parts = [
        f"""# The classic VAE loss mistakes, as the Pyro programs they are

Data: `{cfg.run.data.dataset}`, {facts["num_train"]} training and {facts["num_test"]} held-out \
datapoints of shape {tuple(facts["event_shape"])} (D = {D}). Every program: MLP \
{D}-{hidden}-{model.latent_dim} (decoder mirrored), Adam (lr {train.lr}), batch \
{train.batch_size}, {train.epochs} epochs of `{estimator}` on its own model and guide through \
`pyro_vae.train.fit`, seed {train.seed}: the mistake and the correct program start from the same \
networks and see the same batches. Torch threads: {facts["torch_threads"]}. Wall time: \
{facts["seconds"] / 60:.1f} min.

Every number is **nats per datapoint**, summed over the D = {D} dimensions, higher is better, \
on the held-out data, **under the correct model**: the trained networks read by the model \
the data call for, x-site scale 1, beta = 1 (a BCE-trained decoder as a continuous Bernoulli \
with the same logits; a fixed-sigma Normal is already normalized and is judged as it is).

- own objective: the held-out value of the objective the program was trained on, as its author \
sees it (scaled by 1/D, or unnormalized); not comparable across rows.
- ELBO, KL: analytic KL, reconstruction term with {cfg.elbo_particles} particles, on all \
{facts["num_test"]} held-out datapoints; active units: Cov_x(E_q[z_d | x]) > 0.01.
- log p(x): importance sampling with K = {cfg.iw_samples} on the first \
{facts["num_test_iw"]} held-out datapoints, mean ± standard error over datapoints; ESS: the \
median effective sample size of the K weights (near 1: the guide is a poor proposal under the \
correct model, and log p(x) a loose lower bound).
- bits/dim = 8 - log p(x) / (D ln 2), for densities on dequantized 8-bit data.
- pixel-mean and logvar-std train a Bernoulli on dynamically binarized data (log p(x) <= 0 is \
a log-probability); bce-grey and mse train densities on dequantized grey levels (log p(x) can be \
positive: the negative loss of a density is no bug).

{pitfalls_table(results, cfg.iw_samples)}
"""
    ]
    by_name: dict[str, list[ProgramResult]] = {}
    for r in results:
        by_name.setdefault(r.pitfall, []).append(r)
    for name, rows in by_name.items():
        p = PITFALLS.get(name)
        section = [f"## {name}: {p.title}", "", p.details, ""]
        section.append(f"- mistake: {p.mistake_program}")
        section.append(f"- correct: {p.correct_program}")
        for r in rows:
            if r.refused is not None:
                section.append(
                    f"- the {r.role} program was refused at step {r.refused_step} by Pyro's "
                    f"validation: `{r.refused}`"
                )
        picture = next((r.picture for r in rows if r.picture), None)
        if picture:
            section += ["", f"![{name}]({picture})"]
        parts.append("\n".join(section) + "\n")
    return "\n".join(parts)
