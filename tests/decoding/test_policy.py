"""The adaptive draft policy: hand-made sequences, and the loop stays lossless while it skips drafts."""
from __future__ import annotations

from typing import Any

import pytest

from specgen.config import GenerationConfig
from specgen.decoding.loop import decode
from specgen.decoding.policy import DraftPolicy, DraftPolicyConfig
from specgen.decoding.sizing import TreeSizingConfig
from specgen.errors import SpecgenError
from specgen.proposers.base import Candidates, NullProposer, Proposer, ProposeContext


def test_policy_backs_off_probes_and_recovers() -> None:
    p = DraftPolicy(DraftPolicyConfig(min_expected=0.5, decay=0.5, probe_every=3, initial=1.0))
    assert p.should_draft()
    p.update(drafted=4, accepted=0)  # average 0.5: still at the threshold
    assert p.should_draft()
    p.update(drafted=4, accepted=0)  # 0.25 < 0.5: back off
    assert [p.should_draft() for _ in range(3)] == [False, False, True]  # two plain steps, then a probe
    assert p.skipped == 2
    p.update(drafted=4, accepted=4)  # the probe paid: 0.25 + 0.5 * 3.75 = 2.125
    assert p.average == pytest.approx(2.125) and p.should_draft()
    p.update(drafted=0, accepted=0)  # a step with nothing proposed leaves the average alone
    assert p.average == pytest.approx(2.125)


def test_always_mode_and_auto_threshold() -> None:
    p = DraftPolicy(DraftPolicyConfig(mode="always"))
    for _ in range(5):
        p.update(drafted=8, accepted=0)
        assert p.should_draft()
    assert DraftPolicy(DraftPolicyConfig(), "cpu").threshold == 0.5
    assert DraftPolicy(DraftPolicyConfig(), "cuda").threshold == pytest.approx(0.1)
    for bad in (dict(mode="never"), dict(min_expected=-1.0), dict(decay=0.0), dict(probe_every=0)):
        with pytest.raises(SpecgenError):
            DraftPolicyConfig(**bad)


class WrongDrafts(Proposer):
    """Drafts, after the pending token, a token that differs from the target's greedy next one."""

    name = "wrong"

    def __init__(self, prompt_len: int, greedy: list[int], vocab: int) -> None:
        self.prompt_len, self.greedy, self.vocab = prompt_len, greedy, vocab
        self.calls = 0

    def propose(self, ctx: ProposeContext) -> Candidates:
        self.calls += 1
        nxt = len(ctx.tokens) - self.prompt_len  # index in `greedy` of the token after the pending one
        wrong = (self.greedy[nxt] + 1) % self.vocab if nxt < len(self.greedy) else 0
        return Candidates([[wrong, wrong]], [1.0])


def test_adaptive_policy_skips_hopeless_drafts_and_stays_lossless(tiny_bundle: Any) -> None:
    prompt = [3, 1, 4, 1, 5]
    ar = decode(tiny_bundle, prompt, NullProposer(), GenerationConfig(max_new_tokens=24), method="ar")
    vocab = tiny_bundle.model.config.vocab_size
    results = {}
    for mode in ("always", "adaptive"):
        prop = WrongDrafts(len(prompt), ar.token_ids, vocab)
        # budget sizing: every proposed node is verified, so the policy alone decides (sizing is tested apart)
        gen = GenerationConfig(max_new_tokens=24, draft_policy=DraftPolicyConfig(mode=mode),
                               tree_sizing=TreeSizingConfig(mode="budget"))
        out = decode(tiny_bundle, prompt, prop, gen, method="wrong")
        assert out.token_ids == ar.token_ids  # skipping or not, the target's tokens are the same
        assert out.stats.accepted == 0
        results[mode] = (prop.calls, out.stats)
    always_calls, always_stats = results["always"]
    adaptive_calls, adaptive_stats = results["adaptive"]
    assert always_stats.draft_skipped == 0 and always_calls == always_stats.steps == 23
    # average 1.0 -> 0.5 -> 0.25 after two failed drafts; then one probe every 4 steps
    assert adaptive_stats.steps == 23 and adaptive_calls == 2 + (23 - 2) // 4
    assert adaptive_stats.draft_skipped == 23 - adaptive_calls


def test_bench_config_refuses_an_unknown_policy() -> None:
    from specgen.bench.runner import BenchConfig

    with pytest.raises(SpecgenError, match="--draft-policy must be one of"):
        BenchConfig(draft_policy="never")
    assert BenchConfig(draft_policy="always").fingerprint()["draft_policy"] == "always"
