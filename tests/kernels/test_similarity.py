"""similarity_topk: Triton kernel (interpreter on CPU) and torch reference against faiss.IndexFlatIP."""
from __future__ import annotations

import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import specgen.kernels as K
from specgen.kernels.reference import similarity_topk_reference
from specgen.kernels.similarity import similarity_topk_triton

# Scores are fp32 accumulations of exactly-representable products, so the tolerance covers
# summation order only (and faiss's own BLAS order); ids are compared up to ties.
TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def _faiss_topk(queries: torch.Tensor, keys: torch.Tensor, k: int, normalize: bool) -> tuple[np.ndarray, np.ndarray]:
    """faiss on the same (dtype-rounded) values in fp32: scores [B, k], ids [B, k]."""
    q = queries.to(keys.dtype).float()
    x = keys.float()
    if normalize:
        q, x = F.normalize(q, dim=-1), F.normalize(x, dim=-1)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(np.ascontiguousarray(x.cpu().numpy()))
    return index.search(np.ascontiguousarray(q.cpu().numpy()), k)


def _assert_matches_faiss(scores, ids, queries, keys, k, normalize, dtype) -> None:
    tol = TOL[dtype]
    assert scores.shape == (queries.shape[0], k) and scores.dtype == torch.float32
    assert ids.shape == (queries.shape[0], k) and ids.dtype == torch.int64
    n_ref = min(k + 1, keys.shape[0])  # one extra rank to tell ties at the k-th place
    f_scores, f_ids = _faiss_topk(queries, keys, n_ref, normalize)
    s, i = scores.cpu().numpy(), ids.cpu().numpy()
    np.testing.assert_allclose(s, f_scores[:, :k], atol=tol, rtol=tol)
    assert (np.diff(s, axis=1) <= 0).all(), "scores must be descending"
    # Every returned id must really have the returned score ...
    q = queries.to(keys.dtype).double()
    x = keys.double()
    if normalize:
        q, x = F.normalize(q, dim=-1), F.normalize(x, dim=-1)
    true = (q[:, None, :] * x[ids.cpu()]).sum(-1).numpy()  # [B, k]
    np.testing.assert_allclose(s, true, atol=tol, rtol=tol)
    for row in range(s.shape[0]):
        assert len(set(i[row])) == k, "ids must be distinct"
        # ... and where faiss's score at a rank is clear of both neighbours, the id must agree.
        fs = f_scores[row]
        for r in range(k):
            gap_prev = fs[r - 1] - fs[r] if r > 0 else np.inf
            gap_next = fs[r] - fs[r + 1] if r + 1 < len(fs) else np.inf
            if min(gap_prev, gap_next) > 2 * tol * max(1.0, abs(fs[r])):
                assert i[row, r] == f_ids[row, r], f"row {row} rank {r}"


def _data(b: int, n: int, d: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    queries = torch.randn(b, d, generator=g).to(device=device, dtype=dtype)
    keys = torch.randn(n, d, generator=g).to(device=device, dtype=dtype)
    return queries, keys


# (B, N, d, k): N never a multiple of the 64-key tile; k = 1 and k = 64 both present.
CASES = [(1, 1000, 64, 1), (16, 333, 48, 64), (5, 300, 40, 7)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("b,n,d,k", CASES)
@pytest.mark.parametrize("normalize", [False, True])
def test_triton_matches_faiss(device, dtype, b, n, d, k, normalize):
    queries, keys = _data(b, n, d, dtype, device)
    scores, ids = similarity_topk_triton(queries, keys, k, normalize=normalize)
    _assert_matches_faiss(scores, ids, queries, keys, k, normalize, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("normalize", [False, True])
def test_reference_matches_faiss(dtype, normalize):
    # A chunk smaller than N exercises the reference's running merge; k = 100 is above the Triton cap.
    queries, keys = _data(16, 1500, 32, dtype, torch.device("cpu"))
    for k in (1, 64, 100):
        scores, ids = similarity_topk_reference(queries, keys, k, normalize=normalize, chunk=256)
        _assert_matches_faiss(scores, ids, queries, keys, k, normalize, dtype)


def test_bitonic_selection_matches(device):
    """The GPU's tl.topk network (slow under the interpreter, so one small case)."""
    queries, keys = _data(3, 200, 32, torch.float32, device, seed=1)
    scores, ids = similarity_topk_triton(queries, keys, 8, bitonic=True)
    _assert_matches_faiss(scores, ids, queries, keys, 8, False, torch.float32)


@pytest.mark.parametrize("view", ["transposed", "row_step", "column_slice"])
def test_strided_keys(device, view):
    g = torch.Generator().manual_seed(2)
    base = torch.randn(600, 80, generator=g).to(device)
    keys = {
        "transposed": base[:, :40].T.contiguous().T,  # strides (1, 600)
        "row_step": base[::2, :40],  # strides (160, 1)
        "column_slice": base[5:505, 17:57],  # strides (80, 1), offset
    }[view]
    assert not keys.is_contiguous()
    queries = torch.randn(4, 40, generator=g).to(device)
    scores, ids = similarity_topk_triton(queries, keys, 10)
    _assert_matches_faiss(scores, ids, queries, keys, 10, False, torch.float32)


def test_k_equals_n_and_tiny_n(device):
    queries, keys = _data(2, 5, 16, torch.float32, device)
    scores, ids = similarity_topk_triton(queries, keys, 5)
    _assert_matches_faiss(scores, ids, queries, keys, 5, False, torch.float32)
    assert sorted(ids[0].tolist()) == list(range(5))


def test_errors(device):
    queries, keys = _data(2, 100, 16, torch.float32, device)
    with pytest.raises(ValueError, match="exceeds the number of keys"):
        similarity_topk_triton(queries, keys[:3], 4)
    with pytest.raises(ValueError, match="k <= 64"):
        similarity_topk_triton(queries, keys, 65)
    with pytest.raises(ValueError, match="dimension mismatch"):
        similarity_topk_reference(queries[:, :8], keys, 4)
    with pytest.raises(ValueError, match="positive"):
        similarity_topk_reference(queries, keys, 0)


def test_dispatcher(device, monkeypatch):
    queries, keys = _data(2, 130, 16, torch.float32, device)
    expected = similarity_topk_reference(queries, keys, 4)
    for mode in ("torch", "triton", "auto"):
        monkeypatch.setenv("SPECGEN_KERNELS", mode)
        scores, ids = K.similarity_topk(queries, keys, 4)
        torch.testing.assert_close(scores, expected[0], atol=1e-5, rtol=1e-5)
    monkeypatch.setenv("SPECGEN_KERNELS", "auto")
    assert K.backend()["cpu_backend"] == "torch"
    # k above the Triton cap: auto falls back to torch, forcing Triton fails loudly.
    assert K.similarity_topk(queries, keys, 100)[0].shape == (2, 100)
    monkeypatch.setenv("SPECGEN_KERNELS", "triton")
    with pytest.raises(ValueError, match="k <= 64"):
        K.similarity_topk(queries, keys, 100)
    monkeypatch.setenv("SPECGEN_KERNELS", "cuda")
    with pytest.raises(ValueError, match="SPECGEN_KERNELS"):
        K.similarity_topk(queries, keys, 4)
