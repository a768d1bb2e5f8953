"""Tree verification equals sequential decoding along each branch; KV commit equals recomputation.

The oracle is an independent plain causal forward with transformers' own SDPA attention.
"""
from __future__ import annotations

from typing import Any

import pytest
import torch

from specgen import adapter
from specgen.decoding.tree import build_tree
from specgen.decoding.verify import verify_tree
from specgen.proposers.base import Candidates

from ..conftest import make_tiny_llama


def oracle_logits(model: Any, ids: list[int]) -> torch.Tensor:
    """Logits [L, V] of a plain causal forward with SDPA attention (no cache, no tree)."""
    before = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    try:
        with torch.inference_mode():
            return model(torch.tensor([ids])).logits[0].float()
    finally:
        model.set_attn_implementation(before)


def prefill(model: Any, ids: list[int]) -> Any:
    adapter.use_tree_attention(model)
    cache = adapter.new_cache(model)
    n = len(ids)
    adapter.tree_forward(model, torch.tensor(ids), torch.arange(n), cache, torch.ones(n, n, dtype=torch.bool).tril())
    return cache


TREES = {
    "chain": Candidates([[5, 9, 2, 11]], [1.0]),
    "branching": Candidates([[5, 9, 2], [5, 3], [8, 1, 1, 4], [6]], [3.0, 2.0, 1.5, 1.0]),
    "star": Candidates([[t] for t in range(10, 20)], [1.0] * 10),
}


def check_tree(model: Any, prompt: list[int], cands: Candidates, atol: float, pad: int = 0) -> None:
    cache = prefill(model, prompt[:-1])
    tree = build_tree(prompt[-1], cands, budget=16)
    out = verify_tree(model, cache, tree, len(prompt) - 1, pad_to=tree.size + pad)
    assert out.logits.shape[0] == tree.size and adapter.cache_length(cache) == len(prompt) - 1 + tree.size + pad
    for node in range(tree.size):
        branch = [int(tree.tokens[i]) for i in tree.path_to(node)]
        want = oracle_logits(model, prompt[:-1] + branch)[-1]
        torch.testing.assert_close(out.logits[node], want, atol=atol, rtol=1e-4)


@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("shape", list(TREES))
def test_tree_logits_match_sequential_tiny(shape: str, pad: int) -> None:
    """Padding nodes (a bigger forward that runs faster) change no tree node's logits."""
    model = make_tiny_llama()
    check_tree(model, [3, 17, 42, 7, 99, 1, 64], TREES[shape], atol=1e-4, pad=pad)


@pytest.mark.slow
@pytest.mark.parametrize("shape", ["chain", "branching"])
def test_tree_logits_match_sequential_real(real_bundle: Any, shape: str) -> None:
    prompt = real_bundle.tokenizer("The quick brown fox jumps over the lazy dog because")["input_ids"]
    check_tree(real_bundle.model, prompt, TREES[shape], atol=2e-3)


@pytest.mark.parametrize("pad", [0, 2])
@pytest.mark.parametrize("path_choice", ["second_branch", "chain_prefix"])
def test_commit_then_next_step_equals_recomputation(path_choice: str, pad: int) -> None:
    """After a commit the next step sees exactly the accepted path, padding nodes cropped with the rest."""
    model = make_tiny_llama(seed=1)
    prompt = [4, 8, 15, 16, 23, 42]
    cache = prefill(model, prompt[:-1])
    n_kv = len(prompt) - 1
    tree = build_tree(prompt[-1], TREES["branching"], budget=16)
    verify_tree(model, cache, tree, n_kv, pad_to=tree.size + pad)
    # Accept a path that is not a prefix of the node order when asked: the second child's branch.
    if path_choice == "second_branch":
        child = tree.children[0][1]
        path = tree.path_to(tree.children[child][0] if tree.children[child] else child)
    else:
        path = tree.path_to(tree.children[0][0])
    adapter.commit_cache(cache, n_kv, path)
    committed = prompt[:-1] + [int(tree.tokens[i]) for i in path]
    assert adapter.cache_length(cache) == len(committed)
    nxt = 77
    step = build_tree(nxt, Candidates(), budget=0)
    out = verify_tree(model, cache, step, len(committed))
    want = oracle_logits(model, committed + [nxt])[-1]
    torch.testing.assert_close(out.logits[0], want, atol=1e-4, rtol=1e-4)
