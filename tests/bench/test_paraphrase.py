"""The paraphrase suite: the shipped pairs, the tune/eval split, and a datastore that holds only the
target's answers to the split's originals (never a paraphrase, never the other split)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "datastore"))

from _tiny import tiny_model, tiny_tokenizer  # noqa: E402
from specgen.bench.paraphrase import (ensure_datastore, load_pairs, original_questions, pairs_file,  # noqa: E402
                                      paraphrase_questions, split_pairs)
from specgen.errors import SpecgenError  # noqa: E402
from specgen.models import ModelBundle  # noqa: E402


def test_shipped_pairs_are_varied_and_split_in_halves() -> None:
    pairs = load_pairs()
    assert len(pairs) >= 60
    cats = {p.category for p in pairs}
    assert cats >= {"code", "howto", "explanation", "rewriting", "lists", "advice"}
    tune, ev = split_pairs(pairs, "tune"), split_pairs(pairs, "eval")
    assert len(tune) + len(ev) == len(pairs) and abs(len(tune) - len(ev)) <= len(cats)
    for cat in cats:  # each kind of request is in both halves
        assert any(p.category == cat for p in tune) and any(p.category == cat for p in ev)
    assert all(p.original.strip() != p.paraphrase.strip() for p in pairs)
    assert (pairs_file().parent / "LICENSE.paraphrase").is_file()


def test_the_evaluation_half_is_never_seen_by_tuning() -> None:
    pairs = load_pairs()
    tune, ev = split_pairs(pairs, "tune"), split_pairs(pairs, "eval")
    assert not {p.pair_id for p in tune} & {p.pair_id for p in ev}
    tune_texts = {q.turns[0] for q in original_questions(tune) + paraphrase_questions(tune)}
    assert not tune_texts & ({p.original for p in ev} | {p.paraphrase for p in ev})
    # what a split decodes is its paraphrases; what its datastore is built from is its originals
    assert [q.turns[0] for q in paraphrase_questions(ev)] == [p.paraphrase for p in ev]
    assert not {q.turns[0] for q in original_questions(ev)} & {p.paraphrase for p in pairs}


@pytest.mark.parametrize("row,msg", [({"original": "a"}, "needs non-empty"), ({"original": "x", "paraphrase": "x"}, "equals"),
                                     ({"original": "a", "paraphrase": "b", "split": "test"}, "split")])
def test_bad_pairs_file_is_one_line(tmp_path: Path, row: dict[str, Any], msg: str) -> None:
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps(row) + "\n")
    with pytest.raises(SpecgenError, match=msg):
        load_pairs(f)
    with pytest.raises(SpecgenError, match="split"):
        split_pairs([], "dev")


def test_datastore_holds_only_the_originals_answers_and_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECGEN_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "pairs.jsonl"
    rows = [{"id": f"q{i}", "category": "c", "split": "eval" if i % 2 else "tune",
             "original": f"original request number {i} about apples", "paraphrase": f"reworded ask {i} on apples"}
            for i in range(4)]
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = tiny_tokenizer()
    bundle = ModelBundle(model=tiny_model(len(tok)), tokenizer=tok, name="tiny", path=None)
    ev = split_pairs(load_pairs(f), "eval")
    index = ensure_datastore(bundle, ev, max_new_tokens=8)
    assert (index / "manifest.json").is_file()
    corpus = (index.parent / "corpus.jsonl").read_text()
    for r in rows:
        assert r["paraphrase"] not in corpus  # never a paraphrase
        assert (r["original"] in corpus) == (r["split"] == "eval")  # only this split's originals
    mtime = (index / "manifest.json").stat().st_mtime_ns
    assert ensure_datastore(bundle, ev, max_new_tokens=8) == index
    assert (index / "manifest.json").stat().st_mtime_ns == mtime  # cached, not rebuilt
    assert ensure_datastore(bundle, split_pairs(load_pairs(f), "tune"), max_new_tokens=8) != index
