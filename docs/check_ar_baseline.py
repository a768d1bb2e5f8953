"""Is `ar` slower than a proposer that never drafts? The same work; only the sizing path differs (README, eighth session).

    .venv/bin/python docs/check_ar_baseline.py [ROUNDS]   # embedded model, 12 Spec-Bench prompts x 64 tokens, 2 threads
"""
import sys
import time

import torch
from specgen.bench.suites import load_suite
from specgen.config import GenerationConfig
from specgen.decoding.loop import decode
from specgen.generate import encode_prompt
from specgen.models import load_model
from specgen.proposers.base import NullProposer

torch.set_num_threads(2)
b = load_model(None)

class Quiet(NullProposer):
    name = "quiet"  # not "ar": gets the cost profile, a timed sizer, padding

prompts = [encode_prompt(b.tokenizer, q.turns[0]) for q in load_suite("spec-bench", 2)][:12]
gen = GenerationConfig(max_new_tokens=64)
decode(b, prompts[0], Quiet(), gen, method="quiet")  # warm (profile)
times = {"ar": [], "quiet": []}
for rnd in range(int(sys.argv[1]) if len(sys.argv) > 1 else 3):
    order = ["ar", "quiet"] if rnd % 2 == 0 else ["quiet", "ar"]
    for m in order:
        t0 = time.perf_counter(); toks = 0
        for p in prompts:
            out = decode(b, p, NullProposer() if m == "ar" else Quiet(), gen, method=m)
            toks += len(out.token_ids)
        times[m].append(toks / (time.perf_counter() - t0))
    print(rnd, {m: round(v[-1], 2) for m, v in times.items()}, flush=True)
print("ratio quiet/ar per round:", [round(q / a, 3) for q, a in zip(times["quiet"], times["ar"])])
