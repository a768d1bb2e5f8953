"""HumanEval's sandbox: each way model output can escape or cheat fails the problem, and nothing hangs."""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest

from specgen.bench.humaneval import check_completion, sandbox_level

PROMPT = "def add(a, b):\n"
TEST = "def check(f):\n    assert f(1, 2) == 3\n"
RIGHT = "    return a + b\n"

needs_namespaces = pytest.mark.skipif(sandbox_level() != "namespaces",
                                      reason="the namespace sandbox needs root and unshare(1); here: process isolation")


def test_a_correct_completion_passes_and_a_wrong_one_fails() -> None:
    assert check_completion(PROMPT, RIGHT, TEST, "add").passed
    assert not check_completion(PROMPT, "    return a - b\n", TEST, "add").passed


@pytest.mark.parametrize("escape", ["import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n",
                                    "import sys\nprint('specgen-harness-ok-0000')\nsys.exit(0)\n"])
def test_exiting_before_the_tests_run_fails(escape: str) -> None:
    # a wrong function that exits 0 before check() runs: only the harness's sentinel counts
    res = check_completion(PROMPT, "    return a - b\n" + escape, TEST, "add")
    assert not res.passed and res.returncode == 0


def test_a_program_that_never_exits_is_killed_at_the_timeout() -> None:
    t0 = time.perf_counter()
    res = check_completion(PROMPT, "    return a + b\nwhile True:\n    pass\n", TEST, "add", timeout_s=1.5)
    assert res.timed_out and not res.passed
    assert time.perf_counter() - t0 < 5


def _running_with(marker: str) -> list[str]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(pid)
            except OSError:
                pass
    return found


def _sandboxed_programs() -> list[str]:
    return _running_with("/mnt/program.py") + _running_with("specgen-he-")


def test_a_detached_child_neither_holds_the_run_nor_survives_it() -> None:
    assert not _sandboxed_programs()
    daemon = ("    return a + b\nimport os, time\n"
              "if os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\n    os._exit(0)\n")
    t0 = time.perf_counter()
    res = check_completion(PROMPT, daemon, TEST, "add", timeout_s=2.0)
    assert time.perf_counter() - t0 < 5  # output goes to files: a child holding it cannot stall the run
    assert res.passed  # the function is right; its detached child is not the harness's concern
    deadline = time.time() + 3
    while _sandboxed_programs() and time.time() < deadline:
        time.sleep(0.1)
    if sandbox_level() == "namespaces":
        assert not _sandboxed_programs(), "a process of the program outlived it"


def test_huge_output_is_capped() -> None:
    t0 = time.perf_counter()
    res = check_completion(PROMPT, "    return a + b\nimport sys\nsys.stderr.write('x' * 300_000_000)\n", TEST, "add")
    assert not res.passed and len(res.error) <= 300
    assert time.perf_counter() - t0 < 15


@needs_namespaces
def test_writing_outside_its_folder_fails(tmp_path: Path) -> None:
    targets = [tmp_path / "escaped.txt", Path("/var/tmp") / f"escaped-{uuid.uuid4().hex}", Path.home() / "escaped.txt"]
    code = "    return a + b\n" + "".join(f"try:\n    open({str(t)!r}, 'w').write('x')\nexcept OSError:\n    pass\n"
                                          for t in targets)
    assert check_completion(PROMPT, code, TEST, "add").passed  # the function is right; the writes went nowhere
    assert not any(t.exists() for t in targets)


@needs_namespaces
def test_no_network_not_even_loopback() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.settimeout(6)
    port = server.getsockname()[1]
    got: list[object] = []

    def accept() -> None:
        try:
            got.append(server.accept())
        except OSError:
            pass

    t = threading.Thread(target=accept)
    t.start()
    code = ("    return a + b\nimport socket\ns = socket.socket()\ns.settimeout(2)\n"
            f"s.connect(('127.0.0.1', {port}))\n")
    res = check_completion(PROMPT, code, TEST, "add")
    t.join()
    server.close()
    assert not got and not res.passed  # the connect raised: the program failed, nothing reached the host
