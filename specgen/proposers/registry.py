"""Methods registered by name: each is (config class, proposer factory, acceptance rule) on the
shared step engine, or (config class, driver) for a step-level method such as `specguard`.

A method is a proposer plus an acceptance rule (DESIGN.md section 1, table); the engine is shared.
Nothing outside a method's own package asks which method it is: callers read the spec's fields.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import SpecgenError
from .base import Proposer

ProposerFactory = Callable[..., Proposer]  # (target ModelBundle, method config[, draft=bundle]) -> Proposer
RuleFactory = Callable[[Any, Any], Any]  # (target ModelBundle, method config) -> an engine AcceptRule
Driver = Callable[..., Any]  # generate-like: (target, prompt, *, gen, config, raw, on_text, draft) -> GenerationResult


def exact_match(target: Any, cfg: Any) -> Any:
    """The lossless rule, for every method that does not name another."""
    from ..decoding.accept import ExactMatch

    return ExactMatch()


@dataclass(frozen=True)
class MethodSpec:
    """A decoding method: its name, config class, how it runs, and whether it is lossless.

    Token-level methods give `factory` (the proposer) and `rule` (the acceptance rule); a step-level
    method gives `driver` instead. `draft_vocab`: a separate draft model must share the target's
    vocabulary (token-level drafts do; SpecGuard's steps cross as text).
    """

    name: str
    config_cls: type
    factory: ProposerFactory | None
    lossless: bool
    summary: str
    rule: RuleFactory = exact_match
    driver: Driver | None = None
    draft_vocab: bool = True

    @property
    def token_level(self) -> bool:
        return self.driver is None

    def is_lossless(self, cfg: Any) -> bool:
        """Lossless under this config (a lossless method made lossy by an option, e.g. the soft gate)."""
        gate = getattr(cfg, "gate", None)
        return self.lossless and not getattr(gate, "enabled", False)


_METHODS: dict[str, MethodSpec] = {}


def register_method(name: str, config_cls: type, *, lossless: bool, summary: str, rule: RuleFactory = exact_match,
                    ) -> Callable[[ProposerFactory], ProposerFactory]:
    """Decorator: register proposer `factory` under `name`, with its acceptance rule."""

    def deco(factory: ProposerFactory) -> ProposerFactory:
        _METHODS[name] = MethodSpec(name, config_cls, factory, lossless, summary, rule)
        return factory

    return deco


def register_driver(name: str, config_cls: type, driver: Driver, *, lossless: bool, summary: str,
                    draft_vocab: bool = True) -> None:
    """Register a step-level method that runs its own driver over the engine."""
    _METHODS[name] = MethodSpec(name, config_cls, None, lossless, summary, driver=driver, draft_vocab=draft_vocab)


def _load_builtin() -> None:
    # Importing the modules runs their registrations.
    from . import ar, draft_model, pld  # noqa: F401
    from ..specguard import method  # noqa: F401

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
    """Names of every registered method."""
    _load_builtin()
    return sorted(_METHODS)


def make_config(name: str, options: dict[str, Any]) -> Any:
    """Build method `name`'s config from `options` (None values = not given).

    Keys are config field names; a nested dataclass field `gate` takes keys `gate_<subfield>`.
    An option that the method does not use is a conflict: a one-line SpecgenError.
    """
    cls = get_method(name).config_cls
    given = {k: v for k, v in options.items() if v is not None}
    presets = getattr(cls, "PRESETS", None)
    if presets is not None and "preset" in given:  # a named option set, under the explicit options
        preset = given.pop("preset")
        if preset not in presets:
            raise SpecgenError(f"unknown {name} preset '{preset}' (choose from {', '.join(presets)})")
        given = {**presets[preset], **given}
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


def draft_name(config: Any, target_name: str | None) -> str | None:
    """The separate draft model a method config loads for the target (None: none)."""
    from ..catalog import DEFAULT_MODEL

    resolve = getattr(config, "draft_for", None)
    return resolve(target_name or DEFAULT_MODEL) if resolve is not None else None
