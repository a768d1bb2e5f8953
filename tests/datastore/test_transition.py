"""`sense`'s transition map: the ridge fit against an independent solve, what it predicts, its cache,
and the proposer source that drafts from the predicted state."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from specgen.datastore import IndexBuildConfig, SemanticIndex, build_index
from specgen.datastore import transition as tr
from specgen.models import ModelBundle
from specgen.proposers.base import ProposeContext
from specgen.proposers.registry import get_method
from specgen.proposers.sense import SenseConfig, SenseProposer


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tok: Any, model: Any) -> dict[str, Path]:
    """Two indexes of the same two-document corpus: plain, and PCA-projected to 16 dimensions."""
    from _tiny import stdlib_sources

    root = tmp_path_factory.mktemp("transition")
    corpus = root / "corpus"
    corpus.mkdir()
    for src in stdlib_sources()[1:3]:
        (corpus / src.name).write_text(src.read_text()[:20000])
    out = {}
    for name, extra in (("plain", {}), ("pca", {"pca": 16})):
        out[name] = root / name
        build_index(model, tok, corpus, out[name], IndexBuildConfig(window=256, overlap=64, batch_tokens=1024, **extra))
    return out


def _embeddings(model: Any) -> torch.Tensor:
    return model.get_input_embeddings().weight  # [V, H]


def test_training_rows_never_cross_a_document(built: dict[str, Path]) -> None:
    idx = SemanticIndex.load(built["plain"])
    rows = tr.training_rows(idx, max_rows=10**9)  # [m]
    offsets = np.asarray(idx.doc_offsets)
    doc = np.searchsorted(offsets, np.arange(len(idx)), side="right") - 1  # [N] each key's document
    assert idx.manifest.documents >= 2
    assert rows.size == len(idx) - idx.manifest.documents  # every key but each document's last
    assert np.all(doc[rows] == doc[rows + 1])
    sample = tr.training_rows(idx, max_rows=100)
    assert sample.size == 100 and np.all(np.diff(sample) > 0) and np.isin(sample, rows).all()
    assert np.array_equal(sample, tr.training_rows(idx, max_rows=100))  # seeded


@pytest.mark.parametrize("name", ["plain", "pca"])
def test_fit_equals_an_independent_ridge_solve(built: dict[str, Path], model: Any, name: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunked normal equations (several chunks here) against lstsq on the augmented system
    [X; sqrt(ridge) I] W = [Y; 0], built in numpy from the stored arrays."""
    monkeypatch.setattr(tr, "_CHUNK", 257)
    idx = SemanticIndex.load(built[name])
    ridge, rows = 0.5, 1500
    fitted = tr.fit_transition(idx, _embeddings(model), ridge, rows)
    assert fitted is not None
    ids = tr.training_rows(idx, rows)
    emb = _embeddings(model).detach().double().numpy()[np.asarray(idx.values[ids, 0], dtype=np.int64)]  # [m, H]
    x = np.concatenate([np.asarray(idx.keys[ids], dtype=np.float64),
                        emb / np.linalg.norm(emb, axis=1, keepdims=True), np.ones((ids.size, 1))], axis=1)  # [m, F]
    y = np.asarray(idx.keys[ids + 1], dtype=np.float64)  # [m, d]
    f = x.shape[1]
    want = np.linalg.lstsq(np.concatenate([x, np.sqrt(ridge) * np.eye(f)]),
                           np.concatenate([y, np.zeros((f, y.shape[1]))]), rcond=None)[0]  # [F, d]
    assert fitted.weight.shape == (idx.manifest.dim + _embeddings(model).shape[1] + 1, idx.manifest.dim)
    np.testing.assert_allclose(fitted.weight.numpy(), want, rtol=1e-3, atol=1e-4)


def test_prediction_is_nearer_the_next_key_than_the_query(built: dict[str, Path], model: Any) -> None:
    """On keys the fit did not see, the predicted state is closer to the true next key than the
    query key itself is (the drift a search with the query alone leaves)."""
    idx = SemanticIndex.load(built["plain"])
    every = tr.training_rows(idx, 10**9)
    seen = tr.training_rows(idx, every.size // 2)
    held = np.setdiff1d(every, seen)[:300]
    fitted = tr.fit_transition(idx, _embeddings(model), 1.0, every.size // 2)
    assert fitted is not None
    keys = np.asarray(idx.keys, dtype=np.float32)
    pred = np.stack([fitted.predict(keys[i], int(idx.values[i, 0])) for i in held])  # [m, d]
    assert np.allclose(np.linalg.norm(pred, axis=1), 1.0, atol=1e-5)
    gain = (pred * keys[held + 1]).sum(1).mean() - (keys[held] * keys[held + 1]).sum(1).mean()
    assert gain > 0.05, gain


def test_the_fit_is_cached_in_the_folder_and_refitted_when_unreadable(built: dict[str, Path], model: Any,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    idx = SemanticIndex.load(built["plain"])
    first = tr.load_transition(idx, _embeddings(model), 1.0, 1000)
    assert first is not None
    cache = built["plain"] / "transition-r1-n1000.npy"
    assert cache.is_file() and not list(built["plain"].glob(".transition-*"))  # written whole, no temp left
    # a fresh load reads the file: fitting again would fail the test
    monkeypatch.setattr(tr, "fit_transition", lambda *a: pytest.fail("refitted despite a valid cache"))
    again = tr.load_transition(SemanticIndex.load(built["plain"]), _embeddings(model), 1.0, 1000)
    assert again is not None and torch.equal(again.weight, first.weight)
    monkeypatch.undo()
    cache.write_bytes(b"not a numpy file")
    refit = tr.load_transition(SemanticIndex.load(built["plain"]), _embeddings(model), 1.0, 1000)
    assert refit is not None and torch.allclose(refit.weight, first.weight)
    assert np.load(cache).shape == tuple(first.weight.shape)  # the bad file was replaced

    # a folder that cannot be written keeps the fit in the process
    def refuse(*a: Any) -> None:
        raise OSError("read-only")
    monkeypatch.setattr(tr, "atomic_write_bytes", refuse)
    fresh = SemanticIndex.load(built["plain"])
    kept = tr.load_transition(fresh, _embeddings(model), 2.0, 1000)
    assert kept is not None and not (built["plain"] / "transition-r2-n1000.npy").exists()
    assert fresh.derived["transition-r2-n1000.npy"] is kept.weight


class _Exact:
    """A stand-in map that predicts exactly a chosen prepared state."""

    def __init__(self, state: np.ndarray) -> None:
        self.state = state

    def predict(self, query: np.ndarray, token: int) -> np.ndarray:
        return self.state


def test_sense_drafts_what_followed_the_predicted_state(built: dict[str, Path], tok: Any, model: Any) -> None:
    idx = SemanticIndex.load(built["plain"])
    j = 300  # the predicted state is key j: its stored continuation drafts after the pending token
    want = np.asarray(idx.values[j, :6]).tolist()
    rng = torch.Generator().manual_seed(0)
    query = torch.randn(idx.manifest.hidden_size, generator=rng)  # near nothing in particular
    pending = int(idx.tokens[10])
    # floors that no neighbour of the random query reaches: only the predicted state drafts
    cfg = SenseConfig(index=str(built["plain"]), use_context=False, min_score=0.0, min_similarity=0.999,
                      align_min_similarity=0.999, transition_min_similarity=0.99)
    on = SenseProposer(cfg, idx, _Exact(np.asarray(idx.keys[j], dtype=np.float32)))  # type: ignore[arg-type]
    ctx = ProposeContext(tokens=[1, 2, pending], prompt_len=1, budget=6, hidden=query)
    assert want in on.propose(ctx).sequences
    assert len(SenseProposer(cfg, idx, None).propose(ctx)) == 0  # no map, no such draft
    off = dataclasses.replace(cfg, transition=False)
    assert len(SenseProposer(off, idx, _Exact(np.asarray(idx.keys[j])))  # type: ignore[arg-type]
               .propose(ctx)) == 0
    # the live context: a committed position whose state is the predicted one drafts what followed it
    seq = idx.tokens[2000:2040].tolist()
    hs = torch.nn.functional.normalize(torch.randn(39, idx.manifest.hidden_size, generator=rng), dim=-1)  # [39, H]
    ctx_cfg = dataclasses.replace(cfg, use_context=True)
    proposer = SenseProposer(ctx_cfg, idx, _Exact(hs[20].numpy()))  # type: ignore[arg-type]
    got = proposer.propose(ProposeContext(tokens=seq, prompt_len=5, budget=6, hidden=query, context_hidden=hs))
    assert got.sequences == [seq[21:27]]


def test_make_sense_fits_the_map_for_its_index(built: dict[str, Path], tok: Any, model: Any) -> None:
    bundle = ModelBundle(model=model, tokenizer=tok, name="tiny", path=None)
    made = get_method("sense").factory(bundle, SenseConfig(index=str(built["plain"])))
    assert isinstance(made.transition, tr.TransitionMap)
    assert made.transition.weight.shape[1] == SemanticIndex.load(built["plain"]).manifest.dim
    assert get_method("sense").factory(bundle, SenseConfig(index=str(built["plain"]), transition=False)).transition is None
    assert get_method("sense").factory(bundle, SenseConfig()).transition is None  # context only: nothing to fit on


@pytest.mark.parametrize("name", ["plain", "pca"])
def test_context_keys_kept_across_steps_draft_as_prepared_afresh(built: dict[str, Path], tok: Any, model: Any,
                                                                  name: str) -> None:
    """The transition source prepares each live-context position once per request; over a growing
    context its candidates equal those of a proposer that prepares the whole context at every step."""
    bundle = ModelBundle(model=model, tokenizer=tok, name="tiny", path=None)
    idx = SemanticIndex.load(built[name])
    # every step searches with the prediction, and a low floor lets the context side draft
    cfg = SenseConfig(index=str(built[name]), min_score=0.0, transition_below=1e9, transition_min_similarity=-1.0)
    carried = get_method("sense").factory(bundle, cfg)
    seq = np.asarray(idx.tokens[100:400]).tolist()  # a real token stream, so tokens repeat
    hs = torch.randn(len(seq), idx.manifest.hidden_size, generator=torch.Generator().manual_seed(3))  # [T, H]
    carried.reset(seq[:20])
    drafted = 0
    for n in range(20, 260, 7):  # positions [0, n) have KV, seq[n] is pending
        ctx = ProposeContext(tokens=seq[: n + 1], prompt_len=20, budget=8, hidden=hs[n - 1], context_hidden=hs[:n])
        fresh = get_method("sense").factory(bundle, cfg)
        fresh.reset(seq[:20])
        got, want = carried.propose(ctx), fresh.propose(ctx)
        assert got.sequences == want.sequences
        assert got.scores == pytest.approx(want.scores, rel=1e-5, abs=1e-6)
        drafted += len(got)
    assert drafted > 0


def test_token_terms_kept_per_token_predict_as_the_whole_formula(built: dict[str, Path], model: Any,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A pending token's share of the prediction is computed once and kept (within a byte bound);
    predictions equal W^T [q; e(p)/|e(p)|; 1] computed whole, and every load of the index's map in
    the process returns the one map."""
    idx = SemanticIndex.load(built["plain"])
    fitted = tr.load_transition(idx, _embeddings(model), 1.0, 1000)
    assert fitted is not None and tr.load_transition(idx, _embeddings(model), 1.0, 1000) is fitted
    d = idx.manifest.dim
    monkeypatch.setattr(tr, "_TOKEN_TERMS_BYTES", 3 * d * 4)  # room for three tokens' terms
    keys = np.asarray(idx.keys[:40], dtype=np.float32)
    tokens = [5, 7, 5, 9, 11, 5, 7, 7, 13, 5]
    for i, t in enumerate(tokens):
        e = torch.nn.functional.normalize(_embeddings(model)[t].detach().float(), dim=0)
        x = torch.cat([torch.from_numpy(keys[i]), e, torch.ones(1)])  # [F]
        want = torch.nn.functional.normalize(x @ fitted.weight, dim=0).numpy()
        np.testing.assert_allclose(fitted.predict(keys[i], t), want, rtol=1e-4, atol=1e-5)
        assert t in fitted.token_terms and len(fitted.token_terms) <= 3
