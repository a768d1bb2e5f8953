"""`make gpu-check`: the one-shot check to run whenever a CUDA machine is lent (`python -m specgen.bench.gpu_check`).

On CUDA, in order, each step timed and its outcome kept:
1. the kernel tests compiled for the GPU (`TRITON_INTERPRET=0 pytest tests/kernels`), not interpreted;
2. `specgen bench kernels` (Triton vs torch reference vs FAISS / SDPA, with max errors);
3. `specgen bench --device cuda` on the embedded model: ar, pld, sense, 3 questions per category;
then one compact table. Without CUDA it runs what a CPU allows: `--device cuda` must be refused in
one line, and step 3 on the CPU with 1 question per category and 16 tokens, so every part of the
script is exercised. Meant to finish in under 8 minutes on one H100/H200.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], env: dict[str, str] | None = None, timeout: int = 420) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        code, out = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as exc:
        code, out = 124, f"timed out after {timeout} s: {exc}"
    return code, out, time.perf_counter() - t0


def _specgen(*args: str) -> list[str]:
    return [sys.executable, "-m", "specgen.cli.main", *args]


def main(argv: list[str] | None = None) -> int:
    import torch

    cuda = torch.cuda.is_available()
    rows: list[tuple[str, str, str]] = []  # (check, result, seconds)
    out_dir = Path(tempfile.mkdtemp(prefix="specgen-gpu-check-"))
    ok = True
    if cuda:
        code, out, s = _run([sys.executable, "-m", "pytest", "-q", "tests/kernels"], env={"TRITON_INTERPRET": "0"})
        rows.append(("kernel tests, compiled", out.strip().splitlines()[-1] if out.strip() else f"exit {code}", f"{s:.0f}"))
        ok &= code == 0
        code, out, s = _run(_specgen("bench", "kernels", "--device", "cuda", "--json", str(out_dir / "kernels.json")))
        rows.append(("bench kernels", "ok" if code == 0 else f"exit {code}", f"{s:.0f}"))
        ok &= code == 0
        if code == 0:
            rows += _kernel_rows(json.loads((out_dir / "kernels.json").read_text()))
        bench = ["--device", "cuda", "--limit", "3", "--max-new-tokens", "64"]
    else:
        code, out, s = _run(_specgen("generate", "hi", "--device", "cuda"))
        refused = code == 2 and len([ln for ln in out.splitlines() if ln.strip()]) == 1
        rows.append(("--device cuda without CUDA", "one-line refusal" if refused else f"exit {code}: {out[-200:]}", f"{s:.0f}"))
        ok &= refused
        bench = ["--device", "cpu", "--limit", "1", "--max-new-tokens", "16"]
    code, out, s = _run(_specgen("bench", "--methods", "ar,pld,sense", *bench, "--out", str(out_dir / "bench"),
                                 "--overall-only"))
    ok &= code == 0
    if code == 0:
        summary = json.loads((out_dir / "bench" / "summary.json").read_text())
        env = summary.get("environment", {})
        rows.append((f"bench on {env.get('device')} {env.get('dtype')} ({env.get('attention')})", "ok", f"{s:.0f}"))
        for label, cats in summary["metrics"].items():
            o = cats.get("overall", {})
            ov = o.get("step_overhead_ms") or {}
            rows.append((f"  {label}", f"tau {o.get('tau', 0):.2f}, {o.get('tokens_per_s', 0):.1f} tok/s, "
                                       f"{o.get('speedup', 0):.2f}x, ={o.get('identical_to_ar', 0):.0%} ar, "
                                       f"step overhead p50 {ov.get('p50', 0):.2f} ms", ""))
    else:
        rows.append(("bench", f"exit {code}: {out.strip().splitlines()[-1] if out.strip() else ''}", f"{s:.0f}"))
    print(render(rows, "cuda: " + torch.cuda.get_device_name(0) if cuda else "no CUDA device: CPU-side checks only"))
    return 0 if ok else 1


def _kernel_rows(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    rows = []
    for r in result.get("rows", []):
        if r.get("skipped"):
            continue
        rows.append((f"  {r['kernel']} {r['shape']} {r['dtype']}", f"{r['impl']} {r['ms']:.3f} ms"
                     + (f", max err {r['max_abs_err']:.1e}" if r.get("max_abs_err") is not None else ""), ""))
    return rows


def render(rows: list[tuple[str, str, str]], title: str) -> str:
    """A plain-text table (it goes into closing notes as it is)."""
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"specgen gpu-check: {title}", f"| {'check':<{w0}} | {'result':<{w1}} | s |",
             f"|{'-' * (w0 + 2)}|{'-' * (w1 + 2)}|---|"]
    lines += [f"| {a:<{w0}} | {b:<{w1}} | {c} |" for a, b, c in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
