"""Tune `sense` on the paraphrase suite's tune half and report on the eval half (README, Results).

    .venv/bin/python docs/tune_sense_paraphrase.py tune   # pld, rest, sense over a 27-point grid
    .venv/bin/python docs/tune_sense_paraphrase.py eval   # pld, rest, sense defaults and the tuned setting

Embedded model, one thread, trace replay (node budget 16, adaptive draft policy, 128 new tokens):
the same library calls `specgen bench replay --suite paraphrase` makes, looped over settings
(replay takes one config per method). Traces are cached in $TMPDIR/para_<split>.pt.
"""
import itertools
import json
import os
import sys
import tempfile

import torch

from specgen.bench.paraphrase import ensure_datastore, load_pairs, paraphrase_questions, split_pairs
from specgen.bench.replay import read_traces, record_questions, replay_all, save_traces, traces_for
from specgen.decoding.policy import DraftPolicyConfig
from specgen.models import load_model
from specgen.proposers.registry import get_method, make_config

TUNED = dict(min_score=0.25, min_similarity=0.1, datastore_weight=1.0)  # the best on the tune half


def main(split: str) -> None:
    torch.set_num_threads(1)
    bundle = load_model(None)
    pairs = split_pairs(load_pairs(), split)
    index = str(ensure_datastore(bundle, pairs))
    key = {"split": split, "model": bundle.identity()}
    path = os.path.join(tempfile.gettempdir(), f"para_{split}.pt")
    traces = traces_for(read_traces(path), key)
    if traces is None:
        traces = record_questions(bundle, paraphrase_questions(pairs), 128)
        save_traces(path, traces, key)
    policy = DraftPolicyConfig(mode="adaptive")

    def tau(method: str, **opts: object) -> float:
        cfg, spec = make_config(method, opts), get_method(method)
        return replay_all(lambda: spec.factory(bundle, cfg), traces, 16, policy)["overall"].tau

    rows = [("pld", {}, tau("pld")), ("rest", {}, tau("rest", index=index))]
    grid = ([dict(min_score=a, min_similarity=b, datastore_weight=c)
             for a, b, c in itertools.product((0.0, 0.25, 0.5), (0.1, 0.3, 0.5), (0.5, 1.0, 2.0))]
            if split == "tune" else [{}, TUNED])
    rows += [("sense", opts, tau("sense", index=index, **opts)) for opts in grid]
    for name, opts, t in sorted(rows, key=lambda r: -r[2]):
        print(f"{t:.3f}  {name} {json.dumps(opts)}")
    print("answers", len(traces), "tokens", sum(len(t.output_ids) for t in traces))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tune")
