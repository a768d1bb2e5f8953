"""`ar`: plain autoregressive decoding, the baseline every speedup is measured against."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .base import NullProposer, Proposer
from .registry import register_method


@dataclass(frozen=True)
class ARConfig:
    """`ar` has no options."""


@register_method("ar", ARConfig, lossless=True, summary="plain decoding: one target forward per token")
def make_ar(target: Any, cfg: ARConfig) -> Proposer:
    return NullProposer()
