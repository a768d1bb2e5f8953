"""HumanEval pass@1: run prompt + completion + tests + `check(entry_point)` in a sandboxed subprocess.

The program runs with `python -I` (isolated: no user site, no PYTHON* variables, no cwd on sys.path)
in a fresh temporary folder, with a wall-clock timeout; on timeout the whole process group is
killed and the sample counts as failed. This is process isolation, not a security boundary: run
untrusted model output only on a machine you can afford to lose.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_TIMEOUT_S = 10.0
_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.S)


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program: passed, why not (timeout, exit status, last stderr line)."""

    passed: bool
    timed_out: bool
    returncode: int | None
    error: str


def build_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """The program that HumanEval's harness runs, from a completion or a fenced chat answer.

    A completion that continues the prompt is appended to it. A chat answer holding a fenced block
    that defines `entry_point` replaces the body: the block is appended after the prompt's imports.
    """
    m = _FENCE.search(completion)
    if m and re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", m.group(1), re.M):
        imports = "\n".join(ln for ln in prompt.splitlines() if ln.startswith(("import ", "from ")))
        body = imports + "\n\n" + m.group(1)
    else:
        body = prompt + completion
    return f"{body}\n\n{test}\n\ncheck({entry_point})\n"


def run_program(program: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> ExecResult:
    """Run `program` with `python -I` in a temporary folder; kill its process group on timeout."""
    with tempfile.TemporaryDirectory(prefix="specgen-he-") as tmp:
        path = Path(tmp) / "program.py"
        path.write_text(program, encoding="utf-8")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": tmp, "TMPDIR": tmp}
        proc = subprocess.Popen([sys.executable, "-I", str(path)], cwd=tmp, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()
            return ExecResult(False, True, None, f"timed out after {timeout_s:g}s")
        lines = err.decode("utf-8", "replace").strip().splitlines()
        return ExecResult(proc.returncode == 0, False, proc.returncode, lines[-1] if lines else "")


def check_completion(prompt: str, completion: str, test: str, entry_point: str,
                     timeout_s: float = DEFAULT_TIMEOUT_S) -> ExecResult:
    """pass@1 of one greedy sample: does the completed function pass the task's tests?"""
    return run_program(build_program(prompt, completion, test, entry_point), timeout_s)
