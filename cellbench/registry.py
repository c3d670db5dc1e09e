"""One small registry type for everything cellbench looks up by name.

Datasets, segmenters and metrics are registered with a lazy ``"module:attr"`` target, so listing
them imports nothing heavy; generators come from an entry-point group of the installed
distributions (``Registry(..., entry_point_group=...)``), read on first use. Registering a name
twice is an error, and a typo gets a "did you mean" suggestion.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from cellbench.errors import CellbenchError, UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry:
    """A registered name: its lazy target, a one-line summary and free-form metadata."""

    name: str
    target: str | object
    summary: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Name -> lazily imported object.

    Args:
        kind: what the registry holds ("dataset", "segmenter" ...), used in error messages.
        entry_point_group: also hold the entry points of this group of every installed
            distribution (``[project.entry-points."<group>"]`` in its ``pyproject.toml``), read on
            the first lookup; an entry's meta names its ``distribution``.
    """

    def __init__(self, kind: str, *, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._entries: dict[str, Entry] = {}
        self._loaded: dict[str, T] = {}
        self._scanned = entry_point_group is None

    def _scan(self) -> None:
        """Add the entry points of :attr:`entry_point_group` (once)."""
        if self._scanned:
            return
        self._scanned = True
        from importlib.metadata import entry_points

        for ep in entry_points(group=str(self.entry_point_group)):
            dist = getattr(ep, "dist", None)
            where = None if dist is None else dist.name
            old = self._entries.get(ep.name)
            if old is not None:
                if old.target == ep.value:
                    continue
                raise CellbenchError(
                    f"{self.kind} {ep.name!r} is registered twice, as {old.target} "
                    f"({old.meta.get('distribution')}) and {ep.value} ({where})",
                    fix="uninstall one of the two distributions",
                )
            self._entries[ep.name] = Entry(ep.name, ep.value, "", {"distribution": where})

    def register(self, name: str, target: str | object, *, summary: str = "", **meta: Any) -> None:
        """Add ``name``; ``target`` is an object or a ``"package.module:attribute"`` string."""
        self._scan()
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if isinstance(target, str) and ":" not in target:
            raise ValueError(
                f"lazy target for {name!r} must look like 'module:attr', got {target!r}"
            )
        self._entries[name] = Entry(name, target, summary, dict(meta))

    def unregister(self, name: str) -> None:
        """Remove ``name`` (unknown names raise with the closest matches)."""
        self.entry(name)
        del self._entries[name]
        self._loaded.pop(name, None)

    def entry(self, name: str) -> Entry:
        """The entry for ``name``; unknown names raise with the closest matches."""
        self._scan()
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self._unknown_message(name), fix=self._fix()) from None

    def get(self, name: str) -> T:
        """The object registered as ``name`` (imported on first use)."""
        if name not in self._loaded:
            target = self.entry(name).target
            if isinstance(target, str):
                module_name, attr = target.split(":", 1)
                obj: Any = importlib.import_module(module_name)
                for part in attr.split("."):
                    obj = getattr(obj, part)
                target = obj
            self._loaded[name] = target  # type: ignore[assignment]
        return self._loaded[name]

    def names(self) -> list[str]:
        """Registered names in registration order."""
        self._scan()
        return list(self._entries)

    def entries(self) -> list[Entry]:
        """Registered entries in registration order."""
        self._scan()
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        self._scan()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        self._scan()
        return iter(self._entries)

    def __len__(self) -> int:
        self._scan()
        return len(self._entries)

    def _unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self._entries, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} {name!r}{hint}"

    def _fix(self) -> str:
        return f"choose one of: {', '.join(self._entries)}"


def suggest(name: str, choices: list[str] | tuple[str, ...], kind: str) -> UnknownNameError:
    """An :class:`UnknownNameError` for ``name`` with "did you mean" over ``choices``."""
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return UnknownNameError(f"unknown {kind} {name!r}{hint}")
