"""Seconds per training step: pyro-vae's step against a hand-written PyTorch VAE, side by side.

The floor is a plain PyTorch VAE with exactly pyro-vae's networks (the same encoder and decoder
modules, copied), a Bernoulli likelihood with logits (``binary_cross_entropy_with_logits``
summed over pixels) and the closed-form Gaussian KL, trained with the same fused Adam. It is
the only hand-written VAE loss in the repository, and exists to be raced. The pyro-vae step is
:class:`pyro_vae.train.TrainStep`, the object :func:`pyro_vae.train.fit` calls every step
(estimator loss, backward, non-finite guard over every gradient, optimizer), with each
``--estimators`` and ``--capture`` mode.

Every case of a round trains on the same batches (rows of a device tensor picked by a random
permutation, binarized dynamically on the device), prepared before the clock starts; their
preparation is timed on its own. All cases run in one process, in interleaved rounds (each
round times every case for ``--steps`` steps, in a rotating order), so a slow patch of the
machine hits every case alike; the ratio to the floor is taken within each round and its
median reported with the interquartile range.

**Epochs** (``--epoch-rounds``): a whole epoch over a 60,000 x 784 uint8 tensor on the device
(MNIST size: the t10k images tiled six times) at each batch size, batch preparation and
optimizer included. pyro-vae's epoch is :func:`pyro_vae.train.fit` with its defaults (the
second epoch of a two-epoch run, so the recording of the graph on the first batch is not in
it; the first epoch's extra seconds and the set-up before it are reported on their own), or
with each capture mode of ``--epoch-capture`` (``compile``: its compilation is the first
epoch's extra seconds). The floor is a hand-written eager epoch: a random permutation on the
device, each batch gathered from the device tensor and binarized with
``torch.bernoulli(x / 255)``, the hand-written step, the loss summed on the device and read
once at the end. A second hand-written epoch prepares its batches with pyro-vae's
:class:`~pyro_vae.data.Preprocess` instead, which tells the part of the ratio the preparation
makes from the part the step makes. Rounds rotate the order.

**Models** (``--models``): for each built-in model (:data:`pyro_vae.models.MODELS`), its
:class:`~pyro_vae.train.TrainStep` with the recorded graph against the same step running the
model's own Pyro program every step (``capture="off"``), interleaved as above.

Then the time of a full epoch of :func:`pyro_vae.train.fit` over the same tensor at batch 128,
for ``--epoch-epochs`` epochs, with the peak resident set size (and CUDA memory allocated) per
epoch, which must not grow.

Besides its tables, it prints one machine-readable line per measured case::

    ratio <device> batch=<B> <estimator> <median ratio to the floor>
    epoch-ratio <device> batch=<B> <estimator> <median ratio to the hand-written epoch>
    epoch-ratio-same-prep <device> batch=<B> <estimator> <median ratio, pyro-vae's preparation>
    model-ratio <device> batch=<B> <model> <median ratio of the graph to the Pyro program>
    setup <device> batch=<B> <case> <seconds of the first step: recording, compilation>

(the estimator gets a ``+<capture mode>`` suffix for modes other than the first, and in the
epoch lines for modes other than fit's default). A
``--capture compile`` case reports its compilation in the ``setup`` line; torch keeps compiled
code in its cache (``TORCHINDUCTOR_CACHE_DIR``, by default under the system's temporary
folder), so a second run of the same shapes loads it instead of compiling again.

Examples::

    .venv/bin/python benchmarks/bench_train.py                        # cpu (and cuda if present)
    .venv/bin/python benchmarks/bench_train.py --estimators meanfield --capture graph off compile
    .venv/bin/python benchmarks/bench_train.py --rounds 3 --steps 10 --epoch-epochs 0   # quick
    .venv/bin/python benchmarks/bench_train.py --rounds 0 --models --epoch-epochs 0  # epochs only
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable

import pyro
import torch
import torch.nn.functional as F
from memory import MNIST_T10K, RSSSampler, peak_rss_mb

from pyro_vae.config import TrainConfig
from pyro_vae.data import Preprocess, load_data
from pyro_vae.infer.capture import CAPTURE_MODES
from pyro_vae.models import MODELS, VAE, ModelConfig, build_model, build_vae
from pyro_vae.models.config import LabelInfo
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
    for batch in args.batch_sizes if args.rounds > 0 else ():
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
            setup = {}
            for name in names:  # warm-up: first calls record (and compile) the graphs
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                setup[name] = run(cases[name], batches(1))
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
                "setup_s": None,
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
                    "setup_s": setup[n],
                }
            )
        del cases
    return rows


def _bernoulli_levels(x: torch.Tensor) -> torch.Tensor:
    """The hand-written loop's dynamic binarization: ``torch.bernoulli`` of ``k / 255``."""
    return torch.bernoulli(x.to(torch.float32) / 255.0)


def hand_written_epoch(
    floor: HandWrittenVAE, data: torch.Tensor, batch: int, prepare: Callable
) -> float:
    """Seconds of one hand-written eager epoch over ``data`` (uint8, on the device): a random
    permutation there, each batch gathered, prepared and stepped, the loss summed on the
    device and read once at the end."""
    device = data.device
    _sync(device)
    start = time.perf_counter()
    perm = torch.randperm(len(data), device=device)
    total = torch.zeros((), device=device)
    for i in range(0, len(data), batch):
        x = prepare(data[perm[i : i + batch]])  # (B, 784) in {0, 1}
        total += floor(x, i // batch + 1) * x.shape[0]
    float(total)  # the epoch's loss, read back as a training loop would
    return time.perf_counter() - start


def fit_epoch(
    base: VAE, data: torch.Tensor, batch: int, args, capture: str
) -> tuple[float, float, float]:
    """pyro-vae's training of a copy of ``base`` for two epochs (its defaults, with the capture
    mode ``capture``): the second epoch's seconds, the first epoch's extra seconds (recording
    the graph, or compiling it) and the set-up before it."""
    vae = copy.deepcopy(base)
    cfg = TrainConfig(
        epochs=2, batch_size=batch, lr=args.lr, device=data.device.type, quiet=True,
        capture=capture,
    )  # fmt: skip
    _sync(data.device)
    start = time.perf_counter()
    result = fit(vae, data, None, cfg, preprocess=Preprocess("dynamic"))
    _sync(data.device)
    wall = time.perf_counter() - start
    first, second = (row["seconds"] for row in result.metrics)
    return second, first - second, wall - first - second


def race_epochs(args, device: torch.device, images: torch.Tensor) -> list[dict]:
    """Interleaved epochs of ``fit`` (each ``--epoch-capture`` mode) and of the hand-written
    loop at each batch size; one row per batch size and mode."""
    data = images.to(device)
    default = TrainConfig()
    rows = []
    for batch in args.batch_sizes:
        torch.manual_seed(0)
        base = build_vae((784,), "bernoulli", args.latent_dim, tuple(args.hidden)).to(device)
        floors = {
            "torch.bernoulli": (HandWrittenVAE(base, args.lr), _bernoulli_levels),
            "Preprocess": (HandWrittenVAE(base, args.lr), Preprocess("dynamic")),
        }
        for floor, prepare in floors.values():  # warm-up: allocator, threads, Adam state
            hand_written_epoch(floor, data[: 8 * batch], batch, prepare)
        modes = args.epoch_capture
        seconds: dict[str, list[float]] = {**{m: [] for m in modes}, **{n: [] for n in floors}}
        extra: dict[str, list[float]] = {m: [] for m in modes}
        setup: dict[str, list[float]] = {m: [] for m in modes}
        with pyro.validation_enabled(True):
            for r in range(args.epoch_rounds):
                cases = [*modes, *floors]
                for name in cases[r % len(cases) :] + cases[: r % len(cases)]:  # rotate
                    if name in floors:
                        floor, prepare = floors[name]
                        seconds[name].append(hand_written_epoch(floor, data, batch, prepare))
                    else:
                        s, e, u = fit_epoch(base, data, batch, args, name)
                        seconds[name].append(s)
                        extra[name].append(e)
                        setup[name].append(u)
        for mode in modes:
            ratios = {n: [f / h for f, h in zip(seconds[mode], seconds[n])] for n in floors}
            suffix = "" if mode == default.capture else f"+{mode}"
            rows.append(
                {
                    "device": device.type,
                    "batch": batch,
                    "estimator": default.estimator + suffix,
                    "images": len(data),
                    "fit_s": statistics.median(seconds[mode]),
                    "first_epoch_extra_s": statistics.median(extra[mode]),
                    "setup_s": statistics.median(setup[mode]),
                    "hand_written_s": statistics.median(seconds["torch.bernoulli"]),
                    "hand_written_same_prep_s": statistics.median(seconds["Preprocess"]),
                    "ratio": statistics.median(ratios["torch.bernoulli"]),
                    "ratio_iqr": _iqr(ratios["torch.bernoulli"]),
                    "ratio_same_prep": statistics.median(ratios["Preprocess"]),
                    "ratio_same_prep_iqr": _iqr(ratios["Preprocess"]),
                }
            )
    return rows


def _iqr(values: list[float]) -> float:
    q1, _, q3 = _quartiles(values)
    return q3 - q1


def _model(name: str, args) -> tuple[object, tuple[torch.Tensor, ...]]:
    """A built-in model for 784 binary pixels, and its extra inputs for 10,000 datapoints."""
    labels = LabelInfo((), "int64", 10) if name == "cvae" else None
    cfg = ModelConfig(model=name, latent_dim=args.latent_dim, hidden=tuple(args.hidden))
    model = build_model(cfg, (784,), labels=labels)
    inputs = tuple(
        torch.randint(0, 10, (10_000,), generator=torch.Generator().manual_seed(1))
        for _ in getattr(model, "inputs", ())
    )
    return model, inputs


def time_models(args, device: torch.device, images: torch.Tensor) -> list[dict]:
    """Each built-in model's recorded step against its own Pyro program, at each batch size."""
    pre = Preprocess("dynamic")
    data = images.to(device)
    rows = []
    for name in args.models:
        for batch in args.batch_sizes:
            torch.manual_seed(0)
            model, inputs = _model(name, args)
            model.to(device)
            inputs = tuple(t.to(device) for t in inputs)
            steps = {}
            for mode in ("graph", "off"):
                cfg = TrainConfig(batch_size=batch, lr=args.lr, device=device.type, capture=mode)
                steps[mode] = TrainStep(copy.deepcopy(model), cfg, device)
            perm = torch.randperm(len(data), device=device)

            def batch_of(i: int, perm=perm, batch=batch, inputs=inputs) -> tuple[torch.Tensor, ...]:
                idx = perm[(i * batch) % (len(data) - batch) :][:batch]
                return (pre(data[idx]), *(t[idx] for t in inputs))

            def run(step, xs) -> float:
                _sync(device)
                start = time.perf_counter()
                for i, (x, *ins) in enumerate(xs):
                    step(x, i + 1, *ins)
                _sync(device)
                return (time.perf_counter() - start) / len(xs)

            with pyro.validation_enabled(True), warnings.catch_warnings():
                # TraceMeanField_ELBO's note on site order (two-layer); the loss is the same
                warnings.filterwarnings("ignore", "Failed to verify mean field", UserWarning)
                for step in steps.values():
                    run(step, [batch_of(i) for i in range(args.warmup)])
                ratios, ms = [], {m: [] for m in steps}
                for r in range(args.model_rounds):
                    xs = [batch_of(r * args.steps + i) for i in range(args.steps)]
                    order = list(steps) if r % 2 == 0 else list(steps)[::-1]
                    this = {m: run(steps[m], xs) for m in order}
                    for m in steps:
                        ms[m].append(this[m] * 1e3)
                    ratios.append(this["graph"] / this["off"])
            rows.append(
                {
                    "device": device.type,
                    "batch": batch,
                    "model": name,
                    "graph_ms": statistics.median(ms["graph"]),
                    "pyro_program_ms": statistics.median(ms["off"]),
                    "ratio": statistics.median(ratios),
                    "ratio_iqr": _iqr(ratios),
                    "mode": steps["graph"].loss.mode,
                }
            )
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


def _print_race(race: list[dict]) -> None:
    print(
        f"{'device':6} {'batch':>5} {'fit s':>6} {'torch.bernoulli s':>17} {'ratio':>6} "
        f"{'IQR':>6} {'same-prep s':>11} {'ratio':>6} {'IQR':>6} {'1st epoch +s':>12} "
        f"{'set-up s':>8}"
    )
    for r in race:
        print(
            f"{r['device']:6} {r['batch']:5d} {r['fit_s']:6.3f} "
            f"{r['hand_written_s']:17.3f} {r['ratio']:6.3f} "
            f"{r['ratio_iqr']:6.3f} {r['hand_written_same_prep_s']:11.3f} "
            f"{r['ratio_same_prep']:6.3f} {r['ratio_same_prep_iqr']:6.3f} "
            f"{r['first_epoch_extra_s']:12.3f} {r['setup_s']:8.3f}"
        )
    for r in race:
        where = f"{r['device']} batch={r['batch']} {r['estimator']}"
        print(f"epoch-ratio {where} {r['ratio']:.3f}")
        print(f"epoch-ratio-same-prep {where} {r['ratio_same_prep']:.3f}")


def _print_models(models: list[dict]) -> None:
    print(f"{'device':6} {'batch':>5} {'model':10} {'graph ms':>8} {'Pyro ms':>8} {'ratio':>6} IQR")
    for r in models:
        print(
            f"{r['device']:6} {r['batch']:5d} {r['model']:10} {r['graph_ms']:8.3f} "
            f"{r['pyro_program_ms']:8.3f} {r['ratio']:6.3f} {r['ratio_iqr']:.3f}  {r['mode']}"
        )
    for r in models:
        print(f"model-ratio {r['device']} batch={r['batch']} {r['model']} {r['ratio']:.3f}")


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
        "--epoch-rounds",
        type=int,
        default=3,
        help="rounds of the epoch race, fit against the hand-written epoch (0: skip)",
    )
    p.add_argument(
        "--epoch-capture",
        nargs="+",
        default=[TrainConfig().capture],
        choices=CAPTURE_MODES.names(),
        help="fit's capture modes in the epoch race (a mode other than the default gets a "
        "+<mode> suffix; compile's first-epoch seconds are its compilation)",
    )
    p.add_argument(
        "--models",
        nargs="*",
        default=MODELS.names(),
        choices=MODELS.names(),
        help="built-in models to time against their own Pyro program (none: skip)",
    )
    p.add_argument("--model-rounds", type=int, default=7, help="rounds per model")
    p.add_argument(
        "--epoch-epochs",
        type=int,
        default=3,
        help="epochs of fit() over 60,000 x 784 with its memory (0: skip)",
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
    results = {"steps": [], "epoch_race": [], "models": [], "epochs": []}
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
        for r in rows:
            if r["setup_s"] is not None:
                print(f"setup {r['device']} batch={r['batch']} {r['case']} {r['setup_s']:.3f}")
        if args.epoch_rounds > 0:
            race = race_epochs(args, device, images[: args.epoch_images])
            results["epoch_race"] += race
            _print_race(race)
        if args.models:
            models = time_models(args, device, images[:10_000])
            results["models"] += models
            _print_models(models)
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
