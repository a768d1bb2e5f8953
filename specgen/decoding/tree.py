"""Build the token tree: merge candidates into a trie, prune it to the node budget by score.

Output (DESIGN.md section 1, step 3): node tokens, parent index, depth, and the tree attention mask
in which each node sees its ancestors and itself (the committed prefix is implicit). Node 0 is the
root, the pending token; nodes are in breadth-first order, so a parent's index is below its children's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..proposers.base import Candidates


@dataclass(frozen=True)
class Tree:
    """A pruned draft tree rooted at the pending token."""

    tokens: torch.Tensor  # [n] int64, tokens[0] = pending token
    parents: torch.Tensor  # [n] int64, parents[0] = -1
    depth: torch.Tensor  # [n] int64, depth[0] = 0
    mask: torch.Tensor  # [n, n] bool, mask[i, j] = j is i or an ancestor of i
    children: tuple[tuple[int, ...], ...]  # per node, child indices best-score first
    scores: tuple[float, ...] = ()  # [n] per node, the summed score of the candidates through it (root: inf)
    # Host copies of tokens and depth: the accept walk reads them without a device round trip.
    token_list: tuple[int, ...] = ()
    depth_list: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        return len(self.token_list)

    @property
    def max_depth(self) -> int:
        return max(self.depth_list) if self.depth_list else 0

    def path_to(self, node: int) -> list[int]:
        """Node indices from the root down to `node`, both included."""
        path = []
        parents = self.parents.tolist()
        while node >= 0:
            path.append(node)
            node = parents[node]
        return path[::-1]


def build_tree(root_token: int, cands: Candidates, budget: int,
               size: Callable[[list[float], list[int]], int] | None = None,
               device: torch.device | str = "cpu") -> Tree:
    """Trie of `cands` under `root_token`, keeping the `budget` best-scored draft nodes.

    `size`, given the kept nodes' scores (best first) and depths, may keep fewer: the first
    `size(scores, depths)` of them (decoding/sizing.py picks the count that pays for its verification).
    The tensors are built on the host and moved to `device` once, the mask included, so the
    verification forward reads them where the model runs.

    A node's score is the summed score of the candidates through it, ranked as score *
    `cands.depth_decay` ** depth; a parent never ranks below its child, so the kept set is closed
    under ancestors (ties keep the shallower node).
    """
    # Trie as parallel lists; node 0 is the root.
    tok: list[int] = [root_token]
    par: list[int] = [-1]
    dep: list[int] = [0]
    score: list[float] = [float("inf")]
    edges: dict[tuple[int, int], int] = {}
    for seq, s in zip(cands.sequences, cands.scores):
        node = 0
        for t in seq[:budget]:
            child = edges.get((node, t))
            if child is None:
                child = len(tok)
                edges[(node, t)] = child
                tok.append(int(t)); par.append(node); dep.append(dep[node] + 1); score.append(0.0)
            score[child] += float(s)
            node = child
    # Best `budget` draft nodes, then breadth-first order (parent before child).
    decay = cands.depth_decay  # 1.0: rank by summed score alone (closed under ancestors either way)
    ranked = sorted(range(1, len(tok)), key=lambda i: (-score[i] * decay ** dep[i], dep[i], i))[:budget]
    if size is not None and ranked:
        ranked = ranked[: size([score[i] for i in ranked], [dep[i] for i in ranked])]
    keep = [0] + sorted(ranked, key=lambda i: (dep[i], -score[i], i))
    new_index = {old: new for new, old in enumerate(keep)}
    n = len(keep)
    token_list = [tok[i] for i in keep]
    parent_list = [new_index[par[i]] if i else -1 for i in keep]
    depth_list = [dep[i] for i in keep]
    rows: list[list[bool]] = []  # the mask as lists: n small torch ops per step cost more than one tensor
    kids: list[list[int]] = [[] for _ in range(n)]
    for i in range(n):
        p = parent_list[i]
        row = list(rows[p]) if p >= 0 else [False] * n  # parents precede children, so rows[p] is complete
        row[i] = True
        rows.append(row)
        if p >= 0:
            kids[p].append(i)
    for k in kids:
        k.sort(key=lambda i: -score[keep[i]])
    dev = torch.device(device)
    as_long = dict(dtype=torch.long, device=dev)
    return Tree(torch.tensor(token_list, **as_long), torch.tensor(parent_list, **as_long),  # type: ignore[arg-type]
                torch.tensor(depth_list, **as_long), torch.tensor(rows, dtype=torch.bool, device=dev),  # [n, n]
                tuple(tuple(k) for k in kids),
                tuple(score[i] for i in keep), tuple(token_list), tuple(depth_list))
