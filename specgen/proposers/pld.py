"""`pld`: prompt lookup decoding (Saxena, 2023).

Find the longest recent n-gram (max_ngram down to min_ngram) that ends the context and occurred
before in the prompt or the output so far; draft the tokens that followed its latest occurrence.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ..config import PLDConfig
from .base import Candidates, Proposer, ProposeContext
from .registry import register_method


def ngram_lookup(tokens: np.ndarray, max_ngram: int, min_ngram: int, num_draft: int) -> list[int]:
    """Continuation after the latest earlier occurrence of the longest matching suffix n-gram.

    tokens: [L] int64. Returns at most `num_draft` tokens, or [] when no n-gram matches.
    """
    length = tokens.shape[0]
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        suffix = tokens[length - n:]  # [n]
        # windows[i] = tokens[i : i + n] for every start that leaves at least one token after it
        windows = np.lib.stride_tricks.sliding_window_view(tokens[: length - 1], n)  # [L - n, n]
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n  # latest occurrence: recent text predicts best
            return tokens[start: start + num_draft].tolist()
    return []


class PromptLookupProposer(Proposer):
    """Chain drafts copied from earlier context; lossless under the loop's acceptance."""

    name = "pld"

    def __init__(self, cfg: PLDConfig) -> None:
        self.cfg = cfg

    def propose(self, ctx: ProposeContext) -> Candidates:
        tokens = np.asarray(ctx.tokens, dtype=np.int64)  # [L + 1]
        draft = ngram_lookup(tokens, self.cfg.max_ngram, self.cfg.min_ngram, min(self.cfg.num_draft, ctx.budget))
        return Candidates([draft], [1.0]) if draft else Candidates()


@register_method("pld", PLDConfig, lossless=True, summary="prompt lookup: n-gram match in prompt and output")
def make_pld(target: Any, cfg: PLDConfig) -> Proposer:
    return PromptLookupProposer(cfg)
