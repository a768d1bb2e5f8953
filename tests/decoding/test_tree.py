"""Tree building: trie merge, budget pruning by score, ancestor masks, breadth-first order."""
from __future__ import annotations

import torch

from specgen.decoding.tree import build_tree
from specgen.proposers.base import Candidates


def test_trie_merges_shared_prefixes_and_masks_ancestors() -> None:
    tree = build_tree(7, Candidates([[1, 2, 3], [1, 4], [5]], [1.0, 2.0, 0.5]), budget=16)
    assert tree.tokens[0] == 7 and tree.parents[0] == -1
    assert tree.size == 6  # root + 1, 2, 3, 4, 5 (the shared "1" once)
    for i in range(1, tree.size):
        p = int(tree.parents[i])
        assert p < i, "parents precede children"
        assert tree.depth[i] == tree.depth[p] + 1
        expected = torch.zeros(tree.size, dtype=torch.bool)
        for j in tree.path_to(i):
            expected[j] = True
        assert torch.equal(tree.mask[i], expected)
    # Node "1" carries 3.0 (both candidates through it) and ranks first among the root's children.
    first_child = tree.children[0][0]
    assert int(tree.tokens[first_child]) == 1


def test_budget_keeps_best_scored_ancestor_closed_set() -> None:
    cands = Candidates([[1, 2, 3, 4], [5, 6], [7]], [3.0, 2.0, 1.0])
    tree = build_tree(0, cands, budget=3)
    assert tree.size == 4
    kept = sorted(int(t) for t in tree.tokens[1:])
    assert kept == [1, 2, 3]  # the best candidate's first three nodes (score 3 each, shallowest first)
    assert all(int(tree.parents[i]) >= 0 for i in range(1, tree.size))


def test_empty_candidates_give_root_only() -> None:
    tree = build_tree(9, Candidates(), budget=8)
    assert tree.size == 1 and tree.mask.tolist() == [[True]] and tree.children == ((),)
