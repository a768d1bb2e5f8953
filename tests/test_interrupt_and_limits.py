"""Ctrl-C keeps the streamed text and says how far it got; prompts past the context and hub ids
without network are one clear line, at once."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from specgen.config import GenerationConfig
from specgen.decoding.loop import decode
from specgen.errors import SpecgenError
from specgen.proposers.base import NullProposer

REPO = Path(__file__).resolve().parents[1]


def _default_sigint() -> None:
    # A shell starts background jobs with SIGINT ignored, and Python then installs no Ctrl-C handler:
    # give the child the default disposition, so the test does not depend on how pytest was started.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _cli(*args: str, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "specgen.cli.main", *args], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            preexec_fn=_default_sigint, **kw)


@pytest.mark.slow
def test_sigint_during_generate_keeps_the_text_and_says_how_far_it_got() -> None:
    proc = _cli("generate", "Write a long story about a dragon and a knight.", "--method", "ar",
                "--max-new-tokens", "400")
    assert proc.stdout is not None
    first = os.read(proc.stdout.fileno(), 8).decode()  # streamed text has started
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    rest, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    n = int(lines[0].removeprefix("error: interrupted after ").removesuffix(" tokens"))
    assert 0 < n < 400
    assert len((first + rest).strip()) > 0 and (first + rest).endswith("\n")


def test_a_prompt_longer_than_the_context_is_refused_before_prefill(tiny_bundle: Any) -> None:
    context = tiny_bundle.model.config.max_position_embeddings  # 512 in the tiny LLaMA
    with pytest.raises(SpecgenError, match=rf"the prompt has {context + 88} tokens but the model's context holds {context}"):
        decode(tiny_bundle, [1] * (context + 88), NullProposer(), GenerationConfig(max_new_tokens=4), method="ar")


def test_generation_stops_at_the_end_of_the_context(tiny_bundle: Any) -> None:
    context = tiny_bundle.model.config.max_position_embeddings
    out = decode(tiny_bundle, [1] * (context - 5), NullProposer(), GenerationConfig(max_new_tokens=50), method="ar")
    assert len(out.token_ids) == 5 and out.finish_reason == "length"


@pytest.mark.slow
def test_cli_refuses_an_overlong_prompt_in_one_line(tmp_path: Path) -> None:
    prompt = tmp_path / "long.txt"
    prompt.write_text("word " * 9000)  # SmolLM2's context is 8192 tokens
    t0 = time.perf_counter()
    proc = _cli("generate", "--prompt-file", str(prompt), "--method", "ar")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "context holds 8192" in lines[0], err
    assert time.perf_counter() - t0 < 60  # refused before any prefill (which takes minutes)


def test_a_hub_id_without_network_fails_at_once_in_one_line(tmp_path: Path) -> None:
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), SPECGEN_CACHE=str(tmp_path / "cache"))
    env.pop("HF_HUB_OFFLINE", None)
    t0 = time.perf_counter()
    proc = _cli("generate", "hi", "--model", "no-such-org/no-such-model", env=env)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "not in the local Hugging Face cache" in lines[0], err
    assert time.perf_counter() - t0 < 30  # no retry loop (it took 51 s and 22 lines)
