"""`sd`: speculative decoding with a draft model (Leviathan et al., 2023; Chen et al., 2023).

The draft is another HF causal LM with the target's tokenizer (`--draft-model`), or the target's
own first N layers plus its final norm and LM head (`--draft-layers N`, self-speculative early
exit as in LayerSkip / HF `assistant_early_exit`). It drafts a greedy chain; drafts are point
masses, so the loop's acceptance stays lossless under sampling too.
"""
from __future__ import annotations

from typing import Any

import torch

from .. import adapter
from ..config import DraftModelConfig
from ..errors import SpecgenError
from .base import Candidates, Proposer, ProposeContext
from .registry import register_method

DEFAULT_DRAFT_LAYERS_FRACTION = 0.25  # self-draft default: the first quarter of the target's layers


class DraftModelProposer(Proposer):
    """Greedy chain from a draft model that keeps its own KV cache in step with the committed text."""

    name = "sd"

    def __init__(self, draft_model: Any, num_draft: int) -> None:
        # The draft runs through the same tree-attention forward as the target, with a causal chain
        # mask of its own: nothing depends on which attention implementation either model had.
        adapter.use_tree_attention(draft_model)
        self.model = draft_model
        self.num_draft = num_draft
        self.cache: Any = None
        self.fed: list[int] = []  # tokens whose KV entries the draft cache holds

    def reset(self, prompt_ids: list[int]) -> None:
        self.cache = adapter.new_cache(self.model)
        self.fed = []

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
        k = min(self.num_draft, ctx.budget)
        if k <= 0:
            return Candidates()
        assert ctx.tokens[: len(self.fed)] == self.fed, "draft cache out of step with the context"
        logits = self._feed(ctx.tokens[len(self.fed):])  # catch up, pending token included
        draft: list[int] = []
        for i in range(k):
            draft.append(int(logits.argmax()))
            if i + 1 < k:
                logits = self._feed(draft[-1:])
        return Candidates([draft], [1.0])

    def commit(self, tokens: list[int], n_kv: int) -> None:
        # Keep the draft's cache only up to where its fed tokens still agree with the context.
        common = 0
        for a, b in zip(self.fed, tokens):
            if a != b:
                break
            common += 1
        common = min(common, len(tokens) - 1)  # the pending token is fed at the next propose
        if common < len(self.fed):
            adapter.crop_cache(self.cache, common)
            self.fed = self.fed[:common]


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
    return DraftModelProposer(model, cfg.num_draft)
