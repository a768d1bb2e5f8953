"""`specgen build-index` / `index-info` through typer's CliRunner with a tiny saved model folder."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch
import typer
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent / "datastore"))

from _tiny import save_tiny, stdlib_sources  # noqa: E402

from specgen.cli.index import register  # noqa: E402

SMALL = ["--window", "256", "--batch-tokens", "1024"]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP barriers stall."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command("noop", hidden=True)
    def noop() -> None:  # a second command keeps typer in multi-command mode
        pass

    return app


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="module")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("model") / "other", seed=7, layers=3)


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    shutil.copy(stdlib_sources()[2], folder / "decoder.py")
    return folder


def _run(app: typer.Typer, args: list[str]) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args])


def _assert_one_line_error(result: Any, needle: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert "Traceback" not in result.output


def test_build_and_info(app: typer.Typer, model_dir: Path, corpus: Path, tmp_path: Path) -> None:
    (corpus / "junk.txt").write_bytes(b"\x00\x00binary")
    out = tmp_path / "idx"
    result = _run(app, ["build-index", corpus, "-o", out, "--model", model_dir, *SMALL])
    assert result.exit_code == 0, result.output
    assert "indexed" in result.stdout and "flat" in result.stdout
    assert "skipped 1 file(s): binary" in result.stderr
    info = _run(app, ["index-info", out])
    assert info.exit_code == 0 and "keys" in info.stdout and "tiny" in info.stdout
    as_json = _run(app, ["index-info", out, "--json"])
    assert as_json.exit_code == 0 and '"layer": -1' in as_json.stdout
    more = tmp_path / "more"
    more.mkdir()
    shutil.copy(stdlib_sources()[3], more / "encoder.py")
    appended = _run(app, ["build-index", more, "-o", out, "--model", model_dir, "--append", *SMALL])
    assert appended.exit_code == 0, appended.output


def test_default_output_folder(app: typer.Typer, model_dir: Path, corpus: Path, tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = _run(app, ["build-index", corpus, "--model", model_dir, *SMALL])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "index" / "manifest.json").is_file()
    assert _run(app, ["index-info"]).exit_code == 0


def test_errors_are_one_line(app: typer.Typer, model_dir: Path, other_model_dir: Path, corpus: Path,
                             tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_one_line_error(_run(app, ["build-index", empty, "-o", tmp_path / "x", "--model", model_dir]), "empty")
    binary = tmp_path / "binary"
    binary.mkdir()
    (binary / "a.txt").write_bytes(b"\x00\x01")
    _assert_one_line_error(_run(app, ["build-index", binary, "-o", tmp_path / "x", "--model", model_dir]),
                           "no readable documents")
    _assert_one_line_error(_run(app, ["index-info", tmp_path / "missing"]), "not found")
    (tmp_path / "partial").mkdir()
    _assert_one_line_error(_run(app, ["index-info", tmp_path / "partial"]), "incomplete")
    out = tmp_path / "idx"
    assert _run(app, ["build-index", corpus, "-o", out, "--model", model_dir, *SMALL]).exit_code == 0
    shutil.copytree(out, tmp_path / "corrupt")
    (tmp_path / "corrupt" / "manifest.json").write_text("{")
    _assert_one_line_error(_run(app, ["index-info", tmp_path / "corrupt"]), "corrupt")
    _assert_one_line_error(_run(app, ["build-index", corpus, "-o", out, "--model", model_dir, "--append",
                                      "--layer", "0", *SMALL]), "--layer -1")
    _assert_one_line_error(_run(app, ["build-index", corpus, "-o", out, "--model", other_model_dir, "--append",
                                      *SMALL]), "another model")
    _assert_one_line_error(_run(app, ["build-index", corpus, "-o", out, "--model", model_dir, "--layer", "9"]),
                           "out of range")
    _assert_one_line_error(_run(app, ["build-index", corpus, "-o", out, "--model", model_dir,
                                      "--index-type", "lsh"]), "unknown index type")
    _assert_one_line_error(_run(app, ["build-index", corpus, "-o", out, "--model", tmp_path / "nomodel"]),
                           "model path not found")
    assert _run(app, ["index-info", out]).exit_code == 0  # every failure left the index as it was


def test_ctrl_c_exits_130(app: typer.Typer, model_dir: Path, corpus: Path, tmp_path: Path,
                          monkeypatch: pytest.MonkeyPatch) -> None:
    import specgen.datastore as ds

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ds, "build_index", interrupted)
    result = _run(app, ["build-index", corpus, "-o", tmp_path / "idx", "--model", model_dir])
    assert result.exit_code == 130
    assert "interrupted" in result.stderr and "Traceback" not in result.output
