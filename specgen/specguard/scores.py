"""Step scores from one target forward: attention grounding G and log-probability confidence C.

DESIGN.md section 3 (our reading of SpecGuard):
- G: per step token, the attention mass on the committed context (prompt + accepted steps,
  position 0, the attention sink / BOS, excluded), averaged over heads of the last L layers; the
  step's G is the minimum (or a low quantile) over its tokens. Computed by specgen's tree attention
  (`adapter.tree_forward(..., grounding_end=committed length, grounding_start=1)`).
- C: exp of the mean token log-prob (geometric mean probability) or exp of the minimum.
- Decision: `beta * C + (1 - beta) * G >= tau` (ensemble) or `C >= tau_c and G >= tau_g` (and).
Several candidates are scored in ONE forward: each is a chain at positions n_kv, n_kv + 1, ...,
seeing the committed prefix and its own earlier tokens only (block-diagonal causal tree mask).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .. import adapter
from .config import SpecGuardConfig


@dataclass(frozen=True)
class StepScore:
    """Signals of one scored step."""

    token_logprobs: torch.Tensor  # [m] fp32, log p(step token i | context, step tokens < i)
    token_grounding: torch.Tensor  # [m] fp32, mean over heads/layers of mass on the context
    confidence: float
    grounding: float  # raw G, before direction / reference
    last_logits: torch.Tensor  # [V] logits after the step's last token (predict what follows)


def last_layers(model: Any, count: int) -> tuple[int, ...]:
    """Indices of the model's last `count` decoder layers (all when it has fewer)."""
    total = int(model.config.num_hidden_layers)
    return tuple(range(max(0, total - count), total))


def reduce_grounding(per_token: torch.Tensor, cfg: SpecGuardConfig) -> float:
    """Step grounding from per-token masses [m]: the minimum or the `grounding_quantile` quantile."""
    if cfg.grounding_reduce == "min":
        return float(per_token.min())
    return float(torch.quantile(per_token, cfg.grounding_quantile))


def reduce_confidence(logprobs: torch.Tensor, how: str) -> float:
    """Step confidence from token log-probs [m]: exp(mean) or exp(min), in [0, 1]."""
    return float(torch.exp(logprobs.mean() if how == "mean_exp" else logprobs.min()))


@torch.inference_mode()
def score_candidates(model: Any, cache: Any, candidates: list[list[int]], last_logits: torch.Tensor,
                     cfg: SpecGuardConfig) -> list[StepScore]:
    """Score each candidate token chain on top of `cache` in one forward; last_logits [V] predict token 0.

    The cache grows by the total candidate length; the caller keeps one chain with
    `adapter.commit_cache(cache, n_kv, chain_indices)` or crops everything.
    """
    n_kv = adapter.cache_length(cache)
    lengths = [len(c) for c in candidates]
    assert all(lengths), "every candidate needs at least one token"
    n = sum(lengths)
    dev = model.device
    tokens = torch.tensor([t for c in candidates for t in c], dtype=torch.long, device=dev)  # [n]
    positions = torch.cat([torch.arange(m, device=dev) for m in lengths]) + n_kv  # [n]
    mask = torch.zeros(n, n, dtype=torch.bool, device=dev)  # [n, n] block-diagonal causal
    start = 0
    for m in lengths:
        mask[start:start + m, start:start + m] = adapter.causal_mask(m, dev)
        start += m
    out = adapter.tree_forward(model, tokens, positions, cache, mask, grounding_end=n_kv, grounding_start=1,
                               grounding_layers=last_layers(model, cfg.grounding_layers))
    if out.grounding:
        per_token = torch.stack(list(out.grounding.values())).float().mean(dim=(0, 1))  # [n]
    else:  # n_kv <= 1: no context beyond the sink
        per_token = torch.zeros(n, device=dev)
    logprobs_all = torch.log_softmax(out.logits.float(), dim=-1)  # [n, V]
    first = torch.log_softmax(last_logits.float(), dim=-1)  # [V]
    scores: list[StepScore] = []
    start = 0
    for cand, m in zip(candidates, lengths):
        ids = torch.tensor(cand, dtype=torch.long, device=dev)  # [m]
        # Token i's log-prob comes from the logits at the position before it.
        prev = torch.cat([first.unsqueeze(0), logprobs_all[start:start + m - 1]])  # [m, V]
        lp = prev.gather(1, ids.view(-1, 1)).squeeze(1)  # [m]
        g = per_token[start:start + m]  # [m]
        scores.append(StepScore(lp, g, reduce_confidence(lp, cfg.confidence), reduce_grounding(g, cfg),
                                out.logits[start + m - 1].float()))
        start += m
    return scores


def effective_grounding(raw: float, others: list[float], cfg: SpecGuardConfig) -> float:
    """G in [0, 1] after the configured reference (absolute / relative to `others`) and direction."""
    g = raw
    if cfg.grounding_reference == "relative" and others:
        g = 0.5 + 0.5 * (raw - sum(others) / len(others))
    g = min(1.0, max(0.0, g))
    return 1.0 - g if cfg.grounding_direction == "lower" else g


def decide(confidence: float, grounding: float, cfg: SpecGuardConfig) -> tuple[float, bool]:
    """(score, accepted) for a step from C and the effective G (DESIGN.md section 3)."""
    if cfg.signals == "confidence":
        return confidence, confidence >= cfg.tau
    if cfg.signals == "grounding":
        return grounding, grounding >= cfg.tau
    score = cfg.beta * confidence + (1.0 - cfg.beta) * grounding
    if cfg.rule == "and":
        return score, confidence >= cfg.tau_confidence and grounding >= cfg.tau_grounding
    return score, score >= cfg.tau
