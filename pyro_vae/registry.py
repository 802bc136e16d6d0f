"""A name -> entry registry whose errors list the valid choices.

Every user-facing name in pyro-vae (likelihoods, estimators, architectures, activations,
datasets, binarization modes, devices, ...) is looked up through a :class:`Registry`, so a
typo always answers with the valid names and the closest one, in one wording.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """Raised for a name that is not registered; the message lists the valid choices."""


class Registry(Generic[T]):
    """Maps names to entries (factories, classes, specs or descriptions).

    :param str kind: what the names denote ("likelihood", "estimator", ...), used in messages.
    :param str hint: what else is accepted, appended to the list of valid choices (e.g. "or a
        path to an idx folder" for datasets).
    :param bool sort: list the names sorted (``False``: in the order they were registered).
    """

    def __init__(self, kind: str, hint: str | None = None, sort: bool = True):
        self.kind = kind
        self.hint = hint
        self.sort = sort
        self._entries: dict[str, T] = {}

    @classmethod
    def of(cls, kind: str, names: Iterable[str], hint: str | None = None) -> Registry[None]:
        """A registry of plain choices (a mode, a device), listed in the order given."""
        registry = cls(kind, hint, sort=False)
        for name in names:
            registry.add(name, None)
        return registry

    def add(self, name: str, entry: T) -> T:
        """Register ``entry`` under ``name``; returns ``entry``."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``."""
        return lambda obj: self.add(name, obj)

    def get(self, name: str) -> T:
        """The entry for ``name``.

        :raises UnknownNameError: listing the valid names and the closest match.
        """
        try:
            return self._entries[name]
        except (KeyError, TypeError):  # TypeError: an unhashable "name"
            raise UnknownNameError(self.unknown_message(name)) from None

    def check(self, name: str) -> str:
        """``name`` itself, if it is registered.

        :raises UnknownNameError: listing the valid names and the closest match.
        """
        self.get(name)
        return name

    def unknown_message(self, name: object) -> str:
        choices = ", ".join(self.names())
        msg = f"unknown {self.kind} {name!r}; valid choices: {choices}"
        if self.hint:
            msg += f" ({self.hint})"
        close = difflib.get_close_matches(str(name), self.names(), n=1)
        if close:
            msg += f" (did you mean {close[0]!r}?)"
        return msg

    def names(self) -> list[str]:
        return sorted(self._entries) if self.sort else list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._entries[name]) for name in self.names()]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
