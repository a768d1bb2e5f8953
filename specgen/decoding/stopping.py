"""Where generation ends: EOS (kept), max_new_tokens or the end of the context, a stop string."""
from __future__ import annotations

from typing import Any

from ..config import GenerationConfig


class Stopper:
    """Decides, token by token, where generation ends: EOS (kept), max_new_tokens or the end of the
    model's context (`limit`), a stop string."""

    def __init__(self, tokenizer: Any, eos_ids: set[int], gen: GenerationConfig, limit: int | None = None) -> None:
        self.tokenizer, self.eos_ids, self.gen = tokenizer, eos_ids if gen.stop_at_eos else set(), gen
        self.limit = gen.max_new_tokens if limit is None else min(limit, gen.max_new_tokens)
        self.generated: list[int] = []
        self.reason: str | None = None

    @property
    def remaining(self) -> int:
        return self.limit - len(self.generated)

    def feed(self, tokens: list[int]) -> list[int]:
        """Append `tokens` up to where generation ends; return the ones kept."""
        kept = []
        for t in tokens:
            self.generated.append(t)
            kept.append(t)
            if t in self.eos_ids:
                self.reason = "eos"
            elif self.gen.stop and any(s in self.tokenizer.decode(self.generated[-64:], skip_special_tokens=True)
                                       for s in self.gen.stop):
                self.reason = "stop"
            elif len(self.generated) >= self.limit:
                self.reason = "length"
            if self.reason:
                break
        return kept
