"""`specgen bench --concurrency 1,2,4,8`: the options checked, `bench.concurrency.run_concurrency`, its table.

Split from `cli/bench.py` (which parses the options) to keep each CLI module small.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from specgen.errors import SpecgenError
from specgen.fileio import atomic_write_text
from specgen.validate import in_range, input_path


def served(suite: str, limit: int | None, model: str | None, dtype: str, device: str, methods: tuple[str, ...],
           levels: tuple[int, ...], max_new_tokens: int, options: dict[str, dict[str, Any]], index: str | None,
           out: Path | None, shared_calibration: bool = True, repeats: int = 1,
           compare_generate: bool = False, interleave: bool = True, generate_calibration: str = "shared") -> None:
    """Check the options, run every (method, concurrency) wave on the in-process server, render the table."""
    from rich.console import Console
    from rich.table import Table

    from specgen.bench.concurrency import ConcurrencyConfig, plot_speedup, run_concurrency
    from specgen.bench.suites import load_suite
    from specgen.cli.serve import method_options
    from specgen.config import MAX_NEW_TOKENS
    from specgen.device import check_dtype_spec, resolve_device
    from specgen.models import check_model_spec, load_model
    from specgen.proposers.registry import available_methods, make_config

    in_range("max_new_tokens", max_new_tokens, 1, MAX_NEW_TOKENS)
    for m in methods:
        if m not in available_methods():
            raise SpecgenError(f"unknown method '{m}' (choose from {', '.join(available_methods())})")
    if index is not None:
        input_path("index", index, "dir")
    merged = method_options(None, index, None)
    for m, opts in options.items():
        merged.setdefault(m, {}).update(opts)
    for m in methods:
        make_config(m, dict(merged.get(m, {})))  # bad options: one line before the model loads
    cfg = ConcurrencyConfig(levels=levels, methods=methods, max_new_tokens=max_new_tokens, method_options=merged,
                            shared_calibration=shared_calibration, repeats=repeats,
                            compare_generate=compare_generate, interleave=interleave,
                            generate_calibration=generate_calibration)
    resolve_device(device)
    check_dtype_spec(dtype)
    check_model_spec(model)
    prompts = [q.turns[0] for q in load_suite(suite, limit)]
    console = Console(stderr=True)
    with console.status("starting the server") as status:
        rows = run_concurrency(load_model(model, dtype=dtype, device=device), prompts, cfg,
                               progress=lambda what: status.update(what))
    table = Table(title=f"served, {len(prompts)} prompts per wave, {max_new_tokens} new tokens, greedy"
                        + (f", {repeats} rounds (median speedup)" if repeats > 1 else "")
                        + (", 1 client prompt by prompt" if interleave and 1 in levels else ""))
    for col in ("method", "clients", "tokens/s", "speedup vs ar", "latency p50 s", "latency p95 s", "TTFT p50 s",
                "same as ar", "drafted", "accepted") + (
                ("generate speedup", "generate = served") if compare_generate else ()):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        spread = f" ({min(r.speedups):.2f}-{max(r.speedups):.2f})" if len(r.speedups) > 1 else ""
        table.add_row(r.method, str(r.concurrency), f"{r.tokens_per_s:.1f}", f"{r.speedup:.2f}x{spread}", f"{r.latency_p50:.2f}",
                      f"{r.latency_p95:.2f}", f"{r.ttft_p50:.2f}", f"{r.identical_to_ar}/{r.requests}", str(r.drafted),
                      str(r.accepted), *(_generate_cells(r) if compare_generate else ()))
    Console().print(table)
    if out is not None:
        data = json.dumps({"rows": [r.to_dict() for r in rows], "prompts": len(prompts),
                           "shared_calibration": shared_calibration, "repeats": repeats,
                           "compare_generate": compare_generate, "interleave": interleave,
                           "generate_calibration": generate_calibration}, indent=1) + "\n"
        if str(out).endswith(".json"):
            atomic_write_text(out, data)
        else:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "concurrency.json", data)
            plot_speedup(rows, str(out / "concurrency.png"))
        console.print(f"wrote {out}")


def _generate_cells(r: Any) -> tuple[str, str]:
    """The generate columns of a row: only concurrency 1 has them."""
    if r.generate_speedup is None:
        return "", ""
    return f"{r.generate_speedup:.2f}x", f"{r.generate_identical}/{r.requests}"
