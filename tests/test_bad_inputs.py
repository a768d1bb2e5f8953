"""Every command, a table of bad inputs: exit code 2, one line on stderr, no traceback, nothing written.

Rows run in-process through Typer's CliRunner (the same `OneLineErrors` group as the console
script), in a scratch folder holding the fixtures below, with an empty SPECGEN_CACHE; before and
after each row the scratch folder and the cache are snapshotted (paths, sizes, mtimes) and must be
equal. A few rows also run as real processes, to cover the entry point itself.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from specgen.cli.main import app

UNWRITABLE = "/proc/specgen-no-write/out"  # /proc takes no new files, even for root


def _tiny_llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    return LlamaForCausalLM(cfg)


def _tokenizer_files(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(200)} | {"[UNK]": 200}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Fixtures every row may name: files, folders, broken models, indexes and bench folders."""
    import torch

    root = tmp_path_factory.mktemp("bad-inputs")
    (root / "afile.txt").write_text("some text\n")
    (root / "adir").mkdir()
    (root / "res.json").mkdir()  # a folder with a file's name
    (root / "corpus").mkdir()
    (root / "corpus" / "doc.txt").write_text("A small corpus document.\n" * 20)
    (root / "empty-corpus").mkdir()
    (root / "text.gguf").write_text("hello, not a GGUF\n")
    (root / "empty.gguf").write_bytes(b"")
    (root / "bogus").mkdir()
    (root / "bogus" / "config.json").write_text("{not json")
    (root / "unknown-arch").mkdir()
    (root / "unknown-arch" / "config.json").write_text(json.dumps({"model_type": "no_such_arch"}))
    model = _tiny_llama()
    model.save_pretrained(root / "no-tokenizer")
    (root / "pickled").mkdir()
    model.config.save_pretrained(root / "pickled")
    torch.save(model.state_dict(), root / "pickled" / "pytorch_model.bin")
    _tokenizer_files(root / "pickled")
    model.save_pretrained(root / "vocab-mismatch")  # 64-token model, 201-token tokenizer
    _tokenizer_files(root / "vocab-mismatch")
    remote = root / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({"model_type": "custom_x", "auto_map": {
        "AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XModel"}}))
    for name in ("configuration_x.py", "modeling_x.py"):
        (remote / name).write_text(f"open({str(root / 'MARKER')!r}, 'w').write('ran')\n")
    _tokenizer_files(remote)
    (root / "corrupt-index").mkdir()
    (root / "corrupt-index" / "manifest.json").write_text("{ this is not json")
    (root / "run-corrupt").mkdir()
    (root / "run-corrupt" / "run.json").write_text("{ cut off")
    from specgen.bench.runner import BenchConfig

    fp = BenchConfig(out_dir=None).fingerprint()
    (root / "records-corrupt").mkdir()
    (root / "records-corrupt" / "run.json").write_text(json.dumps(fp, indent=2) + "\n")
    good = json.dumps({"method": "ar", "question_id": "1", "records": [{"turn": 0}]})
    (root / "records-corrupt" / "records.jsonl").write_text(good + "\n" + "{garbage\n" + good + "\n")
    (root / "bad.yaml").write_text("pld: [unclosed\n")
    (root / "not-json.txt").write_text("not json at all")
    return root


G = ["generate", "hi"]
ROWS: list[tuple[str, list[str], str]] = [
    # generate: numbers
    ("generate", G + ["--temperature", "nan"], "--temperature"),
    ("generate", G + ["--temperature", "inf"], "--temperature"),
    ("generate", G + ["--temperature", "-1"], "--temperature"),
    ("generate", G + ["--temperature", "1e-9"], "--temperature"),
    ("generate", G + ["--temperature", "0.8", "--seed", str(2**70)], "--seed"),
    ("generate", G + ["--temperature", "0.8", "--seed", "-1"], "--seed"),
    ("generate", G + ["--top-p", "0"], "--top-p"),
    ("generate", G + ["--top-p", "nan"], "--top-p"),
    ("generate", G + ["--top-k", "-3"], "--top-k"),
    ("generate", G + ["--max-new-tokens", "0"], "--max-new-tokens"),
    ("generate", G + ["--max-new-tokens", "10000000"], "--max-new-tokens"),
    ("generate", G + ["--node-budget", "-1"], "--node-budget"),
    ("generate", G + ["--node-budget", "100000"], "--node-budget"),
    ("generate", G + ["--stop", ""], "--stop"),
    ("generate", G + ["--method", "nope"], "unknown method"),
    ("generate", G + ["--dtype", "float8"], "dtype"),
    ("generate", G + ["--device", "tpu"], "--device must be"),
    ("generate", G + ["--device", "cuda"], "CUDA is not available"),
    ("build-index", ["build-index", "corpus", "-o", "idx", "--device", "cuda:1"], "CUDA is not available"),
    ("bench", ["bench", "--device", "cuda"], "CUDA is not available"),
    ("bench", ["bench", "--sizing-option", "prior_depth"], "KEY=VALUE"),
    ("bench", ["bench", "--sizing-option", "no_such=1"], "unknown tree sizing option"),
    ("bench", ["bench", "--sizing-option", "prior_depth=linear"], "--prior-depth"),
    ("bench", ["bench", "--sizing-option", "pad_forwards=maybe"], "--pad-forwards must be true or false"),
    ("generate", G + ["--draft-policy", "sometimes"], "--draft-policy"),
    ("generate", G + ["--method", "sense", "--gate-alpha", "2"], "--gate-alpha"),
    ("generate", G + ["--method", "sense", "--min-similarity", "nan"], "--min-similarity"),
    ("generate", G + ["--method", "sense", "--transition", "maybe"], "--transition must be on or off"),
    ("generate", G + ["--method", "pld", "--transition", "off"], "transition"),
    ("generate", G + ["--method", "sd", "--draft-layers", "0"], "--draft-layers"),
    ("generate", G + ["--method", "specguard", "--candidates", "0"], "--candidates"),
    ("generate", G + ["--method", "specguard", "--tau", "nan"], "--tau"),
    ("generate", G + ["--method", "specguard", "--step-delimiter", ""], "--step-delimiter"),
    ("generate", ["generate", "--prompt-file", "adir"], "cannot read prompt file"),
    # generate: paths and models
    ("generate", G + ["--method", "sense", "--index", "missing-index"], "--index"),
    ("generate", G + ["--method", "rest", "--index", "afile.txt"], "not a folder"),
    ("generate", G + ["--model", "text.gguf"], "not a GGUF file"),
    ("generate", G + ["--model", "empty.gguf"], "not a GGUF file"),
    ("generate", G + ["--model", "bogus"], "not valid JSON"),
    ("generate", G + ["--model", "unknown-arch"], "unknown"),
    ("generate", G + ["--model", "pickled"], "pickled weights"),
    ("generate", G + ["--model", "remote"], "does not run"),
    ("generate", G + ["--model", "no-tokenizer"], "no tokenizer"),
    ("generate", G + ["--model", "vocab-mismatch"], "tokenizer has"),
    ("generate", G + ["--method", "sd", "--draft-model", "pickled"], "pickled weights"),
    # build-index
    ("build-index", ["build-index", "corpus", "-o", "afile.txt"], "not a folder"),
    ("build-index", ["build-index", "corpus", "-o", UNWRITABLE], "cannot write"),
    ("build-index", ["build-index", "no-such-corpus", "-o", "idx"], "not found"),
    ("build-index", ["build-index", "empty-corpus", "-o", "idx"], "empty"),
    ("build-index", ["build-index", "corpus", "-o", "idx", "--max-tokens", "0"], "--max-tokens"),
    ("build-index", ["build-index", "corpus", "-o", "idx", "--continuation-len", "0"], "--continuation-len"),
    ("build-index", ["build-index", "corpus", "-o", "idx", "--index-type", "weird"], "index type"),
    ("build-index", ["build-index", "corpus", "-o", "idx", "--window", "10", "--batch-tokens", "5"], "batch-tokens"),
    ("build-index", ["build-index", "corpus", "-o", "idx", "--model", "text.gguf"], "not a GGUF file"),
    # index-info
    ("index-info", ["index-info", "corrupt-index"], "corrupt index manifest"),
    ("index-info", ["index-info", "adir"], "no manifest.json"),
    # bench
    ("bench", ["bench", "--out", "run-corrupt"], "run.json cannot be read"),
    ("bench", ["bench", "--out", "records-corrupt"], "line 2 is corrupt"),
    ("bench", ["bench", "--out", "afile.txt/sub"], "not a folder"),
    ("bench", ["bench", "--out", "res.json"], "is a folder"),
    ("bench", ["bench", "--out", UNWRITABLE], "cannot write"),
    ("bench", ["bench", "--limit", "-1"], "--limit"),
    ("bench", ["bench", "--temperature", "nan"], "--temperature"),
    ("bench", ["bench", "--seed", "-5"], "--seed"),
    ("bench", ["bench", "--methods", "nope"], "unknown method"),
    ("bench", ["bench", "--methods", ","], "empty list"),
    ("bench", ["bench", "--method-config", "bad.yaml"], "method config"),
    ("bench", ["bench", "--index", "missing-index"], "--index"),
    ("bench", ["bench", "--budgets", "0"], "--budgets"),
    ("bench", ["bench", "--suite", "no-such-suite"], "unknown suite"),
    ("bench", ["bench", "--max-new-tokens", "0"], "--max-new-tokens"),
    ("bench", ["bench", "--turns", "0"], "--turns"),
    ("bench self-corpus", ["bench", "self-corpus", "-o", "adir"], "is a folder"),
    ("bench self-corpus", ["bench", "self-corpus", "-o", "new.jsonl", "--max-new-tokens", "0"], "--max-new-tokens"),
    ("bench self-corpus", ["bench", "self-corpus", "-o", "new.jsonl", "--skip", "-1"], "--skip"),
    ("bench self-corpus", ["bench", "self-corpus", "-o", "new.jsonl", "--method", "specguard"], "lossless"),
    ("bench replay", ["bench", "replay", "--limit", "0"], "--limit"),
    ("bench replay", ["bench", "replay", "--budgets", "x"], "--budgets"),
    ("bench replay", ["bench", "replay", "--index", "missing-index"], "--index"),
    ("bench compare", ["bench", "compare", "nothing-a.json", "nothing-b.json"], "cannot read"),
    ("bench compare", ["bench", "compare", "not-json.txt", "not-json.txt"], "not JSON"),
    ("bench kernels", ["bench", "kernels", "--device", "tpu"], "--device"),
    ("bench replay", ["bench", "replay", "--traces", "not-json.txt"], "not a specgen trace file"),
    ("bench replay", ["bench", "replay", "--traces", "adir"], "is a folder"),
    ("bench cost", ["bench", "cost", "--sizes", "2,4"], "--sizes"),
    ("bench cost", ["bench", "cost", "--sizes", "1,x"], "--sizes"),
    ("bench cost", ["bench", "cost", "--prefix", "0"], "--prefix"),
    ("bench cost", ["bench", "cost", "--json", "adir"], "is a folder"),
    ("bench cost", ["bench", "cost", "--dtype", "int3"], "dtype"),
    ("generate", G + ["--method", "specguard", "--preset", "nope"], "unknown specguard preset"),
    ("generate", G + ["--method", "specguard", "--exchange", "morse"], "exchange"),
    ("generate", G + ["--method", "pld", "--preset", "paper"], "--preset"),
    ("bench", ["bench", "--suite", "paraphrase", "--split", "dev"], "--split"),
    ("bench", ["bench", "--suite", "paraphrase", "--pairs", "missing.jsonl"], "--pairs"),
    ("bench", ["bench", "--suite", "paraphrase", "--pairs", "not-json.txt"], "not-json.txt"),
    ("bench", ["bench", "--concurrency", "0"], "--concurrency"),
    ("bench", ["bench", "--concurrency", "two"], "--concurrency"),
    ("bench", ["bench", "--concurrency", "1", "--methods", "nope"], "unknown method"),
    ("bench", ["bench", "--concurrency", "1", "--repeats", "0"], "--repeats"),
    ("serve", ["serve", "--host", "0.0.0.0"], "--api-key"),
    ("serve", ["serve", "--port", "70000"], "--port"),
    ("serve", ["serve", "--method", "beam"], "unknown method"),
    ("serve", ["serve", "--index", "missing-index"], "--index"),
    ("serve", ["serve", "--api-key", " "], "--api-key"),
    ("serve", ["serve", "--max-queue", "0"], "--max-queue"),
    ("serve", ["serve", "--device", "tpu"], "--device"),
    ("serve", ["serve", "--model", "remote"], "does not run"),
]


def snapshot(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every path under `roots` with its size and mtime (folders included)."""
    out: dict[str, tuple[int, int]] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                out[str(p)] = (st.st_size if name in filenames else 0, st.st_mtime_ns)
    return out


def check_one_line(code: int, stderr: str, output: str) -> str:
    assert code == 2, (code, output)
    assert "Traceback" not in output and "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


@pytest.mark.parametrize(("command", "args", "needle"), ROWS, ids=[f"{i:02d}-{' '.join(r[1])[:50]}" for i, r in enumerate(ROWS)])
def test_bad_input_is_one_line_and_changes_nothing(command: str, args: list[str], needle: str, scratch: Path,
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.chdir(scratch)
    monkeypatch.setenv("SPECGEN_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = snapshot(scratch, cache)
    result = CliRunner().invoke(app, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    line = check_one_line(result.exit_code, result.stderr, result.output)
    assert needle.lower() in line.lower(), line
    assert snapshot(scratch, cache) == before, f"{command}: files changed or left behind"
    assert not (scratch / "MARKER").exists(), "a model folder's own code ran"


def test_table_covers_every_command_with_at_least_40_rows() -> None:
    commands = {c for c, _, _ in ROWS}
    assert len(ROWS) >= 40
    assert commands >= {"generate", "build-index", "index-info", "bench", "bench self-corpus", "bench replay",
                        "bench compare", "bench kernels", "bench cost", "serve"}


@pytest.mark.parametrize("args", [G + ["--temperature", "nan"], G + ["--model", "remote"], ["bench", "--out", "run-corrupt"]])
def test_real_process_prints_one_line(args: list[str], scratch: Path, tmp_path: Path) -> None:
    env = dict(os.environ, SPECGEN_CACHE=str(tmp_path), HF_HUB_OFFLINE="1")
    before = snapshot(scratch)
    proc = subprocess.run([sys.executable, "-m", "specgen.cli.main", *args], cwd=scratch, env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    check_one_line(proc.returncode, proc.stderr, proc.stdout)
    assert proc.stdout == ""
    assert snapshot(scratch) == before and not (scratch / "MARKER").exists()
