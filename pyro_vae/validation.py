"""Pyro's argument validation: kept on, and its refusals read.

Validation is never turned off in pyro-vae. :func:`validation_on` runs a function with Pyro's
and torch's argument checks on whatever ``python -O`` or the caller set; the other helpers
recognise torch's refusal of a distribution parameter (a scale <= 0, a NaN) and shorten it
to the sentence that says which constraint failed, without the dump of the tensor's values.
"""

from __future__ import annotations

import functools
import re

import numpy as np
import pyro


def validation_on(fn):
    """Run ``fn`` with Pyro's and torch's argument validation on (it defaults to
    ``__debug__``); the previous setting is restored."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with pyro.validation_enabled(True):
            return fn(*args, **kwargs)

    return wrapper


def invalid_distribution_argument(error: BaseException) -> bool:
    """Whether ``error`` is torch's validation error for a distribution parameter."""
    return isinstance(error, ValueError) and "Expected parameter" in str(error)


def constraint_text(error: BaseException) -> str:
    """torch's invalid-argument message in one line: the parameter, the distribution's name
    and the constraint, without the distribution's arguments or the tensor's values."""
    first = str(error).strip().splitlines()[0].rstrip(":")
    return re.sub(
        r"of distribution (\w+)\(.*\) to satisfy", r"of distribution \1 to satisfy", first
    )


def validation_refusal(error: BaseException | None) -> str | None:
    """:func:`constraint_text` of the invalid-argument error in ``error``'s chain (its causes
    and contexts), or ``None`` if there is none."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if invalid_distribution_argument(error):
            return constraint_text(error)
        error = error.__cause__ or error.__context__
    return None


def shortest(value: float) -> str:
    """``value`` (a float32 datum) with the fewest digits that tell it apart from every other
    float32: ``1.0000001`` is not shown as ``1``, so a message about a bound never contradicts
    itself."""
    return str(np.float32(value))
