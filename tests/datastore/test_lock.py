"""The index build lock: one holder at a time across processes, only the holder removes it, appends queue."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from specgen.datastore import IndexBuildConfig, build_index
from specgen.datastore.manifest import build_lock, read_manifest
from specgen.errors import SpecgenError

from _tiny import stdlib_sources, tiny_model, tiny_tokenizer  # noqa: E402  (on sys.path: conftest)

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def test_a_refused_build_leaves_the_holders_lock_in_place(tmp_path: Path) -> None:
    out = tmp_path / "idx"
    lock_file = tmp_path / "idx.lock"
    with build_lock(out):
        for _ in range(2):  # the second refusal proves the first one did not delete the lock
            with pytest.raises(SpecgenError, match=r"another build \(pid \d+\) is writing"):
                with build_lock(out):
                    pass
            assert lock_file.exists()
    assert not lock_file.exists()  # the holder removes it when done


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


HOLD = """
    import sys, time
    from pathlib import Path
    from specgen.datastore.manifest import build_lock
    out, log = Path(sys.argv[1]), Path(sys.argv[2])
    for _ in range(3):
        with build_lock(out, wait=True):
            with log.open("a") as fh:
                fh.write(f"in {sys.argv[3]}\\n")
            time.sleep(0.15)
            with log.open("a") as fh:
                fh.write(f"out {sys.argv[3]}\\n")
"""


def test_three_processes_never_hold_the_lock_together(tmp_path: Path) -> None:
    log = tmp_path / "log.txt"
    procs = [_spawn(HOLD, str(tmp_path / "idx"), str(log), str(i)) for i in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    lines = log.read_text().splitlines()
    assert len(lines) == 18
    for enter, leave in zip(lines[::2], lines[1::2]):  # strictly alternating: in i, out i
        assert enter.startswith("in ") and leave == "out " + enter[3:], lines


APPEND = """
    import sys
    sys.path.insert(0, sys.argv[3])
    from _tiny import tiny_model, tiny_tokenizer
    from specgen.datastore import IndexBuildConfig, build_index
    tok = tiny_tokenizer()
    build_index(tiny_model(len(tok)), tok, sys.argv[1], sys.argv[2],
                IndexBuildConfig(append=True, index_type="flat", window=512, overlap=128))
"""


@pytest.mark.slow
def test_three_racing_appends_are_serialised_and_lose_nothing(tmp_path: Path) -> None:
    # Fresh objects, built exactly as the child processes build theirs (the session fixtures may
    # have been reconfigured by earlier tests, and appends require the same model identity).
    tok = tiny_tokenizer()
    model = tiny_model(len(tok))
    sources = stdlib_sources()
    corpora = []
    for i, src in enumerate(sources):
        folder = tmp_path / f"corpus{i}"
        folder.mkdir()
        (folder / src.name).write_text(src.read_text(encoding="utf-8")[:6000], encoding="utf-8")
        corpora.append(folder)
    out = tmp_path / "idx"
    build_index(model, tok, corpora[0], out, IndexBuildConfig(index_type="flat", window=512, overlap=128))
    procs = [_spawn(APPEND, str(c), str(out), str(HERE)) for c in corpora[1:]]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    man = read_manifest(out)
    assert sorted(Path(f["path"]).name for f in man.corpus) == sorted(s.name for s in sources)
    assert man.count == sum(f["tokens"] for f in man.corpus)
    assert not (tmp_path / "idx.lock").exists()


def test_a_lock_left_by_a_dead_build_is_taken_over_and_reported(tmp_path: Path, tok: Any, model: Any,
                                                                 small_corpus: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / "idx.lock").write_text(f"{pid}\n")
    man = build_index(model, tok, small_corpus, tmp_path / "idx",
                      IndexBuildConfig(index_type="flat", window=512, overlap=128, max_tokens=500))
    assert man.build["stale_lock_pid"] == pid
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["build"]["stale_lock_pid"] == pid
    assert not (tmp_path / "idx.lock").exists()
