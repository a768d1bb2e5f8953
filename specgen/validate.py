"""One validation layer for options: every config and every CLI command checks its values here.

Each failure is a one-line SpecgenError that names the option as the user typed it (`--top-p`) and
the accepted range, raised before any model loads. Configs call `check_fields(self)` first in
`__post_init__` (types from the annotations: an int is an int, a float is finite, a string is not
empty, a tuple of strings holds no empty string), then `in_range` for their own bounds. Paths are
checked by `input_path`, `output_dir` and `output_file`, which create nothing.
"""
from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any

from .errors import SpecgenError

INT64_MAX = 2**63 - 1
SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed takes seeds up to 2**64 - 1


def flag(name: str) -> str:
    """The CLI spelling of a config field: `top_p` -> `--top-p`."""
    return "--" + name.replace("_", "-")


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def in_range(name: str, value: float, lo: float | None = None, hi: float | None = None, *,
             lo_open: bool = False, hi_open: bool = False) -> None:
    """SpecgenError unless `value` is finite and lies in the interval [lo, hi] (ends open as asked)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        span = f"{left}{_fmt(lo) if lo is not None else '-inf'}, {_fmt(hi) if hi is not None else 'inf'}{right}"
        raise SpecgenError(f"{flag(name)} must be a finite number in {span}, got {value!r}")


def choice(name: str, value: str, allowed: typing.Iterable[str]) -> None:
    """SpecgenError unless `value` is one of `allowed`."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise SpecgenError(f"{flag(name)} must be one of {', '.join(allowed)}, got {value!r}")


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _check_value(name: str, value: Any, hint: Any) -> None:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            _check_value(name, value, inner[0])
        return
    if hint is bool:
        if not isinstance(value, bool):
            raise SpecgenError(f"{flag(name)} must be true or false, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecgenError(f"{flag(name)} must be an integer, got {value!r}")
        if abs(value) > INT64_MAX and name != "seed":
            raise SpecgenError(f"{flag(name)} is out of range, got {value}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecgenError(f"{flag(name)} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise SpecgenError(f"{flag(name)} must be a finite number, got {value!r}")
    elif hint is str:
        if not isinstance(value, str):
            raise SpecgenError(f"{flag(name)} must be a string, got {value!r}")
        if not value:
            raise SpecgenError(f"{flag(name)} must not be empty")
    elif origin is tuple and args and args[-1] is Ellipsis:
        if not isinstance(value, tuple):
            raise SpecgenError(f"{flag(name)} must be a list, got {value!r}")
        for item in value:
            _check_value(name, item, args[0])


def check_fields(obj: Any) -> None:
    """Type-check every field of dataclass `obj` against its annotation (see the module docstring)."""
    hints = _hints(type(obj))
    for f in dataclasses.fields(obj):
        _check_value(f.name, getattr(obj, f.name), hints.get(f.name, Any))


def input_path(name: str, path: str | Path, kind: str = "any") -> Path:
    """An existing path: `kind` 'file', 'dir' or 'any'; SpecgenError otherwise."""
    p = Path(path).expanduser()
    if not str(path).strip():
        raise SpecgenError(f"{flag(name)} must not be empty")
    if not p.exists():
        raise SpecgenError(f"{flag(name)}: {path} does not exist")
    if kind == "file" and not p.is_file():
        raise SpecgenError(f"{flag(name)}: {path} is not a file")
    if kind == "dir" and not p.is_dir():
        raise SpecgenError(f"{flag(name)}: {path} is not a folder")
    return p


def _writable_ancestor(name: str, p: Path) -> None:
    """The nearest existing ancestor of `p` must be a folder in which a file can be created."""
    anc = p.parent if str(p.parent) else Path(".")
    while not anc.exists():
        if anc.parent == anc:
            break
        anc = anc.parent
    if not anc.is_dir():
        raise SpecgenError(f"{flag(name)}: cannot create {p}: {anc} is not a folder")
    try:  # access() misses read-only mounts and folders that take no files; a real probe does not
        st = anc.stat()
        fd, probe = tempfile.mkstemp(prefix=".specgen-probe-", dir=anc)
        os.close(fd)
        os.unlink(probe)
        os.utime(anc, ns=(st.st_atime_ns, st.st_mtime_ns))  # leave the folder as it was
    except OSError as exc:
        raise SpecgenError(f"{flag(name)}: cannot write in {anc}: {exc.strerror or exc}") from None


def output_dir(name: str, path: str | Path) -> Path:
    """A folder to write: absent (its parent writable) or an existing, writable folder."""
    if not str(path).strip():
        raise SpecgenError(f"{flag(name)} must not be empty")
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise SpecgenError(f"{flag(name)}: {path} exists and is not a folder")
    _writable_ancestor(name, p / "x" if p.is_dir() else p)
    return p


def output_file(name: str, path: str | Path) -> Path:
    """A file to write: absent or a regular file, in a writable folder."""
    if not str(path).strip():
        raise SpecgenError(f"{flag(name)} must not be empty")
    p = Path(path).expanduser()
    if p.is_dir():
        raise SpecgenError(f"{flag(name)}: {path} is a folder, expected a file path")
    if p.exists() and not p.is_file():
        raise SpecgenError(f"{flag(name)}: {path} is not a regular file")
    _writable_ancestor(name, p)
    return p
