"""Encoder and decoder networks.

Networks return distribution parameters and never sample: an encoder maps ``x`` to the guide's
``(loc, scale)``, a decoder maps ``z`` to the likelihood's raw parameters shaped
``(..., *out_shape)``. Both accept any number of leading batch dimensions, so Pyro's vectorized
particles (an extra leading dimension on ``z``) need no special handling.

Convolutional networks take images ``(C, H, W)`` with H and W divisible by 4, e.g. (1, 28, 28)
or (3, 32, 32).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from pyro_vae.registry import Registry

ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation")
for _name, _cls in [
    ("relu", nn.ReLU),
    ("elu", nn.ELU),
    ("gelu", nn.GELU),
    ("silu", nn.SiLU),
    ("tanh", nn.Tanh),
    ("softplus", nn.Softplus),
    ("leaky-relu", nn.LeakyReLU),
]:
    ACTIVATIONS.add(_name, _cls)

#: Smallest guide standard deviation; keeps log q finite when the encoder saturates.
MIN_SCALE = 1e-5


def positive_scale(raw: torch.Tensor) -> torch.Tensor:
    """Map an unconstrained encoder output to a standard deviation (softplus, floored)."""
    return F.softplus(raw) + MIN_SCALE


def mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Linear layers of ``sizes`` with ``activation`` between them (none after the last)."""
    act = ACTIVATIONS.get(activation)
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


def _check_positive(name: str, value: int) -> None:
    if int(value) < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")


class Encoder(nn.Module):
    """Base class: ``forward(x) -> (loc, scale)`` of the guide, each ``(..., latent_dim)``."""

    latent_dim: int
    in_shape: torch.Size


class Decoder(nn.Module):
    """Base class: ``forward(z) -> params`` shaped ``(..., *out_shape)``."""

    latent_dim: int
    out_shape: torch.Size


class MLPEncoder(Encoder):
    """Fully connected encoder.

    :param in_shape: shape of one datapoint (flattened internally).
    :param latent_dim: dimension of z.
    :param hidden: hidden layer sizes, e.g. ``(400,)``.
    :param activation: a name from :data:`ACTIVATIONS`.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        latent_dim: int,
        hidden: Sequence[int] = (400,),
        activation: str = "relu",
    ):
        super().__init__()
        _check_positive("latent_dim", latent_dim)
        self.in_shape = torch.Size(in_shape)
        self.latent_dim = int(latent_dim)
        d_in = math.prod(self.in_shape)
        self.net = mlp([d_in, *hidden, 2 * self.latent_dim], activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.shape[: x.dim() - len(self.in_shape)]
        h = self.net(x.reshape(*batch, -1))  # (..., 2 * latent_dim)
        loc, raw = h.chunk(2, dim=-1)  # (..., latent_dim) each
        return loc, self.to_scale(raw)

    def to_scale(self, raw: torch.Tensor) -> torch.Tensor:
        """The guide's standard deviation from the second half of the output (softplus)."""
        return positive_scale(raw)


class MLPDecoder(Decoder):
    """Fully connected decoder emitting ``(..., *out_shape)`` raw likelihood parameters."""

    def __init__(
        self,
        latent_dim: int,
        out_shape: Sequence[int],
        hidden: Sequence[int] = (400,),
        activation: str = "relu",
    ):
        super().__init__()
        _check_positive("latent_dim", latent_dim)
        self.latent_dim = int(latent_dim)
        self.out_shape = torch.Size(out_shape)
        self.net = mlp([self.latent_dim, *hidden, math.prod(self.out_shape)], activation)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).reshape(*z.shape[:-1], *self.out_shape)


def _check_image_shape(shape: torch.Size) -> None:
    if len(shape) != 3 or shape[1] % 4 or shape[2] % 4:
        raise ValueError(
            f"the conv networks need images shaped (C, H, W) with H and W divisible by 4, got "
            f"{tuple(shape)}; use --arch mlp for flat or other-sized data"
        )


class ConvEncoder(Encoder):
    """Two stride-2 convolutions (C -> 32 -> 64 channels, H/4 x W/4), then a dense layer.

    :param in_shape: ``(C, H, W)`` with H, W divisible by 4.
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        latent_dim: int,
        hidden: Sequence[int] = (256,),
        activation: str = "relu",
        channels: Sequence[int] = (32, 64),
    ):
        super().__init__()
        _check_positive("latent_dim", latent_dim)
        self.in_shape = torch.Size(in_shape)
        _check_image_shape(self.in_shape)
        self.latent_dim = int(latent_dim)
        act = ACTIVATIONS.get(activation)
        c, h, w = self.in_shape
        c1, c2 = channels
        self.conv = nn.Sequential(
            nn.Conv2d(c, c1, 4, stride=2, padding=1),
            act(),  # (c1, H/2, W/2)
            nn.Conv2d(c1, c2, 4, stride=2, padding=1),
            act(),  # (c2, H/4, W/4)
            nn.Flatten(),
        )
        self.head = mlp([c2 * (h // 4) * (w // 4), *hidden, 2 * self.latent_dim], activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch = x.shape[:-3]
        h = self.head(self.conv(x.reshape(-1, *self.in_shape)))  # (prod(batch), 2 * latent)
        loc, raw = h.reshape(*batch, -1).chunk(2, dim=-1)  # (..., latent_dim) each
        return loc, positive_scale(raw)


class ConvDecoder(Decoder):
    """Mirror of :class:`ConvEncoder` with transposed convolutions.

    :param out_shape: ``(k, C, H, W)``: ``k`` likelihood parameters per pixel.
    """

    def __init__(
        self,
        latent_dim: int,
        out_shape: Sequence[int],
        hidden: Sequence[int] = (256,),
        activation: str = "relu",
        channels: Sequence[int] = (32, 64),
    ):
        super().__init__()
        _check_positive("latent_dim", latent_dim)
        self.latent_dim = int(latent_dim)
        self.out_shape = torch.Size(out_shape)
        if len(self.out_shape) != 4:
            raise ValueError(f"ConvDecoder needs out_shape (k, C, H, W), got {tuple(out_shape)}")
        _check_image_shape(self.out_shape[1:])
        act = ACTIVATIONS.get(activation)
        k, c, h, w = self.out_shape
        c1, c2 = channels
        self._grid = (c2, h // 4, w // 4)
        self.head = mlp([self.latent_dim, *hidden, c2 * (h // 4) * (w // 4)], activation)
        self.head.append(act())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),
            act(),  # (c1, H/2, W/2)
            nn.ConvTranspose2d(c1, k * c, 4, stride=2, padding=1),  # (k * C, H, W)
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        h = self.head(z.reshape(-1, self.latent_dim)).reshape(-1, *self._grid)
        return self.deconv(h).reshape(*batch, *self.out_shape)


def _mlp_networks(data_shape, param_shape, latent_dim, hidden, activation):
    return (
        MLPEncoder(data_shape, latent_dim, hidden, activation),
        MLPDecoder(latent_dim, param_shape, tuple(reversed(hidden)), activation),
    )


def _conv_networks(data_shape, param_shape, latent_dim, hidden, activation):
    return (
        ConvEncoder(data_shape, latent_dim, hidden, activation),
        ConvDecoder(latent_dim, param_shape, tuple(reversed(hidden)), activation),
    )


#: ``arch`` -> ``(data_shape, param_shape, latent_dim, hidden, activation) -> (encoder,
#: decoder)``; the decoder mirrors the encoder's hidden sizes
ARCHITECTURES: Registry[Callable[..., tuple[Encoder, Decoder]]] = Registry("arch", sort=False)
ARCHITECTURES.add("mlp", _mlp_networks)
ARCHITECTURES.add("conv", _conv_networks)


def make_networks(
    arch: str,
    data_shape: Sequence[int],
    param_shape: Sequence[int],
    latent_dim: int,
    hidden: Sequence[int] = (400,),
    activation: str = "relu",
) -> tuple[Encoder, Decoder]:
    """Encoder and decoder of the architecture registered as ``arch`` (``mlp`` or ``conv``).

    :param data_shape: shape of one datapoint.
    :param param_shape: decoder output per datapoint, ``likelihood.param_shape``.
    :raises UnknownNameError: for an unknown ``arch``, listing the valid ones.
    """
    return ARCHITECTURES.get(arch)(data_shape, param_shape, latent_dim, hidden, activation)
