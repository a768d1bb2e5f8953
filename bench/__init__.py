"""`specgen bench`: Spec-Bench-compatible benchmarking of every method in one run (DESIGN.md section 6).

- `suites`: Spec-Bench, MT-bench, HumanEval, GSM8K, any JSONL -> `Question`s.
- `runner`: `run_bench(BenchConfig, progress) -> BenchResult` (resumable with an output folder).
- `metrics`: tau, per-position and draft acceptance, tokens/s, speedup, identical-to-ar, quality.
- `peers`: HF transformers `generate` peers; `humaneval`: sandboxed pass@1.
- `report`: rich tables, Spec-Bench JSONL, summary.json, PNG plots, compare.
"""
from .runner import BenchConfig, BenchResult, MethodRun, run_bench

__all__ = ["BenchConfig", "BenchResult", "MethodRun", "run_bench"]
