"""`specgen generate` through Typer's CliRunner: streaming, --json, and every bad input."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from specgen.cli.main import app

runner = CliRunner()


def one_line_error(result: Any) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output)
    err = result.stderr.strip()
    assert "Traceback" not in result.output and "Traceback" not in err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


@pytest.mark.parametrize(("args", "needle"), [
    (["hi", "--method", "nope"], "unknown method"),
    (["hi", "--model", "/no/such/model"], "not found"),
    (["hi", "--model", "missing.gguf"], "not found"),
    (["--prompt-file", "/no/such/file.txt"], "cannot read prompt file"),
    (["   "], "empty prompt"),
    ([], "no prompt"),
    (["hi", "--max-new-tokens", "0"], "max-new-tokens"),
    (["hi", "--max-new-tokens", "abc"], "max-new-tokens"),
    (["hi", "--temperature", "-1"], "temperature"),
    (["hi", "--top-p", "1.5"], "top-p"),
    (["hi", "--method", "pld", "--draft-model", "x"], "does not apply"),
    (["hi", "--method", "sd", "--draft-model", "x", "--draft-layers", "3"], "mutually exclusive"),
    (["hi", "--method", "pld", "--max-ngram", "1", "--min-ngram", "3"], "min-ngram"),
    (["hi", "--gate", "maybe"], "--gate"),
    (["hi", "--tree-sizing", "fixed"], "--tree-sizing"),
    (["hi", "--calibration", "forever"], "--calibration"),
    (["hi", "--method", "pld", "--neighbours", "8"], "--neighbours does not apply"),
    (["hi", "--method", "sense", "--min-similarity", "2"], "min-similarity"),
    (["hi", "--method", "sense", "--align", "fuzzy"], "align must be one of exact, shift"),
    (["hi", "--method", "pld", "--align", "shift"], "--align does not apply"),
])
def test_bad_input_is_one_line_exit_2(args: list[str], needle: str) -> None:
    err = one_line_error(runner.invoke(app, ["generate", *args]))
    assert needle in err


def test_prompt_and_prompt_file_conflict(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("hello")
    assert "not both" in one_line_error(runner.invoke(app, ["generate", "hi", "--prompt-file", str(f)]))


def test_empty_prompt_file(tmp_path: Path) -> None:
    f = tmp_path / "p.txt"
    f.write_text("\n \n")
    assert "empty prompt" in one_line_error(runner.invoke(app, ["generate", "--prompt-file", str(f)]))


@pytest.mark.slow
def test_generate_streams_text_and_stats(real_bundle: Any, _own_calibration_dir: Path) -> None:
    result = runner.invoke(app, ["generate", "What is the capital of France?", "--method", "pld",
                                 "--max-new-tokens", "12"])
    assert result.exit_code == 0, result.output
    assert "Paris" in result.stdout
    assert "mean acceptance length" in result.stderr and "tokens/s" in result.stderr
    # the run left its method's acceptance calibration for the next one (--calibration stored, the default)
    stored = list(_own_calibration_dir.iterdir())
    assert len(stored) == 1 and set(json.loads(stored[0].read_text())) >= {"accepted", "drafted", "method"}
    before = stored[0].read_text()
    fresh = runner.invoke(app, ["generate", "What is the capital of France?", "--method", "pld",
                                "--max-new-tokens", "12", "--calibration", "fresh"])
    assert fresh.exit_code == 0 and list(_own_calibration_dir.iterdir()) == stored  # fresh keeps nothing
    assert stored[0].read_text() == before
    plain = runner.invoke(app, ["generate", "What is the capital of France?", "--method", "ar",
                                "--max-new-tokens", "4"])
    assert plain.exit_code == 0 and list(_own_calibration_dir.iterdir()) == stored  # ar drafts nothing to keep


@pytest.mark.slow
def test_generate_json_from_stdin(real_bundle: Any) -> None:
    result = runner.invoke(app, ["generate", "-", "--method", "ar", "--max-new-tokens", "8", "--json"],
                           input="Name three colors.")
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert set(obj) >= {"text", "token_ids", "stats"}
    stats = obj["stats"]
    for key in ("method", "new_tokens", "steps", "mean_acceptance_length", "drafted", "accepted",
                "draft_acceptance_rate", "wall_s", "tokens_per_s"):
        assert key in stats
    assert stats["method"] == "ar" and stats["new_tokens"] == len(obj["token_ids"]) <= 8
    assert stats["mean_acceptance_length"] == pytest.approx(1.0)
    assert stats["steps"] == stats["new_tokens"] - 1


@pytest.mark.slow
def test_stop_string_ends_generation(real_bundle: Any) -> None:
    result = runner.invoke(app, ["generate", "Count from 1 to 20, separated by commas.", "--method", "pld",
                                 "--max-new-tokens", "60", "--stop", "5", "--json"])
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert "5" not in obj["text"] and obj["finish_reason"] == "stop"
