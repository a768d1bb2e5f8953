"""The index folder: its manifest and the atomic write/replace protocol (DESIGN.md section 4).

Layout of an index folder (all arrays are `.npy`, memory-mapped on load):

    manifest.json      this file's `Manifest`; written last, so a folder without it is incomplete
    tokens.npy         [N] int32, the corpus token stream, documents back to back
    doc_offsets.npy    [D + 1] int64, document d spans tokens[doc_offsets[d]:doc_offsets[d + 1]]
    keys.npy           [N, d] float16, key of position t = projected, L2-normalised hidden state at t
    values.npy         [N, L] int32, the L tokens after position t within its document, -1 past its end
    sa.npy             [N + D] int32/int64, suffix array of the token stream with -1 after each document
    projection.npz     mean [H], scale [H], components [H, d] (only with PCA)
    index.faiss        the approximate index (absent for `flat`, which is built from keys.npy on load)

A sharded folder (`build-index --ray`, shards.py) has keys-NNNNN.npy (and, but for `flat`,
index-NNNNN.faiss) per shard instead of keys.npy and index.faiss, listed in the manifest's `shards`.

Writing: everything goes to `<out>.tmp-<pid>` beside the target, is fsynced, and is then renamed into
place. An existing index is swapped atomically (renameat2 RENAME_EXCHANGE where the kernel has it,
else rename-old-aside + rename-new + delete-old, with recovery of the aside copy on the next run),
so an interrupted build always leaves the previous index loadable.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import fcntl
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

from contextlib import contextmanager

from ..errors import SpecgenError

FORMAT = "specgen-semantic-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    """What manifest.json records. `files` maps each file of the folder to its size in bytes."""

    model: dict[str, str]  # identity: name, config_sha256, tokenizer_sha256
    layer: int  # -1 = final normed hidden state; l >= 0 = output of decoder layer l
    hidden_size: int  # H, the model's hidden size
    dim: int  # d, the stored key dimension (H, or the PCA dimension)
    projection: dict[str, Any]  # {"type": "none"} or {"type": "pca", "dim": d, "file": ..., "zscore": bool}
    normalize: str  # "l2": keys and queries are L2-normalised, inner product = cosine similarity
    count: int  # N keys = N corpus tokens (key i belongs to token position i)
    documents: int
    continuation_len: int  # L
    index: dict[str, Any]  # {"type": ..., "params": {...}, "file": "index.faiss" | None}
    corpus: list[dict[str, Any]]  # per file: path, sha256, bytes, documents, tokens
    build: dict[str, Any]  # build parameters, corpus reading notes, timings and throughput
    files: dict[str, int]
    created: str
    format: str = FORMAT
    # Sharded keys (shards.py): per shard index, doc/row ranges, keys_file, index_file and their sha256;
    # empty = keys.npy and index.faiss.
    shards: list[dict[str, Any]] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Manifest":
        names = {f for f in cls.__dataclass_fields__}
        missing = names - set(d) - {"format", "format_version", "shards"}
        if missing:
            raise KeyError(", ".join(sorted(missing)))
        return cls(**{k: v for k, v in d.items() if k in names})


def read_manifest(path: Path) -> Manifest:
    """The manifest of index folder `path`, checked for completeness; SpecgenError one-liners otherwise."""
    if not path.exists():
        raise SpecgenError(f"index not found: {path}")
    if not path.is_dir():
        raise SpecgenError(f"not an index folder: {path}")
    mfile = path / MANIFEST
    if not mfile.is_file():
        raise SpecgenError(f"incomplete or not an index folder (no {MANIFEST}): {path}")
    try:
        raw = json.loads(mfile.read_text(encoding="utf-8"))
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError("not a specgen index manifest")
        if raw.get("format_version") != FORMAT_VERSION:
            raise SpecgenError(f"index format version {raw.get('format_version')} is not supported "
                               f"(this specgen reads {FORMAT_VERSION}): rebuild {path}")
        manifest = Manifest.from_dict(raw)
    except SpecgenError:
        raise
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpecgenError(f"corrupt index manifest in {path} ({why}): rebuild the index (specgen build-index)") from None
    if (not isinstance(manifest.files, dict) or not isinstance(manifest.shards, list)
            or not all(isinstance(d, dict) for d in (manifest.index, manifest.projection))):
        raise SpecgenError(f"corrupt index manifest in {path}: files, index and projection must be mappings, shards a list: "
                           "rebuild the index (specgen build-index)")
    named = [*manifest.files, manifest.index.get("file"), manifest.projection.get("file")]
    for name in named:
        if name is not None and not _plain_name(name):
            raise SpecgenError(f"corrupt index manifest in {path}: file name {name!r} is not a plain name "
                               "inside the index folder: rebuild the index (specgen build-index)")
    for name, size in manifest.files.items():
        f = path / name
        if not f.is_file():
            raise SpecgenError(f"incomplete index {path}: {name} is missing: rebuild the index (specgen build-index)")
        if f.stat().st_size != size:
            raise SpecgenError(f"corrupt index {path}: {name} has {f.stat().st_size} bytes, expected {size}: "
                               "rebuild the index (specgen build-index)")
    return manifest


def _plain_name(name: object) -> bool:
    """A file name that stays inside its folder: no separator, no '..', not absolute."""
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name)


def check_identity(manifest: Manifest, expected: dict[str, str] | None, path: Path, *, tokenizer_only: bool = False) -> None:
    """SpecgenError when the index was built with another model (or, `tokenizer_only`, another tokenizer)."""
    if expected is None:
        return
    keys = ("tokenizer_sha256",) if tokenizer_only else ("config_sha256", "tokenizer_sha256")
    for key in keys:
        if key in expected and manifest.model.get(key) != expected[key]:
            what = "tokenizer" if key == "tokenizer_sha256" else "model"
            raise SpecgenError(f"index {path} was built with another {what} ('{manifest.model.get('name')}'), "
                               f"not '{expected.get('name', '?')}': rebuild it or pick the matching --model")


# --- atomic folder writes --------------------------------------------------------------------------

def tmp_dir_for(out: Path) -> Path:
    return out.with_name(f"{out.name}.tmp-{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cleanup_stale(out: Path) -> None:
    """Remove leftovers of killed builds beside `out`; restore an index left aside by a cut-off swap.

    Call with the build lock held.
    """
    parent = out.parent
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        for tag in (".tmp-", ".old-"):
            prefix = out.name + tag
            if not entry.name.startswith(prefix):
                continue
            pid_text = entry.name[len(prefix):]
            if not pid_text.isdigit() or (int(pid_text) != os.getpid() and _pid_alive(int(pid_text))):
                continue
            if tag == ".old-" and not out.exists() and (entry / MANIFEST).is_file():
                os.rename(entry, out)  # the swap was cut between its two renames: put the old index back
            else:
                shutil.rmtree(entry, ignore_errors=True)


@dataclass
class LockInfo:
    """What taking the build lock found: the pid of a build that died holding it (its file remained)."""

    stale_pid: int | None = None


def _holder_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


@contextmanager
def build_lock(out: Path, *, wait: bool = False) -> Iterator[LockInfo]:
    """Exclusive lock `<out>.lock` (flock) for the duration of a build.

    Only the holder removes the lock file, and only while it still holds the lock; a process that
    locked a file which the previous holder unlinked in the meantime retries on the current one, so
    two builds never hold the lock at once. With `wait` (appends) a build queues behind the holder;
    without it a build held off is a SpecgenError naming the holder's pid. The kernel drops the lock
    of a process that dies, so a lock file left by a killed build is taken over (its pid reported
    in `LockInfo.stale_pid`).
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out.with_name(out.name + ".lock")
    while True:
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            holder = _holder_pid(fd)
            os.close(fd)  # refused: the lock file is the holder's, left where it is
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                who = f" (pid {holder})" if holder else ""
                raise SpecgenError(f"another build{who} is writing {out}: wait for it to finish "
                                   "(--append builds queue behind it)") from None
            raise
        try:
            same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the file we locked was unlinked by its previous holder: lock the current one
    info = LockInfo()
    try:
        prev = _holder_pid(fd)
        if prev is not None and prev != os.getpid() and not _pid_alive(prev):
            info.stale_pid = prev
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield info
    finally:
        try:
            os.unlink(lock_path)  # still holding the lock: a waiter that got the old file retries
        except OSError:
            pass
        os.close(fd)


def fsync_tree(folder: Path) -> None:
    """fsync every file of `folder`, then the folder itself."""
    for f in folder.iterdir():
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with renameat2(RENAME_EXCHANGE); False when unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return rc == 0


def publish(tmp: Path, out: Path) -> None:
    """Move the complete folder `tmp` to `out`, replacing an existing index without a moment where
    neither a complete old nor a complete new index is loadable."""
    fsync_tree(tmp)
    if out.exists():
        if _exchange(tmp, out):  # tmp now holds the old index
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            aside = out.with_name(f"{out.name}.old-{os.getpid()}")
            os.rename(out, aside)
            os.rename(tmp, out)
            shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(tmp, out)
    _fsync_dir(out.parent)


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")
