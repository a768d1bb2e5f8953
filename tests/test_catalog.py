"""Named models from chunk packages: parts checked one by one and whole, written atomically."""
from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

import pytest

from specgen.catalog import NAMED, assemble_parts, named_gguf, recorded_sha256
from specgen.errors import SpecgenError
from specgen.models import check_model_spec


def _parts(tmp_path: Path, n: int = 3) -> list[tuple[str, Path, str]]:
    out = []
    for i in range(n):
        p = tmp_path / f"part{i:02d}.bin"
        p.write_bytes(bytes([i]) * (1000 + i))
        out.append((f"pkg-part{i + 1}", p, hashlib.sha256(p.read_bytes()).hexdigest()))
    return out


def _whole(parts: list[tuple[str, Path, str]]) -> tuple[int, str]:
    data = b"".join(p.read_bytes() for _, p, _ in parts)
    return len(data), hashlib.sha256(data).hexdigest()


def test_parts_are_concatenated_in_order_and_checked(tmp_path: Path) -> None:
    parts = _parts(tmp_path)
    size, sha = _whole(parts)
    out = assemble_parts(parts, tmp_path / "gguf" / "m.gguf", size=size, sha256=sha)
    assert out.read_bytes() == b"".join(p.read_bytes() for _, p, _ in parts)
    assert sorted(x.name for x in out.parent.iterdir()) == ["m.gguf"]


@pytest.mark.parametrize("fault", ["damaged part", "wrong size", "wrong sha256"])
def test_a_wrong_part_is_a_clear_error_and_leaves_no_file(tmp_path: Path, fault: str) -> None:
    parts = _parts(tmp_path)
    size, sha = _whole(parts)
    if fault == "damaged part":
        parts[1][1].write_bytes(b"\x01" * 999 + b"X" + b"\x01")  # same length, another byte
        match = "part pkg-part2 of m.gguf is damaged"
    elif fault == "wrong size":
        size += 1
        match = "bytes, expected"
    else:
        sha = "0" * 64
        match = "has sha256"
    with pytest.raises(SpecgenError, match=match):
        assemble_parts(parts, tmp_path / "gguf" / "m.gguf", size=size, sha256=sha)
    assert list((tmp_path / "gguf").iterdir()) == []  # no partial file, no temporary left


def test_a_named_model_that_is_not_installed_names_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPECGEN_CACHE", str(tmp_path))
    missing = NAMED["qwen2.5-coder-0.5b"].parts[0][0]
    try:
        importlib.metadata.distribution(missing)
        pytest.skip("the Qwen packages are installed here")
    except importlib.metadata.PackageNotFoundError:
        pass
    with pytest.raises(SpecgenError, match=r"model 'qwen2.5-coder-0.5b' needs the package .*: run `make setup-qwen`"):
        check_model_spec("qwen2.5-coder-0.5b")
    assert not any(tmp_path.iterdir())


def _installed(alias: str) -> bool:
    try:
        for dist, _ in NAMED[alias].parts:
            importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


@pytest.mark.slow
@pytest.mark.parametrize("alias", ["qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"])
def test_real_qwen_assembly_matches_its_size_and_sha256(alias: str, tmp_path: Path) -> None:
    if not _installed(alias):
        pytest.skip(f"{alias}: its packages are not installed (make setup-qwen)")
    named = NAMED[alias]
    assert all(recorded_sha256(d, r) for d, r in named.parts)  # every part is checked against its RECORD
    out = named_gguf(named, tmp_path)
    assert out.stat().st_size == named.size
    h = hashlib.sha256()
    with out.open("rb") as f:
        while b := f.read(1 << 22):
            h.update(b)
    assert h.hexdigest() == named.sha256
    assert out.read_bytes()[:4] == b"GGUF"


def test_gemma_parts_carry_recorded_hashes() -> None:
    named = NAMED["gemma3-270m"]
    if not _installed("gemma3-270m"):
        pytest.skip("gemma packages not installed")
    assert all(recorded_sha256(d, r) for d, r in named.parts)
