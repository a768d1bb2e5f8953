"""tree_attention: Triton kernel (interpreter on CPU) and torch reference against each other and
against an independent oracle, causal SDPA along each root-to-node branch."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import specgen.kernels as K
from specgen.kernels.attention import tree_attention_triton
from specgen.kernels.reference import causal_tree_mask, tree_attention_reference

# Output tolerance (atol = rtol): fp32 accumulation everywhere, so mostly the output's rounding
# plus, for fp16/bf16, the probabilities rounded to the input dtype before P @ V.
TOL = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}
G_TOL = {torch.float32: 1e-5, torch.float16: 1e-4, torch.bfloat16: 1e-3}  # grounding is fp32 math
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def random_parents(kind: str, n: int, gen: torch.Generator) -> list[int]:
    """Parent of each node (-1 = child of the committed prefix); parents precede children."""
    parents = [-1]
    for i in range(1, n):
        if kind == "chain":
            parents.append(i - 1)
        elif kind == "star":
            parents.append(0)
        elif kind == "deep":  # mostly extends the newest node, sometimes branches back
            extend = torch.rand(1, generator=gen).item() < 0.8
            parents.append(i - 1 if extend else int(torch.randint(0, i, (1,), generator=gen)))
        elif kind == "wide":  # many siblings under the first few nodes, several roots
            parents.append(int(torch.randint(-1, min(i, 3), (1,), generator=gen)))
        else:  # uniform random tree
            parents.append(int(torch.randint(-1, i, (1,), generator=gen)))
    return parents


def branch(parents: list[int], i: int) -> list[int]:
    """Nodes from the root of i's branch down to i."""
    chain = []
    while i >= 0:
        chain.append(i)
        i = parents[i]
    return chain[::-1]


def mask_from_parents(parents: list[int]) -> torch.Tensor:
    n = len(parents)
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        mask[i, branch(parents, i)] = True
    return mask


def oracle(q, k, v, parents, prefix_len, scale, g_start, g_end):
    """Per node: causal SDPA (fp64) over prefix + its branch; its last query row is the node's output.
    Grounding: explicit softmax over the same keys, summed over absolute positions in the span."""
    bsz, hq, n, dim = q.shape
    group = hq // k.shape[1]
    kr = k.double().repeat_interleave(group, dim=1)  # [B, Hq, T, D]
    vr = v.double().repeat_interleave(group, dim=1)
    out = torch.empty(bsz, hq, n, dim, dtype=torch.float64)
    ground = torch.empty(bsz, hq, n, dtype=torch.float64)
    for i in range(n):
        chain = branch(parents, i)
        pos = list(range(prefix_len)) + [prefix_len + j for j in chain]  # absolute key positions
        qs = torch.zeros(bsz, hq, len(pos), dim, dtype=torch.float64)
        qs[:, :, -1] = q[:, :, i].double()  # only the last row matters; causal = sees every key
        o = F.scaled_dot_product_attention(qs, kr[:, :, pos], vr[:, :, pos], is_causal=True, scale=scale)
        out[:, :, i] = o[:, :, -1]
        p = torch.softmax((q[:, :, i, None].double() @ kr[:, :, pos].transpose(-1, -2)) * scale, dim=-1)[:, :, 0]
        in_span = torch.tensor([g_start <= t < g_end for t in pos])
        ground[:, :, i] = p[..., in_span].sum(-1)
    return out, ground


def make_inputs(bsz, hkv, group, n, prefix_len, dim, dtype, device, seed=0):
    gen = torch.Generator().manual_seed(seed)
    t_len = prefix_len + n
    q = torch.randn(bsz, hkv * group, n, dim, generator=gen).to(device=device, dtype=dtype)
    k = torch.randn(bsz, hkv, t_len, dim, generator=gen).to(device=device, dtype=dtype)
    v = torch.randn(bsz, hkv, t_len, dim, generator=gen).to(device=device, dtype=dtype)
    return q, k, v


# (tree kind, n, GQA group, prefix_len, head dim): chains, stars, deep, wide; n 1..64; GQA 1 and 3;
# prefix 0 and > 0; head dims 16, 64 and a non-power-of-two 40.
CASES = [
    ("chain", 1, 1, 0, 16),
    ("chain", 9, 3, 37, 64),
    ("star", 16, 1, 5, 40),
    ("deep", 33, 3, 0, 16),
    ("wide", 24, 1, 70, 64),
    ("random", 64, 3, 19, 16),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind,n,group,prefix_len,dim", CASES)
def test_matches_branch_oracle(device, dtype, kind, n, group, prefix_len, dim):
    gen = torch.Generator().manual_seed(n * 7 + group)
    parents = random_parents(kind, n, gen)
    tree_mask = mask_from_parents(parents).to(device)
    q, k, v = make_inputs(2, 2, group, n, prefix_len, dim, dtype, device)
    scale = 1.0 / math.sqrt(dim)
    # Span skips position 0 (the attention sink) when there is a prefix and ends inside the tree.
    g_start = 1 if prefix_len else 0
    g_end = prefix_len + n // 2
    kwargs = dict(tree_mask=tree_mask, prefix_len=prefix_len, scale=scale, grounding_end=g_end, grounding_start=g_start)
    out = torch.full_like(q, float("nan"))  # poisoned: every element must be written
    got, got_g = tree_attention_triton(q, k, v, out=out, **kwargs)
    assert got is out and got.dtype == dtype and not got.isnan().any()
    ref, ref_g = tree_attention_reference(q, k, v, **kwargs)
    exp, exp_g = oracle(q.cpu(), k.cpu(), v.cpu(), parents, prefix_len, scale, g_start, g_end)
    tol = TOL[dtype]
    torch.testing.assert_close(got.float().cpu(), ref.float().cpu(), atol=tol, rtol=tol)
    torch.testing.assert_close(got.double().cpu(), exp, atol=tol, rtol=tol)
    torch.testing.assert_close(ref.double().cpu(), exp, atol=tol, rtol=tol)
    gt = G_TOL[dtype]
    assert got_g.dtype == torch.float32 and got_g.shape == (2, 2 * group, n)
    torch.testing.assert_close(got_g.cpu(), ref_g.cpu(), atol=gt, rtol=gt)
    torch.testing.assert_close(got_g.double().cpu(), exp_g, atol=gt, rtol=gt)
    assert (got_g >= 0).all() and (got_g <= 1 + 1e-6).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_causal_prefill_matches_sdpa(device, dtype):
    """tree_mask = tril(n), prefix_len = T - n is ordinary (bottom-right aligned) causal attention."""
    n, prefix_len, dim, group = 20, 13, 32, 2
    q, k, v = make_inputs(1, 2, group, n, prefix_len, dim, dtype, device, seed=3)
    tree_mask = causal_tree_mask(n, device)
    dense = torch.ones(n, prefix_len + n, dtype=torch.bool).tril(diagonal=prefix_len)  # [n, T]
    exp = F.scaled_dot_product_attention(
        q.double().cpu(), k.double().cpu(), v.double().cpu(), attn_mask=dense, scale=0.2, enable_gqa=True
    )
    for fn in (tree_attention_triton, tree_attention_reference):
        got, g = fn(q, k, v, tree_mask=tree_mask, prefix_len=prefix_len, scale=0.2)
        assert g is None
        torch.testing.assert_close(got.double().cpu(), exp, atol=TOL[dtype], rtol=TOL[dtype])


def test_strided_inputs(device):
    """q in the [B, n, Hq, D] projection layout, k/v as a view into a larger preallocated cache."""
    n, prefix_len, dim, hkv, group = 7, 30, 32, 2, 2
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(1, n, hkv * group, dim, generator=gen).to(device).transpose(1, 2)  # [B, Hq, n, D]
    cache_k = torch.randn(1, hkv, 100, dim, generator=gen).to(device)
    cache_v = torch.randn(1, hkv, 100, dim, generator=gen).to(device)
    k, v = cache_k[:, :, : prefix_len + n], cache_v[:, :, : prefix_len + n]
    assert not (q.is_contiguous() or k.is_contiguous())
    parents = random_parents("random", n, gen)
    kwargs = dict(tree_mask=mask_from_parents(parents).to(device), prefix_len=prefix_len, scale=0.3, grounding_end=4)
    got, got_g = tree_attention_triton(q, k, v, **kwargs)
    ref, ref_g = tree_attention_reference(q, k, v, **kwargs)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_g, ref_g, atol=1e-5, rtol=1e-5)


def test_dispatcher_and_errors(device, monkeypatch):
    q, k, v = make_inputs(1, 1, 1, 4, 3, 16, torch.float32, device)
    mask = causal_tree_mask(4, device)
    monkeypatch.setenv("SPECGEN_KERNELS", "triton")
    a, _ = K.tree_attention(q, k, v, tree_mask=mask, prefix_len=3, scale=0.25)
    monkeypatch.setenv("SPECGEN_KERNELS", "torch")
    b, _ = K.tree_attention(q, k, v, tree_mask=mask, prefix_len=3, scale=0.25)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    for fn in (tree_attention_triton, tree_attention_reference):
        with pytest.raises(ValueError, match="T == prefix_len"):
            fn(q, k, v, tree_mask=mask, prefix_len=2, scale=0.25)
        with pytest.raises(ValueError, match="tree_mask"):
            fn(q, k, v, tree_mask=mask.int(), prefix_len=3, scale=0.25)
        with pytest.raises(ValueError, match="grounding"):
            fn(q, k, v, tree_mask=mask, prefix_len=3, scale=0.25, grounding_end=99)
        with pytest.raises(ValueError, match="multiple"):
            fn(q.expand(1, 2, 4, 16), k.expand(1, 3, 7, 16).contiguous(), v.expand(1, 3, 7, 16).contiguous(),
               tree_mask=mask, prefix_len=3, scale=0.25)  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind,n,group,prefix_len,dim", CASES + [("causal", 12, 3, 0, 16), ("causal", 12, 1, 8, 16)])
def test_sdpa_path_matches_reference(dtype, kind, n, group, prefix_len, dim, monkeypatch):
    """The torch path without grounding (SDPA: no mask for one node, is_causal for a prefill, else
    the boolean [n, T] mask) against the reference oracle, on every tree shape."""
    gen = torch.Generator().manual_seed(n)
    mask = causal_tree_mask(n) if kind == "causal" else mask_from_parents(random_parents(kind, n, gen))
    q, k, v = make_inputs(1, 2, group, n, prefix_len, dim, dtype, "cpu", seed=n)
    scale = 1 / math.sqrt(dim)
    ref, _ = tree_attention_reference(q, k, v, tree_mask=mask, prefix_len=prefix_len, scale=scale)
    got = K.tree_attention_sdpa(q, k, v, tree_mask=mask, prefix_len=prefix_len, scale=scale,
                                out=torch.full_like(q, float("nan")))  # poisoned, every element checked
    torch.testing.assert_close(got.float(), ref.float(), atol=TOL[dtype], rtol=TOL[dtype])
    monkeypatch.setenv("SPECGEN_KERNELS", "torch")  # the dispatcher's torch path takes it when no grounding is asked
    via, g = K.tree_attention(q, k, v, tree_mask=mask, prefix_len=prefix_len, scale=scale)
    assert g is None
    torch.testing.assert_close(via, got, atol=0.0, rtol=0.0)
