"""Does the length of the match behind a prompt-lookup draft predict its acceptance, and does
sizing trees by it pay? (README, eleventh session; `PLDConfig.score_by`.)

Offline, on traces recorded by `specgen bench replay --traces FILE` (the target's greedy answers):

1. Evidence: at every position of every answer, the draft `pld` would propose there, the length of
   the match behind it (`proposers.pld.ngram_match`, up to 16) and how many of its tokens the
   target's answer confirms. Per match-length bin: drafts, mean accepted, P(first token accepted).
2. Sizing: `pld` replayed with the decode loop's cost sizing and adaptive draft policy under a
   given cost profile, scored "flat" (1.0 per draft) or "match", with a calibration per request
   (`generate`) or one shared by every request in file order (`serve`'s shared calibration).
   Per trace file: tau, drafted / accepted tokens and tokens per unit of forward cost over `ar`'s.

    .venv/bin/python docs/check_pld_evidence.py TRACES[,TRACES...] COSTS
    .venv/bin/python docs/check_pld_evidence.py /tmp/tr/sb8.pt,/tmp/tr/he20.pt 1,1.06,1.1,1.12,1.4,1.5,1.8,2.2

COSTS: c(n) relative to one token for `TreeSizingConfig.sizes` (1,2,3,4,6,8,12,17), e.g. the
profile that `specgen generate --json` reports.
"""
import collections
import sys

import numpy as np

from specgen.bench.replay import ReplayStats, Trace, read_traces, replay
from specgen.config import PLDConfig
from specgen.decoding.calibration import SHARED_WINDOW, AcceptanceModel
from specgen.decoding.policy import DraftPolicyConfig
from specgen.decoding.sizing import TreeSizingConfig
from specgen.proposers.pld import PromptLookupProposer, ngram_match

BINS = ((1, 1), (2, 2), (3, 3), (4, 7), (8, 15), (16, 16))

files = sys.argv[1].split(",")
costs = tuple(float(c) for c in sys.argv[2].split(","))
suites = {f: [Trace(**t) for t in read_traces(f)["traces"]] for f in files}
cfg = PLDConfig()

print("1. evidence: drafts by the length of the match behind them")
print(f"{'file':<14} {'match':>6} {'drafts':>7} {'accepted':>9} {'P(first)':>9}")
for f, traces in suites.items():
    rows = collections.defaultdict(lambda: [0, 0, 0])  # bin -> drafts, accepted tokens, first accepted
    for tr in traces:
        out = tr.output_ids
        for i in range(len(out) - 1):  # pending token out[i]; the answer confirms out[i + 1:]
            tokens = np.asarray(tr.prompt_ids + out[: i + 1], dtype=np.int64)  # [P + i + 1]
            draft, k = ngram_match(tokens, cfg.max_ngram, cfg.min_ngram, cfg.num_draft, cfg.score_cap)
            if not draft:
                continue
            got = 0
            while got < len(draft) and i + 1 + got < len(out) and draft[got] == out[i + 1 + got]:
                got += 1
            b = next(j for j, (lo, hi) in enumerate(BINS) if lo <= k <= hi)
            rows[b][0] += 1
            rows[b][1] += got
            rows[b][2] += got > 0
    for b, (lo, hi) in enumerate(BINS):
        n, acc, first = rows[b]
        label = str(lo) if lo == hi else f"{lo}-{hi}"
        if n:
            print(f"{f.rsplit('/', 1)[-1]:<14} {label:>6} {n:>7} {acc / n:>9.2f} {first / n:>9.2f}")

print("\n2. cost sizing, adaptive policy, budget 16, costs", ",".join(f"{c:g}" for c in costs))
print(f"{'file':<14} {'score':>6} {'calibration':>12} {'tau':>6} {'drafted':>8} {'accepted':>9} {'est. x ar':>10}")
sizing = TreeSizingConfig(costs=costs)
for score in ("flat", "match"):
    for shared in (False, True):
        calibration = AcceptanceModel.for_sizing(sizing, window=SHARED_WINDOW) if shared else None
        for f, traces in suites.items():  # a shared calibration carries over from one file to the next
            total = ReplayStats()
            for tr in traces:
                total += replay(PromptLookupProposer(PLDConfig(score_by=score)), tr, 16, DraftPolicyConfig(),
                                sizing, calibration)
            print(f"{f.rsplit('/', 1)[-1]:<14} {score:>6} {'shared' if shared else 'per request':>12} {total.tau:>6.2f} "
                  f"{total.drafted:>8} {total.accepted:>9} {total.estimated_speedup:>10.3f}")
