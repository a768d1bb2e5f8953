"""Fixtures for the bench tests: hand-made records, a fake model bundle and generate function, a tiny LLaMA."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _bench_fakes import FakeTokenizer  # noqa: E402


@pytest.fixture()
def fake_bundle() -> Any:
    return SimpleNamespace(name="fake-model", tokenizer=FakeTokenizer(), model=None, eos_ids={0})


@pytest.fixture()
def tiny_suite(tmp_path: Path) -> Path:
    """Four questions in two categories, one with two turns."""
    rows = [{"question_id": 1, "category": "writing", "turns": ["write a poem about the sea", "now shorter please"]},
            {"question_id": 2, "category": "writing", "turns": ["write a story"]},
            {"question_id": 3, "category": "math", "prompt": "what is two plus two", "reference": "4"},
            {"question_id": 4, "category": "math", "question": "what is three plus four"}]
    path = tmp_path / "tiny.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def bench_bundle(request: pytest.FixtureRequest) -> Any:
    """The real model: the lead's session fixture `real_bundle` when present, else loaded here."""
    try:
        return request.getfixturevalue("real_bundle")
    except pytest.FixtureLookupError:
        from specgen.models import load_model

        return load_model(None)
