"""Semantic index: build, reload, search, append, recall, atomicity and every bad input."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from _tiny import stdlib_sources, tiny_model
from specgen.datastore import IndexBuildConfig, SemanticIndex, build_index, identity_of, read_manifest
from specgen.datastore import ann
from specgen.datastore.build import hidden_states
from specgen.errors import SpecgenError

SMALL = IndexBuildConfig(window=256, overlap=64, batch_tokens=1024)


def _doc_hidden(model: Any, ids: list[int], layer: int = -1) -> torch.Tensor:
    """Fresh hidden states [T, H] of one document, computed apart from the build."""
    t = torch.tensor([ids])
    return hidden_states(model, t, torch.ones_like(t), layer)[0]


def _recall_at_8(keys: np.ndarray, queries: np.ndarray, scores: np.ndarray) -> float:
    """Share of the approximate top-8 scoring at least the exact 8th best (ties count as hits)."""
    exact = np.sort(keys @ queries.T, axis=0)[::-1][7]  # [B]
    return float(np.mean((scores[:, :8] >= exact[:, None] - 1e-4).sum(axis=1) / 8))


def test_own_position_is_retrieved_first(big_index: Path, tok: Any, model: Any) -> None:
    idx = SemanticIndex.load(big_index)
    ids = idx.tokens[:512].tolist()  # the first window of the document: same context as in the build
    hs = _doc_hidden(model, ids)  # [512, H]
    positions = np.arange(20, 500, 37)
    scores, got = idx.search(hs[positions], k=4)
    keys = np.asarray(idx.keys, dtype=np.float32)
    for p, row, s in zip(positions, got, scores):
        assert row[0] == p or np.allclose(keys[row[0]], keys[p], atol=1e-3)
        assert s[0] == pytest.approx(1.0, abs=1e-2)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "ivfpq"])
def test_approximate_recall_at_default_settings(big_index: Path, kind: str) -> None:
    idx = SemanticIndex.load(big_index)
    keys = np.asarray(idx.keys, dtype=np.float32)  # [N, d]
    rng = np.random.default_rng(0)
    # queries: corpus keys perturbed (not exactly stored points), normalised
    q = keys[rng.choice(len(keys), 200, replace=False)] + 0.05 * rng.standard_normal((200, keys.shape[1])).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    params = ann.default_params(kind, len(keys), keys.shape[1])
    index = ann.build_ann(kind, idx.keys, params)
    scores, _ = ann.search_index(kind, index, idx.keys, params, np.ascontiguousarray(q), 8)
    assert _recall_at_8(keys, q, scores) >= 0.9


def test_round_trip(small_corpus: Path, tmp_path: Path, tok: Any, model: Any) -> None:
    calls: list[tuple[int, int]] = []
    out = tmp_path / "idx"
    man = build_index(model, tok, small_corpus, out, IndexBuildConfig(index_type="hnsw", window=256, overlap=64,
                                                                     batch_tokens=1024, continuation_len=8),
                      progress=lambda d, t: calls.append((d, t)))
    assert calls[-1][0] == calls[-1][1] == man.count and man.count > 5000
    idx = SemanticIndex.load(out, expected_identity=identity_of(model, tok), layer=-1)
    assert idx.manifest.index["type"] == "hnsw" and idx.keys.shape == (man.count, 64)
    norms = np.linalg.norm(np.asarray(idx.keys, dtype=np.float32), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-2)  # every position has a key, long documents included
    # values: the next L tokens of the document, -1 past its end
    offs = idx.doc_offsets
    cont = idx.continuations(np.array([0, int(offs[1]) - 3, int(offs[1]) - 1, -1]))  # [4, 8]
    assert cont[0].tolist() == idx.tokens[1:9].tolist()
    assert cont[1].tolist() == idx.tokens[int(offs[1]) - 2: int(offs[1])].tolist() + [-1] * 6
    assert (cont[2] == -1).all() and (cont[3] == -1).all()
    ids = idx.tokens[int(offs[1]): int(offs[1]) + 200].tolist()
    scores, got = idx.search(_doc_hidden(model, ids)[150:151], k=8)
    assert got[0, 0] == int(offs[1]) + 150
    m = read_manifest(out)
    assert m.format_version == 1 and m.layer == -1 and m.dim == 64 and m.count == len(idx.tokens)
    assert {f["path"] for f in m.corpus} == {p.name for p in small_corpus.iterdir()}
    assert m.build["tokens_per_s"] > 0 and m.model["config_sha256"]
    assert idx.suffix_array.longest_suffix_match(ids[:40])[1] == 16
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name or ".lock" in p.name]


def test_append_keeps_old_entries_and_adds_new(small_corpus: Path, tmp_path: Path, tok: Any, model: Any) -> None:
    out = tmp_path / "idx"
    first = build_index(model, tok, small_corpus, out, SMALL)
    old_keys = np.array(SemanticIndex.load(out).keys)
    more = tmp_path / "more"
    more.mkdir()
    shutil.copy(stdlib_sources()[3], more / "encoder.py")
    shutil.copy(small_corpus / sorted(os.listdir(small_corpus))[0], more / "dup.py")  # already indexed: skipped
    cfg = IndexBuildConfig(window=256, overlap=64, batch_tokens=1024, append=True)
    second = build_index(model, tok, more, out, cfg)
    idx = SemanticIndex.load(out)
    assert second.count > first.count and second.documents == first.documents + 1
    assert np.array_equal(np.asarray(idx.keys[: first.count]), old_keys)
    assert [s["reason"] for s in second.build["files_skipped"]] == ["already indexed"]
    # an old position and a new one are both found
    _, got = idx.search(np.asarray(idx.keys[[100, first.count + 100]], dtype=np.float32) * 1.0, k=1)
    assert got[:, 0].tolist() == [100, first.count + 100] or np.allclose(idx.keys[got[:, 0]], idx.keys[[100, first.count + 100]])
    assert len(second.corpus) == len(first.corpus) + 1


@pytest.mark.parametrize("change", [{"layer": 0}, {"continuation_len": 4}, {"pca": 8}])
def test_append_with_mismatched_settings(small_corpus: Path, tmp_path: Path, tok: Any, model: Any,
                                         change: dict[str, Any]) -> None:
    out = tmp_path / "idx"
    build_index(model, tok, small_corpus, out, SMALL)
    cfg = IndexBuildConfig(window=256, overlap=64, batch_tokens=1024, append=True, **change)
    with pytest.raises(SpecgenError, match="cannot append"):
        build_index(model, tok, small_corpus, out, cfg)
    other = tiny_model(len(tok), seed=1, layers=3)  # identity = config + tokenizer hashes
    with pytest.raises(SpecgenError, match="another model"):
        build_index(other, tok, small_corpus, out, IndexBuildConfig(append=True))
    SemanticIndex.load(out)  # untouched


def test_pca_and_layer(small_corpus: Path, tmp_path: Path, tok: Any, model: Any) -> None:
    out = tmp_path / "idx"
    man = build_index(model, tok, small_corpus, out, IndexBuildConfig(pca=16, layer=0, window=256, overlap=64, batch_tokens=1024))
    assert man.dim == 16 and man.projection["type"] == "pca" and (out / "projection.npz").is_file()
    idx = SemanticIndex.load(out, layer=0)
    ids = idx.tokens[:200].tolist()
    scores, got = idx.search(_doc_hidden(model, ids, layer=0)[120:121], k=4)
    assert got[0, 0] == 120 or scores[0, 0] == pytest.approx(scores[0, 1], abs=1e-3)
    with pytest.raises(SpecgenError, match="layer 0, not -1"):
        SemanticIndex.load(out, layer=-1)


def test_bad_index_folders(small_corpus: Path, tmp_path: Path, tok: Any, model: Any) -> None:
    with pytest.raises(SpecgenError, match="not found"):
        SemanticIndex.load(tmp_path / "nope")
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "keys.npy").write_bytes(b"x")
    with pytest.raises(SpecgenError, match="incomplete"):
        SemanticIndex.load(tmp_path / "partial")
    out = tmp_path / "idx"
    build_index(model, tok, small_corpus, out, SMALL)
    other = identity_of(tiny_model(len(tok), seed=3, layers=3), tok)
    with pytest.raises(SpecgenError, match="another model"):
        SemanticIndex.load(out, expected_identity=other)
    for name, damage in [("values.npy", "truncate"), ("sa.npy", "delete"), ("manifest.json", "garbage"),
                         ("keys.npy", "header")]:
        broken = tmp_path / f"broken-{name}"
        shutil.copytree(out, broken)
        f = broken / name
        if damage == "truncate":
            f.write_bytes(f.read_bytes()[:-10])
        elif damage == "delete":
            f.unlink()
        elif damage == "garbage":
            f.write_text("{not json")
        else:
            data = bytearray(f.read_bytes())
            data[:10] = b"0123456789"
            f.write_bytes(bytes(data))
        with pytest.raises(SpecgenError) as err:
            SemanticIndex.load(broken)
        assert "\n" not in str(err.value)


def test_refuses_to_overwrite_a_foreign_folder(small_corpus: Path, tmp_path: Path, tok: Any, model: Any) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(SpecgenError, match="not a specgen index"):
        build_index(model, tok, small_corpus, out, SMALL)
    assert (out / "thesis.tex").read_text() == "precious"


def test_killed_build_leaves_previous_index(small_corpus: Path, tmp_path: Path, tok: Any, model: Any) -> None:
    out = tmp_path / "idx"
    first = build_index(model, tok, small_corpus, out, SMALL)
    model_dir = tmp_path / "model"
    model.save_pretrained(str(model_dir))
    tok.save_pretrained(str(model_dir))
    script = textwrap.dedent(f"""
        import time, sys
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from specgen.datastore import IndexBuildConfig, build_index
        m = AutoModelForCausalLM.from_pretrained({str(model_dir)!r}).eval()
        t = AutoTokenizer.from_pretrained({str(model_dir)!r})
        def slow(done, total):
            time.sleep(0.2)
        build_index(m, t, {str(small_corpus)!r}, {str(out)!r},
                    IndexBuildConfig(window=64, overlap=16, batch_tokens=64), progress=slow)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tmp_dir = tmp_path / f"idx.tmp-{proc.pid}"
    deadline = time.time() + 60
    while not (tmp_dir / "keys.npy").exists():
        assert proc.poll() is None and time.time() < deadline, "the build never started writing"
        time.sleep(0.05)
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert tmp_dir.exists()  # the half-written version is there ...
    idx = SemanticIndex.load(out)  # ... and the previous index is intact
    assert idx.manifest.count == first.count and idx.manifest.created == first.created
    build_index(model, tok, small_corpus, out, SMALL)  # the next build clears the leftovers
    assert not tmp_dir.exists() and not (tmp_path / "idx.lock").exists()


def test_interrupt_cleans_up(small_corpus: Path, tmp_path: Path, tok: Any, model: Any) -> None:
    out = tmp_path / "idx"
    first = build_index(model, tok, small_corpus, out, SMALL)

    def interrupt(done: int, total: int) -> None:
        if done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(model, tok, small_corpus, out, SMALL, progress=interrupt)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "idx"]
    assert json.loads((out / "manifest.json").read_text())["created"] == first.created


@pytest.mark.parametrize("kernels", ["torch", "triton"])
def test_kernel_search_matches_faiss(big_index: Path, tok: Any, model: Any, kernels: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`similarity_topk` (the GPU exact-search path, here reference or Triton interpreter) agrees with FAISS."""
    ids = SemanticIndex.load(big_index).tokens[:256].tolist()
    hs = _doc_hidden(model, ids)[10:250:20]  # [12, H]
    monkeypatch.setenv("SPECGEN_SEARCH", "faiss")
    want_s, want_i = SemanticIndex.load(big_index).search(hs, k=8)
    monkeypatch.setenv("SPECGEN_SEARCH", "kernel")
    monkeypatch.setenv("SPECGEN_KERNELS", kernels)
    idx = SemanticIndex.load(big_index)
    got_s, got_i = idx.search(hs, k=8)
    assert idx._device_keys is not None, "the kernel path was not taken"
    monkeypatch.setenv("SPECGEN_SEARCH", "auto")
    assert idx._use_kernel(8), "keys already copied to the device keep being searched there"
    monkeypatch.setenv("SPECGEN_SEARCH", "faiss")
    assert not idx._use_kernel(8)
    np.testing.assert_allclose(got_s, want_s, atol=2e-3)
    # Ids agree wherever the score is not tied with a neighbour within tolerance.
    distinct = np.abs(np.diff(want_s, axis=1, prepend=np.inf)) > 2e-3
    distinct &= np.abs(np.diff(want_s, axis=1, append=-np.inf)) > 2e-3
    assert np.all(got_i[distinct] == want_i[distinct])


@pytest.mark.parametrize("search", ["faiss", "kernel"])
def test_token_conditioned_search_matches_faiss_on_the_posting_list(big_index: Path, tok: Any, model: Any, search: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Exact over the posting list, from the host memory map or (`kernel`: where the global kernel
    search keeps the keys, a GPU; here the CPU) from the device copy of the keys."""
    import faiss

    monkeypatch.setenv("SPECGEN_SEARCH", search)
    idx = SemanticIndex.load(big_index)
    ids = idx.tokens[:512].tolist()
    hs = _doc_hidden(model, ids)  # [512, H]
    keys = np.asarray(idx.keys, dtype=np.float32)  # [N, d]
    first = np.asarray(idx.values[:, 0])  # [N] the token that followed each key
    for p in range(30, 500, 41):
        token = int(first[p])
        scores, got = idx.search_followed_by(hs[p], token, k=8)  # [k'], [k']
        posting = np.flatnonzero(first == token)  # [m]
        assert set(idx.postings(token).tolist()) == set(posting.tolist())
        oracle = faiss.IndexFlatIP(keys.shape[1])
        oracle.add(keys[posting])
        want_s, want_i = oracle.search(idx.prepare(hs[p]), min(8, posting.size))  # [1, k']
        assert np.all(first[got] == token) and got.size == want_i.shape[1]
        np.testing.assert_allclose(scores, want_s[0], atol=1e-4)  # same scores: ids may differ only on ties
        assert got[0] == p or np.allclose(keys[got[0]], keys[p], atol=1e-3)  # its own position first
        pre_s, pre_i = idx.search_followed_by_prepared(idx.prepare(hs[p])[0], token, k=8)  # a query already in key space
        np.testing.assert_array_equal(pre_i, got)
        np.testing.assert_array_equal(pre_s, scores)
    assert (idx._device_keys is not None) == (search == "kernel")  # which path ran
    common = int(np.bincount(first[first >= 0]).argmax())
    assert idx.search_followed_by(hs[0], common, k=8, max_rows=1) is None  # too many keys: caller falls back
    s, i = idx.search_followed_by(hs[0], 10**6, k=8)  # a token that never occurs
    assert s.size == 0 and i.size == 0


@pytest.mark.parametrize("field", ["files", "index", "projection"])
def test_manifest_file_names_cannot_leave_the_index_folder(small_corpus: Path, tmp_path: Path, tok: Any, model: Any,
                                                           field: str) -> None:
    out = tmp_path / "idx"
    build_index(model, tok, small_corpus, out, SMALL)
    secret = tmp_path / "secret.npy"
    secret.write_bytes(b"outside the index")
    raw = json.loads((out / "manifest.json").read_text())
    if field == "files":
        raw["files"]["../secret.npy"] = secret.stat().st_size
    else:
        raw[field]["file"] = "../secret.npy"
    (out / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(SpecgenError, match="not a plain name inside the index folder"):
        SemanticIndex.load(out)
