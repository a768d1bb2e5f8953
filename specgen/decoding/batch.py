"""Batched decoding on the step engine: B sequences, one target forward per step (ragged rows).

Each row is an ordinary generation (`loop.start`: its own proposer, acceptance rule, sampler,
stopper and statistics). A step plans every row's tree (`engine.plan`), pads the trees to one node
count and verifies them in one forward over [B, n] with per-row positions and masks
(`adapter.batched_tree_forward`), then accepts and commits per row (`engine.complete`,
`adapter.commit_rows`). With one row the plain `engine.step` runs, exactly what `generate` does.

Load-aware drafting (`LoadAwareDrafting`): past a batch size a verification forward stops being
nearly free (it becomes compute-bound), and drafting then costs more than it saves. The decoder
measures the forward time per (batch size, node count) and verifies the drafts only when the rows'
expected accepted tokens pay for the longer forward; `spec_disable_batch_size` (vLLM's
`--spec-disable-batch-size`) switches drafting off from that batch size on, whatever is measured.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import adapter
from ..config import GenerationConfig
from ..proposers.base import Candidates, Proposer
from .engine import AcceptRule, Planned, complete, plan, step
from .explore import ExplorationClock
from .loop import DecodeResult, Started, finish
from .stats import StepRecord
from .tree import build_tree


@dataclass
class Row:
    """One sequence of a batch; `key` is the caller's handle for it."""

    started: Started
    proposer: Proposer
    rule: AcceptRule
    gen: GenerationConfig
    key: Any = None

    @property
    def done(self) -> bool:
        return self.started.state.done


def _bucket(n: int) -> int:
    """Node counts pooled by power of two for the cost table (cost grows monotonically with n)."""
    return 1 << max(0, n - 1).bit_length()


def _tokens_cost(profile: Any, m: int) -> float:
    """c_1(m), the batch-1 profile's relative cost of m tokens; past its largest size along its average
    slope, not the last segment's (a forward of many tokens is compute-bound: the flat top of a
    profile timed up to 17 tokens would promise large batched trees nearly for free)."""
    last = profile.sizes[-1]
    if m <= last:
        return float(profile(m))
    return float(profile(last) + (profile(last) - profile(1)) / max(1, last - 1) * (m - last))


@dataclass
class LoadAwareDrafting:
    """Per step of B rows: verify the planned drafts or only the pending tokens, by a measured cost model.

    c(B, n) is the measured time of a batched forward over B rows of n nodes (EWMA per B and
    power-of-two n); the drafts are verified when the expected tokens per second with them,
    sum_b (1 + E[accepted_b]) / (planning time + c(B, n)), is at least B / c(B, 1), E[accepted_b]
    being row b's moving average of accepted draft tokens (its `DraftPolicy`). The plain step is
    measured first. An unmeasured draft shape is estimated from the rows' batch-1 cost profile when
    one is known (`profile`: B rows of n nodes cost about what one row of B * n tokens does, the
    matmuls seeing the same number of tokens), c(B, n) ~ c(B, 1) * c_1(B * n) / c_1(B), and else
    measured. Declined steps explore now and then (`ExplorationClock`, the tree sizer's: the exploring
    forward's extra cost, c(B, n) / c(B, 1) - 1, is at most `explore_share` of the declined steps'
    time, and the wait backs off while explorations accept nothing), so acceptance estimates stay
    current at a bounded price. `spec_disable_batch_size` (vLLM's `--spec-disable-batch-size`)
    switches drafting off from that batch size on, whatever is measured.
    """

    spec_disable_batch_size: int | None = None  # draft nothing at this batch size and above
    explore_every: int = 8
    explore_share: float = 0.02
    explore_backoff_max: int = 16
    decay: float = 0.7  # weight of the previous estimate
    costs: dict[tuple[int, int], float] = field(default_factory=dict)  # (B, n bucket) -> forward seconds
    plan_s: dict[int, float] = field(default_factory=dict)  # B -> planning seconds of a drafting step
    profile: Any = None  # the rows' batch-1 CostProfile (relative cost of a forward over n tokens)
    clock: ExplorationClock = field(init=False)  # starved steps per batch size B
    ratio: float = field(init=False, default=1.0)  # c(B, n) / c(B, 1) of the drafts last let through

    def __post_init__(self) -> None:
        self.clock = ExplorationClock(self.explore_every, self.explore_share, self.explore_backoff_max)

    def enabled(self, b: int) -> bool:
        """Whether rows may draft at all at batch size b (the hard override)."""
        return self.spec_disable_batch_size is None or b < self.spec_disable_batch_size

    def should_verify(self, b: int, n: int, expected_tokens: float) -> bool:
        """Verify B rows' drafts padded to n nodes (expected to emit `expected_tokens`), or plain steps."""
        self.clock.exploring = False
        if n <= 1:
            return True
        plain = self.costs.get((b, 1))
        if plain is None:
            return False  # measure a plain step first
        draft = self.costs.get((b, _bucket(n)))
        if draft is None and self.profile is not None:
            draft = plain * _tokens_cost(self.profile, b * _bucket(n)) / _tokens_cost(self.profile, b)
        if draft is None:
            return True  # measure it
        self.ratio = draft / plain
        if expected_tokens / (self.plan_s.get(b, 0.0) + draft) >= b / plain:
            self.clock.verified(b)
            return True
        return self.clock.starve(b, self.ratio - 1.0)

    def fed(self, b: int, n: int) -> int:
        """Nodes per row that a forward over B rows of n nodes feeds: enough that the B x n tokens
        reach the size the batch-1 profile pads B x n to (`CostProfile.pads`; on a CPU 2 rows of 1
        token cost more than 2 rows of 2), else n."""
        if self.profile is None:
            return n
        return max(n, -(-self.profile.padded(b * n) // b))

    def observe_outcome(self, b: int, accepted: int) -> None:
        """After a verified drafting step of `b` rows that accepted `accepted` draft tokens in all: an
        exploration's outcome sets the next wait (`ExplorationClock.outcome`): it paid when the b + accepted
        tokens it emitted are worth its forward's c(B, n) / c(B, 1) plain steps of b tokens."""
        self.clock.outcome(accepted, paid=b + accepted >= b * self.ratio)

    def observe(self, b: int, n: int, forward_s: float, plan_s: float) -> None:
        key = (b, _bucket(n))
        old = self.costs.get(key)
        self.costs[key] = forward_s if old is None else self.decay * old + (1 - self.decay) * forward_s
        if n > 1:
            prev = self.plan_s.get(b)
            self.plan_s[b] = plan_s if prev is None else self.decay * prev + (1 - self.decay) * plan_s


class BatchDecoder:
    """Steps a changing set of rows together on one ragged KV cache (`add`, `step`, `remove`)."""

    def __init__(self, target: Any, load: LoadAwareDrafting | None = None) -> None:
        self.target, self.model = target, target.model
        self.load = load or LoadAwareDrafting()
        self.rows: list[Row] = []
        self.cache: Any = None
        self.drafting_steps = self.plain_steps = 0  # batched steps with and without drafts

    @torch.inference_mode()
    def add(self, row: Row) -> None:
        """Join `row` (just started: its state's cache holds its prompt) to the batch."""
        if self.load.profile is None:  # rows share the target, so any row's profile is the batch's
            self.load.profile = row.started.state.sizer.profile
        self._restack(self.rows + [row])

    @torch.inference_mode()
    def remove(self, row: Row) -> DecodeResult:
        """Take `row` out of the batch (finished or cancelled) and return its result."""
        self._restack([r for r in self.rows if r is not row])
        return finish(self.target, row.gen, row.started)

    def _restack(self, rows: list[Row]) -> None:
        lengths = [r.started.state.n_kv for r in self.rows]
        caches = adapter.split_cache(self.cache, lengths) if len(self.rows) > 1 else [r.started.state.cache for r in self.rows]
        by_row = {id(r): c for r, c in zip(self.rows, caches)}
        self.rows = rows
        if not rows:
            self.cache = None
            return
        mine = [by_row.get(id(r), r.started.state.cache) for r in rows]
        self.cache = mine[0] if len(rows) == 1 else adapter.stack_caches(mine, [r.started.state.n_kv for r in rows])
        for r in rows:  # one cache for the batch; with one row it is that row's own cache
            r.started.state.cache = self.cache

    def reset(self) -> list[Row]:
        """Drop every row (after a failed step) and return them."""
        rows, self.rows, self.cache = self.rows, [], None
        return rows

    @torch.inference_mode()
    def step(self) -> list[StepRecord]:
        """One step of every row (each emits >= 1 token); the records in row order."""
        assert self.rows and not any(r.done for r in self.rows), "remove finished rows before stepping"
        if len(self.rows) == 1:
            r = self.rows[0]
            return [step(r.started.state, r.proposer, r.started.verifier, r.rule)]
        return self._batched_step()

    @torch.inference_mode()
    def _batched_step(self) -> list[StepRecord]:
        rows, device = self.rows, self.model.device
        b = len(rows)
        t0 = time.perf_counter()
        planned = []
        for r in rows:
            state = r.started.state
            budget, state.node_budget = state.node_budget, state.node_budget if self.load.enabled(b) else 0
            planned.append(plan(state, r.proposer, device))
            state.node_budget = budget
        t_plan = time.perf_counter() - t0
        n = max(p.tree.size for p in planned)
        expected = sum(1.0 + (r.started.state.policy.average if p.tree.size > 1 else 0.0) for r, p in zip(rows, planned))
        draft = self.load.should_verify(b, n, expected)
        if not draft:  # only the pending tokens: the drafts would cost more than they are expected to save
            planned = [Planned(build_tree(r.started.state.tokens[-1], Candidates(), 0, device=device), p.t_start,
                               p.t_planned) for r, p in zip(rows, planned)]
        trees = [p.tree for p in planned]
        n = max(t.size for t in trees)
        fed = self.load.fed(b, n)  # padded past the largest tree where a bigger forward runs faster
        lengths = [r.started.state.n_kv for r in rows]
        t_len = adapter.cache_length(self.cache)
        tokens = torch.zeros(b, fed, dtype=torch.long, device=device)  # [B, fed], padding = token 0
        positions = torch.zeros(b, fed, dtype=torch.long, device=device)  # [B, fed]
        for i, (t, length) in enumerate(zip(trees, lengths)):
            tokens[i, : t.size] = t.tokens
            positions[i] = length
            positions[i, : t.size] = t.depth + length
        key_mask = adapter.ragged_key_mask(lengths, t_len, [t.mask for t in trees], fed, device)  # [B, fed, T + fed]
        layers = {r.started.verifier.hidden_layer for r in rows} - {None}
        assert len(layers) <= 1, f"rows of one batch read hidden states at one layer, got {sorted(layers)}"
        tf = time.perf_counter()
        out = adapter.batched_tree_forward(self.model, tokens, positions, self.cache, key_mask,
                                           hidden_layer=next(iter(layers), None))
        tv = time.perf_counter()
        self.load.observe(b, n, tv - tf, t_plan)
        paths: list[tuple[int, ...]] = []
        records = []
        for i, (r, p, t, length) in enumerate(zip(rows, planned, trees, lengths)):
            wants = out.hidden is not None and r.started.verifier.hidden_layer is not None
            ver = r.started.verifier.verification(t, out.logits[i, : t.size], out.hidden[i, : t.size] if wants else None,
                                                  self.cache, length, row=i)
            records.append(complete(r.started.state, r.proposer, r.rule, p, ver, tv, paths.append, own_forward=False))
        new = adapter.commit_rows(self.cache, t_len, lengths, paths)
        # A row that just stopped may emit fewer tokens than it committed (a length or stop cut): it leaves the batch.
        assert all(r.done or m == r.started.state.n_kv for r, m in zip(rows, new)), "batched commit out of step"
        if n > 1:
            self.drafting_steps += 1
            self.load.observe_outcome(b, sum(rec.accepted for rec in records))
        else:
            self.plain_steps += 1
        return records

@torch.inference_mode()
def start_row(target: Any, prompt_ids: list[int], method: str, gen: GenerationConfig, config: Any = None, *,
              draft: Any = None, key: Any = None, on_tokens: Any = None, calibration: Any = None) -> Row:
    """Prefill `prompt_ids` for `method` (a step-engine method of the registry) as a batch row;
    `calibration`: the acceptance model it shares with other rows of that method (`loop.start`)."""
    from ..errors import SpecgenError
    from ..proposers.registry import get_method
    from .loop import start

    spec = get_method(method)
    if spec.factory is None:
        raise SpecgenError(f"method '{method}' runs its own driver and cannot share a batch")
    cfg = config if config is not None else spec.config_cls()
    proposer = spec.factory(target, cfg) if draft is None else spec.factory(target, cfg, draft=draft)
    started = start(target, prompt_ids, proposer, gen, method=method, on_tokens=on_tokens, calibration=calibration)
    return Row(started, proposer, spec.rule(target, cfg), gen, key)
