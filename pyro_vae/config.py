"""Every setting of a run, declared once: frozen dataclasses whose fields carry their type,
default, help and choices.

A setting is a dataclass field made with :func:`~pyro_vae.fields.setting`; a configuration
may nest others as sections (:class:`RunConfig` holds a model section,
:class:`~pyro_vae.models.ModelConfig`, declared beside the models, a data and a training
section; the comparison's and the loss pitfalls' configurations hold a :class:`RunConfig`).
From these declarations come:

* the command-line flags (:func:`add_flags`: kebab-case, the type, the default shown once, the
  choices read from the registries when the parser is built, so a likelihood registered by user
  code is offered too);
* flat settings, as in a TOML file or the flags given (:func:`from_flat`), and the nested
  dictionaries of ``config.json`` (:func:`from_dict`).

Each dataclass validates itself on construction, so a bad number fails before any data are
loaded, whether it came from a flag, a TOML file or Python.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from pyro_vae.data import BINARIZE, LAYOUTS
from pyro_vae.fields import at_least, finite, section, setting
from pyro_vae.infer import CAPTURE_MODES, ESTIMATORS, check_beta
from pyro_vae.models import LIKELIHOODS, ModelConfig
from pyro_vae.registry import Registry

LR_SCHEDULES: Registry[None] = Registry.of("lr schedule", ("constant", "cosine", "burda"))
DEVICES: Registry[None] = Registry.of("device", ("auto", "cpu", "cuda"))


@dataclass(frozen=True)
class DataConfig:
    """Where the data come from and how they are turned into model input."""

    dataset: str = setting(
        "shapes",
        "shapes (embedded, offline), mnist, fashion-mnist, kmnist, cifar10, or a path to an "
        "idx folder, .npy or .npz file",
    )
    data_dir: str = setting("data", "where torchvision datasets live")
    binarize: str | None = setting(
        None,
        "dynamic: a fresh Bernoulli draw of the grey levels per batch; static: one seeded draw; "
        "threshold: > 0.5; none",
        choices=BINARIZE,
        default_text="the likelihood's: dynamic for bernoulli, none otherwise",
    )
    dequantize: bool | None = setting(
        None,
        "(k + u)/256 on 8-bit levels, for a density",
        default_text="on for continuous likelihoods on 8-bit data",
    )
    test_size: int = setting(1000, "held-out datapoints when the source has no test split")
    num_shapes: int = setting(10000, "training images of the embedded shapes dataset")
    download: bool = setting(False, "let torchvision download a missing dataset")
    layout: str = setting(
        "auto",
        "axes of a 4-D .npy/.npz array: (N, C, H, W) or (N, H, W, C); auto refuses a shape "
        "that reads both ways",
        choices=LAYOUTS,
    )

    def __post_init__(self):
        if self.binarize is not None:
            BINARIZE.check(self.binarize)
        at_least("test-size", self.test_size, 0)
        at_least("num-shapes", self.num_shapes, 1)
        LAYOUTS.check(self.layout)

    def resolved(self, likelihood: str, is_8bit: bool) -> DataConfig:
        """Fill the defaults that depend on the likelihood and the data: its own binarization
        (:attr:`~pyro_vae.models.Likelihood.default_binarize`), and dequantization of 8-bit
        levels that nothing binarizes, for a likelihood that wants it
        (:attr:`~pyro_vae.models.Likelihood.dequantize_8bit`)."""
        cls = LIKELIHOODS.get(likelihood)
        binarize = cls.default_binarize if self.binarize is None else self.binarize
        dequantize = self.dequantize
        if dequantize is None:
            dequantize = binarize == "none" and cls.dequantize_8bit and is_8bit
        return dataclasses.replace(self, binarize=binarize, dequantize=bool(dequantize))


@dataclass(frozen=True)
class TrainConfig:
    """Optimization: estimator, schedule, and bookkeeping."""

    estimator: str = setting("meanfield", "ELBO estimator", choices=ESTIMATORS)
    particles: int = setting(1, "Monte Carlo particles (K for iwae, renyi and dreg)")
    alpha: float = setting(0.5, "Renyi alpha (renyi only)")
    epochs: int = setting(20, "epochs to train (on --resume: the total, to extend a run)")
    batch_size: int = setting(128, "datapoints per step (per process under torchrun)")
    lr: float = setting(1e-3, "Adam learning rate")
    adam_eps: float = setting(1e-8, "Adam's epsilon (Burda et al. 2016: 1e-4)")
    weight_decay: float = setting(0.0, "Adam weight decay")
    grad_clip: float | None = setting(
        None, "clip the global gradient norm to this value", default_text="no clipping"
    )
    lr_schedule: str = setting(
        "constant",
        "learning-rate schedule: constant; cosine; burda: Burda et al. (2016)'s 8 stages, "
        "stage i for 3^i of every 3280 epochs (at least one) at lr * 10^(-i/7)",
        choices=LR_SCHEDULES,
    )
    beta: float = setting(1.0, "KL weight")
    warmup_epochs: int = setting(0, "epochs over which beta rises linearly from ~0 to --beta")
    seed: int = setting(0, "seed of the networks, the batches, the held-out split and the draws")
    device: str = setting("auto", "auto: cuda when available", choices=DEVICES)
    log_every: int = setting(
        50, "steps between reads of the loss (progress bar, non-finite and divergence checks)"
    )
    memory_limit_mb: float | None = setting(
        None,
        "refuse before the first step a step estimated to need more memory (MB); 0: no check",
        default_text="90%% of the memory available when training starts",
    )
    divergence_factor: float = setting(
        1e3,
        "stop as diverged when the loss per datapoint rises above its best by more than this "
        "times max(|best|, 1) (0: never)",
    )
    quiet: bool = setting(False, "no progress bars")
    tensorboard: bool = setting(
        False,
        "also log each epoch's metrics, lr, beta, reconstructions and samples to "
        "<run dir>/tensorboard (needs the tensorboard extra)",
    )
    dist_timeout: float = setting(
        600.0, "under torchrun: seconds a process waits for the others before it stops"
    )
    capture: str = setting(
        "graph",
        "graph: record the Pyro loss once per batch shape and replay it; compile: also "
        "torch.compile it (slow first step, faster after); cudagraph: compile, and replay it as "
        "CUDA graphs on a GPU (compile elsewhere); off: run the Pyro program every step",
        choices=CAPTURE_MODES,
    )

    def __post_init__(self):
        ESTIMATORS.check(self.estimator)
        at_least("particles", self.particles, 1)
        at_least("epochs", self.epochs, 0)
        at_least("batch-size", self.batch_size, 1)
        at_least("lr", self.lr, 0, strict=True)
        at_least("adam-eps", self.adam_eps, 0, strict=True)
        at_least("weight-decay", self.weight_decay, 0)
        if self.grad_clip is not None:
            at_least("grad-clip", self.grad_clip, 0, strict=True)
        LR_SCHEDULES.check(self.lr_schedule)
        if self.lr_schedule == "burda" and self.epochs < 8:
            raise ValueError(
                f"--lr-schedule burda needs --epochs >= 8 (one per stage), got {self.epochs}"
            )
        at_least("beta", self.beta, 0)
        at_least("warmup-epochs", self.warmup_epochs, 0)
        DEVICES.check(self.device)
        at_least("log-every", self.log_every, 1)
        at_least("divergence-factor", self.divergence_factor, 0)
        if self.memory_limit_mb is not None:
            at_least("memory-limit-mb", self.memory_limit_mb, 0)
        at_least("seed", self.seed, 0)
        at_least("dist-timeout", self.dist_timeout, 0, strict=True)
        finite("alpha", self.alpha)
        CAPTURE_MODES.check(self.capture)
        check_beta(self.estimator, self.beta, warmup=self.warmup_epochs > 0)


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; saved as ``config.json`` and inside every checkpoint."""

    model: ModelConfig = section(ModelConfig)
    data: DataConfig = section(DataConfig)
    train: TrainConfig = section(TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RunConfig:
        """From ``to_dict()`` (or ``config.json``: lists for tuples, extra keys ignored)."""
        return from_dict(cls, d)


#: the run settings that may change on ``--resume`` (the rest must match the checkpoint)
RESUMABLE = frozenset(
    {"epochs", "quiet", "log_every", "device", "data_dir", "download", "capture",
     "divergence_factor", "memory_limit_mb", "tensorboard", "dist_timeout"}
)  # fmt: skip


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU."""
    DEVICES.check(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but no CUDA device is available; use cpu")
    return torch.device(name)


# ----------------------------------------------------------------------- reading the fields


def _is_section(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get("section"))


def settings_of(cls) -> Iterator[tuple[dataclasses.Field, Any]]:
    """``(field, type)`` of every setting of ``cls`` and of its sections, depth first."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if _is_section(f):
            yield from settings_of(hints[f.name])
        else:
            yield f, hints[f.name]


def setting_names(cls) -> list[str]:
    """The flat (snake case) names of every setting of ``cls``; unique across sections."""
    names = [f.name for f, _ in settings_of(cls)]
    assert len(names) == len(set(names)), f"{cls.__name__} repeats a setting name"
    return names


def from_flat(base, values: dict, source: str | None = None):
    """``base`` with the flat ``{setting: value}`` (kebab or snake case keys) applied, in any
    section; the result validates itself.

    Types are strict, as a settings file gives them: an integer setting takes an integer (not
    ``true``, ``4.7`` or ``"4"``), a float setting a number, a switch ``true`` or ``false``, a
    list of integers a list of integers (or one).

    :param source: where the values come from (a file), named in the errors.
    :raises ValueError: for an unknown key, listing the valid ones, or a value of the wrong
        type, naming the key (and ``source``).
    """
    values = check_flat(type(base), values, source)
    types = {f.name: tp for f, tp in settings_of(type(base))}
    return _apply(base, {key: _as_float(types[key], v) for key, v in values.items()})


def check_flat(cls, values: dict, source: str | None = None) -> dict:
    """The flat settings ``values`` with snake-case keys, each checked to be a setting of
    ``cls`` of the right type (see :func:`from_flat`).

    :raises ValueError: naming the key (and ``source``) and what it must be.
    """
    values = {key.replace("-", "_"): value for key, value in values.items()}
    types = {f.name: tp for f, tp in settings_of(cls)}
    unknown = sorted(set(values) - set(types))
    where = f"{source}: " if source else ""
    if unknown:
        names = ", ".join(sorted(k.replace("_", "-") for k in types))
        raise ValueError(
            f"{where}unknown setting {unknown[0].replace('_', '-')!r}; valid settings: {names}"
        )
    for key, value in values.items():
        wanted = _type_error(types[key], value)
        if wanted is not None:
            raise ValueError(
                f"{where}{key.replace('_', '-')} must be {wanted}, got "
                f"{type(value).__name__} {value!r}"
            )
    return values


def _type_error(tp, value) -> str | None:
    """What ``value`` should have been for a setting of type ``tp``; ``None`` if it is that."""
    if value is None and _optional(tp) is not tp:
        return None
    kind = _optional(tp)
    if typing.get_origin(kind) is tuple:  # tuple[X, ...]: a list of X, or one X
        item = typing.get_args(kind)[0]
        items = value if isinstance(value, (list, tuple)) else [value]
        fits = item in _KINDS and all(_KINDS[item][0](v) for v in items)
        return None if fits or item not in _KINDS else f"a list of {_KINDS[item][2]}"
    if kind not in _KINDS:
        return None
    fits, one, _ = _KINDS[kind]
    return None if fits(value) else one


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


#: a setting's type: (does a value fit, what one must be, what several must be)
_KINDS = {
    bool: (lambda v: isinstance(v, bool), "true or false", "true or false values"),
    int: (_is_int, "an integer", "integers"),
    float: (lambda v: _is_int(v) or isinstance(v, float), "a number", "numbers"),
    str: (lambda v: isinstance(v, str), "a string", "strings"),
}


def _as_float(tp, value):
    """An integer given for a float setting, as a float (``lr = 1`` in TOML)."""
    return float(value) if _optional(tp) is float and _is_int(value) else value


def _apply(config, values: dict):
    changes = {}
    for f in dataclasses.fields(config):
        if _is_section(f):
            changes[f.name] = _apply(getattr(config, f.name), values)
        elif f.name in values:
            changes[f.name] = values[f.name]
    return dataclasses.replace(config, **changes) if changes else config


def from_dict(cls, d: dict):
    """A ``cls`` from nested dictionaries (as :func:`dataclasses.asdict` writes them; keys that
    ``cls`` does not have, such as the data facts of ``config.json``, are ignored)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        kwargs[f.name] = from_dict(hints[f.name], d[f.name]) if _is_section(f) else d[f.name]
    return cls(**kwargs)


def flat_dict(config) -> dict:
    """``{setting: value}`` of every setting of ``config`` and its sections."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out.update(flat_dict(value) if _is_section(f) else {f.name: value})
    return out


# ----------------------------------------------------------------------- command-line flags


def _optional(tp) -> Any:
    """``X`` of ``X | None``, else ``tp``."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if type(None) in typing.get_args(tp) and len(args) == 1 else tp


def _default_text(f: dataclasses.Field, default) -> str:
    if f.metadata.get("default_text"):
        return f.metadata["default_text"]
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, tuple):
        return " ".join(map(str, default))
    return "none" if default is None else str(default)


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls,
    *,
    defaults=None,
    only: tuple[str, ...] | None = None,
    exclude: tuple[str, ...] = (),
) -> None:
    """One ``--kebab-case`` flag per setting of ``cls`` (and its sections).

    Flags are parsed with ``default=argparse.SUPPRESS``: the namespace holds only the settings
    given, for :func:`from_flat` to lay over the defaults (or a saved or TOML configuration).
    The help states the default once, from ``defaults`` (an instance of ``cls``; default
    ``cls()``); choices come from the setting's registry as it is now.

    :param only: the settings to offer (default: all of them but ``exclude``).
    """
    values = flat_dict(defaults if defaults is not None else cls())
    for f, tp in settings_of(cls):
        if (only is not None and f.name not in only) or f.name in exclude:
            continue
        kind = _optional(tp)
        help_text = f"{f.metadata['help']} (default: {_default_text(f, values[f.name])})"
        kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            kwargs.update(type=typing.get_args(kind)[0], nargs="+")
        else:
            kwargs["type"] = kind
        if f.metadata.get("choices") is not None:
            kwargs["choices"] = f.metadata["choices"].names()
        flag = f.metadata.get("flag") or f"--{f.name.replace('_', '-')}"
        parser.add_argument(flag, dest=f.name, **kwargs)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default once: not for a ``None`` default, whose help says what it means, nor
    for the flags of :func:`add_flags`, whose help states theirs."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def given(args: argparse.Namespace, cls) -> dict:
    """The settings of ``cls`` that ``args`` holds (those given, with :func:`add_flags`)."""
    names = set(setting_names(cls))
    return {k: v for k, v in vars(args).items() if k in names}
