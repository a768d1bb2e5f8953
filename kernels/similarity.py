"""Fused similarity top-k: inner products of B queries against N keys, best k per query.

The [B, N] score matrix is never materialised. The grid is (query blocks, key splits); each program
streams its contiguous range of keys tile by tile (tl.dot, fp32 accumulation), packs every score
with its key id into one sortable int64 and keeps a running top-K_PAD (tl.topk's bitonic network on
a GPU; max-and-remove rounds under the interpreter, where tl.topk is ~1 s a call). Tiles whose best
score cannot enter any row's running top-K skip the selection. A second stage (torch.topk over
[B, splits * K_PAD] candidates) merges the splits.

Imports triton at module level: reach it through specgen.kernels, which imports it lazily.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .reference import _NORM_EPS, TRITON_MAX_K, check_similarity_args

# Packed value of an empty slot: below every packed real score, -inf included.
_EMPTY = tl.constexpr(-(2**63))
# Key splits start on this boundary so that every tile of a split is aligned for any BLOCK_N.
_SPLIT_ALIGN = 256


@dataclass(frozen=True)
class SimilarityLaunch:
    """A fixed launch configuration (used under TRITON_INTERPRET, where autotuning is pointless)."""

    block_n: int = 64
    block_d: int = 32
    num_warps: int = 4


INTERPRETER_LAUNCH = SimilarityLaunch()


@triton.jit
def _pack(scores, ids):
    """fp32 scores [R, C] + int ids [C] -> int64 [R, C] ordered like (score, -id)."""
    bits = scores.to(tl.int32, bitcast=True)
    # Why the xor: it makes negative floats order like signed ints (flip all but the sign bit).
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    # Lower id wins ties, and the low word stays non-negative so the high word dominates.
    low = (0x7FFFFFFF - ids).to(tl.int64)
    return (key.to(tl.int64) << 32) | low[None, :]


@triton.jit
def _unpack(packed):
    """Inverse of _pack: int64 [R, K] -> (fp32 scores [R, K], int64 ids [R, K]); empty -> (-inf, -1)."""
    key = (packed >> 32).to(tl.int32)
    bits = key ^ ((key >> 31) & 0x7FFFFFFF)
    scores = bits.to(tl.float32, bitcast=True)
    ids = 0x7FFFFFFF - (packed & 0xFFFFFFFF)
    empty = packed == _EMPTY
    return tl.where(empty, float("-inf"), scores), tl.where(empty, -1, ids)


@triton.jit
def _select_topk(x, K_PAD: tl.constexpr, BITONIC: tl.constexpr):
    """Packed int64 [R, C] -> its K_PAD largest [R, K_PAD], descending."""
    if BITONIC:
        # Register-resident bitonic network: the fast choice on a GPU.
        top = tl.topk(x, K_PAD)
    else:
        # K_PAD rounds of max-and-remove: a few ops per round, so cheap under the interpreter
        # (where one tl.topk costs ~1 s), and fine on a GPU for small K. Packed values are unique
        # (they carry the id), so the equality removes exactly the winner.
        cols = tl.arange(0, K_PAD)
        top = tl.full([x.shape[0], K_PAD], _EMPTY, tl.int64)
        for j in range(K_PAD):
            m = tl.max(x, axis=1)  # [R]
            top = tl.where(cols[None, :] == j, m[:, None], top)
            x = tl.where(x == m[:, None], _EMPTY, x)
    return top


@triton.jit
def _similarity_topk_kernel(
    q_ptr,  # [B, d] keys' dtype, any strides
    q_inv_norm_ptr,  # [B] fp32 1/||q|| (read only when NORMALIZE)
    k_ptr,  # [N, d] fp32/fp16/bf16, any strides
    cand_s_ptr,  # [B, S, K_PAD] fp32 out: per-split top scores
    cand_i_ptr,  # [B, S, K_PAD] int64 out: their key ids (-1 = empty)
    B,
    N,
    D,
    keys_per_split,  # multiple of _SPLIT_ALIGN
    stride_qb,
    stride_qd,
    stride_kn,
    stride_kd,
    stride_cb,
    stride_cs,
    NORMALIZE: tl.constexpr,
    IEEE: tl.constexpr,  # fp32 inputs: no TF32, so results match faiss to ~1e-6
    UPCAST: tl.constexpr,  # interpreter only: its tl.dot mis-reads bf16, so dot in fp32
    BITONIC: tl.constexpr,
    K_PAD: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_s = tl.program_id(1)
    offs_b = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)  # [BLOCK_B]
    b_ok = offs_b < B
    n_lo = pid_s * keys_per_split
    n_hi = tl.minimum(n_lo + keys_per_split, N)
    best = tl.full([BLOCK_B, K_PAD], _EMPTY, tl.int64)  # running packed top-K_PAD
    if NORMALIZE:
        q_inv = tl.load(q_inv_norm_ptr + offs_b, mask=b_ok, other=0.0)  # [BLOCK_B]
    for n0 in range(n_lo, n_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)  # [BLOCK_N]
        n_ok = offs_n < n_hi
        acc = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
        k_sq = tl.zeros([BLOCK_N], dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            offs_d = d0 + tl.arange(0, BLOCK_D)  # [BLOCK_D]
            d_ok = offs_d < D
            q = tl.load(
                q_ptr + offs_b[:, None] * stride_qb + offs_d[None, :] * stride_qd,
                mask=b_ok[:, None] & d_ok[None, :],
                other=0.0,
            )  # [BLOCK_B, BLOCK_D]
            kt = tl.load(
                # int64 row offsets: N * stride passes 2**31 for large datastores.
                k_ptr + offs_n.to(tl.int64)[:, None] * stride_kn + offs_d[None, :] * stride_kd,
                mask=n_ok[:, None] & d_ok[None, :],
                other=0.0,
            )  # [BLOCK_N, BLOCK_D]
            if UPCAST:
                q = q.to(tl.float32)
                kt = kt.to(tl.float32)
            if IEEE:
                acc = tl.dot(q, tl.trans(kt), acc, input_precision="ieee")
            else:
                acc = tl.dot(q, tl.trans(kt), acc)
            if NORMALIZE:
                kf = kt.to(tl.float32)
                k_sq += tl.sum(kf * kf, axis=1)
        if NORMALIZE:
            # Scaling the fp32 scores (not the inputs) avoids a normalised copy of all N keys and
            # the rounding of normalised queries back to fp16/bf16.
            acc = acc * q_inv[:, None] / tl.maximum(tl.sqrt(k_sq), 1e-12)[None, :]
        packed = _pack(acc, offs_n)  # [BLOCK_B, BLOCK_N]
        packed = tl.where(b_ok[:, None] & n_ok[None, :], packed, _EMPTY)
        # Skip the merge when no row's tile maximum beats that row's current k-th best: after the
        # first tiles this holds for most tiles, and selection is the costly part of the loop.
        kth = tl.min(best, axis=1)  # [BLOCK_B]
        improves = tl.max((tl.max(packed, axis=1) > kth).to(tl.int32), axis=0)
        if improves > 0:
            tile_top = _select_topk(packed, K_PAD, BITONIC)  # [BLOCK_B, K_PAD]
            both = tl.reshape(tl.join(best, tile_top), [BLOCK_B, 2 * K_PAD])
            best = _select_topk(both, K_PAD, BITONIC)
    scores, ids = _unpack(best)  # [BLOCK_B, K_PAD] each
    offs_k = tl.arange(0, K_PAD)
    c_off = offs_b[:, None] * stride_cb + pid_s * stride_cs + offs_k[None, :]
    tl.store(cand_s_ptr + c_off, scores, mask=b_ok[:, None])
    tl.store(cand_i_ptr + c_off, ids, mask=b_ok[:, None])


def _prune(configs: list[triton.Config], named_args: dict, **kwargs: object) -> list[triton.Config]:
    """tl.topk needs K_PAD <= BLOCK_N; drop the configs that break it."""
    k_pad = kwargs.get("K_PAD", named_args.get("K_PAD"))
    kept = [c for c in configs if c.kwargs["BLOCK_N"] >= k_pad]
    return kept or configs[-1:]


_CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_D": bd}, num_warps=w, num_stages=s)
    for bn in (64, 128, 256)
    for bd in (32, 64, 128)
    for w in (4, 8)
    for s in (2, 3, 4)
    if not (bn == 256 and w == 4)
]
# D and K_PAD set the best tile; N is left out so a growing datastore does not re-tune every call.
_similarity_topk_tuned = triton.autotune(
    configs=_CONFIGS, key=["D", "K_PAD", "NORMALIZE", "BLOCK_B"], prune_configs_by={"early_config_prune": _prune}
)(_similarity_topk_kernel)


def _interpreting() -> bool:
    return bool(triton.knobs.runtime.interpret)


def _num_splits(b_blocks: int, n_keys: int, device: torch.device) -> int:
    """Enough programs to fill the GPU (~4 per SM), never a split shorter than one aligned chunk."""
    if device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 2  # interpreter: programs run one after another, fewer means less Python overhead
    return max(1, min(math.ceil(target / b_blocks), math.ceil(n_keys / _SPLIT_ALIGN)))


def similarity_topk_triton(
    queries: torch.Tensor,
    keys: torch.Tensor,
    k: int,
    *,
    normalize: bool = False,
    bitonic: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton similarity top-k. queries [B, d], keys [N, d] (any strides) -> scores [B, k] fp32
    descending, ids [B, k] int64. k <= 64.

    bitonic: selection network, None = tl.topk on a GPU and max-and-remove under the interpreter
    (a test hook, so that the GPU's network is also exercised on CPU).
    """
    queries = check_similarity_args(queries, keys, k)
    if k > TRITON_MAX_K:
        raise ValueError(f"the Triton similarity kernel supports k <= {TRITON_MAX_K}, got k={k}")
    if keys.shape[0] >= 2**31:
        raise ValueError("the Triton similarity kernel packs key ids in 31 bits: N must be < 2**31")
    # [B] fp32; B x d is tiny, so the query norms are computed here once. (A 1-element placeholder
    # when unused: a null pointer argument can upset the launcher.)
    if normalize:
        q_inv_norm = 1.0 / queries.float().norm(dim=-1).clamp_min(_NORM_EPS)
    else:
        q_inv_norm = torch.empty(1, dtype=torch.float32, device=keys.device)
    bsz, dim = queries.shape
    n_keys = keys.shape[0]
    k_pad = triton.next_power_of_2(k)
    # tl.dot needs M >= 16; larger query blocks reuse each key tile for more queries.
    block_b = min(64, max(16, triton.next_power_of_2(bsz)))
    b_blocks = triton.cdiv(bsz, block_b)
    splits = _num_splits(b_blocks, n_keys, keys.device)
    keys_per_split = triton.cdiv(triton.cdiv(n_keys, splits), _SPLIT_ALIGN) * _SPLIT_ALIGN
    splits = triton.cdiv(n_keys, keys_per_split)
    cand_s = torch.empty(bsz, splits, k_pad, dtype=torch.float32, device=keys.device)  # [B, S, K_PAD]
    cand_i = torch.empty(bsz, splits, k_pad, dtype=torch.int64, device=keys.device)  # [B, S, K_PAD]
    args = (
        queries, q_inv_norm, keys, cand_s, cand_i, bsz, n_keys, dim, keys_per_split,
        queries.stride(0), queries.stride(1), keys.stride(0), keys.stride(1),
        cand_s.stride(0), cand_s.stride(1),
    )  # fmt: skip
    interp = _interpreting()
    meta = dict(
        NORMALIZE=normalize,
        IEEE=keys.dtype == torch.float32 or (interp and keys.dtype == torch.bfloat16),
        UPCAST=interp and keys.dtype == torch.bfloat16,
        BITONIC=(not interp) if bitonic is None else bitonic,
        K_PAD=k_pad,
        BLOCK_B=block_b,
    )
    grid = (b_blocks, splits)
    if interp:
        cfg = INTERPRETER_LAUNCH
        block_n = max(cfg.block_n, k_pad)
        _similarity_topk_kernel[grid](*args, **meta, BLOCK_N=block_n, BLOCK_D=cfg.block_d, num_warps=cfg.num_warps)
    else:
        _similarity_topk_tuned[grid](*args, **meta)
    # Merge stage: [B, S * K_PAD] candidates, tiny next to [B, N].
    scores, pos = cand_s.view(bsz, -1).topk(k, dim=1)  # [B, k]
    ids = cand_i.view(bsz, -1).gather(1, pos)  # [B, k]
    return scores, ids
