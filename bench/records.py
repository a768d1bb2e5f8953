"""The resumable records of a bench output folder: `run.json` (the run's settings) and `records.jsonl`.

Each finished (method, question) group is appended to `records.jsonl` with the settings that made
it (`run_settings`: the method, its full config, its tree budget, and for a datastore the sha256 of
the index manifest, not only its path). A rerun into the same folder reuses a group only when the
run's settings (`run.json`: suite, model and its identity, dtype, length, sampling, seed, turns,
policy, sizing) and the group's settings are the same as now; any difference is a one-line refusal
naming the setting, so a results file never mixes runs. Unreadable state is a one-line error that
names the file and how to start over; nothing is deleted.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

from ..errors import SpecgenError
from ..fileio import atomic_write_text

RECORDS_FILE = "records.jsonl"
RUN_FILE = "run.json"
INDEX_KEYS = ("index", "index_path", "index_dir")

Record = dict[str, Any]


def _canonical(value: Any) -> Any:
    """`value` as it reads back from JSON (tuples become lists), so stored and live settings compare."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def index_identity(path: str) -> dict[str, str]:
    """The index at `path` named by its manifest's sha256: a rebuilt index is another index."""
    manifest = Path(path) / "manifest.json"
    try:
        digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    except OSError:
        digest = "unreadable"
    return {"path": str(path), "manifest_sha256": digest}


def run_settings(method: str, config: Any, budget: int | None) -> dict[str, Any]:
    """What one bench column's records depend on beyond the run's settings."""
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None
    if cfg is not None:
        for key in INDEX_KEYS:
            if cfg.get(key):
                cfg[key] = index_identity(cfg[key])
        cfg.pop("scorer", None)  # a callable: named by the config's other fields
    return _canonical({"method": method, "config": cfg, "budget": budget})


def _diff(stored: dict[str, Any], live: dict[str, Any], prefix: str = "") -> str:
    """The first setting that differs, as `name: old -> new`."""
    for key in sorted(set(stored) | set(live)):
        a, b = stored.get(key), live.get(key)
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict):
                return _diff(a, b, f"{prefix}{key}.")
            return f"{prefix}{key}: {a!r} -> {b!r}"
    return ""


class RecordStore:
    """Append-only JSONL of finished (method, question) groups in an output folder; resume index."""

    def __init__(self, out_dir: str | None, fingerprint: dict[str, Any]) -> None:
        self.path = Path(out_dir) / RECORDS_FILE if out_dir else None
        self.done: dict[tuple[str, str], tuple[dict[str, Any], list[Record]]] = {}
        self._cut = 0  # bytes of a cut-off last line in the records file
        if self.path is None:
            return
        folder = self.path.parent
        if folder.exists() and not folder.is_dir():
            raise SpecgenError(f"--out {folder} exists and is not a folder")
        self.run_file = folder / RUN_FILE
        self.start_over = f"delete {self.run_file} and {self.path} to start over, or use another --out"
        self.stored = self._read_run_file() if self.run_file.is_file() else None
        fingerprint = _canonical(fingerprint)
        if self.stored is not None:
            diff = _diff({k: self.stored.get(k) for k in fingerprint}, fingerprint)
            if diff:
                raise SpecgenError(f"{folder} holds a run with other settings ({diff}); use another --out")
        if self.path.is_file():
            self._load()
        folder.mkdir(parents=True, exist_ok=True)
        if self.stored is None:
            self.stored = fingerprint
            atomic_write_text(self.run_file, json.dumps(fingerprint, indent=2) + "\n")

    def _read_run_file(self) -> dict[str, Any]:
        try:
            stored = json.loads(self.run_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise SpecgenError(f"{self.run_file} cannot be read ({str(exc).splitlines()[0]}): {self.start_over}") from None
        if not isinstance(stored, dict):
            raise SpecgenError(f"{self.run_file} is not a bench run file: {self.start_over}")
        return stored

    def bind(self, key: str, value: Any) -> None:
        """Add a setting known only later (the loaded model's identity); a stored different one refuses."""
        if self.path is None:
            return
        assert self.stored is not None
        value = _canonical(value)
        if key in self.stored and self.stored[key] != value:
            raise SpecgenError(f"{self.path.parent} holds a run with other settings "
                               f"({_diff({key: self.stored[key]}, {key: value})}); use another --out")
        if key not in self.stored:
            self.stored[key] = value
            atomic_write_text(self.run_file, json.dumps(self.stored, indent=2) + "\n")

    def _load(self) -> None:
        """Read the finished groups; a cut-off last line (an interrupted append) is dropped, any other
        unreadable line is an error that names the file (nothing is deleted)."""
        assert self.path is not None
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecgenError(f"{self.path} cannot be read ({exc}): {self.start_over}") from None
        lines = text.split("\n")
        self._cut = 0 if text.endswith("\n") or not text else len(lines[-1].encode("utf-8"))
        for i, line in enumerate(lines):
            if not line.strip() or (i == len(lines) - 1 and self._cut):
                continue  # an append cut by an interruption: that group is redone
            try:
                group = json.loads(line)
                key, records = (str(group["method"]), str(group["question_id"])), group["records"]
                settings = group.get("settings")
                if not isinstance(records, list) or not isinstance(settings, (dict, type(None))):
                    raise TypeError("records is not a list")
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise SpecgenError(f"{self.path} line {i + 1} is corrupt ({str(exc).splitlines()[0]}): {self.start_over}") from None
            if records:
                self.done[key] = (settings or {}, records)

    def get(self, label: str, question_id: str, settings: dict[str, Any] | None = None) -> list[Record] | None:
        """The stored records of (label, question), or None; stored under other settings: a refusal."""
        found = self.done.get((label, question_id))
        if found is None:
            return None
        stored, records = found
        if settings is not None and stored != settings:
            assert self.path is not None
            diff = _diff(stored, settings) or "settings not recorded"
            raise SpecgenError(f"{self.path} holds '{label}' records made with other settings ({diff}); "
                               "use another --out")
        return records

    def add(self, label: str, question_id: str, records: list[Record], settings: dict[str, Any] | None = None) -> None:
        self.done[(label, question_id)] = (settings or {}, records)
        if self.path is not None:
            if self._cut:  # drop the cut-off tail first, so the new group starts on a line of its own
                with self.path.open("r+b") as fh:
                    fh.truncate(self.path.stat().st_size - self._cut)
                self._cut = 0
            line = {"method": label, "question_id": question_id, "settings": settings or {}, "records": records}
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")
                fh.flush()
