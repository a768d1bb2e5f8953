"""`specgen build-index` and `specgen index-info`: thin wrappers over `specgen.datastore`.

Parse options, build the config, call the library, render. A SpecgenError becomes one line on stderr
and exit code 2; Ctrl-C during a build exits 130 and leaves the previous index as it was.

The default output folder is `./index` (an existing index there is replaced atomically, or extended
with --append).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import typer

from specgen.errors import SpecgenError
from specgen.device import check_dtype_spec, resolve_device
from specgen.validate import output_dir

DEFAULT_INDEX_DIR = Path("index")


def bare_ray_flag(args: list[str]) -> list[str]:
    """`--ray` given without an address (last, or before another option or the corpus) means `--ray local`."""
    import re

    out = list(args)
    for i, a in enumerate(out):
        if a == "--ray":
            nxt = out[i + 1] if i + 1 < len(out) else None
            if nxt is None or not re.match(r"^(local|auto|(ray://)?[A-Za-z0-9_.\-]+:\d{1,5})$", nxt):
                out.insert(i + 1, "local")
            break
    return out


def _fail(exc: SpecgenError) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def build_index_command(
    corpus: Path = typer.Argument(..., help="Corpus folder (recursive: text, source, .jsonl/.json records, "
                                            "ShareGPT conversations) or one file."),
    output: Path = typer.Option(DEFAULT_INDEX_DIR, "--output", "-o", help="Index folder to write (replaced atomically)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Target model: alias, HF hub id, local HF folder or .gguf "
                                                                  "(default: the embedded SmolLM2-135M-Instruct)."),
    layer: int = typer.Option(-1, "--layer", help="Hidden layer of the keys: -1 = final normed state, l >= 0 = output of decoder layer l."),
    continuation_len: int = typer.Option(16, "--continuation-len", help="Tokens stored after each position."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Stop reading the corpus after this many tokens."),
    index_type: str = typer.Option("auto", "--index-type", help="auto | flat | hnsw | ivf | ivfpq (auto: flat up to 200k keys, "
                                                               "then hnsw, ivfpq past 4M)."),
    pca: Optional[int] = typer.Option(None, "--pca", metavar="DIM", help="Project keys to DIM dimensions (z-score + PCA)."),
    append: bool = typer.Option(False, "--append", help="Add the corpus to the index at --output (same model and settings)."),
    batch_tokens: int = typer.Option(4096, "--batch-tokens", help="Tokens per forward pass."),
    window: int = typer.Option(1024, "--window", help="Longest sequence per forward; longer documents are windowed."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available), cpu, cuda or cuda:N."),
    dtype: str = typer.Option("auto", "--dtype", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16 or float16."),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="[ADDRESS]",
                                      help="Encode on Ray workers into a sharded index: bare or 'local' = a Ray instance "
                                           "on this machine, 'auto' = the running cluster, or host:port."),
    workers: int = typer.Option(2, "--workers", help="--ray: worker actors (each loads the model once)."),
    shard_tokens: int = typer.Option(65536, "--shard-tokens", help="--ray: tokens per shard (whole documents)."),
    resume: bool = typer.Option(False, "--resume", help="--ray: keep the shards an interrupted build finished."),
) -> None:
    """Build a semantic index (SENSE keys + REST suffix array) of CORPUS for the target model."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.text import Text

    from transformers.utils import logging as hf_logging

    from specgen.datastore import IndexBuildConfig, build_index
    from specgen.datastore.corpus import list_corpus_files

    class _TokensPerSecond(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.0f} tok/s" if speed else "- tok/s", style="progress.data.speed")

    class _Tokens(ProgressColumn):
        def render(self, task: Any) -> Text:
            total = f"{task.total:,.0f}" if task.total is not None else "?"
            return Text(f"{task.completed:,.0f}/{total} tokens", style="progress.download")

    err = Console(stderr=True)
    try:
        cfg = IndexBuildConfig(layer=layer, continuation_len=continuation_len, pca=pca, max_tokens=max_tokens,
                               index_type=index_type, batch_tokens=batch_tokens, window=window,
                               overlap=min(256, window // 4), append=append)
        rcfg = None
        if ray is not None:
            from specgen.datastore.raybuild import RayBuildConfig

            rcfg = RayBuildConfig(address=ray, workers=workers, shard_tokens=shard_tokens, resume=resume)
        elif resume:
            raise SpecgenError("--resume applies to --ray builds (a single-process build is atomic: rerun it)")
        output_dir("output", output)
        resolve_device(device)
        check_dtype_spec(dtype)
        list_corpus_files(corpus)  # fail on a missing or empty corpus before loading the model
        from specgen.models import load_model

        hf_logging.disable_progress_bar()
        with err.status(f"loading model {model or 'default'}"):
            bundle = load_model(model, dtype=dtype, device=device)
        columns = (TextColumn("embedding"), BarColumn(), _Tokens(), _TokensPerSecond(), TimeElapsedColumn(),
                   TextColumn("eta"), TimeRemainingColumn())
        # The bar starts with the first embedded batch (after tokenizing) and is cleared at the end.
        bar = Progress(*columns, console=err, transient=True)
        task = bar.add_task("embed", total=None)

        def progress(done: int, total: int) -> None:
            if not bar.live.is_started:
                bar.start()
            bar.update(task, completed=done, total=total)

        try:
            if rcfg is None:
                manifest, wrote = build_index(bundle.model, bundle.tokenizer, corpus, output, cfg, progress=progress,
                                              model_identity=bundle.identity()), True
            else:
                from specgen.datastore.raybuild import build_index_ray

                manifest, wrote = build_index_ray(bundle.model, bundle.tokenizer, corpus, output, cfg, rcfg,
                                                  model_spec=model, dtype=dtype, device=device,
                                                  model_identity=bundle.identity(), progress=progress)
        finally:
            bar.stop()
    except SpecgenError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        typer.echo(f"interrupted: nothing written, {output} is as it was", err=True)
        raise typer.Exit(130) from None
    if not wrote:
        typer.echo(f"{output} is up to date (built from the same corpus, model and settings): nothing written", err=True)
        return
    b = manifest.build
    skipped = b.get("files_skipped", [])
    if skipped:
        why = Counter(s["reason"] for s in skipped)
        typer.echo("skipped " + ", ".join(f"{n} file(s): {r}" for r, n in why.most_common()), err=True)
    if b.get("stale_lock_pid") is not None:
        typer.echo(f"note: took over the lock of build pid {b['stale_lock_pid']}, which died without releasing it", err=True)
    if b.get("truncated_json"):
        typer.echo(f"read up to the break in {len(b['truncated_json'])} cut-off JSON file(s)", err=True)
    size = sum((output / f).stat().st_size for f in manifest.files)
    shards = f", {len(manifest.shards)} shards" if manifest.shards else ""
    typer.echo(f"indexed {b['new_tokens']:,} tokens ({manifest.documents:,} documents in all, {manifest.count:,} keys) "
               f"in {b['total_s']:.1f} s, {b['tokens_per_s'] or 0:,.0f} tokens/s -> {output} "
               f"({manifest.index['type']}{shards}, {_human_bytes(size)})")


def index_info_command(
    index_dir: Path = typer.Argument(DEFAULT_INDEX_DIR, help="Index folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    verify: bool = typer.Option(False, "--verify", help="Also check every shard file against its sha256 (reads all keys)."),
) -> None:
    """Validate an index folder and print its manifest summary (shards, keys per shard, size)."""
    from rich.console import Console
    from rich.table import Table

    from specgen.datastore import SemanticIndex
    from specgen.datastore.shards import verify_shards

    try:
        index = SemanticIndex.load(index_dir)
        if verify:
            verify_shards(index.path, index.manifest)
        info = index.info()
    except SpecgenError as exc:
        raise _fail(exc) from None
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    table = Table(title=f"specgen index {index_dir}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in info.items():
        if key == "size_bytes":
            value = f"{_human_bytes(value)} ({value:,} bytes)"
        elif isinstance(value, list):
            value = ", ".join(f"{v:,}" for v in value) if len(value) <= 8 else (
                f"{min(value):,} .. {max(value):,} (median {sorted(value)[len(value) // 2]:,})")
        elif isinstance(value, dict):
            value = ", ".join(f"{k}={v}" for k, v in value.items()) or "-"
        elif isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:,}"
        table.add_row(key.replace("_", " "), "-" if value is None else str(value))
    Console().print(table)


def register(app: typer.Typer) -> None:
    """Add `build-index` and `index-info` to the specgen app."""
    app.command("build-index")(build_index_command)
    app.command("index-info")(index_info_command)
