"""Does a method that drafts nothing pay anything per batched step that `ar` does not? (README, tenth session)

B rows of the same Spec-Bench prompts on the batched engine (`decoding.batch.BatchDecoder`, the
server's load-aware drafting), 3 untimed steps, then up to STEPS timed ones (until a row finishes),
2 rounds per method. Per step: wall, planning (proposer, tree, sizing; declined drafts included),
the target forward, the tokens it fed, and the rest.

    .venv/bin/python docs/check_batched_step_cost.py [MODEL] [ROWS] [STEPS] [METHODS]
    .venv/bin/python docs/check_batched_step_cost.py qwen2.5-coder-1.5b 2 20 ar,pld,sense
"""
import collections
import sys
import time

import torch

from specgen.bench.suites import load_suite
from specgen.config import GenerationConfig, SamplingConfig
from specgen.decoding import batch as B
from specgen.generate import encode_messages
from specgen.models import load_model
from specgen.proposers.registry import make_config

torch.set_num_threads(2)
model = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else None
n_rows = int(sys.argv[2]) if len(sys.argv) > 2 else 2
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 20
methods = (sys.argv[4] if len(sys.argv) > 4 else "ar,pld,sense").split(",")
bundle = load_model(model)
spent = collections.Counter()
plan, forward = B.plan, B.adapter.batched_tree_forward


def timed_plan(*a, **k):
    t = time.perf_counter()
    out = plan(*a, **k)
    spent["plan"] += time.perf_counter() - t
    return out


def timed_forward(model, tokens, *a, **k):  # tokens [B, fed]
    t = time.perf_counter()
    out = forward(model, tokens, *a, **k)
    spent["forward"] += time.perf_counter() - t
    spent["fed"] += tokens.shape[1]
    return out


B.plan, B.adapter.batched_tree_forward = timed_plan, timed_forward
prompts = sorted((q.turns[0] for q in load_suite("spec-bench", 2)), key=len)[:n_rows]
gen = GenerationConfig(max_new_tokens=400, sampling=SamplingConfig(temperature=0.0))
for rnd in range(2):
    for method in methods:
        dec = B.BatchDecoder(bundle, B.LoadAwareDrafting())
        for p in prompts:
            dec.add(B.start_row(bundle, encode_messages(bundle.tokenizer, [{"role": "user", "content": p}]), method,
                                gen, make_config(method, {})))
        for _ in range(3):
            dec.step()
        spent.clear()
        t0, n, drafted = time.perf_counter(), 0, 0
        while n < steps and not any(r.done for r in dec.rows):
            drafted += sum(rec.drafted for rec in dec.step())
            n += 1
        wall = time.perf_counter() - t0
        ms = lambda s: 1000 * s / max(1, n)  # noqa: E731
        print(f"round {rnd + 1} {method:6s} rows {n_rows} steps {n}: step {ms(wall):7.1f} ms, plan {ms(spent['plan']):5.1f}, "
              f"forward {ms(spent['forward']):7.1f}, rest {ms(wall - spent['plan'] - spent['forward']):5.1f}, "
              f"fed per row {spent['fed'] / max(1, n):.1f}, drafted {drafted}", flush=True)
