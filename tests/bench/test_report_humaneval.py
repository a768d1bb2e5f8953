"""Report files (Spec-Bench JSONL round trip, summary, PNG plots, compare) and the HumanEval sandbox."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from _bench_fakes import FakeGenerate
from specgen.bench.humaneval import build_program, check_completion
from specgen.bench.report import (compare_table, load_summary, read_spec_bench_jsonl, result_tables, write_outputs)
from specgen.bench.runner import BenchConfig, run_bench
from specgen.bench.suites import gsm8k_answer, load_suite

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def result(fake_bundle: Any, tiny_suite: Path) -> Any:
    cfg = BenchConfig(suite=str(tiny_suite), methods=("pld",), limit=None, max_new_tokens=6, warmup=0, turns=2,
                      budgets=(2, 4))
    return run_bench(cfg, bundle=fake_bundle, generate_fn=FakeGenerate(wall={"ar": 2.0}))


def test_out_dir_layout_round_trip_and_plots(result: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    written = write_outputs(result, out)
    assert out / "summary.json" in written
    rows = read_spec_bench_jsonl(out / "model_answer" / "pld@2.jsonl")
    assert [r["question_id"] for r in rows] == ["1", "2", "3", "4"]
    first = rows[0]
    assert set(first) == {"question_id", "category", "model_id", "choices"}
    choice = first["choices"][0]
    assert choice["index"] == 0 and len(choice["turns"]) == 2 and len(choice["new_tokens"]) == 2
    assert len(choice["wall_time"]) == 2 and sum(choice["accept_lengths"]) == 2 * (6 - 1)
    recs = [r for r in result.records if r["method"] == "pld@2" and r["question_id"] == "1"]
    assert choice["turns"] == [r["text"] for r in recs]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["environment"]["torch"] and "git_commit" in summary["environment"]
    assert summary["metrics"]["pld@4"]["overall"]["speedup"] == pytest.approx(2.0)
    for name in ("speedup.png", "accept_lengths.png", "budget_sweep.png"):
        data = (out / "plots" / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 5000
    assert load_summary(out)["model"] == "fake-model"


def test_json_out_and_tables_and_compare(result: Any, tmp_path: Path) -> None:
    from rich.console import Console

    path = write_outputs(result, tmp_path / "r.json")[0]
    data = json.loads(path.read_text())
    assert len(data["records"]) == len(result.records) and "metrics" in data
    console = Console(record=True, width=160)
    for t in result_tables(result.metrics):
        console.print(t)
    console.print(compare_table(load_summary(path), load_summary(path)))
    text = console.export_text()
    assert "writing" in text and "overall" in text and "pld@4" in text and "+0.00" in text


def test_humaneval_sandbox_correct_wrong_and_looping() -> None:
    prompt = "def add(a, b):\n    \"\"\"Add.\"\"\"\n"
    test = "def check(f):\n    assert f(2, 3) == 5\n"
    assert check_completion(prompt, "    return a + b\n", test, "add").passed
    wrong = check_completion(prompt, "    return a - b\n", test, "add")
    assert not wrong.passed and "AssertionError" in wrong.error
    t0 = time.perf_counter()
    loop = check_completion(prompt, "    while True:\n        pass\n", test, "add", timeout_s=1.0)
    assert not loop.passed and loop.timed_out and time.perf_counter() - t0 < 5
    fenced = "Here you go:\n```python\ndef add(a, b):\n    return a + b\n```\n"
    assert "check(add)" in build_program(prompt, fenced, test, "add")
    assert check_completion(prompt, fenced, test, "add").passed


def test_named_suites_load() -> None:
    spec = load_suite("spec-bench", 1)
    assert [q.category for q in spec] == ["mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag"]
    mt = [q for q in load_suite("spec-bench", 10) if q.category == "mt_bench"]
    assert [q.subcategory for q in mt[:9]] == ["writing", "roleplay", "reasoning", "math", "coding", "extraction",
                                               "stem", "humanities", "writing"]  # round-robin over MT-bench's eight
    assert len({q.question_id for q in load_suite("spec-bench", 0 or None)}) == 480
    he = load_suite("humaneval", 2)
    assert len(he) == 2 and he[0].entry_point and he[0].test and he[0].code_prompt
    assert he[0].code_prompt in he[0].turns[0] and "```python" in he[0].turns[0]  # a chat request around the code
    mt = load_suite("mt-bench", 1)
    assert all(len(q.turns) == 2 for q in mt)
    gsm = load_suite("gsm8k", 3)
    assert len(gsm) == 3 and gsm[0].reference == "18"
    assert gsm8k_answer("so 1,200.50 total\n#### 1,200.50") == "1200.5"


def test_task_quality_gsm8k_and_humaneval() -> None:
    from specgen.bench.runner import task_quality
    from specgen.bench.suites import Question

    g = Question("g1", "gsm8k", ("q",), reference="18")
    assert task_quality(g, "She makes 9 * 2 = 18 dollars.\n#### 18", 0)["correct"] is True
    assert task_quality(g, "The answer is 1,800", 0)["correct"] is False
    assert task_quality(g, "so she earns 18 dollars", 0)["correct"] is True  # last number when no ####
    h = Question("h1", "humaneval", ("def add(a, b):\n",), test="def check(f):\n    assert f(1, 2) == 3\n",
                 entry_point="add", raw=True)
    assert task_quality(h, "    return a + b\n", 0) == {"correct": None, "passed": True}
    assert task_quality(h, "    return a * b\n", 0)["passed"] is False


def test_spec_bench_references_scored_only_when_numeric() -> None:
    spec = {q.category: q for q in load_suite("spec-bench", 1)}
    assert spec["math_reasoning"].reference is not None and spec["math_reasoning"].reference.lstrip("-").isdigit()
    assert spec["summarization"].reference is None and spec["translation"].reference is None
    assert spec["mt_bench"].reference is None and spec["mt_bench"].subcategory == "writing"


def test_humaneval_prompt_mode_follows_the_chat_template() -> None:
    from specgen.bench.runner import chat_ids, question_stop, task_quality
    from specgen.bench.suites import read_jsonl, suite_path

    q = load_suite("humaneval", 1)[0]
    calls: list[tuple[str, bool]] = []

    def encode(text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        calls.append((text, add_special_tokens))
        return {"input_ids": [1, 2, 3]}

    base = type("Tok", (), {"chat_template": None, "__call__": staticmethod(encode)})()
    chat_ids(base, q, [], 0)
    assert calls[-1][0] == q.code_prompt  # a base model completes the code itself ...
    assert question_stop(base, q) == q.stop and "\ndef " in q.stop  # ... and stops at the end of the body
    chat = type("Tok", (), {"chat_template": "x", "__call__": staticmethod(encode)})()
    assert question_stop(chat, q) == ()  # an instruct model answers in a fenced block: no body stops
    fenced = f"Sure:\n```python\n{q.code_prompt}    return False\n```\nDone."
    assert task_quality(q, fenced, 0)["passed"] is False  # extracted and run: this stub fails the tests
    canonical = read_jsonl(suite_path("humaneval"))[0]["canonical_solution"]
    assert task_quality(q, f"Here it is:\n```python\n{q.code_prompt}{canonical}```\n", 0)["passed"] is True
