"""The method registry: ``@register`` a ``Method`` subclass under its ``name``.

Built-in methods register when ``methods`` is imported. Extra plugins live in any importable
module that uses ``@register``; ``benchmarks.run --plugins my_module`` imports them.
"""
from __future__ import annotations

from typing import TypeVar

from methods.base import Method

_REGISTRY: dict[str, type[Method]] = {}

M = TypeVar("M", bound=type[Method])


def register(cls: M) -> M:
    """Class decorator adding a method plugin to the registry under ``cls.name``."""
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{cls.__qualname__} must set a class attribute `name` to register")
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"a method named {name!r} is already registered ({_REGISTRY[name].__qualname__})")
    _REGISTRY[name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; registered methods: {', '.join(method_names())}") from None


def method_names() -> list[str]:
    return sorted(_REGISTRY)
