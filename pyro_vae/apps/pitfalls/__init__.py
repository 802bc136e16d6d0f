"""The classic hand-written VAE loss mistakes, written as the Pyro programs they really are.

Every mistake below is a model/guide pair that a Pyro estimator turns into exactly the loss
people write by hand; no loss is written here. Each is trained by :func:`pyro_vae.train.fit`
beside the correct program, on the same data, from the same initialization, and both are then
evaluated **under the correct model** (:attr:`Pitfall.as_correct_model`: the trained networks
read by the model the data call for, with scale 1 and beta 1).

==============  ===================================================  ===========================
pitfall         the mistake as a program                             the correct program
==============  ===================================================  ===========================
``pixel-mean``  the ``x`` site scaled by 1/D: a reconstruction       the same model, scale 1
                averaged over pixels (:func:`pixel_mean_program`)
``bce-grey``    binary cross-entropy on grey levels: an              ``continuous-bernoulli``
                unnormalized Bernoulli "density" on [0, 1]
                (:class:`BinaryCrossEntropyLikelihood`)
``mse``         a Normal with sigma fixed at 1/sqrt(2w)              ``normal`` with a learned
                (:class:`FixedScaleNormalLikelihood`): w * SSE       (shared) sigma
``logvar-std``  a guide whose scale is a log-variance read as a      scale = exp(log_var / 2)
                standard deviation (:class:`LogVarianceEncoder`)
==============  ===================================================  ===========================

:mod:`~pyro_vae.apps.pitfalls.programs` holds the mistakes as programs,
:mod:`~pyro_vae.apps.pitfalls.catalogue` each mistake beside its correct program with the prose
that explains it, :mod:`~pyro_vae.apps.pitfalls.runner` trains and evaluates them
(:func:`run_pitfalls`) and :mod:`~pyro_vae.apps.pitfalls.report` writes ``pitfalls.md``;
``experiments/loss_pitfalls.py`` is its command line.

References:

[1] G. Loaiza-Ganem, J. P. Cunningham, *The continuous Bernoulli: fixing a pervasive error in
variational autoencoders*, NeurIPS 2019.

[2] O. Rybkin, K. Daniilidis, S. Levine, *Simple and Effective VAE Training with Calibrated
Decoders*, ICML 2021 (the MSE weight as a fixed decoder variance).

[3] I. Higgins et al., *beta-VAE: Learning Basic Visual Concepts with a Constrained
Variational Framework*, ICLR 2017 (a KL weight above 1).
"""

from pyro_vae.apps.pitfalls.catalogue import PITFALL_ORDER, PITFALLS, Pitfall
from pyro_vae.apps.pitfalls.programs import (
    BinaryCrossEntropyLikelihood,
    FixedScaleNormalLikelihood,
    LogVarianceEncoder,
    ObservationScaledVAE,
    SiteScaleMessenger,
    UnnormalizedBernoulli,
    pixel_mean_program,
)
from pyro_vae.apps.pitfalls.report import pitfalls_markdown, pitfalls_table
from pyro_vae.apps.pitfalls.runner import (
    PitfallsConfig,
    PitfallsReport,
    ProgramResult,
    add_pitfalls_flags,
    config_from_args,
    main,
    prior_means,
    run_pitfalls,
)

__all__ = [
    "BinaryCrossEntropyLikelihood",
    "FixedScaleNormalLikelihood",
    "LogVarianceEncoder",
    "ObservationScaledVAE",
    "PITFALLS",
    "PITFALL_ORDER",
    "Pitfall",
    "PitfallsConfig",
    "PitfallsReport",
    "ProgramResult",
    "SiteScaleMessenger",
    "UnnormalizedBernoulli",
    "add_pitfalls_flags",
    "config_from_args",
    "main",
    "pitfalls_markdown",
    "pitfalls_table",
    "pixel_mean_program",
    "prior_means",
    "run_pitfalls",
]
