"""`sd`: speculative decoding with a draft model (Leviathan et al., 2023; Chen et al., 2023).

The draft is another HF causal LM with the target's tokenizer (`--draft-model`), or the target's
own first N layers plus its final norm and LM head (`--draft-layers N`, self-speculative early
exit as in LayerSkip / HF `assistant_early_exit`). With `tree_width` 1 it drafts a greedy chain;
above 1 a tree (EAGLE-2-style dynamic tree, Li et al., 2024): at each depth every frontier node
offers its `tree_width` most likely tokens, the `tree_width` best by cumulative draft
log-probability become the next frontier, and each depth is one tree-masked draft forward over the
nodes so far. Drafts are point masses, so the engine's acceptance stays lossless under sampling.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from .. import adapter
from ..config import DraftModelConfig
from ..errors import SpecgenError
from .base import Candidates, Proposer, ProposeContext
from .registry import register_method

DEFAULT_DRAFT_LAYERS_FRACTION = 0.25  # self-draft default: the first quarter of the target's layers


class DraftModelProposer(Proposer):
    """Greedy chain or dynamic tree from a draft model whose KV cache stays in step with the committed
    text across steps (after a tree, rolled back to the accepted path)."""

    name = "sd"
    draft_cost_per_depth = True

    def __init__(self, draft_model: Any, num_draft: int, tree_width: int = 1) -> None:
        # The draft runs through the same tree-attention forward as the target, with a causal chain
        # mask of its own: nothing depends on which attention implementation either model had.
        adapter.use_tree_attention(draft_model)
        self.model = draft_model
        self.num_draft = num_draft
        self.tree_width = tree_width
        self.nodes_per_depth = tree_width
        self.cache: Any = None
        self.fed: list[int] = []  # tokens whose KV entries the draft cache holds
        # The last tree's nodes whose KV entries sit in the cache after `fed` (tokens, parents; -1 =
        # the pending token): the accepted path among them is kept at commit, not fed again.
        self.tree_nodes: tuple[list[int], list[int]] | None = None

    def reset(self, prompt_ids: list[int]) -> None:
        self.cache = adapter.new_cache(self.model)
        self.fed = []
        self.tree_nodes = None

    @torch.inference_mode()
    def _feed(self, tokens: list[int]) -> torch.Tensor:
        """Run `tokens` through the draft on top of its cache; logits of the last one [V]."""
        device = self.model.device
        m, start = len(tokens), len(self.fed)
        ids = torch.tensor(tokens, dtype=torch.long, device=device)  # [m]
        positions = torch.arange(start, start + m, device=device)  # [m]
        out = adapter.tree_forward(self.model, ids, positions, self.cache, adapter.causal_mask(m, device),
                                   logits_for=torch.tensor([m - 1], device=device))
        self.fed += tokens
        return out.logits[-1]  # [V]

    def propose(self, ctx: ProposeContext) -> Candidates:
        k = min(self.num_draft, ctx.budget, ctx.budget if ctx.max_depth is None else ctx.max_depth)
        if k <= 0:
            return Candidates()
        assert ctx.tokens[: len(self.fed)] == self.fed, "draft cache out of step with the context"
        logits = self._feed(ctx.tokens[len(self.fed):])  # catch up, pending token included
        if self.tree_width > 1:
            return self._tree(logits, k)
        draft: list[int] = []
        for i in range(k):
            draft.append(int(logits.argmax()))
            if i + 1 < k:
                logits = self._feed(draft[-1:])
        return Candidates([draft], [1.0])

    @torch.inference_mode()
    def _tree(self, logits: torch.Tensor, depth: int) -> Candidates:
        """The dynamic tree after the pending token (logits [V]); the cache is left at the pending token."""
        device, width, base = self.model.device, self.tree_width, len(self.fed)
        toks: list[int] = []
        parents: list[int] = []  # -1: the pending token
        depths: list[int] = []
        cum: list[float] = []  # cumulative draft log-probability
        frontier, logps = [-1], torch.log_softmax(logits.float(), -1).view(1, -1)  # [1, V]
        for d in range(1, depth + 1):
            top = torch.topk(logps, width, dim=-1)  # [f, width]
            offers = [((cum[f] if f >= 0 else 0.0) + v, f, t) for f, vs, ts in
                      zip(frontier, top.values.tolist(), top.indices.tolist()) for v, t in zip(vs, ts)]
            frontier = []
            for c, f, t in sorted(offers, reverse=True)[:width]:
                frontier.append(len(toks))
                toks.append(t)
                parents.append(f)
                depths.append(d)
                cum.append(c)
            if d == depth:
                break
            n = len(toks)
            adapter.crop_cache(self.cache, base)  # the previous depth's nodes are fed again with the new ones
            rows: list[list[bool]] = []
            for i in range(n):  # node i sees its drafted ancestors and itself
                row = list(rows[parents[i]]) if parents[i] >= 0 else [False] * n
                row[i] = True
                rows.append(row)
            out = adapter.tree_forward(self.model, torch.tensor(toks, dtype=torch.long, device=device),
                                       torch.tensor([base + x - 1 for x in depths], device=device), self.cache,
                                       torch.tensor(rows, dtype=torch.bool, device=device),
                                       logits_for=torch.tensor(frontier, device=device))
            self.tree_nodes = (toks[:n], parents[:n])  # in the cache at base + i until commit
            logps = torch.log_softmax(out.logits.float(), -1)  # [f, V]
        inner = set(parents)
        leaves = [i for i in range(len(toks)) if i not in inner]
        seqs, scores = [], []
        for leaf in leaves:
            path, i = [], leaf
            while i >= 0:
                path.append(toks[i])
                i = parents[i]
            seqs.append(path[::-1])
            scores.append(math.exp(cum[leaf]))
        return Candidates(seqs, scores)

    def commit(self, tokens: list[int], n_kv: int) -> None:
        if self.tree_nodes is not None:
            self._keep_accepted_path(tokens)
        # Keep the draft's cache only up to where its fed tokens still agree with the context.
        common = min(adapter.common_prefix(self.fed, tokens), len(tokens) - 1)  # the pending token is fed next
        if common < len(self.fed):
            adapter.crop_cache(self.cache, common)
            self.fed = self.fed[:common]


    def _keep_accepted_path(self, tokens: list[int]) -> None:
        """Roll the draft cache back to the accepted path of the last tree: its nodes' KV entries move
        down after `fed` (`adapter.commit_cache`), the rest are dropped."""
        assert self.tree_nodes is not None
        toks, parents = self.tree_nodes
        self.tree_nodes = None
        base, path, parent = len(self.fed), [], -1
        for t in tokens[base:len(tokens) - 1]:  # the accepted tokens; the last one is pending
            child = next((i for i, (tk, p) in enumerate(zip(toks, parents)) if p == parent and tk == t), None)
            if child is None:
                break
            path.append(child)
            parent = child
        adapter.commit_cache(self.cache, base, path)
        self.fed += [toks[i] for i in path]


def load_draft(target: Any, cfg: DraftModelConfig) -> Any:
    """The draft model object for `cfg`: an early-exit view of the target, or a loaded model."""
    if cfg.draft_model is None:
        layers = cfg.draft_layers or max(1, round(target.model.config.num_hidden_layers * DEFAULT_DRAFT_LAYERS_FRACTION))
        return adapter.early_exit_view(target.model, layers)
    from ..models import load_like

    bundle = load_like(cfg.draft_model, target)
    if bundle.tokenizer.get_vocab() != target.tokenizer.get_vocab():
        raise SpecgenError("the draft model's tokenizer differs from the target's (sd needs the same vocabulary)")
    return bundle.model


@register_method("sd", DraftModelConfig, lossless=True,
                 summary="draft model (--draft-model) or the target's first layers (--draft-layers)")
def make_sd(target: Any, cfg: DraftModelConfig, draft: Any = None) -> Proposer:
    model = draft.model if draft is not None else load_draft(target, cfg)
    return DraftModelProposer(model, cfg.num_draft, cfg.tree_width)
