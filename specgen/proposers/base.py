"""The proposer protocol: what every drafting method answers to, and the Candidates it returns.

Proposers never see the token tree or the KV cache (DESIGN.md section 1): they get a ProposeContext
and return candidate continuations with scores; the loop builds, verifies and accepts.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch


@dataclass
class ProposeContext:
    """What the loop knows before a step.

    `tokens` holds the prompt, every accepted token and, last, the pending token: the target's own
    choice that is already emitted but whose KV entry is not yet computed. Drafts continue after it.
    """

    tokens: list[int]  # [L + 1] prompt + generated, pending token last
    prompt_len: int
    budget: int  # most draft tokens the loop will verify this step (tree nodes, root excluded)
    # [H] hidden state (at the proposer's `hidden_layer`) of position L - 1: it predicted the pending token.
    hidden: torch.Tensor | None = None
    # [L, H] hidden states of every position with a KV entry (prompt + accepted), same layer.
    context_hidden: torch.Tensor | None = None
    # Deepest draft worth its cost this step (cost-aware sizing of a proposer whose every depth is
    # a model forward, `Proposer.draft_cost_per_depth`); None = no limit beyond `budget`.
    max_depth: int | None = None


@dataclass
class Candidates:
    """Candidate continuations of the pending token, best first; `scores` weight the trie."""

    sequences: list[list[int]] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    # The trie ranks a node at depth d by score * depth_decay ** d when it spends the node budget.
    # 1.0 ranks by summed score alone, so one confident candidate's whole chain outranks every
    # alternative first token; < 1 keeps a few of those alternatives instead of the chain's tail.
    depth_decay: float = 1.0

    def __post_init__(self) -> None:
        assert len(self.sequences) == len(self.scores), "one score per candidate sequence"
        assert 0 < self.depth_decay <= 1, "depth_decay in (0, 1]"

    def __len__(self) -> int:
        return len(self.sequences)


class Proposer(ABC):
    """A drafting method. Register a factory for it in `specgen.proposers.registry`."""

    name: ClassVar[str] = "base"
    # Which hidden states the loop must keep for this proposer: None = none, -1 = the final normed
    # state that feeds the LM head, l >= 0 = the output of decoder layer l (hidden_states[l + 1]).
    hidden_layer: int | None = None
    # Whether the loop must also keep `context_hidden` for every committed position.
    wants_context_hidden: bool = False
    # True when the proposer itself returns no candidates at steps where its evidence is too weak to
    # pay for verification; the loop's adaptive draft policy then defers to it (decoding/policy.py).
    self_gated: bool = False
    # True when each draft depth costs a model forward (a draft model): cost-aware sizing then
    # counts that time and limits the depth (`ProposeContext.max_depth`); `nodes_per_depth` is how
    # many nodes one depth adds to the verified tree.
    draft_cost_per_depth: bool = False
    nodes_per_depth: int = 1

    def reset(self, prompt_ids: list[int]) -> None:
        """Start a new generation for `prompt_ids` (drop per-request state)."""

    @abstractmethod
    def propose(self, ctx: ProposeContext) -> Candidates:
        """Return candidate continuations of ctx.tokens[-1]; an empty Candidates means a plain step."""

    def commit(self, tokens: list[int], n_kv: int) -> None:
        """Called after each step: `tokens` is the context now (pending last); `n_kv` of them have KV."""


class NullProposer(Proposer):
    """Drafts nothing: the loop then runs plain autoregressive decoding (`ar`)."""

    name = "ar"

    def propose(self, ctx: ProposeContext) -> Candidates:
        return Candidates()
