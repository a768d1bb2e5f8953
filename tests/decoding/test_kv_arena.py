"""The KV cache's ArenaLayer: appends in place into a growing buffer, and holds exactly what HF's
concatenating DynamicLayer would hold after any sequence of appends, crops and commits."""
from __future__ import annotations

import torch
from transformers.cache_utils import DynamicLayer

from specgen import adapter

from ..conftest import make_tiny_llama


def _kv(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, n, 8, generator=g), torch.randn(2, 3, n, 8, generator=g)  # [B, Hkv, n, D]


def _pair() -> tuple[object, object]:
    """An arena cache and HF's plain DynamicCache, to be fed the same operations."""
    from transformers import DynamicCache

    return adapter.empty_cache(), DynamicCache()


def _same(a: object, b: object) -> None:
    assert adapter.cache_length(a) == adapter.cache_length(b)
    for la, lb in zip(a.layers, b.layers):
        torch.testing.assert_close(la.keys, lb.keys, rtol=0, atol=0)
        torch.testing.assert_close(la.values, lb.values, rtol=0, atol=0)


def test_appends_crops_and_commits_match_dynamic_layer() -> None:
    arena, plain = _pair()
    steps = [("add", 7), ("add", 1), ("crop", 5), ("add", 4), ("commit", (0, 2, 3)), ("add", 90), ("crop", 60),
             ("add", 3), ("commit", (1,)), ("add", 1)]
    for seed, (op, arg) in enumerate(steps):
        for cache in (arena, plain):
            if op == "add":
                k, v = _kv(arg, seed)
                cache.update(k, v, 0)
            elif op == "crop":
                adapter.crop_cache(cache, arg)
            else:
                n_kv = adapter.cache_length(cache) - 4
                adapter.commit_cache(cache, n_kv, list(arg))
        _same(arena, plain)
    layer = arena.layers[0]
    assert type(layer).__name__ == "ArenaLayer" and type(plain.layers[0]) is DynamicLayer


def test_appends_within_capacity_reuse_the_buffer() -> None:
    cache = adapter.empty_cache()
    cache.update(*_kv(10, 0), 0)
    layer = cache.layers[0]
    ptr, cap = layer.keys.data_ptr(), layer._kbuf.shape[-2]
    grown = 10
    while grown + 1 <= cap:
        cache.update(*_kv(1, grown), 0)
        grown += 1
        assert layer.keys.data_ptr() == ptr, "an append within capacity reallocated the cache"
    cache.update(*_kv(1, 99), 0)  # past capacity: a bigger buffer, the contents carried over
    assert layer._kbuf.shape[-2] > cap and adapter.cache_length(cache) == cap + 1


def test_replaced_tensors_are_reseeded() -> None:
    """A caller that swaps a layer's tensors (HF's batch_select_indices does) loses nothing."""
    arena, plain = _pair()
    for cache in (arena, plain):
        cache.update(*_kv(6, 1), 0)
        cache.layers[0].batch_select_indices(torch.tensor([1, 0]))
        cache.update(*_kv(2, 2), 0)
    _same(arena, plain)


def test_new_cache_uses_arena_layers_and_decodes_as_before() -> None:
    """Greedy decoding through the arena cache equals a no-cache forward at every step."""
    model = make_tiny_llama()
    adapter.use_tree_attention(model)
    cache = adapter.new_cache(model)
    assert all(type(layer).__name__ == "ArenaLayer" for layer in cache.layers)
    ids = [3, 17, 9, 21, 4]
    out = adapter.tree_forward(model, torch.tensor(ids), torch.arange(len(ids)), cache,
                               adapter.causal_mask(len(ids), "cpu"))
    for _ in range(6):
        nxt = int(out.logits[-1].argmax())
        ids.append(nxt)
        out = adapter.tree_forward(model, torch.tensor([nxt]), torch.tensor([len(ids) - 1]), cache,
                                   adapter.causal_mask(1, "cpu"))
        model.set_attn_implementation("sdpa")
        with torch.inference_mode():
            want = model(torch.tensor([ids])).logits[0, -1].float()
        adapter.use_tree_attention(model)
        torch.testing.assert_close(out.logits[-1], want, atol=1e-4, rtol=1e-4)
