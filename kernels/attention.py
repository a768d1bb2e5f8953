"""Tree attention with in-kernel grounding scores (Triton).

n tree nodes attend to a committed prefix (all of it) and to the nodes their tree mask allows.
Flash-style: one program owns BLOCK_M query rows of one (batch, kv-head); its GQA group's query
heads are folded into the rows (row r = g * n + i: head hkv * G + g, node i), so every K/V tile is
read once per group instead of once per query head. Keys are streamed in two phases, the prefix
(no mask load) then the nodes (tree-mask tile), with an online softmax in fp32 (exp2 domain).

Grounding: the softmax mass on key positions [grounding_start, grounding_end). The unnormalised,
rescaled mass in the span is carried next to the softmax denominator l and divided by the final l.

Imports triton at module level: reach it through specgen.kernels, which imports it lazily.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from .reference import check_tree_attention_args

_LOG2E = 1.4426950408889634


@dataclass(frozen=True)
class AttentionLaunch:
    """A fixed launch configuration (used under TRITON_INTERPRET, where autotuning is pointless)."""

    block_m: int = 16
    block_n: int = 32
    num_warps: int = 4


INTERPRETER_LAUNCH = AttentionLaunch()


@triton.jit
def _round_to_bf16_grid(x):
    """fp32 -> fp32 values exactly representable in bf16, rounded to nearest even. Interpreter
    only: its fp32 -> bf16 cast truncates, which would double the output's rounding error."""
    bits = x.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _attend_blocks(
    acc,  # [BLOCK_M, BLOCK_D] fp32 unnormalised output
    m_i,  # [BLOCK_M] fp32 running max (log2 domain)
    l_i,  # [BLOCK_M] fp32 running denominator
    g_i,  # [BLOCK_M] fp32 running mass in the grounding span
    q,  # [BLOCK_M, BLOCK_D] input dtype
    k_base,
    v_base,
    mask_ptr,  # [n, n] uint8 tree mask
    node,  # [BLOCK_M] node index of each row
    row_ok,  # [BLOCK_M]
    offs_d,  # [BLOCK_D]
    d_ok,  # [BLOCK_D]
    lo,
    hi,
    prefix_len,
    g_start,
    g_end,
    qk_scale,  # softmax scale * log2(e)
    stride_kt,
    stride_kd,
    stride_vt,
    stride_vd,
    stride_mi,
    stride_mj,
    TREE: tl.constexpr,
    GROUNDING: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    for start in range(lo, hi, BLOCK_N):
        offs_t = start + tl.arange(0, BLOCK_N)  # [BLOCK_N] key positions
        t_ok = offs_t < hi
        kv_mask = t_ok[:, None] & d_ok[None, :]
        kt = tl.load(k_base + offs_t[:, None] * stride_kt + offs_d[None, :] * stride_kd, mask=kv_mask, other=0.0)
        vt = tl.load(v_base + offs_t[:, None] * stride_vt + offs_d[None, :] * stride_vd, mask=kv_mask, other=0.0)
        if UPCAST:
            kt = kt.to(tl.float32)
            vt = vt.to(tl.float32)
        if IEEE:
            s = tl.dot(q, tl.trans(kt), input_precision="ieee")  # [BLOCK_M, BLOCK_N] fp32
        else:
            s = tl.dot(q, tl.trans(kt))
        s = s * qk_scale
        if TREE:
            j = offs_t - prefix_len  # node index of each key
            allowed = tl.load(
                mask_ptr + node[:, None] * stride_mi + j[None, :] * stride_mj,
                mask=row_ok[:, None] & t_ok[None, :],
                other=0,
            )
            s = tl.where(allowed != 0, s, float("-inf"))
        else:
            s = tl.where(t_ok[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # Why m_safe: a row with nothing allowed so far has m_new = -inf, and -inf - -inf is NaN.
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_safe)  # [BLOCK_M] rescale of everything accumulated so far
        p = tl.exp2(s - m_safe[:, None])  # [BLOCK_M, BLOCK_N]
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if GROUNDING:
            in_span = (offs_t >= g_start) & (offs_t < g_end)
            g_i = g_i * alpha + tl.sum(tl.where(in_span[None, :], p, 0.0), axis=1)
        if IEEE:
            pv = tl.dot(p.to(vt.dtype), vt, input_precision="ieee")
        else:
            pv = tl.dot(p.to(vt.dtype), vt)  # fp16/bf16 operands, fp32 accumulation
        acc = acc * alpha[:, None] + pv
        m_i = m_new
    return acc, m_i, l_i, g_i


@triton.jit
def _tree_attention_kernel(
    q_ptr,  # [B, Hq, n, D]
    k_ptr,  # [B, Hkv, T, D]
    v_ptr,  # [B, Hkv, T, D]
    mask_ptr,  # [n, n] uint8
    o_ptr,  # [B, Hq, n, D] out, q's dtype
    g_ptr,  # [B, Hq, n] fp32 out (unused unless GROUNDING)
    n,
    prefix_len,
    T,
    Hkv,
    g_start,
    g_end,
    qk_scale,
    rows_bucket,  # autotune key only: next_power_of_2(G * n)
    t_bucket,  # autotune key only: next_power_of_2(T)
    stride_qb, stride_qh, stride_qn, stride_qd,
    stride_kb, stride_kh, stride_kt, stride_kd,
    stride_vb, stride_vh, stride_vt, stride_vd,
    stride_ob, stride_oh, stride_on, stride_od,
    stride_gb, stride_gh, stride_gn,
    stride_mi, stride_mj,
    GROUP: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    GROUNDING: tl.constexpr,
    IEEE: tl.constexpr,
    UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hkv).to(tl.int64)  # int64: B * H * T * D can pass 2**31 for long contexts
    hkv = (pid_bh % Hkv).to(tl.int64)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BLOCK_M]
    row_ok = rows < GROUP * n
    node = rows % n
    head = hkv * GROUP + rows // n
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_DIM
    q_off = b * stride_qb + head[:, None] * stride_qh + node[:, None] * stride_qn + offs_d[None, :] * stride_qd
    q = tl.load(q_ptr + q_off, mask=row_ok[:, None] & d_ok[None, :], other=0.0)  # [BLOCK_M, BLOCK_D]
    if UPCAST:
        q = q.to(tl.float32)
    k_base = k_ptr + b * stride_kb + hkv * stride_kh
    v_base = v_ptr + b * stride_vb + hkv * stride_vh

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    g_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    # Phase 1: the committed prefix, visible to every node.
    acc, m_i, l_i, g_i = _attend_blocks(
        acc, m_i, l_i, g_i, q, k_base, v_base, mask_ptr, node, row_ok, offs_d, d_ok,
        0, prefix_len, prefix_len, g_start, g_end, qk_scale,
        stride_kt, stride_kd, stride_vt, stride_vd, stride_mi, stride_mj,
        False, GROUNDING, IEEE, UPCAST, BLOCK_N,
    )  # fmt: skip
    # Phase 2: the tree nodes, through the tree mask.
    acc, m_i, l_i, g_i = _attend_blocks(
        acc, m_i, l_i, g_i, q, k_base, v_base, mask_ptr, node, row_ok, offs_d, d_ok,
        prefix_len, T, prefix_len, g_start, g_end, qk_scale,
        stride_kt, stride_kd, stride_vt, stride_vd, stride_mi, stride_mj,
        True, GROUNDING, IEEE, UPCAST, BLOCK_N,
    )  # fmt: skip
    l_safe = tl.where(l_i > 0.0, l_i, 1.0)  # only padding rows have l == 0
    out = acc / l_safe[:, None]  # [BLOCK_M, BLOCK_D] fp32
    if UPCAST:
        out = _round_to_bf16_grid(out)
    o_off = b * stride_ob + head[:, None] * stride_oh + node[:, None] * stride_on + offs_d[None, :] * stride_od
    tl.store(o_ptr + o_off, out.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
    if GROUNDING:
        g_off = b * stride_gb + head * stride_gh + node * stride_gn
        tl.store(g_ptr + g_off, g_i / l_safe, mask=row_ok)


_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm in (16, 32, 64, 128)
    for bn in (32, 64, 128)
    for w in (4, 8)
    for s in (2, 3)
    if not (bm == 128 and bn == 128 and w == 4)
]
# Buckets instead of n and T: T grows by one step's accepted tokens every call.
_tree_attention_tuned = triton.autotune(
    configs=_CONFIGS, key=["rows_bucket", "t_bucket", "HEAD_DIM", "GROUP", "GROUNDING"]
)(_tree_attention_kernel)


def tree_attention_triton(
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
    """Triton tree attention; same contract as tree_attention_reference.

    q [B, Hq, n, D]; k, v [B, Hkv, T, D] (any strides); tree_mask [n, n] bool; T = prefix_len + n.
    out (optional) [B, Hq, n, D] of q's dtype is written in place. Returns (out, grounding|None).
    """
    check_tree_attention_args(q, k, v, tree_mask, prefix_len, grounding_start, grounding_end)
    bsz, hq, n, dim = q.shape
    hkv, t_len = k.shape[1], k.shape[2]
    group = hq // hkv
    if dim > 256:
        raise ValueError(f"head dim {dim} > 256 is not supported by the Triton kernel")
    if out is None:
        out = torch.empty_like(q, memory_format=torch.contiguous_format)  # [B, Hq, n, D]
    elif out.shape != q.shape or out.dtype != q.dtype or out.device != q.device:
        raise ValueError(f"out must be {q.dtype} {tuple(q.shape)} on {q.device}")
    grounding = None
    if grounding_end is not None:
        grounding = torch.empty(bsz, hq, n, dtype=torch.float32, device=q.device)  # [B, Hq, n]
    g_arg = grounding if grounding is not None else out  # placeholder pointer, never touched
    g_strides = grounding.stride() if grounding is not None else (0, 0, 0)
    mask_u8 = tree_mask.to(torch.uint8)  # [n, n]; tiny, and bool pointers are i1 in Triton
    interp = bool(triton.knobs.runtime.interpret)
    rows = group * n
    args = (
        q, k, v, mask_u8, out, g_arg,
        n, prefix_len, t_len, hkv,
        grounding_start, grounding_end if grounding_end is not None else 0,
        scale * _LOG2E,
        triton.next_power_of_2(rows), triton.next_power_of_2(t_len),
        *q.stride(), *k.stride(), *v.stride(), *out.stride(), *g_strides, *mask_u8.stride(),
    )  # fmt: skip
    meta = dict(
        GROUP=group,
        HEAD_DIM=dim,
        BLOCK_D=max(16, triton.next_power_of_2(dim)),
        GROUNDING=grounding is not None,
        IEEE=q.dtype == torch.float32 or (interp and q.dtype == torch.bfloat16),
        # The interpreter's tl.dot mis-reads bf16 operands: upcast there (never on a GPU).
        UPCAST=interp and q.dtype == torch.bfloat16,
    )
    if interp:
        cfg = INTERPRETER_LAUNCH
        grid = (triton.cdiv(rows, cfg.block_m), bsz * hkv)
        _tree_attention_kernel[grid](*args, **meta, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps)
    else:

        def grid(meta_: dict) -> tuple[int, int]:
            return (triton.cdiv(rows, meta_["BLOCK_M"]), bsz * hkv)

        _tree_attention_tuned[grid](*args, **meta)
    return out, grounding
