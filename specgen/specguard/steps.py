"""The SpecGuard step-level loop (DESIGN.md section 3; our reading of SpecGuard, baseline RSD 2025).

Per step: the draft samples k candidate steps (ending at the delimiter, EOS or a token cap), the
self-consistency selector picks one, the target scores it in ONE forward on top of its committed KV
cache (attention grounding + log-probability confidence, `scores.py`), and an ensemble decides.
Accepted: the step's KV entries, already in the cache, are kept. Rejected: the cache is cropped and
the target writes the step itself with a token-level method (`recompute_method`, default `pld`)
through `specgen.generate.generate`, i.e. the shared decode loop, stopping at the delimiter.

Steps cross between the models as TEXT: the draft always sees its own tokenization of the prompt
plus the whole output text so far (re-tokenized each step, so no token-boundary seams appear on the
draft side); the target keeps its own token ids, and a draft step enters them by tokenizing the
step text alone (steps end at whitespace-ending delimiters, where tokenizers split anyway).

CPU pairing out of the box: target = the CLI's default model, SmolLM2-135M-Instruct; draft =
Gemma-3-270M (`gemma3-270m`, base model). Why this way round although Gemma is the bigger model:
Gemma 3 alternates sliding-window (512) and global layers, and specgen's tree attention refuses
sliding-window layers (`kernels/hf_attention.py`) while `adapter.commit_cache` asserts plain
DynamicLayer caches (Gemma's DynamicCache holds DynamicSlidingWindowLayer entries), so Gemma cannot
be the target without changes outside this package. As the draft it only runs HF `generate`, which
handles its architecture. Gemma-3-270M is 170M of embedding parameters and a 100M-parameter, 18-layer
body with a 262k vocabulary; per token on this CPU it is not cheaper than SmolLM2-135M, so this
pairing exercises the method (and the cross-tokenizer path) rather than promising a speed-up.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .. import adapter
from ..config import GenerationConfig
from ..decoding.loop import Prefilled
from ..decoding.stopping import Stopper
from ..decoding.verify import prefill
from ..decoding.stats import GenerationStats, StepRecord
from ..errors import Interrupted, SpecgenError
from .config import SpecGuardConfig
from .scores import StepScore, decide, effective_grounding, score_candidates
from .select import select_candidate


@dataclass(frozen=True)
class DraftStep:
    """One sampled candidate step, as text."""

    text: str  # cut after the delimiter when it occurs
    eos: bool  # the draft ended the answer inside this step
    draft_tokens: int


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

    return load_like(cfg.draft_model, target)


def draft_prompt_ids(draft: Any, prompt: str, raw: bool, delimiter: str) -> list[int]:
    """The prompt in the draft's tokenization: its chat template, or (no template) the prompt text
    followed by the step delimiter so that a base model starts a new paragraph, the answer."""
    from ..generate import encode_prompt

    if raw or not getattr(draft.tokenizer, "chat_template", None):
        text = prompt if prompt.endswith(delimiter) else prompt.rstrip() + delimiter
        return encode_prompt(draft.tokenizer, text, raw=True)
    return encode_prompt(draft.tokenizer, prompt)


@torch.inference_mode()
def sample_steps(draft: Any, context_ids: list[int], cfg: SpecGuardConfig, max_new: int,
                 seed: int) -> tuple[list[DraftStep], torch.Tensor]:
    """k candidate steps from the draft in one batched HF `generate`; also [k, d] mean input embeddings."""
    k = cfg.candidates if cfg.draft_temperature > 0 else 1
    tok = draft.tokenizer
    eos = draft.eos_ids
    pad = tok.pad_token_id if tok.pad_token_id is not None else (min(eos) if eos else 0)
    ids = torch.tensor([context_ids], dtype=torch.long, device=draft.model.device)  # [1, L]
    sampling: dict[str, Any] = (dict(do_sample=True, temperature=cfg.draft_temperature, top_k=0, top_p=1.0)
                                if cfg.draft_temperature > 0 else dict(do_sample=False))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = draft.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                                   num_return_sequences=k, stop_strings=[cfg.step_delimiter], tokenizer=tok,
                                   pad_token_id=pad, eos_token_id=sorted(eos) or None, **sampling)  # [k, L + t]
    steps: list[DraftStep] = []
    vectors = []
    emb = draft.model.get_input_embeddings()
    for row in out[:, ids.shape[1]:].tolist():
        cut = next((i for i, t in enumerate(row) if t in eos), None)
        new = row if cut is None else row[:cut]
        text = tok.decode(new, skip_special_tokens=True)
        at = text.find(cfg.step_delimiter)
        ended = cut is not None and at < 0
        if at >= 0:
            text = text[: at + len(cfg.step_delimiter)]
        steps.append(DraftStep(text, ended, len(new)))
        vec_ids = tok(text, add_special_tokens=False)["input_ids"] or [pad]
        vectors.append(emb(torch.tensor(vec_ids, device=ids.device)).float().mean(dim=0).cpu())  # [d]
    return steps, torch.stack(vectors)  # [k, d]


_LOOKAHEAD = "A"


def step_to_target_ids(step: DraftStep, target: Any) -> list[int]:
    """Target token ids of a draft step (text re-tokenized; the target's EOS appended when the draft ended).

    Seam: a BPE tokenizer splits a trailing "\n\n" differently when text follows ("\n", "\n" before
    a word, one "\n\n" token at the very end). Steps are tokenized with a one-letter lookahead that
    is then dropped, so the ids match the tokenization of the joined text when the next step starts
    with a word (falls back to the plain tokenization when the lookahead does not split off cleanly).
    """
    tok = target.tokenizer
    ids = [int(t) for t in tok(step.text + _LOOKAHEAD, add_special_tokens=False)["input_ids"]]
    if not (ids and tok.decode(ids[-1:]) == _LOOKAHEAD and tok.decode(ids[:-1]) == step.text) or step.eos:
        ids = [int(t) for t in tok(step.text, add_special_tokens=False)["input_ids"]]
    else:
        ids = ids[:-1]
    if step.eos and target.tokenizer.eos_token_id is not None:
        ids.append(int(target.tokenizer.eos_token_id))
    return ids


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

    model = target.model
    adapter.use_tree_attention(model)
    stats = GenerationStats(method="specguard", prompt_tokens=len(prompt_ids))
    context = adapter.check_prompt_fits(model, len(prompt_ids))
    stopper = Stopper(target.tokenizer, target.eos_ids, gen, None if context is None else context - len(prompt_ids))
    stream = TextStream(target.tokenizer, gen.stop, on_text or (lambda _: None))
    t0 = time.perf_counter()
    n = len(prompt_ids)
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
            out_text = target.tokenizer.decode(out_ids, skip_special_tokens=True)
            ta = time.perf_counter()
            ctx_ids = d_prompt + draft.tokenizer(out_text, add_special_tokens=False)["input_ids"]
            cands, vectors = sample_steps(draft, ctx_ids, cfg, min(cfg.max_step_tokens, remaining),
                                          cfg.seed + len(records))
            chosen = select_candidate([c.text for c in cands], cfg.selector, vectors)
            cand_ids = [step_to_target_ids(c, target)[:remaining] for c in cands]
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
                    score = float(cfg.scorer(out_text, cands[chosen].text))
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
