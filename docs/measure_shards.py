"""Issue 17's measurements: sharded build throughput, and search latency across shards (README, Results).

    .venv/bin/python docs/measure_shards.py build [TOKENS]   # single process vs Ray, 1 and 2 workers
    .venv/bin/python docs/measure_shards.py search [KEYS]    # p50/p95 top-16 latency, 1 / 2 / 4 shards

build: the same ShareGPT slice (first TOKENS tokens, default 200k, of conversations 1000..) built
three times with the embedded model: in this process with 2 torch threads; on a local Ray instance
with one worker of 2 CPUs (2 threads); with two workers of 1 CPU each. Throughput = tokens over
the key pass's wall time (model_s in the manifest: it includes, for Ray, worker start-up and model
loading), plus each build's total time.

search: KEYS (default 1M) random unit keys, d = 576 (SmolLM2-135M's width), fp16, exact inner
product (the flat index), split into 1, 2 and 4 shards joined by `faiss.IndexShards` as a sharded
index folder is on load; 200 single-query searches (a decode step searches one query), top-16,
after 10 warm-up ones. Prints JSON lines.
"""
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def build(tokens: int) -> None:
    from specgen.datastore import IndexBuildConfig, build_index
    from specgen.datastore.corpus import sharegpt_corpus
    from specgen.datastore.raybuild import RayBuildConfig, build_index_ray
    from specgen.models import load_model

    torch.set_num_threads(2)
    bundle = load_model()
    corpus = sharegpt_corpus(3000, offset=1000)
    cfg = IndexBuildConfig(index_type="flat", max_tokens=tokens)
    root = Path(tempfile.mkdtemp(prefix="shards-build-"))
    t0 = time.perf_counter()
    m = build_index(bundle.model, bundle.tokenizer, corpus, root / "single", cfg, model_identity=bundle.identity())
    print(json.dumps({"build": "single process, 2 threads", "tokens": m.count, "model_s": m.build["model_s"],
                      "tokens_per_s": round(m.count / m.build["model_s"], 1), "total_s": round(time.perf_counter() - t0, 1)}),
          flush=True)
    for workers, cpus in ((1, 2.0), (2, 1.0)):
        t0 = time.perf_counter()
        rcfg = RayBuildConfig(address="local", workers=workers, cpus_per_worker=cpus, shard_tokens=16384)
        m, _ = build_index_ray(bundle.model, bundle.tokenizer, corpus, root / f"ray{workers}", cfg, rcfg,
                               model_identity=bundle.identity())
        print(json.dumps({"build": f"ray, {workers} worker(s) x {cpus:g} CPU", "tokens": m.count, "shards": len(m.shards),
                          "model_s": m.build["model_s"], "tokens_per_s": round(m.count / m.build["model_s"], 1),
                          "total_s": round(time.perf_counter() - t0, 1)}), flush=True)


def search(n_keys: int, dim: int = 576, k: int = 16, queries: int = 200) -> None:
    from specgen.datastore import ann
    from specgen.datastore.shards import JoinedShards

    rng = np.random.default_rng(0)
    keys = rng.standard_normal((n_keys, dim), dtype=np.float32)
    keys /= np.linalg.norm(keys, axis=1, keepdims=True)
    keys = keys.astype(np.float16)  # [N, d]
    q = keys[rng.choice(n_keys, queries + 10)].astype(np.float32) + 0.05 * rng.standard_normal((queries + 10, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)  # [Q, d] near some key, as a decode query is
    reference = None
    for n_shards in (1, 2, 4):
        bounds = np.linspace(0, n_keys, n_shards + 1).astype(int)
        subs = [ann.flat_from_keys(keys[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        index = subs[0] if n_shards == 1 else JoinedShards(dim, subs)
        times, ids_all = [], []
        for i in range(queries + 10):
            t0 = time.perf_counter()
            _, ids = ann.search_index("flat", index, keys, {}, q[i: i + 1], k)
            if i >= 10:
                times.append(time.perf_counter() - t0)
                ids_all.append(ids)
        ids_all = np.concatenate(ids_all)
        same = None if reference is None else float((ids_all == reference).mean())
        reference = ids_all if reference is None else reference
        t = np.sort(np.asarray(times)) * 1e3
        print(json.dumps({"keys": n_keys, "shards": n_shards, "p50_ms": round(float(np.percentile(t, 50)), 2),
                          "p95_ms": round(float(np.percentile(t, 95)), 2), "ids_equal_to_1_shard": same,
                          "faiss_threads": ann.faiss_threads()}), flush=True)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    if what == "build":
        build(int(sys.argv[2]) if len(sys.argv) > 2 else 200_000)
    elif what == "search":
        search(int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000)
    else:
        sys.exit(__doc__)
