"""FAISS indexes over the stored keys: which type for which size, their defaults, and searching them.

Keys are L2-normalised fp16 vectors (manifest.py), so every index uses the inner-product metric and
scores are cosine similarities. Types:

- `flat`: exact. Nothing is written; on load an `IndexScalarQuantizer(QT_fp16)` is filled from
  keys.npy (exact on the stored fp16 keys, half the memory traffic of an fp32 `IndexFlatIP`).
- `hnsw`: `IndexHNSWSQ(QT_fp16)`, M=32, efConstruction=80, efSearch=max(64, 4k) at query time.
- `ivf`: `IndexIVFScalarQuantizer(QT_fp16)` (IVF-flat on the fp16 keys), nlist ~ 4 sqrt(N) (at least 39 training points per list), nprobe = nlist/8
  (at least 16).
- `ivfpq`: `IndexIVFPQ` (8-bit codes, ~8 dims per sub-quantizer), then an exact re-rank of the
  `rerank * k` best candidates against the memory-mapped fp16 keys: PQ keeps RAM small, the re-rank
  restores recall.

`auto` picks `flat` up to FLAT_MAX keys (exact, as the datastore issue asks: about 17 ms per query at
200k x 576 on this 2-core CPU, against 75-105 ms for a decode step (DESIGN.md section 7), and the
fused `similarity_topk` kernel on a GPU), `hnsw` up to HNSW_MAX, `ivfpq` beyond. Pass `hnsw`
explicitly to trade ~4% recall for 0.1 ms queries on CPU.
"""
from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import SpecgenError

INDEX_TYPES = ("auto", "flat", "hnsw", "ivf", "ivfpq")
FLAT_MAX = 200_000
HNSW_MAX = 4_000_000
_ADD_CHUNK = 65_536
_TRAIN_MAX = 262_144


def choose_index_type(requested: str, count: int) -> str:
    """Resolve `auto` by size; validate an explicit type."""
    if requested not in INDEX_TYPES:
        raise SpecgenError(f"unknown index type '{requested}' (choose from {', '.join(INDEX_TYPES)})")
    if requested != "auto":
        return requested
    if count <= FLAT_MAX:
        return "flat"
    return "hnsw" if count <= HNSW_MAX else "ivfpq"


def default_params(kind: str, count: int, dim: int) -> dict[str, Any]:
    """Construction and search parameters of `kind` for `count` keys of `dim` dimensions."""
    if kind == "flat":
        return {}
    if kind == "hnsw":
        return {"M": 32, "efConstruction": 80, "efSearch": 64}
    nlist = int(max(1, min(4 * math.sqrt(count), count // 39)))
    params: dict[str, Any] = {"nlist": nlist, "nprobe": min(nlist, max(16, nlist // 8))}
    if kind == "ivfpq":
        m = _pq_subquantizers(dim)
        nbits = int(min(8, max(4, math.floor(math.log2(max(count // 39, 16))))))
        params.update({"m": m, "nbits": nbits, "rerank": 16})
    return params


def _pq_subquantizers(dim: int) -> int:
    """Largest divisor of `dim` giving sub-vectors of at least 8 dims (one for tiny dims)."""
    target = max(1, dim // 8)
    for m in range(target, 0, -1):
        if dim % m == 0:
            return m
    return 1


def faiss_threads() -> int:
    """OpenMP threads for FAISS: `SPECGEN_FAISS_THREADS`, default 1.

    On this 2-core CPU one thread is faster for single queries (4 vs 12+ ms at 50k x 576) and for
    building; worse, FAISS's idle OpenMP workers spin and slowed the next torch forward 20x when
    FAISS had 2 threads (measured in the build: model pass 0.3 s -> 7.5 s).
    """
    return max(1, int(os.environ.get("SPECGEN_FAISS_THREADS", "1")))


def _faiss() -> Any:
    import faiss

    return faiss


@contextmanager
def faiss_omp() -> Iterator[None]:
    """Run FAISS with `faiss_threads()` OpenMP threads, then restore torch's count.

    FAISS and torch share libgomp's thread-count setting: `faiss.omp_set_num_threads(1)` alone would
    leave every later torch forward single-threaded.
    """
    import torch

    before = torch.get_num_threads()
    _faiss().omp_set_num_threads(faiss_threads())
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _chunks(keys: np.ndarray, size: int = _ADD_CHUNK) -> Any:
    for start in range(0, keys.shape[0], size):
        yield np.ascontiguousarray(keys[start: start + size], dtype=np.float32)  # [c, d]


def _train_sample(keys: np.ndarray, want: int, seed: int = 0) -> np.ndarray:
    n = keys.shape[0]
    if n <= want:
        return np.ascontiguousarray(keys, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(n, size=want, replace=False))
    return np.ascontiguousarray(keys[rows], dtype=np.float32)  # [want, d]


def _build_ann(kind: str, keys: np.ndarray, params: dict[str, Any],
              progress: Callable[[int, int], None] | None = None) -> Any:
    """A FAISS index of `kind` over `keys` [N, d] (fp16, normalised); None for `flat` (built on load)."""
    if kind == "flat":
        return None
    faiss = _faiss()
    n, d = keys.shape
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "hnsw":
        index = faiss.IndexHNSWSQ(d, faiss.ScalarQuantizer.QT_fp16, int(params["M"]), ip)
        index.hnsw.efConstruction = int(params["efConstruction"])
        index.hnsw.efSearch = int(params["efSearch"])
    elif kind in ("ivf", "ivfpq"):
        quantizer = faiss.IndexFlatIP(d)
        if kind == "ivf":
            index = faiss.IndexIVFScalarQuantizer(quantizer, d, int(params["nlist"]), faiss.ScalarQuantizer.QT_fp16, ip)
            index.by_residual = False  # fp16 codes of the keys themselves: exact on the stored keys
        else:
            index = faiss.IndexIVFPQ(quantizer, d, int(params["nlist"]), int(params["m"]), int(params["nbits"]), ip)
        want = max(64 * int(params["nlist"]), 256 * 2 ** int(params.get("nbits", 0)) if kind == "ivfpq" else 0)
        index.train(_train_sample(keys, min(_TRAIN_MAX, want)))
        index.nprobe = int(params["nprobe"])
    else:
        raise SpecgenError(f"unknown index type '{kind}'")
    done = 0
    for chunk in _chunks(keys):
        index.add(chunk)
        done += chunk.shape[0]
        if progress:
            progress(done, n)
    return index


def _flat_from_keys(keys: np.ndarray) -> Any:
    """Exact inner-product index over fp16 `keys` [N, d] (fp16 storage, fp32 arithmetic)."""
    faiss = _faiss()
    index = faiss.IndexScalarQuantizer(keys.shape[1], faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    for chunk in _chunks(keys):
        index.add(chunk)
    return index


def _parts(index: Any) -> list[Any]:
    """The index itself, or the shards of an `IndexShards` (shards.py), downcast to their types."""
    subs = getattr(index, "subs", None)
    return list(subs) if subs is not None else [index]


def _search_index(kind: str, index: Any, keys: np.ndarray, params: dict[str, Any], queries: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-`k` inner products of normalised `queries` [B, d] fp32: (scores [B, k] fp32, ids [B, k] int64).

    Missing results are (-inf, -1). For `ivfpq` the PQ candidates are re-scored exactly on `keys`.
    """
    k_eff = min(k, int(index.ntotal))
    if k_eff <= 0:
        return (np.full((queries.shape[0], k), -np.inf, dtype=np.float32),
                np.full((queries.shape[0], k), -1, dtype=np.int64))
    if kind == "hnsw":
        for sub in _parts(index):
            sub.hnsw.efSearch = max(int(params.get("efSearch", 64)), 4 * k_eff)
    if kind != "ivfpq":
        scores, ids = index.search(queries, k_eff)
    else:
        cand = min(int(index.ntotal), max(k_eff, int(params.get("rerank", 16)) * k_eff))
        _, cids = index.search(queries, cand)  # [B, cand]
        scores = np.full((queries.shape[0], k_eff), -np.inf, dtype=np.float32)
        ids = np.full((queries.shape[0], k_eff), -1, dtype=np.int64)
        for b in range(queries.shape[0]):
            row = cids[b][cids[b] >= 0]
            row = np.unique(row)  # sorted ids: sequential reads from the memory map
            exact = np.asarray(keys[row], dtype=np.float32) @ queries[b]  # [c]
            top = np.argsort(-exact, kind="stable")[:k_eff]
            scores[b, : top.size] = exact[top]
            ids[b, : top.size] = row[top]
    scores = np.where(ids >= 0, scores, -np.inf).astype(np.float32)
    if k_eff < k:
        pad = k - k_eff
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    return scores, ids.astype(np.int64)


def build_ann(kind: str, keys: np.ndarray, params: dict[str, Any], progress: Callable[[int, int], None] | None = None) -> Any:
    """A FAISS index of `kind` over `keys` [N, d] (fp16, normalised); None for `flat` (built on load)."""
    with faiss_omp():
        return _build_ann(kind, keys, params, progress)


def flat_from_keys(keys: np.ndarray) -> Any:
    """Exact inner-product index over fp16 `keys` [N, d] (fp16 storage, fp32 arithmetic)."""
    with faiss_omp():
        return _flat_from_keys(keys)


def search_index(kind: str, index: Any, keys: np.ndarray, params: dict[str, Any], queries: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-`k` inner products of normalised `queries` [B, d] fp32: (scores [B, k] fp32, ids [B, k] int64).

    Missing results are (-inf, -1). For `ivfpq` the PQ candidates are re-scored exactly on `keys`.
    """
    with faiss_omp():
        return _search_index(kind, index, keys, params, queries, k)
