"""Named registries of the suite's extension points: data sets, tokenizers, feature extractors, metrics.

A ``Registry`` maps a name to an entry (an object with a ``name``). ``register`` is its decorator:
on a class it registers an instance (``cls()``) and returns the class; on an object it registers
the object. Built-in entries register when their package is imported; plugins are any importable
module that registers (``python -m benchmarks.run --plugins my_module``).

A registry created with a config ``key`` (``data.dataset``) is checked when a config is validated
(``benchmarks.core.config.validate``): an unknown value is a ConfigError naming the key and the
registered names. The registries live on the floors that own them (``benchmarks.data``,
``benchmarks.evaluation``); this floor only holds the mechanism, so a config validates against the
registries imported so far (every command-line entry point imports all of them first).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_KEYED: dict[str, Registry] = {}


class Registry(Generic[T]):
    """name -> entry. ``what``: the kind of entry, for messages (``"data set"``). ``key``: the config
    key (dotted) whose value names an entry, if any; ``also``: other values that key accepts
    (e.g. ``auto``). ``many``: the key holds a list of names (None = every registered entry)."""

    def __init__(self, what: str, key: str | None = None, *, also: tuple[str, ...] = (), many: bool = False):
        self.what, self.key, self.also, self.many = what, key, tuple(also), many
        self._entries: dict[str, T] = {}
        if key is not None:
            if key in _KEYED and _KEYED[key].what != what:  # the same registry again (a module reload) replaces it
                raise ValueError(f"config key {key!r} already has a registry ({_KEYED[key].what})")
            _KEYED[key] = self

    def register(self, entry):
        """Decorator: add ``entry`` (a class is instantiated with no arguments) under ``entry.name``.
        Returns ``entry`` unchanged."""
        obj = entry() if isinstance(entry, type) else entry
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(
                f"{getattr(entry, '__qualname__', entry)!r} must set a non-empty string `name` "
                f"to register as a {self.what}"
            )
        old = self._entries.get(name)
        if old is not None and _origin(old) != _origin(obj):  # the same class again (a module reload) replaces it
            raise ValueError(f"a {self.what} named {name!r} is already registered ({type(old).__qualname__})")
        self._entries[name] = obj
        return entry

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(self.unknown(name)) from None

    def unknown(self, name: Any) -> str:
        return f"unknown {self.what} {name!r}; registered: {', '.join(self.names())}"

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._entries)

    def entries(self) -> list[T]:
        """Registered entries in registration order."""
        return list(self._entries.values())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def modules(self) -> list[str]:
        """The modules that define the registered entries' classes (what a job process imports)."""
        return sorted({type(e).__module__ for e in self._entries.values()})

    @contextlib.contextmanager
    def scratch(self) -> Iterator[Registry[T]]:
        """Registrations made inside the block are undone at its end (for tests)."""
        saved = dict(self._entries)
        try:
            yield self
        finally:
            self._entries = saved

    def check(self, value: Any) -> str | None:
        """None if ``value`` (the config key's value) names registered entries, else the message."""
        values = ([] if value is None else list(value)) if self.many else [value]
        for v in values:
            if v not in self._entries and v not in self.also:
                return f"{self.key}: {self.unknown(v)}"
        return None


def _origin(entry: object) -> tuple[str, str]:
    return type(entry).__module__, type(entry).__qualname__


def config_value(cfg: Any, key: str) -> Any:
    """The value of a dotted ``key`` of a config dataclass."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def registry_errors(cfg: Any) -> list[str]:
    """Messages for every keyed registry whose config value is not registered."""
    return [m for key, reg in _KEYED.items() if (m := reg.check(config_value(cfg, key))) is not None]
