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


def test_depth_decay_keeps_alternative_first_tokens_over_a_chain_tail() -> None:
    cands = [[1, 2, 3, 4, 5], [6, 7], [8]]
    flat = build_tree(0, Candidates(cands, [3.0, 2.0, 1.5]), budget=5)
    assert sorted(int(t) for t in flat.tokens[1:]) == [1, 2, 3, 4, 5]  # summed score alone: the whole chain
    # 0.5 per depth: 1 (1.5), 6 (1.0), 8 (0.75, shallower than 2's tie), 2 (0.75), 7 (0.5) outrank the
    # chain's depth-3 node 3 (3.0 * 0.125)
    decayed = build_tree(0, Candidates(cands, [3.0, 2.0, 1.5], depth_decay=0.5), budget=5)
    assert sorted(int(t) for t in decayed.tokens[1:]) == [1, 2, 6, 7, 8]


def test_depth_decay_keeps_the_kept_set_closed_under_ancestors() -> None:
    gen = torch.Generator().manual_seed(0)
    for trial in range(50):
        seqs = [torch.randint(0, 4, (int(torch.randint(1, 7, (1,), generator=gen)),), generator=gen).tolist()
                for _ in range(6)]
        scores = torch.rand(6, generator=gen).tolist()
        decay = float(torch.rand(1, generator=gen)) * 0.9 + 0.05
        tree = build_tree(9, Candidates(seqs, scores, depth_decay=decay), budget=int(torch.randint(1, 12, (1,), generator=gen)))
        for i in range(1, tree.size):
            assert 0 <= int(tree.parents[i]) < i, trial
