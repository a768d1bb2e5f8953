"""The paraphrase suite: does retrieval survive a request worded differently from what the datastore holds?

SENSE's argument (DESIGN.md section 2) is that lexical retrieval (REST) breaks under surface
variation while retrieval on the target's hidden states does not. The suite tests exactly that:
64 (original, paraphrase) request pairs written for this project (`specgen/data/paraphrase.jsonl`,
CC0), six kinds of request (code, how-to, explanation, rewriting, lists, advice), each pair marked
`tune` or `eval`. For one split, the datastore holds the target's own greedy answers to that split's
ORIGINALS (as `bench self-corpus` writes them), built once per model and cached; the benchmark then
decodes that split's PARAPHRASES. So the datastore never holds a paraphrase or an answer to one, and
defaults are chosen on `tune` and reported on `eval` (`tests/bench/test_paraphrase.py` checks both).
A user's own pairs file (JSONL with `original`, `paraphrase`, optional `id`, `category`, `split`)
takes the place of the shipped one.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import SpecgenError
from .suites import Question, read_jsonl

SPLITS = ("tune", "eval", "all")
PAIRS_FILE = Path(__file__).resolve().parents[1] / "specgen" / "data" / "paraphrase.jsonl"


@dataclass(frozen=True)
class Pair:
    pair_id: str
    category: str
    split: str
    original: str
    paraphrase: str


def pairs_file() -> Path:
    """The shipped pairs: inside the installed package, or beside the sources in a checkout."""
    from importlib import resources

    try:
        p = Path(str(resources.files("specgen") / "data" / "paraphrase.jsonl"))
        if p.is_file():
            return p
    except (ModuleNotFoundError, TypeError):
        pass
    if PAIRS_FILE.is_file():
        return PAIRS_FILE
    raise SpecgenError("the paraphrase pairs file is missing from this installation (specgen/data/paraphrase.jsonl)")


def load_pairs(path: str | Path | None = None) -> list[Pair]:
    """Pairs of the shipped file, or of a user's JSONL; a malformed row is one line naming it."""
    src = Path(path).expanduser() if path is not None else pairs_file()
    if not src.is_file():
        raise SpecgenError(f"--pairs: {src} is not a file")
    pairs = []
    for n, row in enumerate(read_jsonl(src), 1):
        o, p = row.get("original"), row.get("paraphrase")
        if not (isinstance(o, str) and o.strip() and isinstance(p, str) and p.strip()):
            raise SpecgenError(f"{src}: row {n} needs non-empty 'original' and 'paraphrase' strings")
        split = str(row.get("split", "eval"))
        if split not in ("tune", "eval"):
            raise SpecgenError(f"{src}: row {n}: split must be tune or eval, got {split!r}")
        if o.strip() == p.strip():
            raise SpecgenError(f"{src}: row {n}: the paraphrase equals the original")
        pairs.append(Pair(str(row.get("id", f"pair-{n}")), str(row.get("category", "paraphrase")), split, o, p))
    if not pairs:
        raise SpecgenError(f"{src}: no pairs")
    if len({p.pair_id for p in pairs}) != len(pairs):
        raise SpecgenError(f"{src}: pair ids must be unique")
    return pairs


def split_pairs(pairs: list[Pair], split: str) -> list[Pair]:
    if split not in SPLITS:
        raise SpecgenError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    return [p for p in pairs if split == "all" or p.split == split]


def paraphrase_questions(pairs: list[Pair], limit: int | None = None) -> list[Question]:
    """The benchmark's prompts: each pair's paraphrase (at most `limit` per category)."""
    seen: dict[str, int] = {}
    out = []
    for p in pairs:
        seen[p.category] = seen.get(p.category, 0) + 1
        if limit is None or seen[p.category] <= limit:
            out.append(Question(p.pair_id, p.category, (p.paraphrase,)))
    return out


def original_questions(pairs: list[Pair]) -> list[Question]:
    """The datastore's prompts: each pair's original request."""
    return [Question(p.pair_id, p.category, (p.original,)) for p in pairs]


def datastore_key(identity: dict[str, str], pairs: list[Pair], max_new_tokens: int) -> str:
    """Cache key of a split's datastore: model identity, the exact originals, answer length."""
    blob = json.dumps([identity, [(p.pair_id, p.original) for p in pairs], max_new_tokens], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def ensure_datastore(bundle: Any, pairs: list[Pair], max_new_tokens: int = 128,
                     progress: Callable[[str], None] | None = None) -> Path:
    """The semantic index of the target's own answers to `pairs`' originals, built once and cached
    under `$SPECGEN_CACHE/paraphrase/<key>/` (corpus.jsonl + index/), atomically."""
    from ..config import GenerationConfig
    from ..datastore.build import build_index
    from ..fileio import atomic_write_text
    from ..generate import generate
    from ..models import cache_dir
    from .runner import chat_ids, question_stop
    from .selfcorpus import corpus_record

    root = cache_dir() / "paraphrase" / datastore_key(bundle.identity(), pairs, max_new_tokens)
    index = root / "index"
    if (index / "manifest.json").is_file():
        return index
    root.mkdir(parents=True, exist_ok=True)
    corpus = root / "corpus.jsonl"
    if not corpus.is_file():
        lines = []
        for i, q in enumerate(original_questions(pairs)):
            if progress:
                progress(f"answering original {i + 1}/{len(pairs)}")
            ids = chat_ids(bundle.tokenizer, q, [], 0)
            res = generate(bundle, ids, method="pld", gen=GenerationConfig(max_new_tokens=max_new_tokens,
                                                                           stop=question_stop(bundle.tokenizer, q)))
            lines.append(json.dumps(corpus_record(bundle.tokenizer, q, q.turns[0], res.text)))
        atomic_write_text(corpus, "\n".join(lines) + "\n")
    if progress:
        progress("building the datastore")
    build_index(bundle.model, bundle.tokenizer, corpus, index, model_identity=bundle.identity())
    return index
