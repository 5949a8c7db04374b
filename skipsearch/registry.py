"""One registry style for everything chosen by name: solvers, models, search spaces, samplers,
pruners and feature extractors.

A `Registry` is a read-only mapping from names to objects with a `lookup` that raises the area's
own error, naming the valid choices, so every "unknown X" message reads the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Generic, TypeVar

from .errors import SkipsearchError

__all__ = ["Registry", "BUILTIN_PREFIX"]

BUILTIN_PREFIX = "builtin:"  # names a registered built-in (a model, a reference) where a path could stand

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Named objects of one kind. `store` lets a registry read another library's (torch-fidelity's)."""

    def __init__(
        self,
        kind: str,
        error: type[SkipsearchError],
        store: MutableMapping[str, T] | None = None,
    ) -> None:
        self.kind = kind
        self.error = error
        self._items: MutableMapping[str, T] = {} if store is None else store

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """`registry.register(name, obj)`, or `@registry.register(name)` as a decorator."""

        def add(item: T) -> T:
            if name in self._items and self._items[name] is not item:
                raise self.error(f"a {self.kind} named {name!r} is already registered")
            self._items[name] = item
            return item

        return add if obj is None else add(obj)

    def lookup(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise self.error(f"unknown {self.kind} {name!r}; choose one of {', '.join(self.names())}") from None

    def names(self) -> list[str]:
        return list(self._items)

    def __getitem__(self, name: str) -> T:
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}: {', '.join(self.names())})"
