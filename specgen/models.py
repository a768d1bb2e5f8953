"""Model loading: a named model, an HF hub id, a local HF folder or a `.gguf` file.

Named models (`specgen/catalog.py`) ship as PyPI packages: the embedded default SmolLM2-135M-Instruct
(`smollm2-135m`), Gemma-3-270M (`gemma3-270m`, base) and the Qwen2.5-Coder Instruct pair
(`qwen2.5-coder-1.5b`, `qwen2.5-coder-0.5b`, from `make setup-qwen`). A GGUF is dequantized once
into a cached safetensors folder, written atomically, so later starts load in about a second
instead of dequantizing every time.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .catalog import DEFAULT_MODEL, NAMED, named_gguf, package_file  # noqa: F401 (package_file: suites)
from .errors import SpecgenError


def cache_dir() -> Path:
    """Root of specgen's cache; `SPECGEN_CACHE` overrides `~/.cache/specgen`."""
    root = os.environ.get("SPECGEN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "specgen")
    return Path(root)


@dataclass
class ModelBundle:
    """A loaded target (or draft) model with its tokenizer and where it came from."""

    model: Any  # transformers PreTrainedModel, eval mode
    tokenizer: Any  # transformers tokenizer
    name: str
    path: Path | None  # local folder the weights were loaded from, if any

    def identity(self) -> dict[str, str]:
        """Model name and sha256 of its config and tokenizer: what an index must match."""
        cfg = self.model.config.to_dict()
        cfg.pop("_name_or_path", None)
        cfg.pop("dtype", None)
        cfg.pop("torch_dtype", None)
        cfg.pop("transformers_version", None)
        cfg_hash = hashlib.sha256(repr(sorted(cfg.items())).encode()).hexdigest()
        vocab = self.tokenizer.get_vocab()
        tok_hash = hashlib.sha256(repr(sorted(vocab.items())).encode()).hexdigest()
        return {"name": self.name, "config_sha256": cfg_hash, "tokenizer_sha256": tok_hash}

    @property
    def eos_ids(self) -> set[int]:
        """Every id that ends generation: the tokenizer's EOS and the generation config's."""
        ids: set[int] = set()
        if self.tokenizer.eos_token_id is not None:
            ids.add(int(self.tokenizer.eos_token_id))
        gen = getattr(self.model, "generation_config", None)
        eos = getattr(gen, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, (list, tuple)):
            ids.update(int(e) for e in eos)
        return ids


GGUF_MAGIC = b"GGUF"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def check_gguf(path: Path) -> None:
    """SpecgenError unless `path` starts with the GGUF magic bytes (checked before anything is written)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise SpecgenError(f"cannot read model file {path}: {exc.strerror or exc}") from None
    if head != GGUF_MAGIC:
        raise SpecgenError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")


def check_model_folder(path: Path) -> None:
    """What is wrong with an HF model folder, as one SpecgenError line, before transformers reads it.

    Refuses pickled weights (a pickle can run code on load: specgen loads safetensors only) and
    folders whose architecture exists only as custom code (specgen never runs a folder's code).
    """
    from transformers import CONFIG_MAPPING

    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise SpecgenError(f"not an HF model folder (no config.json): {path}")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpecgenError(f"{cfg_file} is not valid JSON: {str(exc).splitlines()[0]}") from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("model_type"), str):
        raise SpecgenError(f"{cfg_file} names no model_type: not a transformers model config")
    model_type = cfg["model_type"]
    if model_type not in CONFIG_MAPPING:
        if cfg.get("auto_map"):
            raise SpecgenError(f"model folder {path} needs its own Python code (architecture '{model_type}'), "
                               "which specgen does not run")
        raise SpecgenError(f"model folder {path}: architecture '{model_type}' is unknown to this transformers")
    files = [f for f in path.iterdir() if f.is_file()]
    if not any(f.suffix == ".safetensors" for f in files):
        pickled = sorted(f.name for f in files if f.suffix in PICKLE_SUFFIXES)
        if pickled:
            raise SpecgenError(f"model folder {path} holds only pickled weights ({pickled[0]}), which specgen refuses "
                               "to load for safety: convert them to safetensors")
        raise SpecgenError(f"model folder {path} holds no weights (*.safetensors)")
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise SpecgenError(f"model folder {path} has no tokenizer (tokenizer.json or tokenizer.model)")


def _is_converted(out: Path) -> bool:
    return (out / "config.json").is_file() and (out / "model.safetensors").is_file()


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantize a GGUF into an HF safetensors folder at `out`, atomically; return `out`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if _is_converted(out):
        return out
    check_gguf(gguf)
    quiet_transformers()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp-", dir=out.parent))
    try:
        # transformers' GGUF loader draws its own tqdm bar on stderr, deaf to disable_progress_bar().
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)
                model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32,
                                                             trust_remote_code=False)
        except LOAD_ERRORS as exc:
            raise SpecgenError(f"cannot convert GGUF {gguf}: {_first_line(exc)}") from None
        # The dequantized weights are plain tensors; drop the GGUF marker so save_pretrained accepts them.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.config._name_or_path = out.name
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        if out.exists():  # a concurrent conversion finished first: keep it
            shutil.rmtree(tmp, ignore_errors=True)
            return out
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def check_model_spec(spec: str | None) -> None:
    """Everything about a --model value that can be checked without converting or loading it: the
    packages of an embedded model, a GGUF's magic bytes, an HF folder's config, weights and tokenizer.
    Writes nothing; a hub id is left to the loader."""
    spec = spec or DEFAULT_MODEL
    if spec in NAMED:
        if not _is_converted(cache_dir() / "models" / NAMED[spec].folder):
            from .catalog import check_installed

            check_installed(NAMED[spec])
        return
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        if not path.is_file():
            raise SpecgenError(f"model file not found: {spec}")
        check_gguf(path)
    elif path.is_dir():
        check_model_folder(path)
    elif path.exists() or spec.startswith((".", "/", "~")):
        raise SpecgenError(f"model path not found or not a model: {spec}")


def resolve_model_path(spec: str | None) -> tuple[str, str | Path]:
    """Map a --model value to (display name, folder or hub id), converting GGUFs on the way."""
    spec = spec or DEFAULT_MODEL
    check_model_spec(spec)
    if spec in NAMED:
        out = cache_dir() / "models" / NAMED[spec].folder
        # A converted cache needs no GGUF (nor the assembly of chunk packages) on later starts.
        return spec, out if _is_converted(out) else convert_gguf(named_gguf(NAMED[spec], cache_dir() / "gguf"), out)
    path = Path(spec).expanduser()
    if spec.endswith(".gguf"):
        st = path.stat()
        key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:12]
        return path.stem, convert_gguf(path, cache_dir() / "models" / f"{path.stem}-{key}")
    if path.is_dir():
        return path.name, path
    return spec, spec  # an HF hub id


# What transformers raises for a folder or file it cannot use (bad config, missing or mismatched
# weights, tokenizer it cannot build): each becomes one line naming the model.
LOAD_ERRORS = (OSError, ValueError, KeyError, TypeError, RuntimeError, AttributeError, ImportError, EOFError)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def quiet_transformers() -> None:
    """Library code does not print: silence transformers' progress bars and advisory warnings."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


HUB_PROBE_S = 3.0  # how long the hub may take to accept a connection before it counts as unreachable


def _hub_reachable(timeout_s: float = HUB_PROBE_S) -> bool:
    """Whether the HF hub accepts a TCP connection within `timeout_s` (DNS included), without retries."""
    import socket
    import threading
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((url.hostname or "", url.port or 443), timeout=timeout_s):
                ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout_s)
    return bool(ok)


def _hub_snapshot(repo_id: str) -> str | Path:
    """A hub id resolved offline first: its local snapshot when cached; else the id itself when the hub
    can be reached (transformers downloads it), or a one-line error at once when it cannot."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HfHubHTTPError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (OSError, ValueError, HfHubHTTPError):
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on") or not _hub_reachable():
        raise SpecgenError(f"model '{repo_id}' is not in the local Hugging Face cache and the hub cannot be reached "
                           "(offline): download it where there is network, or give a local folder or .gguf")
    return repo_id


def load_model(spec: str | None = None, dtype: str = "auto", device: str = "auto") -> ModelBundle:
    """Load model and tokenizer for `spec` (alias, hub id, folder or .gguf) in eval mode, on `device`
    (auto | cpu | cuda | cuda:N) in `dtype` (auto | float32 | bfloat16 | float16; see specgen.device)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .device import resolve_device, resolve_dtype, resolve_linear

    quiet_transformers()
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    linear = resolve_linear(dev, torch_dtype)
    name, where = resolve_model_path(spec)
    if isinstance(where, str):
        where = _hub_snapshot(where)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(where), trust_remote_code=False)
    except LOAD_ERRORS as exc:
        raise SpecgenError(f"no usable tokenizer for model '{spec}': {_first_line(exc)}") from None
    try:
        # safetensors only: pickled checkpoints can run code when unpickled.
        model = AutoModelForCausalLM.from_pretrained(str(where), dtype=torch_dtype, trust_remote_code=False,
                                                     use_safetensors=True)
    except LOAD_ERRORS as exc:
        raise SpecgenError(f"cannot load model '{spec}': {_first_line(exc)}") from None
    vocab = int(getattr(model.config, "vocab_size", 0) or 0)
    if vocab and len(tokenizer) > vocab:
        raise SpecgenError(f"model '{spec}': its tokenizer has {len(tokenizer)} tokens but the model only {vocab}")
    model.to(dev).eval()
    if linear == "onednn":
        from .linear import pack_linears

        pack_linears(model)
    return ModelBundle(model=model, tokenizer=tokenizer, name=name,
                       path=Path(where) if isinstance(where, Path) else None)


def load_like(spec: str, target: Any) -> ModelBundle:
    """A second model (a draft) on the target bundle's device, in its dtype."""
    return load_model(spec, dtype=str(target.model.dtype).removeprefix("torch."), device=str(target.model.device))
