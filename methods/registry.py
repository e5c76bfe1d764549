"""The plugin registries: ``@register`` a ``Method`` subclass, ``@register_sampler`` a ``Sampler``
subclass (``methods.sampling``), each under its class attribute ``name``.

Built-in methods and samplers register when ``methods`` is imported. Extra plugins live in any
importable module that uses the decorators; ``benchmarks.run --plugins my_module`` imports them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from methods.base import Method

C = TypeVar("C", bound=type)


class Registry(Generic[C]):
    """Plugin classes of one ``kind`` ("method", "sampler") by their class attribute ``name``."""

    def __init__(self, kind: str):
        self.kind = kind
        self._classes: dict[str, C] = {}

    def register(self, cls: C) -> C:
        """Class decorator adding ``cls`` under ``cls.name``; a name already taken by another class is an error."""
        name = getattr(cls, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{cls.__qualname__} must set a class attribute `name` to register")
        if name in self._classes and self._classes[name] is not cls:
            raise ValueError(f"a {self.kind} named {name!r} is already registered ({self._classes[name].__qualname__})")
        self._classes[name] = cls
        return cls

    def get(self, name: str) -> C:
        try:
            return self._classes[name]
        except KeyError:
            known = ", ".join(self.names())
            raise KeyError(f"unknown {self.kind} {name!r}; registered {self.kind}s: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._classes)


METHODS: Registry[type[Method]] = Registry("method")
register = METHODS.register
get_method = METHODS.get
method_names = METHODS.names
