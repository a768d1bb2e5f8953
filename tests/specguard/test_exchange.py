"""SpecGuard's exchanges: token ids for one tokenizer (the draft's KV cache kept across steps),
text for two; both decide alike on the same candidates; presets and the family default draft."""
from __future__ import annotations

from typing import Any

import pytest
import torch
from _sg_tiny import tiny_llama

from specgen import adapter
from specgen.config import GenerationConfig
from specgen.errors import SpecgenError
from specgen.models import ModelBundle
from specgen.proposers.registry import draft_name, make_config
from specgen.specguard.config import SpecGuardConfig
from specgen.specguard.exchange import DraftStep, TextExchange, TokenExchange, make_exchange, step_to_target_ids
from specgen.specguard.steps import generate_specguard


@pytest.fixture(scope="module")
def same_vocab_draft(smol_tokenizer: Any) -> ModelBundle:
    tok = smol_tokenizer
    return ModelBundle(tiny_llama(len(tok), 2, eos=tok.eos_token_id), tok, "tiny-same-vocab", None)


def _fresh_keys(model: Any, tokens: list[int]) -> Any:
    cache = adapter.new_cache(model)
    n = len(tokens)
    adapter.tree_forward(model, torch.tensor(tokens), torch.arange(n), cache, adapter.causal_mask(n, "cpu"))
    return cache


@pytest.mark.parametrize("accepted", [True, False])
def test_token_exchange_keeps_the_draft_cache_across_steps(target_bundle: Any, same_vocab_draft: Any,
                                                           accepted: bool) -> None:
    cfg = SpecGuardConfig(draft_model=None, candidates=3, step_delimiter="\n", max_step_tokens=6)
    prompt = target_bundle.tokenizer("Count: one, two,", add_special_tokens=False)["input_ids"]
    ex = make_exchange(target_bundle, same_vocab_draft, prompt, prompt, cfg)
    assert isinstance(ex, TokenExchange)
    steps, vectors = ex.sample([], 6, seed=1)
    assert len(steps) == 3 and vectors.shape[0] == 3
    assert all(list(s.target_ids[: len(ex.row_ids[i])]) == ex.row_ids[i] for i, s in enumerate(steps))
    chosen = 1
    out = list(steps[chosen].target_ids) if accepted else [11, 12, 13]  # the draft's step, or the target's own
    ex.commit(out, chosen, accepted)
    # what the cache holds is the committed text, as a fresh forward over it computes it
    assert ex.fed == (prompt + out)[: len(ex.fed)] and len(ex.fed) >= len(prompt)
    assert adapter.cache_length(ex.cache) == len(ex.fed)
    fresh = _fresh_keys(same_vocab_draft.model, ex.fed)
    for kept, ref in zip(ex.cache.layers, fresh.layers):
        torch.testing.assert_close(kept.keys, ref.keys, atol=1e-4, rtol=1e-4)
    # the next step starts from that cache: only the tokens it lacks are fed
    again, _ = ex.sample(out, 6, seed=2)
    assert len(again) == 3 and ex.fed == prompt + out


def test_exchange_choice(target_bundle: Any, draft_bundle: Any, same_vocab_draft: Any) -> None:
    cfg = SpecGuardConfig(draft_model=None)
    assert isinstance(make_exchange(target_bundle, same_vocab_draft, [1], [1], cfg), TokenExchange)
    assert isinstance(make_exchange(target_bundle, target_bundle, [1], [1], cfg), TokenExchange)
    assert isinstance(make_exchange(target_bundle, draft_bundle, [1], [1], cfg), TextExchange)
    text = SpecGuardConfig(draft_model=None, exchange="text")
    assert isinstance(make_exchange(target_bundle, same_vocab_draft, [1], [1], text), TextExchange)
    with pytest.raises(SpecgenError, match="target's tokenizer"):
        make_exchange(target_bundle, draft_bundle, [1], [1], SpecGuardConfig(draft_model=None, exchange="tokens"))


def test_paper_preset_and_family_default_draft() -> None:
    paper = make_config("specguard", {"preset": "paper"})
    assert (paper.grounding_direction, paper.rule) == ("higher", "and")
    assert make_config("specguard", {"preset": "paper", "rule": "ensemble"}).rule == "ensemble"  # explicit wins
    assert make_config("specguard", {"preset": "measured"}) == SpecGuardConfig()
    with pytest.raises(SpecgenError, match="unknown specguard preset"):
        make_config("specguard", {"preset": "nope"})
    assert draft_name(SpecGuardConfig(), "qwen2.5-coder-1.5b") == "qwen2.5-coder-0.5b"
    assert draft_name(SpecGuardConfig(), "smollm2-135m") == "gemma3-270m"
    assert draft_name(SpecGuardConfig(), None) == "gemma3-270m"
    assert draft_name(SpecGuardConfig(draft_model="x"), "qwen2.5-coder-1.5b") == "x"
    assert draft_name(SpecGuardConfig(draft_model=None), "qwen2.5-coder-1.5b") is None


@pytest.mark.slow
def test_token_and_text_exchange_decide_alike(real_bundle: Any) -> None:
    """The real model drafting for itself (one tokenizer): the two exchanges sample the same candidates
    (same seed), convert them to the same target ids and take the same decision at every step."""
    cfg = dict(draft_model=None, candidates=3, step_delimiter="\n", max_step_tokens=24, tau=0.5)
    gen = GenerationConfig(max_new_tokens=40)
    prompt = "A shop sells pens at 2 dollars each. How much do 7 pens cost? Answer in short steps."
    runs = {ex: generate_specguard(real_bundle, prompt, gen=gen, config=SpecGuardConfig(exchange=ex, **cfg))
            for ex in ("tokens", "text")}
    a, b = (runs[k].extra["specguard"]["steps"] for k in ("tokens", "text"))
    assert len(a) >= 2
    assert [(s["draft_text"], s["accepted"]) for s in a] == [(s["draft_text"], s["accepted"]) for s in b]
    assert [s["score"] for s in a] == pytest.approx([s["score"] for s in b], abs=1e-4)
    assert runs["tokens"].token_ids == runs["text"].token_ids
    # and each chosen step's ids are what the text route makes of its text
    for s in a:
        if s["accepted"]:
            text_ids = step_to_target_ids(DraftStep(s["draft_text"], False, 0), real_bundle)
            assert real_bundle.tokenizer.decode(text_ids) == s["draft_text"]
