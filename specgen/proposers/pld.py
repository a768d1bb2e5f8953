"""`pld`: prompt lookup decoding (Saxena, 2023).

Find the longest recent n-gram (max_ngram down to min_ngram) that ends the context and occurred
before in the prompt or the output so far; draft the tokens that followed its latest occurrence.

The draft's score is its evidence (`PLDConfig.score_by="match"`): how many tokens before it agree
between that occurrence and the context's end, up to `score_cap`. A single token of agreement
(a common word met again) rarely predicts what follows; a line of code repeated for twelve tokens
usually does. Tree sizing calibrates acceptance per score bin (decoding/calibration.py), so the two
are learnt apart: a server's calibration taught by prose that short matches fail still verifies a
long match on its first sight. The score never changes the draft, only how much of it is verified.
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
    return ngram_match(tokens, max_ngram, min_ngram, num_draft)[0]


def ngram_match(tokens: np.ndarray, max_ngram: int, min_ngram: int, num_draft: int,
                cap: int = 0) -> tuple[list[int], int]:
    """`ngram_lookup`'s draft and the length of the match behind it: how many tokens end both the
    context and the text before the draft, counted up to `cap` (at least the matched n-gram's
    length; `cap` 0: that length alone). ([], 0) when no n-gram matches.

    tokens: [L] int64.
    """
    length = tokens.shape[0]
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        suffix = tokens[length - n:]  # [n]
        # windows[i] = tokens[i : i + n] for every start that leaves at least one token after it
        windows = np.lib.stride_tricks.sliding_window_view(tokens[: length - 1], n)  # [L - n, n]
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        if hits.size:
            start = int(hits[-1]) + n  # latest occurrence: recent text predicts best
            return tokens[start: start + num_draft].tolist(), agreement(tokens, start, n, cap)
    return [], 0


def agreement(tokens: np.ndarray, start: int, n: int, cap: int) -> int:
    """Tokens that agree backwards from `tokens[start - 1]` and from the context's last token, at
    least `n` (known to match) and at most max(n, cap); the two spans may overlap (a repeated token).

    tokens: [L] int64; `start` is where the draft begins, after an n-gram that ends the context.
    """
    length, k = tokens.shape[0], n
    limit = min(max(n, cap), start)  # the earlier span cannot reach before the first token
    if limit > n:
        before = tokens[start - limit: start][::-1]  # [limit] backwards from the draft's start
        ending = tokens[length - limit:][::-1]  # [limit] backwards from the context's end
        diff = np.flatnonzero(before != ending)
        k = int(diff[0]) if diff.size else limit
    return k


class PromptLookupProposer(Proposer):
    """Chain drafts copied from earlier context; lossless under the loop's acceptance."""

    name = "pld"

    def __init__(self, cfg: PLDConfig) -> None:
        self.cfg = cfg

    def propose(self, ctx: ProposeContext) -> Candidates:
        tokens = np.asarray(ctx.tokens, dtype=np.int64)  # [L + 1]
        match = self.cfg.score_by == "match"
        draft, k = ngram_match(tokens, self.cfg.max_ngram, self.cfg.min_ngram, min(self.cfg.num_draft, ctx.budget),
                               self.cfg.score_cap if match else 0)
        return Candidates([draft], [float(k) if match else 1.0]) if draft else Candidates()


@register_method("pld", PLDConfig, lossless=True, summary="prompt lookup: n-gram match in prompt and output")
def make_pld(target: Any, cfg: PLDConfig) -> Proposer:
    return PromptLookupProposer(cfg)
