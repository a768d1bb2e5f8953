"""REST suffix array: construction and longest-suffix retrieval against brute-force oracles."""
from __future__ import annotations

import time

import numpy as np
import pytest

from specgen.datastore.suffix import SEPARATOR, SuffixArray, build_suffix_array, separated_text


def _docs(rng: np.random.Generator, n_docs: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    lengths = rng.integers(1, 60, n_docs)
    tokens = rng.integers(0, vocab, int(lengths.sum())).astype(np.int32)  # [N]
    return tokens, np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def _occurrences(text: list[int], pattern: list[int]) -> list[int]:
    m = len(pattern)
    return [p for p in range(len(text) - m + 1) if text[p: p + m] == pattern]


@pytest.mark.parametrize("seed", range(5))
def test_suffix_array_sorted_like_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    text = rng.integers(-1, 4, 300).astype(np.int32)  # tiny alphabet: long repeats
    sa = build_suffix_array(text)
    expected = sorted(range(len(text)), key=lambda p: text[p:].tolist())
    assert sa.tolist() == expected


@pytest.mark.parametrize("seed", range(8))
def test_longest_suffix_match_matches_oracle(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    tokens, offsets = _docs(rng, 40, vocab=6)
    sa = SuffixArray.build(tokens, offsets)
    text = separated_text(tokens, offsets).tolist()
    for _ in range(40):
        # contexts: half copied from the corpus (long matches), half random
        if rng.random() < 0.5:
            start = int(rng.integers(0, len(tokens) - 20))
            ctx = tokens[start: start + int(rng.integers(1, 20))].tolist()
        else:
            ctx = rng.integers(0, 6, int(rng.integers(1, 20))).tolist()
        rows, m = sa.longest_suffix_match(ctx, max_suffix_len=8, min_suffix_len=2)
        best = 0
        for length in range(2, min(8, len(ctx)) + 1):
            if _occurrences(text, ctx[len(ctx) - length:]):
                best = length
        assert m == best
        if best:
            occ = _occurrences(text, ctx[len(ctx) - best:])
            assert sorted(int(sa.sa[r]) for r in rows) == occ
        else:
            assert len(rows) == 0


def test_continuations_frequency_and_document_end() -> None:
    # "1 2" is followed by "3 4" twice and by "5" once (the latter cut by its document's end).
    docs = [[1, 2, 3, 4, 9], [7, 1, 2, 3, 4], [1, 2, 5]]
    tokens = np.array([t for d in docs for t in d], dtype=np.int32)
    offsets = np.cumsum([0] + [len(d) for d in docs]).astype(np.int64)
    sa = SuffixArray.build(tokens, offsets)
    got = sa.continuations([8, 1, 2], max_candidates=64, continuation_len=3)
    assert got[0] == ([3, 4], pytest.approx(1 / 3)) or got[0][1] == pytest.approx(1 / 3)
    as_dict = {tuple(s): score for s, score in got}
    assert as_dict == {(3, 4, 9): pytest.approx(1 / 3), (3, 4): pytest.approx(1 / 3), (5,): pytest.approx(1 / 3)}
    assert all(SEPARATOR not in s for s, _ in got)
    assert sa.continuations([42, 43]) == []


def test_continuations_sample_keeps_frequencies() -> None:
    rng = np.random.default_rng(0)
    # 900 occurrences of "7 8" followed by 1, 100 followed by 2
    docs = [[7, 8, 1] if i % 10 else [7, 8, 2] for i in range(1000)]
    tokens = np.array([t for d in docs for t in d], dtype=np.int32)
    offsets = np.arange(0, 3001, 3, dtype=np.int64)
    got = dict((tuple(s), sc) for s, sc in SuffixArray.build(tokens, offsets).continuations([7, 8], max_candidates=64))
    assert got[(1,)] == pytest.approx(0.9, abs=0.05) and got[(2,)] == pytest.approx(0.1, abs=0.05)
    del rng


def test_build_is_fast_on_a_million_tokens() -> None:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 49152, 1_000_000).astype(np.int32)
    tokens[600_000:620_000] = tokens[:20_000]  # a long repeat forces extra doubling rounds
    offsets = np.array([0, 400_000, 1_000_000], dtype=np.int64)
    t = time.perf_counter()
    sa = SuffixArray.build(tokens, offsets)
    assert time.perf_counter() - t < 15
    rows, m = sa.longest_suffix_match(tokens[600_100:600_140].tolist(), max_suffix_len=16)
    assert m == 16 and len(rows) == 2
