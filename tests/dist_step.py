"""One rank of :func:`test_distributed.test_two_ranks_of_batch_b_update_as_one_process_of_2b`:
two training steps of the VAE with DDP on this rank's half of a fixed batch, the particles
drawn from counters of the datapoints' positions in the whole batch; the gradients and
parameters after each step are saved to ``OUT.rank<R>.pt``.

``python dist_step.py OUT ESTIMATOR PARTICLES CAPTURE`` under torchrun's environment, or
:func:`two_steps` in one process (``world=World()``) on the whole batch.
"""

import sys

import pyro
import torch
from torch import nn

from pyro_vae.config import TrainConfig
from pyro_vae.distributed import World, init_from_env, shutdown
from pyro_vae.eval.noise import STREAM_ELBO, CounterNoise
from pyro_vae.models import build_vae
from pyro_vae.train import TrainStep

BATCH = 6  # per rank


class CounterVAE(nn.Module):
    """The VAE with its guide's particles a function of (datapoint position + offset,
    particle): the same draws for a datapoint whichever rank trains on it."""

    def __init__(self, offset: int, particles: int):
        super().__init__()
        self.vae = build_vae((12,), latent_dim=3, hidden=(10,))
        self.event_shape = self.vae.event_shape
        self.offset, self.particles = offset, particles

    def model(self, x):
        return self.vae.model(x)

    def guide(self, x):
        noise = CounterNoise(
            7, data_offset=self.offset, num_particles=self.particles, stream=STREAM_ELBO,
            particle_dim=-2 if self.particles > 1 else None,
        )  # fmt: skip
        with noise:
            return self.vae.guide(x)


def batch() -> torch.Tensor:
    """``(2 BATCH, 12)`` binary data, the same in every process."""
    return torch.bernoulli(
        torch.full((2 * BATCH, 12), 0.4), generator=torch.Generator().manual_seed(3)
    )


def two_steps(
    world: World, estimator: str, particles: int, capture: str, half: bool = False
) -> dict:
    """Two steps on this rank's rows of :func:`batch` (one process: all of them, or with
    ``half`` the first ``BATCH``); what each left."""
    pyro.set_rng_seed(0)
    rows = slice(world.rank * BATCH, (world.rank + 1) * BATCH) if world.active else slice(None)
    if half:
        rows = slice(0, BATCH)
    model = CounterVAE(world.rank * BATCH if world.active else 0, particles)
    cfg = TrainConfig(estimator=estimator, particles=particles, capture=capture, lr=0.01)
    step = TrainStep(model, cfg, torch.device("cpu"), world)
    x = batch()[rows]
    out = {"mode": None, "steps": []}
    for i in (1, 2):
        loss = step(x, i)
        out["steps"].append(
            {
                "loss": loss,
                "grads": [p.grad.clone() for p in model.parameters()],
                "params": [p.detach().clone() for p in model.parameters()],
            }
        )
    out["mode"] = step.loss.mode
    return out


if __name__ == "__main__":
    path, estimator, particles, capture = sys.argv[1:]
    world = init_from_env("cpu", timeout_s=60)
    torch.save(two_steps(world, estimator, int(particles), capture), f"{path}.rank{world.rank}.pt")
    shutdown()
