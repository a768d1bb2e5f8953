"""transformers integration: the "specgen_tree" attention implementation.

Usage::

    from specgen.kernels.hf_attention import TreeAttentionContext, register
    model.set_attn_implementation(register())      # or from_pretrained(..., attn_implementation=register())
    ctx = TreeAttentionContext(tree_mask=mask, prefix_len=cache.get_seq_length(), grounding_end=p)
    out = model(input_ids=nodes, position_ids=prefix_len + depth, past_key_values=cache, specgen_tree=ctx)
    ctx.grounding[layer_idx]                        # [B, Hq, n] fp32

How the context reaches the attention (checked against transformers 5.23): extra keyword arguments
of `LlamaForCausalLM.forward` (typed `**kwargs: Unpack[TransformersKwargs]`) are forwarded
unchanged to LlamaModel, every decoder layer, the attention module and finally the registered
attention function; nothing filters unknown keys. The mask function registered under the same name
returns None, so transformers builds no [n, T] mask: the tree mask comes from the context, and
without a context the attention is plain causal (so `model.generate` works unchanged).

Not supported: padded batches (a 2-D attention_mask with zeros), sliding-window layers, dropout,
output_attentions (the function returns no weights).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import batched_tree_attention, tree_attention
from .reference import causal_tree_mask

NAME = "specgen_tree"
CONTEXT_KWARG = "specgen_tree"


@dataclass(frozen=True)
class TreeAttentionContext:
    """Per-forward tree description, passed as `specgen_tree=ctx` to the model's forward.

    tree_mask [n, n] bool: node i attends node j (diagonal true); prefix_len: tokens already in the
    KV cache, all visible to every node. grounding_end/grounding_start: the key span whose attention
    mass is recorded; grounding_layers: layers to record (None = all, when grounding_end is set).
    The dataclass is frozen; only the `grounding` dict is filled in, {layer_idx: [B, Hq, n] fp32}.
    """

    tree_mask: torch.Tensor
    prefix_len: int
    grounding_end: int | None = None
    grounding_start: int = 0
    grounding_layers: tuple[int, ...] | None = None
    grounding: dict[int, torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tree_mask.dim() != 2 or self.tree_mask.shape[0] != self.tree_mask.shape[1]:
            raise ValueError(f"tree_mask must be [n, n], got {tuple(self.tree_mask.shape)}")
        if self.tree_mask.dtype != torch.bool:
            raise ValueError(f"tree_mask must be bool, got {self.tree_mask.dtype}")
        if self.prefix_len < 0:
            raise ValueError(f"prefix_len must be >= 0, got {self.prefix_len}")

    def wants_grounding(self, layer_idx: int | None) -> bool:
        """Whether this layer's grounding should be computed and stored."""
        if self.grounding_end is None:
            return False
        return self.grounding_layers is None or layer_idx in self.grounding_layers


@dataclass(frozen=True)
class BatchTreeContext:
    """A ragged batch's attention, passed as `specgen_tree=ctx`: key_mask [B, n, T] bool, row b's
    node i sees key j (its own valid prefix slots and its tree ancestors; padding sees itself)."""

    key_mask: torch.Tensor

    def __post_init__(self) -> None:
        if self.key_mask.dim() != 3 or self.key_mask.dtype != torch.bool:
            raise ValueError(f"key_mask must be bool [B, n, T], got {self.key_mask.dtype} {tuple(self.key_mask.shape)}")


def specgen_tree_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: object,
) -> tuple[torch.Tensor, None]:
    """transformers attention function. query [B, Hq, n, D]; key/value [B, Hkv, T, D] (cache
    included, not repeated for GQA). Returns ([B, n, Hq, D] contiguous, None) like sdpa's."""
    if dropout:
        raise NotImplementedError("specgen_tree attention does not implement dropout (use model.eval())")
    if getattr(module, "sliding_window", None) is not None:
        raise NotImplementedError("specgen_tree attention does not support sliding-window layers")
    if attention_mask is not None:
        # Our mask function returns None; a mask here was built by the caller and would be ignored.
        raise ValueError("specgen_tree attention builds its own mask; got an explicit attention_mask")
    n, t_len = query.shape[2], key.shape[2]
    ctx = kwargs.get(CONTEXT_KWARG)
    if scaling is None:
        scaling = query.shape[-1] ** -0.5
    if isinstance(ctx, BatchTreeContext):
        out = batched_tree_attention(query, key, value, key_mask=ctx.key_mask.to(query.device), scale=scaling)
        return out.transpose(1, 2).contiguous(), None  # [B, n, Hq, D]
    if ctx is None:
        tree_mask, prefix_len = causal_tree_mask(n, query.device), t_len - n
        g_end, g_start, want = None, 0, False
    else:
        if not isinstance(ctx, TreeAttentionContext):
            raise TypeError(f"{CONTEXT_KWARG}= must be a TreeAttentionContext, got {type(ctx).__name__}")
        if ctx.tree_mask.shape[0] != n or ctx.prefix_len + n != t_len:
            raise ValueError(
                f"context (n={ctx.tree_mask.shape[0]}, prefix_len={ctx.prefix_len}) does not match "
                f"the layer's {n} queries over {t_len} keys"
            )
        tree_mask, prefix_len = ctx.tree_mask.to(query.device), ctx.prefix_len
        layer_idx = getattr(module, "layer_idx", None)
        want = ctx.wants_grounding(layer_idx)
        g_end, g_start = (ctx.grounding_end, ctx.grounding_start) if want else (None, 0)
    out, grounding = tree_attention(
        query, key, value, tree_mask=tree_mask, prefix_len=prefix_len, scale=scaling,
        grounding_end=g_end, grounding_start=g_start,
    )  # fmt: skip  # out [B, Hq, n, D]
    if want and grounding is not None:
        ctx.grounding[layer_idx] = grounding  # [B, Hq, n]
    return out.transpose(1, 2).contiguous(), None


def _no_mask(*args: object, attention_mask: torch.Tensor | None = None, **kwargs: object) -> None:
    """Mask function for "specgen_tree": the attention function builds its own mask, so there is
    nothing to build; a padding mask with holes would be silently dropped, so it is refused."""
    if isinstance(attention_mask, torch.Tensor) and attention_mask.dim() == 2 and not bool(attention_mask.all()):
        raise ValueError("specgen_tree attention does not support padded batches (attention_mask has zeros)")
    return None


def register() -> str:
    """Register the attention and mask functions with transformers (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(NAME, specgen_tree_attention_forward)
    AttentionMaskInterface.register(NAME, _no_mask)
    return NAME
