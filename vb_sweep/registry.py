"""A name -> entry registry, so attacks, datasets, models, defense variants and augmentations
are looked up by the names used on every command line and in every table."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Generic, Iterator, TypeVar

from vb_sweep.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, field: str):
        self.field = field
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(entry: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.field} {name!r} registered twice")
            self._entries[name] = entry
            return entry

        return decorator

    @contextmanager
    def registered(self, name: str, entry: T) -> Iterator[T]:
        """``entry`` under ``name`` inside a ``with`` block only (a test's extension)."""
        self.register(name)(entry)
        try:
            yield entry
        finally:
            del self._entries[name]

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise ConfigError(self.field, name, self.names())
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries
