"""Command line: ``pyro-vae train | evaluate | sample | compare | diagnose`` (also
``python -m pyro_vae``).

The flags of ``train``, ``evaluate``, ``compare`` and ``diagnose`` are the fields of their
configuration dataclasses (:func:`pyro_vae.config.add_flags`). For ``train``, settings come
from the dataclass defaults, then ``--config FILE.toml`` (flat keys as the flags), then the
flags given; a later source wins. ``--resume RUN_DIR`` starts from the run's saved
configuration instead of the defaults.

Exit status: 0 done; 1 an error, as one line on stderr (no traceback); 2 invalid settings;
``128 + signum`` after a stop signal: 130 for Ctrl-C (SIGINT), 143 for SIGTERM, 129 for SIGHUP
(``train`` saves a checkpoint between two steps first and says how to resume).

Under ``torchrun`` (``torchrun --nproc-per-node N -m pyro_vae train|evaluate ...``) every
process runs the command; rank 0 prints the results, and an error that stops every rank at
once (a stop signal, a non-finite loss, rank 0's own failure) is printed by rank 0 only.
Another rank's own error names the rank. A rank that lost contact with the others exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

import torch

from pyro_vae.apps.compare import add_compare_flags, config_from_args, report_comparison
from pyro_vae.apps.diagnose import diagnose_split, format_diagnosis
from pyro_vae.apps.evaluate import EvalConfig, evaluate_run
from pyro_vae.config import (
    DataConfig,
    HelpFormatter,
    ModelConfig,
    RunConfig,
    TrainConfig,
    add_flags,
    check_flat,
    from_flat,
    given,
)
from pyro_vae.distributed import PeerError, World, init_from_env
from pyro_vae.eval.plots import save_grid
from pyro_vae.eval.report import text_table
from pyro_vae.models import (
    LIKELIHOODS,
    evaluation_mode,
    import_modules,
    inputs_of,
    resolve_factory,
    sample,
)
from pyro_vae.runs import (
    CHECKPOINTS,
    evaluation_data,
    inputs_for,
    load_run,
    load_split,
    run_config,
    run_training,
)
from pyro_vae.signals import signal_name, signal_of
from pyro_vae.train import CheckpointError, NonFiniteLossError, TrainingInterrupted
from pyro_vae.train.rundir import default_run_dir, visiting

_FORMAT = HelpFormatter


def _add_train(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a VAE",
        formatter_class=_FORMAT,
        description="Train a VAE and write a run directory.",
    )
    for title, section in (("data", DataConfig), ("model", ModelConfig), ("training", TrainConfig)):
        add_flags(p.add_argument_group(title), section)
    g = p.add_argument_group("run")
    g.add_argument(
        "--out",
        default=None,
        help="run directory (default: runs/<time>-<dataset>-<likelihood>-<estimator>)",
    )
    g.add_argument(
        "--resume",
        metavar="RUN_DIR",
        default=None,
        help="continue the run in RUN_DIR where it stopped",
    )
    g.add_argument(
        "--config",
        metavar="FILE.toml",
        default=None,
        help="settings file (flat keys as the flags); flags override it",
    )


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate",
        formatter_class=_FORMAT,
        help="importance-sampled log p(x), ELBO terms, active units and bits/dim of a run",
        description="Writes RUN_DIR/summary.json, report.md, report.html and evaluation/*.png. "
        "Every figure is in nats per datapoint, higher is better.",
    )
    p.add_argument("run_dir")
    add_flags(p, EvalConfig)


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="draw samples from a trained run", formatter_class=_FORMAT)
    p.add_argument("run_dir")
    p.add_argument("--num", type=int, default=64, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--which", default="best", choices=CHECKPOINTS.names())
    p.add_argument("--output", default=None, help="PNG path (default: RUN_DIR/samples-<seed>.png)")


def _add_compare(sub) -> None:
    p = sub.add_parser(
        "compare",
        formatter_class=_FORMAT,
        help="train and compare elbo, meanfield, stl, iwae and dreg over seeds",
        description="Trains every estimator (iwae and dreg at each --ks) with each of at least 3 "
        "--seeds, then writes comparison.md/.csv (test ELBO, importance-sampled "
        "log p(x), seconds per epoch, gradient SNR; mean +- sd over seeds), "
        "learning_curves.png and snr.png into --out.",
    )
    add_compare_flags(p)


def _add_diagnose(sub) -> None:
    p = sub.add_parser(
        "diagnose",
        formatter_class=_FORMAT,
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
    add_flags(p.add_argument_group("data"), DataConfig)
    p.add_argument(
        "--likelihood",
        choices=LIKELIHOODS.names(),
        default=None,
        help="also say whether this likelihood fits and how the trainer would "
        "prepare the data for it",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="held-out permutation, and the draws of the support check",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-vae",
        description="Variational autoencoders as Pyro programs.",
        formatter_class=_FORMAT,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_evaluate, _add_sample, _add_compare, _add_diagnose):
        add(sub)
    return parser


def _fail(command: str, message: str, status: int = 1, world: World = World()) -> int:
    who = f"pyro-vae {command}" + (f" (rank {world.rank} of {world.size})" if world.active else "")
    _say(f"{who}: error: {message}")
    return status


def _shared(world: World, error: BaseException) -> bool:
    """Whether every rank stopped on ``error`` together, so rank 0's line says it all."""
    together = (TrainingInterrupted, NonFiniteLossError)
    return isinstance(error, together) or (
        isinstance(error, PeerError) and error.failed_rank is not None  # it says why itself
    )


def _read_toml(path: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    with open(path, "rb") as f:
        return tomllib.load(f)


def _train(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``pyro-vae train``: defaults (or the resumed run's settings), then ``--config``, then
    the flags given."""
    if args.resume and args.out and Path(args.out).resolve() != Path(args.resume).resolve():
        parser.error(
            f"--out {args.out} cannot be combined with --resume {args.resume}: a resumed run "
            f"continues in its own folder"
        )
    try:
        base = run_config(args.resume) if args.resume else RunConfig()
        values = _read_toml(args.config) if args.config else {}
    except (OSError, ImportError, ValueError, KeyError) as e:
        return _fail("train", f"cannot read the settings: {e}")
    try:
        values = check_flat(RunConfig, values, source=args.config)
        cfg = from_flat(base, {**values, **given(args, RunConfig)})
    except (ValueError, TypeError, ImportError) as e:
        parser.error(str(e))
    try:
        world = init_from_env(cfg.train.device, cfg.train.dist_timeout)
    except (ValueError, PeerError) as e:
        return _fail("train", str(e))
    return _leave(world, _train_run(args, cfg, world))


def _leave(world: World, status: int) -> int:
    """``status``, after leaving the process group: after a success every rank leaves at once,
    after an error at once (the others then see the connection close instead of waiting).

    With several processes this one then exits at once (``os._exit``, its output flushed and
    every file it wrote already closed): torch's process-group threads can abort the
    interpreter's normal teardown ("terminate called without an active exception") and turn
    the status into SIGABRT's.
    """
    if not world.active:
        return status
    if status == 0:
        world.barrier()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)


def _train_run(args: argparse.Namespace, cfg: RunConfig, world: World) -> int:
    out = None
    try:
        out = world.broadcast_object(Path(args.resume or args.out or default_run_dir(
            cfg.data.dataset, cfg.model.likelihood, cfg.train.estimator
        )))  # fmt: skip
        result = run_training(cfg, out=out, resume=bool(args.resume), world=world)
    except TrainingInterrupted as e:  # a stop signal, read between two steps: saved
        if world.is_main:
            _say(str(e))  # "interrupted by ... at step s; resume with ..."
        return 128 + e.signum
    except KeyboardInterrupt as e:  # before the loop, or a second signal during a write
        if not world.is_main:  # rank 0 says it
            return 128 + signal_of(e)
        return _interrupted("train", e, out)
    except (NonFiniteLossError, CheckpointError, OSError, ImportError, ValueError,
            PeerError) as e:  # fmt: skip
        if world.is_main or not _shared(world, e):
            _fail("train", str(e), world=world)
        return 1
    if not world.is_main:
        return 0
    print(f"run directory: {result.run_dir}")
    if not result.metrics:
        print(f"no epoch was trained (--epochs {cfg.train.epochs}): checkpoint.pt holds the "
              f"initial state")  # fmt: skip
        return 0
    print(
        f"test ELBO (nats per datapoint, higher is better): last {result.test_elbo:.3f}, "
        f"best {result.best_test_elbo:.3f}"
    )
    return 0


def _interrupted(command: str, error: KeyboardInterrupt, run_dir: Path | None = None) -> int:
    """The one line for a stop signal outside the training steps; ``128 + signum``."""
    signum = signal_of(error)
    if run_dir is not None and (run_dir / "checkpoint.pt").is_file():
        then = f"{run_dir / 'checkpoint.pt'} is kept; resume with pyro-vae train --resume {run_dir}"
    elif run_dir is not None and (run_dir / "config.json").is_file():
        then = f"no checkpoint was written yet; start it with pyro-vae train --resume {run_dir}"
    elif command == "train":
        then = "training had not started; nothing was written"
    else:
        then = "every file it wrote is complete (written atomically)"
    _say(f"pyro-vae {command}: interrupted by {signal_name(signum)}; {then}")
    return 128 + signum


def _say(line: str) -> None:
    """``line`` on stderr, if there still is one (after SIGHUP the terminal may be gone)."""
    try:
        print(line, file=sys.stderr)
    except OSError:
        pass


def _evaluate(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        cfg = from_flat(EvalConfig(), given(args, EvalConfig))
    except ValueError as e:
        parser.error(str(e))
    try:
        world = init_from_env(cfg.device, cfg.dist_timeout)
    except (ValueError, PeerError) as e:
        return _fail("evaluate", str(e))
    return _leave(world, _evaluate_run(args, cfg, world))


def _evaluate_run(args: argparse.Namespace, cfg: EvalConfig, world: World) -> int:
    try:
        summary = evaluate_run(args.run_dir, cfg, world=world)
    except (ValueError, OSError, ImportError, CheckpointError, PeerError) as e:
        if world.is_main or not _shared(world, e):
            _fail("evaluate", str(e), world=world)
        return 1
    except KeyboardInterrupt as e:
        if not world.is_main:  # rank 0 says it
            return 128 + signal_of(e)
        return _interrupted("evaluate", e)
    if not world.is_main:
        return 0
    print(text_table(summary))
    print(f"report: {Path(args.run_dir) / 'report.md'}")
    return 0


def _sample(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``pyro-vae sample``: prior draws of any model; a conditional model's draws take the
    labels of the first test datapoints."""
    if args.num < 1:
        parser.error(f"--num must be >= 1, got {args.num}")
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    with visiting(args.run_dir):
        return _draw(args)


def _draw(args: argparse.Namespace) -> int:
    try:
        model, _ = load_run(args.run_dir, args.which)
        inputs = ()
        if inputs_of(model):
            _, labels, _, _ = evaluation_data(args.run_dir)
            inputs = tuple(t[torch.arange(args.num) % len(t)] for t in inputs_for(model, labels))
    except (CheckpointError, OSError, ImportError, ValueError) as e:
        return _fail("sample", str(e))
    torch.manual_seed(args.seed)
    with evaluation_mode(model):
        mean, _ = sample(model, args.num, *inputs)
    out = Path(args.output or Path(args.run_dir) / f"samples-{args.seed}.png")
    try:
        drawn = save_grid(mean, out)
    except OSError as e:
        return _fail("sample", f"cannot write {out}: {e.strerror or e}")
    if not drawn:
        return _fail("sample", f"data of shape {tuple(mean.shape[1:])} cannot be drawn as images")
    print(out)
    return 0


def _compare(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    try:
        cfg = config_from_args(args)
    except ValueError as e:
        return _fail("compare", str(e), status=2)
    try:
        return report_comparison(cfg, args.out)
    except (OSError, ImportError, ValueError) as e:
        return _fail("compare", str(e))


def _diagnose(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``pyro-vae diagnose``: 0 done, 1 the data cannot be read or --likelihood does not fit."""
    try:
        data = from_flat(DataConfig(), given(args, DataConfig))
        split = load_split(data, args.seed)
        diagnosis = diagnose_split(
            split, binarize=data.binarize, dequantize=data.dequantize, seed=args.seed
        )
    except (OSError, ValueError) as e:
        return _fail("diagnose", str(e))
    print(format_diagnosis(diagnosis, args.likelihood), end="")
    if args.likelihood is not None and not diagnosis.verdict(args.likelihood).valid:
        return 1
    return 0


_COMMANDS = {
    "train": _train,
    "evaluate": _evaluate,
    "sample": _sample,
    "compare": _compare,
    "diagnose": _diagnose,
}


def _import_user_code(argv: list[str]) -> None:
    """Import what ``--import`` names, and the module of a ``--model`` given by path, before
    the flags are made: the likelihoods and models they register are then valid choices. The
    current folder is searched first, as ``python -m`` does."""
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--import", dest="imports", nargs="+", default=[], action="extend")
    early.add_argument("--model", default=None)
    known, _ = early.parse_known_args(argv)
    if not known.imports and not (known.model and ":" in known.model):
        return
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    import_modules(known.imports)
    if known.model and ":" in known.model:
        resolve_factory(known.model)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        _import_user_code(argv)
    except (ImportError, ValueError) as e:
        return _fail(argv[0] if argv else "", str(e))
    parser = build_parser()
    args = parser.parse_args(argv)
    subparser = parser._subparsers._group_actions[0].choices[args.command]
    try:
        return _COMMANDS[args.command](args, subparser)
    except KeyboardInterrupt as e:  # train handles its own
        return _interrupted(args.command, e)


if __name__ == "__main__":
    sys.exit(main())
