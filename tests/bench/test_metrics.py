"""Metric formulas on hand-made records (no model)."""
from __future__ import annotations

from typing import Any

import pytest

from specgen.bench.metrics import OVERALL, compare_summaries, per_position_acceptance, summarize, tau


def rec(method: str, qid: str, cat: str, new: int, wall: float, **kw: Any) -> dict[str, Any]:
    base = {"method": method, "question_id": qid, "category": cat, "turn": 0, "new_tokens": new, "wall_time": wall,
            "accept_lengths": [1] * (new - 1), "steps": new - 1, "drafted": 0, "accepted": 0,
            "position_drafted": [], "position_accepted": [], "identical_to_ar": True, "exact_match_ar": True,
            "correct": None, "passed": None, "prefill_s": 0.1, "propose_s": 0.0, "verify_s": 0.5, "accept_s": 0.1}
    base.update(kw)
    return base


def test_tau_counts_the_bonus_token_and_ar_is_one() -> None:
    assert tau([rec("ar", "1", "a", 11, 1.0)]) == 1.0
    # steps emitting 3, 1, 2 tokens (accepted drafts + bonus): tau = 6 / 3
    assert tau([rec("pld", "1", "a", 7, 1.0, accept_lengths=[3, 1, 2])]) == pytest.approx(2.0)
    # pooled over records, not averaged per record: (4 + 1 + 1 + 1 + 1) / 5
    assert tau([rec("pld", "1", "a", 5, 1.0, accept_lengths=[4]), rec("pld", "2", "a", 5, 1.0, accept_lengths=[1] * 4)]) == pytest.approx(8 / 5)


def test_tau_of_a_peer_that_only_counts_steps() -> None:
    assert tau([rec("hf-pld", "1", "a", 9, 1.0, accept_lengths=None, steps=4)]) == pytest.approx(2.0)
    assert tau([rec("hf-x", "1", "a", 9, 1.0, accept_lengths=None, steps=None)]) is None


def test_per_position_rates_pool_over_steps() -> None:
    r1 = rec("sd", "1", "a", 5, 1.0, position_drafted=[4, 4, 2], position_accepted=[3, 1])
    r2 = rec("sd", "2", "a", 5, 1.0, position_drafted=[2, 2, 2], position_accepted=[1, 1, 1])
    assert per_position_acceptance([r1, r2]) == pytest.approx([4 / 6, 2 / 6, 1 / 4])


def test_speedup_is_ratio_of_mean_tokens_per_s_and_per_category() -> None:
    records = [rec("ar", "1", "a", 10, 1.0), rec("ar", "2", "a", 10, 2.0), rec("ar", "3", "b", 10, 1.0),
               rec("pld", "1", "a", 10, 0.5, drafted=10, accepted=4, accept_lengths=[2, 2, 1, 3, 1]),
               rec("pld", "2", "a", 10, 1.0, drafted=10, accepted=6, identical_to_ar=False, exact_match_ar=False),
               rec("pld", "3", "b", 10, 2.0, drafted=0, accepted=0)]
    m = summarize(records)
    # category a: ar mean tok/s = (10 + 5) / 2 = 7.5; pld = (20 + 10) / 2 = 15 -> 2.0
    assert m["ar"]["a"]["tokens_per_s"] == pytest.approx(7.5)
    assert m["pld"]["a"]["speedup"] == pytest.approx(2.0)
    assert m["pld"]["b"]["speedup"] == pytest.approx(0.5)
    # overall: ar (10 + 5 + 10) / 3, pld (20 + 10 + 5) / 3 -> 35 / 25 (ratio of means, not mean of ratios)
    assert m["pld"][OVERALL]["speedup"] == pytest.approx(35 / 25)
    assert m["ar"][OVERALL]["speedup"] == pytest.approx(1.0)
    assert m["ar"][OVERALL]["tau"] == pytest.approx(1.0)
    assert m["pld"]["a"]["draft_acceptance_rate"] == pytest.approx(0.5)
    assert m["pld"][OVERALL]["identical_to_ar"] == pytest.approx(2 / 3)
    assert m["pld"]["a"]["throughput"] == pytest.approx(20 / 1.5)
    assert list(m["pld"]) == ["a", "b", OVERALL]


def test_speedup_uses_ar_on_the_same_prompts_only() -> None:
    records = [rec("ar", "1", "a", 10, 1.0), rec("ar", "2", "a", 10, 10.0), rec("pld", "1", "a", 10, 0.5)]
    assert summarize(records)["pld"]["a"]["speedup"] == pytest.approx(2.0)


def test_quality_and_time_split() -> None:
    records = [rec("ar", "1", "g", 10, 1.0, correct=True), rec("ar", "2", "g", 10, 1.0, correct=False),
               rec("ar", "3", "h", 10, 1.0, passed=True)]
    m = summarize(records)["ar"]
    assert m["g"]["gsm8k_accuracy"] == pytest.approx(0.5) and m["g"]["pass_at_1"] is None
    assert m["h"]["pass_at_1"] == pytest.approx(1.0)
    split = m[OVERALL]["time_split"]
    assert split["verify"] == pytest.approx(0.5) and split["overhead"] == pytest.approx(0.3)


def test_compare_summaries_deltas() -> None:
    a = {"metrics": {"ar": {OVERALL: {"tau": 1.0, "tokens_per_s": 10.0, "speedup": 1.0}},
                     "pld": {OVERALL: {"tau": 1.5, "tokens_per_s": 12.0, "speedup": 1.2}}}}
    b = {"metrics": {"ar": {OVERALL: {"tau": 1.0, "tokens_per_s": 11.0, "speedup": 1.0}},
                     "sd": {OVERALL: {"tau": 2.0, "tokens_per_s": 9.0, "speedup": 0.8}}}}
    rows = {r["method"]: r for r in compare_summaries(a, b)}
    assert rows["ar"]["tokens_per_s"] == (10.0, 11.0, pytest.approx(1.0))
    assert rows["pld"]["tau"] == (1.5, None, None)
    assert rows["sd"]["speedup"] == (None, 0.8, None)


def test_recomputed_fraction_and_latency() -> None:
    from specgen.bench.metrics import group_metrics, recomputed_fraction

    recs = [{"specguard": {"accepted_steps": 1, "recomputed_steps": 3}}, {"specguard": {"accepted_steps": 2, "recomputed_steps": 0}},
            {"tau": 1}]
    assert recomputed_fraction(recs) == 0.5
    assert recomputed_fraction([{"x": 1}]) is None
    base = {"new_tokens": 10, "steps": 5, "accept_lengths": [2] * 5, "drafted": 5, "accepted": 5,
            "position_drafted": [5], "position_accepted": [5], "tokens_per_s": 5.0}
    m = group_metrics([{**base, "wall_time": 2.0}, {**base, "wall_time": 4.0}], [])
    assert m["mean_latency_s"] == 3.0 and m["recomputed_step_fraction"] is None


def _lcs_brute(a: list[str], b: list[str]) -> int:
    import itertools

    for n in range(min(len(a), len(b)), 0, -1):
        subs = {c for c in itertools.combinations(a, n)}
        if any(c in subs for c in itertools.combinations(b, n)):
            return n
    return 0


@pytest.mark.parametrize("seed", range(20))
def test_rouge_l_matches_a_brute_force_lcs(seed: int) -> None:
    import random

    from specgen.bench.metrics import rouge_l

    rng = random.Random(seed)
    words = ["a", "b", "c", "d"]
    a = [rng.choice(words) for _ in range(rng.randint(1, 7))]
    b = [rng.choice(words) for _ in range(rng.randint(1, 7))]
    lcs = _lcs_brute(a, b)
    want = 0.0 if lcs == 0 else 2 * (lcs / len(a)) * (lcs / len(b)) / (lcs / len(a) + lcs / len(b))
    assert rouge_l(" ".join(a), " ".join(b)) == pytest.approx(want)


def test_rouge_l_extremes() -> None:
    from specgen.bench.metrics import rouge_l

    assert rouge_l("the cat sat", "the cat sat") == 1.0
    assert rouge_l("x y", "p q") == 0.0
    assert rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(2 * (5 / 6) / (5 / 6 + 1))
    assert rouge_l("", "") == 1.0 and rouge_l("", "a") == 0.0


def test_embedding_cosine_is_the_cosine_of_mean_pooled_final_hidden_states() -> None:
    import torch

    from specgen.bench.metrics import embedding_cosine
    from tests.conftest import make_tiny_llama

    model = make_tiny_llama()
    a, b, c = [5, 9, 2, 11], [5, 9, 3, 11, 40], [100, 101]
    with torch.inference_mode():  # the oracle: HF's own hidden_states output, last entry (after the final norm)
        pooled = [model(torch.tensor([x]), output_hidden_states=True).hidden_states[-1][0].float().mean(0) for x in (a, b)]
    want = float(torch.nn.functional.cosine_similarity(pooled[0], pooled[1], dim=0))
    assert embedding_cosine(model, a, b) == pytest.approx(want, abs=1e-5)
    assert embedding_cosine(model, b, a) == pytest.approx(want, abs=1e-5)
    assert embedding_cosine(model, a, a) == 1.0 and embedding_cosine(model, a, []) == 0.0
    assert -1.0 <= embedding_cosine(model, a, c) < 1.0
