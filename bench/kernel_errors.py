"""Maximum absolute error of the Triton kernels against their torch references, per dtype.

`TRITON_INTERPRET=1 python -m specgen.bench.kernel_errors` (CPU: the interpreter; a GPU: compiled
kernels) runs a small matrix (similarity: B in 1/4/16, N not a multiple of the block, k from 1 to
64; tree attention: random trees with n 1/7/33, GQA ratio 1 and 3, prefix 0 and 50, grounding on)
and prints one JSON line per dtype. The tests assert tolerances; this reports the figures.
"""
from __future__ import annotations

import itertools
import json

import torch


def random_tree(n: int, gen: torch.Generator) -> torch.Tensor:
    """[n, n] bool ancestor-or-self mask of a random tree (node i's parent drawn below i)."""
    mask = torch.eye(n, dtype=torch.bool)
    for i in range(1, n):
        mask[i] |= mask[int(torch.randint(0, i, (1,), generator=gen))]
    return mask


def kernel_errors(device: str = "cpu", seed: int = 0) -> dict[str, dict[str, float]]:
    """{dtype: {similarity_score, attention_out, grounding}} maximum absolute errors."""
    from ..kernels.attention import tree_attention_triton
    from ..kernels.reference import similarity_topk_reference, tree_attention_reference
    from ..kernels.similarity import similarity_topk_triton

    gen = torch.Generator().manual_seed(seed)
    out: dict[str, dict[str, float]] = {}
    for dt in (torch.float32, torch.float16, torch.bfloat16):
        err = {"similarity_score": 0.0, "attention_out": 0.0, "grounding": 0.0}
        for b, n, k in ((1, 1000, 1), (16, 1000, 64), (4, 777, 8)):
            q = torch.randn(b, 64, generator=gen).to(device, dt)  # [B, d]
            keys = torch.randn(n, 64, generator=gen).to(device, dt)  # [N, d]
            s1, _ = similarity_topk_triton(q, keys, k)
            s0, _ = similarity_topk_reference(q, keys, k)
            err["similarity_score"] = max(err["similarity_score"], (s1.float() - s0.float()).abs().max().item())
        for (hq, hkv), n, prefix in itertools.product(((4, 4), (6, 2)), (1, 7, 33), (0, 50)):
            q = torch.randn(1, hq, n, 32, generator=gen).to(device, dt)  # [B, Hq, n, D]
            kv = torch.randn(2, 1, hkv, prefix + n, 32, generator=gen).to(device, dt)  # [2, B, Hkv, T, D]
            mask = random_tree(n, gen).to(device)  # [n, n]
            ge = prefix if prefix > 0 else None
            kw = dict(tree_mask=mask, prefix_len=prefix, scale=32 ** -0.5, grounding_end=ge)
            o1, g1 = tree_attention_triton(q, kv[0], kv[1], **kw)
            o0, g0 = tree_attention_reference(q, kv[0], kv[1], **kw)
            err["attention_out"] = max(err["attention_out"], (o1.float() - o0.float()).abs().max().item())
            if g0 is not None and g1 is not None:
                err["grounding"] = max(err["grounding"], (g1.float() - g0.float()).abs().max().item())
        out[str(dt).removeprefix("torch.")] = err
    return out


if __name__ == "__main__":
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    for dtype, errors in kernel_errors(dev).items():
        print(json.dumps({"device": dev, "dtype": dtype, **{k: float(f"{v:.3g}") for k, v in errors.items()}}))
