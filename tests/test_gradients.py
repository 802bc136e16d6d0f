"""Gradient variance and SNR (:mod:`pyro_vae.eval.gradients`): the Rainforth et al. effect,
and the summary of the draws."""

import math

import pytest
import torch

from pyro_vae.eval.gradients import gradient_snr, plot_snr, snr_table
from pyro_vae.infer.estimators import make_estimator

from linear_gaussian import make_problem, make_vae

SIGMA = 0.5


def test_rainforth_effect_iwae_encoder_snr_falls_with_k_and_dregs_does_not():
    W, b, x = make_problem(sigma=SIGMA, n=64)
    vae = make_vae(W, b, SIGMA, loc_shift=0.4, scale_factor=1.6)
    ks = (1, 10, 100)
    rows = gradient_snr(vae, x, ["iwae", "dreg"], ks, R=400, groups={"encoder": vae.encoder})
    snr = {(r.estimator, r.K): (r.snr, r.snr_se) for r in rows}
    # R is large enough that every SNR is known to within 20% (se is an upper bound)
    for key, (s, se) in snr.items():
        assert se / s < 0.2, (key, s, se)

    def log_ratio(est, k_lo, k_hi):
        (s1, se1), (s2, se2) = snr[(est, k_lo)], snr[(est, k_hi)]
        return math.log(s2 / s1), math.hypot(se1 / s1, se2 / s2)

    # IWAE: O(1/sqrt(K)) predicts a factor 0.32 per decade; require < 0.6 with 3 se to spare
    for k_lo, k_hi in [(1, 10), (10, 100)]:
        r, se = log_ratio("iwae", k_lo, k_hi)
        assert r + 3 * se < math.log(0.6), (k_lo, k_hi, math.exp(r), se)
    # DReG: no decrease from K = 1 to K = 100 (at least 0.8 of the K = 1 SNR, 3 se to spare)
    r, se = log_ratio("dreg", 1, 100)
    assert r - 3 * se > math.log(0.8), (math.exp(r), se)


def test_gradient_snr_summarizes_the_draws():
    W, b, x = make_problem(sigma=SIGMA)
    vae = make_vae(W, b, SIGMA, loc_shift=0.3, scale_factor=0.7)
    R = 7
    rows = gradient_snr(vae, x, "iwae", [3], R=R, seed=11)
    assert [(r.estimator, r.K, r.group) for r in rows] == [
        ("iwae", 3, "encoder"),
        ("iwae", 3, "decoder"),
    ]
    # the same draws by hand: seed 11 in a forked RNG, one gradient per draw
    groups = {
        "encoder": list(vae.encoder.parameters()),
        "decoder": list(vae.decoder.parameters()) + list(vae.likelihood.parameters()),
    }
    est = make_estimator("iwae", 3)
    torch.manual_seed(11)
    draws = {g: [] for g in groups}
    for _ in range(R):
        loss = est.differentiable_loss(vae.model, vae.guide, x) / len(x)
        for g, params in groups.items():
            grads = torch.autograd.grad(loss, params, retain_graph=True)
            draws[g].append(torch.cat([t.reshape(-1) for t in grads]))
    for row in rows:
        d = torch.stack(draws[row.group])  # (R, P)
        assert row.num_params == d.shape[1] and row.draws == R
        assert row.snr == pytest.approx((d.mean(0).abs() / d.std(0)).mean().item(), rel=1e-9)
        assert row.variance == pytest.approx(d.var(0).mean().item(), rel=1e-9)
        assert 0 < row.snr_se < row.snr
    table = snr_table(rows)
    assert table.splitlines()[2].startswith("| iwae | 3 | ")
    fig = plot_snr(rows)
    assert [ax.get_xscale() for ax in fig.axes] == ["log", "log"]
    with pytest.raises(ValueError, match="R must be >= 2"):
        gradient_snr(vae, x, "iwae", [3], R=1)
