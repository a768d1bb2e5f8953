"""The runner with an injected fake generate function: planning, ar in the same run, resume, multi-turn."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from _bench_fakes import FakeGenerate
from specgen.bench.records import RECORDS_FILE
from specgen.bench.runner import BenchConfig, plan_methods, run_bench
from specgen.bench.suites import load_suite
from specgen.errors import SpecgenError


def test_plan_adds_ar_first_and_skips_index_methods_without_index(tmp_path: Path) -> None:
    runs, notes = plan_methods(BenchConfig())
    labels = [r.label for r in runs]
    assert labels[0] == "ar" and "pld" in labels
    assert "sd" not in labels  # the default run leaves out the self-draft (it accepts ~nothing on SmolLM2)
    assert "rest" not in labels and any(n.startswith("skipped rest") for n in notes)
    assert "sense" in labels and any("sense runs on the live context" in n for n in notes)
    index = str(tmp_path)  # configs check that the folder exists; planning reads nothing in it
    runs, notes = plan_methods(BenchConfig(methods=("rest", "sense"), index=index,
                                           method_options={"sense": {"gate": {"enabled": True}}}))
    assert [r.label for r in runs] == ["ar", "rest", "sense"] and not notes
    assert runs[1].config.index == index and runs[2].config.index == index
    assert runs[2].config.gate.enabled and not runs[2].lossless and runs[1].lossless
    runs, _ = plan_methods(BenchConfig(methods=("pld",)))
    assert [r.label for r in runs] == ["ar", "pld"]


def test_plan_rejects_unknown_method_and_stray_config_sections() -> None:
    with pytest.raises(SpecgenError, match="unknown method"):
        plan_methods(BenchConfig(methods=("nope",)))
    with pytest.raises(SpecgenError, match="not run"):
        plan_methods(BenchConfig(methods=("pld",), method_options={"sd": {"num_draft": 3}}))
    with pytest.raises(SpecgenError, match="does not apply"):
        plan_methods(BenchConfig(methods=("pld",), method_options={"pld": {"bogus": 3}}))


def test_plan_variants_run_their_base_method_with_presets() -> None:
    runs, notes = plan_methods(BenchConfig(methods=("sense", "sense-gate", "specguard-conf", "specguard-ground"),
                                           method_options={"sense": {"k": 8}, "sense-gate": {"gate": {"alpha": 0.1}}}))
    by = {r.label: r for r in runs}
    assert by["sense-gate"].method == "sense" and by["sense-gate"].config.gate.enabled
    assert by["sense-gate"].config.k == 8 and by["sense-gate"].config.gate.alpha == 0.1  # base section, then its own
    assert not by["sense-gate"].lossless and by["sense"].lossless and not by["sense"].config.gate.enabled
    assert by["specguard-conf"].method == "specguard" and by["specguard-conf"].config.signals == "confidence"
    assert by["specguard-ground"].config.signals == "grounding" and not by["specguard-ground"].lossless


def test_plan_method_config_and_budget_sweep() -> None:
    runs, _ = plan_methods(BenchConfig(methods=("pld",), method_options={"pld": {"num_draft": 4}}, budgets=(4, 8)))
    assert [r.label for r in runs] == ["ar", "pld@4", "pld@8"]
    assert runs[1].config.num_draft == 4 and runs[2].budget == 8


def test_run_records_ar_in_same_run_with_warmup(fake_bundle: Any, tiny_suite: Path) -> None:
    fake = FakeGenerate(wall={"ar": 2.0, "pld": 1.0}, diverge={"sd"})
    events: list[tuple[int, int, str]] = []
    cfg = BenchConfig(suite=str(tiny_suite), methods=("pld", "sd"), limit=None, max_new_tokens=9, warmup=1)
    res = run_bench(cfg, lambda d, t, w: events.append((d, t, w)), bundle=fake_bundle, generate_fn=fake)
    assert [c[0] for c in fake.calls[:3]] == ["ar", "pld", "sd"] and all(c[1] <= 16 for c in fake.calls[:3])
    assert len(res.records) == 3 * 4  # 3 methods x 4 questions, first turn only
    assert events[-1][:2] == (12, 12)
    pld = [r for r in res.records if r["method"] == "pld"]
    assert all(r["identical_to_ar"] for r in pld)
    assert not any(r["identical_to_ar"] for r in res.records if r["method"] == "sd")
    m = res.metrics
    assert m["ar"]["overall"]["tau"] == pytest.approx(1.0)
    assert m["pld"]["overall"]["tau"] == pytest.approx(2.0)
    assert m["pld"]["overall"]["speedup"] == pytest.approx(2.0)
    assert m["sd"]["overall"]["identical_to_ar"] == 0.0
    assert set(m["pld"]) == {"writing", "math", "overall"}
    q3 = next(r for r in res.records if r["question_id"] == "3" and r["method"] == "ar")
    assert q3["correct"] is False  # reference 4, fake text has no 4 at the end


def test_resume_skips_finished_prompts(fake_bundle: Any, tiny_suite: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    cfg = BenchConfig(suite=str(tiny_suite), methods=("pld",), limit=1, max_new_tokens=5, warmup=0, out_dir=str(out))
    first = FakeGenerate()
    # interrupt after ar and pld of the first question: the third call raises
    def flaky(*a: Any, **k: Any) -> Any:
        if len(first.calls) == 2:
            raise KeyboardInterrupt
        return first(*a, **k)
    with pytest.raises(KeyboardInterrupt):
        run_bench(cfg, bundle=fake_bundle, generate_fn=flaky)
    lines = (out / RECORDS_FILE).read_text().splitlines()
    assert [(json.loads(l)["method"], json.loads(l)["question_id"]) for l in lines] == [("ar", "1"), ("pld", "1")]
    second = FakeGenerate()
    res = run_bench(cfg, bundle=fake_bundle, generate_fn=second)
    assert second.calls == [("ar", 5), ("pld", 5)]  # only question 3 (the other category) was run
    assert len(res.records) == 4 and all(r["identical_to_ar"] for r in res.records)
    third = FakeGenerate()
    run_bench(cfg, bundle=fake_bundle, generate_fn=third)
    assert third.calls == []  # everything finished: nothing run, not even warm-up
    with pytest.raises(SpecgenError, match="other settings"):
        run_bench(BenchConfig(suite=str(tiny_suite), methods=("pld",), max_new_tokens=6, out_dir=str(out)),
                  bundle=fake_bundle, generate_fn=third)


def test_multi_turn_carries_the_answer(fake_bundle: Any, tiny_suite: Path) -> None:
    seen: list[list[int]] = []
    fake = FakeGenerate()

    def spy(target: Any, ids: list[int], **kw: Any) -> Any:
        seen.append(list(ids))
        return fake(target, ids, **kw)
    cfg = BenchConfig(suite=str(tiny_suite), methods=("pld",), limit=1, max_new_tokens=4, warmup=0, turns=2)
    res = run_bench(cfg, bundle=fake_bundle, generate_fn=spy)
    q1 = [r for r in res.records if r["question_id"] == "1" and r["method"] == "ar"]
    assert [r["turn"] for r in q1] == [0, 1]
    assert len(seen[1]) > len(seen[0]) + 4  # turn 2 prompt holds turn 1, its answer and turn 2


def test_suite_limit_per_category(tiny_suite: Path) -> None:
    qs = load_suite(str(tiny_suite), 1)
    assert [(q.question_id, q.category) for q in qs] == [("1", "writing"), ("3", "math")]
    assert qs[1].reference == "4"


def test_resume_refuses_records_made_with_other_method_settings_index_or_model(
        fake_bundle: Any, tiny_suite: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    base = dict(suite=str(tiny_suite), limit=1, max_new_tokens=5, warmup=0, out_dir=out)
    run_bench(BenchConfig(methods=("pld",), **base), bundle=fake_bundle, generate_fn=FakeGenerate())
    # another method config for a column already recorded
    with pytest.raises(SpecgenError, match=r"'pld' records made with other settings \(config.num_draft: 10 -> 4\)"):
        run_bench(BenchConfig(methods=("pld",), method_options={"pld": {"num_draft": 4}}, **base),
                  bundle=fake_bundle, generate_fn=FakeGenerate())
    # a new column is fine: only recorded groups must match
    again = FakeGenerate()
    run_bench(BenchConfig(methods=("pld", "sd"), **base), bundle=fake_bundle, generate_fn=again)
    assert {m for m, _ in again.calls} == {"sd"}
    # the same index path holding a rebuilt index is another index
    idx = tmp_path / "idx"
    idx.mkdir()
    (idx / "manifest.json").write_text('{"v": 1}')
    cfg = BenchConfig(methods=("sense",), index=str(idx), **base)
    run_bench(cfg, bundle=fake_bundle, generate_fn=FakeGenerate())
    (idx / "manifest.json").write_text('{"v": 2}')
    with pytest.raises(SpecgenError, match=r"'sense' records made with other settings \(config.index.manifest_sha256"):
        run_bench(cfg, bundle=fake_bundle, generate_fn=FakeGenerate())
    # a model with another identity under the same name
    ident = {"name": "fake-model", "config_sha256": "a", "tokenizer_sha256": "t"}
    other = tmp_path / "run2"
    named = SimpleNamespace(**vars(fake_bundle), identity=lambda: ident)
    cfg2 = BenchConfig(methods=("pld",), **{**base, "out_dir": str(other)})
    run_bench(cfg2, bundle=named, generate_fn=FakeGenerate())
    changed = SimpleNamespace(**vars(fake_bundle), identity=lambda: {**ident, "config_sha256": "b"})
    with pytest.raises(SpecgenError, match=r"other settings \(model_identity.config_sha256: 'a' -> 'b'\)"):
        run_bench(cfg2, bundle=changed, generate_fn=FakeGenerate())
