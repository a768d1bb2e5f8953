"""The SpecGuard step-level loop (DESIGN.md section 3; our reading of SpecGuard, baseline RSD 2025).

Per step: the draft samples k candidate steps (ending at the delimiter, EOS or a token cap), the
self-consistency selector picks one, the target scores it in ONE forward on top of its committed KV
cache (attention grounding + log-probability confidence, `scores.py`), and an ensemble decides.
Accepted: the step's KV entries, already in the cache, are kept. Rejected: the cache is cropped and
the target writes the step itself with a token-level method (`recompute_method`, default `pld`)
through `specgen.generate.generate`, i.e. the shared decode loop, stopping at the delimiter.

Steps cross between the models through an exchange (`exchange.py`): as token ids when the draft
shares the target's tokenizer (the draft then keeps its KV cache across steps), else as text.

Default draft (`draft_model="auto"`): the named target's own family draft from the catalog
(Qwen2.5-Coder-0.5B for qwen2.5-coder-1.5b: one tokenizer, token-id exchange), otherwise
Gemma-3-270M (`gemma3-270m`, base model, text exchange) for the embedded SmolLM2-135M-Instruct.
That last pairing runs the wrong way round (Gemma is the bigger model): Gemma 3 alternates
sliding-window (512) and global layers, which specgen's tree attention refuses
(`kernels/hf_attention.py`), so it cannot be the target; as the draft it only runs HF `generate`.
It exercises the method and the cross-tokenizer path rather than promising a speed-up.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

from .. import adapter
from ..config import GenerationConfig
from ..decoding.loop import Prefilled
from ..decoding.stopping import Stopper
from ..decoding.verify import prefill
from ..decoding.stats import GenerationStats, StepRecord
from ..errors import Interrupted, SpecgenError
from .config import SpecGuardConfig
from .exchange import make_exchange
from .scores import StepScore, decide, effective_grounding, score_candidates
from .select import select_candidate


def check_target(target: Any) -> None:
    """Refuse targets the tree-attention path cannot run (sliding-window layers) with one line."""
    types = getattr(target.model.config, "layer_types", None) or []
    if any("sliding" in str(t) for t in types):
        raise SpecgenError(f"target '{target.name}' has sliding-window attention layers, which specgen's tree "
                           "attention does not support; use it as the draft (--draft-model) instead")


def load_specguard_draft(target: Any, cfg: SpecGuardConfig) -> Any:
    """The draft ModelBundle: the configured model (loaded in the target's dtype), or the target itself."""
    if cfg.draft_model is None:
        return target
    from ..models import load_like

    return load_like(cfg.draft_for(target.name), target)


def draft_prompt_ids(draft: Any, prompt: str, raw: bool, delimiter: str) -> list[int]:
    """The prompt in the draft's tokenization: its chat template, or (no template) the prompt text
    followed by the step delimiter so that a base model starts a new paragraph, the answer."""
    from ..generate import encode_prompt

    if raw or not getattr(draft.tokenizer, "chat_template", None):
        text = prompt if prompt.endswith(delimiter) else prompt.rstrip() + delimiter
        return encode_prompt(draft.tokenizer, text, raw=True)
    return encode_prompt(draft.tokenizer, prompt)


def generate_specguard(target: Any, prompt: str | list[int], *, gen: GenerationConfig,
                       config: SpecGuardConfig | None = None, raw: bool = False,
                       on_text: Callable[[str], None] | None = None, draft: Any = None) -> Any:
    """Run SpecGuard on `prompt` (text, or target token ids); returns a GenerationResult.

    `draft` is a preloaded draft ModelBundle (else `config.draft_model` is loaded). Per-step detail
    goes to `result.extra["specguard"]`.
    """
    from ..generate import GenerationResult, TextStream, encode_prompt, generate
    from ..proposers.registry import get_method

    cfg = config if config is not None else SpecGuardConfig()
    if not isinstance(cfg, SpecGuardConfig):
        raise SpecgenError(f"method 'specguard' takes a SpecGuardConfig, got {type(cfg).__name__}")
    check_target(target)
    get_method(cfg.recompute_method)  # one-line error for an unknown method
    draft = draft if draft is not None else load_specguard_draft(target, cfg)
    if isinstance(prompt, list):
        prompt_ids = [int(t) for t in prompt]
        d_prompt = draft_prompt_ids(draft, target.tokenizer.decode(prompt_ids, skip_special_tokens=True), True,
                                    cfg.step_delimiter)
    else:
        prompt_ids = encode_prompt(target.tokenizer, prompt, raw=raw)
        d_prompt = draft_prompt_ids(draft, prompt, raw, cfg.step_delimiter)
    exchange = make_exchange(target, draft, prompt_ids, d_prompt, cfg)

    model = target.model
    adapter.use_tree_attention(model)
    stats = GenerationStats(method="specguard", prompt_tokens=len(prompt_ids))
    context = adapter.check_prompt_fits(model, len(prompt_ids))
    stopper = Stopper(target.tokenizer, target.eos_ids, gen, None if context is None else context - len(prompt_ids))
    stream = TextStream(target.tokenizer, gen.stop, on_text or (lambda _: None))
    t0 = time.perf_counter()
    cache, last_logits, _ = prefill(model, prompt_ids)  # last_logits [V] predicts the first output token
    stats.prefill_s = time.perf_counter() - t0
    records: list[dict[str, Any]] = []
    draft_s = target_s = 0.0
    inner = {"forwards": 0, "drafted": 0, "accepted": 0}

    try:
        while stopper.reason is None:
            out_ids = stopper.generated
            n_kv = len(prompt_ids) + len(out_ids)
            remaining = stopper.remaining
            ta = time.perf_counter()
            cands, vectors = exchange.sample(out_ids, min(cfg.max_step_tokens, remaining), cfg.seed + len(records))
            chosen = select_candidate([c.text for c in cands], cfg.selector, vectors)
            cand_ids = [list(c.target_ids)[:remaining] for c in cands]
            tb = time.perf_counter()
            draft_s += tb - ta
            rec: dict[str, Any] = {"draft_text": cands[chosen].text, "candidates": len(cands)}
            accepted, score = False, None
            step_ids = cand_ids[chosen]
            if step_ids:
                scored_ids = [c for c in cand_ids if c] if cfg.grounding_reference == "relative" else [step_ids]
                at = next(i for i, c in enumerate(scored_ids) if c is step_ids)
                scs = score_candidates(model, cache, scored_ids, last_logits, cfg)
                sc = scs[at]
                g = effective_grounding(sc.grounding, [s.grounding for i, s in enumerate(scs) if i != at], cfg)
                if cfg.scorer is not None:
                    score = float(cfg.scorer(target.tokenizer.decode(out_ids, skip_special_tokens=True),
                                             cands[chosen].text))
                    accepted = score >= cfg.tau
                else:
                    score, accepted = decide(sc.confidence, g, cfg)
                rec.update(grounding=sc.grounding, grounding_eff=g, confidence=sc.confidence)
                if accepted:
                    offset = sum(len(c) for c in scored_ids[:at])
                    adapter.commit_cache(cache, n_kv, list(range(offset, offset + len(step_ids))))
                    last_logits = sc.last_logits
            tc = time.perf_counter()
            stats.add_step(StepRecord(drafted=len(step_ids), draft_depth=0, accepted=len(step_ids) if accepted else 0,
                                      emitted=0, t_propose=tb - ta, t_verify=tc - tb))
            if accepted:
                new = step_ids
            else:
                adapter.crop_cache(cache, n_kv)
                sub = dataclasses.replace(gen, max_new_tokens=min(cfg.max_step_tokens, remaining),
                                          stop=(cfg.step_delimiter,),
                                          sampling=dataclasses.replace(gen.sampling, seed=(gen.sampling.seed or 0) + len(records)))
                # Continue on the shared cache (no second prefill of the context), then crop back and
                # score the target's own step in one forward, which also restores the cache state.
                res = generate(target, prompt_ids + out_ids, method=cfg.recompute_method, gen=sub,
                               prefilled=Prefilled(cache, last_logits))
                prefills = 0 if res.stats.reused_cache else 1  # a proposer needing hidden states prefills anew
                adapter.crop_cache(cache, n_kv)
                new = res.token_ids
                inner["forwards"] += res.stats.steps + prefills
                inner["drafted"] += res.stats.drafted
                inner["accepted"] += res.stats.accepted
                own: StepScore = score_candidates(model, cache, [new], last_logits, cfg)[0]  # extend the cache
                last_logits = own.last_logits
                stats.steps += res.stats.steps + prefills + 1  # the sub-generation's steps (and prefill), this forward
                rec.update(target_grounding=own.grounding, target_confidence=own.confidence)
            td = time.perf_counter()
            target_s += td - tb
            stats.accept_s += td - tc
            kept = stopper.feed(new)
            exchange.commit(list(stopper.generated), chosen, accepted)
            stats.accept_lengths[-1] = len(kept)
            rec.update(source="draft" if accepted else "target", score=score, accepted=accepted,
                       text=target.tokenizer.decode(kept, skip_special_tokens=True), tokens=len(kept))
            records.append(rec)
            stream.push(kept)
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted after {len(stopper.generated)} tokens") from None

    text = stream.close()
    stats.wall_s = time.perf_counter() - t0
    stats.new_tokens = len(stopper.generated)
    n_acc = sum(1 for r in records if r["accepted"])
    extra = {"specguard": {"steps": records, "accepted_steps": n_acc, "recomputed_steps": len(records) - n_acc,
                           "draft_s": draft_s, "target_s": target_s, "draft_model": draft.name,
                           "recompute_forwards": inner["forwards"], "recompute_drafted": inner["drafted"],
                           "recompute_accepted": inner["accepted"]}}
    return GenerationResult(text, list(stopper.generated), stats, stopper.reason or "length", extra)
