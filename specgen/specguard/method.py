"""`specguard` in the method registry: a step-level method, run by its own driver on the engine."""
from __future__ import annotations

from typing import Any

from ..proposers.registry import register_driver
from .config import SpecGuardConfig


def _driver(target: Any, prompt: Any, *, gen: Any, config: Any, raw: bool = False, on_text: Any = None,
            draft: Any = None, prefilled: Any = None) -> Any:
    from ..errors import SpecgenError
    from .steps import generate_specguard

    if prefilled is not None:
        raise SpecgenError("specguard cannot continue a prefilled cache")
    return generate_specguard(target, prompt, gen=gen, config=config, raw=raw, on_text=on_text, draft=draft)


register_driver("specguard", SpecGuardConfig, _driver, lossless=False, draft_vocab=False,
                summary="k sampled reasoning steps from a draft, verified by attention grounding and log-probability")
