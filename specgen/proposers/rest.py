"""`rest`: retrieval-based speculative decoding (REST, He et al., 2023), lossless.

The datastore is the suffix array of an index folder's token stream (`specgen build-index`; the
lexical half needs only the tokenizer to match). Each step: find the longest suffix of the context
(pending token last) that occurs in the datastore, take up to `max_candidates` continuations that
follow its occurrences and score each by its frequency among them; the loop merges them into a trie
(node score = summed frequency, REST's trie selection) and prunes it to the node budget.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..datastore.store import SemanticIndex
from ..errors import SpecgenError
from ..validate import check_fields, in_range, input_path
from .base import Candidates, Proposer, ProposeContext
from .registry import register_method


@dataclass(frozen=True)
class RESTConfig:
    """REST retrieval options (defaults: REST's paper settings where it states them)."""

    index: str | None = None  # index folder from `specgen build-index` (required)
    max_suffix_len: int = 16  # longest context suffix looked up
    min_suffix_len: int = 2  # shorter matches draft nothing
    max_candidates: int = 64  # continuations retrieved per step (evenly sampled when more occur)
    continuation_len: int = 16  # tokens per continuation (also capped by the node budget)

    def __post_init__(self) -> None:
        check_fields(self)
        if self.index is not None:
            input_path("index", self.index, "dir")
        for name in ("max_suffix_len", "min_suffix_len", "max_candidates", "continuation_len"):
            in_range(name, getattr(self, name), 1, 4096)
        if not 1 <= self.min_suffix_len <= self.max_suffix_len:
            raise SpecgenError(f"need 1 <= min-suffix-len <= max-suffix-len, got {self.min_suffix_len}, {self.max_suffix_len}")
        if self.max_candidates < 1 or self.continuation_len < 1:
            raise SpecgenError("rest: max-candidates and continuation-len must be >= 1")


class RESTProposer(Proposer):
    """Continuations after the longest context suffix found in the datastore, scored by frequency."""

    name = "rest"

    def __init__(self, index: SemanticIndex, cfg: RESTConfig) -> None:
        self.cfg = cfg
        self.suffix = index.suffix_array

    def propose(self, ctx: ProposeContext) -> Candidates:
        length = min(self.cfg.continuation_len, ctx.budget)
        if length <= 0:
            return Candidates()
        found = self.suffix.continuations(ctx.tokens, max_candidates=self.cfg.max_candidates, continuation_len=length,
                                          max_suffix_len=self.cfg.max_suffix_len, min_suffix_len=self.cfg.min_suffix_len)
        return Candidates([seq for seq, _ in found], [score for _, score in found])


def target_identity(target: Any) -> dict[str, str] | None:
    """The target bundle's identity when it has one (test doubles may not)."""
    identity = getattr(target, "identity", None)
    return identity() if callable(identity) else None


@register_method("rest", RESTConfig, lossless=True, summary="REST: longest suffix match in a token datastore")
def make_rest(target: Any, cfg: RESTConfig, draft: Any = None) -> Proposer:
    if not cfg.index:
        raise SpecgenError("method 'rest' needs --index: build one with `specgen build-index CORPUS`")
    index = SemanticIndex.load_cached(cfg.index, expected_identity=target_identity(target), tokenizer_only=True)
    return RESTProposer(index, cfg)
