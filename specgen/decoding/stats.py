"""Per-step records and the metrics of DESIGN.md section 1 (vLLM, llama.cpp, Spec-Bench conventions).

- step: one target forward after prefill.
- mean acceptance length tau = tokens emitted by steps / steps, bonus token included (`ar` = 1.00).
- draft acceptance rate = accepted draft tokens / drafted tokens; per-position rates beside it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class StepRecord:
    """One decoding step."""

    drafted: int  # draft nodes verified (root excluded)
    draft_depth: int  # deepest drafted node
    accepted: int  # draft tokens accepted
    emitted: int  # tokens this step added to the output (accepted + bonus, after stop truncation)
    gated: int = 0  # accepted through the soft gate
    t_propose: float = 0.0
    t_verify: float = 0.0
    t_accept: float = 0.0  # accept + commit + bookkeeping
    new_tokens: tuple[int, ...] = ()  # the tokens this step emitted


@dataclass
class GenerationStats:
    """Aggregate statistics of one generation, as printed by `generate` and stored by `bench`."""

    method: str
    new_tokens: int = 0
    prompt_tokens: int = 0
    steps: int = 0
    drafted: int = 0
    accepted: int = 0
    gated: int = 0
    wall_s: float = 0.0  # the call's time, less profile_s
    prefill_s: float = 0.0  # the prompt's forward
    profile_s: float = 0.0  # timing the verification cost profile (0 when it came from the disk cache)
    first_token_s: float = 0.0  # from the call to the first token (prefill, profile, first pick)
    propose_s: float = 0.0
    verify_s: float = 0.0
    accept_s: float = 0.0
    reused_cache: bool = False  # the prompt came prefilled (decoding.loop.Prefilled): no prefill forward
    draft_skipped: int = 0  # steps where the draft policy skipped proposing (decoding/policy.py)
    seed: int | None = None  # the sampling seed used (None when greedy)
    device: str = ""  # where the target ran, e.g. "cpu", "cuda:0"
    dtype: str = ""  # the target's weights, e.g. "float32"
    attention: str = ""  # the tree-attention backend used: "triton" or "torch"
    linear: str = ""  # how the target's linears ran: "onednn" (prepacked, specgen/linear.py) or "aten"
    cost_profile: dict | None = None  # relative verification cost per forward size (decoding/sizing.py)
    accept_lengths: list[int] = field(default_factory=list)  # emitted tokens per step
    # per step, seconds outside the target forward: propose, tree, accept, commit, streaming
    step_overhead_s: list[float] = field(default_factory=list)
    position_drafted: list[int] = field(default_factory=list)  # steps drafting depth >= i + 1
    position_accepted: list[int] = field(default_factory=list)  # steps accepting depth >= i + 1

    def add_step(self, rec: StepRecord) -> None:
        """Fold one step record into the totals."""
        self.steps += 1
        self.drafted += rec.drafted
        self.accepted += rec.accepted
        self.gated += rec.gated
        self.propose_s += rec.t_propose
        self.verify_s += rec.t_verify
        self.accept_s += rec.t_accept
        self.accept_lengths.append(rec.emitted)
        for store, depth in ((self.position_drafted, rec.draft_depth), (self.position_accepted, rec.accepted)):
            while len(store) < depth:
                store.append(0)
            for i in range(depth):
                store[i] += 1

    @property
    def mean_acceptance_length(self) -> float:
        return sum(self.accept_lengths) / self.steps if self.steps else 0.0

    @property
    def draft_acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def per_position_acceptance(self) -> list[float]:
        """Share of steps that drafted position i + 1 and had it accepted."""
        return [a / d if d else 0.0 for a, d in zip(self.position_accepted, self.position_drafted)]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of `generate --json` (DESIGN / issue 2 keys) plus the detail fields."""
        d = asdict(self)
        d.update(mean_acceptance_length=self.mean_acceptance_length,
                 draft_acceptance_rate=self.draft_acceptance_rate,
                 tokens_per_s=self.tokens_per_s,
                 per_position_acceptance=self.per_position_acceptance)
        return d
