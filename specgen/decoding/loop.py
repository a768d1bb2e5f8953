"""`decode`: one prompt on the target model, the step engine's main driver.

Prefill (written once, `verify.prefill`), the first token from the prefill's logits, then engine
steps until the stopper ends generation. Methods differ only in their proposer and acceptance
rule (DESIGN.md section 1). Each step emits at least one token (the bonus token).
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

import torch

from .. import adapter
from ..config import GenerationConfig
from ..errors import Interrupted
from ..linear import linear_backend
from ..proposers.base import Proposer
from ..rows import RowBuffer
from .accept import ExactMatch, PositionSampler
from .calibration import AcceptanceModel
from .engine import AcceptRule, DecodeState, TokenCallback, run
from .policy import DraftPolicy
from .profiles import cost_profile, save_refined
from .sizing import CostProfile, TreeSizer
from .stats import GenerationStats
from .stopping import Stopper
from .verify import ModelVerifier, prefill


@dataclass
class DecodeResult:
    """Generated token ids (prompt excluded), statistics and why generation ended."""

    token_ids: list[int]
    stats: GenerationStats
    finish_reason: str  # "eos" | "length" | "stop"


@dataclass
class Prefilled:
    """A KV cache that already holds every prompt position, and the logits [V] of the last one.

    Lets a caller that owns a cache (SpecGuard regenerating a rejected step) run the engine on it
    without prefilling the prompt again. The engine extends the cache in place.
    """

    cache: Any
    last_logits: torch.Tensor  # [V] predicts the first new token


@dataclass
class Started:
    """A generation after its prefill and first token: the state, its verifier, the start time."""

    state: DecodeState
    verifier: ModelVerifier
    t0: float


def start(target: Any, prompt_ids: list[int], proposer: Proposer, gen: GenerationConfig, *, method: str,
          on_tokens: TokenCallback | None = None, prefilled: Prefilled | None = None,
          calibration: AcceptanceModel | None = None) -> Started:
    """Prefill `prompt_ids`, emit the first token, and return the state the engine steps from.

    `calibration`: an acceptance model shared across generations (`TreeSizer`); None = a fresh one."""
    model = target.model
    adapter.use_tree_attention(model)
    n = len(prompt_ids)
    context = adapter.check_prompt_fits(model, n)
    stats = GenerationStats(method=method, prompt_tokens=n, device=str(model.device),
                            dtype=str(model.dtype).removeprefix("torch."), attention=adapter.attention_backend(model),
                            linear=linear_backend(model))
    # Generation stops at the end of the context (finish reason "length") whatever max_new_tokens says.
    stopper = Stopper(target.tokenizer, target.eos_ids, gen, None if context is None else context - n)
    # No seed: a fresh one, recorded in the statistics so the run can be repeated.
    seed = gen.sampling.seed if gen.sampling.seed is not None else secrets.randbits(63)
    stats.seed = None if gen.sampling.greedy else seed
    layer = proposer.hidden_layer
    verifier = ModelVerifier(model, gen.sampling, PositionSampler(seed, model.device), layer)
    t0 = time.perf_counter()
    hidden = None
    if prefilled is not None and layer is None:
        cache, first_logits = prefilled.cache, prefilled.last_logits  # [V]
        assert adapter.cache_length(cache) == n, "prefilled cache must hold exactly the prompt"
        stats.reused_cache = True
    else:
        cache, first_logits, hidden = prefill(model, prompt_ids, layer)  # hidden [n, H] | None
    stats.prefill_s = time.perf_counter() - t0
    profile: CostProfile | None = None
    timed = False
    # `ar` too: it drafts nothing, but its plain steps pad as every method's do (`CostProfile.pads`).
    # A baseline without the padding hands every other method a free speedup: on the fp32 1.5B a
    # 2-token forward was timed faster than a 1-token one.
    if gen.tree_sizing.mode == "cost":
        t1 = time.perf_counter()
        profile, measured = cost_profile(model, cache, n, gen.tree_sizing)  # timed once, then cached on disk
        timed = gen.tree_sizing.costs is None and model.device.type == "cpu"  # CPU forwards time synchronously
        stats.profile_s = time.perf_counter() - t1 if measured else 0.0
        stats.cost_profile = profile.to_dict()
    state = DecodeState(tokens=list(prompt_ids), prompt_len=n, stopper=stopper, stats=stats,
                        policy=DraftPolicy(gen.draft_policy, model.device.type, self_gated=proposer.self_gated),
                        sizer=TreeSizer(profile, gen.tree_sizing, timed=timed, calibration=calibration),
                        node_budget=gen.node_budget, cache=cache,
                        hidden=RowBuffer(hidden, n + gen.max_new_tokens) if hidden is not None and
                        proposer.wants_context_hidden else None,
                        last_hidden=hidden[-1] if hidden is not None else None)
    proposer.reset(list(prompt_ids))
    first = stopper.feed([verifier.pick(first_logits, n)])
    state.tokens += first
    stats.first_token_s = time.perf_counter() - t0
    if on_tokens:
        on_tokens(first)
    return Started(state, verifier, t0)


def finish(target: Any, gen: GenerationConfig, started: Started) -> DecodeResult:
    """The result of a generation whose state is done (statistics closed, refined profile saved)."""
    state, stats = started.state, started.state.stats
    # The cost profile is a once-per-machine calibration (then read from disk): not part of decoding.
    stats.wall_s = time.perf_counter() - started.t0 - stats.profile_s
    stats.new_tokens = len(state.stopper.generated)
    stats.draft_skipped = state.policy.skipped
    if state.sizer.refined and state.sizer.profile is not None:
        save_refined(target.model, gen.tree_sizing, state.sizer.profile)
        stats.cost_profile = state.sizer.profile.to_dict()
    return DecodeResult(state.stopper.generated, stats, state.stopper.reason or "length")


@torch.inference_mode()
def decode(target: Any, prompt_ids: list[int], proposer: Proposer, gen: GenerationConfig, *,
           method: str, rule: AcceptRule | None = None, on_tokens: TokenCallback | None = None,
           prefilled: Prefilled | None = None, calibration: AcceptanceModel | None = None) -> DecodeResult:
    """Generate from `prompt_ids` with the target model of bundle `target`, drafting with `proposer`
    and accepting with `rule` (default: exact match, lossless); `calibration` as in `start`.

    With `prefilled` (used only when the proposer needs no hidden states, which a reused cache
    cannot supply) the prompt's prefill is skipped and its cache extended.
    """
    started = None
    try:
        started = start(target, prompt_ids, proposer, gen, method=method, on_tokens=on_tokens, prefilled=prefilled,
                        calibration=calibration)
        run(started.state, proposer, started.verifier, rule or ExactMatch(), on_tokens=on_tokens)
    except KeyboardInterrupt:
        done = 0 if started is None else len(started.state.stopper.generated)
        raise Interrupted(f"interrupted after {done} tokens") from None
    return finish(target, gen, started)
