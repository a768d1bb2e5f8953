"""How SpecGuard's draft and target pass steps: as token ids (one tokenizer) or as text (two).

`TokenExchange` (the draft shares the target's vocabulary, e.g. Qwen2.5-Coder 0.5B for 1.5B):
the draft's context is the target's own ids, a sampled step's ids are the target's ids, and the
draft keeps one KV cache of prompt + output across steps. Each step's k samples run as one batched
HF `generate` on a copy of that cache repeated k times (only the tokens the cache lacks are fed);
afterwards the chosen sample's row, cut to what was committed, becomes the new cache.

`TextExchange` (different tokenizers, e.g. Gemma-3 drafting for SmolLM2): the draft sees its own
tokenization of the prompt plus the whole output text so far, re-tokenized each step (no seams on
the draft side, no cache reuse), and a step enters the target by tokenizing its text.

Both give each candidate as a `DraftStep` with its target ids, so the scorer and the decision
never know which exchange ran (`tests/specguard/test_exchange.py` checks they decide alike).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .. import adapter
from .config import SpecGuardConfig


@dataclass(frozen=True)
class DraftStep:
    """One sampled candidate step."""

    text: str  # cut after the delimiter when it occurs
    eos: bool  # the draft ended the answer inside this step
    draft_tokens: int
    target_ids: tuple[int, ...] = ()  # the step in the target's vocabulary (its EOS appended when `eos`)


class Exchange(Protocol):
    """The draft's side of a SpecGuard generation."""

    def sample(self, out_ids: list[int], max_new: int, seed: int) -> tuple[list[DraftStep], torch.Tensor]:
        """k candidate steps after the output so far (target ids); also [k, d] mean input embeddings."""
        ...

    def commit(self, out_ids: list[int], chosen: int, accepted: bool) -> None:
        """The output is now `out_ids`; candidate `chosen` was accepted (or the target wrote the step)."""
        ...


def _generate(draft: Any, ids: torch.Tensor, cfg: SpecGuardConfig, max_new: int, seed: int, k: int,
              cache: Any = None) -> torch.Tensor:
    """[k, L + t] from HF `generate`: k samples (one greedy when k == 1 at temperature 0) of ids [k, L]."""
    tok, eos, pad = draft.tokenizer, draft.eos_ids, _pad_id(draft)
    sampling: dict[str, Any] = (dict(do_sample=True, temperature=cfg.draft_temperature, top_k=0, top_p=1.0)
                                if cfg.draft_temperature > 0 else dict(do_sample=False))
    extra: dict[str, Any] = {} if cache is None else {"past_key_values": cache}
    with torch.random.fork_rng(devices=[] if ids.device.type == "cpu" else [ids.device]):
        torch.manual_seed(seed)
        return draft.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new,
                                    num_return_sequences=1 if ids.shape[0] > 1 else k,
                                    stop_strings=[cfg.step_delimiter], tokenizer=tok, pad_token_id=pad,
                                    eos_token_id=sorted(eos) or None, **sampling, **extra)


def _embed(draft: Any, ids: list[int], pad: int) -> torch.Tensor:
    """[d] mean input embedding of `ids` in the draft (the embedding selector's vector)."""
    emb = draft.model.get_input_embeddings()
    return emb(torch.tensor(ids or [pad], device=draft.model.device)).float().mean(dim=0).cpu()


def _pad_id(draft: Any) -> int:
    tok, eos = draft.tokenizer, draft.eos_ids
    return tok.pad_token_id if tok.pad_token_id is not None else (min(eos) if eos else 0)


def _samples(cfg: SpecGuardConfig) -> int:
    """Candidates per step: `candidates` samples, or one greedy step at draft temperature 0."""
    return cfg.candidates if cfg.draft_temperature > 0 else 1


def _until_eos(row: list[int], eos: set[int]) -> tuple[list[int], bool]:
    """A generated row up to its first EOS id (exclusive), and whether one occurred."""
    end = next((i for i, t in enumerate(row) if t in eos), None)
    return (row, False) if end is None else (row[:end], True)


def cut_at_delimiter(tokenizer: Any, ids: list[int], delimiter: str) -> list[int]:
    """`ids` up to and including the first token whose decoded text completes `delimiter`."""
    for i in range(len(ids)):
        if delimiter in tokenizer.decode(ids[: i + 1], skip_special_tokens=True):
            return ids[: i + 1]
    return ids


class TokenExchange:
    """Steps cross as token ids; the draft's KV cache of prompt + output lives across steps."""

    def __init__(self, target: Any, draft: Any, prompt_ids: list[int], cfg: SpecGuardConfig) -> None:
        self.target, self.draft, self.cfg = target, draft, cfg
        self.prompt_ids = list(prompt_ids)
        self.cache = adapter.new_cache(draft.model)
        self.fed: list[int] = []  # tokens whose KV entries `self.cache` holds
        self.rows: Any = None  # the last sample's [k]-row cache
        self.row_ids: list[list[int]] = []  # each row's step ids (draft = target vocabulary)

    @torch.inference_mode()
    def sample(self, out_ids: list[int], max_new: int, seed: int) -> tuple[list[DraftStep], torch.Tensor]:
        context = self.prompt_ids + out_ids
        common = adapter.common_prefix(self.fed, context)
        keep = min(common, len(context) - 1)  # generate needs at least one uncached token
        adapter.crop_cache(self.cache, keep)
        self.fed = self.fed[:keep]
        k = _samples(self.cfg)
        ids = torch.tensor([context] * k, dtype=torch.long, device=self.draft.model.device)  # [k, L]
        self.rows = adapter.repeat_cache(self.cache, k)
        out = _generate(self.draft, ids, self.cfg, max_new, seed, k, cache=self.rows)  # [k, L + t]
        eos, tok, pad = self.draft.eos_ids, self.draft.tokenizer, _pad_id(self.draft)
        steps, vectors, self.row_ids = [], [], []
        target_eos = self.target.tokenizer.eos_token_id
        for row in out[:, len(context):].tolist():
            new, hit_eos = _until_eos(row, eos)
            step = cut_at_delimiter(tok, new, self.cfg.step_delimiter)
            text = tok.decode(step, skip_special_tokens=True)
            # a row stopped at the delimiter is padded with the EOS id: an end only without the delimiter
            ended = hit_eos and self.cfg.step_delimiter not in text
            self.row_ids.append(step)
            ids_t = tuple(step) + ((int(target_eos),) if ended and target_eos is not None else ())
            steps.append(DraftStep(text, ended, len(new), ids_t))
            vectors.append(_embed(self.draft, step, pad))
        self.fed = list(context)
        return steps, torch.stack(vectors)  # [k, d]

    def commit(self, out_ids: list[int], chosen: int, accepted: bool) -> None:
        """Keep the chosen row's cache up to what the output still shares with it."""
        if self.rows is None:
            return
        row_tokens = self.fed + (self.row_ids[chosen] if accepted else [])
        length = min(adapter.common_prefix(row_tokens, self.prompt_ids + out_ids), adapter.cache_length(self.rows))
        self.cache = adapter.select_cache_row(self.rows, chosen, length)
        self.fed, self.rows = row_tokens[:length], None


class TextExchange:
    """Steps cross as text: the draft re-tokenizes prompt + output each step (different tokenizers)."""

    def __init__(self, target: Any, draft: Any, draft_prompt: list[int], cfg: SpecGuardConfig) -> None:
        self.target, self.draft, self.cfg = target, draft, cfg
        self.draft_prompt = list(draft_prompt)

    @torch.inference_mode()
    def sample(self, out_ids: list[int], max_new: int, seed: int) -> tuple[list[DraftStep], torch.Tensor]:
        tok, eos, pad = self.draft.tokenizer, self.draft.eos_ids, _pad_id(self.draft)
        out_text = self.target.tokenizer.decode(out_ids, skip_special_tokens=True)
        context = self.draft_prompt + tok(out_text, add_special_tokens=False)["input_ids"]
        k = _samples(self.cfg)
        ids = torch.tensor([context], dtype=torch.long, device=self.draft.model.device)  # [1, L]
        out = _generate(self.draft, ids, self.cfg, max_new, seed, k)  # [k, L + t]
        steps, vectors = [], []
        for row in out[:, ids.shape[1]:].tolist():
            new, hit_eos = _until_eos(row, eos)
            text = tok.decode(new, skip_special_tokens=True)
            at = text.find(self.cfg.step_delimiter)
            ended = hit_eos and at < 0
            if at >= 0:
                text = text[: at + len(self.cfg.step_delimiter)]
            step = DraftStep(text, ended, len(new))
            steps.append(DraftStep(text, ended, len(new), tuple(step_to_target_ids(step, self.target))))
            vectors.append(_embed(self.draft, tok(text, add_special_tokens=False)["input_ids"], pad))
        return steps, torch.stack(vectors)  # [k, d]

    def commit(self, out_ids: list[int], chosen: int, accepted: bool) -> None:
        pass  # nothing kept between steps: the next sample re-tokenizes the whole output


_LOOKAHEAD = "A"


def step_to_target_ids(step: DraftStep, target: Any) -> list[int]:
    """Target token ids of a text step (re-tokenized; the target's EOS appended when the draft ended).

    Seam: a BPE tokenizer splits a trailing "\\n\\n" differently when text follows ("\\n", "\\n" before
    a word, one "\\n\\n" token at the very end). Steps are tokenized with a one-letter lookahead that
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


def same_vocabulary(target: Any, draft: Any) -> bool:
    """Whether ids can cross unchanged: the draft is the target, or both tokenizers map alike."""
    return draft is target or draft.tokenizer.get_vocab() == target.tokenizer.get_vocab()


def make_exchange(target: Any, draft: Any, prompt_ids: list[int], draft_prompt: list[int],
                  cfg: SpecGuardConfig) -> TokenExchange | TextExchange:
    """The exchange `cfg.exchange` names; "auto" = token ids when the vocabularies agree."""
    tokens = cfg.exchange == "tokens" or (cfg.exchange == "auto" and same_vocabulary(target, draft))
    if tokens:
        if not same_vocabulary(target, draft):
            from ..errors import SpecgenError

            raise SpecgenError("specguard --exchange tokens needs a draft with the target's tokenizer; use text")
        return TokenExchange(target, draft, prompt_ids, cfg)
    return TextExchange(target, draft, draft_prompt, cfg)
