"""How far can a soft gate go at issue 15's quality bars? A bound from a live bench's records.

    python docs/gate_hindsight_bound.py DIR/records.jsonl   # from `specgen bench ... --out DIR`

A gated token that differs from the target's own choice changes the greedy answer, so an answer
that stays exactly `ar`'s gained nothing from the gate. With hindsight, this picks which answers
to take from a gated run (each other answer keeps lossless `sense`'s record): at most 30% of them
(exact match >= 70%), the largest tau gains first, while the mean ROUGE-L against `ar` stays
>= 0.9. No real gate knows in advance which answers these are, so the tau it prints bounds what
any rule deciding where to apply that gate (same drafter, same thresholds) reaches at those bars. Tau here is tokens over steps, pooled over
the answers (the bench table averages per step the same way up to rounding). Needs the methods
rest, sense and at least one of sense-gate, sense-gate-hidden in the records.
"""
import json
import sys


def tau(records: list[dict]) -> float:
    """Tokens per step over the records, pooled."""
    return sum(r["new_tokens"] for r in records) / sum(r["steps"] for r in records)


def main(path: str) -> None:
    by: dict[str, dict[str, dict]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            run = json.loads(line)
            for rec in run["records"]:
                by.setdefault(run["method"], {})[rec["question_id"]] = rec
    lossless = by["sense"]
    qs = sorted(lossless)
    rest, sense = tau([by["rest"][q] for q in qs]), tau([lossless[q] for q in qs])
    print(f"{len(qs)} answers: rest {rest:.3f}, sense {sense:.3f} ({sense / rest:.2f}x rest's); 2x rest = {2 * rest:.3f}")
    for gate in ("sense-gate", "sense-gate-hidden"):
        if gate not in by:
            continue
        gated = by[gate]
        gain = {q: gated[q]["new_tokens"] / gated[q]["steps"] - lossless[q]["new_tokens"] / lossless[q]["steps"] for q in qs}
        chosen: list[str] = []
        for q in sorted(qs, key=lambda q: -gain[q]):
            if len(chosen) >= int(0.3 * len(qs)) or gain[q] <= 0:
                break
            trial = chosen + [q]
            rouge = (len(qs) - len(trial) + sum(gated[x]["rouge_l_ar"] for x in trial)) / len(qs)
            if not gated[q]["exact_match_ar"] and rouge >= 0.9:
                chosen = trial
        every, mixed = tau([gated[q] for q in qs]), tau([gated[q] if q in chosen else lossless[q] for q in qs])
        print(f"{gate}: every answer gated {every:.3f} ({every / rest:.2f}x); "
              f"the best {len(chosen)} with hindsight {mixed:.3f} ({mixed / rest:.2f}x)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python docs/gate_hindsight_bound.py RECORDS.jsonl")
    main(sys.argv[1])
