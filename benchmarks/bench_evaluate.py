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

Examples::

    .venv/bin/python benchmarks/bench_evaluate.py                       # 10,000 x K = 5000
    .venv/bin/python benchmarks/bench_evaluate.py --num 1000            # a tenth of it
    .venv/bin/python benchmarks/bench_evaluate.py --device cuda --memory-budget-mb 8192
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time

import pyro
import torch
from memory import MNIST_T10K, peak_rss_mb, proc_status_mb, reset_peak_rss

from pyro_vae.config import TrainConfig, resolve_device
from pyro_vae.data import Preprocess, load_data
from pyro_vae.eval import importance_log_px
from pyro_vae.models import build_vae
from pyro_vae.runs import load_run
from pyro_vae.train import fit


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
    print(json.dumps(out))
    return 0 if math.isfinite(r.mean) else 1


if __name__ == "__main__":
    sys.exit(main())
