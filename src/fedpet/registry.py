"""Named extensions of one kind: fedpet's own, the user's, and installed packages'.

A registry maps names to methods, algorithms or codecs. It holds fedpet's own, those a
user's module adds with ``register`` (``fedpet run --plugin my_module`` imports one), and
those installed packages declare in an entry-point group (``fedpet.methods``,
``fedpet.algorithms``, ``fedpet.codecs``), loaded the first time a name is looked up.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Generic, TypeVar

from fedpet.errors import FedpetError

T = TypeVar("T")


class Registry(MutableMapping[str, T], Generic[T]):
    """A mapping of names to extensions of one kind.

    Setting a name registers (a name taken by another extension is refused); deleting one
    unregisters it.

    Parameters
    ----------
    kind
        What the extensions are, in messages (``method``).
    group
        The entry-point group installed packages declare theirs in.
    builtins
        fedpet's own, by name.
    adapt
        Turns what an entry point names into an extension (e.g. a class into an instance).
    """

    def __init__(
        self,
        kind: str,
        group: str,
        builtins: Mapping[str, T],
        adapt: Callable[[object], T] | None = None,
    ) -> None:
        self.kind, self.group = kind, group
        self._items: dict[str, T] = dict(builtins)
        self.adapt = adapt
        self.loaded = False

    def register(self, name: str, item: T) -> None:
        """Add ``item`` under ``name``; a name taken by another extension is refused."""
        current = self._items.get(name)
        if current is not None and current is not item:
            raise FedpetError(f"a {self.kind} named {name!r} is registered already")
        self._items[name] = item

    def _entry_points(self) -> None:
        if self.loaded:
            return
        self.loaded = True
        for point in importlib.metadata.entry_points(group=self.group):
            try:
                found = point.load()
            except Exception as exc:  # a broken plugin is bad input, not fedpet's bug
                raise FedpetError(
                    f"entry point {point.name!r} of {self.group} cannot be loaded: "
                    f"{exc.__class__.__name__}: {exc}"
                ) from None
            self.register(point.name, self.adapt(found) if self.adapt else found)  # type: ignore[arg-type]

    def __setitem__(self, name: str, item: T) -> None:
        self.register(name, item)

    def __delitem__(self, name: str) -> None:
        del self._items[name]

    def __getitem__(self, name: str) -> T:
        self._entry_points()
        return self._items[name]

    def __iter__(self) -> Iterator[str]:
        self._entry_points()
        return iter(self._items)

    def __len__(self) -> int:
        self._entry_points()
        return len(self._items)
