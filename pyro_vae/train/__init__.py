"""Training: the one loop (:func:`fit`), its step, its checkpoints and its run directory.

=================  ===========================================================================
module             concept
=================  ===========================================================================
``loop``           :func:`fit`: epochs of steps, the held-out ELBO, checkpoints, pictures
``step``           :class:`TrainStep`: one optimizer step with no host sync; the non-finite
                   guard and the diagnosis of a bad step
``update``         :class:`AdamReplay`: the step's fused Adam update, recorded and replayed
``state``          where a run stands (:class:`TrainState`, the epoch's cursor) and its
                   :class:`Schedule` (steps per epoch, beta at each step)
``checkpoint``     :class:`Checkpointer`: every write and read of a run's state; safe loading
``rundir``         the run directory's files, each written atomically
``checks``         the data checked against the model before the first step
=================  ===========================================================================
"""

from pyro_vae.train.checkpoint import Checkpointer, CheckpointError, load_checkpoint, safe_load
from pyro_vae.train.checks import check_data
from pyro_vae.train.loop import TrainingInterrupted, TrainResult, fit
from pyro_vae.train.rundir import RunDirectoryError
from pyro_vae.train.state import EpochCursor, Schedule, TrainState
from pyro_vae.train.step import DivergedError, NonFiniteLossError, TrainStep, diagnose_non_finite
from pyro_vae.train.update import AdamReplay

__all__ = [
    "AdamReplay",
    "CheckpointError",
    "Checkpointer",
    "DivergedError",
    "EpochCursor",
    "NonFiniteLossError",
    "RunDirectoryError",
    "Schedule",
    "TrainResult",
    "TrainState",
    "TrainStep",
    "TrainingInterrupted",
    "check_data",
    "diagnose_non_finite",
    "fit",
    "load_checkpoint",
    "safe_load",
]
