"""Frozen configuration dataclasses: what to model, on which data, and how to train.

Each validates itself on construction, so a bad number fails before any data are loaded,
whether it came from a flag, a TOML file or Python.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pyro_vae.capture import CAPTURE_MODES
from pyro_vae.estimators import ESTIMATORS, check_beta
from pyro_vae.likelihoods import LIKELIHOODS, SCALE_MODES
from pyro_vae.networks import ACTIVATIONS, ARCHITECTURES

BINARIZE_MODES = ("dynamic", "static", "threshold", "none")
LR_SCHEDULES = ("constant", "cosine")
DEVICES = ("auto", "cpu", "cuda")


def _choice(kind: str, value: Any, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; valid choices: {', '.join(choices)}")


def _at_least(name: str, value: float, low: float, strict: bool = False) -> None:
    if value is None or (value <= low if strict else value < low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value}")


@dataclass(frozen=True)
class ModelConfig:
    """The VAE: likelihood, networks, latent size.

    :param scale: sigma parameterization of the ``normal`` likelihood (``shared``,
        ``per-pixel`` or ``decoder``); ``None`` for other likelihoods.
    """

    likelihood: str = "bernoulli"
    scale: str | None = None
    latent_dim: int = 20
    hidden: tuple[int, ...] = (400,)
    arch: str = "mlp"
    activation: str = "relu"

    def __post_init__(self):
        LIKELIHOODS.get(self.likelihood)
        if self.scale is not None:
            _choice("normal scale", self.scale, SCALE_MODES)
        _at_least("latent-dim", self.latent_dim, 1)
        hidden = (self.hidden,) if isinstance(self.hidden, int) else self.hidden  # one layer
        object.__setattr__(self, "hidden", tuple(int(h) for h in hidden))
        for h in self.hidden:
            _at_least("every hidden size", h, 1)
        _choice("arch", self.arch, ARCHITECTURES)
        ACTIVATIONS.get(self.activation)

    def likelihood_options(self) -> dict:
        return {"scale": self.scale}


@dataclass(frozen=True)
class DataConfig:
    """Where the data come from and how they are turned into model input.

    :param binarize: ``dynamic`` (a fresh Bernoulli draw of the grey levels per batch),
        ``static`` (one seeded draw), ``threshold`` (> 0.5) or ``none``. ``None`` picks
        ``dynamic`` for the ``bernoulli`` likelihood and ``none`` otherwise.
    :param dequantize: add uniform noise to 8-bit levels, ``(k + u) / 256``, for continuous
        likelihoods. ``None`` picks it for every likelihood but ``bernoulli``.
    :param test_size: held-out datapoints when the source has no test split of its own.
    """

    dataset: str = "shapes"
    data_dir: str = "data"
    binarize: str | None = None
    dequantize: bool | None = None
    test_size: int = 1000
    num_shapes: int = 10000
    download: bool = False

    def __post_init__(self):
        if self.binarize is not None:
            _choice("binarize mode", self.binarize, BINARIZE_MODES)
        _at_least("test-size", self.test_size, 0)
        _at_least("num-shapes", self.num_shapes, 1)

    def resolved(self, likelihood: str) -> "DataConfig":
        """Fill the likelihood-dependent defaults."""
        binarize = self.binarize
        if binarize is None:
            binarize = "dynamic" if likelihood == "bernoulli" else "none"
        dequantize = self.dequantize
        if dequantize is None:
            dequantize = binarize == "none" and likelihood != "bernoulli"
        return dataclasses.replace(self, binarize=binarize, dequantize=bool(dequantize))


@dataclass(frozen=True)
class TrainConfig:
    """Optimization: estimator, schedule, and bookkeeping.

    :param grad_clip: clip the global gradient norm to this value (``None``: no clipping).
    :param warmup_epochs: beta grows linearly from ~0 to ``beta`` over this many epochs.
    :param log_every: steps between reads of the loss from the device (progress bar, NaN check).
    :param capture: how each step runs the estimator's loss: ``graph`` (recorded once per batch
        shape and replayed; see :mod:`pyro_vae.capture`), ``compile`` (the recorded graph
        through :func:`torch.compile`) or ``off`` (the Pyro program every step).
    """

    estimator: str = "meanfield"
    particles: int = 1
    alpha: float = 0.5
    epochs: int = 20
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = None
    lr_schedule: str = "constant"
    beta: float = 1.0
    warmup_epochs: int = 0
    seed: int = 0
    device: str = "auto"
    log_every: int = 50
    quiet: bool = False
    capture: str = "graph"

    def __post_init__(self):
        ESTIMATORS.get(self.estimator)
        _at_least("particles", self.particles, 1)
        _at_least("epochs", self.epochs, 0)
        _at_least("batch-size", self.batch_size, 1)
        _at_least("lr", self.lr, 0, strict=True)
        _at_least("weight-decay", self.weight_decay, 0)
        if self.grad_clip is not None:
            _at_least("grad-clip", self.grad_clip, 0, strict=True)
        _choice("lr schedule", self.lr_schedule, LR_SCHEDULES)
        _at_least("beta", self.beta, 0)
        _at_least("warmup-epochs", self.warmup_epochs, 0)
        _choice("device", self.device, DEVICES)
        _at_least("log-every", self.log_every, 1)
        _choice("capture", self.capture, CAPTURE_MODES)
        check_beta(self.estimator, self.beta, warmup=self.warmup_epochs > 0)


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; saved as ``config.json`` and inside every checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        return cls(
            model=ModelConfig(**{**d.get("model", {}), "hidden": tuple(d["model"]["hidden"])})
            if "model" in d
            else ModelConfig(),
            data=DataConfig(**d.get("data", {})),
            train=TrainConfig(**d.get("train", {})),
        )


#: flag name (snake case) -> section, for flat sources such as the command line or TOML
FIELD_SECTIONS = {
    f.name: section
    for section, cls in (("model", ModelConfig), ("data", DataConfig), ("train", TrainConfig))
    for f in dataclasses.fields(cls)
}


def config_from_flat(values: dict) -> RunConfig:
    """A :class:`RunConfig` from flat ``{field: value}`` (kebab or snake case keys).

    :raises ValueError: for an unknown key, listing the valid ones.
    """
    sections: dict[str, dict] = {"model": {}, "data": {}, "train": {}}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in FIELD_SECTIONS:
            valid = ", ".join(sorted(k.replace("_", "-") for k in FIELD_SECTIONS))
            raise ValueError(f"unknown setting {key!r}; valid settings: {valid}")
        sections[FIELD_SECTIONS[name]][name] = value
    return RunConfig(
        model=ModelConfig(**sections["model"]),
        data=DataConfig(**sections["data"]),
        train=TrainConfig(**sections["train"]),
    )
