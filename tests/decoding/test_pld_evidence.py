"""`pld`'s draft score is the length of the match behind it; sizing calibrates by it (proposers/pld.py).

Oracles: a brute-force search over every earlier occurrence for the draft and a plain loop for
the match length; offline replay (no model) for what the score changes in a shared calibration.
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from specgen.bench.replay import ReplayStats, Trace, replay
from specgen.config import PLDConfig
from specgen.decoding.calibration import SHARED_WINDOW, AcceptanceModel
from specgen.decoding.policy import DraftPolicyConfig
from specgen.decoding.sizing import TreeSizingConfig
from specgen.errors import SpecgenError
from specgen.proposers.base import ProposeContext
from specgen.proposers.pld import PromptLookupProposer, ngram_match

# The embedded model's shape of cost on this project's 2-core CPU: 2-4 tokens cost little more than one.
CPU_SIZING = TreeSizingConfig(costs=(1.0, 1.06, 1.1, 1.12, 1.4, 1.5, 1.8, 2.2))


def brute_match(tokens: list[int], max_ngram: int, min_ngram: int, num_draft: int, cap: int) -> tuple[list[int], int]:
    """Longest n-gram ending the context, its latest earlier occurrence, and a plain backwards count."""
    length = len(tokens)
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        starts = [s for s in range(length - n) if tokens[s: s + n] == tokens[length - n:]]
        if starts:
            start = starts[-1] + n
            k = 0
            while k < max(n, cap) and k < start and tokens[start - 1 - k] == tokens[length - 1 - k]:
                k += 1
            return tokens[start: start + num_draft], k
    return [], 0


@pytest.mark.parametrize("vocab", [2, 4, 12])
@pytest.mark.parametrize("cap", [0, 1, 5, 16])
def test_match_length_equals_a_brute_force_count(vocab: int, cap: int) -> None:
    rng = random.Random(vocab * 100 + cap)
    for _ in range(300):
        tokens = [rng.randrange(vocab) for _ in range(rng.randrange(1, 40))]
        got = ngram_match(np.asarray(tokens, dtype=np.int64), 3, 1, 6, cap)
        assert got == brute_match(tokens, 3, 1, 6, cap), tokens


def test_score_is_the_match_length_and_never_changes_the_draft() -> None:
    rng = random.Random(7)
    for _ in range(200):
        tokens = [rng.randrange(5) for _ in range(rng.randrange(2, 60))]
        ctx = ProposeContext(tokens=tokens, prompt_len=1, budget=8)
        match = PromptLookupProposer(PLDConfig()).propose(ctx)
        flat = PromptLookupProposer(PLDConfig(score_by="flat")).propose(ctx)
        assert match.sequences == flat.sequences
        if flat.sequences:
            assert flat.scores == [1.0]
            expected = brute_match(tokens, 3, 1, 8, 16)[1]
            assert match.scores == [float(expected)] and 1 <= expected <= 16


def test_unknown_score_option_is_one_line() -> None:
    with pytest.raises(SpecgenError, match="score-by"):
        PLDConfig(score_by="length")
    with pytest.raises(SpecgenError, match="score_cap|score-cap"):
        PLDConfig(score_cap=0)


def _prose(rng: random.Random, qid: str) -> Trace:
    """Text whose words recur (one-token matches) but whose continuations never do."""
    prompt = [rng.randrange(40) for _ in range(60)]
    return Trace(qid, "writing", prompt, [rng.randrange(40) for _ in range(80)], None)


def _copy(rng: random.Random) -> Trace:
    """An answer that rewrites a 60-token span of its prompt (code edited in place)."""
    span = [100 + rng.randrange(400) for _ in range(60)]
    prompt = [rng.randrange(40) for _ in range(20)] + span
    return Trace("code", "coding", prompt, span[:3] + [7] + span[3:], None)


def _serve(score_by: str, traces: list[Trace]) -> ReplayStats:
    """`pld` on `traces` in order, one calibration shared by all of them (a server's, per method)."""
    shared = AcceptanceModel.for_sizing(CPU_SIZING, window=SHARED_WINDOW)
    out = ReplayStats()
    for tr in traces:
        out = replay(PromptLookupProposer(PLDConfig(score_by=score_by)), tr, 16, DraftPolicyConfig(), CPU_SIZING, shared)
    return out  # the last trace's


def test_a_shared_calibration_taught_by_prose_still_verifies_a_long_match() -> None:
    """The case that once left a served `pld` drafting nothing: earlier requests taught the shared
    calibration that drafts fail. Scored flat, a copy request inherits that and verifies little;
    scored by match length, its long matches fall in a bin the prose never reached."""
    rng = random.Random(3)
    traces = [_prose(rng, f"p{i}") for i in range(12)] + [_copy(rng)]
    alone = replay(PromptLookupProposer(PLDConfig()), traces[-1], 16, DraftPolicyConfig(), CPU_SIZING)
    flat, match = _serve("flat", traces), _serve("match", traces)
    assert flat.steps > 2 * alone.steps  # the failure this guards against is real in this setup
    # once its match is 4 tokens long (a bin the random prose rarely reached) it verifies whole drafts
    assert max(match.draft_sizes) == PLDConfig().num_draft > max(flat.draft_sizes)
    assert match.steps < 0.6 * flat.steps
    assert match.estimated_speedup > 1.3 * flat.estimated_speedup
