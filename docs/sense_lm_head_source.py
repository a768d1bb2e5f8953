"""The target's own LM head on sense's predicted state, as one more source of evidence. A prototype, replayed.

    .venv/bin/python docs/sense_lm_head_source.py SPLIT TRACES [INDEX]   # $SPECGEN_MODEL names another target

sense's transition map predicts the state after the pending token (datastore/transition.py) and
searches with it. With keys at the final normed layer and no projection, that prediction lives
where the LM head reads: scaled to the norm of the live query, the head turns it into a guess at
the token after the pending one. Over the 135M's tune half, that guess is the true next token at
27% of positions (top-5: 55%, top-20: 73%).

Variants, each on top of sense's defaults:
- `top-m`: the head's m most likely tokens each become a one-token candidate of score w * p(token),
  p over the whole vocabulary;
- `shortlist`: the same, p over the datastore's and the context's tokens only (what a CPU could
  afford: a few thousand rows of the head, not all of it);
- `rerank`: only tokens that already start one of sense's candidates gain the evidence, p over those.

The head is the model's own output module, called on the whole vocabulary, so the planning time
printed for every variant but the first counts that full product and not what a shortlist would
cost. SPLIT is the paraphrase half whose datastore sense searches (or INDEX, another datastore);
TRACES is a `specgen bench replay --traces` file. Node budget 16, adaptive draft policy, one thread.
"""
import os
import sys

import numpy as np
import torch

from specgen.bench.paraphrase import ensure_datastore, load_pairs, split_pairs
from specgen.bench.replay import Trace, read_traces, replay_all
from specgen.decoding.policy import DraftPolicyConfig
from specgen.models import load_model
from specgen.proposers.base import Candidates, ProposeContext
from specgen.proposers.registry import get_method, make_config
from specgen.proposers.sense import SenseProposer

VARIANTS = {
    "sense (defaults)": None,
    "top-3, w 30": {"mode": "top", "m": 3, "w": 30.0},
    "shortlist top-3, w 30": {"mode": "shortlist", "m": 3, "w": 30.0},
    "rerank, w 3": {"mode": "rerank", "w": 3.0},
}


class HeadSense(SenseProposer):
    """sense plus one-token candidates from the target's LM head on the predicted state."""

    variant: dict | None = None
    head: torch.nn.Module
    dtype: torch.dtype
    vocab: np.ndarray  # the datastore's distinct tokens

    def propose(self, ctx: ProposeContext) -> Candidates:
        got = super().propose(ctx)
        v = self.variant
        if v is None or len(got) == 0 or ctx.hidden is None or self.transition is None or self.index is None:
            return got
        query = ctx.hidden.detach().float().reshape(-1)  # [H]
        pred = torch.from_numpy(self.transition.predict(self.index.prepare(query)[0], ctx.tokens[-1]))  # [H]
        with torch.no_grad():  # the head as the model runs it (a packed CPU linear included), in its dtype
            logits = self.head((pred * query.norm())[None].to(self.dtype))[0].float()  # [V]
        seqs, scores = list(got.sequences), list(got.scores)
        if v["mode"] == "rerank":
            firsts = torch.tensor(sorted({s[0] for s in seqs}))  # [c]
            for x, p in zip(firsts.tolist(), torch.softmax(logits[firsts], 0).tolist()):
                seqs.append([x])
                scores.append(v["w"] * p)
        else:
            ids = torch.from_numpy(np.union1d(self.vocab, np.asarray(ctx.tokens))) if v["mode"] == "shortlist" \
                else torch.arange(logits.shape[0])  # [s]
            top = torch.topk(torch.softmax(logits[ids], 0), min(v["m"], int(ids.shape[0])))
            for p, i in zip(top.values.tolist(), top.indices.tolist()):
                seqs.append([int(ids[i])])
                scores.append(v["w"] * p)
        return Candidates(seqs, scores, depth_decay=got.depth_decay)


def main(split: str, traces_path: str, index: str | None) -> None:
    torch.set_num_threads(1)
    bundle = load_model(os.environ.get("SPECGEN_MODEL"))
    index = index or str(ensure_datastore(bundle, split_pairs(load_pairs(), split)))
    traces = [Trace(**t) for t in read_traces(traces_path)["traces"]]
    cfg = make_config("sense", {"index": index})
    base = get_method("sense").factory(bundle, cfg)
    assert base.index is not None and base.index.projection is None and base.index.layer == -1, \
        "the head reads final-layer states: an index of keys at layer -1 without a projection"
    vocab = np.unique(np.asarray(base.index.tokens))
    for name, variant in VARIANTS.items():
        def make(variant: dict | None = variant) -> HeadSense:
            p = HeadSense(cfg, base.index, base.transition)
            p.variant, p.head, p.dtype, p.vocab = variant, bundle.model.get_output_embeddings(), bundle.model.dtype, vocab
            return p
        st = replay_all(make, traces, 16, DraftPolicyConfig(mode="adaptive"))["overall"]
        print(f"{name}: tau {st.tau:.3f} ({st.steps} steps), plan {1000 * st.plan_s / st.steps:.2f} ms/step", flush=True)


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) == 4 else None)
