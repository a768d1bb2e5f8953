"""HumanEval pass@1: run prompt + completion + tests + `check(entry_point)` in a sandboxed subprocess.

A sample passes only when the harness itself reports it: after `check()` returns, the program
writes a random per-run sentinel to stdout; the exit code alone never counts (model output that
calls `sys.exit(0)` or `os._exit(0)` before the tests ran fails).

The sandbox, in layers:
- always: `python -I` in a fresh folder, its own session (process group), resource limits (CPU
  seconds, address space, file size, open files, processes), stdout/stderr written to files (never
  pipes a detached child could hold open) and read back capped, the whole group killed at the
  timeout;
- as root where `unshare(1)` works (Linux): a new PID namespace (every process the program starts
  dies with it), an empty network namespace (no connection anywhere, loopback included) and a
  private mount namespace with fresh tmpfs over /tmp, /var/tmp and /dev/shm; the program runs as
  user `nobody`, so it can write only in its own folder. `sandbox_level()` says which applies.
Without root this is process isolation only: run untrusted model output only on a machine you can
afford to lose.
"""
from __future__ import annotations

import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

DEFAULT_TIMEOUT_S = 10.0
MEMORY_LIMIT = 2 << 30  # address space of the program, bytes
FILE_LIMIT = 8 << 20  # largest file it may write, stdout and stderr included
PROCESS_LIMIT = 32  # processes of its user (enforced for `nobody`, not for root)
OUTPUT_TAIL = 4096  # bytes of stderr read back for the error line
NOBODY = 65534
_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.S)
# Runs inside the new namespaces as root, then drops to nobody: $1 = work folder, $2 = python.
_JAIL = """set -e
mount --make-rprivate /
mount --bind "$1" /mnt
for d in /tmp /var/tmp /dev/shm; do [ -d "$d" ] && mount -t tmpfs -o size=64m tmpfs "$d"; done
cd /mnt
exec setpriv --reuid=65534 --regid=65534 --clear-groups -- "$2" -I /mnt/program.py
"""


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program: passed, why not (timeout, exit status, last stderr line)."""

    passed: bool
    timed_out: bool
    returncode: int | None
    error: str


def build_program(prompt: str, completion: str, test: str, entry_point: str, sentinel: str = "") -> str:
    """The program that HumanEval's harness runs, from a completion or a fenced chat answer.

    A completion that continues the prompt is appended to it. A chat answer holding a fenced block
    that defines `entry_point` replaces the body: the block is appended after the prompt's imports.
    With `sentinel`, the program writes it to stdout once `check(entry_point)` has returned.
    """
    m = _FENCE.search(completion)
    if m and re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", m.group(1), re.M):
        imports = "\n".join(ln for ln in prompt.splitlines() if ln.startswith(("import ", "from ")))
        body = imports + "\n\n" + m.group(1)
    else:
        body = prompt + completion
    tail = f"\nimport os as _he_os\n_he_os.write(1, b'\\n{sentinel}\\n')\n" if sentinel else ""
    return f"{body}\n\n{test}\n\ncheck({entry_point})\n{tail}"


@cache
def sandbox_level() -> str:
    """'namespaces' (root, unshare works: PID/network/mount namespaces, runs as nobody) or 'process'."""
    if os.name != "posix" or os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("setpriv")):
        return "process"
    probe = subprocess.run(["unshare", "--pid", "--fork", "--kill-child", "--net", "--mount", "true"],
                           stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    return "namespaces" if probe.returncode == 0 else "process"


def _limits(timeout_s: float) -> None:
    """preexec_fn: resource limits, inherited by everything the program starts."""
    cpu = int(timeout_s) + 2
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
    resource.setrlimit(resource.RLIMIT_NPROC, (PROCESS_LIMIT, PROCESS_LIMIT))


def _tail(path: Path, n: int) -> str:
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - n))
        return fh.read().decode("utf-8", "replace")


def run_program(program: str, timeout_s: float = DEFAULT_TIMEOUT_S, sentinel: str | None = None) -> ExecResult:
    """Run `program` in the sandbox; passed = exit code 0 and the last stdout line is `sentinel`
    (None: exit code 0 alone, for programs that are not HumanEval harnesses)."""
    with tempfile.TemporaryDirectory(prefix="specgen-he-") as tmp:
        work, logs = Path(tmp) / "work", Path(tmp) / "logs"
        work.mkdir()
        logs.mkdir(mode=0o700)
        (work / "program.py").write_text(program, encoding="utf-8")
        level = sandbox_level()
        if level == "namespaces":
            os.chmod(tmp, 0o755)
            os.chown(work, NOBODY, NOBODY)
            cmd = ["unshare", "--pid", "--fork", "--kill-child", "--net", "--mount", "--mount-proc",
                   "sh", "-c", _JAIL, "jail", str(work), sys.executable]
        else:
            cmd = [sys.executable, "-I", str(work / "program.py")]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(work), "TMPDIR": str(work)}
        with (logs / "out").open("wb") as out, (logs / "err").open("wb") as err:
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                    start_new_session=True, preexec_fn=lambda: _limits(timeout_s))
            try:
                code: int | None = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                code = None
            finally:  # the whole group goes, whatever it left running
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        if code is None:
            return ExecResult(False, True, None, f"timed out after {timeout_s:g}s")
        lines = _tail(logs / "err", OUTPUT_TAIL).strip().splitlines()
        out_lines = _tail(logs / "out", OUTPUT_TAIL).strip().splitlines()
        reported = sentinel is None or (bool(out_lines) and out_lines[-1] == sentinel)
        error = (lines[-1] if lines else ("" if reported else "the harness did not report success"))[-300:]
        return ExecResult(code == 0 and reported, False, code, error)


def check_completion(prompt: str, completion: str, test: str, entry_point: str,
                     timeout_s: float = DEFAULT_TIMEOUT_S) -> ExecResult:
    """pass@1 of one greedy sample: does the completed function pass the task's tests?"""
    sentinel = "specgen-harness-ok-" + secrets.token_hex(16)
    return run_program(build_program(prompt, completion, test, entry_point, sentinel), timeout_s, sentinel)
