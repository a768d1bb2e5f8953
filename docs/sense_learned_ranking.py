"""Could a learned ranking of `sense`'s candidates close the ranking loss? A prototype, replayed.

    .venv/bin/python docs/sense_learned_ranking.py      # $SPECGEN_MODEL, $SPECGEN_TRACES_TUNE, $SPECGEN_TRACES_EVAL

docs/sense_ranking_losses.py finds about 15% of the tree's tokens lost in ranking: the best of
sense's candidates agrees with the answer longer than the budget-16 trie built from them. This
script asks whether the evidence sense already has ranks them better when learned. Per candidate,
14 features: its share of the summed sharpened score and its first token's share, which sources
drafted it (aligned datastore key, shift-aligned key, live context), each source's best similarity
against the step's best, how many neighbours of each source agree, its length, the step's best
similarity. A linear scorer, softmax over one position's candidates, is fitted (Adam, 100 epochs)
on every position of the tune half's traces against a soft target softmax(2 * tokens agreed). Its
softmax probabilities then replace sense's scores in the trie, and the loop's replay (node budget
16, adaptive draft policy) gives tau on both halves, beside sense's own scores, for three depth
decays. sense runs without its transition source (`transition: false`: added after this experiment,
which re-derives the other three sources only). Traces as docs/tune_sense_paraphrase.py records
them (default $TMPDIR/para_<split>.pt); one thread.
"""
import math
import os
import tempfile
from collections import defaultdict

import numpy as np
import torch

from specgen.adapter import common_prefix
from specgen.bench.paraphrase import ensure_datastore, load_pairs, split_pairs
from specgen.bench.replay import Trace, read_traces, replay_all
from specgen.decoding.policy import DraftPolicyConfig
from specgen.models import load_model
from specgen.proposers.base import Candidates, ProposeContext
from specgen.proposers.registry import get_method, make_config
from specgen.proposers.sense import SenseProposer

SOURCES = ("exact", "shift", "context")


class ScoredSense(SenseProposer):
    """sense, its candidates re-scored by `weights` [14] (None: its own scores, as the library ranks them)."""

    weights: torch.Tensor | None = None
    decay: float = 0.7

    def evidence(self, ctx: ProposeContext) -> tuple[list[tuple[int, ...]], np.ndarray, float] | None:
        """Candidates, their features [C, 14] and best raw score; None where sense drafts nothing."""
        cfg, length = self.cfg, min(self.cfg.max_draft_len, ctx.budget)
        query = ctx.hidden.float().reshape(-1)  # [H]
        prepared = self.index.prepare(query)[0]  # [d]
        per = {s: defaultdict(list) for s in SOURCES}
        if self._exact(prepared, ctx.tokens, per["exact"], length) < cfg.align_below and cfg.align == "shift":
            self._shifted(prepared, ctx.tokens[-1], per["shift"], length)
        if ctx.context_hidden is not None and ctx.context_hidden.shape[0] > 1:
            self._from_context(query, ctx.context_hidden, ctx.tokens, per["context"], length)
        weight = {"exact": cfg.datastore_weight, "shift": cfg.datastore_weight * cfg.align_weight,
                  "context": cfg.context_weight}
        seqs = sorted(set().union(*per.values()))
        if not seqs:
            return None
        best = max(x for m in per.values() for ev in m.values() for _, x in ev)
        raw = [sum(weight[s] * x for s in SOURCES for _, x in per[s].get(q, [])) for q in seqs]
        sharp = np.array([sum(weight[s] * math.exp(cfg.sharpness * (x - best)) for s in SOURCES
                              for _, x in per[s].get(q, [])) for q in seqs])  # [C] sense's own scores
        first: dict[int, float] = defaultdict(float)
        for q, v in zip(seqs, sharp):
            first[q[0]] += v
        rows = []
        for q, v in zip(seqs, sharp):
            ev = {s: [x for _, x in per[s].get(q, [])] for s in SOURCES}
            rows.append([math.log(v / sharp.sum() + 1e-9), math.log(first[q[0]] / sharp.sum() + 1e-9)]
                        + [float(bool(ev[s])) for s in SOURCES] + [max(ev[s]) - best if ev[s] else -1.0 for s in SOURCES]
                        + [math.log1p(len(ev[s])) for s in SOURCES] + [math.log(len(q)), float(len(q) < 3), best])
        return seqs, np.array(rows, dtype=np.float32), max(raw)

    def propose(self, ctx: ProposeContext) -> Candidates:
        if ctx.hidden is None or min(self.cfg.max_draft_len, ctx.budget) <= 0:
            return Candidates()
        found = self.evidence(ctx)
        if found is None or found[2] < self.cfg.min_score:
            return Candidates()
        seqs, feats, _ = found
        scores = np.exp(feats[:, 0]) if self.weights is None else \
            torch.softmax(torch.from_numpy(feats) @ self.weights, 0).numpy()  # [C]
        order = np.argsort(-scores, kind="stable")[: self.cfg.max_candidates]
        return Candidates([list(seqs[i]) for i in order], [float(scores[i]) for i in order], depth_decay=self.decay)


def positions(proposer: ScoredSense, traces: list[Trace]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(features [C, 14], tokens each candidate agrees on [C]) at every drafting position of `traces`."""
    out = []
    for tr in traces:
        seq, p = tr.prompt_ids + tr.output_ids, len(tr.prompt_ids)
        for i in range(len(tr.output_ids) - 1):
            ctx = ProposeContext(tokens=seq[: p + i + 1], prompt_len=p, budget=16, hidden=tr.hidden[p + i - 1],
                                 context_hidden=tr.hidden[: p + i])
            found = proposer.evidence(ctx)
            if found is not None and found[2] >= proposer.cfg.min_score:
                agreed = [common_prefix(list(q), tr.output_ids[i + 1: i + 16]) for q in found[0]]
                out.append((torch.from_numpy(found[1]), torch.tensor(agreed, dtype=torch.float32)))
    return out


def fit(data: list[tuple[torch.Tensor, torch.Tensor]], epochs: int = 100) -> torch.Tensor:
    """Linear scorer [14], listwise: softmax over a position's candidates against softmax(2 * agreed)."""
    torch.manual_seed(0)
    w = torch.zeros(data[0][0].shape[1])
    w[0] = 1.0  # start from sense's own ranking
    w.requires_grad_(True)
    opt = torch.optim.Adam([w], lr=0.05)
    for _ in range(epochs):
        opt.zero_grad()
        loss = sum(-(torch.softmax(2.0 * y, 0) * torch.log_softmax(x @ w, 0)).sum() for x, y in data if y.max() > 0)
        loss.backward()
        opt.step()
    return w.detach()


def main() -> None:
    torch.set_num_threads(1)
    bundle = load_model(os.environ.get("SPECGEN_MODEL"))
    halves = {}
    for split in ("tune", "eval"):
        index = str(ensure_datastore(bundle, split_pairs(load_pairs(), split)))
        path = os.environ.get(f"SPECGEN_TRACES_{split.upper()}") or os.path.join(tempfile.gettempdir(), f"para_{split}.pt")
        halves[split] = (index, [Trace(**t) for t in read_traces(path)["traces"]])
    cfg = make_config("sense", {"index": halves["tune"][0], "transition": False})
    w = fit(positions(ScoredSense(cfg, get_method("sense").factory(bundle, cfg).index), halves["tune"][1]))
    print("weights", [round(x, 3) for x in w.tolist()])
    policy = DraftPolicyConfig(mode="adaptive")
    for weights, name in ((None, "sense's scores"), (w, "learned")):
        for decay in (0.7, 0.85, 1.0):
            taus = []
            for index, traces in halves.values():
                cfg = make_config("sense", {"index": index, "transition": False})
                made = get_method("sense").factory(bundle, cfg)

                def make() -> ScoredSense:
                    p = ScoredSense(cfg, made.index)
                    p.weights, p.decay = weights, decay
                    return p
                taus.append(replay_all(make, traces, 16, policy)["overall"].tau)
            print(f"{name:>15}  decay {decay}: tune {taus[0]:.3f}  eval {taus[1]:.3f}", flush=True)


if __name__ == "__main__":
    main()
