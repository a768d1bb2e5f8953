"""Self-consistency selector: pick one of the draft's k sampled steps (DESIGN.md section 3).

- overlap: the medoid under token-overlap similarity (F1 of the bags of word tokens), i.e. the
  candidate with the highest summed similarity to the others;
- embedding: the medoid under cosine similarity of per-candidate vectors (mean input embeddings);
- numeric: majority vote on the step's last number; the overlap medoid among the voters of the
  winning number. Candidates without a number fall back to the overlap medoid of all.
Ties go to the lowest index, so the choice is deterministic.
"""
from __future__ import annotations

import re
from collections import Counter

import torch

_WORD = re.compile(r"\w+|[^\w\s]")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def overlap_similarity(a: str, b: str) -> float:
    """F1 of the multisets of word and punctuation tokens of `a` and `b` (1.0 for two empty steps)."""
    ta, tb = Counter(_WORD.findall(a.lower())), Counter(_WORD.findall(b.lower()))
    na, nb = sum(ta.values()), sum(tb.values())
    if na == 0 and nb == 0:
        return 1.0
    common = sum((ta & tb).values())
    return 2.0 * common / (na + nb)


def _medoid(sim: torch.Tensor) -> int:
    """Index maximising the summed similarity to the others; sim [k, k]."""
    k = sim.shape[0]
    off = sim.masked_fill(torch.eye(k, dtype=torch.bool), 0.0)  # [k, k]
    totals = off.sum(dim=1)  # [k]
    best = float(totals.max())
    return int(torch.nonzero(totals >= best - 1e-9)[0])


def overlap_medoid(texts: list[str]) -> int:
    """The candidate most similar, by token overlap, to the other candidates."""
    k = len(texts)
    sim = torch.tensor([[overlap_similarity(texts[i], texts[j]) for j in range(k)] for i in range(k)], device="cpu")  # [k, k]
    return _medoid(sim)


def embedding_medoid(vectors: torch.Tensor) -> int:
    """The candidate whose vector has the highest summed cosine similarity to the others; vectors [k, d]."""
    unit = torch.nn.functional.normalize(vectors.float(), dim=-1)  # [k, d]
    return _medoid(unit @ unit.T)


def last_number(text: str) -> str | None:
    """The last number in `text`, normalised (no thousands commas, no trailing '.0'), or None."""
    found = _NUMBER.findall(text)
    if not found:
        return None
    num = found[-1].replace(",", "")
    if "." in num:
        num = num.rstrip("0").rstrip(".")
    return num


def numeric_vote(texts: list[str]) -> int:
    """Majority vote on the last number; the overlap medoid among the winners (ties: first seen)."""
    nums = [last_number(t) for t in texts]
    counts = Counter(n for n in nums if n is not None)
    if not counts:
        return overlap_medoid(texts)
    top = max(counts.values())
    winner = next(n for n in nums if n is not None and counts[n] == top)
    members = [i for i, n in enumerate(nums) if n == winner]
    return members[overlap_medoid([texts[i] for i in members])]


def select_candidate(texts: list[str], method: str, vectors: torch.Tensor | None = None) -> int:
    """Index of the chosen candidate among `texts` by `method` (overlap | embedding | numeric)."""
    if len(texts) == 1:
        return 0
    if method == "overlap":
        return overlap_medoid(texts)
    if method == "numeric":
        return numeric_vote(texts)
    if method == "embedding":
        assert vectors is not None and vectors.shape[0] == len(texts), "embedding selector needs [k, d] vectors"
        return embedding_medoid(vectors)
    raise ValueError(f"unknown selector {method}")
