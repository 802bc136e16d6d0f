"""Which model to build, and with what: :class:`ModelConfig`, the :data:`MODELS` registry, and
models named by import path.

A model is built by a **factory**: ``factory(event_shape, config, *, labels=None, beta=1.0)``
returns a model of the protocol (:mod:`pyro_vae.models.protocol`). ``config`` is the
:class:`ModelConfig` (each factory reads the settings it uses), ``labels`` describes the data's
labels (:class:`LabelInfo`) for a model conditioned on them, ``beta`` is the KL weight.
Factories are registered by name in :data:`MODELS` (the built-in ``vae``, ``two-layer``,
``iaf``, ``vamp`` and ``cvae``), or named by path: ``package.module:factory`` or
``path/to/file.py:factory``, so user code needs no registration (``--model mymodel.py:build``).
``imports`` are imported first, so the likelihoods and models they register can be named.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from pyro_vae.fields import at_least, ints, setting
from pyro_vae.models.likelihoods import (
    DEFAULT_COMPONENTS,
    LIKELIHOODS,
    SCALE_MODES,
    likelihood_options,
)
from pyro_vae.models.networks import ACTIVATIONS, ARCHITECTURES
from pyro_vae.models.protocol import check_protocol
from pyro_vae.registry import Registry

#: model name -> factory ``(event_shape, config, *, labels=None, beta=1.0) -> model``
MODELS: Registry[Callable] = Registry(
    "model", hint="or a factory by path: package.module:factory or path/to/file.py:factory"
)


@dataclass(frozen=True)
class LabelInfo:
    """What the data's labels look like, for a model that takes them as an input.

    :ivar shape: the shape of one datapoint's label (``()`` for a class index).
    :ivar dtype: ``"int64"`` (classes) or ``"float32"`` (factors, regression targets).
    :ivar num_classes: ``1 + the largest class`` for integer labels, else ``None``.
    """

    shape: tuple[int, ...]
    dtype: str
    num_classes: int | None = None

    @classmethod
    def of(cls, *labels: torch.Tensor | None) -> LabelInfo | None:
        """The labels of one or more splits (``None`` where there are none)."""
        present = [y for y in labels if y is not None and len(y)]
        if not present:
            return None
        y = present[0]
        dtype = str(y.dtype).removeprefix("torch.")
        classes = None
        if not y.dtype.is_floating_point:
            classes = 1 + max(int(t.max()) for t in present)
        return cls(tuple(y.shape[1:]), dtype, classes)

    def to_dict(self) -> dict:
        return {"shape": list(self.shape), "dtype": self.dtype, "num_classes": self.num_classes}

    @classmethod
    def from_dict(cls, d: dict | None) -> LabelInfo | None:
        return None if d is None else cls(tuple(d["shape"]), d["dtype"], d.get("num_classes"))


def import_modules(names: Sequence[str]) -> None:
    """Import each of ``names`` (a module, or a ``.py`` file): what they register is then known.

    :raises ImportError: naming the module and what to do.
    """
    for name in names:
        _import(name)


def _import(name: str):
    if name.endswith(".py"):
        path = Path(name).expanduser().resolve()
        key = f"_pyro_vae_user_{path.stem}_{abs(hash(str(path)))}"
        if key in sys.modules:
            return sys.modules[key]
        if not path.is_file():
            raise ImportError(f"cannot import {name}: no such file")
        spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[key]
            raise
        return module
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        raise ImportError(
            f"cannot import {name} ({e}); run from the folder that holds it, add that folder "
            f"to PYTHONPATH, or name the file: path/to/{name.replace('.', '/')}.py"
        ) from e


def resolve_factory(spec: str) -> Callable:
    """The factory of a registered model name, or of ``module:factory`` / ``file.py:factory``.

    :raises UnknownNameError: an unknown name, listing the registered ones.
    :raises ImportError: a path whose module cannot be imported.
    :raises ValueError: a module without that factory.
    """
    if ":" not in spec or spec in MODELS:
        return MODELS.get(spec)
    module_name, _, attr = spec.rpartition(":")
    module = _import(module_name)
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ValueError(f"{module_name} has no model factory {attr!r} (from --model {spec})")
    return factory


def _absolute_file(name: str) -> str:
    """A ``.py`` file by its absolute path (a module name as it is), so that the run directory
    imports it again from any folder."""
    return str(Path(name).expanduser().resolve()) if name.endswith(".py") else name


def _absolute(spec: str) -> str:
    """A ``file.py:factory`` spec with the file's absolute path, so that the run directory
    rebuilds the model from any folder."""
    module_name, sep, attr = spec.rpartition(":")
    return f"{_absolute_file(module_name)}:{attr}" if sep else spec


@dataclass(frozen=True)
class ModelConfig:
    """The model: which one, its likelihood, networks and latent sizes.

    Each model reads the settings it uses: every model the likelihood (with ``scale`` and
    ``components``, the options of the likelihoods that take them), ``latent_dim``,
    ``hidden``, ``arch`` and ``activation``; ``two-layer`` also ``top_latent_dim`` and
    ``top_hidden``; ``iaf`` ``flows``; ``vamp`` ``pseudo_inputs``.

    ``imports`` and the module of a model named by path are imported when the configuration is
    made, so that the likelihoods and models they register can be named here.
    """

    model: str = setting(
        "vae",
        "the model: vae, two-layer, iaf, vamp, cvae, another registered name, or a factory "
        "by path, package.module:factory or path/to/file.py:factory",
    )
    imports: tuple[str, ...] = setting(
        (),
        "modules (or .py files) to import first, registering their likelihoods and models",
        flag="--import",
        default_text="none",
    )
    likelihood: str = setting("bernoulli", "observation model p(x | z)", choices=LIKELIHOODS)
    scale: str | None = setting(
        None,
        "how normal, laplace and beta learn their scale",
        choices=SCALE_MODES,
        default_text="shared",
    )
    components: int | None = setting(
        None,
        "logistic mixture components per dimension (discretized-logistic; 1: a plain "
        "discretized logistic)",
        default_text=str(DEFAULT_COMPONENTS),
    )
    latent_dim: int = setting(20, "dimensions of z (two-layer: of z1, the layer next to x)")
    hidden: tuple[int, ...] = setting((400,), "hidden layer sizes (the decoder mirrors them)")
    arch: str = setting("mlp", "encoder and decoder networks", choices=ARCHITECTURES)
    activation: str = setting("relu", "activation between layers", choices=ACTIVATIONS)
    top_latent_dim: int = setting(10, "dimensions of the top latent layer z2 (two-layer)")
    top_hidden: tuple[int, ...] = setting(
        (100,), "hidden layer sizes between z1 and z2 (two-layer)"
    )
    flows: int = setting(2, "inverse autoregressive flows on the Gaussian guide (iaf)")
    pseudo_inputs: int = setting(500, "pseudo-inputs of the VampPrior (vamp)")

    def __post_init__(self):
        imports = tuple(_absolute_file(str(m)) for m in self.imports)
        object.__setattr__(self, "imports", imports)
        import_modules(self.imports)
        object.__setattr__(self, "model", _absolute(self.model))
        resolve_factory(self.model)
        LIKELIHOODS.check(self.likelihood)
        if self.scale is not None:
            SCALE_MODES.check(self.scale)
        if self.components is not None:
            at_least("components", self.components, 1)
        likelihood_options(self.likelihood, **self.likelihood_options())  # refused options
        at_least("latent-dim", self.latent_dim, 1)
        at_least("top-latent-dim", self.top_latent_dim, 1)
        for name in ("hidden", "top_hidden"):
            object.__setattr__(self, name, ints(getattr(self, name)))
            for h in getattr(self, name):
                at_least("every hidden size", h, 1)
        ARCHITECTURES.check(self.arch)
        ACTIVATIONS.check(self.activation)
        at_least("flows", self.flows, 1)
        at_least("pseudo-inputs", self.pseudo_inputs, 1)

    def likelihood_options(self) -> dict:
        """The likelihood's options that were set (``None``: its own default; an option the
        likelihood does not take is refused when it is built)."""
        return {"scale": self.scale, "components": self.components}


def build_model(
    config: ModelConfig,
    event_shape: Sequence[int],
    *,
    labels: LabelInfo | None = None,
    beta: float = 1.0,
):
    """The model of ``config`` for datapoints of ``event_shape``.

    :raises TypeError: the factory returned something that is not a model of the protocol.
    """
    model = resolve_factory(config.model)(tuple(event_shape), config, labels=labels, beta=beta)
    check_protocol(model)
    return model
