"""Methods registered by name: each maps to a config class and a proposer factory.

A method is a proposer plus an acceptance rule (DESIGN.md section 1, table); the loop is shared.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import SpecgenError
from .base import Proposer

ProposerFactory = Callable[[Any, Any], Proposer]  # (target ModelBundle, method config) -> Proposer


@dataclass(frozen=True)
class MethodSpec:
    """A decoding method: its name, config class, proposer factory and whether it is lossless."""

    name: str
    config_cls: type
    factory: ProposerFactory
    lossless: bool
    summary: str


_METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, config_cls: type, *, lossless: bool, summary: str) -> Callable[[ProposerFactory], ProposerFactory]:
    """Decorator: register `factory` under `name`."""

    def deco(factory: ProposerFactory) -> ProposerFactory:
        _METHODS[name] = MethodSpec(name, config_cls, factory, lossless, summary)
        return factory

    return deco


def _load_builtin() -> None:
    # Importing the modules runs their @register_method decorators.
    from . import ar, draft_model, pld  # noqa: F401

    for optional in ("rest", "sense"):
        try:
            __import__(f"{__package__}.{optional}")
        except ImportError:  # a method module still being written must not break the others
            pass


def get_method(name: str) -> MethodSpec:
    """The registered method `name`, or a one-line SpecgenError naming the known ones."""
    _load_builtin()
    if name not in _METHODS:
        raise SpecgenError(f"unknown method '{name}' (choose from {', '.join(available_methods())})")
    return _METHODS[name]


def available_methods() -> list[str]:
    """Names of every registered token-level method, plus the step-level `specguard`."""
    _load_builtin()
    return sorted(set(_METHODS) | {"specguard"})


def make_config(name: str, options: dict[str, Any]) -> Any:
    """Build method `name`'s config from `options` (None values = not given).

    Keys are config field names; a nested dataclass field `gate` takes keys `gate_<subfield>`.
    An option that the method does not use is a conflict: a one-line SpecgenError.
    """
    cls = get_method(name).config_cls if name != "specguard" else _specguard_config_cls()
    given = {k: v for k, v in options.items() if v is not None}
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            prefix = f.name + "_"
            sub = {k[len(prefix):]: given.pop(k) for k in list(given) if k.startswith(prefix)}
            if sub:
                kwargs[f.name] = dataclasses.replace(default, **sub)
        elif f.name in given:
            kwargs[f.name] = given.pop(f.name)
    if given:
        flags = ", ".join("--" + k.replace("_", "-") for k in sorted(given))
        raise SpecgenError(f"option {flags} does not apply to method '{name}'")
    return cls(**kwargs)


def _specguard_config_cls() -> type:
    from ..specguard.config import SpecGuardConfig

    return SpecGuardConfig
