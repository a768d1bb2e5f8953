"""The step engine: one `DecodeState`, one `step()` (propose -> build tree -> verify -> accept -> commit).

Every driver sits on it (DESIGN.md section 8): `decode` (one prompt on the target model), trace
replay (a verifier that reads recorded target tokens instead of running the model) and SpecGuard
(which regenerates a rejected step with `run(state, ..., until=...)` on its own cache). A method is
a proposer plus an acceptance rule (`accept.ExactMatch`, `accept.SoftGate`); a verifier says what
the target chooses at each tree node.

Invariants of a state: `tokens` = prompt + emitted tokens, the last one pending (emitted, no KV
entry yet); the verifier's cache holds exactly `tokens[:-1]`; `hidden` holds the proposer's hidden
states of those same positions (when it wants them) and `last_hidden` the one that predicted the
pending token.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from ..proposers.base import Candidates, Proposer, ProposeContext
from ..rows import RowBuffer
from .accept import Acceptance
from .policy import DraftPolicy
from .sizing import TreeSizer
from .stats import GenerationStats, StepRecord
from .stopping import Stopper
from .tree import Tree, build_tree

TokenCallback = Callable[[list[int]], None]


@dataclass
class Verification:
    """What the target says about a verified tree."""

    choose: Callable[[int], int]  # node index -> the target's token after that node (argmax, sample or recorded)
    logits: torch.Tensor | None = None  # [n, V] fp32, None when replaying
    hidden: torch.Tensor | None = None  # [n, H] at the proposer's layer, when it wants hidden states
    # (node, token) -> [H] the hidden state (same layer) after `token` placed as a child of `node`:
    # one extra forward, for an acceptance rule that compares a token the tree did not hold.
    probe: Callable[[int, int], torch.Tensor] | None = None


class Verifier(Protocol):
    """Runs (or reads) the target over a tree and keeps its cache in step with the accepted path."""

    device: torch.device

    def verify(self, state: "DecodeState", tree: Tree) -> Verification: ...

    def commit(self, state: "DecodeState", path: tuple[int, ...]) -> None: ...


class AcceptRule(Protocol):
    """Walks a verified tree and returns the accepted path and the bonus token."""

    def accept(self, tree: Tree, ver: Verification) -> Acceptance: ...


@dataclass
class DecodeState:
    """One generation between steps (see the module docstring for the invariants)."""

    tokens: list[int]
    prompt_len: int
    stopper: Stopper
    stats: GenerationStats
    policy: DraftPolicy
    sizer: TreeSizer
    node_budget: int
    cache: Any = None  # the verifier's KV cache (None when replaying)
    hidden: RowBuffer | None = None  # [n_kv, H] when the proposer wants the context's hidden states
    last_hidden: torch.Tensor | None = None  # [H] the hidden state that predicted the pending token
    extra: dict[str, Any] = field(default_factory=dict)  # driver-owned (e.g. the replay's recorded tokens)

    @property
    def n_kv(self) -> int:
        """Positions with a KV entry: everything but the pending token."""
        return len(self.tokens) - 1

    @property
    def done(self) -> bool:
        return self.stopper.reason is not None


@dataclass
class Planned:
    """A step between planning and verification: the tree to verify and when planning began/ended."""

    tree: Tree
    t_start: float
    t_planned: float


def plan(state: DecodeState, proposer: Proposer, device: torch.device) -> Planned:
    """Propose and build this step's tree (the first half of `step`)."""
    ta = time.perf_counter()
    budget = min(state.node_budget, state.stopper.remaining)
    depth = state.sizer.depth_limit(budget, proposer.nodes_per_depth) if proposer.draft_cost_per_depth else None
    ctx = ProposeContext(tokens=state.tokens, prompt_len=state.prompt_len, budget=budget, hidden=state.last_hidden,
                         context_hidden=state.hidden.view() if state.hidden is not None else None, max_depth=depth)
    drafting = budget > 0 and depth != 0 and state.policy.should_draft()
    cands = proposer.propose(ctx) if drafting else Candidates()
    tree = build_tree(state.tokens[-1], cands, budget, state.sizer.size_fn, device=device)
    tb = time.perf_counter()
    if proposer.draft_cost_per_depth and cands.sequences:
        state.sizer.observe_draft(max(len(c) for c in cands.sequences), tb - ta)
    return Planned(tree, ta, tb)


def complete(state: DecodeState, proposer: Proposer, rule: AcceptRule, planned: Planned, ver: Verification,
             t_verified: float, commit: Callable[[tuple[int, ...]], None], *, own_forward: bool = True) -> StepRecord:
    """Accept a path of the verified tree, `commit` its KV entries, emit (the second half of `step`).

    `own_forward=False` (a batched step: the forward verified other rows too) keeps its time out
    of the row's cost profile, which is a batch-1 calibration saved for later runs."""
    tree, tb, tc = planned.tree, planned.t_planned, t_verified
    if own_forward:
        state.sizer.observe_time(state.sizer.fed(tree.size), tc - tb)
    acc = rule.accept(tree, ver)
    commit(acc.path)
    state.sizer.observe(tree, acc.path)
    if ver.hidden is not None:
        rows = ver.hidden[list(acc.path)]  # [len(path), H]
        state.last_hidden = rows[-1]
        if state.hidden is not None:
            state.hidden.append(rows)
    new = state.stopper.feed([tree.token_list[i] for i in acc.path[1:]] + [acc.bonus])
    state.tokens += new
    proposer.commit(state.tokens, state.n_kv)
    drafted, accepted = tree.size - 1, len(acc.path) - 1
    state.policy.update(drafted, accepted)
    rec = StepRecord(drafted=drafted, draft_depth=tree.max_depth, accepted=accepted, emitted=len(new), gated=acc.gated,
                     t_propose=tb - planned.t_start, t_verify=tc - tb, t_accept=time.perf_counter() - tc,
                     new_tokens=tuple(new))
    state.stats.add_step(rec)
    return rec


def step(state: DecodeState, proposer: Proposer, verifier: Verifier, rule: AcceptRule) -> StepRecord:
    """One step: propose, build the tree, verify it, accept a path, commit it. Emits >= 1 token."""
    planned = plan(state, proposer, verifier.device)
    ver = verifier.verify(state, planned.tree)
    return complete(state, proposer, rule, planned, ver, time.perf_counter(),
                    lambda path: verifier.commit(state, path))


def run(state: DecodeState, proposer: Proposer, verifier: Verifier, rule: AcceptRule, *,
        on_tokens: TokenCallback | None = None) -> DecodeState:
    """Step until the state's stopper ends generation (EOS, length, a stop string, a step delimiter)."""
    while not state.done:
        rec = step(state, proposer, verifier, rule)
        t0 = time.perf_counter()
        if on_tokens is not None:
            on_tokens(list(rec.new_tokens))
        # Time outside the target forward: what decides the speedup once a forward takes milliseconds.
        state.stats.step_overhead_s.append(rec.t_propose + rec.t_accept + time.perf_counter() - t0)
    return state
