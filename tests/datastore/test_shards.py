"""Opening a sharded index whose shards carry their own FAISS index files (approximate index types
built on Ray write one per shard) beside shards searched from their keys alone."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import faiss
import numpy as np

from specgen.datastore.shards import ShardedKeys, open_sharded_index


def test_shards_with_and_without_an_index_file_search_as_one_flat_index(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    d = 16
    parts = [rng.standard_normal((n, d)).astype(np.float32) for n in (40, 25, 30)]
    parts = [(p / np.linalg.norm(p, axis=1, keepdims=True)).astype(np.float16) for p in parts]  # [n_s, d]
    shards = []
    for i, part in enumerate(parts):
        entry = {"index": i, "index_file": None}
        if i != 1:  # shards 0 and 2 read their index from disk, shard 1 is built from its keys
            own = faiss.IndexFlatIP(d)
            own.add(part.astype(np.float32))
            entry["index_file"] = f"index-{i:05d}.faiss"
            faiss.write_index(own, str(tmp_path / entry["index_file"]))
        shards.append(entry)
    joined = open_sharded_index(tmp_path, SimpleNamespace(shards=shards, dim=d), ShardedKeys(parts))
    every = np.concatenate(parts).astype(np.float32)  # [N, d]
    oracle = faiss.IndexFlatIP(d)
    oracle.add(every)
    queries = rng.standard_normal((8, d)).astype(np.float32)
    scores, ids = joined.search(queries, 5)
    want_scores, want_ids = oracle.search(queries, 5)
    np.testing.assert_allclose(scores, want_scores, atol=2e-3)  # fp16 keys in shard 1
    assert (ids == want_ids).mean() > 0.9 and joined.ntotal == every.shape[0]
