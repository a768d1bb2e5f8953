"""`make gpu-check` exists and runs as far as a CPU allows: the refusal of --device cuda and the bench."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine run `make gpu-check` itself")
def test_gpu_check_runs_its_cpu_side_and_prints_one_table() -> None:
    proc = subprocess.run([sys.executable, "-m", "specgen.bench.gpu_check"], cwd=REPO, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0] == "specgen gpu-check: no CUDA device: CPU-side checks only"
    assert any("--device cuda without CUDA" in ln and "one-line refusal" in ln for ln in lines)
    for method in ("ar", "pld", "sense"):
        assert any(ln.startswith(f"|   {method} ") and "=100% ar" in ln for ln in lines), proc.stdout
