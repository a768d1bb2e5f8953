"""When to draft: skip proposing while recent drafts have not been paying for their verification.

Verifying drafted nodes is not free: on this CPU a forward over 4 to 16 tokens costs about 1.4 to
1.7 plain steps (DESIGN.md section 7), so a step whose drafts are all rejected is ~0.5 step lost. On
open-ended text `pld` and `sense` draft at almost every step and accept almost nothing (Spec-Bench
writing: tau 1.02, 0.85x). The adaptive policy keeps an exponential moving average of the draft
tokens accepted per drafting step, drafts while it is at least `min_expected` (the break-even gain),
and otherwise runs plain steps, still drafting every `probe_every`-th step so that it notices when
drafts start to pay again (a copy-heavy stretch) and resumes. Skipping a draft never changes the
output: the target's tokens are the same, only the step count changes (lossless either way).

A proposer that gates itself (`Proposer.self_gated`: it returns no candidates when its own evidence
is too weak, as `sense` does under `min_score`) knows better than a moving average which steps will
pay, so the policy defers to it and drafts whenever it proposes.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..validate import check_fields, choice, in_range

POLICY_MODES = ("adaptive", "always")
# Break-even accepted tokens per drafting step, when min_expected is None: a drafting step costs
# ~1.5 plain steps on CPU (DESIGN.md section 7), ~1.05 on a GPU where verification is memory-bound.
AUTO_MIN_EXPECTED = {"cpu": 0.5, "cuda": 0.1}


@dataclass(frozen=True)
class DraftPolicyConfig:
    """Options of the draft policy; `mode='always'` drafts at every step (the classic loop)."""

    mode: str = "adaptive"
    min_expected: float | None = None  # None = AUTO_MIN_EXPECTED for the model's device
    decay: float = 0.5  # weight of the newest drafting step in the moving average
    probe_every: int = 4  # while below the threshold, still draft at every n-th step
    initial: float = 1.0  # the average before any step: draft from the first step on

    def __post_init__(self) -> None:
        check_fields(self)
        choice("draft_policy", self.mode, POLICY_MODES)
        if self.min_expected is not None:
            in_range("min_expected", self.min_expected, 0, None)
        in_range("decay", self.decay, 0, 1, lo_open=True)
        in_range("probe_every", self.probe_every, 1, 1_000_000)
        in_range("initial", self.initial, 0, None)


class DraftPolicy:
    """Per-generation state of DraftPolicyConfig: `should_draft()` before a step, `update()` after."""

    def __init__(self, cfg: DraftPolicyConfig, device_type: str = "cpu", *, self_gated: bool = False) -> None:
        self.cfg = cfg
        self.self_gated = self_gated
        self.threshold = cfg.min_expected if cfg.min_expected is not None else AUTO_MIN_EXPECTED.get(device_type, 0.1)
        self.average = cfg.initial
        self.plain_run = 0  # plain steps since the last drafting step
        self.skipped = 0  # steps where drafting was skipped by the policy

    def should_draft(self) -> bool:
        if self.cfg.mode == "always" or self.self_gated or self.average >= self.threshold:
            return True
        if self.plain_run + 1 >= self.cfg.probe_every:
            return True
        self.plain_run += 1
        self.skipped += 1
        return False

    def update(self, drafted: int, accepted: int) -> None:
        """Fold in one step; a step without draft nodes (nothing proposed) leaves the average alone."""
        if drafted > 0:
            self.average += self.cfg.decay * (accepted - self.average)
            self.plain_run = 0
