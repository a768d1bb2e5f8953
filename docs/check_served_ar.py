"""Is `ar` slower in the server than a method that does the same work? (README, ninth session)

Registers `quiet` (drafts nothing, like `ar`, under another name) and `pldflat` (`pld` scored
1.0 per draft, as before the eleventh session: `PLDConfig.score_by="flat"`), runs `bench --concurrency 1`'s
waves (2 rounds, order alternating) and records each request's engine statistics in the worker:
steps, prefill and verification seconds (the bench's 8-token warm-up requests are left out).

    .venv/bin/python docs/check_served_ar.py [MODEL] [LIMIT] [MAX_NEW_TOKENS] [OUT.json] [METHODS] [LEVELS]
    .venv/bin/python docs/check_served_ar.py qwen2.5-coder-1.5b 1 32 /tmp/probe15.json ar,quiet,pld
    .venv/bin/python docs/check_served_ar.py qwen2.5-coder-1.5b 1 32 /tmp/probe15c2.json ar,quiet,pld 2
    .venv/bin/python docs/check_served_ar.py qwen2.5-coder-1.5b 1 32 /tmp/pldscore.json ar,pld,pldflat 1,2
"""
import dataclasses, json, sys, time
import torch
from dataclasses import dataclass
from specgen.config import PLDConfig
from specgen.proposers.base import NullProposer
from specgen.proposers.pld import PromptLookupProposer
from specgen.proposers.registry import register_method
from specgen.serve import worker as W

@dataclass(frozen=True)
class QuietConfig:
    pass

class Quiet(NullProposer):
    name = "quiet"

register_method("quiet", QuietConfig, lossless=True, summary="never drafts")(lambda target, cfg: Quiet())

class FlatPLD(PromptLookupProposer):
    name = "pldflat"

register_method("pldflat", PLDConfig, lossless=True, summary="pld scored flat")(
    lambda target, cfg: FlatPLD(dataclasses.replace(cfg, score_by="flat")))

records = []
orig_leave = W.Worker._leave
def leave(self, row):
    handle, _ = row.key
    st = row.started.state.stats
    orig_leave(self, row)
    if handle.job.gen.max_new_tokens == 8:  # the bench's warm-ups
        return
    records.append(dict(method=st.method, steps=st.steps, new=st.new_tokens, prefill=st.prefill_s, first=st.first_token_s,
                        verify=st.verify_s, propose=st.propose_s, accept=st.accept_s, wall=st.wall_s,
                        ttft_server=handle.first_token_s, latency=time.perf_counter() - handle.job.arrived,
                        drafted=st.drafted, accepted=st.accepted, overhead=sum(st.step_overhead_s)))
W.Worker._leave = leave

from specgen.bench.concurrency import ConcurrencyConfig, run_concurrency
from specgen.bench.suites import load_suite
from specgen.models import load_model
torch.set_num_threads(2)
model = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else None
limit = int(sys.argv[2]) if len(sys.argv) > 2 else 2
ntok = int(sys.argv[3]) if len(sys.argv) > 3 else 64
b = load_model(model)
prompts = [q.turns[0] for q in load_suite("spec-bench", limit)]
levels = tuple(int(c) for c in sys.argv[6].split(",")) if len(sys.argv) > 6 else (1,)
cfg = ConcurrencyConfig(levels=levels, methods=tuple((sys.argv[5] if len(sys.argv) > 5 else "ar,quiet,pld,sense").split(",")), max_new_tokens=ntok, repeats=2)
rows = run_concurrency(b, prompts, cfg, progress=lambda s: print(s, flush=True))
for r in rows:
    print(r.method, r.concurrency, "tok/s %.3f" % r.tokens_per_s, "speedup %.3f" % r.speedup, r.speedups, "ttft %.3f" % r.ttft_p50, "drafted", r.drafted, r.accepted)
json.dump(records, open(sys.argv[4] if len(sys.argv) > 4 else "served_ar.json", "w"), indent=0)
import collections
agg = collections.defaultdict(lambda: collections.Counter())
for rec in records:
    for k, v in rec.items():
        if k != "method" and v is not None:
            agg[rec["method"]][k] += v
for m, c in agg.items():
    print(m, {k: round(v, 3) for k, v in c.items()})  # summed over every level's requests
