"""`sd --draft-model`: a separate HF draft with the target's tokenizer stays lossless; a foreign one is refused."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from specgen.config import DraftModelConfig, GenerationConfig
from specgen.decoding.policy import DraftPolicyConfig
from specgen.decoding.sizing import TreeSizingConfig
from specgen.errors import SpecgenError
from specgen.generate import generate

from ..conftest import make_tiny_llama


@pytest.mark.slow
def test_separate_draft_model_is_lossless(real_bundle: Any, tmp_path: Path) -> None:
    # A tiny random LLaMA over the real vocabulary, saved as an HF folder with the real tokenizer.
    draft = make_tiny_llama(vocab_size=real_bundle.model.config.vocab_size, seed=2)
    draft.save_pretrained(tmp_path / "draft")
    real_bundle.tokenizer.save_pretrained(tmp_path / "draft")
    # Budget sizing, drafting every step: the random draft is never worth its forward, so cost
    # sizing would (rightly) verify none of it and the check would not exercise the draft.
    gen = GenerationConfig(max_new_tokens=20, tree_sizing=TreeSizingConfig(mode="budget"),
                           draft_policy=DraftPolicyConfig(mode="always"))
    prompt = "List three primary colors."
    ar = generate(real_bundle, prompt, method="ar", gen=gen)
    sd = generate(real_bundle, prompt, method="sd", gen=gen,
                  method_config=DraftModelConfig(draft_model=str(tmp_path / "draft"), num_draft=3))
    assert sd.token_ids == ar.token_ids
    assert sd.stats.drafted > 0 and sd.stats.steps <= ar.stats.steps


@pytest.mark.slow
def test_draft_with_other_tokenizer_is_refused(real_bundle: Any, tmp_path: Path) -> None:
    from tests.datastore._tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    draft = make_tiny_llama(vocab_size=len(tok), seed=2)
    draft.save_pretrained(tmp_path / "other")
    tok.save_pretrained(tmp_path / "other")
    with pytest.raises(SpecgenError, match="tokenizer differs"):
        generate(real_bundle, "hi", method="sd", gen=GenerationConfig(max_new_tokens=4),
                 method_config=DraftModelConfig(draft_model=str(tmp_path / "other")))


def _noisy_copy(model: Any, scale: float, seed: int) -> Any:
    import copy

    import torch

    draft = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in draft.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * p.std())
    return draft


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_tree_and_chain_drafts_from_a_separate_model_match_ar(tiny_bundle: Any, temperature: float) -> None:
    from types import SimpleNamespace

    from specgen.config import SamplingConfig

    draft = SimpleNamespace(model=_noisy_copy(tiny_bundle.model, 0.3, seed=1))
    gen = GenerationConfig(max_new_tokens=40, sampling=SamplingConfig(temperature=temperature, seed=4),
                           tree_sizing=TreeSizingConfig(mode="budget"), draft_policy=DraftPolicyConfig(mode="always"))
    prompt = [3, 17, 42, 9]
    ar = generate(tiny_bundle, prompt, method="ar", gen=gen)
    chain = generate(tiny_bundle, prompt, method="sd", gen=gen, draft=draft,
                     method_config=DraftModelConfig(draft_model="unused", num_draft=4))
    tree = generate(tiny_bundle, prompt, method="sd", gen=gen, draft=draft,
                    method_config=DraftModelConfig(draft_model="unused", num_draft=4, tree_width=3))
    assert chain.token_ids == ar.token_ids and tree.token_ids == ar.token_ids
    assert chain.stats.accepted > 0 and tree.stats.accepted >= chain.stats.accepted * 0.8
    # the tree branches: more nodes per step than a chain of the same depth, none deeper
    assert tree.stats.drafted / tree.stats.steps > chain.stats.drafted / chain.stats.steps
    assert len(tree.stats.position_drafted) <= 4


@pytest.mark.parametrize("accept", [0, 1, 2, 4])
def test_tree_draft_cache_keeps_the_accepted_path(tiny_bundle: Any, accept: int) -> None:
    """After a tree step the draft's KV cache holds the committed text, the accepted nodes' entries
    kept from the tree forward: equal to a cache that fed the same tokens as a chain."""
    import torch

    from specgen import adapter
    from specgen.proposers.base import ProposeContext
    from specgen.proposers.draft_model import DraftModelProposer

    draft = _noisy_copy(tiny_bundle.model, 0.3, seed=1)
    prop = DraftModelProposer(draft, num_draft=4, tree_width=3)
    tokens = [3, 17, 42, 9]
    prop.reset(tokens)
    cands = prop.propose(ProposeContext(tokens=tokens, prompt_len=4, budget=16))
    assert prop.tree_nodes is not None and len(cands.sequences) > 1
    best = cands.sequences[0]
    committed = tokens + best[:accept] + [5]  # `accept` drafted tokens, then a bonus token (pending)
    prop.commit(committed, len(committed) - 1)
    assert prop.fed == committed[:len(prop.fed)] and len(prop.fed) == len(tokens) + min(accept, 3)
    assert adapter.cache_length(prop.cache) == len(prop.fed)
    fresh = adapter.new_cache(draft)
    n = len(prop.fed)
    adapter.tree_forward(draft, torch.tensor(prop.fed), torch.arange(n), fresh, adapter.causal_mask(n, "cpu"))
    for kept, ref in zip(prop.cache.layers, fresh.layers):
        torch.testing.assert_close(kept.keys, ref.keys, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(kept.values, ref.values, atol=1e-5, rtol=1e-4)
    # the next step continues from the kept cache, pending token fed
    again = prop.propose(ProposeContext(tokens=committed, prompt_len=4, budget=16))
    assert again.sequences and prop.fed[: len(committed)] == committed
