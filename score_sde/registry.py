"""Named registries: things register where they are defined, users pick them by name.

A `Registry` maps names to entries (samplers, predictors, models, modes, ...). Entries are
added by a decorator at their definition, so adding one is one decorated function, never an
edit to a table elsewhere; a look-up of a name that is not there raises one message that names
the field, the bad name and the allowed names. It is a mutable mapping (tests can
`monkeypatch.setitem` an entry; `registry[name] = entry` replaces one on purpose).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, MutableMapping
from typing import Any, Generic, TypeVar

T = TypeVar("T")
D = TypeVar("D")


class UnknownNameError(ValueError, KeyError):
    """A name that is not registered: a ValueError for people, a KeyError for mappings."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


class Registry(MutableMapping[str, T], Generic[T]):
    """Entries of one kind by name; iteration follows registration order.

    kind: what an entry is, for messages ('sampler'); field: where users write the name, for
    messages ('config.sampling.method'); entries: initial (name, entry) pairs.
    """

    def __init__(self, kind: str, field: str | None = None,
                 entries: Mapping[str, T] | None = None):
        self.kind, self.field = kind, field
        self._entries: dict[str, T] = dict(entries or {})

    def register(self, name: str,
                 wrap: Callable[[Any], T] | None = None) -> Callable[[D], D]:
        """Decorator: store the decorated object (or `wrap(object)`) as `name`; returns it.

        A name registered twice is an error (two definitions would silently shadow each other).
        """
        def add(obj: D) -> D:
            if name in self._entries:
                raise ValueError(f"a {self.kind} named {name!r} is already registered")
            self._entries[name] = obj if wrap is None else wrap(obj)
            return obj

        return add

    def lookup(self, name: str, field: str | None = None) -> T:
        """The entry `name`; else one ValueError naming the field, the name and the choices."""
        if name in self._entries:
            return self._entries[name]
        field = field or self.field
        where = f"{field}={name!r} is not a known {self.kind}" if field else (
            f"{self.kind} {name!r} is unknown")
        raise UnknownNameError(f"{where}; choose one of {self.names()}")

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._entries)

    def names_where(self, keep: Callable[[T], bool]) -> Collection[str]:
        """A live view of the names whose entry passes `keep` (later registrations count)."""
        return _NamesWhere(self, keep)

    def __getitem__(self, name: str) -> T:
        return self.lookup(name)

    def __setitem__(self, name: str, entry: T) -> None:
        self._entries[name] = entry

    def __delitem__(self, name: str) -> None:
        del self._entries[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


class _NamesWhere(Collection[str]):
    """Names of a registry's entries that pass a test, read at each use."""

    def __init__(self, registry: Registry, keep: Callable[[Any], bool]):
        self._registry, self._keep = registry, keep

    def __contains__(self, name: object) -> bool:
        return name in self._registry and self._keep(self._registry[name])

    def __iter__(self) -> Iterator[str]:
        return iter([n for n in self._registry.names() if self._keep(self._registry[n])])

    def __len__(self) -> int:
        return len(list(iter(self)))

    def __repr__(self) -> str:
        return repr(tuple(self))
