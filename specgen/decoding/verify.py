"""Verify: the target model's side of the step engine (prefill, one tree-masked forward, KV commit).

Node i of a tree sits at position n_kv + depth[i]: siblings share a position, as they are
alternatives. Every tensor is created on the model's device; the one host round trip of a step
is reading the target's tokens for the accept walk.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch

from .. import adapter
from ..config import SamplingConfig
from .accept import PositionSampler, sampled_chooser, target_probs
from .tree import Tree

if TYPE_CHECKING:
    from .engine import DecodeState, Verification


def verify_tree(model: Any, cache: Any, tree: Tree, n_kv: int, *, hidden_layer: int | None = None,
                pad_to: int = 0) -> adapter.ForwardOutput:
    """Logits [n, V] (and hidden [n, H] at `hidden_layer`) for every node of `tree` on top of `cache`.

    `pad_to` > n feeds that many tokens: the padding nodes see the prefix and themselves only, and no
    tree node sees them (`CostProfile.pads`: a bigger forward that runs faster). Their KV entries
    sit after the tree's, where the commit crops them."""
    assert adapter.cache_length(cache) == n_kv, "cache must hold exactly the committed prefix"
    n = tree.size
    positions = tree.depth + n_kv  # [n] on the tree's device
    if pad_to <= n:
        return adapter.tree_forward(model, tree.tokens, positions, cache, tree.mask, hidden_layer=hidden_layer)
    m, dev = pad_to, tree.tokens.device
    tokens = torch.cat([tree.tokens, tree.tokens[:1].expand(m - n)])  # [m] padding repeats the pending token
    positions = torch.cat([positions, positions[:1].expand(m - n)])  # [m]
    mask = torch.eye(m, dtype=torch.bool, device=dev)  # [m, m]
    mask[:n, :n] = tree.mask
    out = adapter.tree_forward(model, tokens, positions, cache, mask, hidden_layer=hidden_layer)
    return adapter.ForwardOutput(out.logits[:n], out.hidden[:n] if out.hidden is not None else None,
                                 {k: g[..., :n] for k, g in out.grounding.items()})


def prefill(model: Any, prompt_ids: list[int], hidden_layer: int | None = None) -> tuple[Any, torch.Tensor, torch.Tensor | None]:
    """A new cache holding the prompt, the logits [V] that predict the first new token, and the
    prompt's hidden states [n, H] at `hidden_layer` (None when not asked)."""
    device = model.device
    n = len(prompt_ids)
    cache = adapter.new_cache(model)
    out = adapter.tree_forward(model, torch.tensor(prompt_ids, dtype=torch.long, device=device),
                               torch.arange(n, device=device), cache, adapter.causal_mask(n, device),
                               hidden_layer=hidden_layer, logits_for=torch.tensor([n - 1], device=device))
    return cache, out.logits[-1], out.hidden  # [V], [n, H] | None


class ModelVerifier:
    """Runs the target over each tree on the state's cache; the target's token at a node is its
    argmax (greedy) or its sample at that position (`PositionSampler`, keyed by seed and position)."""

    def __init__(self, model: Any, sampling: SamplingConfig, sampler: PositionSampler,
                 hidden_layer: int | None = None) -> None:
        self.model, self.sampling, self.sampler, self.hidden_layer = model, sampling, sampler, hidden_layer
        self.device = model.device

    def pick(self, logits: torch.Tensor, pos: int) -> int:
        """The target's token at sequence position `pos` from one row of logits [V]."""
        if self.sampling.greedy:
            return int(logits.argmax())
        return self.sampler.sample(target_probs(logits.view(1, -1), self.sampling)[0], pos)

    def verify(self, state: "DecodeState", tree: Tree) -> "Verification":
        out = verify_tree(self.model, state.cache, tree, state.n_kv, hidden_layer=self.hidden_layer,
                          pad_to=state.sizer.fed(tree.size))
        return self.verification(tree, out.logits, out.hidden, state.cache, state.n_kv)

    def verification(self, tree: Tree, logits: torch.Tensor, hidden: torch.Tensor | None, cache: Any, n_kv: int,
                     row: int = 0) -> "Verification":
        """What the target says about `tree` from its logits [n, V] (and hidden [n, H]), the tree
        verified on `cache`'s batch row `row` after its first `n_kv` entries (a batched step's row too)."""
        from .engine import Verification

        choose: Callable[[int], int]
        if self.sampling.greedy:
            choose = logits.argmax(dim=-1).tolist().__getitem__  # one host read of n ints
        else:
            choose = sampled_chooser(target_probs(logits, self.sampling), tree, self.sampler, n_kv)
        probe = None
        if self.hidden_layer is not None:
            layer = self.hidden_layer

            def probe(node: int, token: int) -> torch.Tensor:
                path = [tree.token_list[i] for i in tree.path_to(node)]
                return adapter.chain_hidden(self.model, cache, n_kv, path + [token], layer, row=row)[-1]  # [H]
        return Verification(choose=choose, logits=logits, hidden=hidden, probe=probe)

    def commit(self, state: "DecodeState", path: tuple[int, ...]) -> None:
        adapter.commit_cache(state.cache, state.n_kv, path)
