"""pyro-vae: variational autoencoders written as Pyro programs.

The generative model and the guide are Pyro programs: any model of
:mod:`pyro_vae.models.protocol` (the :class:`VAE` and the other built-ins of :data:`MODELS`, or
your own :class:`LatentModel`). The likelihood is swappable (:data:`LIKELIHOODS`); a Pyro ELBO
estimator (:data:`ESTIMATORS`) turns model and guide into the loss; :func:`fit` is the one
training loop.

The package is layered, each layer importing only those above it in this list:
:mod:`~pyro_vae.registry` and :mod:`~pyro_vae.validation`; :mod:`~pyro_vae.fields`;
:mod:`~pyro_vae.models`, :mod:`~pyro_vae.infer` and :mod:`~pyro_vae.data`;
:mod:`~pyro_vae.config`; :mod:`~pyro_vae.eval`; :mod:`~pyro_vae.train`; :mod:`~pyro_vae.runs`;
:mod:`~pyro_vae.apps`.

Importing the package is cheap: each name below is imported from its module on first use
(PEP 562), so the command line can catch a stop signal during the seconds torch takes to
import (:mod:`pyro_vae.apps.launch`).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: the public names, and the module each comes from
_EXPORTS = {
    "build_model": "pyro_vae.models",
    "build_vae": "pyro_vae.models",
    "ConvDecoder": "pyro_vae.models",
    "ConvEncoder": "pyro_vae.models",
    "DataConfig": "pyro_vae.config",
    "DataSplit": "pyro_vae.data",
    "DataSupportError": "pyro_vae.models",
    "Decoder": "pyro_vae.models",
    "DReGELBO": "pyro_vae.infer",
    "Encoder": "pyro_vae.models",
    "ESTIMATORS": "pyro_vae.infer",
    "evaluate_elbo": "pyro_vae.eval",
    "evaluate_run": "pyro_vae.apps.evaluate",
    "fit": "pyro_vae.train",
    "gradient_snr": "pyro_vae.eval",
    "importance_log_px": "pyro_vae.eval",
    "ImportanceWeightedELBO": "pyro_vae.infer",
    "LatentModel": "pyro_vae.models",
    "Likelihood": "pyro_vae.models",
    "LIKELIHOODS": "pyro_vae.models",
    "load_data": "pyro_vae.data",
    "load_run": "pyro_vae.runs",
    "make_estimator": "pyro_vae.infer",
    "make_likelihood": "pyro_vae.models",
    "MLPDecoder": "pyro_vae.models",
    "MLPEncoder": "pyro_vae.models",
    "ModelConfig": "pyro_vae.config",
    "MODELS": "pyro_vae.models",
    "NonFiniteLossError": "pyro_vae.train",
    "Preprocess": "pyro_vae.data",
    "run_training": "pyro_vae.runs",
    "RunConfig": "pyro_vae.config",
    "RunDirectoryError": "pyro_vae.train",
    "StickingTheLandingELBO": "pyro_vae.infer",
    "TrainConfig": "pyro_vae.config",
    "TrainingInterrupted": "pyro_vae.train",
    "TrainResult": "pyro_vae.train",
    "UnknownNameError": "pyro_vae.registry",
    "VAE": "pyro_vae.models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pyro_vae' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
