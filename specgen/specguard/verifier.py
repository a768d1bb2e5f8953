"""GSM8K pieces for `bench --suite gsm8k` and the verifier-quality study (DESIGN.md section 3).

- `load_gsm8k`: `{question, answer}` JSON lines, the final answer after `#### `.
- `extract_answer` / `gsm8k_accuracy`: the predicted number from generated text, exact-match accuracy.
- `run_verifier_study`: split each gold solution into steps, make a corrupted twin of every step
  (a changed number, else a changed operator), score both with the target's grounding and
  confidence given the question and the earlier gold steps, and report the AUROC of each signal and
  of the ensemble for telling correct from corrupted steps.
"""
from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import adapter
from ..errors import SpecgenError
from .config import SpecGuardConfig
from .scores import decide, effective_grounding, reduce_confidence, score_candidates
from .select import last_number

DEFAULT_GSM8K = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k_test.jsonl"
_CALC = re.compile(r"<<[^>]*>>")
_NUM = re.compile(r"\d+(?:\.\d+)?")
_OPS = {"+": "-", "-": "+", "*": "/", "/": "*"}


@dataclass(frozen=True)
class Problem:
    """One GSM8K problem: the question, the gold solution text and its final answer."""

    question: str
    solution: str  # gold solution without the '#### answer' line and calculator annotations
    answer: str  # normalised final number


def normalize_number(text: str) -> str:
    """'1,234.50' -> '1234.5'; '$18' -> '18'."""
    num = text.strip().replace(",", "").replace("$", "")
    if "." in num:
        num = num.rstrip("0").rstrip(".")
    return num


def load_gsm8k(path: str | Path | None = None, limit: int | None = None) -> list[Problem]:
    """Problems from a GSM8K JSON-lines file (default `../shared/data/gsm8k_test.jsonl`)."""
    file = Path(path) if path is not None else DEFAULT_GSM8K
    if not file.is_file():
        raise SpecgenError(f"GSM8K file not found: {file}")
    problems: list[Problem] = []
    for line_no, line in enumerate(file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            body, final = row["answer"].rsplit("####", 1)
            problems.append(Problem(row["question"].strip(), _CALC.sub("", body).strip(), normalize_number(final)))
        except (ValueError, KeyError) as exc:
            raise SpecgenError(f"{file}:{line_no}: not a GSM8K record ({type(exc).__name__})") from None
        if limit is not None and len(problems) >= limit:
            break
    return problems


def gsm8k_prompt(question: str) -> str:
    """The prompt every method gets for a GSM8K question."""
    return f"{question}\nSolve it step by step, then give the final answer after '#### '."


def extract_answer(text: str) -> str | None:
    """The predicted answer: after '####', else after 'answer is', else the last number in the text."""
    for marker in ("####", "answer is"):
        if marker in text.lower():
            tail = text[text.lower().rfind(marker) + len(marker):]
            got = last_number(tail.split("\n")[0]) if tail.strip() else None
            if got is None:
                found = re.search(r"-?\d[\d,]*(?:\.\d+)?", tail)
                got = normalize_number(found.group()) if found else None
            if got is not None:
                return got
    return last_number(text)


def gsm8k_accuracy(predictions: list[str], problems: list[Problem]) -> float:
    """Share of generated texts whose extracted answer equals the gold answer."""
    if not problems:
        return 0.0
    hits = sum(extract_answer(p) == g.answer for p, g in zip(predictions, problems))
    return hits / len(problems)


def split_steps(solution: str) -> list[str]:
    """Gold solution -> steps (its non-empty lines)."""
    return [line.strip() for line in solution.split("\n") if line.strip()]


def corrupt_step(step: str, rng: random.Random) -> str | None:
    """A corrupted copy: the last number changed (DESIGN.md probe), else an operator swapped; None if neither."""
    nums = list(_NUM.finditer(step))
    if nums:
        m = nums[-1]
        value = float(m.group())
        delta = rng.choice([-2, -1, 1, 2, 3]) if value >= 3 else rng.choice([1, 2, 3])
        new = str(int(value) + delta) if "." not in m.group() else f"{value + delta:g}"
        return step[: m.start()] + new + step[m.end():]
    ops = [i for i, ch in enumerate(step) if ch in _OPS and 0 < i < len(step) - 1 and step[i - 1] == " "]
    if ops:
        i = ops[-1]
        return step[:i] + _OPS[step[i]] + step[i + 1:]
    return None


def auroc(scores: list[float], labels: list[int]) -> float:
    """Area under the ROC curve (positives = label 1) from ranks, ties given their average rank."""
    pos = sum(1 for y in labels if y)
    neg = len(labels) - pos
    if pos == 0 or neg == 0:
        return float("nan")
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and scores[order[j + 1]] == scores[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0 + 1.0  # 1-based average rank of the tie group
        i = j + 1
    rank_sum = sum(r for r, y in zip(ranks, labels) if y)
    return (rank_sum - pos * (pos + 1) / 2.0) / (pos * neg)


def _z(values: list[float]) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device="cpu")
    sd = float(t.std()) if len(values) > 1 else 0.0
    return ((t - t.mean()) / (sd if sd > 0 else 1.0)).tolist()


@torch.inference_mode()
def run_verifier_study(target: Any, problems: list[Problem], config: SpecGuardConfig | None = None, *,
                       seed: int = 0) -> dict[str, Any]:
    """AUROC of grounding, confidence and the ensemble for gold steps vs their corrupted twins.

    The target sees the GSM8K prompt (chat template) and the earlier gold steps joined by the step
    delimiter; each step and its twin are scored in one tree-masked forward (the twin's entries are
    dropped, the gold step's kept). Returns the AUROC table, twin win rates and the raw scores.
    """
    from ..generate import encode_prompt

    cfg = config or SpecGuardConfig()
    model = target.model
    adapter.use_tree_attention(model)
    rng = random.Random(seed)
    rows: list[dict[str, float]] = []
    for prob in problems:
        ids = encode_prompt(target.tokenizer, gsm8k_prompt(prob.question))
        cache = adapter.new_cache(model)
        n = len(ids)
        dev = model.device
        out = adapter.tree_forward(model, torch.tensor(ids, device=dev), torch.arange(n, device=dev), cache,
                                   adapter.causal_mask(n, dev), logits_for=torch.tensor([n - 1], device=dev))
        last = out.logits[-1]  # [V]
        for i, step in enumerate(split_steps(prob.solution)):
            text = step + cfg.step_delimiter
            bad = corrupt_step(step, rng)
            gold_ids = [int(t) for t in target.tokenizer(text, add_special_tokens=False)["input_ids"]]
            if bad is not None:
                bad_ids = [int(t) for t in target.tokenizer(bad + cfg.step_delimiter, add_special_tokens=False)["input_ids"]]
                n_kv = adapter.cache_length(cache)
                good_sc, bad_sc = score_candidates(model, cache, [gold_ids, bad_ids], last, cfg)
                adapter.commit_cache(cache, n_kv, list(range(len(gold_ids))))
                for label, sc in ((1, good_sc), (0, bad_sc)):
                    rows.append({"label": label, "pair": len(rows) // 2, "conf_mean_exp": reduce_confidence(sc.token_logprobs, "mean_exp"),
                                 "conf_min": reduce_confidence(sc.token_logprobs, "min"), "grounding_min": float(sc.token_grounding.min()),
                                 "grounding_q": float(torch.quantile(sc.token_grounding, cfg.grounding_quantile)),
                                 "grounding_mean": float(sc.token_grounding.mean()), "confidence": sc.confidence,
                                 "grounding": sc.grounding, "step": i})
            else:
                good_sc = score_candidates(model, cache, [gold_ids], last, cfg)[0]
            last = good_sc.last_logits
    if not rows:
        raise SpecgenError("no scorable steps in the given problems")
    labels = [int(r["label"]) for r in rows]
    table = {key: auroc([r[key] for r in rows], labels)
             for key in ("conf_mean_exp", "conf_min", "grounding_min", "grounding_q", "grounding_mean")}
    g_eff = [effective_grounding(r["grounding"], [], cfg) for r in rows]
    table["grounding_effective"] = auroc(g_eff, labels)
    table["ensemble"] = auroc([decide(r["confidence"], g, cfg)[0] for r, g in zip(rows, g_eff)], labels)
    zc, zg = _z([r["confidence"] for r in rows]), _z(g_eff)
    table["ensemble_z"] = auroc([cfg.beta * c + (1 - cfg.beta) * g for c, g in zip(zc, zg)], labels)
    wins = {}
    for key in ("conf_mean_exp", "conf_min", "grounding_min"):
        pairs = [(rows[k][key], rows[k + 1][key]) for k in range(0, len(rows), 2)]
        wins[key] = sum(a > b for a, b in pairs) / len(pairs)
    accepted = [decide(r["confidence"], g, cfg)[1] for r, g in zip(rows, g_eff)]
    return {"problems": len(problems), "pairs": len(rows) // 2, "auroc": table, "twin_win_rate": wins,
            "accept_rate_gold": sum(a for a, y in zip(accepted, labels) if y) / max(1, sum(labels)),
            "accept_rate_corrupted": sum(a for a, y in zip(accepted, labels) if not y) / max(1, len(labels) - sum(labels)),
            "rows": rows}
