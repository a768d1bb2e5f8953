"""What sense's proposer costs per step at long live contexts, with the context's prepared states
kept across steps (the library) against prepared afresh at every step (the code before 94b24c0).

    python docs/sense_context_cost.py INDEX_FOLDER   # a datastore with its cached transition map

A synthetic request over a real datastore and its fitted map: random hidden states of the index's
width as the live context, its own token stream (repeated) as the context's tokens, positions
n .. n + 150 for n in 256, 1024, 4096. "afresh" calls `reset()` before every `propose`, so each step
prepares the whole context again, as before. Median milliseconds per `propose`, one thread. The
embeddings are random too: the map's weights are read as in a real run.
"""
import sys
import time

import numpy as np
import torch

from specgen.datastore.store import SemanticIndex
from specgen.datastore.transition import TransitionMap
from specgen.proposers.base import ProposeContext
from specgen.proposers.sense import SenseConfig, SenseProposer


def main(folder: str) -> None:
    torch.set_num_threads(1)
    idx = SemanticIndex.load(folder)
    maps = sorted(idx.path.glob("transition-*.npy"))
    if not maps:
        sys.exit(f"{folder}: no cached transition map (run sense on this index once)")
    weight = torch.from_numpy(np.load(maps[0]))  # [d + H + 1, d]
    width = idx.manifest.hidden_size
    stream = np.asarray(idx.tokens)
    vocab = int(stream.max()) + 1
    embeddings = torch.randn(vocab, width, generator=torch.Generator().manual_seed(0))  # [V, H]
    cfg = SenseConfig(index=folder)
    for n0 in (256, 1024, 4096):
        seq = np.resize(stream[:3000], n0 + 200).tolist()
        hs = torch.randn(n0 + 200, width, generator=torch.Generator().manual_seed(1))  # [T, H]
        ms = {}
        for mode in ("afresh", "kept"):
            proposer = SenseProposer(cfg, idx, TransitionMap(weight, embeddings))
            proposer.reset(seq[:n0])
            times = []
            for n in range(n0, n0 + 150, 2):
                ctx = ProposeContext(tokens=seq[: n + 1], prompt_len=n0, budget=16, hidden=hs[n - 1], context_hidden=hs[:n])
                if mode == "afresh":
                    proposer.reset(seq[:n0])
                t = time.perf_counter()
                proposer.propose(ctx)
                times.append(time.perf_counter() - t)
            ms[mode] = 1e3 * float(np.median(times))
        print(f"context {n0}: afresh {ms['afresh']:.2f} ms, kept {ms['kept']:.2f} ms per propose "
              f"(hidden size {width}, {len(idx)} keys)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
