"""The soft gate's equivalence signals (input embeddings, hidden states in context) and the probe behind the second."""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from specgen import adapter
from specgen.config import SoftGateConfig
from specgen.decoding.accept import SoftGate
from specgen.decoding.tree import build_tree
from specgen.decoding.verify import verify_tree
from specgen.errors import SpecgenError
from specgen.proposers.base import Candidates

from ..conftest import make_tiny_llama
from .test_verify_commit import prefill


def oracle_hidden(model: Any, ids: list[int]) -> torch.Tensor:
    """Final-layer hidden states [L, H] of a plain causal SDPA forward (no cache, no tree)."""
    before = model.config._attn_implementation
    model.set_attn_implementation("sdpa")
    try:
        with torch.inference_mode():
            return model.get_decoder()(input_ids=torch.tensor([ids])).last_hidden_state[0].float()
    finally:
        model.set_attn_implementation(before)


def test_chain_hidden_equals_a_fresh_forward_and_leaves_the_cache_alone() -> None:
    model = make_tiny_llama()
    prompt = [3, 17, 42, 7, 99, 1, 64]
    n_kv = len(prompt) - 1
    cache = prefill(model, prompt[:-1])
    tree = build_tree(prompt[-1], Candidates([[5, 9, 2], [8, 1]], [2.0, 1.0]), budget=16)
    verify_tree(model, cache, tree, n_kv)  # the cache now also holds the tree's 6 nodes
    before = [(layer.keys.clone(), layer.values.clone()) for layer in cache.layers]
    got = adapter.chain_hidden(model, cache, n_kv, [64, 5, 77], -1)  # [3, H]: a token the tree does not hold
    want = oracle_hidden(model, prompt[:-1] + [64, 5, 77])[-3:]  # [3, H]
    torch.testing.assert_close(got.float(), want, atol=1e-4, rtol=1e-4)
    assert adapter.cache_length(cache) == n_kv + tree.size
    for layer, (k, v) in zip(cache.layers, before):
        assert torch.equal(layer.keys, k) and torch.equal(layer.values, v)


def _verification(hidden: torch.Tensor, probe_vec: torch.Tensor, calls: list[tuple[int, int]]) -> Any:
    logits = torch.full((3, 8), -10.0)  # [n, V]: root, child d=5 (node 1), child d=6 (node 2)
    logits[0, 4], logits[0, 5], logits[0, 6] = 2.0, 1.8, -5.0  # the target's token at the root is 4
    logits[1, 0] = logits[2, 0] = 3.0

    def probe(node: int, token: int) -> torch.Tensor:
        calls.append((node, token))
        return probe_vec

    return SimpleNamespace(choose=lambda node: int(logits[node].argmax()), logits=logits, hidden=hidden, probe=probe)


@pytest.mark.parametrize("aligned", [True, False])
def test_hidden_signal_accepts_only_a_child_whose_state_matches_the_targets(aligned: bool) -> None:
    tree = build_tree(3, Candidates([[5], [6]], [2.0, 1.0]), budget=8)
    assert tree.token_list == (3, 5, 6)
    h_a = torch.tensor([1.0, 0.0, 0.0, 0.0])
    hidden = torch.stack([torch.zeros(4), h_a if aligned else torch.tensor([0.0, 1.0, 0.0, 0.0]),
                          torch.tensor([0.0, 0.0, 1.0, 0.0])])  # [n, H]
    calls: list[tuple[int, int]] = []
    rule = SoftGate(SoftGateConfig(enabled=True, alpha=0.5, signal="hidden", tau_h=0.9), torch.zeros(8, 4))
    acc = rule.accept(tree, _verification(hidden, h_a, calls))
    assert calls == [(0, 4)]  # one probe: the target's token 4 after the root
    if aligned:
        assert acc.path == (0, 1) and acc.gated == 1 and acc.bonus == 0
    else:
        assert acc.path == (0,) and acc.gated == 0 and acc.bonus == 4


def test_no_probe_where_the_probability_test_fails() -> None:
    tree = build_tree(3, Candidates([[6]], [1.0]), budget=8)  # only the improbable child
    calls: list[tuple[int, int]] = []
    rule = SoftGate(SoftGateConfig(enabled=True, alpha=0.5, signal="hidden"), torch.zeros(8, 4))
    acc = rule.accept(tree, _verification(torch.ones(2, 4), torch.ones(4), calls))
    assert acc.path == (0,) and calls == [] and rule.probes == 0


def test_embedding_signal_ignores_the_probe() -> None:
    tree = build_tree(3, Candidates([[5]], [1.0]), budget=8)
    emb = torch.eye(8)
    emb[5] = emb[4]  # tokens 4 and 5 share an embedding
    calls: list[tuple[int, int]] = []
    acc = SoftGate(SoftGateConfig(enabled=True, alpha=0.5), emb).accept(tree, _verification(torch.ones(2, 4), torch.ones(4), calls))
    assert acc.path == (0, 1) and calls == []


def test_gate_signal_is_checked() -> None:
    with pytest.raises(SpecgenError, match="--gate-signal"):
        SoftGateConfig(signal="cosine")
    with pytest.raises(SpecgenError, match="--gate-tau-h"):
        SoftGateConfig(tau_h=1.5)
