"""Declaring a setting: a dataclass field that carries its help, its valid names and how its
default reads.

The configuration dataclasses (:class:`~pyro_vae.models.ModelConfig`,
:class:`~pyro_vae.config.RunConfig` and the applications') are made of such fields; the
command-line flags, flat TOML keys and ``config.json`` come from them
(:mod:`pyro_vae.config`).
"""

from __future__ import annotations

import math
from dataclasses import field
from typing import Any

from pyro_vae.registry import Registry


def setting(
    default: Any,
    help: str,
    *,
    choices: Registry | None = None,
    default_text: str | None = None,
    flag: str | None = None,
) -> Any:
    """A configuration field: its default, what it means, and its valid names.

    :param choices: the registry whose names are the valid values (the flag offers them).
    :param default_text: how ``--help`` states the default (e.g. ``"shared"`` for a ``None``
        that means "the likelihood decides"); by default the value itself.
    :param flag: the command-line flag, when it is not the field's name in kebab case.
    """
    return field(
        default=default,
        metadata={"help": help, "choices": choices, "default_text": default_text, "flag": flag},
    )


def section(factory) -> Any:
    """A nested configuration (its fields are flags of the same level as the others')."""
    return field(default_factory=factory, metadata={"section": True})


def at_least(name: str, value: float, low: float, strict: bool = False) -> None:
    """Refuse ``value`` below ``low`` (or equal, when ``strict``), and NaN or an infinity,
    naming it ``name``."""
    finite(name, value)
    if value <= low if strict else value < low:
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value}")


def finite(name: str, value: float) -> None:
    """Refuse ``None``, NaN and infinities, naming the setting ``name``."""
    if value is None or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")


def ints(value) -> tuple[int, ...]:
    """A tuple of ints from a tuple, a list (JSON, TOML) or one int (``hidden = 16``)."""
    return (int(value),) if isinstance(value, int) else tuple(int(v) for v in value)
