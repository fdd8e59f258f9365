"""One generic registry backing methods, tasks and backbones.

Entries are registered once under a public name with a one-line description; aliases name groups of entries
(`spt` -> both SPT depths, `fgvc` -> its five tasks). Lookups that miss say which names are valid and which are close.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, Generic, Iterable, TypeVar

from bench import BenchError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, tuple[str, ...]] = {}

    def register(self, name: str, obj: T, description: str) -> T:
        if name in self._entries or name in self._aliases:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = Entry(name, obj, description)
        return obj

    def decorator(self, name: str, description: str) -> Callable[[T], T]:
        return lambda obj: self.register(name, obj, description)

    def alias(self, name: str, targets: Iterable[str]) -> None:
        targets = tuple(targets)
        unknown = [t for t in targets if t not in self._entries]
        if unknown or name in self._entries:
            raise ValueError(f"{self.kind} alias {name!r} is invalid (unknown targets {unknown} or name taken)")
        self._aliases[name] = targets

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def entry(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise BenchError(self._miss_message(name))
        return self._entries[name]

    def names(self, pattern: str = "*") -> list[str]:
        return [n for n in self._entries if fnmatch.fnmatchcase(n, pattern)]

    def entries(self, pattern: str = "*") -> list[Entry[T]]:
        return [self._entries[n] for n in self.names(pattern)]

    def aliases(self) -> dict[str, tuple[str, ...]]:
        return dict(self._aliases)

    def resolve(self, selection: str | Iterable[str]) -> list[str]:
        """Expand a comma list (or iterable) of names, aliases and globs into registered names, in order, once each."""
        items = selection.split(",") if isinstance(selection, str) else list(selection)
        resolved: list[str] = []
        for item in (i.strip() for i in items):
            if not item:
                continue
            if item in self._aliases:
                matched = list(self._aliases[item])
            elif any(ch in item for ch in "*?["):
                matched = self.names(item)
                if not matched:
                    raise BenchError(f"no {self.kind} matches {item!r}; valid: {', '.join(self._all_names())}")
            else:
                matched = [self.entry(item).name]
            resolved.extend(m for m in matched if m not in resolved)
        if not resolved:
            raise BenchError(f"no {self.kind} selected; valid: {', '.join(self._all_names())}")
        return resolved

    def _all_names(self) -> list[str]:
        return sorted(self._entries) + sorted(self._aliases)

    def _miss_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self._all_names(), n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        return f"unknown {self.kind} {name!r}; valid: {', '.join(self._all_names())}.{hint}"


def import_family_files(package: str, path: Iterable[str]) -> list[str]:
    """Import every public module of a package, in name order: `methods/` and `tasks/` register their entries on
    import, so a new method or task family is one new file, with no import line to add anywhere (lm-evaluation-
    harness finds its tasks by walking folders). Modules whose name starts with `_` are helpers and are skipped.

    Args:
        package: the package's dotted name (its `__name__`).
        path: the package's `__path__`.
    """
    names = [f"{package}.{info.name}" for info in pkgutil.iter_modules(path) if not info.name.startswith("_")]
    for name in names:
        importlib.import_module(name)
    return names
