"""Verify: one target forward over every tree node, tree-masked, at explicit positions.

Node i sits at position n_kv + depth[i]: siblings share a position, as they are alternatives.
"""
from __future__ import annotations

from typing import Any

from .. import adapter
from .tree import Tree


def verify_tree(model: Any, cache: Any, tree: Tree, n_kv: int, *, hidden_layer: int | None = None) -> adapter.ForwardOutput:
    """Logits [n, V] (and hidden [n, H] at `hidden_layer`) for every node of `tree` on top of `cache`."""
    assert adapter.cache_length(cache) == n_kv, "cache must hold exactly the committed prefix"
    positions = tree.depth + n_kv  # [n]
    return adapter.tree_forward(model, tree.tokens, positions, cache, tree.mask, hidden_layer=hidden_layer)
