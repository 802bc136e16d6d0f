"""Learning-rate schedules that torch does not name: Burda et al. (2016)'s stages.

``--lr-schedule burda`` is the schedule of the IWAE paper's experiments: 8 stages, stage ``i``
(``i = 0 .. 7``) lasting ``3^i`` passes (3,280 passes in all) at ``lr * 10^(-i/7)``, with the
optimizer's state kept from stage to stage (as in the authors' code). A run of another number
of epochs ``E`` scales the stages: stage ``i < 7`` lasts ``max(1, round(3^i E / 3280))``
epochs and the last stage the rest, so ``--epochs 3280`` is the paper's schedule and a short
run still passes through every learning rate (``experiments/iwae_table1.py --passes-scale``).

References: Y. Burda, R. Grosse, R. Salakhutdinov, *Importance Weighted Autoencoders*, ICLR
2016, section 5.
"""

from __future__ import annotations

import torch

#: stages of the ``burda`` schedule; stage i lasts 3^i of the paper's 3,280 passes
BURDA_STAGES = 8
#: the passes of the paper's schedule: 3^0 + ... + 3^7
BURDA_PASSES = sum(3**i for i in range(BURDA_STAGES))
#: the learning rate's factor from one stage to the next
BURDA_DECAY = 10.0 ** (-1.0 / 7.0)


def burda_stage_epochs(epochs: int) -> list[int]:
    """The epochs of each stage of a ``burda`` schedule over ``epochs`` epochs (they sum to
    ``epochs``; ``3^i`` for ``epochs = 3280``).

    :raises ValueError: fewer epochs than stages.
    """
    if epochs < BURDA_STAGES:
        raise ValueError(
            f"the burda learning-rate schedule needs at least {BURDA_STAGES} epochs (one per "
            f"stage), got {epochs}"
        )
    scale = epochs / BURDA_PASSES
    first = [max(1, round(3**i * scale)) for i in range(BURDA_STAGES - 1)]
    while sum(first) >= epochs:  # rounding up left the last stage no epoch: take from the longest
        first[first.index(max(first))] -= 1
    return [*first, epochs - sum(first)]


class BurdaLR(torch.optim.lr_scheduler.MultiStepLR):
    """The ``burda`` schedule, stepped once per optimizer step: the learning rate falls by
    :data:`BURDA_DECAY` at the first step of each stage after the first.

    :ivar T_max: the steps the stages span, as for torch's cosine schedule: a run resumed with
        another number of epochs would move every stage, and is refused.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, epochs: int, steps_per_epoch: int):
        self.T_max = epochs * steps_per_epoch
        ends, total = [], 0
        for length in burda_stage_epochs(epochs)[:-1]:
            total += length
            ends.append(total * steps_per_epoch)
        super().__init__(optimizer, ends, gamma=BURDA_DECAY)
