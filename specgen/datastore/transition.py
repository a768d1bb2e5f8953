"""A linear model of the target's next hidden state, fitted on a datastore (`sense`'s transition source).

`sense` queries with the hidden state h_t that predicted the pending token p; the state the target
will hold after reading p, h_{t+1}, comes only from the next forward. Replayed with the true
h_{t+1} as one more query, the paraphrase suite's tune half (node budget 16) rises 1.94 -> 2.13 on
the 135M and 2.24 -> 2.61 on Qwen2.5-Coder-1.5B (README, Results), where every change to ranking
and alignment had plateaued within 0.03: the token after the pending one needs information that
h_t and p alone, searched apart, do not give.

A datastore stores the keys of consecutive positions of each document, so the pairs
(key_i, token_{i+1}) -> key_{i+1} fit a ridge regression in closed form (no gradient training):

    k_{i+1} ~ W^T [k_i ; e(p) / |e(p)| ; 1]

with normalised keys in the index's own space (after its projection, if any) and e the target's
input embedding of the token that followed key i. A one-step linear analogue of EAGLE's
feature-level draft head (Li et al., 2024, "EAGLE: Speculative Sampling Requires Rethinking Feature
Uncertainty"), which learns the same transition with a transformer layer. The fitted W is cached in
the index folder (written atomically), so a datastore is fitted once.
"""
from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field

import numpy as np
import torch

from ..fileio import atomic_write_bytes
from .store import SemanticIndex

_CHUNK = 4096  # rows per block of the normal equations: bounds the fit's memory at any datastore size
_TOKEN_TERMS_BYTES = 32 << 20  # most memory a map spends on its per-token terms


@dataclass(frozen=True)
class TransitionMap:
    """W [d + H + 1, d] fp32 over the index's key space (d) and the target's embeddings [V, H]."""

    weight: torch.Tensor  # [d + H + 1, d] fp32, CPU
    embeddings: torch.Tensor  # [V, H] the target's input embeddings, any device and dtype
    # token -> e(p) / |e(p)| @ W_e + b [d]: a pending token's whole share of the prediction. Tokens
    # recur, and each term reads H x d weights (half of W: ~9 MB on the 1.5B), so a step whose token
    # was seen before reads only the query's half. Oldest first out, within _TOKEN_TERMS_BYTES.
    token_terms: dict[int, torch.Tensor] = field(default_factory=dict, compare=False, repr=False)
    terms_lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def predict(self, query: np.ndarray, token: int) -> np.ndarray:
        """A prepared query [d] (normalised, in key space) and the pending token -> the predicted
        next state [d], normalised: a query for the index and for prepared context states."""
        q = torch.from_numpy(np.asarray(query, dtype=np.float32).reshape(-1))  # [d]
        assert q.shape[0] + self.embeddings.shape[1] + 1 == self.weight.shape[0], "query width != map width"
        d = q.shape[0]
        term = self.token_terms.get(token)  # [d]
        if term is None:
            e = torch.nn.functional.normalize(self.embeddings[token].detach().to("cpu", torch.float32), dim=0)  # [H]
            term = e @ self.weight[d:-1] + self.weight[-1]  # [d]
            with self.terms_lock:  # generations on several threads may share one map (load_transition)
                if self.token_terms and len(self.token_terms) * d * 4 >= _TOKEN_TERMS_BYTES:
                    del self.token_terms[next(iter(self.token_terms))]
                self.token_terms[token] = term
        out = q @ self.weight[:d] + term  # [d]
        return torch.nn.functional.normalize(out, dim=0).numpy()


def training_rows(index: SemanticIndex, max_rows: int, seed: int = 0) -> np.ndarray:
    """Key ids i [m] whose successor key i + 1 lies in the same document (at most `max_rows`,
    a seeded sample, ascending)."""
    n = len(index)
    if n < 2:
        return np.zeros(0, dtype=np.int64)
    last = np.asarray(index.doc_offsets[1:], dtype=np.int64) - 1  # [D] each document's last key
    ok = np.ones(n - 1, dtype=bool)  # [N - 1]
    ok[last[(last >= 0) & (last < n - 1)]] = False
    rows = np.flatnonzero(ok)  # [m]
    if rows.size > max_rows:
        rows = np.sort(np.random.default_rng(seed).choice(rows, size=max_rows, replace=False))
    return rows


def fit_transition(index: SemanticIndex, embeddings: torch.Tensor, ridge: float, max_rows: int) -> TransitionMap | None:
    """Ridge fit of W (module docstring) on up to `max_rows` consecutive key pairs of `index`; None
    when the datastore holds no such pair."""
    rows = training_rows(index, max_rows)  # [m]
    if rows.size == 0:
        return None
    d, h = index.manifest.dim, int(embeddings.shape[1])
    # A host-side fit, like the FAISS search it serves: every tensor here is named onto the CPU.
    cpu = torch.device("cpu")
    gram = torch.zeros(d + h + 1, d + h + 1, dtype=torch.float64, device=cpu)  # [F, F]
    cross = torch.zeros(d + h + 1, d, dtype=torch.float64, device=cpu)  # [F, d]
    for lo in range(0, rows.size, _CHUNK):
        ids = rows[lo: lo + _CHUNK]  # [c]
        nxt = torch.from_numpy(np.asarray(index.values[ids, 0], dtype=np.int64))  # [c] token after key i
        e = embeddings[nxt.to(embeddings.device)].detach().to("cpu", torch.float32)  # [c, H]
        x = torch.cat([torch.from_numpy(np.asarray(index.keys[ids])).float(),
                       torch.nn.functional.normalize(e, dim=1), torch.ones(ids.size, 1, device=cpu)], 1).double()  # [c, F]
        y = torch.from_numpy(np.asarray(index.keys[ids + 1])).double()  # [c, d]
        gram += x.T @ x
        cross += x.T @ y
    gram += ridge * torch.eye(gram.shape[0], dtype=torch.float64, device=cpu)
    weight = torch.linalg.solve(gram, cross).float()  # [F, d]
    return TransitionMap(weight, embeddings)


def load_transition(index: SemanticIndex, embeddings: torch.Tensor, ridge: float, max_rows: int) -> TransitionMap | None:
    """The fitted map of `index` for these options: from this process's cache, else the index
    folder's cached file, else fitted now (and cached in both; a read-only folder keeps it in memory).
    A cache file of the wrong shape or unreadable is fitted again."""
    name = f"transition-r{ridge:g}-n{max_rows}.npy"
    width = index.manifest.dim + int(embeddings.shape[1]) + 1
    cached = index.derived.get(name)
    if cached is None:
        path = index.path / name
        try:
            arr = np.load(path, allow_pickle=False)
            if arr.shape == (width, index.manifest.dim) and np.isfinite(arr).all():
                cached = torch.from_numpy(np.asarray(arr, dtype=np.float32))
        except (OSError, ValueError, EOFError):
            cached = None
        if cached is None:
            fitted = fit_transition(index, embeddings, ridge, max_rows)
            if fitted is None:
                return None
            cached = fitted.weight
            buf = io.BytesIO()
            np.save(buf, cached.numpy())
            try:
                atomic_write_bytes(path, buf.getvalue())
            except OSError:
                pass  # a read-only datastore: the fit stays in this process
        index.derived[name] = cached
    assert cached.shape == (width, index.manifest.dim), "a cached map of another width: the index changed models"
    # One map per (index, embeddings) in this process, so a server's requests share its token terms.
    shared = index.derived.get(name + "#map")
    if not (isinstance(shared, TransitionMap) and shared.weight is cached and shared.embeddings is embeddings):
        shared = TransitionMap(cached, embeddings)
        index.derived[name + "#map"] = shared
    return shared
