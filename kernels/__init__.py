"""GPU kernels for speculative decoding: fused similarity top-k and tree attention.

Public API (each returns the same thing whichever backend runs):

- similarity_topk(queries [B, d], keys [N, d], k, *, normalize=False) -> (scores [B, k] fp32, ids [B, k] int64)
- tree_attention(q, k, v, *, tree_mask, prefix_len, scale, grounding_end=None, grounding_start=0, out=None)
  -> (out [B, Hq, n, D], grounding [B, Hq, n] fp32 | None)
- the *_reference versions (pure torch, the CPU path), backend() and causal_tree_mask().

Backend: Triton for CUDA tensors, torch otherwise; SPECGEN_KERNELS=triton|torch|auto overrides
(see _dispatch). The Triton modules are imported on first use only.
"""
from __future__ import annotations

import torch

from ._dispatch import backend_info, choose, requested_mode
from .reference import (
    TRITON_MAX_K,
    build_allowed_mask,
    causal_tree_mask,
    masked_attention_sdpa,
    similarity_topk_reference,
    tree_attention_reference,
    tree_attention_sdpa,
)

__all__ = [
    "backend",
    "batched_tree_attention",
    "build_allowed_mask",
    "causal_tree_mask",
    "similarity_topk",
    "similarity_topk_reference",
    "tree_attention",
    "tree_attention_reference",
]


def backend() -> dict[str, object]:
    """Dispatcher state: SPECGEN_KERNELS mode, whether triton/CUDA/interpreter are available, and
    the backend CPU and CUDA tensors would get."""
    return backend_info()


def similarity_topk(
    queries: torch.Tensor, keys: torch.Tensor, k: int, *, normalize: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k inner products (cosine when normalize=True) of queries [B, d] against keys [N, d].

    Returns scores [B, k] fp32 in descending order and ids [B, k] int64 (rows of keys). keys may be
    any strided 2-D view in fp32/fp16/bf16; queries are cast to the keys' dtype. k <= N (and, for
    the Triton kernel, k <= 64: larger k falls back to torch unless SPECGEN_KERNELS=triton).
    """
    if choose(keys.device) == "triton" and (k <= TRITON_MAX_K or requested_mode() == "triton"):
        from .similarity import similarity_topk_triton  # raises a clear error for k > 64

        return similarity_topk_triton(queries, keys, k, normalize=normalize)
    return similarity_topk_reference(queries, keys, k, normalize=normalize)


def tree_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    tree_mask: torch.Tensor,
    prefix_len: int,
    scale: float,
    grounding_end: int | None = None,
    grounding_start: int = 0,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attention of n tree nodes over a committed prefix and their tree ancestors.

    q [B, Hq, n, D]; k, v [B, Hkv, T, D] with T = prefix_len + n and Hq % Hkv == 0 (GQA);
    tree_mask [n, n] bool (node i sees node j; diagonal true); every node sees the whole prefix.
    Returns out [B, Hq, n, D] in q's dtype (written into `out` when given) and grounding [B, Hq, n]
    fp32, the attention mass on key positions [grounding_start, grounding_end), or None.
    Causal prefill is the special case tree_mask = causal_tree_mask(n), prefix_len = T - n.
    """
    fn = tree_attention_reference
    if choose(q.device) == "triton":
        from .attention import tree_attention_triton as fn
    elif grounding_end is None:  # torch path without grounding: SDPA's fused kernels, not the oracle
        return tree_attention_sdpa(q, k, v, tree_mask=tree_mask, prefix_len=prefix_len, scale=scale, out=out), None
    return fn(
        q, k, v, tree_mask=tree_mask, prefix_len=prefix_len, scale=scale,
        grounding_end=grounding_end, grounding_start=grounding_start, out=out,
    )  # fmt: skip


def batched_tree_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, key_mask: torch.Tensor,
                           scale: float) -> torch.Tensor:
    """Tree attention of a ragged batch: q [B, Hq, n, D], k/v [B, Hkv, T, D], key_mask [B, n, T] bool
    -> out [B, Hq, n, D]. Torch SDPA on every device for now (the Triton kernel takes one
    (prefix_len, tree_mask) for the whole batch)."""
    return masked_attention_sdpa(q, k, v, key_mask=key_mask, scale=scale)
