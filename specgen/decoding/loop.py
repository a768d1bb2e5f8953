"""The decode loop: prefill, then propose -> build tree -> verify -> accept -> commit, until done.

One loop serves every token-level method; methods differ only in their proposer and acceptance
rule (DESIGN.md section 1). Each step emits at least one token (the bonus token).
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .. import adapter
from ..config import GenerationConfig, SoftGateConfig
from ..errors import Interrupted
from ..proposers.base import Candidates, Proposer, ProposeContext
from .accept import PositionSampler, accept_greedy, accept_sampling, target_probs
from .policy import DraftPolicy
from .sizing import CostProfile, TreeSizer, measure_cost_profile
from .stats import GenerationStats, StepRecord
from .tree import build_tree
from .verify import verify_tree

TokenCallback = Callable[[list[int]], None]


@dataclass
class DecodeResult:
    """Generated token ids (prompt excluded), statistics and why generation ended."""

    token_ids: list[int]
    stats: GenerationStats
    finish_reason: str  # "eos" | "length" | "stop"


class Stopper:
    """Decides, token by token, where generation ends: EOS (kept), max_new_tokens or the end of the
    model's context (`limit`), a stop string."""

    def __init__(self, tokenizer: Any, eos_ids: set[int], gen: GenerationConfig, limit: int | None = None) -> None:
        self.tokenizer, self.eos_ids, self.gen = tokenizer, eos_ids if gen.stop_at_eos else set(), gen
        self.limit = gen.max_new_tokens if limit is None else min(limit, gen.max_new_tokens)
        self.generated: list[int] = []
        self.reason: str | None = None

    @property
    def remaining(self) -> int:
        return self.limit - len(self.generated)

    def feed(self, tokens: list[int]) -> list[int]:
        """Append `tokens` up to where generation ends; return the ones kept."""
        kept = []
        for t in tokens:
            self.generated.append(t)
            kept.append(t)
            if t in self.eos_ids:
                self.reason = "eos"
            elif self.gen.stop and any(s in self.tokenizer.decode(self.generated[-64:], skip_special_tokens=True)
                                       for s in self.gen.stop):
                self.reason = "stop"
            elif len(self.generated) >= self.limit:
                self.reason = "length"
            if self.reason:
                break
        return kept


def _pick(logits: torch.Tensor, gen: GenerationConfig, sampler: PositionSampler, pos: int) -> int:
    """The target's token at sequence position `pos` from one row of logits [V]: argmax or a sample."""
    if gen.sampling.greedy:
        return int(logits.argmax())
    return sampler.sample(target_probs(logits.view(1, -1), gen.sampling)[0], pos)


@dataclass
class Prefilled:
    """A KV cache that already holds every prompt position, and the logits [V] of the last one.

    Lets a caller that owns a cache (SpecGuard regenerating a rejected step) continue decoding
    without prefilling the prompt again. The loop extends the cache in place.
    """

    cache: Any
    last_logits: torch.Tensor  # [V] predicts the first new token


@torch.inference_mode()
def decode(target: Any, prompt_ids: list[int], proposer: Proposer, gen: GenerationConfig, *,
           method: str, gate: SoftGateConfig | None = None, on_tokens: TokenCallback | None = None,
           prefilled: Prefilled | None = None) -> DecodeResult:
    """Generate from `prompt_ids` with the target model of bundle `target`, drafting with `proposer`.

    With `prefilled` (used only when the proposer needs no hidden states, which a reused cache
    cannot supply) the prompt's prefill is skipped and its cache extended.
    """
    model = target.model
    adapter.use_tree_attention(model)
    stats = GenerationStats(method=method, prompt_tokens=len(prompt_ids))
    context = adapter.check_prompt_fits(model, len(prompt_ids))
    # Generation stops at the end of the context (finish reason "length") whatever max_new_tokens says.
    stopper = Stopper(target.tokenizer, target.eos_ids, gen, None if context is None else context - len(prompt_ids))
    # No seed: a fresh one, recorded in the statistics so the run can be repeated.
    seed = gen.sampling.seed if gen.sampling.seed is not None else secrets.randbits(63)
    stats.seed = None if gen.sampling.greedy else seed
    sampler = PositionSampler(seed, model.device)
    layer = proposer.hidden_layer
    embeddings = model.get_input_embeddings().weight if gate is not None and gate.enabled else None  # [V, H]
    policy = DraftPolicy(gen.draft_policy, model.device.type, self_gated=proposer.self_gated)
    try:
        t0 = time.perf_counter()

        n = len(prompt_ids)
        if prefilled is not None and layer is None:
            cache = prefilled.cache
            assert adapter.cache_length(cache) == n, "prefilled cache must hold exactly the prompt"
            first_logits, context_hidden, last_hidden = prefilled.last_logits, None, None  # [V]
            stats.reused_cache = True
        else:
            # Prefill: the whole prompt, causal; only the last position's logits are needed.
            cache = adapter.new_cache(model)
            out = adapter.tree_forward(model, torch.tensor(prompt_ids, dtype=torch.long), torch.arange(n), cache,
                                       adapter.causal_mask(n, "cpu"), hidden_layer=layer,
                                       logits_for=torch.tensor([n - 1]))
            context_hidden = out.hidden if proposer.wants_context_hidden else None  # [L, H]
            last_hidden = out.hidden[-1] if out.hidden is not None else None  # [H]
            first_logits = out.logits[-1]  # [V]
        sizing = gen.tree_sizing
        profile: CostProfile | None = None
        if sizing.mode == "cost" and proposer.name != "ar":
            profile = measure_cost_profile(model, cache, n, sizing)  # timed once per model, device and threads
            stats.cost_profile = profile.to_dict()
        sizer = TreeSizer(profile, sizing)
        tokens = list(prompt_ids)
        proposer.reset(list(prompt_ids))
        first = stopper.feed([_pick(first_logits, gen, sampler, n)])
        tokens += first
        stats.prefill_s = time.perf_counter() - t0
        if on_tokens:
            on_tokens(first)

        while stopper.reason is None:
            n_kv = len(tokens) - 1
            ta = time.perf_counter()
            budget = min(gen.node_budget, stopper.remaining)
            cands = proposer.propose(ProposeContext(tokens=tokens, prompt_len=len(prompt_ids), budget=budget,
                                                    hidden=last_hidden, context_hidden=context_hidden)) \
                if budget > 0 and policy.should_draft() else Candidates()
            tree = build_tree(tokens[-1], cands, budget, sizer.size_fn)
            tb = time.perf_counter()
            ver = verify_tree(model, cache, tree, n_kv, hidden_layer=layer)
            tc = time.perf_counter()
            if gen.sampling.greedy:
                acc = accept_greedy(tree, ver.logits, gate, embeddings)
            else:
                acc = accept_sampling(tree, ver.logits, gen.sampling, sampler, n_kv)
            adapter.commit_cache(cache, n_kv, acc.path)
            sizer.observe(tree, acc.path)
            path = list(acc.path)
            if ver.hidden is not None:
                last_hidden = ver.hidden[path[-1]]
                if context_hidden is not None:
                    context_hidden = torch.cat([context_hidden, ver.hidden[path]], dim=0)  # [L', H]
            new = stopper.feed([int(tree.tokens[i]) for i in path[1:]] + [acc.bonus])
            tokens += new
            proposer.commit(tokens, len(tokens) - 1)
            depth = int(tree.depth.max()) if tree.size > 1 else 0
            policy.update(tree.size - 1, len(path) - 1)
            stats.add_step(StepRecord(drafted=tree.size - 1, draft_depth=depth, accepted=len(path) - 1,
                                      emitted=len(new), gated=acc.gated, t_propose=tb - ta, t_verify=tc - tb,
                                      t_accept=time.perf_counter() - tc))
            if on_tokens:
                on_tokens(new)

        stats.wall_s = time.perf_counter() - t0
        stats.new_tokens = len(stopper.generated)
        stats.draft_skipped = policy.skipped
        return DecodeResult(stopper.generated, stats, stopper.reason or "length")
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted after {len(stopper.generated)} tokens") from None
