"""`specgen build-index --ray`: the key pass spread over Ray workers, published as one sharded index.

The driver tokenizes the corpus (cheap next to the model) and cuts it into deterministic shards of
whole documents (`shards.plan_shards`). Ray actors (`ShardEncoder`, one per worker: each loads the
target once, on its GPU when Ray gave it one) encode shards and write each one's keys (and, for an
approximate index type, its FAISS index) into a staging folder beside the output, `<out>.shards`,
each file written to a temporary name and renamed, its sha256 recorded in a sidecar written last.
A killed worker is restarted by Ray and its shard retried (`max_restarts`, `max_task_retries`);
`--resume` keeps every shard of the staging folder whose sidecar and hash check out. The driver then
moves the shards into the new folder with the token stream, values and suffix array, writes the
manifest and publishes it atomically (manifest.py): the previous index stays loadable throughout.

The staging and output folders must be on a filesystem every worker sees (one machine, or NFS).
PCA keys need one fit over all keys, so `--pca` is not offered here; nor is `--append`.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SpecgenError
from ..validate import check_fields, in_range
from . import ann
from .build import (IndexBuildConfig, Progress, _check_layer, _embed, _save_npy, _standard_attention, tokens_into,
                    values_and_suffix_array, write_manifest)
from .corpus import file_sha256, list_corpus_files
from .manifest import MANIFEST, Manifest, build_lock, cleanup_stale, publish, read_manifest, tmp_dir_for
from .projection import project
from .shards import ShardSpec, plan_shards

PLAN = "plan.json"


@dataclass(frozen=True)
class RayBuildConfig:
    """Where and how the key pass runs: a Ray address (`local`: a Ray instance of this process,
    `auto`: the running cluster, `host:port` or `ray://host:port`), workers and shard size."""

    address: str = "local"
    workers: int = 2
    shard_tokens: int = 65_536
    resume: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float | None = None  # None: 1 per worker when the cluster has GPUs, else 0
    max_retries: int = 3  # restarts of a dead worker, and retries of its shard

    def __post_init__(self) -> None:
        check_fields(self)
        in_range("workers", self.workers, 1, 4096)
        in_range("shard_tokens", self.shard_tokens, 1, 2**40)
        in_range("cpus_per_worker", self.cpus_per_worker, 0, 1024)
        in_range("max_retries", self.max_retries, 0, 100)
        if not (self.address in ("local", "auto") or _ADDRESS.match(self.address)):
            raise SpecgenError(f"--ray takes local, auto or a cluster address (host:port, ray://host:port), got '{self.address}'")


_ADDRESS = re.compile(r"^(ray://)?[A-Za-z0-9_.\-]+:\d{1,5}$")


class ShardEncoder:
    """A Ray worker's state: the target, loaded once; `encode` writes one shard into the staging folder."""

    def __init__(self, model_spec: str | None, dtype: str, device: str, identity: dict[str, str], threads: int) -> None:
        import torch

        from ..models import load_model

        if threads > 0:
            torch.set_num_threads(threads)
        self.bundle = load_model(model_spec, dtype=dtype, device=device)
        got = self.bundle.identity()
        if got["config_sha256"] != identity["config_sha256"] or got["tokenizer_sha256"] != identity["tokenizer_sha256"]:
            raise SpecgenError(f"worker on {socket.gethostname()} loaded another model than the driver "
                               f"('{got['name']}' vs '{identity['name']}')")

    def pid(self) -> int:
        return os.getpid()

    def encode(self, spec: ShardSpec, tokens: np.ndarray, offsets: np.ndarray, cfg: IndexBuildConfig, kind: str,
               staging: str, inputs: str) -> dict[str, Any]:
        """Encode shard `spec` (`tokens` [n_s] int32 and `offsets` [D_s + 1], local to the shard)."""
        return encode_shard(self.bundle.model, spec, tokens, offsets, cfg, kind, Path(staging), inputs)


def encode_shard(model: Any, spec: ShardSpec, tokens: np.ndarray, offsets: np.ndarray, cfg: IndexBuildConfig,
                 kind: str, staging: Path, inputs: str) -> dict[str, Any]:
    """Keys of one shard into `staging/keys-NNNNN.npy` (plus its FAISS index unless flat), then its sidecar."""
    dim = int(model.config.hidden_size)
    part = staging / f"{spec.keys_file}.tmp-{os.getpid()}"  # a killed worker leaves only this behind
    keys = _save_npy(part, (spec.rows, dim), np.float16)  # [n_s, d]

    def sink(row: int, vecs: np.ndarray) -> None:  # vecs [n, H] fp32
        keys[row: row + vecs.shape[0]] = project(vecs, None)

    t0 = time.perf_counter()
    model.eval()
    with _standard_attention(model):
        _embed(model, tokens, offsets, 0, cfg, sink, None, spec.rows)
    model_s = time.perf_counter() - t0
    keys.flush()
    del keys
    os.replace(part, staging / spec.keys_file)
    entry: dict[str, Any] = {**spec.to_dict(), "keys_file": spec.keys_file, "index_file": None,
                             "keys_sha256": file_sha256(staging / spec.keys_file), "index_sha256": None,
                             "model_s": round(model_s, 3), "inputs_sha256": inputs}
    params = ann.default_params(kind, spec.rows, dim)
    index = ann.build_ann(kind, np.load(staging / spec.keys_file, mmap_mode="r"), params) if kind != "flat" else None
    if index is not None:
        import faiss

        tmp_index = staging / f"{spec.index_file}.tmp-{os.getpid()}"
        faiss.write_index(index, str(tmp_index))
        os.replace(tmp_index, staging / spec.index_file)
        entry.update(index_file=spec.index_file, index_sha256=file_sha256(staging / spec.index_file), params=params)
    _write_json(staging / f"shard-{spec.index:05d}.json", entry)
    return entry


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from ..fileio import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1))


def inputs_sha256(corpus: Path, identity: dict[str, str], cfg: IndexBuildConfig, shard_tokens: int) -> str:
    """What determines a sharded build's output: model, key settings, shard size, every corpus file's bytes."""
    files = [(str(p.relative_to(corpus)) if corpus.is_dir() else p.name, file_sha256(p)) for p in list_corpus_files(corpus)]
    settings = {k: v for k, v in asdict(cfg).items() if k != "append"}
    raw = json.dumps({"model": [identity.get("config_sha256"), identity.get("tokenizer_sha256")], "settings": settings,
                      "shard_tokens": shard_tokens, "files": files}, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()


def connect(rcfg: RayBuildConfig) -> bool:
    """Connect to (or start) Ray; True when this call started it (and so shuts it down)."""
    try:
        import ray
    except ImportError:
        raise SpecgenError("--ray needs Ray: pip install 'specgen[ray]'") from None
    if ray.is_initialized():
        return False
    if _ADDRESS.match(rcfg.address):
        host, port = rcfg.address.removeprefix("ray://").rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as exc:
            raise SpecgenError(f"cannot reach the Ray cluster at {rcfg.address}: {exc.strerror or exc}") from None
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    try:
        if rcfg.address == "local":
            ray.init(num_cpus=max(1, int(np.ceil(rcfg.workers * rcfg.cpus_per_worker))), **kwargs)
        else:
            ray.init(address=rcfg.address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        raise SpecgenError(f"cannot connect to Ray at {rcfg.address}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return True


def _reusable(staging: Path, spec: ShardSpec, inputs: str) -> dict[str, Any] | None:
    """The sidecar of a shard already in `staging` whose files exist and match their sha256, else None."""
    try:
        entry = json.loads((staging / f"shard-{spec.index:05d}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if entry.get("inputs_sha256") != inputs or entry.get("row_start") != spec.row_start or entry.get("row_end") != spec.row_end:
        return None
    for key, digest in (("keys_file", "keys_sha256"), ("index_file", "index_sha256")):
        name = entry.get(key)
        if name is not None and (not (staging / name).is_file() or file_sha256(staging / name) != entry.get(digest)):
            return None  # corrupt or cut: encode it again
    return entry


def check_resumable(staging: Path, identity: dict[str, str], inputs: str) -> bool:
    """Whether `staging` holds shards of this build (False: none); SpecgenError when they are another model's
    or another build's."""
    plan = staging / PLAN
    if not plan.is_file():
        return False
    try:
        old = json.loads(plan.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if old.get("model", {}).get("config_sha256") != identity["config_sha256"]:
        raise SpecgenError(f"the shards in {staging} were encoded by another model ('{old.get('model', {}).get('name')}'): "
                           "remove that folder or build without --resume")
    if old.get("inputs_sha256") != inputs:
        raise SpecgenError(f"the shards in {staging} belong to another build (corpus or settings changed): "
                           "build without --resume")
    return True


def _check_staging(staging: Path, identity: dict[str, str], inputs: str, resume: bool) -> None:
    """Start the staging folder afresh, or (`resume`) keep it when it holds shards of this build."""
    if resume and check_resumable(staging, identity, inputs):
        return
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    _write_json(staging / PLAN, {"model": identity, "inputs_sha256": inputs})


def build_index_ray(model: Any, tokenizer: Any, corpus_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
                    config: IndexBuildConfig, rcfg: RayBuildConfig, *, model_spec: str | None = None,
                    dtype: str = "auto", device: str = "auto", model_identity: dict[str, str] | None = None,
                    progress: Progress | None = None) -> tuple[Manifest, bool]:
    """Build the index of `corpus_path` at `out_dir` with the key pass on Ray workers (each loads
    `model_spec`); return the manifest and whether anything was written (False: the index at
    `out_dir` was built from the same inputs)."""
    from .build import identity_of

    cfg = config
    if cfg.pca is not None:
        raise SpecgenError("--pca is not available with --ray (PCA fits one projection over all keys): build without --ray")
    if cfg.append:
        raise SpecgenError("--append is not available with --ray: rebuild the whole corpus (--resume reuses finished shards)")
    identity = model_identity or identity_of(model, tokenizer)
    _check_layer(model, cfg.layer)
    corpus, out = Path(corpus_path), Path(out_dir)
    inputs = inputs_sha256(corpus, identity, cfg, rcfg.shard_tokens)
    if (out / MANIFEST).is_file():
        try:
            current = read_manifest(out)
        except SpecgenError:
            current = None
        if current is not None and current.build.get("inputs_sha256") == inputs:
            return current, False
    if rcfg.resume:  # refuse another model's shards before starting anything
        check_resumable(out.with_name(out.name + ".shards"), identity, inputs)
    started = connect(rcfg)
    try:
        return _build(model, tokenizer, corpus, out, cfg, rcfg, identity, inputs, model_spec, dtype, device, progress), True
    finally:
        if started:
            import ray

            ray.shutdown()


def _build(model: Any, tokenizer: Any, corpus: Path, out: Path, cfg: IndexBuildConfig, rcfg: RayBuildConfig,
           identity: dict[str, str], inputs: str, model_spec: str | None, dtype: str, device: str,
           progress: Progress | None) -> Manifest:
    t_start = time.perf_counter()
    with build_lock(out) as lock:
        cleanup_stale(out)
        if out.exists() and not (out / MANIFEST).is_file() and any(out.iterdir()):
            raise SpecgenError(f"output folder exists and is not a specgen index: {out}")
        tmp = tmp_dir_for(out)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        staging = out.with_name(out.name + ".shards")
        try:
            stream = tokens_into(tokenizer, corpus, out, tmp, cfg, None)
            n = int(stream.tokens.shape[0])
            kind = ann.choose_index_type(cfg.index_type, n)
            specs = plan_shards(stream.offsets, rcfg.shard_tokens)
            _check_staging(staging, identity, inputs, rcfg.resume)
            done = {s.index: e for s in specs if (e := _reusable(staging, s, inputs)) is not None}
            t_model = time.perf_counter()
            todo = [s for s in specs if s.index not in done]
            done.update(_run_workers(todo, stream, cfg, rcfg, kind, staging, inputs, identity, model_spec, dtype,
                                     device, progress, n, sum(e["row_end"] - e["row_start"] for e in done.values())))
            model_s = time.perf_counter() - t_model
            entries = [done[s.index] for s in specs]
            for e in entries:  # the shards move into the new folder (same filesystem: renames)
                for key in ("keys_file", "index_file"):
                    if e.get(key):
                        os.replace(staging / e[key], tmp / e[key])
            sa_s = values_and_suffix_array(tmp, stream.tokens, stream.offsets, cfg)
            dim = int(model.config.hidden_size)
            encoded = sum(s.rows for s in todo)
            build_info: dict[str, Any] = {
                "corpus_path": str(corpus), "window": cfg.window, "overlap": cfg.overlap, "batch_tokens": cfg.batch_tokens,
                "max_tokens": cfg.max_tokens, "index_type_requested": cfg.index_type, "new_tokens": n, "appended_to": None,
                "ray": {"address": rcfg.address, "workers": rcfg.workers, "shard_tokens": rcfg.shard_tokens,
                        "shards_encoded": len(todo), "shards_resumed": len(specs) - len(todo)},
                "inputs_sha256": inputs, "tokenize_s": round(stream.t_tok - t_start, 3), "model_s": round(model_s, 3),
                "suffix_array_s": round(sa_s, 3), "total_s": round(time.perf_counter() - t_start, 3),
                "tokens_per_s": round(encoded / model_s, 1) if model_s > 0 and encoded else None,
                **stream.stats.to_dict(), **({"stale_lock_pid": lock.stale_pid} if lock.stale_pid is not None else {}),
            }
            shards = [{k: e.get(k) for k in ("index", "doc_start", "doc_end", "row_start", "row_end", "keys_file",
                                             "keys_sha256", "index_file", "index_sha256")} for e in entries]
            manifest = write_manifest(tmp, identity, cfg, dim, dim, False, stream.offsets,
                                      {"type": kind, "params": ann.default_params(kind, n, dim), "file": None},
                                      [asdict(f) for f in stream.stats.files], build_info, shards)
            publish(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _run_workers(todo: list[ShardSpec], stream: Any, cfg: IndexBuildConfig, rcfg: RayBuildConfig, kind: str,
                 staging: Path, inputs: str, identity: dict[str, str], model_spec: str | None, dtype: str, device: str,
                 progress: Progress | None, total: int, already: int) -> dict[int, dict[str, Any]]:
    """Encode `todo` on `rcfg.workers` Ray actors; their sidecar entries by shard index."""
    import ray
    from ray.exceptions import RayError, RayTaskError
    from ray.util import ActorPool

    if progress:
        progress(already, total)
    if not todo:
        return {}
    gpus = rcfg.gpus_per_worker
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 and device != "cpu" else 0.0
    threads = max(1, int(rcfg.cpus_per_worker))
    remote = ray.remote(ShardEncoder).options(num_cpus=rcfg.cpus_per_worker, num_gpus=gpus,
                                              max_restarts=rcfg.max_retries, max_task_retries=rcfg.max_retries)
    actors = [remote.remote(model_spec, dtype, device, identity, threads) for _ in range(min(rcfg.workers, len(todo)))]
    pool = ActorPool(actors)
    tokens, offsets = stream.tokens, stream.offsets

    def submit(actor: Any, s: ShardSpec) -> Any:
        local_tokens = np.ascontiguousarray(tokens[s.row_start: s.row_end])  # [n_s] int32
        local_offsets = offsets[s.doc_start: s.doc_end + 1] - s.row_start  # [D_s + 1]
        return actor.encode.remote(s, local_tokens, local_offsets, cfg, kind, str(staging), inputs)

    out: dict[int, dict[str, Any]] = {}
    done = already
    try:
        for entry in pool.map_unordered(submit, todo):
            out[entry["index"]] = entry
            done += entry["row_end"] - entry["row_start"]
            if progress:
                progress(done, total)
    except RayTaskError as exc:
        cause = exc.cause if isinstance(getattr(exc, "cause", None), SpecgenError) else None
        raise (cause or SpecgenError(f"a Ray worker failed: {str(exc).splitlines()[0]}")) from None
    except RayError as exc:
        raise SpecgenError(f"a Ray worker died {rcfg.max_retries + 1} times: {str(exc).splitlines()[0]}") from None
    finally:
        for a in actors:
            ray.kill(a, no_restart=True)
    return out
