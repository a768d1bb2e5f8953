"""Sharded keys: an index folder whose keys live in several files, searched as one index.

A sharded folder (written by `specgen build-index --ray`, raybuild.py) holds, instead of keys.npy
and index.faiss, one `keys-NNNNN.npy` ([n_s, d] fp16) per shard and, for approximate index types,
one `index-NNNNN.faiss` per shard; manifest["shards"] lists them in row order with their rows,
documents, sizes and sha256. Tokens, values and the suffix array stay whole (they are 1/20 of the
keys' bytes). A shard holds whole documents: shard s covers documents [doc_start, doc_end) and key
rows [row_start, row_end), and the shards tile both ranges.

Loading opens every shard memory-mapped (`ShardedKeys`, one array to the rest of the code) and
joins the per-shard FAISS indexes with `faiss.IndexShards(successive_ids=True)`, which searches every
shard and merges their top-k, with shard s's ids offset by its first row: the results are those of
one unsharded index over the same keys.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SpecgenError


@dataclass(frozen=True)
class ShardSpec:
    """One shard of a build plan: documents [doc_start, doc_end), key rows [row_start, row_end)."""

    index: int
    doc_start: int
    doc_end: int
    row_start: int
    row_end: int

    @property
    def rows(self) -> int:
        return self.row_end - self.row_start

    @property
    def keys_file(self) -> str:
        return f"keys-{self.index:05d}.npy"

    @property
    def index_file(self) -> str:
        return f"index-{self.index:05d}.faiss"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_shards(offsets: np.ndarray, shard_tokens: int) -> list[ShardSpec]:
    """Deterministic shards of whole documents: documents are taken in order until a shard holds at
    least `shard_tokens` tokens (a longer document is a shard of its own). `offsets` [D + 1]."""
    assert shard_tokens >= 1, "shard_tokens must be positive"
    shards: list[ShardSpec] = []
    d0 = 0
    n_docs = int(offsets.shape[0]) - 1
    while d0 < n_docs:
        d1 = d0 + 1
        while d1 < n_docs and int(offsets[d1]) - int(offsets[d0]) < shard_tokens:
            d1 += 1
        shards.append(ShardSpec(len(shards), d0, d1, int(offsets[d0]), int(offsets[d1])))
        d0 = d1
    return shards


class ShardedKeys:
    """Row-concatenation of per-shard key memmaps [n_s, d], read as one [N, d] array."""

    def __init__(self, parts: list[np.ndarray]) -> None:
        assert parts and len({p.shape[1] for p in parts}) == 1, "shards of one width"
        self.parts = parts
        self.starts = np.cumsum([0] + [p.shape[0] for p in parts])  # [S + 1]
        self.shape = (int(self.starts[-1]), int(parts[0].shape[1]))
        self.dtype = parts[0].dtype
        self.ndim = 2

    @property
    def nbytes(self) -> int:
        return int(sum(p.nbytes for p in self.parts))

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.concatenate([np.asarray(p) for p in self.parts], axis=0)
        return out if dtype is None else out.astype(dtype)

    def __getitem__(self, item: Any) -> np.ndarray:
        if isinstance(item, slice):
            rows = np.arange(*item.indices(self.shape[0]))
        else:
            rows = np.asarray(item, dtype=np.int64)
        flat = rows.reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= self.shape[0]):
            raise IndexError("key row out of range")
        out = np.empty((flat.size, self.shape[1]), dtype=self.dtype)  # [m, d]
        which = np.searchsorted(self.starts, flat, side="right") - 1  # [m] shard of each row
        for s in np.unique(which):
            sel = which == s
            out[sel] = self.parts[int(s)][flat[sel] - self.starts[s]]
        return out.reshape(*rows.shape, self.shape[1])


def is_sharded(manifest: Any) -> bool:
    return bool(getattr(manifest, "shards", None))


def check_shards(folder: Path, manifest: Any) -> None:
    """The shard list tiles the rows and documents and every shard file is listed with its size."""
    shards = manifest.shards
    row = doc = 0
    for i, s in enumerate(shards):
        if (not isinstance(s, dict) or s.get("index") != i or s.get("row_start") != row or s.get("doc_start") != doc
                or not isinstance(s.get("row_end"), int) or not isinstance(s.get("doc_end"), int)):
            raise SpecgenError(f"corrupt index manifest in {folder}: shard {i} does not continue shard {i - 1}: "
                               "rebuild the index (specgen build-index)")
        for key in ("keys_file", "index_file"):
            name = s.get(key)
            if name is not None and name not in manifest.files:
                raise SpecgenError(f"corrupt index manifest in {folder}: shard {i}'s {name} is not listed: rebuild the index")
        row, doc = s["row_end"], s["doc_end"]
    if row != manifest.count or doc != manifest.documents:
        raise SpecgenError(f"corrupt index manifest in {folder}: the shards cover {row} keys and {doc} documents, "
                           f"the index {manifest.count} and {manifest.documents}: rebuild the index")


def open_keys(folder: Path, manifest: Any) -> np.ndarray | ShardedKeys:
    """The keys of an index folder, memory-mapped: keys.npy, or every shard as one `ShardedKeys`."""
    if not is_sharded(manifest):
        return np.load(folder / "keys.npy", mmap_mode="r")
    check_shards(folder, manifest)
    parts = []
    for s in manifest.shards:
        part = np.load(folder / s["keys_file"], mmap_mode="r")
        if part.shape != (s["row_end"] - s["row_start"], manifest.dim):
            raise SpecgenError(f"corrupt index {folder}: shard {s['index']} holds {part.shape}, expected "
                               f"({s['row_end'] - s['row_start']}, {manifest.dim}): rebuild the index")
        parts.append(part)
    return ShardedKeys(parts)


def open_sharded_index(folder: Path, manifest: Any, keys: ShardedKeys) -> Any:
    """One FAISS index over every shard: `IndexShards` with successive ids (shard s offset by its first row)."""
    import faiss

    from . import ann

    subs = []
    for s, part in zip(manifest.shards, keys.parts):
        sub = faiss.read_index(str(folder / s["index_file"])) if s.get("index_file") else ann.flat_from_keys(part)
        if int(sub.ntotal) != part.shape[0]:
            raise SpecgenError(f"corrupt index {folder}: shard {s['index']}'s index holds {sub.ntotal} keys, "
                               f"its keys file {part.shape[0]}: rebuild the index")
        subs.append(sub)
    return JoinedShards(manifest.dim, subs)


class JoinedShards:
    """`faiss.IndexShards` over per-shard indexes in row order (shard s's ids offset by the keys before
    it), holding the Python references that IndexShards, which does not own its shards, needs kept."""

    def __init__(self, dim: int, subs: list[Any]) -> None:
        import faiss

        self.subs = subs
        self.joined = faiss.IndexShards(dim, False, True)  # not threaded (FAISS's OpenMP per shard); successive ids
        for sub in subs:
            self.joined.add_shard(sub)

    @property
    def ntotal(self) -> int:
        return int(self.joined.ntotal)

    @property
    def d(self) -> int:
        return int(self.joined.d)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k over every shard, merged: (scores [B, k], ids [B, k])."""
        return self.joined.search(queries, k)



def verify_shards(folder: Path, manifest: Any) -> None:
    """Every shard file's sha256 against the manifest (reads every byte: `index-info --verify`)."""
    from .corpus import file_sha256

    for s in manifest.shards:
        for key, digest in (("keys_file", "keys_sha256"), ("index_file", "index_sha256")):
            name = s.get(key)
            if name is not None and file_sha256(folder / name) != s.get(digest):
                raise SpecgenError(f"corrupt index {folder}: {name} does not match its sha256 in the manifest: "
                                   "rebuild the index (specgen build-index)")
