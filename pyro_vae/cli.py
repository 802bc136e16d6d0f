"""Command line: ``pyro-vae train | evaluate | sample | compare | diagnose`` (also
``python -m pyro_vae``).

Settings come from the dataclass defaults, then ``--config FILE.toml``, then the flags given;
a later source wins. ``--resume RUN_DIR`` starts from the run's saved configuration instead.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pyro_vae.capture import CAPTURE_MODES
from pyro_vae.config import (
    BINARIZE_MODES,
    DEVICES,
    FIELD_SECTIONS,
    LR_SCHEDULES,
    DataConfig,
    ModelConfig,
    TrainConfig,
    config_from_flat,
)
from pyro_vae.estimators import ESTIMATORS
from pyro_vae.likelihoods import LIKELIHOODS, SCALE_MODES
from pyro_vae.networks import ARCHITECTURES

_M, _D, _T = ModelConfig(), DataConfig(), TrainConfig()


def _add_data_flags(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The data flags, shared by ``train`` and ``diagnose`` (the same loader, the same data)."""
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default=_D.dataset,
                   help="shapes (embedded, offline), mnist, fashion-mnist, kmnist, cifar10, or a "
                        "path to an idx folder, .npy or .npz file")
    g.add_argument("--data-dir", default=_D.data_dir, help="where torchvision datasets live")
    g.add_argument("--download", action="store_true", help="download a torchvision dataset")
    g.add_argument("--binarize", choices=BINARIZE_MODES, default=None,
                   help="default: dynamic for bernoulli, none otherwise")
    g.add_argument("--dequantize", action=argparse.BooleanOptionalAction, default=None,
                   help="(k + u)/256 on 8-bit data; default: on for continuous likelihoods")
    g.add_argument("--test-size", type=int, default=_D.test_size,
                   help="held-out datapoints when the source has no test split")
    g.add_argument("--num-shapes", type=int, default=_D.num_shapes,
                   help="size of the embedded shapes dataset")
    return g


def _add_train_flags(p: argparse.ArgumentParser) -> None:
    _add_data_flags(p)
    g = p.add_argument_group("model")
    g.add_argument("--likelihood", choices=LIKELIHOODS.names(), default=_M.likelihood)
    g.add_argument("--scale", choices=SCALE_MODES, default=None,
                   help="sigma of the normal likelihood (default: shared)")
    g.add_argument("--latent-dim", type=int, default=_M.latent_dim)
    g.add_argument("--hidden", type=int, nargs="+", default=list(_M.hidden),
                   help="hidden layer sizes")
    g.add_argument("--arch", choices=ARCHITECTURES, default=_M.arch)
    g.add_argument("--activation", default=_M.activation)
    g = p.add_argument_group("training")
    g.add_argument("--estimator", choices=ESTIMATORS.names(), default=_T.estimator)
    g.add_argument("--particles", type=int, default=_T.particles,
                   help="Monte Carlo particles (K for iwae/renyi)")
    g.add_argument("--alpha", type=float, default=_T.alpha, help="Renyi alpha")
    g.add_argument("--epochs", type=int, default=_T.epochs)
    g.add_argument("--batch-size", type=int, default=_T.batch_size)
    g.add_argument("--lr", type=float, default=_T.lr)
    g.add_argument("--weight-decay", type=float, default=_T.weight_decay)
    g.add_argument("--grad-clip", type=float, default=_T.grad_clip,
                   help="clip the gradient norm (default: no clipping)")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=_T.lr_schedule)
    g.add_argument("--beta", type=float, default=_T.beta, help="KL weight")
    g.add_argument("--warmup-epochs", type=int, default=_T.warmup_epochs,
                   help="linear beta warm-up")
    g.add_argument("--seed", type=int, default=_T.seed)
    g.add_argument("--device", choices=DEVICES, default=_T.device)
    g.add_argument("--log-every", type=int, default=_T.log_every,
                   help="steps between reads of the loss")
    g.add_argument("--quiet", action="store_true", help="no progress bars")
    g.add_argument("--capture", choices=CAPTURE_MODES, default=_T.capture,
                   help="graph: record the Pyro loss once per batch shape and replay it; "
                        "compile: also torch.compile it (slow first step, faster after); "
                        "off: run the Pyro program every step")
    g = p.add_argument_group("run")
    g.add_argument("--out", default=None,
                   help="run directory (default: runs/<time>-<dataset>-<likelihood>-<estimator>)")
    g.add_argument("--resume", metavar="RUN_DIR", default=None,
                   help="continue the run in RUN_DIR where it stopped")
    g.add_argument("--config", metavar="FILE.toml", default=None,
                   help="settings file (flat keys as the flags); flags override it")


def build_parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
    fmt = argparse.ArgumentDefaultsHelpFormatter
    kw = {"argument_default": argparse.SUPPRESS} if suppress_defaults else {}
    parser = argparse.ArgumentParser(
        prog="pyro-vae", description="Variational autoencoders as Pyro programs.",
        formatter_class=fmt,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a VAE", formatter_class=fmt, **kw)
    _add_train_flags(train)
    if suppress_defaults:
        for action in train._actions:
            action.default = argparse.SUPPRESS
    ev = sub.add_parser(
        "evaluate", formatter_class=fmt,
        help="importance-sampled log p(x), ELBO terms, active units and bits/dim of a run",
        description="Writes RUN_DIR/summary.json, report.md, report.html and evaluation/*.png. "
                    "Every figure is in nats per datapoint, higher is better.",
    )
    ev.add_argument("run_dir")
    ev.add_argument("--iw-samples", type=int, default=5000,
                    help="importance samples K per datapoint (Burda et al.: 5000)")
    ev.add_argument("--split", choices=("test", "train"), default="test")
    ev.add_argument("--batch-size", type=int, default=None,
                    help="most datapoints per chunk (default: as the memory budget allows)")
    ev.add_argument("--device", choices=DEVICES, default="cpu")
    ev.add_argument("--memory-budget-mb", type=float, default=1024.0,
                    help="memory for one chunk of particles x datapoints")
    ev.add_argument("--seed", type=int, default=0,
                    help="particles and dequantization noise; results do not depend on chunking")
    ev.add_argument("--which", default="best", choices=("best", "checkpoint"))
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    sa = sub.add_parser("sample", help="draw samples from a trained run", formatter_class=fmt)
    sa.add_argument("run_dir")
    sa.add_argument("--num", type=int, default=64, help="number of samples")
    sa.add_argument("--seed", type=int, default=0)
    sa.add_argument("--which", default="best", choices=("best", "checkpoint"))
    sa.add_argument("--output", default=None, help="PNG path (default: RUN_DIR/samples-<seed>.png)")
    from pyro_vae.compare import add_compare_flags

    co = sub.add_parser(
        "compare", formatter_class=fmt,
        help="train and compare elbo, meanfield, stl, iwae and dreg over seeds",
        description="Trains every estimator (iwae and dreg at each --ks) with each of at least 3 "
                    "--seeds, then writes comparison.md/.csv (test ELBO, importance-sampled "
                    "log p(x), seconds per epoch, gradient SNR; mean +- sd over seeds), "
                    "learning_curves.png and snr.png into --out.",
    )
    add_compare_flags(co)
    dg = sub.add_parser(
        "diagnose", formatter_class=fmt,
        help="inspect data: which likelihoods fit them, the units, and the loss mistakes they "
             "invite",
        description="Loads --dataset as `pyro-vae train` would and reports its kind (binary, "
                    "8-bit, integer levels not spanning 0..255, real), range, distinct values "
                    "and constant dimensions; for every likelihood whether the data, prepared "
                    "as the trainer would, lie in its support and why; the units (nats per "
                    "datapoint, bits/dim, when a negative loss is fine); and the classic loss "
                    "mistakes that fit these data. Exit status 1 when --likelihood does not "
                    "fit the data.",
    )
    _add_data_flags(dg)
    dg.add_argument("--likelihood", choices=LIKELIHOODS.names(), default=None,
                    help="also say whether this likelihood fits and how the trainer would "
                         "prepare the data for it")
    dg.add_argument("--seed", type=int, default=_T.seed,
                    help="held-out permutation, and the draws of the support check")
    return parser


def _read_toml(path: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    with open(path, "rb") as f:
        return tomllib.load(f)


_RUN_KEYS = {"out", "resume", "config", "command"}


def _train(argv: list[str], parser: argparse.ArgumentParser) -> int:
    """``pyro-vae train``. Exit status: 0 done, 1 an error (one line on stderr, no traceback),
    2 invalid settings, 130 interrupted by Ctrl-C after saving a checkpoint."""
    from pyro_vae.checkpoint import CheckpointError
    from pyro_vae.rundir import read_config
    from pyro_vae.train import NonFiniteLossError, TrainingInterrupted, run_training

    def _fail(message: str) -> int:
        print(f"pyro-vae train: error: {message}", file=sys.stderr)
        return 1

    args = parser.parse_args(argv)  # with defaults, for --out/--resume/--config
    explicit = vars(build_parser(suppress_defaults=True).parse_args(argv))
    values: dict = {}
    try:
        if args.resume:
            saved = read_config(args.resume)
            for section in ("model", "data", "train"):
                values.update({k: v for k, v in saved[section].items() if k in FIELD_SECTIONS})
        if args.config:
            values.update(_read_toml(args.config))
    except (OSError, ValueError, KeyError) as e:
        return _fail(f"cannot read the settings: {e}")
    values.update({k: v for k, v in explicit.items() if k not in _RUN_KEYS})
    try:
        cfg = config_from_flat(values)
    except (ValueError, TypeError) as e:  # TypeError: e.g. `hidden = 16` in a TOML file
        parser.error(str(e))
    out = args.resume or args.out
    try:
        result = run_training(cfg, out=out, resume=bool(args.resume))
    except TrainingInterrupted as e:
        print(e, file=sys.stderr)  # "interrupted at step s; resume with ..."
        return 130
    except KeyboardInterrupt:  # a second Ctrl-C, while the checkpoint was being written
        print("interrupted; the last complete checkpoint is kept", file=sys.stderr)
        return 130
    except (NonFiniteLossError, CheckpointError, OSError, ValueError) as e:
        return _fail(str(e))
    best = result.best_test_elbo
    print(f"run directory: {result.run_dir}")
    print(f"test ELBO (nats per datapoint, higher is better): last {result.test_elbo:.3f}, best {best:.3f}")
    return 0


def _evaluate(args) -> int:
    from pyro_vae.evaluate import evaluate_run
    from pyro_vae.report import text_table

    try:
        summary = evaluate_run(
            args.run_dir, iw_samples=args.iw_samples, split=args.split,
            batch_size=args.batch_size, device=args.device,
            memory_budget_mb=args.memory_budget_mb, seed=args.seed, which=args.which,
            quiet=args.quiet,
        )
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"pyro-vae evaluate: error: {e}") from e
    print(text_table(summary))
    print(f"report: {Path(args.run_dir) / 'report.md'}")
    return 0


def _sample(args) -> int:
    import torch

    from pyro_vae.plots import save_grid
    from pyro_vae.train import load_run

    vae, _ = load_run(args.run_dir, args.which)
    torch.manual_seed(args.seed)
    mean, _ = vae.sample(args.num)
    out = Path(args.output or Path(args.run_dir) / f"samples-{args.seed}.png")
    if not save_grid(mean, out):
        raise SystemExit(f"data of shape {tuple(mean.shape[1:])} cannot be drawn as images")
    print(out)
    return 0


def _compare(args) -> int:
    from pyro_vae.compare import config_from_args, report_comparison

    try:
        cfg = config_from_args(args)
    except ValueError as e:
        print(f"pyro-vae compare: error: {e}", file=sys.stderr)
        return 2
    try:
        return report_comparison(cfg, args.out)
    except (OSError, ValueError) as e:
        print(f"pyro-vae compare: error: {e}", file=sys.stderr)
        return 1


def _diagnose(args) -> int:
    """``pyro-vae diagnose``: 0 done, 1 the data cannot be read or --likelihood does not fit."""
    from pyro_vae.data import load_data
    from pyro_vae.diagnose import diagnose_split, format_diagnosis

    try:
        split = load_data(
            args.dataset, data_dir=args.data_dir, test_size=args.test_size, seed=args.seed,
            num_shapes=args.num_shapes, download=args.download,
        )
        diagnosis = diagnose_split(
            split, binarize=args.binarize, dequantize=args.dequantize, seed=args.seed
        )
    except (OSError, ValueError) as e:
        print(f"pyro-vae diagnose: error: {e}", file=sys.stderr)
        return 1
    print(format_diagnosis(diagnosis, args.likelihood), end="")
    if args.likelihood is not None and not diagnosis.verdict(args.likelihood).valid:
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        return _train(argv, parser)
    commands = {"evaluate": _evaluate, "sample": _sample, "compare": _compare,
                "diagnose": _diagnose}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
