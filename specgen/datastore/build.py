"""Build (or extend) a semantic index folder from a corpus (DESIGN.md sections 2 and 4).

Two passes with bounded memory:
1. tokenize the corpus (corpus.py) into the token stream `tokens.npy` + `doc_offsets.npy`;
2. stream the token stream through the model in windows packed into batches of `batch_tokens`, and
   write the key of every position straight into the memory-mapped `keys.npy`.

Key of position t = the hidden state at t (layer -1: the final normed state that feeds the LM head,
`last_hidden_state`; layer l >= 0: the output of decoder layer l, `hidden_states[l + 1]`, the
convention of `Proposer.hidden_layer`), optionally PCA-projected (z-score, PCA to d', stored in
projection.npz), then L2-normalised, stored fp16; inner product of normalised keys = cosine
similarity. Value of t = the next `continuation_len` tokens of its document, -1 past its end.

Long documents are cut into windows of `window` tokens overlapping by `overlap`: every window after
the first contributes keys only past its overlap, so each key sees at least `overlap` tokens of
context (all of it within the first window). Then the suffix array (REST) and the FAISS index are
built, the manifest written last, and the folder published atomically (manifest.py).
"""
from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..errors import SpecgenError
from ..validate import check_fields, in_range
from .projection import fit_pca, project
from . import ann
from .corpus import CorpusStats, iter_documents
from .manifest import (MANIFEST, Manifest, build_lock, check_identity, cleanup_stale, now_iso, publish,
                       read_manifest, tmp_dir_for)
from .suffix import build_suffix_array, separated_text

Progress = Callable[[int, int], None]  # (tokens embedded so far, tokens to embed)
_CHUNK_ROWS = 65_536
# Windows at least this long run one per forward: on CPU a padded batch takes sdpa's masked path,
# 2-4x slower per token at T = 1024 than one unpadded sequence (SmolLM2-135M, 2 threads, measured).
SOLO_LEN = 384


@dataclass(frozen=True)
class IndexBuildConfig:
    """Options of `build_index`; the first four must match the index when appending."""

    layer: int = -1  # -1 = final normed hidden state; l >= 0 = output of decoder layer l
    continuation_len: int = 16  # L, tokens stored after each position
    pca: int | None = None  # project keys to this many dimensions (z-score + PCA), None = keep H
    max_tokens: int | None = None  # stop reading the corpus after this many (new) tokens
    index_type: str = "auto"  # auto | flat | hnsw | ivf | ivfpq (ann.py)
    batch_tokens: int = 4096  # tokens per forward when packing short windows (batch size x padded length)
    window: int = 1024  # longest sequence fed at once
    overlap: int = 256  # context carried into the next window of a long document
    append: bool = False  # add the corpus to an existing index at the output folder

    def __post_init__(self) -> None:
        check_fields(self)
        for name in ("continuation_len", "batch_tokens", "window"):
            in_range(name, getattr(self, name), 1, 2**31)
        if self.max_tokens is not None:
            in_range("max_tokens", self.max_tokens, 1, 2**62)
        if self.pca is not None:
            in_range("pca", self.pca, 1, 65536)
        if self.layer < -1:
            raise SpecgenError(f"layer must be -1 (final) or a decoder layer >= 0, got {self.layer}")
        if self.continuation_len < 1:
            raise SpecgenError(f"continuation-len must be >= 1, got {self.continuation_len}")
        if self.pca is not None and self.pca < 1:
            raise SpecgenError(f"pca dimension must be >= 1, got {self.pca}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise SpecgenError(f"max-tokens must be >= 1, got {self.max_tokens}")
        if self.index_type not in ann.INDEX_TYPES:
            raise SpecgenError(f"unknown index type '{self.index_type}' (choose from {', '.join(ann.INDEX_TYPES)})")
        if not 0 <= self.overlap < self.window:
            raise SpecgenError(f"need 0 <= overlap < window, got {self.overlap}, {self.window}")
        if self.batch_tokens < self.window:
            raise SpecgenError(f"batch-tokens ({self.batch_tokens}) must be >= window ({self.window})")


def identity_of(model: Any, tokenizer: Any, name: str | None = None) -> dict[str, str]:
    """The identity an index records (`ModelBundle.identity()`: name, config and tokenizer sha256)."""
    from ..models import ModelBundle

    name = name or getattr(model.config, "_name_or_path", "") or type(model).__name__
    return ModelBundle(model=model, tokenizer=tokenizer, name=str(name), path=None).identity()


def _check_layer(model: Any, layer: int) -> None:
    n_layers = int(getattr(model.config, "num_hidden_layers", 0) or 0)
    if n_layers and layer >= n_layers:
        raise SpecgenError(f"layer {layer} out of range: the model has {n_layers} layers (use -1 .. {n_layers - 1})")


def _check_append(old: Manifest, identity: dict[str, str], cfg: IndexBuildConfig, out: Path) -> None:
    check_identity(old, identity, out)
    old_pca = old.projection.get("dim") if old.projection.get("type") == "pca" else None
    for what, have, want in (("layer", old.layer, cfg.layer), ("continuation-len", old.continuation_len, cfg.continuation_len),
                             ("pca", old_pca, cfg.pca)):
        if have != want:
            raise SpecgenError(f"cannot append to {out}: it was built with --{what} {have}, this build asks for {want}")


# --- pass 1: tokens -------------------------------------------------------------------------------

def _tokenize(corpus: Path, tokenizer: Any, tmp: Path, max_tokens: int | None, stats: CorpusStats,
              skip: frozenset[str]) -> tuple[Path, list[int]]:
    """Write the corpus's token ids as raw int32 to tmp/tokens.bin; return it and the document lengths."""
    raw = tmp / "tokens.bin"
    lengths: list[int] = []
    total = 0
    with open(raw, "wb") as f:
        for doc in iter_documents(corpus, tokenizer, stats, skip):
            ids = doc.ids if max_tokens is None else doc.ids[: max_tokens - total]
            if not ids:
                break
            f.write(np.asarray(ids, dtype=np.int32).tobytes())
            lengths.append(len(ids))
            total += len(ids)
            if max_tokens is not None and total >= max_tokens:
                break
    return raw, lengths


# --- pass 2: keys ---------------------------------------------------------------------------------

def _windows(offsets: np.ndarray, first_doc: int, window: int, overlap: int) -> Iterator[tuple[int, int, int]]:
    """(global start, length, first key row within the window) for every window of docs >= first_doc."""
    stride = window - overlap
    for d in range(first_doc, offsets.shape[0] - 1):
        start, end = int(offsets[d]), int(offsets[d + 1])
        s = start
        while True:
            e = min(s + window, end)
            yield s, e - s, 0 if s == start else overlap
            if e >= end:
                break
            s += stride


def _batches(windows: Iterator[tuple[int, int, int]], batch_tokens: int, pool: int = 256,
             solo_len: int = SOLO_LEN) -> Iterator[list[tuple[int, int, int]]]:
    """Group windows into batches: windows of `solo_len` tokens or more run alone (no padding mask),
    shorter ones are packed, length-sorted, so that batch size x longest length <= batch_tokens."""
    buf: list[tuple[int, int, int]] = []

    def flush(items: list[tuple[int, int, int]]) -> Iterator[list[tuple[int, int, int]]]:
        items.sort(key=lambda w: w[1])
        batch: list[tuple[int, int, int]] = []
        for w in items:
            if batch and (len(batch) + 1) * w[1] > batch_tokens:
                yield batch
                batch = []
            batch.append(w)
        if batch:
            yield batch

    for w in windows:
        if w[1] >= solo_len:
            yield [w]
            continue
        buf.append(w)
        if len(buf) >= pool:
            yield from flush(buf)
            buf = []
    if buf:
        yield from flush(buf)


@torch.inference_mode()
def hidden_states(model: Any, ids: torch.Tensor, mask: torch.Tensor | None, layer: int) -> torch.Tensor:
    """Hidden states [B, T, H] at `layer` for right-padded `ids` [B, T] with attention `mask` [B, T] (None: no padding)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is not None and decoder is not model:
        out = decoder(input_ids=ids, attention_mask=mask, output_hidden_states=layer >= 0, use_cache=False)
        return out.last_hidden_state if layer < 0 else out.hidden_states[layer + 1]
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False)
    return out.hidden_states[-1] if layer < 0 else out.hidden_states[layer + 1]


def _embed(model: Any, tokens: np.ndarray, offsets: np.ndarray, first_doc: int, cfg: IndexBuildConfig,
           sink: Callable[[int, np.ndarray], None], progress: Progress | None, total: int) -> None:
    """Run every window through the model; `sink(row, vectors [n, H] fp32)` receives each window's keys."""
    done = 0
    if progress:
        progress(0, total)
    for batch in _batches(_windows(offsets, first_doc, cfg.window, cfg.overlap), cfg.batch_tokens):
        t_max = max(w[1] for w in batch)
        ids = torch.zeros(len(batch), t_max, dtype=torch.long, device="cpu")  # [B, T] right-padded, moved below
        mask = torch.zeros(len(batch), t_max, dtype=torch.long, device="cpu")  # [B, T]
        for b, (start, length, _) in enumerate(batch):
            ids[b, :length] = torch.from_numpy(np.asarray(tokens[start: start + length], dtype=np.int64))
            mask[b, :length] = 1
        # No mask when nothing is padded: the causal fast path (a padded mask costs 2x at T=1024 on CPU).
        dev = model.device
        hs = hidden_states(model, ids.to(dev), None if bool(mask.all()) else mask.to(dev), cfg.layer).float().cpu()  # [B, T, H]
        for b, (start, length, key_from) in enumerate(batch):
            sink(start + key_from, hs[b, key_from:length].numpy())
            done += length - key_from
        if progress:
            progress(done, total)


@contextmanager
def _standard_attention(model: Any) -> Iterator[None]:
    """Run with HF's sdpa attention when the decode loop switched the model to specgen's tree
    attention (which refuses padded batches); restore the loop's choice afterwards."""
    config = getattr(model, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    switch = isinstance(impl, str) and impl.startswith("specgen") and hasattr(model, "set_attn_implementation")
    if switch:
        model.set_attn_implementation("sdpa")
    try:
        yield
    finally:
        if switch:
            model.set_attn_implementation(impl)


def continuation_values(tokens: np.ndarray, offsets: np.ndarray, rows: np.ndarray, length: int) -> np.ndarray:
    """The `length` tokens after each position in `rows` [n] within its document: [n, length] int32, -1 pad."""
    doc = np.searchsorted(offsets, rows, side="right") - 1  # [n]
    ends = offsets[doc + 1]  # [n]
    idx = rows[:, None] + 1 + np.arange(length)[None, :]  # [n, L]
    valid = idx < ends[:, None]
    vals = np.asarray(tokens)[np.minimum(idx, tokens.shape[0] - 1)]  # [n, L]
    return np.where(valid, vals, -1).astype(np.int32)


def _save_npy(path: Path, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)


def build_index(model: Any, tokenizer: Any, corpus_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                config: IndexBuildConfig = IndexBuildConfig(), progress: Progress | None = None,
                model_identity: dict[str, str] | None = None) -> Manifest:
    """Build the index of `corpus_path` for (`model`, `tokenizer`) at `out_dir`, atomically; return its manifest.

    With `config.append` and an index at `out_dir`, a new complete version holding the old entries
    and the new documents replaces it (files already indexed, by sha256, are skipped); mismatched
    model identity, layer, continuation_len or pca raise SpecgenError. `progress(done, total)` is
    called with token counts while embedding. The library never prints.
    """
    cfg = config
    identity = model_identity or identity_of(model, tokenizer)
    _check_layer(model, cfg.layer)
    out = Path(out_dir)
    t_start = time.perf_counter()
    with build_lock(out, wait=cfg.append) as lock:
        cleanup_stale(out)
        old: Manifest | None = None
        if out.exists():
            if (out / MANIFEST).is_file():
                if cfg.append:
                    old = read_manifest(out)
                    _check_append(old, identity, cfg, out)
            elif any(out.iterdir()):
                raise SpecgenError(f"output folder exists and is not a specgen index: {out}")
        tmp = tmp_dir_for(out)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            notes = {"stale_lock_pid": lock.stale_pid} if lock.stale_pid is not None else {}
            manifest = _build_into(model, tokenizer, Path(corpus_path), out, tmp, cfg, identity, old, progress, t_start,
                                   notes)
            publish(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return manifest


@dataclass
class TokenStream:
    """Pass 1's output in the folder being written: tokens.npy and doc_offsets.npy (old entries first)."""

    tokens: np.ndarray  # [N] int32, memory-mapped
    offsets: np.ndarray  # [D + 1] int64
    n_old: int
    d_old: int
    stats: CorpusStats
    t_tok: float

    @property
    def n_new(self) -> int:
        return int(self.tokens.shape[0]) - self.n_old


def tokens_into(tokenizer: Any, corpus: Path, out: Path, tmp: Path, cfg: IndexBuildConfig,
                old: Manifest | None) -> TokenStream:
    """Tokenize `corpus` (after the old index's stream when appending) into tmp's tokens.npy and doc_offsets.npy."""
    stats = CorpusStats()
    skip = frozenset(f["sha256"] for f in old.corpus) if old else frozenset()
    raw, lengths = _tokenize(corpus, tokenizer, tmp, cfg.max_tokens, stats, skip)
    t_tok = time.perf_counter()
    n_new = int(sum(lengths))
    old_tokens = np.load(out / "tokens.npy", mmap_mode="r") if old else np.zeros(0, dtype=np.int32)
    old_offsets = np.load(out / "doc_offsets.npy") if old else np.zeros(1, dtype=np.int64)
    n_old, d_old = int(old_tokens.shape[0]), int(old_offsets.shape[0] - 1)
    n = n_old + n_new
    tokens = _save_npy(tmp / "tokens.npy", (n,), np.int32)  # [N]
    tokens[:n_old] = old_tokens
    tokens[n_old:] = np.fromfile(raw, dtype=np.int32)
    tokens.flush()
    raw.unlink()
    offsets = np.concatenate([old_offsets, n_old + np.cumsum(np.asarray(lengths, dtype=np.int64))])  # [D + 1]
    np.save(tmp / "doc_offsets.npy", offsets)
    return TokenStream(tokens, offsets, n_old, d_old, stats, t_tok)


def values_and_suffix_array(tmp: Path, tokens: np.ndarray, offsets: np.ndarray, cfg: IndexBuildConfig) -> float:
    """Write values.npy [N, L] and sa.npy (REST) into `tmp`; return the suffix array's seconds."""
    n = int(tokens.shape[0])
    values = _save_npy(tmp / "values.npy", (n, cfg.continuation_len), np.int32)  # [N, L]
    for a in range(0, n, _CHUNK_ROWS):
        rows = np.arange(a, min(n, a + _CHUNK_ROWS), dtype=np.int64)
        values[a: a + rows.shape[0]] = continuation_values(tokens, offsets, rows, cfg.continuation_len)
    values.flush()
    t_sa = time.perf_counter()
    np.save(tmp / "sa.npy", build_suffix_array(separated_text(tokens, offsets)))
    return time.perf_counter() - t_sa


def write_manifest(tmp: Path, identity: dict[str, str], cfg: IndexBuildConfig, hidden_size: int, dim: int,
                   pca: bool, offsets: np.ndarray, index: dict[str, Any], corpus_files: list[dict[str, Any]],
                   build_info: dict[str, Any], shards: list[dict[str, Any]] | None = None) -> Manifest:
    """The manifest of the complete folder `tmp` (every file listed with its size), written last."""
    manifest = Manifest(
        model=dict(identity), layer=cfg.layer, hidden_size=hidden_size, dim=dim,
        projection={"type": "pca", "dim": dim, "zscore": True, "file": "projection.npz"} if pca else {"type": "none"},
        normalize="l2", count=int(offsets[-1]), documents=int(offsets.shape[0] - 1),
        continuation_len=cfg.continuation_len, index=index, corpus=corpus_files, build=build_info,
        files={f.name: f.stat().st_size for f in sorted(tmp.iterdir()) if f.is_file()}, created=now_iso(),
        shards=list(shards or []))
    (tmp / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    return manifest


def _build_into(model: Any, tokenizer: Any, corpus: Path, out: Path, tmp: Path, cfg: IndexBuildConfig,
                identity: dict[str, str], old: Manifest | None, progress: Progress | None, t_start: float,
                notes: dict[str, Any] | None = None) -> Manifest:
    from .shards import open_keys

    stream = tokens_into(tokenizer, corpus, out, tmp, cfg, old)
    tokens, offsets, n_old, d_old, stats, t_tok = (stream.tokens, stream.offsets, stream.n_old, stream.d_old,
                                                   stream.stats, stream.t_tok)
    n_new, n = stream.n_new, int(stream.tokens.shape[0])

    hidden_size = int(model.config.hidden_size)
    projection: dict[str, np.ndarray] | None = None
    if old and old.projection.get("type") == "pca":
        with np.load(out / old.projection["file"]) as z:
            projection = {k: z[k] for k in ("mean", "scale", "components")}
    dim = cfg.pca or hidden_size
    keys = _save_npy(tmp / "keys.npy", (n, dim), np.float16)  # [N, d]
    if old:
        old_keys = open_keys(out, old)  # [N_old, d] (keys.npy or the shards of a sharded index)
        for a in range(0, n_old, _CHUNK_ROWS):
            b = min(n_old, a + _CHUNK_ROWS)
            keys[a:b] = old_keys[a:b]
    fit_later = cfg.pca is not None and projection is None
    staging = _save_npy(tmp / "raw_keys.npy", (n, hidden_size), np.float16) if fit_later else keys  # [N, H] or [N, d]

    def sink(row: int, vecs: np.ndarray) -> None:  # vecs [n, H] fp32
        staging[row: row + vecs.shape[0]] = vecs if fit_later else project(vecs, projection)

    t_model = time.perf_counter()
    was_training = bool(getattr(model, "training", False))
    model.eval()
    try:
        with _standard_attention(model):
            _embed(model, tokens, offsets, d_old, cfg, sink, progress, n_new)
    finally:
        model.train(was_training)
    model_s = time.perf_counter() - t_model
    if fit_later:
        projection = fit_pca(staging[n_old:], int(cfg.pca))  # type: ignore[arg-type]
        for a in range(0, n, _CHUNK_ROWS):
            keys[a: a + _CHUNK_ROWS] = project(np.asarray(staging[a: a + _CHUNK_ROWS], dtype=np.float32), projection)
        del staging
        (tmp / "raw_keys.npy").unlink()
    keys.flush()
    if projection is not None:
        np.savez(tmp / "projection.npz", **projection)

    sa_s = values_and_suffix_array(tmp, tokens, offsets, cfg)

    requested = cfg.index_type
    if old and requested == "auto" and old.build.get("index_type_requested", "auto") != "auto":
        requested = old.build["index_type_requested"]
    kind = ann.choose_index_type(requested, n)
    params = ann.default_params(kind, n, dim)
    t_ann = time.perf_counter()
    index = ann.build_ann(kind, np.load(tmp / "keys.npy", mmap_mode="r"), params)
    index_file = None
    if index is not None:
        import faiss

        index_file = "index.faiss"
        faiss.write_index(index, str(tmp / index_file))
    ann_s = time.perf_counter() - t_ann

    corpus_files = (list(old.corpus) if old else []) + [asdict(f) for f in stats.files]
    build_info: dict[str, Any] = {
        "corpus_path": str(corpus), "window": cfg.window, "overlap": cfg.overlap, "batch_tokens": cfg.batch_tokens,
        "max_tokens": cfg.max_tokens, "index_type_requested": cfg.index_type if not old else requested,
        "new_tokens": n_new, "appended_to": old.count if old else None,
        "tokenize_s": round(t_tok - t_start, 3), "model_s": round(model_s, 3), "suffix_array_s": round(sa_s, 3),
        "ann_s": round(ann_s, 3), "total_s": round(time.perf_counter() - t_start, 3),
        "tokens_per_s": round(n_new / model_s, 1) if model_s > 0 else None,
        "torch_threads": torch.get_num_threads(), **stats.to_dict(), **(notes or {}),
    }
    if old:
        build_info["history"] = list(old.build.get("history", [])) + [
            {"created": old.created, "count": old.count, "corpus_path": old.build.get("corpus_path"),
             "tokens_per_s": old.build.get("tokens_per_s")}]
    return write_manifest(tmp, identity, cfg, hidden_size, dim, projection is not None, offsets,
                          {"type": kind, "params": params, "file": index_file}, corpus_files, build_info)
