"""Kernel micro-benchmark: Triton kernels vs their torch references vs the usual baselines.

similarity_topk is timed against similarity_topk_reference and faiss.IndexFlatIP (search only, the
index is built outside the timer); tree_attention (with grounding) against tree_attention_reference
and torch SDPA with a dense [n, T] boolean mask (which cannot return grounding). Every row also
carries the maximum absolute error against the reference.

On CPU the Triton rows run in the Triton *interpreter* (numpy, one program at a time): they check
that the kernels run and agree, and the result's "note" says that no speed claim is made. The CPU
sweep is tiny so that the whole run stays well under a minute. This module prints nothing; the CLI
renders `render_kernel_bench(run_kernel_bench())`.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from rich.table import Table

Timer = Callable[[Callable[[], object]], float]
TritonModules = tuple[ModuleType, ModuleType] | str  # (similarity, attention) or why not available

CPU_NOTE = (
    "CPU run: the Triton rows time the Triton interpreter (numpy, one program at a time), not "
    "compiled kernels. They show the kernels run and agree with the reference; no speed claim is made."
)
GPU_NOTE = "GPU run: compiled Triton kernels (autotuned, first call excluded); faiss-cpu runs on the host."


@dataclass(frozen=True)
class SimilarityCase:
    b: int
    n: int
    d: int
    k: int
    dtype: torch.dtype = torch.float32

    def label(self) -> str:
        return f"B={self.b} N={self.n} d={self.d} k={self.k}"


@dataclass(frozen=True)
class AttentionCase:
    b: int
    hq: int
    hkv: int
    n: int
    prefix: int
    dim: int
    dtype: torch.dtype = torch.float32

    def label(self) -> str:
        return f"B={self.b} H={self.hq}/{self.hkv} n={self.n} prefix={self.prefix} D={self.dim}"


CPU_SIMILARITY = (SimilarityCase(1, 1024, 64, 8), SimilarityCase(16, 2048, 64, 16))
CPU_ATTENTION = (AttentionCase(1, 4, 2, 8, 64, 32), AttentionCase(1, 4, 2, 16, 192, 32))
GPU_SIMILARITY = (
    SimilarityCase(1, 262_144, 256, 16, torch.float16),
    SimilarityCase(16, 1_048_576, 256, 32, torch.float16),
    SimilarityCase(16, 1_048_576, 768, 64, torch.float16),
)
GPU_ATTENTION = tuple(
    AttentionCase(1, 32, 8, n, prefix, 128, torch.bfloat16) for n in (16, 64) for prefix in (1024, 4096, 16384)
)


def _timer(device: torch.device, repeats: int) -> Timer:
    """Median milliseconds of fn() after one warm-up call (which also autotunes/compiles)."""

    def run(fn: Callable[[], object]) -> float:
        fn()
        if device.type == "cuda":
            import triton.testing

            return float(triton.testing.do_bench(fn, warmup=5, rep=max(20, 5 * repeats)))
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    return run


def _triton_modules(device: torch.device) -> TritonModules:
    """Import the Triton kernel modules (interpreter mode on CPU), or say why they cannot run."""
    from specgen.kernels import _dispatch

    if not _dispatch.triton_available():
        return "triton not installed"
    if device.type == "cpu" and "specgen.kernels.similarity" not in sys.modules:
        # Must precede the first import: Triton reads it when the kernels are decorated.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from specgen.kernels import attention, similarity

    interpreted = type(similarity._similarity_topk_kernel).__name__ == "InterpretedFunction"
    if device.type == "cpu" and not interpreted:
        return "Triton kernels were loaded without TRITON_INTERPRET=1; cannot run on CPU"
    return similarity, attention


def _similarity_rows(
    case: SimilarityCase, device: torch.device, timer: Timer, triton_mods: TritonModules
) -> list[dict]:
    from specgen.kernels import similarity_topk_reference

    gen = torch.Generator().manual_seed(0)
    queries = torch.randn(case.b, case.d, generator=gen).to(device, case.dtype)
    keys = torch.randn(case.n, case.d, generator=gen).to(device, case.dtype)
    ref_scores, _ = similarity_topk_reference(queries, keys, case.k)
    base = {"kernel": "similarity_topk", "shape": case.label(), "dtype": str(case.dtype).removeprefix("torch.")}
    ref_ms = timer(lambda: similarity_topk_reference(queries, keys, case.k))
    rows = [{**base, "impl": "torch reference", "ms": ref_ms, "max_abs_err": 0.0}]
    if isinstance(triton_mods, str):
        rows.append({**base, "impl": "triton", "ms": None, "max_abs_err": None, "skipped": triton_mods})
    else:
        fn = triton_mods[0].similarity_topk_triton
        scores, _ = fn(queries, keys, case.k)
        err = (scores - ref_scores).abs().max().item()
        rows.append({**base, "impl": "triton", "ms": timer(lambda: fn(queries, keys, case.k)), "max_abs_err": err})
    try:
        import faiss
    except ImportError:
        rows.append({**base, "impl": "faiss.IndexFlatIP", "ms": None, "max_abs_err": None, "skipped": "faiss missing"})
        return rows
    index = faiss.IndexFlatIP(case.d)
    index.add(keys.float().cpu().numpy())
    q_np = queries.float().cpu().numpy()
    f_scores, _ = index.search(q_np, case.k)
    err = (torch.from_numpy(f_scores).to(device) - ref_scores).abs().max().item()
    faiss_ms = timer(lambda: index.search(q_np, case.k))
    rows.append({**base, "impl": "faiss.IndexFlatIP (cpu)", "ms": faiss_ms, "max_abs_err": err})
    return rows


def _attention_rows(
    case: AttentionCase, device: torch.device, timer: Timer, triton_mods: TritonModules
) -> list[dict]:
    from specgen.kernels import tree_attention_reference
    from specgen.kernels.reference import build_allowed_mask

    gen = torch.Generator().manual_seed(0)
    t_len = case.prefix + case.n
    q = torch.randn(case.b, case.hq, case.n, case.dim, generator=gen).to(device, case.dtype)
    k = torch.randn(case.b, case.hkv, t_len, case.dim, generator=gen).to(device, case.dtype)
    v = torch.randn(case.b, case.hkv, t_len, case.dim, generator=gen).to(device, case.dtype)
    # A binary-ish tree: node i hangs off node (i - 1) // 2, the worst case for a causal kernel.
    tree = torch.zeros(case.n, case.n, dtype=torch.bool, device=device)  # [n, n]
    for i in range(case.n):
        j = i
        while j >= 0:
            tree[i, j] = True
            j = (j - 1) // 2 if j > 0 else -1
    kw = dict(tree_mask=tree, prefix_len=case.prefix, scale=case.dim**-0.5, grounding_end=case.prefix)
    ref_out, _ = tree_attention_reference(q, k, v, **kw)
    base = {"kernel": "tree_attention", "shape": case.label(), "dtype": str(case.dtype).removeprefix("torch.")}
    ref_ms = timer(lambda: tree_attention_reference(q, k, v, **kw))
    rows = [{**base, "impl": "torch reference (+grounding)", "ms": ref_ms, "max_abs_err": 0.0}]
    if isinstance(triton_mods, str):
        rows.append({**base, "impl": "triton (+grounding)", "ms": None, "max_abs_err": None, "skipped": triton_mods})
    else:
        fn = triton_mods[1].tree_attention_triton
        out = torch.empty_like(q)
        fn(q, k, v, out=out, **kw)
        err = (out.float() - ref_out.float()).abs().max().item()
        triton_ms = timer(lambda: fn(q, k, v, out=out, **kw))
        rows.append({**base, "impl": "triton (+grounding)", "ms": triton_ms, "max_abs_err": err})
    dense = build_allowed_mask(tree, case.prefix)  # [n, T]
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def run_sdpa() -> torch.Tensor:
        return sdpa(q, k, v, attn_mask=dense, scale=case.dim**-0.5, enable_gqa=True)

    err = (run_sdpa().float() - ref_out.float()).abs().max().item()
    rows.append({**base, "impl": "torch SDPA (dense mask, no grounding)", "ms": timer(run_sdpa), "max_abs_err": err})
    return rows


def run_kernel_bench(
    device: str | None = None,
    *,
    similarity_cases: tuple[SimilarityCase, ...] | None = None,
    attention_cases: tuple[AttentionCase, ...] | None = None,
    repeats: int | None = None,
) -> dict:
    """Time the kernels over a size sweep on `device` (default: cuda when available, else cpu).

    Returns {"device", "interpreter", "note", "rows": [{kernel, shape, dtype, impl, ms,
    max_abs_err[, skipped]}]}; ms is a median, max_abs_err is against the torch reference.
    """
    from ..device import resolve_device

    dev = resolve_device(device or "auto")
    on_gpu = dev.type == "cuda"
    sims = similarity_cases or (GPU_SIMILARITY if on_gpu else CPU_SIMILARITY)
    attns = attention_cases or (GPU_ATTENTION if on_gpu else CPU_ATTENTION)
    timer = _timer(dev, repeats or (20 if on_gpu else 3))
    triton_mods = _triton_modules(dev)
    rows: list[dict] = []
    with torch.no_grad():
        for case in sims:
            rows += _similarity_rows(case, dev, timer, triton_mods)
        for case in attns:
            rows += _attention_rows(case, dev, timer, triton_mods)
    return {
        "device": torch.cuda.get_device_name(dev) if on_gpu else "cpu",
        "interpreter": not on_gpu,
        "torch_threads": torch.get_num_threads(),
        "note": GPU_NOTE if on_gpu else CPU_NOTE,
        "similarity_cases": [asdict(c) | {"dtype": str(c.dtype)} for c in sims],
        "attention_cases": [asdict(c) | {"dtype": str(c.dtype)} for c in attns],
        "rows": rows,
    }


def render_kernel_bench(result: dict | list[dict]) -> Table:
    """A rich table of run_kernel_bench's rows (pass the whole result to get its note as caption)."""
    from rich.table import Table

    rows = result["rows"] if isinstance(result, dict) else result
    title = "specgen kernels" + (f" on {result['device']}" if isinstance(result, dict) else "")
    table = Table(title=title, caption=result.get("note") if isinstance(result, dict) else None)
    for col, justify in (("kernel", "left"), ("shape", "left"), ("dtype", "left"), ("impl", "left"),
                         ("ms (median)", "right"), ("max |err| vs ref", "right")):  # fmt: skip
        table.add_column(col, justify=justify)
    for row in rows:
        ms = f"{row['ms']:.3f}" if row.get("ms") is not None else f"skipped: {row.get('skipped', '')}"
        err = f"{row['max_abs_err']:.2e}" if row.get("max_abs_err") is not None else "-"
        table.add_row(row["kernel"], row["shape"], row["dtype"], row["impl"], ms, err)
    return table
