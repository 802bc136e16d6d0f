"""Seconds and peak memory of importance-sampled log p(x) (K = 5000) on the MNIST test images.

Builds the MLP VAE of Burda et al.'s comparisons (784-400-50, Bernoulli likelihood), trains it
for ``--train-epochs`` quick epochs so the importance weights are those of a real model (or
loads a run with ``--run DIR``; the quick training sees the evaluated images, so its log p(x)
is no test score), then times :func:`pyro_vae.eval.importance_log_px` alone
on ``--num`` statically binarized images of ``../shared/data/mnist-t10k``.

Memory: on CPU the peak resident set size of the process during the evaluation (``VmHWM``,
reset before it through ``/proc/self/clear_refs`` where the kernel allows); on CUDA
``torch.cuda.max_memory_allocated``. Both are compared with the budget the chunks were sized
for.

**The floor** (``--race-num`` images, ``--race-rounds`` interleaved rounds, on the same model):
a hand-written importance-sampling loop of the same network, K and chunking (the chunk sizes
:func:`importance_log_px` chose), under ``no_grad``: ``z = loc + scale * eps`` with
``torch.randn``, the decoder, the Bernoulli log-likelihood as
``binary_cross_entropy_with_logits``, the standard-Normal prior and the Gaussian guide's log
densities written out, and the same float64 running ``logaddexp`` of ``logsumexp``; it is the
only hand-written importance sampler in the repository, and exists to be raced. Each round
times both on the same images, alternating which goes first, and prints::

    eval-ratio <device> K=<K> <median ratio of importance_log_px to the hand-written loop>
    eval-ratio-same-density <device> K=<K> <the same, against the loop written with
        pyro-vae's own Bernoulli form, x . l - sum softplus(l), instead of the cross-entropy>

The second line says how much of the lead is the log-likelihood's form (the cross-entropy
takes four passes over the particles' logits, the softplus form two) and how much is the rest.

**Roofline**: the multiply-adds a pair costs (the decoder's matrix products; the encoder runs
once per datapoint, not per pair, and is left out), times the pairs per second, against this
machine's measured matrix-multiply rate (the best of a few ``torch.mm`` of the decoder's shape,
``--peak-rows`` x hidden x 784, in float32)::

    eval-roofline <device> <GFLOP/s achieved> <GFLOP/s peak> <fraction>

Examples::

    .venv/bin/python benchmarks/bench_evaluate.py                       # 10,000 x K = 5000
    .venv/bin/python benchmarks/bench_evaluate.py --num 1000            # a tenth of it
    .venv/bin/python benchmarks/bench_evaluate.py --device cuda --memory-budget-mb 8192
    .venv/bin/python benchmarks/bench_evaluate.py --num 1000 --race-rounds 5
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time

import pyro
import torch
import torch.nn.functional as F
from memory import MNIST_T10K, peak_rss_mb, proc_status_mb, reset_peak_rss

from pyro_vae.config import TrainConfig, resolve_device
from pyro_vae.data import Preprocess, load_data
from pyro_vae.eval import importance_log_px
from pyro_vae.eval.bounds import chunks
from pyro_vae.models import build_vae
from pyro_vae.runs import load_run
from pyro_vae.train import fit

LOG_2PI = math.log(2 * math.pi)


@torch.no_grad()
def hand_written_log_px(
    vae,
    x: torch.Tensor,
    num_samples: int,
    particle_chunk: int,
    data_chunk: int,
    density: str = "bce",
) -> torch.Tensor:
    """The floor: ``log (1/K) sum_k p(x, z_k) / q(z_k | x)`` per datapoint, written by hand for
    a VAE with a standard-Normal prior, a Gaussian guide and Bernoulli logits, in the chunks
    given; ``(N,)`` float64.

    :param density: how the Bernoulli log-likelihood is written: ``"bce"``, minus
        ``binary_cross_entropy_with_logits`` (what hand-written VAEs use), or ``"softplus"``,
        ``x . l - sum softplus(l)``, the form pyro-vae's Bernoulli takes without autograd.
    """
    n = len(x)
    lse = torch.full((n,), -math.inf, dtype=torch.float64, device=x.device)
    lse2 = torch.full_like(lse, -math.inf)
    for n0, n1 in chunks(n, data_chunk):
        xb = x[n0:n1].reshape(n1 - n0, -1)  # (b, D)
        loc, scale = vae.encoder(x[n0:n1])  # (b, z) each
        log_scale = scale.log().sum(-1)  # (b,)
        for k0, k1 in chunks(num_samples, particle_chunk):
            eps = torch.randn(k1 - k0, *loc.shape, device=x.device)  # (k, b, z)
            z = loc + scale * eps
            logits = vae.decoder(z.reshape(-1, z.shape[-1])).reshape(k1 - k0, n1 - n0, -1)
            if density == "softplus":
                log_px_z = torch.einsum("kbd,bd->kb", logits, xb) - F.softplus(logits).sum(-1)
            else:
                log_px_z = -F.binary_cross_entropy_with_logits(
                    logits, xb.expand_as(logits), reduction="none"
                ).sum(-1)  # (k, b)
            log_pz = -0.5 * (z.square().sum(-1) + z.shape[-1] * LOG_2PI)
            log_qz = -0.5 * (eps.square().sum(-1) + z.shape[-1] * LOG_2PI) - log_scale
            log_w = (log_px_z + log_pz - log_qz).to(torch.float64)  # (k, b)
            lse[n0:n1] = torch.logaddexp(lse[n0:n1], torch.logsumexp(log_w, 0))
            lse2[n0:n1] = torch.logaddexp(lse2[n0:n1], torch.logsumexp(2 * log_w, 0))
    return lse - math.log(num_samples)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> tuple[float, object]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def matmul_peak_gflops(device: torch.device, rows: int, hidden: int, cols: int) -> float:
    """The best float32 rate of ``(rows, hidden) @ (hidden, cols)`` products here, GFLOP/s."""
    a = torch.randn(rows, hidden, device=device)
    b = torch.randn(hidden, cols, device=device)
    torch.mm(a, b)
    best = math.inf
    for _ in range(5):
        seconds, _ = _timed(lambda: torch.mm(a, b), device)
        best = min(best, seconds)
    return 2 * rows * hidden * cols / best / 1e9


def decoder_flops_per_pair(vae) -> int:
    """Multiply-adds x 2 of the decoder's linear layers for one particle (the matrix products
    the roofline counts)."""
    return sum(2 * m.in_features * m.out_features for m in vae.decoder.modules() if
               isinstance(m, torch.nn.Linear))  # fmt: skip


def race(vae, x: torch.Tensor, args, device: torch.device) -> dict:
    """``importance_log_px`` against the hand-written loop on the same images and chunks."""
    first = importance_log_px(
        vae, x, args.iw_samples, memory_budget_mb=args.memory_budget_mb, seed=args.seed,
        quiet=True,
    )  # fmt: skip
    k_chunk, b_chunk = first.particle_chunk, first.data_chunk
    results = {}
    cases = {
        "pyro-vae": lambda: importance_log_px(
            vae, x, args.iw_samples, memory_budget_mb=args.memory_budget_mb, seed=args.seed,
            quiet=True, particle_chunk=k_chunk, data_chunk=b_chunk,
        ).log_px,
        "hand-written": lambda: hand_written_log_px(vae, x, args.iw_samples, k_chunk, b_chunk),
        "hand-written-softplus": lambda: hand_written_log_px(
            vae, x, args.iw_samples, k_chunk, b_chunk, density="softplus"
        ),
    }  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(args.race_rounds):
        order = list(cases) if r % 2 == 0 else list(cases)[::-1]
        for name in order:
            seconds, results[name] = _timed(cases[name], device)
            times[name].append(seconds)
    ratios = [a / b for a, b in zip(times["pyro-vae"], times["hand-written"])]
    same = [a / b for a, b in zip(times["pyro-vae"], times["hand-written-softplus"])]
    return {
        "race_num": len(x),
        "race_particle_chunk": k_chunk,
        "race_data_chunk": b_chunk,
        "race_seconds_pyro_vae": round(statistics.median(times["pyro-vae"]), 3),
        "race_seconds_hand_written": round(statistics.median(times["hand-written"]), 3),
        "race_ratio": round(statistics.median(ratios), 3),
        "race_ratios": [round(v, 3) for v in ratios],
        "race_seconds_hand_written_softplus": round(
            statistics.median(times["hand-written-softplus"]), 3
        ),
        "race_ratio_same_density": round(statistics.median(same), 3),
        # the two estimate one number from different particles: they agree to Monte Carlo error
        "race_log_px_pyro_vae": round(results["pyro-vae"].mean().item(), 3),
        "race_log_px_hand_written": round(results["hand-written"].mean().item(), 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data", default=str(MNIST_T10K), help="folder of MNIST idx files")
    p.add_argument("--run", default=None, help="evaluate best.pt of this run instead")
    p.add_argument("--num", type=int, default=10000, help="test images to evaluate")
    p.add_argument("--iw-samples", type=int, default=5000, help="K")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    p.add_argument("--memory-budget-mb", type=float, default=1024.0)
    p.add_argument(
        "--train-epochs",
        type=int,
        default=1,
        help="quick training epochs before timing (0: an untrained model)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--race-num", type=int, default=200, help="images of the race with the hand-written loop"
    )
    p.add_argument("--race-rounds", type=int, default=3, help="rounds of the race (0: skip)")
    p.add_argument("--peak-rows", type=int, default=20000, help="rows of the peak matmul")
    args = p.parse_args(argv)

    device = resolve_device(args.device)
    pyro.set_rng_seed(args.seed)
    split = load_data(args.data, test_size=0)  # all images in one part
    images = split.train if len(split.train) else split.test
    binary = (
        Preprocess("static", seed=args.seed)
        .prepare(type(split)(name=split.name, train=images, test=images[:0]))
        .train
    )  # (10000, 1, 28, 28) float32 0/1, one seeded draw
    x = binary[: args.num]
    if args.run:
        vae, _ = load_run(args.run, "best", device=str(device))
        if tuple(vae.event_shape) != tuple(x.shape[1:]):
            raise SystemExit(
                f"the run models {tuple(vae.event_shape)}, the data are {tuple(x.shape[1:])}"
            )
    else:
        vae = build_vae(x.shape[1:], "bernoulli", latent_dim=50, hidden=(400,))
        if args.train_epochs:
            # on all the images, evaluated ones included: this times, it does not score
            fit(
                vae,
                binary,
                None,
                TrainConfig(
                    epochs=args.train_epochs, batch_size=100, quiet=True, device=str(device)
                ),
            )
    vae.to(device)
    x = x.to(device)

    rss_before = proc_status_mb("VmRSS")
    reset = reset_peak_rss()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base_cuda = torch.cuda.memory_allocated(device)
    start = time.perf_counter()
    r = importance_log_px(
        vae, x, args.iw_samples, memory_budget_mb=args.memory_budget_mb, seed=args.seed, quiet=True
    )
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start

    pairs = len(x) * args.iw_samples
    out = {
        "device": str(device),
        "cpu": platform.processor() or platform.machine(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "num": len(x),
        "iw_samples": args.iw_samples,
        "seconds": round(seconds, 2),
        "pairs_per_second": round(pairs / seconds),
        "seconds_for_10000_x_5000": round(seconds * 10000 * 5000 / pairs, 1),
        "log_px": round(r.mean, 3),
        "log_px_se": round(r.se, 3),
        "ess_median": round(r.ess.median().item(), 1),
        "memory_budget_mb": args.memory_budget_mb,
        "particle_chunk": r.particle_chunk,
        "data_chunk": r.data_chunk,
        "num_chunks": r.num_chunks,
        "estimated_chunk_mb": round(r.particle_chunk * r.data_chunk * r.bytes_per_pair / 2**20, 1),
    }
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        out["cuda_peak_allocated_mb"] = round(peak / 2**20, 1)
        out["cuda_peak_above_baseline_mb"] = round((peak - base_cuda) / 2**20, 1)
    peak_rss = peak_rss_mb()
    out["peak_rss_mb"] = round(peak_rss, 1)
    out["rss_before_mb"] = None if rss_before is None else round(rss_before, 1)
    out["peak_rss_reset"] = reset  # False: the peak includes loading and training
    if rss_before is not None and reset:
        out["peak_rss_above_baseline_mb"] = round(peak_rss - rss_before, 1)
    print(
        f"{pairs:,} particle x datapoint pairs in {seconds:.1f} s on {device} "
        f"({out['pairs_per_second']:,}/s; 10,000 x K=5000 would take "
        f"~{out['seconds_for_10000_x_5000']:.0f} s)"
    )
    print(
        f"log p(x) = {r.mean:.2f} ± {r.se:.2f} nats per datapoint, median ESS "
        f"{out['ess_median']} of {args.iw_samples}"
    )
    print(
        f"chunks {r.particle_chunk} particles x {r.data_chunk} datapoints "
        f"(estimate {out['estimated_chunk_mb']} MB, budget {args.memory_budget_mb:g} MB); "
        f"peak RSS {out['peak_rss_mb']} MB"
        + (
            f", {out['peak_rss_above_baseline_mb']} MB above the {out['rss_before_mb']} MB before"
            if "peak_rss_above_baseline_mb" in out
            else ""
        )
        + (f"; CUDA peak {out['cuda_peak_allocated_mb']} MB" if device.type == "cuda" else "")
    )
    flops = decoder_flops_per_pair(vae)
    peak = matmul_peak_gflops(device, args.peak_rows, *_decoder_shape(vae))
    achieved = out["pairs_per_second"] * flops / 1e9
    out.update(
        {
            "flops_per_pair": flops,
            "gflops_achieved": round(achieved, 1),
            "gflops_matmul_peak": round(peak, 1),
            "roofline_fraction": round(achieved / peak, 3),
        }
    )
    print(
        f"roofline: {flops / 1e6:.2f} MFLOP per pair (the decoder's matrix products) x "
        f"{out['pairs_per_second']:,} pairs/s = {achieved:.1f} GFLOP/s, against "
        f"{peak:.1f} GFLOP/s measured for a {args.peak_rows} x {_decoder_shape(vae)[0]} x "
        f"{_decoder_shape(vae)[1]} float32 matmul here ({achieved / peak:.0%})"
    )
    print(f"eval-roofline {device.type} {achieved:.1f} {peak:.1f} {achieved / peak:.3f}")
    if args.race_rounds > 0:
        out.update(race(vae, binary[: args.race_num].to(device), args, device))
        print(
            f"race on {out['race_num']} images, chunks {out['race_particle_chunk']} x "
            f"{out['race_data_chunk']}: importance_log_px {out['race_seconds_pyro_vae']} s, "
            f"hand-written {out['race_seconds_hand_written']} s (log p(x) "
            f"{out['race_log_px_pyro_vae']} and {out['race_log_px_hand_written']})"
        )
        print(
            f"hand-written with pyro-vae's Bernoulli form (x . l - sum softplus(l)): "
            f"{out['race_seconds_hand_written_softplus']} s"
        )
        print(f"eval-ratio {device.type} K={args.iw_samples} {out['race_ratio']:.3f}")
        print(
            f"eval-ratio-same-density {device.type} K={args.iw_samples} "
            f"{out['race_ratio_same_density']:.3f}"
        )
    print(json.dumps(out))
    return 0 if math.isfinite(r.mean) else 1


def _decoder_shape(vae) -> tuple[int, int]:
    """``(hidden, out)`` of the decoder's largest linear layer: the peak matmul's shape."""
    layers = [m for m in vae.decoder.modules() if isinstance(m, torch.nn.Linear)]
    big = max(layers, key=lambda m: m.in_features * m.out_features)
    return big.in_features, big.out_features


if __name__ == "__main__":
    sys.exit(main())
