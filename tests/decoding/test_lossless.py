"""Greedy speculative output equals greedy plain output token for token, on the real model."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from specgen.config import GenerationConfig
from specgen.generate import generate

SPEC_BENCH = Path(__file__).resolve().parents[3] / "shared" / "data" / "spec_bench_question.jsonl"


def prompts(n: int = 10) -> list[str]:
    """One prompt from each of n Spec-Bench categories, or fixed ones when the data is absent."""
    if SPEC_BENCH.is_file():
        seen: dict[str, str] = {}
        for line in SPEC_BENCH.read_text().splitlines():
            row = json.loads(line)
            seen.setdefault(row["category"], row["turns"][0])
        out = list(seen.values())[:n]
        if len(out) == n:
            return out
    return [f"Explain, in two sentences, topic number {i}: why is the sky blue?" for i in range(n)]


@pytest.mark.slow
def test_pld_matches_ar_greedy(real_bundle: Any) -> None:
    # sd has its own 20-prompt test (test_reliability_real.py)
    gen = GenerationConfig(max_new_tokens=24)
    identical = {"pld": 0}
    ps = prompts(10)
    assert len(ps) == 10
    for p in ps:
        ar = generate(real_bundle, p, method="ar", gen=gen)
        assert ar.stats.mean_acceptance_length == pytest.approx(1.0)
        for method, cfg in (("pld", None),):
            out = generate(real_bundle, p, method=method, gen=gen, method_config=cfg)
            assert out.token_ids == ar.token_ids, f"{method} diverged from ar on: {p[:60]!r}"
            assert out.text == ar.text
            identical[method] += 1
            assert sum(out.stats.accept_lengths) + 1 == out.stats.new_tokens or out.finish_reason != "length"
    assert identical == {"pld": 10}
