"""`bench self-corpus`: held-out selection, atomic JSONL, and the file builds into an index."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from _bench_fakes import tiny_bundle
from specgen.bench.selfcorpus import corpus_record, held_out, write_self_corpus
from specgen.bench.suites import Question, load_suite
from specgen.errors import SpecgenError


def test_held_out_leaves_the_evaluated_questions_out(tiny_suite: Path) -> None:
    qs = load_suite(str(tiny_suite))
    evaluated = {q.question_id for q in load_suite(str(tiny_suite), 1)}
    kept = held_out(qs, skip=1, limit=None)
    assert [q.question_id for q in kept] == ["2", "4"] and not evaluated & {q.question_id for q in kept}
    assert held_out(qs, skip=0, limit=1) == load_suite(str(tiny_suite), 1)
    with pytest.raises(SpecgenError):
        held_out(qs, skip=-1, limit=None)


def test_records_follow_the_chat_template() -> None:
    q = Question("7", "c", ("hi there",))
    chat = type("T", (), {"chat_template": "t"})()
    assert corpus_record(chat, q, "hi there", "hello")["conversations"][1] == {"from": "gpt", "value": "hello"}
    assert corpus_record(object(), q, "hi there", " hello") == {"id": "7", "text": "hi there hello"}


def test_write_self_corpus_with_a_tiny_model(tiny_suite: Path, tmp_path: Path) -> None:
    out = tmp_path / "c" / "self.jsonl"
    bundle = tiny_bundle()
    info = write_self_corpus(str(tiny_suite), out, skip=1, max_new_tokens=6, bundle=bundle)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert info["questions"] == 2 and [r["id"] for r in rows] == ["2", "4"] and info["answer_tokens"] > 0
    if getattr(bundle.tokenizer, "chat_template", None):
        turns = rows[0]["conversations"]
        assert turns[0] == {"from": "human", "value": "write a story"} and turns[1]["from"] == "gpt"
    else:
        assert rows[0]["text"].startswith("write a story") and len(rows[0]["text"]) > len("write a story")
    assert not list(out.parent.glob("*.tmp-*"))
    with pytest.raises(SpecgenError, match="no questions"):
        write_self_corpus(str(tiny_suite), out, skip=5, bundle=tiny_bundle())


def test_cli_refuses_a_lossy_method(tmp_path: Path) -> None:
    from specgen.cli.main import app

    r = CliRunner().invoke(app, ["bench", "self-corpus", "-o", str(tmp_path / "x.jsonl"), "--method", "specguard"])
    assert r.exit_code == 2 and "lossless" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x.jsonl").exists()
