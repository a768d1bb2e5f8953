"""Benchmark metrics per category and overall (DESIGN.md sections 1 and 6).

Records are plain dicts, one per (method, question, turn); see `runner.make_record` for the keys.
Conventions:

- tau (mean acceptance length) = tokens emitted by decoding steps / steps, pooled over every step
  of the group, bonus token included; `ar` = 1.00. None when a method cannot count its steps.
- draft acceptance rate = accepted draft tokens / drafted tokens, pooled; per-position rate i =
  steps that had draft position i accepted / steps that drafted position i.
- tokens/s of a group = the mean over its records of (new tokens / wall time), wall time covering
  prefill and decoding of that turn. speedup = mean tokens/s of the method / mean tokens/s of `ar`
  over the same group of prompts in the same run (a ratio of means, not a mean of ratios).
  `throughput` (total tokens / total time) is reported beside it.
- identical-to-ar = fraction of records whose token ids equal `ar`'s for the same question and turn
  (lossless methods must reach 1.0 under greedy decoding); exact match = same text after strip.
- quality: GSM8K accuracy (the last number in the output equals the reference) and HumanEval
  pass@1 (the sandboxed program passes), for every method so lossy ones can be compared with `ar`.
- time split: shares of wall time in prefill, propose, verify, accept, and the rest (overhead).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Iterable

Record = dict[str, Any]
OVERALL = "overall"


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def tau(records: list[Record]) -> float | None:
    """Pooled mean acceptance length (bonus included); None when no record counted its steps.

    A record's step tokens are the sum of its accept_lengths, or, for a peer that only counted its
    steps, new_tokens - 1 (the prefill's token is not a step's).
    """
    tokens = steps = 0
    for r in records:
        if r.get("accept_lengths") is not None:
            tokens += sum(r["accept_lengths"])
            steps += len(r["accept_lengths"])
        elif r.get("steps") is not None:
            tokens += max(0, r["new_tokens"] - 1)
            steps += r["steps"]
    return tokens / steps if steps else None


def per_position_acceptance(records: list[Record]) -> list[float]:
    """Rate of acceptance at draft position i (1-based in prose, 0-based here), pooled over steps."""
    drafted: list[int] = []
    accepted: list[int] = []
    for r in records:
        for store, values in ((drafted, r.get("position_drafted") or []), (accepted, r.get("position_accepted") or [])):
            for i, v in enumerate(values):
                if i >= len(store):
                    store.append(0)
                store[i] += int(v)
    return [accepted[i] / d if i < len(accepted) and d else 0.0 for i, d in enumerate(drafted)]


def draft_acceptance_rate(records: list[Record]) -> float | None:
    drafted = sum(int(r.get("drafted") or 0) for r in records)
    return sum(int(r.get("accepted") or 0) for r in records) / drafted if drafted else None


def mean_tokens_per_s(records: list[Record]) -> float | None:
    return _mean(r["new_tokens"] / r["wall_time"] if r["wall_time"] > 0 else None for r in records)


def time_split(records: list[Record]) -> dict[str, float]:
    """Shares of total wall time: prefill, propose, verify, accept, overhead (the rest)."""
    records = [r for r in records if r.get("verify_s") is not None]  # peers time only the whole call
    wall = sum(r["wall_time"] for r in records)
    if wall <= 0:
        return {}
    parts = {k: sum(float(r.get(f"{k}_s") or 0.0) for r in records) / wall
             for k in ("prefill", "propose", "verify", "accept")}
    parts["overhead"] = max(0.0, 1.0 - sum(parts.values()))
    return parts


def step_overhead_ms(records: list[Record]) -> dict[str, float] | None:
    """p50 and p95 over every step of the time outside the target forward (propose, tree, accept,
    commit, streaming), in milliseconds; None for runs that do not record it (peers)."""
    xs = sorted(x for r in records for x in (r.get("step_overhead_s") or []))
    if not xs:
        return None
    pick = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))] * 1e3  # noqa: E731
    return {"p50": pick(0.5), "p95": pick(0.95), "steps": float(len(xs))}


def group_metrics(records: list[Record], ar_records: list[Record]) -> dict[str, Any]:
    """Every metric of one (method, group of prompts); `ar_records` are `ar`'s on the same prompts."""
    tps = mean_tokens_per_s(records)
    ar_tps = mean_tokens_per_s(ar_records) if ar_records else None
    wall = sum(r["wall_time"] for r in records)
    new = sum(r["new_tokens"] for r in records)
    return {
        "n": len(records),
        "new_tokens": new,
        "wall_time": wall,
        "tau": tau(records),
        "draft_acceptance_rate": draft_acceptance_rate(records),
        "per_position_acceptance": per_position_acceptance(records),
        "tokens_per_s": tps,
        "throughput": new / wall if wall > 0 else None,
        "speedup": tps / ar_tps if tps is not None and ar_tps else None,
        "identical_to_ar": _mean(None if r.get("identical_to_ar") is None else float(r["identical_to_ar"]) for r in records),
        "exact_match_ar": _mean(None if r.get("exact_match_ar") is None else float(r["exact_match_ar"]) for r in records),
        "rouge_l_ar": _mean(r.get("rouge_l_ar") for r in records),
        "embed_cos_ar": _mean(r.get("embed_cos_ar") for r in records),
        "gsm8k_accuracy": _mean(None if r.get("correct") is None else float(r["correct"]) for r in records),
        "pass_at_1": _mean(None if r.get("passed") is None else float(r["passed"]) for r in records),
        "time_split": time_split(records),
        "step_overhead_ms": step_overhead_ms(records),
        "mean_latency_s": wall / len(records) if records else None,
        "recomputed_step_fraction": recomputed_fraction(records),
    }


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 over whitespace words (Lin, 2004): the longest common subsequence of the two texts,
    as the harmonic mean of its share of each; 1.0 for identical texts, 0.0 when nothing is shared."""
    a, b = candidate.split(), reference.split()
    if not a or not b:
        return 1.0 if a == b else 0.0
    prev = [0] * (len(b) + 1)  # LCS lengths, one row of the DP table at a time
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            cur[j] = prev[j - 1] + 1 if x == y else max(prev[j], cur[j - 1])
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    p, r = lcs / len(a), lcs / len(b)
    return 2 * p * r / (p + r)


def embedding_cosine(model: Any, a: list[int], b: list[int]) -> float:
    """Cosine of the target's own sentence embeddings of two answers (each answer's token ids alone,
    final-layer hidden states mean-pooled): a reference-free closeness beside ROUGE-L that credits
    wording the target reads the same way. 1.0 for identical answers (no forward)."""
    import torch

    if a == b:
        return 1.0
    if not a or not b:
        return 0.0
    with torch.inference_mode():
        pooled = [model.get_decoder()(input_ids=torch.tensor([ids], device=model.device)).last_hidden_state[0].float().mean(0)
                  for ids in (a, b)]  # 2 x [H]
    return float(torch.nn.functional.cosine_similarity(pooled[0], pooled[1], dim=0))


def recomputed_fraction(records: list[Record]) -> float | None:
    """SpecGuard: share of steps the target rewrote (rejected drafts); None for other methods."""
    sg = [r["specguard"] for r in records if r.get("specguard")]
    steps = sum(x.get("accepted_steps", 0) + x.get("recomputed_steps", 0) for x in sg)
    return sum(x.get("recomputed_steps", 0) for x in sg) / steps if steps else None


def summarize(records: list[Record], ar_method: str = "ar") -> dict[str, dict[str, dict[str, Any]]]:
    """{method: {category | "overall": metrics}}, methods and categories in order of appearance.

    Speedup of a group compares with `ar`'s records on exactly the (question, turn) pairs the
    method has in that group, so a partial (resumed or failed) method is still compared fairly.
    """
    by_method: OrderedDict[str, list[Record]] = OrderedDict()
    for r in records:
        by_method.setdefault(r["method"], []).append(r)
    ar_index = {(r["question_id"], r["turn"]): r for r in by_method.get(ar_method, [])}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for method, recs in by_method.items():
        groups: OrderedDict[str, list[Record]] = OrderedDict()
        for r in recs:
            groups.setdefault(r["category"], []).append(r)
        table: dict[str, dict[str, Any]] = {}
        for cat, group in list(groups.items()) + [(OVERALL, recs)]:
            ars = [ar_index[k] for k in ((r["question_id"], r["turn"]) for r in group) if k in ar_index]
            table[cat] = group_metrics(group, ars)
        out[method] = table
    return out


def compare_summaries(a: dict[str, Any], b: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-method overall deltas (B - A) of two `summary.json` objects, methods present in either."""
    ma, mb = a.get("metrics", {}), b.get("metrics", {})
    rows = []
    for method in list(ma) + [m for m in mb if m not in ma]:
        oa, ob = ma.get(method, {}).get(OVERALL), mb.get(method, {}).get(OVERALL)
        row: dict[str, Any] = {"method": method}
        for key in ("tau", "tokens_per_s", "speedup", "draft_acceptance_rate", "identical_to_ar"):
            va, vb = (oa or {}).get(key), (ob or {}).get(key)
            row[key] = (va, vb, vb - va if va is not None and vb is not None else None)
        rows.append(row)
    return rows
