"""Pure-torch references for the kernels, shared argument checks, and the tree-mask builder.

These functions are the CPU path of the dispatcher and the oracle the Triton kernels are tested
against, so they stay simple: fp32 math, explicit softmax. Nothing here imports triton.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Largest k the Triton similarity kernel keeps per program (a power of two: tl.topk needs one).
TRITON_MAX_K = 64
_NORM_EPS = 1e-12  # same eps as F.normalize, so kernel and reference clamp zero vectors alike


# --------------------------------------------------------------------------------------------
# similarity top-k
# --------------------------------------------------------------------------------------------
def check_similarity_args(queries: torch.Tensor, keys: torch.Tensor, k: int) -> torch.Tensor:
    """Validate shapes/dtypes and return the queries in the keys' dtype (queries are tiny)."""
    if queries.dim() != 2 or keys.dim() != 2:
        raise ValueError(f"queries and keys must be 2-D, got {tuple(queries.shape)} and {tuple(keys.shape)}")
    if queries.shape[1] != keys.shape[1]:
        raise ValueError(f"dimension mismatch: queries d={queries.shape[1]}, keys d={keys.shape[1]}")
    if keys.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"keys must be fp32, fp16 or bf16, got {keys.dtype}")
    if queries.device != keys.device:
        raise ValueError(f"queries on {queries.device} but keys on {keys.device}")
    n_keys = keys.shape[0]
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if k > n_keys:
        raise ValueError(f"k={k} exceeds the number of keys N={n_keys}")
    # Why cast queries rather than keys: keys are the big operand and may be a strided view.
    return queries.to(keys.dtype)


def similarity_topk_reference(
    queries: torch.Tensor, keys: torch.Tensor, k: int, *, normalize: bool = False, chunk: int = 65536
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k inner products (cosine when normalize=True) of each query against all keys.

    queries [B, d], keys [N, d] -> scores [B, k] fp32 (descending), ids [B, k] int64.
    Chunks over N so that at most [B, chunk] scores exist at once.
    """
    queries = check_similarity_args(queries, keys, k)
    q = queries.float()  # [B, d]
    if normalize:
        q = F.normalize(q, dim=-1, eps=_NORM_EPS)
    n_keys = keys.shape[0]
    best_s = q.new_empty(q.shape[0], 0)  # [B, <=k] fp32
    best_i = torch.empty(q.shape[0], 0, dtype=torch.int64, device=q.device)  # [B, <=k]
    for start in range(0, n_keys, chunk):
        kc = keys[start : start + chunk].float()  # [c, d]
        if normalize:
            kc = F.normalize(kc, dim=-1, eps=_NORM_EPS)
        s = q @ kc.T  # [B, c]
        top_s, top_i = s.topk(min(k, s.shape[1]), dim=1)  # [B, <=k]
        cat_s = torch.cat([best_s, top_s], dim=1)  # [B, <=2k]
        cat_i = torch.cat([best_i, top_i + start], dim=1)  # [B, <=2k]
        best_s, pos = cat_s.topk(min(k, cat_s.shape[1]), dim=1)
        best_i = cat_i.gather(1, pos)
    return best_s, best_i


# --------------------------------------------------------------------------------------------
# tree attention
# --------------------------------------------------------------------------------------------
def check_tree_attention_args(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    tree_mask: torch.Tensor,
    prefix_len: int,
    grounding_start: int,
    grounding_end: int | None,
) -> None:
    """Shape/dtype checks at the kernel boundary (no device sync: the mask's diagonal is trusted)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be 4-D: q [B, Hq, n, D], k/v [B, Hkv, T, D]")
    bsz, hq, n, dim = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} differ")
    if k.shape[0] != bsz or k.shape[3] != dim:
        raise ValueError(f"k/v {tuple(k.shape)} do not match q {tuple(q.shape)}")
    hkv, t_len = k.shape[1], k.shape[2]
    if hq % hkv != 0:
        raise ValueError(f"Hq={hq} is not a multiple of Hkv={hkv}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if tuple(tree_mask.shape) != (n, n) or tree_mask.dtype != torch.bool:
        raise ValueError(f"tree_mask must be bool [{n}, {n}], got {tree_mask.dtype} {tuple(tree_mask.shape)}")
    if prefix_len < 0 or prefix_len + n != t_len:
        raise ValueError(f"need T == prefix_len + n, got T={t_len}, prefix_len={prefix_len}, n={n}")
    if grounding_end is not None and not 0 <= grounding_start <= grounding_end <= t_len:
        raise ValueError(f"need 0 <= grounding_start <= grounding_end <= T, got {grounding_start}, {grounding_end}")


def build_allowed_mask(tree_mask: torch.Tensor, prefix_len: int) -> torch.Tensor:
    """[n, n] node-to-node mask -> [n, T] node-to-key mask: every node sees the whole prefix."""
    n = tree_mask.shape[0]
    allowed = torch.ones(n, prefix_len + n, dtype=torch.bool, device=tree_mask.device)  # [n, T]
    allowed[:, prefix_len:] = tree_mask
    return allowed


def causal_tree_mask(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The tree of a plain sequence: node i attends nodes 0..i (ordinary causal prefill)."""
    return torch.ones(n, n, dtype=torch.bool, device=device).tril_()


def tree_attention_reference(
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
    """Attention of n tree nodes over a committed prefix plus the nodes themselves.

    q [B, Hq, n, D]; k, v [B, Hkv, T, D] with T = prefix_len + n; tree_mask [n, n] bool.
    Returns out [B, Hq, n, D] (q's dtype) and grounding [B, Hq, n] fp32 = softmax mass on key
    positions in [grounding_start, grounding_end), or None when grounding_end is None.
    """
    check_tree_attention_args(q, k, v, tree_mask, prefix_len, grounding_start, grounding_end)
    bsz, hq, n, dim = q.shape
    hkv, t_len = k.shape[1], k.shape[2]
    group = hq // hkv
    allowed = build_allowed_mask(tree_mask, prefix_len)  # [n, T]
    # GQA without repeat_kv: query head h uses kv head h // group, so fold the group into rows.
    qg = q.float().reshape(bsz, hkv, group * n, dim)  # [B, Hkv, G*n, D]
    s = torch.matmul(qg, k.float().transpose(-1, -2)) * scale  # [B, Hkv, G*n, T]
    s = s.view(bsz, hkv, group, n, t_len).masked_fill(~allowed, float("-inf"))
    p = torch.softmax(s, dim=-1)  # [B, Hkv, G, n, T] fp32
    o = torch.matmul(p.view(bsz, hkv, group * n, t_len), v.float())  # [B, Hkv, G*n, D]
    o = o.view(bsz, hq, n, dim)
    if out is None:
        out = o.to(q.dtype)
    else:
        out.copy_(o)
    grounding = None
    if grounding_end is not None:
        grounding = p[..., grounding_start:grounding_end].sum(-1).reshape(bsz, hq, n)  # [B, Hq, n]
    return out, grounding


def tree_attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    tree_mask: torch.Tensor,
    prefix_len: int,
    scale: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """The torch path's fast case, when no grounding is asked: torch SDPA (same shapes as the reference).

    A single node sees everything (no mask) and a causal prefill from an empty cache is `is_causal`,
    both of which reach SDPA's fused CPU kernel; other trees pass the [n, T] boolean mask. The
    reference stays the oracle: it is tested against this path on every tree shape.
    """
    check_tree_attention_args(q, k, v, tree_mask, prefix_len, 0, None)
    n, hq, hkv = q.shape[2], q.shape[1], k.shape[1]
    mask, causal = None, False
    if n > 1:
        if prefix_len == 0 and bool(torch.equal(tree_mask, causal_tree_mask(n, tree_mask.device))):
            causal = True
        else:
            mask = build_allowed_mask(tree_mask, prefix_len)  # [n, T]
    o = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=hq != hkv,
    )  # fmt: skip  # [B, Hq, n, D]
    if out is None:
        return o
    out.copy_(o)
    return out


def check_key_mask(q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor) -> None:
    """Shape checks of a batched ragged mask: key_mask [B, n, T] bool for q [B, Hq, n, D], k [B, Hkv, T, D]."""
    bsz, _, n, _ = q.shape
    if tuple(key_mask.shape) != (bsz, n, k.shape[2]) or key_mask.dtype != torch.bool:
        raise ValueError(f"key_mask must be bool [{bsz}, {n}, {k.shape[2]}], got {key_mask.dtype} {tuple(key_mask.shape)}")


def masked_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, key_mask: torch.Tensor,
                          scale: float) -> torch.Tensor:
    """Batched tree attention with a mask per row: q [B, Hq, n, D], k/v [B, Hkv, T, D], key_mask
    [B, n, T] bool (row b's node i sees key j). Every query row must see at least itself.

    The ragged batch case: rows hold prefixes of different lengths in one padded cache and trees
    of different shapes padded to one node count, so the mask cannot be (prefix_len, [n, n]).
    """
    check_key_mask(q, k, key_mask)
    o = torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=key_mask.unsqueeze(1), scale=scale, enable_gqa=q.shape[1] != k.shape[1],
    )  # fmt: skip  # [B, Hq, n, D]
    return o
