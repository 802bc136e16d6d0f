"""Evaluation of a trained model: bounds on log p(x), the latent space, gradient statistics,
pictures and the report.

Every number is per datapoint, in nats, higher is better, and comes from the Pyro model and
guide: nothing here writes down a density.
"""

from pyro_vae.eval.bounds import (
    DEFAULT_MEMORY_BUDGET_MB,
    ElboTerms,
    ImportanceResult,
    bits_per_dim,
    bits_per_dim_figures,
    bytes_per_pair,
    choose_chunks,
    elbo_terms,
    evaluate_elbo,
    exact_bits_per_dim,
    importance_log_px,
)
from pyro_vae.eval.gradients import GradientStats, gradient_snr, plot_snr, snr_table
from pyro_vae.eval.latents import ACTIVE_THRESHOLD, ActiveUnits, active_units, posterior_means
from pyro_vae.eval.noise import CounterNoise, counter_hash, counter_uniform

__all__ = [
    "ACTIVE_THRESHOLD",
    "ActiveUnits",
    "CounterNoise",
    "DEFAULT_MEMORY_BUDGET_MB",
    "ElboTerms",
    "GradientStats",
    "ImportanceResult",
    "active_units",
    "bits_per_dim",
    "bits_per_dim_figures",
    "bytes_per_pair",
    "choose_chunks",
    "counter_hash",
    "counter_uniform",
    "elbo_terms",
    "evaluate_elbo",
    "exact_bits_per_dim",
    "gradient_snr",
    "importance_log_px",
    "plot_snr",
    "posterior_means",
    "snr_table",
]
