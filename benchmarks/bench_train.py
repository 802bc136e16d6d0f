"""Seconds per training step: pyro-vae's step against a hand-written PyTorch VAE, side by side.

The floor is a plain PyTorch VAE with exactly pyro-vae's networks (the same encoder and decoder
modules, copied), a Bernoulli likelihood with logits (``binary_cross_entropy_with_logits``
summed over pixels) and the closed-form Gaussian KL, trained with the same fused Adam. It is
the only hand-written VAE loss in the repository, and exists to be raced. The pyro-vae step is
:class:`pyro_vae.train.TrainStep`, the object :func:`pyro_vae.train.fit` calls every step
(estimator loss, backward, gradient norm, non-finite guard, optimizer), with each
``--estimators`` and ``--capture`` mode.

Every case of a round trains on the same batches (rows of a device tensor picked by a random
permutation, binarized dynamically on the device), prepared before the clock starts; their
preparation is timed on its own. All cases run in one process, in interleaved rounds (each
round times every case for ``--steps`` steps, in a rotating order), so a slow patch of the
machine hits every case alike; the ratio to the floor is taken within each round and its
median reported with the interquartile range.

Then the time of a full epoch of :func:`pyro_vae.train.fit` over a 60,000 x 784 tensor (MNIST
size: the t10k images tiled six times) at batch 128, for ``--epoch-epochs`` epochs, with the
peak resident set size (and CUDA memory allocated) per epoch, which must not grow.

Besides its table, it prints one line per measured case::

    ratio <device> batch=<B> <estimator> <median ratio to the floor>

(the estimator gets a ``+<capture mode>`` suffix for modes other than the first).

Examples::

    .venv/bin/python benchmarks/bench_train.py                        # cpu (and cuda if present)
    .venv/bin/python benchmarks/bench_train.py --estimators meanfield --capture graph off compile
    .venv/bin/python benchmarks/bench_train.py --rounds 3 --steps 10 --epoch-epochs 0   # quick
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time

import pyro
import torch
import torch.nn.functional as F
from memory import MNIST_T10K, RSSSampler, peak_rss_mb

from pyro_vae.config import TrainConfig
from pyro_vae.data import Preprocess, load_data
from pyro_vae.infer.capture import CAPTURE_MODES
from pyro_vae.models import VAE, build_vae
from pyro_vae.train import TrainStep, fit

PARTICLES = {"meanfield": 1, "elbo": 1, "stl": 1, "iwae": 5, "renyi": 5, "dreg": 5}


class HandWrittenVAE:
    """The floor: pyro-vae's networks, and the loss written by hand (logits, analytic KL)."""

    def __init__(self, vae: VAE, lr: float):
        self.encoder = copy.deepcopy(vae.encoder)
        self.decoder = copy.deepcopy(vae.decoder)
        params = [*self.encoder.parameters(), *self.decoder.parameters()]
        self.optimizer = torch.optim.Adam(params, lr=lr, fused=True)

    def __call__(self, x: torch.Tensor, step: int) -> torch.Tensor:
        loc, scale = self.encoder(x)  # (B, z) each
        z = loc + scale * torch.randn_like(loc)  # (B, z)
        logits = self.decoder(z).reshape(x.shape)  # (B, 784): one parameter per pixel
        recon = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")  # -log p(x|z)
        kl = (0.5 * (scale.square() + loc.square() - 1) - scale.log()).sum()
        loss = (recon + kl) / x.shape[0]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _images(path: str, n: int) -> torch.Tensor:
    """``n`` uint8 images ``(n, 784)``: MNIST t10k tiled, or random levels without it."""
    try:
        split = load_data(path, test_size=0)
        base = split.train.reshape(len(split.train), -1)
        if base.dtype != torch.uint8:
            raise ValueError("not 8-bit")
    except (OSError, ValueError) as e:
        print(f"# {path}: {e}; timing on random 8-bit levels instead", file=sys.stderr)
        base = torch.randint(
            0, 256, (10_000, 784), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
        )
    reps = -(-n // len(base))
    return base.repeat(reps, 1)[:n].contiguous()


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, med, q3


def time_steps(args, device: torch.device, images: torch.Tensor) -> list[dict]:
    """Interleaved rounds of every case at each batch size; one row per case."""
    pre = Preprocess("dynamic")
    data = images.to(device)
    rows = []
    for batch in args.batch_sizes:
        torch.manual_seed(0)
        cases: dict[str, object] = {}
        base = build_vae((784,), "bernoulli", args.latent_dim, tuple(args.hidden)).to(device)
        cases["hand-written"] = HandWrittenVAE(base, args.lr)
        for mode in args.capture:
            for est in args.estimators:
                vae = copy.deepcopy(base)
                cfg = TrainConfig(
                    estimator=est,
                    particles=PARTICLES.get(est, 1),
                    lr=args.lr,
                    batch_size=batch,
                    device=device.type,
                    capture=mode,
                )
                label = est if mode == args.capture[0] else f"{est}+{mode}"
                cases[label] = TrainStep(vae, cfg, device)
        perm = torch.randperm(len(data), device=device)
        cursor = [0]

        def batch_x(cursor=cursor, perm=perm, batch=batch) -> torch.Tensor:
            if cursor[0] + batch > len(data):
                cursor[0] = 0
            idx = perm[cursor[0] : cursor[0] + batch]
            cursor[0] += batch
            return pre(data[idx])  # (B, 784) in {0, 1}, on the device

        def batches(steps: int) -> list[torch.Tensor]:
            # made before the clock starts: the ratio compares the steps, not the data
            # preparation both sides share (timed on its own below)
            return [batch_x() for _ in range(steps)]

        def run(step_fn, xs: list[torch.Tensor]) -> float:
            _sync(device)
            start = time.perf_counter()
            for i, x in enumerate(xs):
                step_fn(x, i + 1)
            _sync(device)
            return (time.perf_counter() - start) / len(xs)

        names = list(cases)
        memory = {}
        with pyro.validation_enabled(True):  # as fit() runs
            for name in names:  # warm-up: first calls record (and compile) the graphs
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                run(cases[name], batches(args.warmup))
                if device.type == "cuda":
                    memory[name] = torch.cuda.max_memory_allocated(device) / 2**20
            times: dict[str, list[float]] = {n: [] for n in names}
            ratios: dict[str, list[float]] = {n: [] for n in names}
            prep: list[float] = []
            for r in range(args.rounds):
                _sync(device)
                start = time.perf_counter()
                xs = batches(args.steps)  # the same batches for every case of the round
                _sync(device)
                prep.append((time.perf_counter() - start) / args.steps)
                order = names[r % len(names) :] + names[: r % len(names)]
                this = {n: run(cases[n], xs) for n in order}
                for n in names:
                    times[n].append(this[n])
                    ratios[n].append(this[n] / this["hand-written"])
        p1, pm, p3 = _quartiles(prep)
        rows.append(
            {
                "device": device.type,
                "batch": batch,
                "case": "data preparation",
                "ms": pm * 1e3,
                "ms_iqr": (p3 - p1) * 1e3,
                "ratio": None,
                "ratio_iqr": None,
                "mode": "gather + dynamic binarization, not in the steps",
                "cuda_max_allocated_mb": None,
            }
        )
        for n in names:
            t1, tm, t3 = _quartiles(times[n])
            r1, rm, r3 = _quartiles(ratios[n])
            step = cases[n]
            rows.append(
                {
                    "device": device.type,
                    "batch": batch,
                    "case": n,
                    "ms": tm * 1e3,
                    "ms_iqr": (t3 - t1) * 1e3,
                    "ratio": rm,
                    "ratio_iqr": r3 - r1,
                    "mode": getattr(getattr(step, "loss", None), "mode", "hand-written"),
                    "cuda_max_allocated_mb": memory.get(n),
                }
            )
        del cases
    return rows


def time_epochs(args, device: torch.device, images: torch.Tensor) -> dict:
    """Epochs of fit() over the MNIST-size tensor; seconds and peak memory per epoch."""
    torch.manual_seed(0)
    vae = build_vae((784,), "bernoulli", args.latent_dim, tuple(args.hidden))
    cfg = TrainConfig(
        estimator="meanfield",
        epochs=args.epoch_epochs,
        batch_size=128,
        lr=args.lr,
        device=device.type,
        quiet=True,
        capture=args.capture[0],
        log_every=50,
    )
    data = images.to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with RSSSampler(cuda=device.type == "cuda") as sampler:
        result = fit(vae, data, None, cfg, preprocess=Preprocess("dynamic"))
        end = time.perf_counter()
    seconds = [row["seconds"] for row in result.metrics]
    peaks, t = [], end
    for s in reversed(seconds):  # epoch windows, from the end (set-up belongs to none)
        peaks.append(sampler.peak(t - s, t))
        t -= s
    peaks.reverse()
    return {
        "device": device.type,
        "images": len(data),
        "seconds": seconds,
        "rss_mb": [p[0] for p in peaks],
        "cuda_allocated_mb": [p[1] for p in peaks] if device.type == "cuda" else None,
        "cuda_max_allocated_mb": (
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        ),
        "train_elbo": [row["train_elbo"] for row in result.metrics],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--data", default=str(MNIST_T10K), help="folder of MNIST idx files")
    p.add_argument(
        "--device",
        nargs="+",
        default=None,
        choices=("cpu", "cuda"),
        help="default: cpu, and cuda when available",
    )
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[128, 1024])
    p.add_argument(
        "--estimators",
        nargs="+",
        default=["meanfield", "elbo", "iwae", "dreg"],
        choices=sorted(PARTICLES),
        help="K = 5 for iwae, renyi and dreg",
    )
    p.add_argument(
        "--capture",
        nargs="+",
        default=["graph"],
        choices=CAPTURE_MODES.names(),
        help="pyro-vae step modes to time (the first is the plain case)",
    )
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=20, help="steps per case per round")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps per case first")
    p.add_argument("--latent-dim", type=int, default=50)
    p.add_argument("--hidden", type=int, nargs="+", default=[400])
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument(
        "--epoch-epochs", type=int, default=3, help="epochs of fit() over 60,000 x 784 (0: skip)"
    )
    p.add_argument("--epoch-images", type=int, default=60_000)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    if "cuda" in devices and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    images = _images(args.data, max(args.epoch_images, 10_000))
    print(
        f"# torch {torch.__version__}, pyro {pyro.__version__}, {platform.processor() or '?'}, "
        f"{torch.get_num_threads()} threads; MLP 784-{'-'.join(map(str, args.hidden))}-"
        f"{args.latent_dim}; {args.rounds} rounds x {args.steps} steps per case"
    )
    results = {"steps": [], "epochs": []}
    for name in devices:
        device = torch.device(name)
        if device.type == "cuda":
            print(f"# {torch.cuda.get_device_name(device)}")
        rows = time_steps(args, device, images[:10_000])
        results["steps"] += rows
        print(
            f"{'device':6} {'batch':>5} {'case':22} {'ms/step':>8} {'IQR':>6} "
            f"{'ratio':>6} {'IQR':>6}  how"
        )
        for r in rows:
            mem = (
                f", CUDA max {r['cuda_max_allocated_mb']:.0f} MB"
                if r["cuda_max_allocated_mb"] is not None
                else ""
            )
            ratio = "" if r["ratio"] is None else f"{r['ratio']:6.3f} {r['ratio_iqr']:6.3f}"
            print(
                f"{r['device']:6} {r['batch']:5d} {r['case']:22} {r['ms']:8.3f} "
                f"{r['ms_iqr']:6.3f} {ratio:13}  {r['mode']}{mem}"
            )
        for r in rows:
            if r["ratio"] is not None and r["case"] != "hand-written":
                print(f"ratio {r['device']} batch={r['batch']} {r['case']} {r['ratio']:.3f}")
        if args.epoch_epochs > 0:
            e = time_epochs(args, device, images[: args.epoch_images])
            results["epochs"].append(e)
            print(
                f"epoch {e['device']} {e['images']}x784 batch=128 meanfield: seconds "
                + " ".join(f"{s:.2f}" for s in e["seconds"])
                + "; peak RSS MB per epoch "
                + " ".join(f"{m:.0f}" for m in e["rss_mb"])
                + (
                    ""
                    if e["cuda_allocated_mb"] is None
                    else "; CUDA allocated MB per epoch "
                    + " ".join(f"{m:.0f}" for m in e["cuda_allocated_mb"])
                    + f" (max {e['cuda_max_allocated_mb']:.0f})"
                )
            )
    print(f"peak RSS of the process: {peak_rss_mb():.0f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
