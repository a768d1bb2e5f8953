"""REST's lexical datastore: a suffix array over the corpus token stream (He et al., 2023).

The text is the token stream with a -1 separator after every document, so no match spans two
documents and every continuation stops at its document's end. Built by prefix doubling over int64
sort keys (O(n log n) per round, rounds = log2 of the longest repeat, stops early when all ranks are
distinct); ~1M tokens take about a second. Stored as `sa.npy` in the index folder, memory-mapped.

Retrieval (REST): find the longest suffix of the context (pending token last) that occurs in the
datastore; the tokens that follow its occurrences are the candidate continuations, scored by their
frequency among the retrieved ones.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np

SEPARATOR = -1


def separated_text(tokens: np.ndarray, doc_offsets: np.ndarray) -> np.ndarray:
    """[N] tokens + [D + 1] offsets -> [N + D] int32 text with SEPARATOR after each document."""
    ends = np.asarray(doc_offsets[1:], dtype=np.int64)  # [D]
    return np.insert(np.asarray(tokens, dtype=np.int32), ends, SEPARATOR).astype(np.int32, copy=False)


def build_suffix_array(text: np.ndarray) -> np.ndarray:
    """Suffix array of `text` [n] (int, SEPARATOR allowed) by prefix doubling: [n] int32 or int64 positions."""
    n = int(text.shape[0])
    idx_dtype = np.int32 if n < 2**31 - 1 else np.int64
    if n == 0:
        return np.zeros(0, dtype=idx_dtype)
    # Initial ranks: dense ranks of the symbols (separator lowest), 1-based so 0 means "past the end".
    _, rank = np.unique(np.asarray(text, dtype=np.int64), return_inverse=True)  # [n]
    rank = rank.astype(np.int64) + 1
    order = np.argsort(rank, kind="stable")
    k = 1
    while True:
        second = np.zeros(n, dtype=np.int64)  # [n] rank of the suffix k further on, 0 past the end
        if k < n:
            second[: n - k] = rank[k:]
        key = rank * (n + 1) + second  # [n] int64, < (n + 1)^2
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        new_rank = np.empty(n, dtype=np.int64)
        new_rank[order] = np.cumsum(np.concatenate(([1], (sorted_key[1:] != sorted_key[:-1]).astype(np.int64))))
        rank = new_rank
        if rank.max() == n or k >= n:
            break
        k *= 2
    return order.astype(idx_dtype)


class SuffixArray:
    """Suffix array over a separated token text, with REST's longest-suffix retrieval."""

    def __init__(self, text: np.ndarray, sa: np.ndarray) -> None:
        self.text = text  # [n] int32 with SEPARATOR between documents
        self.sa = sa  # [n] int32/int64, possibly memory-mapped

    @classmethod
    def build(cls, tokens: np.ndarray, doc_offsets: np.ndarray) -> "SuffixArray":
        text = separated_text(tokens, doc_offsets)
        return cls(text, build_suffix_array(text))

    @classmethod
    def load(cls, tokens: np.ndarray, doc_offsets: np.ndarray, sa_path: Path) -> "SuffixArray":
        return cls(separated_text(tokens, doc_offsets), np.load(sa_path, mmap_mode="r"))

    def __len__(self) -> int:
        return int(self.sa.shape[0])

    def _compare(self, pos: int, pattern: np.ndarray) -> int:
        """Sign of text[pos:pos+m] vs pattern [m] in lexicographic order (a proper prefix is smaller)."""
        m = pattern.shape[0]
        seg = self.text[pos: pos + m]  # [<= m]
        diff = np.flatnonzero(seg != pattern[: seg.shape[0]])
        if diff.size:
            j = int(diff[0])
            return -1 if seg[j] < pattern[j] else 1
        return 0 if seg.shape[0] == m else -1

    def find(self, pattern: Sequence[int]) -> range:
        """Range of suffix-array rows whose suffixes start with `pattern` (empty range when absent)."""
        pat = np.asarray(pattern, dtype=np.int32)  # [m]
        n = len(self)
        lo, hi = 0, n
        while lo < hi:  # first row >= pattern
            mid = (lo + hi) // 2
            if self._compare(int(self.sa[mid]), pat) < 0:
                lo = mid + 1
            else:
                hi = mid
        start = lo
        hi = n
        while lo < hi:  # first row > pattern (rows starting with it compare equal)
            mid = (lo + hi) // 2
            if self._compare(int(self.sa[mid]), pat) <= 0:
                lo = mid + 1
            else:
                hi = mid
        return range(start, lo)

    def longest_suffix_match(self, context: Sequence[int], max_suffix_len: int = 16,
                             min_suffix_len: int = 2) -> tuple[range, int]:
        """Rows of the longest suffix of `context` (length in [min, max]) found, and that length.

        Binary search on the length: a suffix that occurs implies every shorter one occurs.
        Returns (empty range, 0) when not even `min_suffix_len` tokens match.
        """
        ctx = list(context)
        hi_len = min(max_suffix_len, len(ctx))
        lo_len = max(1, min_suffix_len)
        best: tuple[range, int] = (range(0), 0)
        if hi_len < lo_len:
            return best
        while lo_len <= hi_len:
            m = (lo_len + hi_len) // 2
            rows = self.find(ctx[len(ctx) - m:])
            if len(rows):
                best = (rows, m)
                lo_len = m + 1
            else:
                hi_len = m - 1
        return best

    def continuations(self, context: Sequence[int], max_candidates: int = 64, continuation_len: int = 16,
                      max_suffix_len: int = 16, min_suffix_len: int = 2) -> list[tuple[list[int], float]]:
        """REST retrieval: continuations after the longest matching suffix, scored by frequency.

        With more than `max_candidates` occurrences, an evenly spaced sample of the suffix-array range
        is taken; the range is sorted by what follows the match, so the sample keeps the frequencies.
        Returns (tokens, share of the sampled occurrences) pairs, most frequent first.
        """
        rows, m = self.longest_suffix_match(context, max_suffix_len, min_suffix_len)
        if not len(rows) or max_candidates < 1:
            return []
        if len(rows) > max_candidates:
            picks = np.linspace(rows.start, rows.stop - 1, max_candidates).round().astype(np.int64)
        else:
            picks = np.arange(rows.start, rows.stop)
        counts: Counter[tuple[int, ...]] = Counter()
        for pos in np.asarray(self.sa[picks], dtype=np.int64):
            seg = self.text[pos + m: pos + m + continuation_len]  # [<= L]
            cut = np.flatnonzero(seg == SEPARATOR)
            if cut.size:
                seg = seg[: int(cut[0])]
            if seg.size:
                counts[tuple(int(t) for t in seg)] += 1
        total = float(len(picks))
        return [(list(seq), c / total) for seq, c in counts.most_common()]
