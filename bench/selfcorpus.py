"""`specgen bench self-corpus`: the target's own answers to held-out suite questions, as a corpus.

Retrieval drafts pay when the datastore holds text in the model's own words on the same kind of
request (DESIGN.md section 2: 2.51 tokens/step with the model's answers to other Spec-Bench prompts
against 1.22 with ShareGPT alone). This writes such a corpus for `specgen build-index`: per category,
the questions after the first `skip` (those a `bench --limit skip` run evaluates, so the datastore
never holds an evaluated question or its answer), answered greedily by a lossless method. Chat
models get ShareGPT-style records (rendered with the chat template at build time, the format the
model decodes in); models without a template get plain `text` records of prompt and answer.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from ..errors import SpecgenError
from ..validate import in_range, output_file
from .suites import Question, load_suite

ProgressFn = Callable[[int, int], None]


def held_out(questions: list[Question], skip: int, limit: int | None) -> list[Question]:
    """Per category, the questions after the first `skip`, at most `limit` of them."""
    if skip < 0 or (limit is not None and limit < 1):
        raise SpecgenError("self-corpus: --skip must be >= 0 and --limit >= 1")
    seen: dict[str, int] = defaultdict(int)
    kept: list[Question] = []
    for q in questions:
        seen[q.category] += 1
        rank = seen[q.category] - 1
        if rank >= skip and (limit is None or rank < skip + limit):
            kept.append(q)
    return kept


def corpus_record(tokenizer: Any, question: Question, prompt_text: str, answer: str) -> dict[str, Any]:
    """One corpus record: a conversation for chat models, prompt + answer text otherwise."""
    if getattr(tokenizer, "chat_template", None):
        return {"id": question.question_id, "conversations": [{"from": "human", "value": question.turns[0]},
                                                              {"from": "gpt", "value": answer}]}
    return {"id": question.question_id, "text": prompt_text + answer}


def write_self_corpus(suite: str, out: str | os.PathLike[str], *, skip: int = 5, limit: int | None = None,
                      method: str = "pld", model: str | None = None, dtype: str = "float32",
                      max_new_tokens: int = 128, bundle: Any = None, progress: ProgressFn | None = None) -> dict[str, Any]:
    """Answer the held-out questions of `suite` with the target and write them to `out` (JSONL, atomically)."""
    from ..config import MAX_NEW_TOKENS, GenerationConfig
    from ..generate import generate
    from .runner import chat_ids, question_stop

    in_range("skip", skip, 0, 1_000_000)
    if limit is not None:
        in_range("limit", limit, 1, 1_000_000)
    in_range("max_new_tokens", max_new_tokens, 1, MAX_NEW_TOKENS)
    output_file("output", out)
    questions = held_out(load_suite(suite, None), skip, limit)
    if not questions:
        raise SpecgenError(f"self-corpus: no questions of {suite} left after skipping {skip} per category")
    if bundle is None:
        from ..models import load_model

        bundle = load_model(model, dtype)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".tmp-", dir=path.parent)
    tokens = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for i, q in enumerate(questions):
                ids = chat_ids(bundle.tokenizer, q, [], 0)
                gen = GenerationConfig(max_new_tokens=max_new_tokens, stop=question_stop(bundle.tokenizer, q))
                res = generate(bundle, ids, method=method, gen=gen)
                tokens += len(res.token_ids)
                fh.write(json.dumps(corpus_record(bundle.tokenizer, q, q.source_prompt, res.text)) + "\n")
                if progress:
                    progress(i + 1, len(questions))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"path": str(path), "questions": len(questions), "answer_tokens": tokens, "suite": suite,
            "skip": skip, "method": method}
